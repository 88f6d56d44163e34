//! Where things live: the workspace directory, the column families and the canonical key forms.
//!
//! ```text
//! <data>/db/          the RocksDB database (column families below)
//! <data>/cairn.lock   exclusive lock of the opener; holds its pid
//! ```
//!
//! | column family | key | value |
//! |---|---|---|
//! | `log`   | offset, u64 big-endian (so key order is log order) | encoded `StoredEntry` |
//! | `state` | `<table>/<...>` bytes, owned by the state machine | its bytes |
//! | `drive` | drive records, owned by the state machine | its bytes |
//! | `meta`  | one of the `META_*` names below | see each |

use std::path::{Path, PathBuf};

/// Column family of the log.
pub const CF_LOG: &str = "log";
/// Column family of store metadata.
pub const CF_META: &str = "meta";
/// Every column family, in creation order (RocksDB's `default` also exists and stays empty).
pub const CFS: [&str; 4] = [CF_LOG, "state", CF_META, "drive"];

/// Version of this on-disk layout (column families and meta keys). Refused when unknown.
pub const LAYOUT_VERSION: u64 = 1;

/// `meta` key: the layout version, u64 BE.
pub const META_LAYOUT: &[u8] = b"layout_version";
/// `meta` key: the workspace id, 16 bytes (uuid).
pub const META_WORKSPACE_ID: &[u8] = b"workspace_id";
/// `meta` key: the last applied (= last stored) offset, u64 BE.
pub const META_APPLIED: &[u8] = b"applied_offset";
/// `meta` key: the hash of the entry at the applied offset, 32 bytes.
pub const META_HEAD_HASH: &[u8] = b"head_hash";
/// `meta` key: the epoch of the entry at the applied offset, u64 BE.
pub const META_HEAD_EPOCH: &[u8] = b"head_epoch";
/// `meta` key: the current leader epoch of this workspace, u64 BE.
pub const META_EPOCH: &[u8] = b"epoch";
/// `meta` key: the first retained log offset, u64 BE.
pub const META_FIRST: &[u8] = b"first_retained";
/// `meta` key: the projection version the state was built with, u64 BE; absent while a rebuild
/// is under way (so an interrupted rebuild starts over at the next open).
pub const META_PROJECTION: &[u8] = b"projection_version";

/// The RocksDB directory of a workspace.
pub fn db_dir(data: &Path) -> PathBuf {
    data.join("db")
}

/// The lock file of a workspace.
pub fn lock_path(data: &Path) -> PathBuf {
    data.join("cairn.lock")
}

/// The `log` key of an offset.
pub fn log_key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// The offset of a `log` key, if it is one.
pub fn parse_log_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Decodes a u64 meta value.
pub fn parse_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}
