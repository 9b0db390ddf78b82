//! Minimal entry point for the simulator branch; the real CLI replaces it.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "horde-batch",
    version,
    about = "Batch image generation for the AI Horde"
)]
enum Cli {
    /// Run the simulated AI Horde on 127.0.0.1.
    Sim(horde_batch::sim::SimConfig),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let Cli::Sim(config) = Cli::parse();
    match horde_batch::sim::run_cli(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{:?}", miette::Report::new(error));
            ExitCode::FAILURE
        }
    }
}
