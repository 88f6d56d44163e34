//! Subscriptions: follow the log from an offset, catching up from the log and then live.
//!
//! A subscriber reads entries from the log itself (in batches, on the blocking pool) and waits
//! for the applied offset to move when it has caught up. Nothing is buffered per subscriber
//! beyond one batch, so a slow subscriber costs nothing and never loses entries: it simply
//! reads further behind. Asking below the first retained offset is an explicit `Compacted`.

use std::collections::VecDeque;
use std::sync::Arc;

use cairn_log::StoredEntry;
use tokio::sync::watch;

use crate::error::Error;
use crate::workspace::Inner;

/// Entries read from the log per batch (the subscriber buffer limit).
pub const SUBSCRIBER_BATCH_ENTRIES: usize = 256;

/// A live follower of the log.
pub struct Subscription {
    inner: Arc<Inner>,
    next: u64,
    buffer: VecDeque<StoredEntry>,
    applied: watch::Receiver<u64>,
}

impl Subscription {
    pub(crate) fn new(inner: Arc<Inner>, from: u64) -> Result<Self, Error> {
        let from = from.max(1);
        let first = inner.store.read()?.first_retained();
        if from < first {
            return Err(Error::Compacted {
                requested: from,
                first,
            });
        }
        let applied = inner.applied.subscribe();
        Ok(Self {
            inner,
            next: from,
            buffer: VecDeque::new(),
            applied,
        })
    }

    /// The offset the next entry will have.
    pub fn position(&self) -> u64 {
        self.next - self.buffer.len() as u64
    }

    /// The next entry, waiting for it if needed. Ends with `Error::Closed` when the workspace
    /// closes.
    pub async fn next(&mut self) -> Result<StoredEntry, Error> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Ok(e);
            }
            let applied = self.inner.store.applied();
            if self.next <= applied {
                let inner = Arc::clone(&self.inner);
                let from = self.next;
                let batch = tokio::task::spawn_blocking(move || {
                    inner.store.read()?.read_log(from, SUBSCRIBER_BATCH_ENTRIES)
                })
                .await
                .map_err(|e| Error::Internal(format!("log read task failed: {e}")))?;
                let batch = match batch {
                    Ok(b) => b,
                    Err(cairn_store::StoreError::Compacted { requested, first }) => {
                        return Err(Error::Compacted { requested, first })
                    }
                    Err(e) => return Err(e.into()),
                };
                if let Some(last) = batch.last() {
                    self.next = last.offset + 1;
                }
                self.buffer.extend(batch);
                continue;
            }
            let next = self.next;
            tokio::select! {
                r = self.applied.wait_for(|a| *a >= next) => {
                    r.map_err(|_| Error::Closed)?;
                }
                _ = self.inner.shutdown.cancelled() => return Err(Error::Closed),
            }
        }
    }
}
