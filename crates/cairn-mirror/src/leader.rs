//! The leader's side: admits a follower ([`crate::protocol::admit`]), streams its frames from
//! the log (backlog, then live, with heartbeats), and keeps the table of mirrors with their
//! acknowledged offsets.
//!
//! The stream reads through a [`cairn::Subscription`]: entries come from the log itself, one
//! batch at a time, so a slow follower costs one batch and a bounded channel of chunks, is
//! never dropped and never skips an entry; it simply reads further behind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::Workspace;
use cairn_log::Hash;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{admit, FollowerHello, Frame, LeaderView, Refusal};

/// How often an idle stream sends a heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Bytes of frames per chunk handed to the connection.
pub const STREAM_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks a stream buffers ahead of a slow follower.
pub const STREAM_CHUNKS_AHEAD_MAX: usize = 8;
/// Mirrors kept in the table (a name not seen for longest is forgotten first).
pub const MIRRORS_MAX: usize = 64;

/// A chunk of the stream's bytes, or the error that ends it.
pub type Chunk = std::io::Result<Vec<u8>>;

/// What the leader knows of one mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MirrorRecord {
    /// The name it connects under.
    pub name: String,
    /// The offset it last said it has durably applied.
    pub applied_offset: u64,
    /// Streams it has open now.
    pub streams: u32,
    /// When it last connected or acknowledged (ms since the Unix epoch).
    pub last_contact_ms: u64,
    /// Acknowledgements taken from it since this leader started (each one an HTTP request).
    pub acks: u64,
}

/// The table of mirrors a leader serves.
#[derive(Debug, Default)]
pub struct Mirrors {
    table: Mutex<BTreeMap<String, MirrorRecord>>,
    /// Woken on every acknowledgement (synchronous mirrors wait on it).
    acked: tokio::sync::Notify,
}

impl Mirrors {
    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MirrorRecord>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record<'a>(
        table: &'a mut BTreeMap<String, MirrorRecord>,
        name: &str,
        now_ms: u64,
    ) -> &'a mut MirrorRecord {
        if !table.contains_key(name) && table.len() >= MIRRORS_MAX {
            let oldest = table
                .values()
                .filter(|m| m.streams == 0)
                .min_by_key(|m| m.last_contact_ms)
                .map(|m| m.name.clone());
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        let record = table
            .entry(name.to_owned())
            .or_insert_with(|| MirrorRecord {
                name: name.to_owned(),
                applied_offset: 0,
                streams: 0,
                last_contact_ms: now_ms,
                acks: 0,
            });
        record.last_contact_ms = now_ms;
        record
    }

    /// Records that `name` has durably applied `applied` (an offset only moves forward).
    pub fn ack(&self, name: &str, applied: u64, now_ms: u64) {
        let mut table = self.table();
        let record = Self::record(&mut table, name, now_ms);
        record.applied_offset = record.applied_offset.max(applied);
        record.acks += 1;
        drop(table);
        self.acked.notify_waiters();
    }

    /// How many mirrors have acknowledged `offset` or later.
    pub fn acked_at_least(&self, offset: u64) -> usize {
        self.table()
            .values()
            .filter(|m| m.applied_offset >= offset)
            .count()
    }

    /// Waits until `count` mirrors have acknowledged `offset` or later, or `timeout` passes;
    /// returns how many have.
    pub async fn wait_acked(&self, offset: u64, count: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let woken = self.acked.notified();
            let have = self.acked_at_least(offset);
            if have >= count {
                return have;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.acked_at_least(offset);
            }
        }
    }

    /// Every mirror, by name.
    pub fn list(&self) -> Vec<MirrorRecord> {
        self.table().values().cloned().collect()
    }

    fn opened(self: &Arc<Self>, name: &str, applied: u64, now_ms: u64) -> StreamGuard {
        let mut table = self.table();
        let record = Self::record(&mut table, name, now_ms);
        record.streams += 1;
        // A follower asks from its head + 1: it holds exactly everything before (a mirror
        // provisioned again under the same name may hold less than it once acknowledged).
        record.applied_offset = applied;
        drop(table);
        self.acked.notify_waiters();
        StreamGuard {
            mirrors: Arc::clone(self),
            name: name.to_owned(),
        }
    }
}

/// Counts an open stream in the table while it lives.
struct StreamGuard {
    mirrors: Arc<Mirrors>,
    name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(record) = self.mirrors.table().get_mut(&self.name) {
            record.streams = record.streams.saturating_sub(1);
        }
    }
}

/// Why a stream was not opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The follower was refused (the protocol's answer).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Reading the leader's own state failed.
    #[error(transparent)]
    Failed(#[from] cairn::Error),
}

/// What the leader tells followers about itself.
pub fn leader_view(ws: &Workspace) -> Result<LeaderView, cairn::Error> {
    let view = ws.view()?;
    let schema = cairn::kernel::query::schema(&view, cairn::kernel::SCHEMA_NAME)?;
    let (schema, schema_compat) = schema.map(|s| (s.version, s.compat)).unwrap_or((0, 0));
    Ok(LeaderView {
        workspace_id: ws.id(),
        head: view.head(),
        schema,
        schema_compat,
    })
}

/// The hash of the leader's entry `offset` (`Hash::ZERO` for 0; `None` past the head).
pub async fn hash_at(ws: &Workspace, offset: u64) -> Result<Option<Hash>, cairn::Error> {
    if offset == 0 {
        return Ok(Some(Hash::ZERO));
    }
    Ok(ws.read_log(offset, 1).await?.first().map(|e| e.hash))
}

/// Admits `hello` and starts its stream: the receiver yields chunks of frames until the
/// follower goes away (the receiver is dropped), `stop` fires or the workspace closes.
pub async fn open_stream(
    ws: Workspace,
    hello: FollowerHello,
    mirrors: Arc<Mirrors>,
    stop: CancellationToken,
) -> Result<mpsc::Receiver<Chunk>, StreamError> {
    let leader = leader_view(&ws)?;
    let prev_at = if hello.from - 1 > leader.head.offset {
        None
    } else {
        hash_at(&ws, hello.from - 1).await?
    };
    admit(&leader, &hello, prev_at)?;
    // The backlog and live entries are read from the log as stored and sent as they are:
    // the follower verifies every one (decoding, hash, chain), so the leader does not decode
    // them only to encode them again.
    let first = ws.view()?.first_retained();
    if hello.from < first {
        return Err(cairn::Error::Compacted {
            requested: hello.from,
            first,
        }
        .into());
    }
    let mut next = hello.from;
    let (tx, rx) = mpsc::channel::<Chunk>(STREAM_CHUNKS_AHEAD_MAX);
    let guard = mirrors.opened(&hello.name, hello.from - 1, now_ms());
    tracing::info!(mirror = %hello.name, from = hello.from, "mirror connected");
    tokio::spawn(async move {
        let _guard = guard;
        let mut chunk = Vec::new();
        Frame::Hello {
            workspace_id: leader.workspace_id,
            head_offset: leader.head.offset,
            head_epoch: leader.head.epoch,
            schema: leader.schema,
            schema_compat: leader.schema_compat,
        }
        .write_to(&mut chunk);
        let mut beat = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.reset();
        let mut caught_up = false;
        let name = hello.name;
        let ended = loop {
            // Everything already committed goes out in chunks of up to STREAM_CHUNK_BYTES.
            let mut failed = None;
            while chunk.len() < STREAM_CHUNK_BYTES && next <= ws.applied() {
                match ws
                    .read_log_raw(next, STREAM_CHUNK_BYTES - chunk.len())
                    .await
                {
                    Ok(entries) => {
                        for (offset, bytes) in entries {
                            Frame::write_entry(&bytes, &mut chunk);
                            next = offset + 1;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => {}
                Some(cairn::Error::Closed) => break "the workspace closed",
                Some(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    break "reading the log failed";
                }
            }
            if next > ws.applied() && !caught_up && chunk.len() < STREAM_CHUNK_BYTES {
                caught_up = true;
                Frame::CaughtUp {
                    head_offset: next - 1,
                }
                .write_to(&mut chunk);
            }
            if !chunk.is_empty() {
                let out = std::mem::take(&mut chunk);
                tokio::select! {
                    sent = tx.send(Ok(out)) => if sent.is_err() { break "the mirror went away" },
                    _ = stop.cancelled() => break "the leader is shutting down",
                }
                continue;
            }
            tokio::select! {
                applied = ws.wait_for(next) => if applied.is_err() { break "the workspace closed" },
                _ = beat.tick() => {
                    let head = ws.head().map(|h| (h.offset, h.epoch)).unwrap_or((ws.applied(), 0));
                    Frame::Heartbeat {
                        head_offset: head.0,
                        head_epoch: head.1,
                        time_ms: now_ms(),
                    }
                    .write_to(&mut chunk);
                }
                _ = stop.cancelled() => break "the leader is shutting down",
                _ = tx.closed() => break "the mirror went away",
            }
        };
        tracing::info!(mirror = %name, at = next - 1, "mirror stream ended: {ended}");
    });
    Ok(rx)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
