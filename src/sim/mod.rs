//! The simulated AI Horde: a real HTTP server (axum) on 127.0.0.1 that
//! behaves like the real one as far as a batch client can tell — same
//! endpoints, bodies, status codes and rate limits, simulated workers with
//! latency, faults and censorship, expiry, cancel semantics, base64 and
//! R2-URL delivery — plus counters (`/sim/stats`) and chaos knobs.
//!
//! Several registered users (one per `--api-key`, each with its own
//! concurrency and kudos) share the workers with `--background-load` images
//! of other users, served in arrival order. Test-only hooks outside `/api`:
//! `/sim/users` (per-user figures), `/sim/owner/{id}` (who made a request) and
//! `POST /sim/revoke` (a key becomes invalid mid-run).
//!
//! It is used by tests, benchmarks, `horde-batch sim` and `run --simulate`.
//! Rule: it is never kinder than the real server (see
//! `docs/horde-api.md`). It shares no code with the client
//! (`crate::horde`), so a client bug cannot be hidden by shared types.
//!
//! Module map: `config` (flags), `state` (all rules, one module per
//! responsibility: submit, kudos, users, shared keys, requests, jobs, R2,
//! alchemy, cleaner, counters), `validate` (schema, defaults and source
//! images), `limits` (flask-limiter windows), `routes` and `routes_alchemy`
//! (HTTP), `chaos` (accounting and chaos layer), `workers` (worker and
//! cleaner tasks), `alchemists` (interrogation worker tasks),
//! `alchemy_forms` (the form catalog and costs), `alchemy_results` (what
//! alchemists compute), `images` (WebP pixels), `stats` (counters), `wire`
//! (JSON bodies), `det` (seeded randomness), `clock` (dates), `sha256`.

mod alchemists;
mod alchemy_forms;
mod alchemy_results;
mod chaos;
mod clock;
mod config;
mod det;
pub mod images;
mod limits;
mod routes;
mod routes_alchemy;
mod sha256;
mod state;
mod stats;
mod validate;
mod wire;
mod workers;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{LatencySpec, SimApiKey, SimConfig};
pub use stats::{ChaosStats, SimStats, SourceSeen};

/// Errors starting or running the simulator.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SimError {
    /// A flag combination that cannot run.
    #[error("invalid simulator configuration: {0}")]
    #[diagnostic(code(horde_batch::sim::config))]
    Config(String),

    /// The port could not be bound.
    #[error("cannot listen on 127.0.0.1:{port}")]
    #[diagnostic(
        code(horde_batch::sim::bind),
        help("pick another --port, or 0 for a free one")
    )]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },

    /// The server stopped with an I/O error.
    #[error("the simulated Horde stopped with an I/O error")]
    #[diagnostic(code(horde_batch::sim::serve))]
    Serve(#[source] std::io::Error),

    /// Writing the "listening" line failed.
    #[error("cannot write to stdout")]
    #[diagnostic(code(horde_batch::sim::stdout))]
    Stdout(#[source] std::io::Error),
}

/// A simulator running inside this process (see [`spawn`]).
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<workers::Shared>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// The loopback address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL, `http://127.0.0.1:P/api/` (endpoints are under `v2/`).
    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// Current counters, read directly (no HTTP call, not counted).
    pub fn stats(&self) -> SimStats {
        self.shared.lock().snapshot()
    }

    /// Stops the workers, the cleaner and the server, and waits for them.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        // The server task is in the same set and stops on the same token.
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // A handle dropped without shutdown() still stops its tasks.
        self.shared.shutdown.cancel();
    }
}

/// Starts a simulator on 127.0.0.1 (port `config.port`, 0 for a free one)
/// in the current tokio runtime.
pub async fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
    config.validate().map_err(SimError::Config)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
        .await
        .map_err(|source| SimError::Bind {
            port: config.port,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        port: config.port,
        source,
    })?;

    let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
    let horde = state::Horde::new(&config, seed, format!("http://{addr}/"));
    let det = horde.settings.det;
    let shared = Arc::new(workers::Shared {
        horde: Mutex::new(horde),
        work_available: tokio::sync::Notify::new(),
        shutdown: CancellationToken::new(),
    });

    let mut tasks = JoinSet::new();
    for worker in 0..config.workers {
        tasks.spawn(workers::run_worker(Arc::clone(&shared), worker));
    }
    for alchemist in 0..config.alchemists {
        tasks.spawn(alchemists::run_alchemist(Arc::clone(&shared), alchemist));
    }
    tasks.spawn(workers::run_cleaner(
        Arc::clone(&shared),
        config.cleanup_interval,
    ));

    let app = routes::App::new(
        Arc::clone(&shared),
        limits::Limiter::new(!config.no_rate_limits),
        chaos::ChaosSettings::new(&config, det),
        config.submit_latency,
    );
    let service = routes::router(app).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shared.shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "simulated Horde server stopped");
        }
    });
    tracing::info!(%addr, workers = config.workers, seed, "simulated Horde started");
    Ok(SimHandle {
        addr,
        shared,
        tasks,
    })
}

/// `horde-batch sim`: starts the simulator, prints
/// `horde-batch sim listening on http://127.0.0.1:P/api/` on stdout, and
/// serves until Ctrl-C or SIGTERM.
pub async fn run_cli(config: SimConfig) -> Result<(), SimError> {
    let handle = spawn(config).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "horde-batch sim listening on {}", handle.base_url())
            .map_err(SimError::Stdout)?;
        stdout.flush().map_err(SimError::Stdout)?;
    }
    wait_for_stop_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
