//! The hash chain: checking that entries continue a log, one at a time.

use crate::entry::{Hash, StoredEntry};
use crate::error::ChainError;

/// The last entry of a log: what the next entry must link to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Offset of the last entry (0 for an empty log).
    pub offset: u64,
    /// Its hash ([`Hash::ZERO`] for an empty log).
    pub hash: Hash,
    /// Its epoch (0 for an empty log).
    pub epoch: u64,
}

impl Head {
    /// The head of an empty log.
    pub const EMPTY: Head = Head {
        offset: 0,
        hash: Hash::ZERO,
        epoch: 0,
    };
}

/// Walks a chain entry by entry: each entry must be at the next offset, link to the previous
/// hash, hash to its stored hash, not go back in epoch and respect the format's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainCursor {
    head: Head,
}

impl ChainCursor {
    /// A cursor positioned after `head` (use [`Head::EMPTY`] for a log's start).
    pub fn new(head: Head) -> Self {
        Self { head }
    }

    /// The last entry accepted so far.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Checks that `entry` continues the chain and advances past it. On error nothing changes.
    pub fn advance(&mut self, entry: &StoredEntry) -> Result<(), ChainError> {
        self.check(entry)?;
        self.head = entry.head();
        Ok(())
    }

    /// Advances past an entry whose hash is known to be right (this process sealed it, or
    /// [`ChainCursor::check`] just verified it against this cursor), checking only the cheap
    /// links: offset, prev and epoch. Entries from anywhere else go through
    /// [`ChainCursor::advance`].
    pub fn advance_sealed(&mut self, entry: &StoredEntry) -> Result<(), ChainError> {
        self.check_links(entry)?;
        self.head = entry.head();
        Ok(())
    }

    /// Checks that `entry` continues the chain, without advancing.
    pub fn check(&self, entry: &StoredEntry) -> Result<(), ChainError> {
        self.check_links(entry)?;
        verify_hash(entry)
    }

    fn check_links(&self, entry: &StoredEntry) -> Result<(), ChainError> {
        let expected = self.head.offset + 1;
        if entry.offset != expected {
            return Err(ChainError::OffsetMismatch {
                expected,
                found: entry.offset,
            });
        }
        if entry.prev != self.head.hash {
            return Err(ChainError::PrevMismatch {
                offset: entry.offset,
                expected: self.head.hash,
                found: entry.prev,
            });
        }
        if entry.epoch < self.head.epoch {
            return Err(ChainError::EpochRegressed {
                offset: entry.offset,
                prev_epoch: self.head.epoch,
                epoch: entry.epoch,
            });
        }
        Ok(())
    }
}

/// Checks an entry on its own: its stored hash is the hash of its contents, and its fields are
/// within the format's limits.
pub fn verify_hash(entry: &StoredEntry) -> Result<(), ChainError> {
    let computed = entry.compute_hash();
    if computed != entry.hash {
        return Err(ChainError::HashMismatch {
            offset: entry.offset,
            stored: entry.hash,
            computed,
        });
    }
    crate::entry::validate_fields(&entry.kind, &entry.meta, entry.payload.len()).map_err(|error| {
        ChainError::Invalid {
            offset: entry.offset,
            error,
        }
    })
}
