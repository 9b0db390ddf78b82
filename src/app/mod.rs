//! The commands: each takes parsed arguments, does its work and returns an
//! exit code. Errors bubble up as `AppError` and are reported once, by `main`.

mod alchemy;
mod cancel;
mod caption;
mod config;
mod export;
mod failures;
mod kudos;
mod merge;
mod orchestrator;
mod report;
mod reroll;
mod run;
mod status;

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use miette::Diagnostic;
use thiserror::Error;

use crate::cli::{Cli, Command, PlanArgs, ValidateArgs};
use crate::exit;
use crate::manifest::{self, CompileOptions, CompiledManifest, ManifestError, ManifestFile};
use crate::plan;
use crate::terminal::escaped;

/// An error that ends a command.
#[derive(Debug, Error, Diagnostic)]
pub enum AppError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Template(#[from] crate::output::TemplateError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sim(#[from] crate::sim::SimError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Alchemy(#[from] crate::alchemy::AlchemyError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error("{0}")]
    #[diagnostic(code(horde_batch::config))]
    Config(String),
    #[error("{0}")]
    #[diagnostic(
        code(horde_batch::api_key_file),
        help(
            "--api-key-file takes a file holding one key on one line; for several keys \
             (one per line, `#` comments allowed) use --api-keys-file"
        )
    )]
    KeyFile(String),
    #[error("the Horde refused the API key: {0}")]
    #[diagnostic(
        code(horde_batch::auth),
        help("check AI_HORDE_API_KEY or --api-key-file")
    )]
    Auth(String),
    #[error("the shared key's limits refuse this manifest: {0}")]
    #[diagnostic(
        code(horde_batch::shared_key_limits),
        help("lower width, height or steps, or ask the key's owner to raise its limits")
    )]
    SharedKeyLimits(String),
    #[error("the Horde rate limited this client: {0}")]
    #[diagnostic(
        code(horde_batch::rate_limited),
        help(
            "the Horde allows 2 submits or dry runs a second per IP and per key; another \
             client on this IP or key may be sending them: wait a minute and try again"
        )
    )]
    RateLimited(String),
    #[error("the Horde could not be reached: {0}")]
    #[diagnostic(
        code(horde_batch::unreachable),
        help("check --horde-url / AI_HORDE_URL and the network, then try again")
    )]
    Unreachable(String),
    #[error("cannot start the async runtime")]
    #[diagnostic(code(horde_batch::runtime))]
    Runtime(#[source] io::Error),
    #[error("cannot write to standard output")]
    #[diagnostic(code(horde_batch::stdout))]
    Stdout(#[source] io::Error),
}

impl AppError {
    /// The exit code this error ends the process with.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Store(_) => exit::LEDGER,
            AppError::Auth(_) | AppError::SharedKeyLimits(_) => exit::AUTH,
            // The Horde answered, but persistently not yet: like an unreachable
            // Horde, trying again later is the fix.
            AppError::Unreachable(_) | AppError::RateLimited(_) => exit::UNREACHABLE,
            AppError::Sim(_) | AppError::Runtime(_) | AppError::Alchemy(_) => exit::JOBS_FAILED,
            // The output directory cannot be used: fix the setup, like a bad flag.
            AppError::Output(_) | AppError::Gallery(_) | AppError::Export(_) => exit::USAGE,
            AppError::Manifest(_)
            | AppError::Stdout(_)
            | AppError::Template(_)
            | AppError::Config(_)
            | AppError::KeyFile(_) => exit::USAGE,
        }
    }
}

/// `horde-batch sim`.
fn sim(config: crate::sim::SimConfig) -> Result<ExitCode, AppError> {
    config::runtime()?.block_on(crate::sim::run_cli(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the command `cli` asks for.
pub fn run(cli: Cli) -> Result<ExitCode, AppError> {
    match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Plan(args) => plan(&args),
        Command::Schema => schema(),
        Command::Run(args) => run::run(&args),
        Command::Cancel(args) => cancel::cancel(&args),
        Command::Merge(args) => merge::merge(&args),
        Command::Export(args) => export::export(&args),
        Command::Failures(args) => failures::failures(&args),
        Command::Reroll(args) => reroll::reroll(&args),
        Command::Report(args) => report::report(&args),
        Command::Caption(args) => caption::caption(&args),
        Command::Sim(config) => sim(config),
        Command::Status(args) => status::status(&args),
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics on a failed write (a closed pipe).
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "horde-batch", &mut script);
            let script = completion_script(shell, script);
            match io::stdout().lock().write_all(&script) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(AppError::Stdout(e)),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// clap_complete's bash script names a hyphenated binary's subcommand
/// branches `horde__subcmd__batch__subcmd__run` but walks the command line to
/// `horde__batch__subcmd__run`, so no subcommand's options ever complete
/// (clap_complete 4.6). The branch names are made to match what is walked.
fn completion_script(shell: clap_complete::Shell, script: Vec<u8>) -> Vec<u8> {
    if shell != clap_complete::Shell::Bash {
        return script;
    }
    String::from_utf8_lossy(&script)
        .replace("horde__subcmd__batch", "horde__batch")
        .into_bytes()
}

pub(crate) fn load(
    path: &std::path::Path,
    max_jobs: Option<u64>,
) -> Result<CompiledManifest, ManifestError> {
    let file = ManifestFile::load(path)?;
    manifest::compile(file, &CompileOptions { max_jobs })
}

fn validate(args: &ValidateArgs) -> Result<ExitCode, AppError> {
    let mut all_valid = true;
    let mut stdout = io::stdout().lock();
    for path in &args.manifests {
        match load(path, args.max_jobs) {
            Ok(compiled) => {
                writeln!(
                    stdout,
                    "{}: ok ({} jobs, {} images)",
                    escaped(&path.to_string_lossy()),
                    compiled.total_jobs(),
                    compiled.total_images()
                )
                .map_err(AppError::Stdout)?;
            }
            Err(error) => {
                all_valid = false;
                report_manifest_error(error);
            }
        }
    }
    Ok(ExitCode::from(if all_valid {
        exit::SUCCESS
    } else {
        exit::USAGE
    }))
}

/// Prints each problem of a manifest as its own diagnostic.
pub fn report_manifest_error(error: ManifestError) {
    match error {
        ManifestError::Invalid { problems } => {
            for problem in problems {
                report_diagnostic(problem);
            }
        }
        other => report_diagnostic(other),
    }
}

/// Prints the error that ended a command (a manifest's problems one by one),
/// with any control character of the text it quotes escaped.
pub fn report_error(error: AppError) {
    match error {
        AppError::Manifest(error) => report_manifest_error(error),
        other => report_diagnostic(other),
    }
}

/// Prints one diagnostic on stderr. A diagnostic quotes what it is about (a
/// job name, a manifest's lines, a server's message), which may hold control
/// characters; those could restyle the terminal, so a diagnostic that holds
/// any is printed plain (no colour) with them escaped. Told apart from a
/// rendering without colour, where the only control characters are the
/// text's own.
fn report_diagnostic(diagnostic: impl Diagnostic + Send + Sync + 'static) {
    let mut plain = String::new();
    let rendered =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_links(false)
            .render_report(&mut plain, &diagnostic);
    if rendered.is_ok() && crate::terminal::needs_escaping_as_lines(&plain) {
        crate::say!("{}", crate::terminal::escape_lines(plain.trim_end()));
    } else {
        crate::say!("{:?}", miette::Report::new(diagnostic));
    }
}

fn plan(args: &PlanArgs) -> Result<ExitCode, AppError> {
    match write_plan(args) {
        // `plan --list | head` closes the pipe early: that is not an error.
        Err(AppError::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

fn write_plan(args: &PlanArgs) -> Result<ExitCode, AppError> {
    let compiled = load(&args.manifest, args.max_jobs)?;
    let mut out = BufWriter::new(io::stdout().lock());
    let write = |result: io::Result<()>| result.map_err(AppError::Stdout);
    if args.list {
        for job in compiled.jobs() {
            let requests = plan::slot_count(&job, compiled.run.max_n);
            if args.json {
                let line = serde_json::json!({
                    "key": job.key.to_string(),
                    "job": &*job.name,
                    "prompt": job.prompt,
                    "negative": job.negative,
                    "models": &*job.models,
                    "params": &*job.params,
                    "images": job.images,
                    "requests": requests,
                });
                write(writeln!(out, "{line}"))?;
            } else {
                write(writeln!(
                    out,
                    "{}  {:<16} {} image(s)  {}",
                    job.key,
                    escaped(&job.name),
                    job.images,
                    escaped(&job.wire_prompt())
                ))?;
            }
        }
        write(out.flush())?;
        return Ok(ExitCode::SUCCESS);
    }
    let summary = plan::summarize(&compiled);
    // Alchemy has no dry run: its price list is known (docs/horde-api.md §10).
    let alchemy_kudos: u64 = if args.kudos && compiled.uses_alchemy() {
        compiled
            .jobs()
            .map(|job| u64::from(job.images) * u64::from(job.alchemy_kudos()))
            .sum()
    } else {
        0
    };
    let kudos = if args.kudos {
        Some(kudos::kudos_estimate(
            &compiled,
            &args.horde,
            args.simulate,
        )?)
    } else {
        None
    };
    if args.json {
        let mut value =
            serde_json::to_value(&summary).map_err(|e| AppError::Stdout(io::Error::other(e)))?;
        if let Some((estimate, balance, signatures)) = kudos {
            value["kudos"] = serde_json::json!({"estimate": estimate + alchemy_kudos as f64, "images": estimate, "alchemy": alchemy_kudos, "balance": balance, "dry_runs": signatures});
        }
        write(serde_json::to_writer_pretty(&mut out, &value).map_err(io::Error::other))?;
        write(writeln!(out))?;
    } else {
        let t = summary.totals;
        write(writeln!(
            out,
            "{} ({})",
            escaped(&summary.name),
            escaped(&summary.manifest)
        ))?;
        write(writeln!(
            out,
            "{:<24} {:>12} {:>10} {:>10}  seeds",
            "job", "combinations", "requests", "images"
        ))?;
        for job in &summary.jobs {
            write(writeln!(
                out,
                "{:<24} {:>12} {:>10} {:>10}  {}",
                escaped(&job.name),
                job.combinations,
                job.requests,
                job.images,
                job.seeds
            ))?;
        }
        write(writeln!(
            out,
            "{:<24} {:>12} {:>10} {:>10}",
            "total", t.jobs, t.requests, t.images
        ))?;
        write(writeln!(
            out,
            "requests carry up to {} images each (run.max_n)",
            summary.max_n
        ))?;
        if let Some((estimate, balance, signatures)) = kudos {
            let balance = balance.map_or_else(
                || "unknown (anonymous key)".to_owned(),
                |b| format!("{b:.0}"),
            );
            let alchemy = if alchemy_kudos > 0 {
                format!(", of which {alchemy_kudos} for alchemy forms")
            } else {
                String::new()
            };
            write(writeln!(
                out,
                "kudos: about {:.0} ({signatures} dry run(s){alchemy}); balance {balance}",
                estimate + alchemy_kudos as f64
            ))?;
        }
    }
    write(out.flush())?;
    Ok(ExitCode::SUCCESS)
}

fn schema() -> Result<ExitCode, AppError> {
    let schema = manifest::json_schema();
    let text =
        serde_json::to_string_pretty(&schema).map_err(|e| AppError::Stdout(io::Error::other(e)))?;
    let mut out = io::stdout().lock();
    writeln!(out, "{text}").map_err(AppError::Stdout)?;
    Ok(ExitCode::SUCCESS)
}
