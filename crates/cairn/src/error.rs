//! The runtime's error: a rejection (the command was wrong; nothing written) is kept apart from
//! failures (store, vault, closed workspace), so callers can tell them apart.

use cairn_kernel::Rejection;
use cairn_store::{CommandError, StoreError};

use crate::vault::VaultError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command was refused; nothing was written.
    #[error("{0}")]
    Rejected(Rejection),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault key or a sealed value failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A subscription asked for entries that are no longer retained.
    #[error("offset {requested} is compacted; the first retained offset is {first}")]
    Compacted {
        /// Asked for.
        requested: u64,
        /// First retained.
        first: u64,
    },
    /// The workspace is closing or closed.
    #[error("the workspace is closed")]
    Closed,
    /// This workspace is a mirror: it takes entries from its leader and decides no command.
    #[error("this workspace is a mirror; commands go to its leader")]
    NotLeader,
    /// A mirror's data directory was opened to write as a leader.
    #[error(
        "{dir} is a mirror's data directory: it takes entries from its leader only; run \
         `cairn mirror` on it, or open it read-only (promotion is not built yet)"
    )]
    IsMirror {
        /// The data directory.
        dir: String,
    },
    /// Replicated entries were submitted to a workspace that is not a mirror.
    #[error("this workspace is a leader; only a mirror applies a leader's entries")]
    NotMirror,
    /// Daemons are not supervised by this process (a mirror, or local mode).
    #[error(
        "daemons are not supervised by this process: they run on the leader under `cairn \
         serve` (local mode and mirrors do not run them)"
    )]
    NotSupervised,
    /// Something the runtime expected of the projection does not hold.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The rejection, if the command was refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Error::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

impl From<CommandError<Rejection>> for Error {
    fn from(e: CommandError<Rejection>) -> Self {
        match e {
            CommandError::Rejected(r) => Error::Rejected(r),
            CommandError::Store(s) => Error::Store(s),
        }
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        Error::Rejected(r)
    }
}

impl From<cairn_log::StateError> for Error {
    fn from(e: cairn_log::StateError) -> Self {
        Error::Store(StoreError::state("read state", e))
    }
}
