//! An in-memory [`LogStore`]: the reference implementation, for tests and embedders that need
//! no persistence. Entries are kept encoded, exactly as a durable store keeps them.

use std::sync::Mutex;

use crate::chain::{ChainCursor, Head};
use crate::codec;
use crate::entry::StoredEntry;
use crate::error::{CorruptReason, LogError};
use crate::store::LogStore;

/// A log held in memory.
#[derive(Default)]
pub struct MemLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Encoded entries; `entries[i]` is offset `i + 1`.
    entries: Vec<Vec<u8>>,
    head: Option<Head>,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated: `append` pushes
        // only after every entry was checked. So a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogStore for MemLog {
    fn append(&self, entries: &[StoredEntry]) -> Result<(), LogError> {
        let mut inner = self.lock();
        let mut cursor = ChainCursor::new(inner.head.unwrap_or(Head::EMPTY));
        for entry in entries {
            cursor.advance(entry)?;
        }
        inner.entries.extend(entries.iter().map(codec::encode));
        if !entries.is_empty() {
            inner.head = Some(cursor.head());
        }
        Ok(())
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, LogError> {
        if from == 0 {
            return Err(LogError::Compacted {
                requested: 0,
                first: 1,
            });
        }
        let inner = self.lock();
        let start = (from - 1) as usize;
        let mut out = Vec::new();
        let mut cursor: Option<ChainCursor> = None;
        for (i, bytes) in inner.entries.iter().enumerate().skip(start).take(limit) {
            let offset = i as u64 + 1;
            let corrupt = |reason: CorruptReason| LogError::Corrupt { offset, reason };
            let entry = codec::decode(bytes).map_err(|e| corrupt(e.into()))?;
            let cur = cursor.get_or_insert_with(|| {
                ChainCursor::new(Head {
                    offset: offset - 1,
                    hash: entry.prev,
                    epoch: 0,
                })
            });
            cur.advance(&entry).map_err(|e| corrupt(e.into()))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn head(&self) -> Result<Head, LogError> {
        Ok(self.lock().head.unwrap_or(Head::EMPTY))
    }

    fn first_retained(&self) -> Result<u64, LogError> {
        Ok(1)
    }
}
