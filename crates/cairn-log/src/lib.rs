//! The cairn log: the entry envelope, its codec, the blake3 hash chain and the `LogStore` trait.
//!
//! Every mutation of a cairn workspace is one [`StoredEntry`] at a dense offset (1, 2, 3, ...).
//! Each entry carries the hash of the previous one, so the log is a hash chain: changing,
//! dropping or reordering any entry is detected by [`ChainCursor`], which every reader, verifier
//! and replication follower runs over what it reads.
//!
//! This crate knows nothing of RocksDB, tokio or the lifecycle domain. `cairn-store` implements
//! [`LogStore`] on RocksDB; [`MemLog`] is the in-memory implementation; [`testing::suite`] is the
//! conformance suite both must pass. [`StateRead`]/[`StateWrite`] are the projection's keyspace as
//! the domain sees it, shared by the kernel and the store.

mod chain;
pub mod codec;
mod entry;
mod error;
pub mod frame;
pub mod limits;
mod mem;
mod state;
mod store;
pub mod testing;

pub use chain::{verify_hash, ChainCursor, Head, VerifiedEntry};
pub use codec::EncodedEntry;
pub use entry::{hex, EntryDraft, Hash, Meta, StoredEntry, FORMAT_LATEST, PAYLOAD_BYTES_MAX};
pub use error::{ChainError, CorruptReason, DecodeError, EntryError, LogError};
pub use mem::MemLog;
pub use state::{Space, StateError, StateRead, StateWrite};
pub use store::LogStore;
