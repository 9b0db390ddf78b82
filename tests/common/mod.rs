//! Helpers shared by the end-to-end tests, one concern a file:
//!
//! - [`sim`]: a `horde-batch sim` child process and what it reports;
//! - [`batch`]: a manifest in a temporary directory and what a run wrote;
//! - [`process`]: the `horde-batch` binary run, signalled and waited for;
//! - [`wait`]: bounded waits, so no test can hang or sleep in place of a check.
//!
//! Every helper that asserts is `#[track_caller]`: a failure names the test's
//! line, not a line in here. Nothing in here knows about one test module.
#![allow(dead_code)] // Not every helper is used by every test module.

mod batch;
mod process;
mod sim;
mod wait;

pub use batch::*;
pub use process::*;
pub use sim::*;
pub use wait::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_horde-batch");

/// The `find_user` cache of the test Hordes (the real server's is 30 s): a
/// client that lost a submit's answer waits this long before looking for it.
pub const TEST_FIND_USER_CACHE: &str = "1s";

/// Sim arguments for fast alchemists (the real 2 s per form scaled down).
pub const FAST_ALCHEMISTS: &[&str] = &[
    "--workers",
    "16",
    "--latency",
    "1ms",
    "--alchemists",
    "16",
    "--alchemy-form-time",
    "20ms",
];
