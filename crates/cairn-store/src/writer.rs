//! The single writer: one OS thread owns every write, batching whatever is queued into one
//! RocksDB `WriteBatch` per group commit.
//!
//! For each group the writer decides each command in arrival order against committed state plus
//! the overlay of the group so far, seals the resulting entries onto the chain, applies them to
//! the overlay, and finally writes entries + state changes + `applied`/`head` in one batch. Every
//! caller is answered only after that write returns, so under `Durability::Sync` an answer
//! means durable.
//!
//! A failed *write* (a full disk, an IO error) fails the group and degrades the writer: it goes
//! on taking requests and tries each group's write again, so commits resume by themselves when
//! the cause is gone (RocksDB itself recovers from a full disk once space returns: it flushes
//! the memtables and starts a new WAL file, so the failed batch, even if it reached the old WAL,
//! is never replayed after newer ones). A failed *apply* (an entry the machine cannot fold) stops
//! the writer: nothing after it is acknowledged until the workspace is reopened.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};

use cairn_log::{ChainCursor, EntryDraft, Head, Meta, StoredEntry, VerifiedEntry};
use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::base::Base;
use crate::error::{CommandError, StoreError};
use crate::layout::{self, CF_LOG, CF_META};
use crate::machine::{DecideCtx, DecideError, Lane, StateMachine};
use crate::overlay::{Overlay, ReadCache};
use crate::spin;
use crate::Options;

/// What a successful command or append committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Offsets of the entries written (empty when the command yielded no events).
    pub offsets: Range<u64>,
    /// The store's applied offset after the commit (≥ `offsets.end - 1`).
    pub applied: u64,
    /// The command carried an idempotency key that was already committed: `offsets` are the
    /// original command's, and nothing was written this time.
    pub replayed: bool,
}

type Reply<T> = oneshot::Sender<T>;

/// A request to the writer.
pub(crate) enum Request<M: StateMachine> {
    /// Decide and commit a command.
    Command {
        meta: Meta,
        command: M::Command,
        /// A new epoch its entries open (see `Store::submit_in_epoch`).
        epoch: Option<u64>,
        reply: CommandReply<M>,
    },
    /// Verify and commit entries written elsewhere (replication, `LogStore::append`).
    Entries {
        entries: Vec<VerifiedEntry>,
        reply: Reply<(Result<Committed, StoreError>, ())>,
    },
}

/// A command's parts, handed back with its answer so that the caller's thread frees what it
/// allocated: freeing another thread's allocation is slow in glibc's malloc (the free goes to
/// that thread's arena, under its lock), and the writer would otherwise do it for every caller.
pub type Spent<C> = (Meta, C);

/// Where a command's answer (and its spent parts) go.
type CommandReply<M> = Reply<(
    Result<Committed, CommandError<<M as StateMachine>::Rejection>>,
    Spent<<M as StateMachine>::Command>,
)>;

/// State the writer shares with readers of the store handle.
pub(crate) struct Shared {
    applied: Mutex<Applied>,
    advanced: Condvar,
    /// Set by the writer after an unsynced write; cleared by the WAL flusher.
    pub dirty: AtomicBool,
    /// Counters of what the writer did, for metrics and benchmarks.
    pub stats: StatsCounters,
    /// How long the last group's write took: short writes mean answers come quickly, and a
    /// waiting thread does better to yield for a moment than to sleep (see `spin`).
    last_write_ns: AtomicU64,
    /// Whether the writer can commit.
    health: Mutex<WriterHealth>,
    /// Set while `health` is `Degraded`, so that a successful commit checks it without a lock.
    degraded: AtomicBool,
    /// Called with the new applied offset after every commit, whoever submitted it.
    listeners: Mutex<Vec<AppliedListener>>,
}

/// A function the writer calls after each commit with the new applied offset (see
/// [`crate::Store::on_applied`]).
pub type AppliedListener = Box<dyn Fn(u64) + Send + Sync>;

/// Whether the store's writer can commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterHealth {
    /// Commits go through.
    Ok,
    /// The last group's write failed; every group is tried again, and commits resume once a
    /// write succeeds. Reads are not affected.
    Degraded {
        /// Why the last write failed.
        reason: String,
        /// When the first failed write of this spell happened (ms since the Unix epoch).
        since_ms: u64,
        /// Group writes that failed in this spell.
        failed_writes: u64,
    },
    /// The writer stopped (an entry could not be applied); reopen the workspace.
    Stopped {
        /// Why.
        reason: String,
    },
    /// The store was opened read-only; it never commits.
    ReadOnly,
}

/// The applied offset and who waits for it to move.
struct Applied {
    offset: u64,
    /// Threads in `wait_for`: a commit with nobody waiting skips the wake-up system call.
    waiters: usize,
}

/// What the writer has done since the store was opened (monotonic counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Group commits written (one `WriteBatch` each).
    pub groups: u64,
    /// Entries committed.
    pub entries: u64,
    /// Commands answered with a rejection.
    pub rejections: u64,
    /// Nanoseconds spent in RocksDB writes of group commits (including fsync under `Sync`).
    pub write_ns: u64,
    /// Group writes that failed (their commands were answered with an error).
    pub failed_writes: u64,
}

#[derive(Default)]
pub(crate) struct StatsCounters {
    groups: AtomicU64,
    entries: AtomicU64,
    rejections: AtomicU64,
    write_ns: AtomicU64,
    failed_writes: AtomicU64,
}

impl StatsCounters {
    pub fn snapshot(&self) -> WriterStats {
        WriterStats {
            groups: self.groups.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            rejections: self.rejections.load(Ordering::Relaxed),
            write_ns: self.write_ns.load(Ordering::Relaxed),
            failed_writes: self.failed_writes.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    pub fn new(applied: u64) -> Self {
        Self {
            applied: Mutex::new(Applied {
                offset: applied,
                waiters: 0,
            }),
            advanced: Condvar::new(),
            dirty: AtomicBool::new(false),
            stats: StatsCounters::default(),
            last_write_ns: AtomicU64::new(u64::MAX),
            health: Mutex::new(WriterHealth::Ok),
            degraded: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// Adds a listener called with the applied offset after every commit from now on.
    pub fn add_listener(&self, listener: AppliedListener) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    /// Whether the writer can commit.
    pub fn health(&self) -> WriterHealth {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_health(&self, health: WriterHealth) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
    }

    /// Records a failed group write; returns whether the writer was healthy before.
    fn write_failed(&self, reason: &str, now_ms: u64) -> bool {
        self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let was_ok = *health == WriterHealth::Ok;
        self.degraded.store(true, Ordering::Release);
        *health = match &*health {
            WriterHealth::Degraded {
                since_ms,
                failed_writes,
                ..
            } => WriterHealth::Degraded {
                reason: reason.to_owned(),
                since_ms: *since_ms,
                failed_writes: failed_writes + 1,
            },
            _ => WriterHealth::Degraded {
                reason: reason.to_owned(),
                since_ms: now_ms,
                failed_writes: 1,
            },
        };
        was_ok
    }

    /// Records a successful group write; returns how many writes had failed before it.
    fn write_succeeded(&self) -> Option<u64> {
        if !self.degraded.load(Ordering::Acquire) {
            return None;
        }
        self.degraded.store(false, Ordering::Release);
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        match &*health {
            WriterHealth::Degraded { failed_writes, .. } => {
                let failed = *failed_writes;
                *health = WriterHealth::Ok;
                Some(failed)
            }
            _ => None,
        }
    }

    /// Whether answers currently come quickly enough to wait for them by yielding.
    pub fn answers_quick(&self) -> bool {
        self.last_write_ns.load(Ordering::Relaxed) <= crate::spin::QUICK_WRITE_NS_MAX
    }

    pub fn applied(&self) -> u64 {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offset
    }

    fn advance(&self, to: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            to >= applied.offset,
            "applied offset only moves forward ({} -> {to})",
            applied.offset
        );
        applied.offset = to;
        if applied.waiters > 0 {
            self.advanced.notify_all();
        }
        drop(applied);
        for listener in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            listener(to);
        }
    }

    /// Waits until `offset` is applied or `timeout` passes; returns whether it is applied.
    pub fn wait_for(&self, offset: u64, timeout: std::time::Duration) -> bool {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.offset >= offset {
            return true;
        }
        applied.waiters += 1;
        let (mut applied, _) = self
            .advanced
            .wait_timeout_while(applied, timeout, |a| a.offset < offset)
            .unwrap_or_else(|p| p.into_inner());
        applied.waiters -= 1;
        applied.offset >= offset
    }
}

/// An answer waiting to be sent once the group's write returns.
enum Pending<M: StateMachine> {
    Command(
        CommandReply<M>,
        Spent<M::Command>,
        Result<(Range<u64>, bool), CommandError<M::Rejection>>,
    ),
    Entries(
        Reply<(Result<Committed, StoreError>, ())>,
        Result<Range<u64>, StoreError>,
    ),
}

/// The group being built.
struct Group<'a, M: StateMachine> {
    overlay: Overlay<'a>,
    /// Encoded entries, in offset order, continuing `committed`.
    entries: Vec<(u64, Vec<u8>)>,
    entry_bytes: usize,
    /// Chain position after the group's entries.
    cursor: ChainCursor,
    pending: Vec<Pending<M>>,
}

pub(crate) struct Writer<M: StateMachine> {
    pub db: Arc<DB>,
    pub machine: Arc<M>,
    pub opts: Options,
    pub shared: Arc<Shared>,
    /// The committed chain head.
    pub head: Head,
    /// The epoch new entries are written in.
    pub epoch: u64,
    /// Why the writer stopped, once it has.
    pub stopped: Option<String>,
    /// The replier thread's queue (set while `run` runs).
    pub replier: Option<std::sync::mpsc::Sender<Answers<M>>>,
    /// Committed state read by decide and apply, kept current by `commit`.
    pub cache: std::cell::RefCell<ReadCache>,
    /// Bulk commands taken from the queue and not decided yet, in their order.
    pub bulk: std::collections::VecDeque<Request<M>>,
    /// When the writer last took a foreground command.
    pub foreground_at: Option<std::time::Instant>,
}

/// Bulk commands one group decides while foreground commands came within
/// [`FOREGROUND_RECENT`] (otherwise a group takes them up to `batch_entries_max`). A group
/// that holds a foreground command decides none: its write waits for no bulk decide.
pub const BULK_GROUP_COMMANDS_MAX: usize = 8;
/// How long after a foreground command bulk commands are held to
/// [`BULK_GROUP_COMMANDS_MAX`] per group.
pub const FOREGROUND_RECENT: std::time::Duration = std::time::Duration::from_millis(50);
/// Bulk commands the writer takes from its queue ahead of deciding them; past that it leaves
/// requests in the queue until it has decided some.
pub const BULK_QUEUED_MAX: usize = 4096;

impl<M: StateMachine> Writer<M> {
    /// Runs until every sender is gone.
    pub fn run(mut self, rx: Receiver<Request<M>>) {
        let (answers, to_deliver) = std::sync::mpsc::channel::<Answers<M>>();
        let replier = std::thread::Builder::new()
            .name("cairn-replier".into())
            .spawn(move || to_deliver.into_iter().for_each(deliver));
        // Without a replier thread the writer answers inline.
        if replier.is_ok() {
            self.replier = Some(answers);
        }
        self.serve(rx);
        drop(self.replier.take());
        if let Ok(replier) = replier {
            let _ = replier.join();
        }
    }

    fn serve(&mut self, rx: Receiver<Request<M>>) {
        let mut requests = Vec::with_capacity(self.opts.batch_entries_max);
        let mut credit = spin::YieldCredit::default();
        loop {
            // Between quick groups under load the next request is usually a few microseconds
            // away: yielding for it saves the writer a sleep and its caller a wake-up call.
            // The credit stops that when requests come too far apart for yielding to pay.
            let mut first = None;
            if !self.bulk.is_empty() {
                // Bulk commands are waiting: the group takes whatever came meanwhile, without
                // waiting. (Once every sender is gone, the held ones are still decided; the
                // next blocking `recv` then ends the loop.)
                self.process(std::iter::empty(), &rx);
                continue;
            }
            if self.shared.answers_quick() && credit.try_yield() {
                let got = spin::yield_until(|| match rx.try_recv() {
                    Err(TryRecvError::Empty) => None,
                    other => Some(other),
                });
                credit.record(got.is_some());
                match got {
                    Some(Ok(r)) => first = Some(r),
                    // Every sender is gone.
                    Some(Err(_)) => break,
                    None => {}
                }
            }
            let first = match first.map_or_else(|| rx.recv(), Ok) {
                Ok(r) => r,
                Err(_) => break,
            };
            requests.push(first);
            while requests.len() < self.opts.batch_entries_max {
                match rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            self.process(requests.drain(..), &rx);
        }
    }

    fn process(&mut self, requests: impl Iterator<Item = Request<M>>, rx: &Receiver<Request<M>>) {
        let db = Arc::clone(&self.db);
        let cache = std::mem::take(&mut self.cache);
        let mut group = Group {
            overlay: Overlay::cached(
                Base {
                    db: &db,
                    snap: None,
                },
                &cache,
            ),
            entries: Vec::new(),
            entry_bytes: 0,
            cursor: ChainCursor::new(self.head),
            pending: Vec::new(),
        };
        // Requests that arrive while the group is being decided join it, up to the batch
        // limit: deciding takes time anyway, and the callers the previous group answered come
        // back during it. (Lifecycle commands from 64 writers: groups of about 50 instead of
        // 31, +17% commands/s; see docs/ARCHITECTURE.md.)
        let max = self.opts.batch_entries_max;
        let mut taken = 0usize;
        let mut requests = requests.fuse();
        // Past `BULK_QUEUED_MAX` bulk commands held, the rest stay in the queue.
        let mut next = |taken: usize, room: bool| match requests.next() {
            Some(r) => Some(r),
            None if taken < max && room => rx.try_recv().ok(),
            None => None,
        };
        // Foreground requests are handled as they come; bulk commands wait in `self.bulk`
        // (in their order) and a group takes a bounded number of them once the foreground
        // ones queued are in (see `Lane`).
        let mut foreground = false;
        while let Some(request) = next(taken, self.bulk.len() < BULK_QUEUED_MAX) {
            taken += 1;
            match (self.lane(&request), &request) {
                (Lane::Bulk, _) => {
                    self.bulk.push_back(request);
                    continue;
                }
                (Lane::Foreground, Request::Command { .. }) => foreground = true,
                (Lane::Foreground, Request::Entries { .. }) => {
                    // Entries (a mirror's, or the empty fence of a handoff) come after every
                    // command queued before them, bulk ones included.
                    while let Some(bulk) = self.bulk.pop_front() {
                        self.handle(&mut group, bulk);
                    }
                }
            }
            self.handle(&mut group, request);
        }
        if foreground {
            self.foreground_at = Some(std::time::Instant::now());
        }
        // A group with foreground commands is written as soon as they are decided: a bulk
        // command's decide (a drive put validates its data) would delay all of them. Bulk
        // commands go in the groups between, a few at a time while foreground ones come.
        let budget = match self.foreground_at {
            _ if foreground => 0,
            Some(at) if at.elapsed() < FOREGROUND_RECENT => BULK_GROUP_COMMANDS_MAX,
            _ => max,
        };
        for _ in 0..budget {
            let Some(bulk) = self.bulk.pop_front() else {
                break;
            };
            self.handle(&mut group, bulk);
        }
        self.commit(&mut group);
        drop(group);
        self.cache = cache;
    }

    /// The lane `request` waits in: a command's is its machine's choice, entries are
    /// foreground.
    fn lane(&self, request: &Request<M>) -> Lane {
        match request {
            Request::Command { command, .. } => self.machine.lane(command),
            Request::Entries { .. } => Lane::Foreground,
        }
    }

    /// Decides or checks one request into the group, keeping its answer for after the write.
    fn handle(&mut self, group: &mut Group<'_, M>, request: Request<M>) {
        if let Some(why) = &self.stopped {
            fail_request(request, StoreError::Stopped(why.clone()));
            return;
        }
        match request {
            Request::Command {
                meta,
                command,
                epoch,
                reply,
            } => {
                let outcome = self.command(group, &meta, &command, epoch);
                if matches!(outcome, Err(CommandError::Rejected(_))) {
                    self.shared.stats.rejections.fetch_add(1, Ordering::Relaxed);
                }
                group
                    .pending
                    .push(Pending::Command(reply, (meta, command), outcome));
            }
            Request::Entries { entries, reply } => {
                let outcome = self.entries(group, entries);
                group.pending.push(Pending::Entries(reply, outcome));
            }
        }
    }

    /// Decides one command and adds its entries to the group.
    fn command(
        &mut self,
        group: &mut Group<'_, M>,
        meta: &Meta,
        command: &M::Command,
        new_epoch: Option<u64>,
    ) -> Result<(Range<u64>, bool), CommandError<M::Rejection>> {
        if let Some(key) = &meta.idempotency_key {
            match self.machine.idempotent(&group.overlay, key) {
                Ok(Some(offsets)) => return Ok((offsets, true)),
                Ok(None) => {}
                Err(e) => return Err(StoreError::state("idempotency lookup", e).into()),
            }
        }
        let head = group.cursor.head();
        // The epoch of the group's entries so far (one of them may have opened a new one),
        // or the new one this command opens.
        let current = self.epoch.max(head.epoch);
        let epoch = match new_epoch {
            Some(e) if e <= current => {
                return Err(StoreError::Inconsistent(format!(
                    "epoch {e} is not newer than the log's epoch {current}"
                ))
                .into())
            }
            Some(e) => e,
            None => current,
        };
        let ctx = DecideCtx {
            next_offset: head.offset + 1,
            epoch,
            time_ms: (self.opts.clock)(),
        };
        let events = match self.machine.decide(&group.overlay, &ctx, command) {
            Ok(events) => events,
            Err(DecideError::Rejected(r)) => return Err(CommandError::Rejected(r)),
            Err(DecideError::State(e)) => return Err(StoreError::state("decide", e).into()),
        };
        if events.len() > self.opts.command_entries_max {
            return Err(StoreError::TooManyEvents {
                count: events.len(),
                max: self.opts.command_entries_max,
            }
            .into());
        }
        let mut sealed = Vec::with_capacity(events.len());
        let mut prev = head;
        for event in events {
            let draft = EntryDraft {
                epoch: ctx.epoch,
                time_ms: ctx.time_ms,
                meta: meta.clone(),
                kind: event.kind,
                payload: event.payload,
            };
            let entry = draft
                .seal(prev.offset + 1, prev.hash)
                .map_err(StoreError::BadEntry)?;
            prev = entry.head();
            let bytes = cairn_log::codec::encode(&entry);
            sealed.push((entry, bytes));
        }
        Ok((self.add(group, sealed)?, false))
    }

    /// Checks entries written elsewhere against the chain and adds them to the group.
    fn entries(
        &mut self,
        group: &mut Group<'_, M>,
        entries: Vec<VerifiedEntry>,
    ) -> Result<Range<u64>, StoreError> {
        // Their hashes were verified when they were built: only the links are left to check.
        let mut cursor = group.cursor;
        for entry in &entries {
            cursor.advance_sealed(entry.entry())?;
        }
        self.add(
            group,
            entries.into_iter().map(VerifiedEntry::into_parts).collect(),
        )
    }

    /// Applies chain-checked entries to the group, committing the group first if they would
    /// overflow it. An apply failure stops the writer.
    fn add(
        &mut self,
        group: &mut Group<'_, M>,
        entries: Vec<(StoredEntry, Vec<u8>)>,
    ) -> Result<Range<u64>, StoreError> {
        let Some((first, _)) = entries.first() else {
            let next = group.cursor.head().offset + 1;
            return Ok(next..next);
        };
        let first = first.offset;
        let bytes: usize = entries.iter().map(|(_, b)| b.len()).sum();
        let full = group.entries.len() + entries.len() > self.opts.batch_entries_max
            || group.entry_bytes + group.overlay.bytes() + bytes > self.opts.batch_bytes_max;
        if full && !group.entries.is_empty() {
            let before = group.cursor.head();
            self.commit(group);
            if let Some(why) = &self.stopped {
                return Err(StoreError::Stopped(why.clone()));
            }
            if self.head != before {
                // The write failed, and these entries were sealed to follow the lost ones.
                let reason = match self.shared.health() {
                    WriterHealth::Degraded { reason, .. } => reason,
                    other => format!("{other:?}"),
                };
                return Err(StoreError::WriteFailed { reason });
            }
        }
        for (entry, _) in &entries {
            // Hashes were computed (commands) or verified (entries) before `add`; the links
            // are checked again because a mid-group commit may have happened in between.
            group
                .cursor
                .advance_sealed(entry)
                .expect("entries were chain-checked against the group head before add");
            if let Err(e) = self.machine.apply(&mut group.overlay, entry) {
                // The overlay now holds part of this entry's effects: drop the whole group.
                let error = StoreError::Apply(e);
                self.stop(group, &error);
                return Err(error);
            }
        }
        group.entry_bytes += bytes;
        group
            .entries
            .extend(entries.into_iter().map(|(e, bytes)| (e.offset, bytes)));
        Ok(first..group.cursor.head().offset + 1)
    }

    /// Writes the group in one `WriteBatch` and answers everyone in it.
    fn commit(&mut self, group: &mut Group<'_, M>) {
        let head = group.cursor.head();
        if group.entries.is_empty() {
            assert!(group.overlay.is_empty(), "state changes without entries");
            self.answer(group, Ok(()));
            return;
        }
        let mut batch = WriteBatch::default();
        let base = Base {
            db: &self.db,
            snap: None,
        };
        let log_cf = base.cf(CF_LOG);
        let mut expected = self.head.offset + 1;
        for (offset, bytes) in &group.entries {
            assert_eq!(
                *offset, expected,
                "group offsets are dense and follow the head"
            );
            batch.put_cf(log_cf, layout::log_key(*offset), bytes);
            expected += 1;
        }
        assert_eq!(
            head.offset + 1,
            expected,
            "group cursor is at the last entry"
        );
        let writes = group.overlay.drain();
        for ((space, key), value) in &writes {
            let cf = base.cf(space.name());
            match value {
                Some(v) => batch.put_cf(cf, key, v),
                None => batch.delete_cf(cf, key),
            }
        }
        let meta_cf = base.cf(CF_META);
        batch.put_cf(meta_cf, layout::META_APPLIED, head.offset.to_be_bytes());
        batch.put_cf(meta_cf, layout::META_HEAD_HASH, head.hash.0);
        batch.put_cf(meta_cf, layout::META_HEAD_EPOCH, head.epoch.to_be_bytes());
        if head.epoch > self.epoch {
            self.epoch = head.epoch;
            batch.put_cf(meta_cf, layout::META_EPOCH, self.epoch.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.opts.durability == crate::Durability::Sync);
        let started = std::time::Instant::now();
        let written = self.db.write_opt(batch, &wo);
        let write_ns = started.elapsed().as_nanos() as u64;
        self.shared.last_write_ns.store(write_ns, Ordering::Relaxed);
        let stats = &self.shared.stats;
        stats.write_ns.fetch_add(write_ns, Ordering::Relaxed);
        match written {
            Ok(()) => {
                group.overlay.committed(&writes);
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats
                    .entries
                    .fetch_add(head.offset - self.head.offset, Ordering::Relaxed);
                self.head = head;
                if self.opts.durability != crate::Durability::Sync {
                    self.shared.dirty.store(true, Ordering::Release);
                }
                self.shared.advance(head.offset);
                group.entries.clear();
                group.entry_bytes = 0;
                if let Some(failed) = self.shared.write_succeeded() {
                    tracing::warn!(failed, "commits resumed after failed writes");
                }
                self.answer(group, Ok(()));
            }
            Err(e) => {
                // The group is dropped whole: its state changes were never written and the
                // cached values it changed are forgotten. The chain head stays where the last
                // successful commit left it.
                group.overlay.forget_cache();
                let reason = e.to_string();
                if self.shared.write_failed(&reason, (self.opts.clock)()) {
                    tracing::error!(%reason, "a commit failed; writes are retried with each new commit");
                }
                let error = StoreError::WriteFailed { reason };
                self.discard(group, &error);
            }
        }
    }

    /// Fails everyone in the group and empties it, leaving the writer running.
    fn discard(&mut self, group: &mut Group<'_, M>, error: &StoreError) {
        group.overlay.drain();
        group.entries.clear();
        group.entry_bytes = 0;
        group.cursor = ChainCursor::new(self.head);
        self.answer(group, Err(error.clone()));
    }

    /// Stops the writer, failing everyone in the group.
    fn stop(&mut self, group: &mut Group<'_, M>, error: &StoreError) {
        tracing::error!(%error, "store writer stopped");
        self.stopped = Some(error.to_string());
        self.shared.set_health(WriterHealth::Stopped {
            reason: error.to_string(),
        });
        self.discard(group, error);
    }

    /// Hands the group's answers to the replier thread (waking each caller costs a futex
    /// wake; doing that off the writer lets the next group start sooner).
    fn answer(&self, group: &mut Group<'_, M>, written: Result<(), StoreError>) {
        let answers = Answers {
            pending: std::mem::take(&mut group.pending),
            written,
            applied: self.head.offset,
        };
        match &self.replier {
            // A small group is answered inline: the extra thread hop would only add latency.
            Some(tx) if answers.pending.len() > ANSWER_INLINE_MAX => {
                if let Err(unsent) = tx.send(answers) {
                    deliver(unsent.0);
                }
            }
            _ => deliver(answers),
        }
    }
}

/// Groups with at most this many callers are answered by the writer itself.
const ANSWER_INLINE_MAX: usize = 4;

/// One group's answers, sent to callers in commit order.
pub(crate) struct Answers<M: StateMachine> {
    pending: Vec<Pending<M>>,
    written: Result<(), StoreError>,
    applied: u64,
}

/// Sends every answer of a group.
fn deliver<M: StateMachine>(answers: Answers<M>) {
    let Answers {
        pending,
        written,
        applied,
    } = answers;
    for pending in pending {
        match pending {
            Pending::Command(reply, spent, outcome) => {
                let result = match (&written, outcome) {
                    (Ok(()), Ok((offsets, replayed))) => Ok(Committed {
                        offsets,
                        applied,
                        replayed,
                    }),
                    (Ok(()), Err(e)) => Err(e),
                    (Err(w), _) => Err(CommandError::Store(w.clone())),
                };
                // A caller that stopped waiting does not undo the commit.
                let _ = reply.send((result, spent));
            }
            Pending::Entries(reply, outcome) => {
                let result = match (&written, outcome) {
                    (Ok(()), Ok(offsets)) => Ok(Committed {
                        offsets,
                        applied,
                        replayed: false,
                    }),
                    (Ok(()), Err(e)) => Err(e),
                    (Err(w), _) => Err(w.clone()),
                };
                let _ = reply.send((result, ()));
            }
        }
    }
}

fn fail_request<M: StateMachine>(request: Request<M>, error: StoreError) {
    match request {
        Request::Command {
            meta,
            command,
            reply,
            ..
        } => {
            let _ = reply.send((Err(CommandError::Store(error)), (meta, command)));
        }
        Request::Entries { reply, .. } => {
            let _ = reply.send((Err(error), ()));
        }
    }
}

/// Writes an overlay's pending state writes as one batch, outside the group-commit path: used
/// by rebuild (`store.rs`, `rebuild_db`), whose WAL-less writes are made durable by a flush.
pub(crate) fn write_overlay(
    db: &DB,
    overlay: &mut Overlay<'_>,
    disable_wal: bool,
) -> Result<(), StoreError> {
    if overlay.is_empty() {
        return Ok(());
    }
    let base = Base { db, snap: None };
    let mut batch = WriteBatch::default();
    for ((space, key), value) in overlay.drain() {
        let cf = base.cf(space.name());
        match value {
            Some(v) => batch.put_cf(cf, key, v),
            None => batch.delete_cf(cf, key),
        }
    }
    let mut wo = WriteOptions::default();
    wo.disable_wal(disable_wal);
    db.write_opt(batch, &wo)
        .map_err(StoreError::db("rebuild: write batch"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spin::QUICK_WRITE_NS_MAX;

    #[test]
    fn answers_are_quick_after_a_write_of_at_most_the_limit() {
        let shared = Shared::new(0);
        assert!(!shared.answers_quick(), "nothing written yet");
        shared
            .last_write_ns
            .store(QUICK_WRITE_NS_MAX, Ordering::Relaxed);
        assert!(shared.answers_quick());
        shared
            .last_write_ns
            .store(QUICK_WRITE_NS_MAX + 1, Ordering::Relaxed);
        assert!(!shared.answers_quick());
    }
}
