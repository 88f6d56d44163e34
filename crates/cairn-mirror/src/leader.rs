//! The leader's side: admits a follower ([`crate::protocol::admit`]), streams its frames from
//! the log (backlog, then live, with heartbeats), and keeps the table of mirrors with their
//! acknowledged offsets.
//!
//! Entries come from the log itself, one chunk at a time, so a slow follower costs a bounded
//! channel of chunks, is never dropped and never skips an entry; it simply reads further
//! behind. Streams at the head share one read of each commit's entries ([`crate::tail`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cairn::Workspace;
use cairn_log::Hash;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{admit, FollowerHello, Frame, LeaderView, Refusal};
use crate::tail::{HeadMark, Segment, Tail, TailRead};

/// How often an idle stream sends a heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Bytes of frames per chunk handed to the connection.
pub const STREAM_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks a stream buffers ahead of a slow follower.
pub const STREAM_CHUNKS_AHEAD_MAX: usize = 8;
/// Mirrors kept in the table (a name not seen for longest is forgotten first).
pub const MIRRORS_MAX: usize = 64;

/// A chunk of the stream's bytes, or the error that ends it.
pub type Chunk = std::io::Result<Bytes>;

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
    /// The latest entries, read once for every stream at the head.
    tail: Mutex<Tail>,
    /// Moved whenever the tail's reader published or gave up (streams waiting on it look
    /// again).
    tail_moved: tokio::sync::watch::Sender<u64>,
}

impl Mirrors {
    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tail_moved(&self) {
        self.tail_moved.send_modify(|v| *v = v.wrapping_add(1));
    }

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
    let (tx, rx) = mpsc::channel::<Chunk>(STREAM_CHUNKS_AHEAD_MAX);
    let guard = mirrors.opened(&hello.name, hello.from - 1, now_ms());
    tracing::info!(mirror = %hello.name, from = hello.from, "mirror connected");
    let mut own = Vec::new();
    Frame::Hello {
        workspace_id: leader.workspace_id,
        head_offset: leader.head.offset,
        head_epoch: leader.head.epoch,
        schema: leader.schema,
        schema_compat: leader.schema_compat,
    }
    .write_to(&mut own);
    let stream = Stream {
        tail_moved: mirrors.tail_moved.subscribe(),
        ws,
        mirrors,
        tx,
        stop,
        next: hello.from,
        marked: hello.from - 1,
        caught_up: false,
        own,
    };
    tokio::spawn(async move {
        let _guard = guard;
        let (ended, next) = stream.run().await;
        tracing::info!(mirror = %hello.name, at = next - 1, "mirror stream ended: {ended}");
    });
    Ok(rx)
}

/// One follower's stream: the entries from `next` on, as they commit, with heartbeats.
struct Stream {
    ws: Workspace,
    mirrors: Arc<Mirrors>,
    tx: mpsc::Sender<Chunk>,
    stop: CancellationToken,
    tail_moved: tokio::sync::watch::Receiver<u64>,
    /// The next entry to send.
    next: u64,
    /// The last entry sent that a head mark (a heartbeat or the caught-up marker at it)
    /// followed: the follower holds the entries of a command until it knows the command is
    /// whole, so when the stream has sent everything committed, it marks the head.
    marked: u64,
    /// Whether the caught-up marker went out.
    caught_up: bool,
    /// Frames for this stream alone (the hello, its backlog, heartbeats), sent before any
    /// shared frames of the tail.
    own: Vec<u8>,
}

/// Why a stream ended (for the log).
type Ended = &'static str;

impl Stream {
    /// Streams until the follower goes away, the leader stops or the workspace closes; why,
    /// and the next offset it would have sent.
    async fn run(mut self) -> (Ended, u64) {
        let mut beat = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.reset();
        let ended = loop {
            if let Err(ended) = self.step(&mut beat).await {
                break ended;
            }
        };
        (ended, self.next)
    }

    /// Sends what is committed and not sent yet (then the caught-up marker, once), or waits
    /// for the next commit or heartbeat.
    async fn step(&mut self, beat: &mut tokio::time::Interval) -> Result<(), Ended> {
        let shared = self.take_committed().await?;
        let mut marker = Vec::new();
        if self.next > self.ws.applied() && (!self.caught_up || self.marked + 1 < self.next) {
            // Everything committed is sent, as far as `applied` says. What was sent last ends
            // a commit only if it is the head: a commit is readable a moment before `applied`
            // moves past it, so a read capped by size may have stopped inside one. Then this
            // step marks nothing; the rest is read next (a reading at the head marks it).
            let head = self.ws.head().ok().filter(|h| h.offset == self.next - 1);
            match head {
                // The backlog is sent: the caught-up marker (once what this stream holds of
                // its own has gone out).
                Some(head) if !self.caught_up && self.own.len() < STREAM_CHUNK_BYTES => {
                    self.caught_up = true;
                    self.marked = head.offset;
                    Frame::CaughtUp {
                        head_offset: head.offset,
                    }
                    .write_to(&mut marker);
                }
                // Caught up by reading the log itself (behind the tail), or after a read of
                // the tail that more commits overtook.
                Some(head) if self.caught_up => {
                    self.marked = head.offset;
                    Frame::Heartbeat {
                        head_offset: head.offset,
                        head_epoch: head.epoch,
                        time_ms: now_ms(),
                    }
                    .write_to(&mut marker);
                }
                _ => {}
            }
        }
        let outs = [
            Bytes::from(std::mem::take(&mut self.own)),
            shared.unwrap_or_default(),
            Bytes::from(marker),
        ];
        if outs.iter().any(|out| !out.is_empty()) {
            for out in outs.into_iter().filter(|out| !out.is_empty()) {
                self.send(out).await?;
            }
            return Ok(());
        }
        tokio::select! {
            applied = self.ws.wait_for(self.next) => {
                applied.map_err(|_| "the workspace closed")?;
            }
            _ = beat.tick() => {
                let ws = &self.ws;
                let head = ws.head().map(|h| (h.offset, h.epoch)).unwrap_or((ws.applied(), 0));
                Frame::Heartbeat {
                    head_offset: head.0,
                    head_epoch: head.1,
                    time_ms: now_ms(),
                }
                .write_to(&mut self.own);
            }
            _ = self.stop.cancelled() => return Err("the leader is shutting down"),
            _ = self.tx.closed() => return Err("the mirror went away"),
        }
        Ok(())
    }

    /// The committed entries from `next` on, if any: frames of the tail, shared with the other
    /// streams at the head (returned; this stream reads them for everyone when it is first),
    /// or, for the backlog (before the caught-up marker) and further behind than the tail,
    /// read from the log for this stream alone into `own`.
    async fn take_committed(&mut self) -> Result<Option<Bytes>, Ended> {
        loop {
            if self.next > self.ws.applied() {
                return Ok(None);
            }
            if !self.caught_up {
                // A follower catching up is alone where it reads: keeping its backlog in the
                // tail would only hold memory.
                if let Err(e) = read_backlog(&self.ws, &mut self.next, &mut self.own).await {
                    return Err(self.read_failed(e).await);
                }
                return Ok(None);
            }
            // Seen before asking, so that a publish after the answer ends the wait below.
            self.tail_moved.borrow_and_update();
            let read = self.mirrors.tail().read(self.next);
            match read {
                TailRead::Hit {
                    frames,
                    last,
                    marked,
                } => {
                    self.next = last + 1;
                    if marked {
                        self.marked = last;
                    }
                    return Ok(Some(frames));
                }
                TailRead::Read => {
                    let segment = match read_tail(&self.ws, &self.mirrors, self.next).await {
                        Ok(segment) => segment,
                        Err(e) => return Err(self.read_failed(e).await),
                    };
                    self.next = segment.last() + 1;
                    if segment.marked() {
                        self.marked = segment.last();
                    }
                    return Ok(Some(segment.frames()));
                }
                TailRead::Behind => {
                    if let Err(e) = read_backlog(&self.ws, &mut self.next, &mut self.own).await {
                        return Err(self.read_failed(e).await);
                    }
                    return Ok(None);
                }
                TailRead::Wait => {
                    // Another stream reads these entries for everyone; what this one has of
                    // its own goes out meanwhile.
                    if !self.own.is_empty() {
                        let own = Bytes::from(std::mem::take(&mut self.own));
                        self.send(own).await?;
                    }
                    tokio::select! {
                        moved = self.tail_moved.changed() => {
                            moved.map_err(|_| "the leader is shutting down")?;
                        }
                        _ = self.stop.cancelled() => return Err("the leader is shutting down"),
                        _ = self.tx.closed() => return Err("the mirror went away"),
                    }
                }
            }
        }
    }

    async fn send(&self, out: Bytes) -> Result<(), Ended> {
        tokio::select! {
            sent = self.tx.send(Ok(out)) => sent.map_err(|_| "the mirror went away"),
            _ = self.stop.cancelled() => Err("the leader is shutting down"),
        }
    }

    /// Tells the follower why reading the log failed (unless the workspace closed).
    async fn read_failed(&self, e: cairn::Error) -> Ended {
        if matches!(e, cairn::Error::Closed) {
            return "the workspace closed";
        }
        let _ = self
            .tx
            .send(Err(std::io::Error::other(e.to_string())))
            .await;
        "reading the log failed"
    }
}

/// Reads committed entries from `next` on into `chunk` as entry frames, up to
/// `STREAM_CHUNK_BYTES` (at least one entry when `next` is committed), for one stream.
async fn read_backlog(
    ws: &Workspace,
    next: &mut u64,
    chunk: &mut Vec<u8>,
) -> Result<(), cairn::Error> {
    while chunk.len() < STREAM_CHUNK_BYTES && *next <= ws.applied() {
        let room = STREAM_CHUNK_BYTES - chunk.len();
        let read = ws
            .read_log_into(*next, room, std::mem::take(chunk), Frame::write_entry)
            .await?;
        *chunk = read.bytes;
        *next += read.starts.len() as u64;
    }
    Ok(())
}

/// Reads the committed entries from `next` on (up to `STREAM_CHUNK_BYTES`) for every stream
/// at the head and publishes them in the tail; if the read fails or this stream's task is
/// dropped meanwhile, the tail is told, and another stream reads instead.
async fn read_tail(ws: &Workspace, mirrors: &Mirrors, next: u64) -> Result<Segment, cairn::Error> {
    /// Gives the read up unless it was published.
    struct Reading<'a>(&'a Mirrors, bool);
    impl Drop for Reading<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.tail().abandon();
                self.0.tail_moved();
            }
        }
    }
    let mut reading = Reading(mirrors, false);
    let read = ws
        .read_log_into(next, STREAM_CHUNK_BYTES, Vec::new(), Frame::write_entry)
        .await?;
    if read.starts.is_empty() {
        // `next` was committed when asked: only a log that lost it reads nothing there.
        return Err(cairn::Error::Internal(format!(
            "the log has no entry {next}, which was committed"
        )));
    }
    // A read that reached the head ended at the end of a commit, which the segment marks for
    // every stream that sends it.
    let head = read.head.map(|head| HeadMark {
        epoch: head.epoch,
        time_ms: now_ms(),
    });
    let segment = Segment::of_frames(read.first, read.starts, read.bytes, head);
    mirrors.tail().publish(segment.clone());
    reading.1 = true;
    mirrors.tail_moved();
    Ok(segment)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
