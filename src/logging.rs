//! Log set-up: tracing to stderr, as text or JSON, at the level `-v`/`-q` or
//! `RUST_LOG` ask for, in colour only on a terminal (`NO_COLOR` and
//! `CLICOLOR_FORCE` are honoured), and how the rest of stderr (the final
//! summary) follows suit. Nothing here ever sees the API key.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::ui::{LogFormat, LoggingArgs};

/// How a command's own messages on stderr (the final summary) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Messages {
    /// Lines of text.
    Text,
    /// One JSON object per message, like the log lines.
    Json,
    /// `-q`: nothing but errors.
    Quiet,
}

static MESSAGES: OnceLock<Messages> = OnceLock::new();

/// How messages are written (text until `init` says otherwise).
pub fn messages() -> Messages {
    MESSAGES.get().copied().unwrap_or(Messages::Text)
}

/// Whether stderr gets colour: `CLICOLOR_FORCE` (not `0`) forces it,
/// `NO_COLOR` (not empty) turns it off, otherwise only on a terminal.
pub fn colour() -> bool {
    let set = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if set("CLICOLOR_FORCE").is_some_and(|value| value != "0") {
        return true;
    }
    if set("NO_COLOR").is_some() {
        return false;
    }
    std::io::stderr().is_terminal()
}

/// Installs the global subscriber; call once, first thing.
pub fn init(args: &LoggingArgs) {
    let _ = MESSAGES.set(match (args.quiet, args.log_format) {
        (true, _) => Messages::Quiet,
        (false, LogFormat::Json) => Messages::Json,
        (false, LogFormat::Text) => Messages::Text,
    });
    let default_level = match (args.quiet, args.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    // `-q` is absolute: a script that asked for errors only gets errors only.
    let from_env = (!args.quiet)
        .then(|| EnvFilter::try_from_default_env().ok())
        .flatten();
    let filter = from_env.unwrap_or_else(|| {
        let others = if args.quiet { "error" } else { "warn" };
        EnvFilter::new(format!("horde_batch={default_level},{others}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
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
    let interactive = std::io::stderr().is_terminal();
    let colour = colour();
    // Only fails if a hook is already installed, which keeps that one.
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .wrap_lines(interactive)
                .terminal_links(false)
                .color(colour)
                .build(),
        )
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_text_until_told_otherwise() {
        // `init` is never called in unit tests.
        assert_eq!(messages(), Messages::Text);
    }
}
