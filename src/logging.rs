//! Log set-up: tracing to stderr, as text or JSON, at the level `-v`/`-q` or
//! `RUST_LOG` ask for. Nothing here ever sees the API key.

use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, LoggingArgs};

/// Installs the global subscriber; call once, first thing.
pub fn init(args: &LoggingArgs) {
    let default_level = match (args.quiet, args.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("horde_batch={default_level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling `run` twice) is harmless: the first subscriber stays.
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// Sets how errors are rendered: wrapped to the terminal when stderr is one,
/// one long line per message otherwise, so logs and scripts can grep them.
pub fn init_error_reporting() {
    use std::io::IsTerminal;
    let interactive = std::io::stderr().is_terminal();
    // Only fails if a hook is already installed, which keeps that one.
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .wrap_lines(interactive)
                .terminal_links(false)
                .build(),
        )
    }));
}
