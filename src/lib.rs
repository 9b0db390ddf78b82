//! horde-batch: resumable, rate-limited batch image generation for the AI Horde.
//!
//! The binary (`src/main.rs`) is a thin shell over this library. Data flows
//! `manifest` → `plan` → `scheduler` → `output`, with `store` checkpointing every
//! step and `horde` speaking the wire protocol; `sim` is a stand-alone simulated
//! Horde used by tests, benchmarks and `run --simulate`.

/// `eprintln!` that never panics: a closed stderr (piped into `head`) must not
/// turn into a crash, least of all while reporting an error.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod app;
pub mod cli;
pub mod exit;
pub mod horde;
pub mod logging;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod rebuild;
pub mod report;
pub mod scheduler;
pub mod sim;
pub mod store;
