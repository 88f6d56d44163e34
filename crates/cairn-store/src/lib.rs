//! cairn's RocksDB store: the log, the projection and the metadata of one workspace, written
//! together by one writer thread in atomic group commits.
//!
//! - [`Store::init`] / [`Store::open`] (exclusive, O(1) in log length) / drop to close.
//! - [`Store::submit`] a command (decided by the [`StateMachine`] against committed state plus
//!   the group so far) or [`Store::submit_entries`] written elsewhere; each group is one
//!   RocksDB `WriteBatch` holding entries, state changes and the new applied offset/head.
//! - [`Store::read`] a [`ReadView`]: a snapshot that reports the applied offset it reflects,
//!   reads state, reads the log, verifies the chain and computes the state [`Digest`].
//! - [`Store::backup`] a checkpoint; [`Store::rebuild`] the projection from the log.
//! - [`PartialDir`]: a directory that appears complete under its final name or not at all.

mod base;
mod error;
pub mod layout;
mod lock;
mod machine;
mod overlay;
pub mod partial;
mod recovery;
mod spin;
mod store;
pub mod testing;
mod view;
mod wal;
mod writer;

pub use error::{CommandError, StoreError};
pub use machine::{ApplyError, CheckOpenError, DecideCtx, DecideError, Event, Lane, StateMachine};
pub use overlay::{READ_CACHE_BYTES_MAX, READ_CACHE_ENTRIES_MAX, READ_CACHE_VALUE_BYTES_MAX};
pub use partial::PartialDir;
pub use recovery::{WalDamage, QUARANTINE_DIR, WAL_DAMAGE_FILE, WAL_LOSS_ACCEPTED_FILE};
pub use spin::{ANSWER_YIELD_US_MAX, QUICK_WRITE_NS_MAX};
pub use store::{
    db_options, open_raw_db, system_clock_ms, CommandTicket, Durability, Options, RebuildReport,
    Store, Ticket, TicketFuture, BUFFERED_SYNC_INTERVAL_MS, INFO_LOG_FILES_MAX,
    INFO_LOG_FILE_BYTES_MAX,
};
pub use view::{Digest, Progress, ReadView, VerifyReport};
pub use writer::{
    Committed, Spent, WriterHealth, WriterStats, BULK_GROUP_COMMANDS_MAX, BULK_QUEUED_MAX,
    FOREGROUND_RECENT,
};
