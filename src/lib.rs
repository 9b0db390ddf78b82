//! horde-batch: resumable, rate-limited batch image generation for the AI Horde.
//!
//! The binary (`src/main.rs`) is a thin shell over this library: it parses the
//! command line, sets up logging, runs a command and maps its outcome to an
//! exit code. Data flows `manifest` → `plan` → `scheduler` → `output`, with
//! `store` checkpointing every step and `horde` speaking the wire protocol.
//!
//! | module | owns | must not |
//! | --- | --- | --- |
//! | [`cli`] | clap types, help text, the hidden tuning flags | do I/O |
//! | [`app`] | one function per command: wiring, signals, the final summary | hold engine logic |
//! | [`digest`] | the name digest behind job keys, key fingerprints and source hashes | change one bit of it: values on disk depend on it |
//! | [`exit`] | how a run ends (`Ending`, `Abort`) and the exit codes scripts rely on | renumber one |
//! | [`layout`] | names in the output folder: the filename template, the index's built-in columns | do I/O, know the manifest or the writer |
//! | [`manifest`] | the YAML language: parse with positions, validate, expand, job keys | talk HTTP or touch the ledger |
//! | [`plan`] | splitting jobs into request slots of `n` | do I/O |
//! | [`scheduler`] | the engine: pacing, budget, the failure policy, polling, lost submits, cancels | print, or choose a delay outside `scheduler::policy` |
//! | [`horde`] | the typed API client: requests, answers, error classes, key redaction | retry, sleep, persist, follow a redirect |
//! | [`store`] | the sled ledger: versioned request records, flushes, the lock | talk HTTP or write images |
//! | [`output`] | every file in the output folder: WebP checks, atomic writes, sidecars, names, the dataset index, results and errors | know the scheduler |
//! | [`progress`] | progress bars, JSON progress, `status.json`, the status view, the final summary (all from the event fold) | decide anything |
//! | [`ui`] | the user's output choices: verbosity, log format, progress mode | do I/O |
//! | [`terminal`] | user and server text made safe to print: control characters and bidi overrides escaped | do I/O, or touch JSON (serde escapes it) |
//! | [`gallery`] | `report.html` and the X/Y/Z grids (`grids/`) | write images, sidecars or JSON Lines files |
//! | [`export`] | a finished batch as WebDataset tar shards, Parquet files with the images, or a Hub imagefolder: atomic, resumable, byte-identical on a rerun | know the manifest, the ledger or the Horde |
//! | [`rebuild`] | a new ledger from the sidecars (`run --rebuild-state`) | touch the Horde |
//! | [`logging`] | tracing set-up (text or JSON, levels) | see the key |
//! | [`sim`] | the simulated Horde (axum): never kinder than the real server | share code paths that could hide a client bug |

/// `eprintln!` that never panics: a closed stderr (piped into `head`) must not
/// turn into a crash, least of all while reporting an error.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod alchemy;
pub mod app;
pub mod cli;
pub mod digest;
pub mod exit;
pub mod export;
pub mod gallery;
pub mod horde;
pub mod layout;
pub mod logging;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod progress;
pub mod rebuild;
pub mod scheduler;
pub mod sim;
pub mod store;
pub mod terminal;
pub mod ui;
