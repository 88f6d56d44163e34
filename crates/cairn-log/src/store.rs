//! The `LogStore` trait: what every place that holds a log must do, and promise.

use crate::chain::Head;
use crate::entry::StoredEntry;
use crate::error::LogError;

/// A place that holds a hash-chained log.
///
/// The contract, checked by [`crate::testing::suite`]:
/// - `append` takes entries that continue the chain (next offset, `prev` = head hash, valid
///   hash, epoch not going back); anything else is refused with [`LogError::Refused`] and
///   **nothing** of the batch is written. An empty batch is a no-op.
/// - `read(from, limit)` returns up to `limit` entries starting at `from`, in order, each checked
///   against its hash and linked to the one before; an offset past the head gives fewer (or no)
///   entries; an offset below [`LogStore::first_retained`] is [`LogError::Compacted`].
/// - `head` is the last entry's position ([`Head::EMPTY`] for an empty log).
/// - A stored entry that fails its checks is reported as [`LogError::Corrupt`] with its offset,
///   never skipped.
pub trait LogStore {
    /// Appends a contiguous batch atomically.
    fn append(&self, entries: &[StoredEntry]) -> Result<(), LogError>;
    /// Reads up to `limit` entries from offset `from`.
    fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, LogError>;
    /// The last entry's position.
    fn head(&self) -> Result<Head, LogError>;
    /// The first offset still held (1 unless the log was compacted).
    fn first_retained(&self) -> Result<u64, LogError>;
}
