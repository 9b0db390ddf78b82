//! Errors of the ledger. Every variant names the state directory, so a message
//! read in a cron log says which run it is about. The database backend's own
//! error types never appear here: the backend can change without touching callers.

use std::path::PathBuf;

/// Something went wrong opening, reading or writing the ledger.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another handle in this process) holds the ledger's lock.
    #[error(
        "state directory {} is in use by another horde-batch run{}",
        dir.display(),
        describe_holder(*.pid)
    )]
    #[diagnostic(
        code(horde_batch::store::locked),
        help(
            "Only one run can use a state directory at a time. Wait for the other run to \
             finish or stop it; a run that was killed releases the lock when its process exits."
        )
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The pid recorded by the run holding the lock, if it left a readable pidfile.
        pid: Option<u32>,
    },

    /// The ledger exists but cannot be read: corrupted, truncated or not a ledger at all.
    #[error("the ledger in state directory {} is damaged: {detail}", dir.display())]
    #[diagnostic(
        code(horde_batch::store::damaged),
        help(
            "Move the state directory aside (keep it for a bug report) and start again with \
             `--rebuild-state`, which rebuilds finished work from the image sidecars."
        )
    )]
    Damaged {
        /// The state directory.
        dir: PathBuf,
        /// What the backend reported.
        detail: String,
    },

    /// A file-system operation on the state directory failed.
    #[error("could not {action} in state directory {}", dir.display())]
    #[diagnostic(code(horde_batch::store::io))]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// What we were doing, e.g. "create the directory".
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The database backend failed while reading or writing.
    #[error("the ledger in state directory {} failed", dir.display())]
    #[diagnostic(
        code(horde_batch::store::database),
        help("Check free disk space and permissions of the state directory.")
    )]
    Database {
        /// The state directory.
        dir: PathBuf,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A stored record or key could not be decoded (bad JSON, unknown schema version).
    #[error("bad ledger record {key:?} in state directory {}: {detail}", dir.display())]
    #[diagnostic(
        code(horde_batch::store::bad_record),
        help(
            "The record was written by a different horde-batch version or was damaged. \
             Use the horde-batch version that wrote this state directory, or move it aside \
             and start again with `--rebuild-state`."
        )
    )]
    BadRecord {
        /// The state directory.
        dir: PathBuf,
        /// The record's key as stored.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
}

fn describe_holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}

impl StoreError {
    /// Maps a backend error: corruption becomes [`StoreError::Damaged`], the rest
    /// [`StoreError::Database`].
    pub(crate) fn from_sled(dir: &std::path::Path, error: sled::Error) -> StoreError {
        match error {
            sled::Error::Corruption { .. } => StoreError::Damaged {
                dir: dir.to_path_buf(),
                detail: super::describe_sled(&error),
            },
            other => StoreError::Database {
                dir: dir.to_path_buf(),
                source: Box::new(other),
            },
        }
    }
}
