//! Command-line arguments resolved once into what the commands work with
//! (ripgrep's low-level → high-level arguments): a manifest with the folders
//! its run keeps things in, and the Horde to talk to with its key. `run`,
//! `cancel`, `status` and `plan --kudos` all start here, so they agree on
//! every default. `--shard auto` is resolved here too (the environment is
//! read in this one place; `orchestrator` says what its variables mean).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::orchestrator::{shard_from_environment, OrchestratorError};
use super::{load, AppError};
use crate::cli::{HordeArgs, PlacesArgs, ShardArg};
use crate::horde::{ApiKey, ClientConfig, HordeClient};
use crate::manifest::CompiledManifest;
use crate::output::{FilenameTemplate, OutputDir};
use crate::plan::Shard;
use crate::sim::{SimApiKey, SimConfig, SimHandle};
use crate::store::Store;

/// The name of the state folder inside the output directory.
const STATE_DIR: &str = ".horde-batch";

/// The tokio runtime every command that talks to a Horde runs on.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)
}

/// A manifest and where its run keeps its files and its ledger.
pub(super) struct Batch {
    pub compiled: Arc<CompiledManifest>,
    pub template: FilenameTemplate,
    pub out_dir: PathBuf,
    pub state_dir: PathBuf,
    /// With `--shard`: only this part of the jobs, in its own folder.
    pub shard: Option<Shard>,
}

impl Batch {
    /// Loads and checks `manifest`; `--out` and `--state` override its
    /// folders, and `--shard` (`auto` resolved) picks a shard's folder.
    pub fn load(
        manifest: &Path,
        max_jobs: Option<u64>,
        places: &PlacesArgs,
    ) -> Result<Batch, AppError> {
        // Before anything else is read: a shard the environment cannot give
        // is a usage error, whatever the manifest says.
        let shard = resolve_shard(places)?;
        let compiled = Arc::new(load(manifest, max_jobs)?);
        let template = FilenameTemplate::parse(&compiled.output.filename)?;
        let base_dir = places
            .out
            .clone()
            .unwrap_or_else(|| compiled.output.dir.clone());
        let batch = Batch {
            compiled,
            template,
            out_dir: base_dir.clone(),
            state_dir: base_dir.join(STATE_DIR),
            shard: None,
        };
        Ok(match (shard, &places.state) {
            (Some(shard), _) => batch.for_shard(shard, places.state.clone()),
            (None, Some(state)) => Batch {
                state_dir: state.clone(),
                ..batch
            },
            (None, None) => batch,
        })
    }

    /// The batch of shard `shard` of the same manifest (whose output folder is
    /// the one holding the shard folders): its folder and, unless `state`
    /// says otherwise, the ledger in it.
    pub fn for_shard(&self, shard: Shard, state: Option<PathBuf>) -> Batch {
        // A shard writes the same layout into a folder of its own, so shards
        // running at once never share an index file or a ledger.
        let out_dir = self.out_dir.join(shard.folder());
        Batch {
            compiled: Arc::clone(&self.compiled),
            template: self.template.clone(),
            state_dir: state.unwrap_or_else(|| out_dir.join(STATE_DIR)),
            out_dir,
            shard: Some(shard),
        }
    }

    /// Opens the output folder (first: if it cannot be written, nothing else is touched).
    pub async fn open_output(&self) -> Result<OutputDir, AppError> {
        let dir = self.out_dir.clone();
        let index = match self.shard {
            Some(_) => crate::output::SHARD_INDEX_FILE,
            None => crate::output::INDEX_FILE,
        };
        tokio::task::spawn_blocking(move || OutputDir::open_with_index(dir, index))
            .await
            .map_err(|e| AppError::Config(format!("opening the output directory failed: {e}")))?
            .map_err(AppError::from)
    }

    /// Opens (and locks) the ledger.
    pub async fn open_store(&self) -> Result<Store, AppError> {
        let dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| AppError::Config(format!("opening the ledger failed: {e}")))?
            .map_err(AppError::from)
    }
}

/// `--shard` as given, with `auto` resolved from this process's environment
/// (the one place it is read), and `--shards` checked against it. Says on
/// stderr which shard `auto` chose and from what.
fn resolve_shard(places: &PlacesArgs) -> Result<Option<Shard>, AppError> {
    let invalid = |e: OrchestratorError| AppError::Config(e.to_string());
    match places.shard {
        None => Ok(None),
        Some(ShardArg::Fixed(shard)) => match places.shards {
            Some(count) if count != shard.count => Err(invalid(OrchestratorError::Disagrees {
                given: format!("--shards {count}"),
                with: format!("--shard {}/{}", shard.index, shard.count),
            })),
            _ => Ok(Some(shard)),
        },
        Some(ShardArg::Auto) => {
            let found = shard_from_environment(|name| std::env::var(name).ok(), places.shards)
                .map_err(invalid)?;
            crate::say!(
                "horde-batch: shard {}/{} from {}",
                found.shard.index,
                found.shard.count,
                found.source
            );
            Ok(Some(found.shard))
        }
    }
}

/// The Horde a command talks to: the real one, a URL, or a simulated Horde
/// started in this process.
pub(super) struct Horde {
    /// The primary key's client (the first key given).
    pub client: HordeClient,
    /// One client per key of the run, the primary first (a pool of one
    /// without `--api-keys-file` or a repeated `--api-key-file`).
    pub clients: Vec<HordeClient>,
    sim: Option<SimHandle>,
}

impl Horde {
    /// Resolves the key and the URL and builds the client. With `simulate`,
    /// starts the simulated Horde on loopback and registers the key in it, so
    /// a user who has `AI_HORDE_API_KEY` exported can rehearse as they run.
    pub async fn connect(args: &HordeArgs, simulate: bool) -> Result<Horde, AppError> {
        let keys = api_keys(args)?;
        let sim = if simulate {
            let mut config = SimConfig::default();
            for key in keys.iter().filter(|key| !key.is_anonymous()) {
                config.api_keys.push(SimApiKey::new(key.expose_secret()));
            }
            let handle = crate::sim::spawn(config).await?;
            tracing::info!(url = %handle.base_url(), "simulated Horde started");
            Some(handle)
        } else {
            None
        };
        let url = match (&sim, &args.horde_url) {
            (Some(sim), _) => sim.base_url(),
            (None, Some(url)) => url.clone(),
            (None, None) => crate::horde::DEFAULT_BASE_URL.to_owned(),
        };
        let url = reqwest::Url::parse(&url)
            .map_err(|e| AppError::Config(format!("bad Horde URL `{url}`: {e}")))?;
        let mut clients = Vec::with_capacity(keys.len());
        for key in keys {
            let mut config = ClientConfig::new(url.clone(), key);
            if let Some(contact) = &args.contact {
                config.contact = contact.clone();
            }
            clients.push(HordeClient::new(config).map_err(|e| AppError::Config(e.to_string()))?);
        }
        let Some(client) = clients.first().cloned() else {
            return Err(AppError::Config("no API key to use".into()));
        };
        Ok(Horde {
            client,
            clients,
            sim,
        })
    }

    /// Stops the simulated Horde, if one was started.
    pub async fn close(self) {
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }
}

/// The keys: each `--api-key-file` (its only line), then every line of
/// `--api-keys-file`; without either, `AI_HORDE_API_KEY`, else anonymous. A
/// key given twice is used once. Errors name the file, never a key.
fn api_keys(horde: &HordeArgs) -> Result<Vec<ApiKey>, AppError> {
    let mut keys: Vec<String> = Vec::new();
    for path in &horde.api_key_file {
        keys.push(single_key(&read_key_file(path)?, path)?.to_owned());
    }
    if let Some(path) = &horde.api_keys_file {
        let text = read_key_file(path)?;
        let listed: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        if listed.is_empty() {
            return Err(AppError::Config(format!(
                "the API keys file {} lists no key",
                path.display()
            )));
        }
        keys.extend(listed.into_iter().map(str::to_owned));
    }
    if keys.is_empty() {
        return Ok(vec![match std::env::var("AI_HORDE_API_KEY") {
            Ok(key) if !key.trim().is_empty() => ApiKey::new(key.trim()),
            _ => ApiKey::anonymous(),
        }]);
    }
    let mut unique: Vec<String> = Vec::with_capacity(keys.len());
    for key in keys {
        if !unique.contains(&key) {
            unique.push(key);
        }
    }
    Ok(unique.into_iter().map(ApiKey::new).collect())
}

/// The one key an `--api-key-file` holds: its only non-blank line. A second
/// line or a `#` comment means a file written for `--api-keys-file`, and
/// taking its first line would send a comment or the wrong key as the key.
/// Errors name the file and never show a line of it: any line may be a key.
fn single_key<'a>(text: &'a str, path: &Path) -> Result<&'a str, AppError> {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let shown = crate::terminal::escaped(&path.to_string_lossy()).to_string();
    match (lines.next(), lines.next()) {
        (None, _) => Err(AppError::Config(format!(
            "the API key file {shown} is empty"
        ))),
        (Some(key), None) if !key.starts_with('#') => Ok(key),
        (Some(_), None) => Err(AppError::KeyFile(format!(
            "the API key file {shown} holds a `#` comment, not a key"
        ))),
        (Some(_), Some(_)) => Err(AppError::KeyFile(format!(
            "the API key file {shown} has more than one line"
        ))),
    }
}

fn read_key_file(path: &Path) -> Result<String, AppError> {
    std::fs::read_to_string(path).map_err(|e| {
        AppError::Config(format!(
            "cannot read the API key file {}: {e}",
            path.display()
        ))
    })
}
