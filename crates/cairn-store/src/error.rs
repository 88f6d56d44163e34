//! The store's errors. [`StoreError`] is a failure (IO, corruption, a stopped writer);
//! a command's rejection travels separately in [`CommandError::Rejected`].

use cairn_log::{ChainError, CorruptReason, EntryError, LogError};

use crate::machine::ApplyError;
use crate::recovery::WalDamage;

/// A failure of the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No workspace at the path.
    #[error("{path} is not a cairn workspace (no {path}/db); initialize it first")]
    NotInitialized {
        /// The data directory.
        path: String,
    },
    /// `init` on a directory that already holds a workspace.
    #[error("{path} already holds a cairn workspace")]
    AlreadyInitialized {
        /// The data directory.
        path: String,
    },
    /// Another process has the workspace open.
    #[error("workspace is locked by pid {pid}")]
    Locked {
        /// The holder's pid, as written in the lock file.
        pid: String,
    },
    /// The stored layout is not one this build knows.
    #[error("workspace layout version {found} is not supported (this build reads {supported})")]
    Layout {
        /// Stored version.
        found: u64,
        /// This build's version.
        supported: u64,
    },
    /// A stored log entry is corrupt.
    #[error("corrupt entry at offset {offset}: {reason}")]
    Corrupt {
        /// Its offset.
        offset: u64,
        /// What is wrong.
        reason: CorruptReason,
    },
    /// The state machine refuses this workspace (e.g. its schema is newer than the binary's).
    #[error("{0}")]
    Incompatible(String),
    /// Store metadata contradicts the log (e.g. applied offset is not the last entry).
    #[error("inconsistent store: {0}")]
    Inconsistent(String),
    /// Entries handed in for appending do not continue the chain; nothing was written.
    #[error("append refused: {0}")]
    Refused(#[from] ChainError),
    /// A command's events break the entry format's limits; nothing was written.
    #[error("command refused: {0}")]
    BadEntry(#[from] EntryError),
    /// A command yields more events than one commit may hold; nothing was written.
    #[error("command yields {count} events, over the limit of {max} per command")]
    TooManyEvents {
        /// Events yielded.
        count: usize,
        /// `command_entries_max`.
        max: usize,
    },
    /// The requested offset is not retained.
    #[error("offset {requested} is not retained; the first retained offset is {first}")]
    Compacted {
        /// Asked for.
        requested: u64,
        /// First retained.
        first: u64,
    },
    /// An entry could not be applied; the writer stopped.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// The write-ahead log holds acknowledged commits that its replay would drop; every open
    /// is refused until the loss is accepted or the workspace restored.
    #[error("{0}")]
    WalDamaged(Box<WalDamage>),
    /// An acceptance of WAL loss on a workspace that has none recorded.
    #[error("no write-ahead log damage is recorded for {path}; there is nothing to accept")]
    NothingToAccept {
        /// The data directory.
        path: String,
    },
    /// RocksDB found corruption in its files (a bad block checksum, a damaged MANIFEST).
    #[error("{context}: {message}")]
    DbCorruption {
        /// What the store was doing.
        context: String,
        /// RocksDB's report, naming the file where it can.
        message: String,
    },
    /// RocksDB or the file system failed.
    #[error("{context}: {message}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        message: String,
    },
    /// A group commit's write failed (a full disk, an IO error): the command is not
    /// acknowledged. The writer stays up and tries again with the next commit.
    #[error(
        "commit failed: {reason}; it is not acknowledged (commits are retried and resume by \
         themselves once the cause is gone, e.g. when disk space is freed)"
    )]
    WriteFailed {
        /// RocksDB's or the file system's error.
        reason: String,
    },
    /// A command was submitted to a store opened read-only.
    #[error("the workspace is open read-only; it accepts no commands")]
    ReadOnly,
    /// The writer stopped after an earlier failure; reopen the workspace.
    #[error("store writer stopped after an earlier failure: {0}")]
    Stopped(String),
}

impl StoreError {
    /// An IO failure while doing `context`.
    pub fn io(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        StoreError::Io {
            context: context.into(),
            message: e.to_string(),
        }
    }

    /// A RocksDB failure while doing `context`: corruption RocksDB detected is an integrity
    /// failure ([`StoreError::DbCorruption`]), anything else IO.
    pub(crate) fn db(context: &str) -> impl FnOnce(rocksdb::Error) -> Self + '_ {
        move |e| StoreError::from_db(context, &e)
    }

    /// A failed state read while doing `context`: corruption stays an integrity failure.
    pub fn state(context: &str, e: cairn_log::StateError) -> Self {
        if e.is_corrupt() {
            StoreError::DbCorruption {
                context: context.to_owned(),
                message: e.message().to_owned(),
            }
        } else {
            StoreError::io(context, e)
        }
    }

    /// Classifies a RocksDB error met while doing `context`.
    pub fn from_db(context: &str, e: &rocksdb::Error) -> Self {
        match e.kind() {
            rocksdb::ErrorKind::Corruption => StoreError::DbCorruption {
                context: context.to_owned(),
                message: e.to_string(),
            },
            _ => StoreError::io(context, e),
        }
    }

    /// Whether this is an integrity failure (corruption, a damaged WAL, an inconsistency), as
    /// opposed to IO or a usage error.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Inconsistent(_)
                | StoreError::WalDamaged(_)
                | StoreError::DbCorruption { .. }
        )
    }
}

impl From<StoreError> for LogError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(c) => LogError::Refused(c),
            StoreError::Corrupt { offset, reason } => LogError::Corrupt { offset, reason },
            StoreError::Compacted { requested, first } => LogError::Compacted { requested, first },
            other => LogError::Storage(other.to_string()),
        }
    }
}

/// Why a command produced no commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError<R: std::fmt::Debug> {
    /// The state machine refused the command; nothing was written.
    #[error("rejected: {0:?}")]
    Rejected(R),
    /// The store failed; nothing of this command is acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
}
