//! The store handle: init, open (O(1) in log length), submit, read, verify, digest, backup,
//! rebuild, close.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_log::{
    CorruptReason, EncodedEntry, Head, LogError, LogStore, Meta, StoredEntry, VerifiedEntry,
};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, WriteBatch, WriteOptions, DB};
use uuid::Uuid;

use crate::base::Base;
use crate::error::{CommandError, StoreError};
use crate::layout::{self, CFS, CF_LOG, CF_META};
use crate::lock::WorkspaceLock;
use crate::machine::{CheckOpenError, StateMachine};
use crate::partial::PartialDir;
use crate::recovery::Access;
use crate::spin;
use crate::view::{decode_stored, read_meta, Progress, ReadView};
use crate::writer::{Committed, Request, Shared, Spent, Writer, WriterHealth, WriterStats};

/// How durable an acknowledged commit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync per group commit: acknowledged means durable. The default.
    #[default]
    Sync,
    /// WAL written per group commit, fsynced by a background thread at most
    /// [`BUFFERED_SYNC_INTERVAL_MS`] later: a machine crash may lose that window, a process
    /// crash loses nothing.
    Buffered,
    /// WAL written, never fsynced by the store. For tests and benches only.
    None,
}

/// Longest time an acknowledged commit stays unsynced under [`Durability::Buffered`].
pub const BUFFERED_SYNC_INTERVAL_MS: u64 = 100;

/// Store options. Every bounded thing has its limit here.
#[derive(Clone, Debug)]
pub struct Options {
    /// Durability of acknowledged commits.
    pub durability: Durability,
    /// Requests that may wait for the writer before submitters block.
    pub queue_depth_max: usize,
    /// Entries in one group commit (a single command's events are never split).
    pub batch_entries_max: usize,
    /// Bytes (entries + state writes) in one group commit.
    pub batch_bytes_max: usize,
    /// Events one command may yield.
    pub command_entries_max: usize,
    /// Wall clock for entries' `time_ms`, in ms since the Unix epoch.
    pub clock: fn() -> u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            queue_depth_max: 4096,
            batch_entries_max: 1024,
            batch_bytes_max: 16 * 1024 * 1024,
            command_entries_max: 4096,
            clock: system_clock_ms,
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An answer from the writer: wait for it (`wait`) or `.await` it. `S` is what the request
/// hands back to be freed on the caller's side (see [`Spent`]).
pub struct Ticket<T, E, S = ()> {
    rx: oneshot::Receiver<(Result<T, E>, S)>,
    /// Answers were coming quickly when this was submitted: `wait` yields before it sleeps.
    quick: bool,
}

/// A command's ticket.
pub type CommandTicket<M> = Ticket<
    Committed,
    CommandError<<M as StateMachine>::Rejection>,
    Spent<<M as StateMachine>::Command>,
>;

impl<T, E: From<StoreError>, S> Ticket<T, E, S> {
    /// Whether the writer has answered (or gone away), so that [`Ticket::wait`] returns at
    /// once. Never blocks.
    pub fn is_answered(&self) -> bool {
        self.rx.has_message() || self.rx.is_closed()
    }

    /// Blocks until the writer answers.
    pub fn wait(self) -> Result<T, E> {
        if self.quick {
            let ready = || match self.rx.try_recv() {
                Ok(answer) => Some(Ok(answer)),
                Err(oneshot::TryRecvError::Empty) => None,
                Err(oneshot::TryRecvError::Disconnected) => Some(Err(())),
            };
            match spin::yield_until(ready) {
                Some(Ok((result, _spent))) => return result,
                Some(Err(())) => return Err(writer_gone().into()),
                None => {}
            }
        }
        match self.rx.recv() {
            // `spent` is dropped here, on the caller's thread.
            Ok((result, _spent)) => result,
            Err(_) => Err(writer_gone().into()),
        }
    }
}

impl<T, E: From<StoreError>, S> std::future::IntoFuture for Ticket<T, E, S> {
    type Output = Result<T, E>;
    type IntoFuture = TicketFuture<T, E, S>;
    fn into_future(self) -> Self::IntoFuture {
        TicketFuture {
            rx: std::future::IntoFuture::into_future(self.rx),
        }
    }
}

/// A [`Ticket`] being awaited.
pub struct TicketFuture<T, E, S = ()> {
    rx: oneshot::AsyncReceiver<(Result<T, E>, S)>,
}

impl<T, E: From<StoreError>, S> Future for TicketFuture<T, E, S> {
    type Output = Result<T, E>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            // `spent` is dropped here, on the awaiting task's thread.
            Ok((result, _spent)) => result,
            Err(_) => Err(writer_gone().into()),
        })
    }
}

fn writer_gone() -> StoreError {
    StoreError::Stopped("the writer thread exited".into())
}

/// What rebuilding the projection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// Entries replayed.
    pub entries: u64,
    /// The head after the rebuild.
    pub head: Head,
}

/// An open workspace store.
pub struct Store<M: StateMachine> {
    tx: Option<SyncSender<Request<M>>>,
    writer: Option<JoinHandle<()>>,
    flusher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    db: Arc<DB>,
    machine: Arc<M>,
    shared: Arc<Shared>,
    durability: Durability,
    workspace_id: Uuid,
    data: PathBuf,
    _lock: WorkspaceLock,
}

/// What [`Store::open`] and [`Store::open_read_only`] found before the writer starts.
struct Opened {
    db: DB,
    workspace_id: Uuid,
    epoch: u64,
    head: Head,
}

/// The RocksDB options every workspace database is opened with (benchmarks open their raw
/// RocksDB peer with the same ones); the `log` column family adds [`log_cf_options`]'s.
pub fn db_options() -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    configure(&mut o);
    o
}

/// The `log` column family's options: [`db_options`], and no rewrite of a bottommost table
/// file only to zero its sequence numbers. RocksDB does that as soon as no snapshot protects
/// them, and every reader holds a snapshot, so every table of the append-only log (moved down
/// without a rewrite: its keys never overlap) was written twice. It waits a day instead. Only
/// the log: in `state` and `drive` the same compaction also drops what deletes and overwrites
/// left behind. The binding has no setter for this option, so it goes through RocksDB's options
/// string, first (the string starts from a copy of the options it is given, and the Rust
/// wrapper it returns drops what the given one kept alive).
pub fn log_cf_options() -> rocksdb::Options {
    let mut o = rocksdb::Options::default()
        .get_options_from_string(format!(
            "bottommost_file_compaction_delay={BOTTOMMOST_REWRITE_DELAY_S}"
        ))
        // Invariant: a fixed, known option name with an integer value always parses.
        .expect("bottommost_file_compaction_delay is a RocksDB option");
    configure(&mut o);
    o
}

/// How old a bottommost table file of the log must be before RocksDB may rewrite it only to
/// zero its sequence numbers (see [`log_cf_options`]).
pub const BOTTOMMOST_REWRITE_DELAY_S: u32 = 86_400;

fn configure(o: &mut rocksdb::Options) {
    // Reuse obsolete WAL files instead of growing fresh ones: an fdatasync of a write that
    // stays within the file's size needs no metadata update, which roughly halves sync cost.
    o.set_recycle_log_file_num(4);
    // Flush every column family together. A WAL file is recyclable only once every family
    // with data in it has flushed, and RocksDB starts a new WAL file whenever any family's
    // memtable is switched: flushed one by one, the small families (`meta`: three keys per
    // group) cut WAL files short, and a recycled short file is extended by every later sync
    // (an fdatasync that changes the file size commits the ext4 journal). Flushed together,
    // every WAL file holds one full memtable's worth and the next one overwrites it in place
    // (store-only sync64: about 116k -> 127k writes/s, five alternating runs each).
    o.set_atomic_flush(true);
    o.set_write_buffer_size(8 << 20);
    // Bounds the WAL a crash recovery replays (RocksDB's default is hundreds of MiB); with
    // atomic flushes it is rarely what triggers one.
    o.set_max_total_wal_size(24 << 20);
    o.set_max_background_jobs(2);
    // RocksDB's own log (`db/LOG`): every open rolls it to a `LOG.old.*` file; keep a few.
    o.set_keep_log_file_num(INFO_LOG_FILES_MAX);
    o.set_max_log_file_size(INFO_LOG_FILE_BYTES_MAX);
    o.set_bytes_per_sync(1 << 20);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Commands read state keys that were written long ago (a package's status, a feature):
    // a bloom filter lets such a read skip every table file that cannot hold the key.
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
}

/// RocksDB info log files (`db/LOG`, `db/LOG.old.*`) kept besides the current one.
pub const INFO_LOG_FILES_MAX: usize = 4;
/// Size at which RocksDB's info log rolls over to a new file.
pub const INFO_LOG_FILE_BYTES_MAX: usize = 1 << 20;

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    CFS.iter()
        .map(|name| {
            let opts = if *name == CF_LOG {
                log_cf_options()
            } else {
                db_options()
            };
            ColumnFamilyDescriptor::new(*name, opts)
        })
        .collect()
}

/// Opens the RocksDB database of a workspace without the store around it (no lock, no checks).
/// For tools and tests that must look underneath; everything else uses [`Store::open`].
pub fn open_raw_db(data: &Path) -> Result<DB, StoreError> {
    DB::open_cf_descriptors(&db_options(), layout::db_dir(data), cf_descriptors())
        .map_err(StoreError::db("open database"))
}

/// Opens the database read-only: the WAL is replayed into memory, nothing is written (so it
/// works on a full disk).
fn open_db_read_only(data: &Path) -> Result<DB, StoreError> {
    DB::open_cf_descriptors_read_only(&db_options(), layout::db_dir(data), cf_descriptors(), false)
        .map_err(StoreError::db("open database read-only"))
}

/// Opens the database for a rebuild: RocksDB refuses WAL-less writes while WAL files are
/// recycled, and a rebuild's state writes skip the WAL (see `rebuild_db`).
fn open_for_rebuild(data: &Path) -> Result<DB, StoreError> {
    let mut opts = db_options();
    opts.set_recycle_log_file_num(0);
    DB::open_cf_descriptors(&opts, layout::db_dir(data), cf_descriptors())
        .map_err(StoreError::db("open database for rebuild"))
}

/// Opens the database with `open` after the WAL check (`recovery::open_checked`): refused
/// when the replay dropped acknowledged commits, or when such a loss was found before.
fn open_db_checked(
    data: &Path,
    access: crate::recovery::Access,
    open: impl FnOnce() -> Result<DB, StoreError>,
) -> Result<DB, StoreError> {
    crate::recovery::open_checked(
        data,
        access,
        open,
        |db| Ok(read_meta(Base { db, snap: None })?.head.offset),
        system_clock_ms(),
    )
}

impl<M: StateMachine> Store<M> {
    /// Creates a workspace at `data` (created if missing) and returns its id.
    pub fn init(data: &Path) -> Result<Uuid, StoreError> {
        let db_dir = layout::db_dir(data);
        if db_dir.exists() {
            return Err(StoreError::AlreadyInitialized {
                path: data.display().to_string(),
            });
        }
        std::fs::create_dir_all(data)
            .map_err(|e| StoreError::io(format!("create {}", data.display()), e))?;
        let _lock = WorkspaceLock::acquire(&layout::lock_path(data))?;
        let mut opts = db_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(&opts, &db_dir, cf_descriptors())
            .map_err(StoreError::db("create database"))?;
        let id = Uuid::new_v4();
        let meta = db.cf_handle(CF_META).expect("meta CF was just created");
        let mut batch = WriteBatch::default();
        batch.put_cf(
            meta,
            layout::META_LAYOUT,
            layout::LAYOUT_VERSION.to_be_bytes(),
        );
        batch.put_cf(meta, layout::META_WORKSPACE_ID, id.as_bytes());
        batch.put_cf(meta, layout::META_APPLIED, 0u64.to_be_bytes());
        batch.put_cf(meta, layout::META_HEAD_HASH, [0u8; 32]);
        batch.put_cf(meta, layout::META_HEAD_EPOCH, 0u64.to_be_bytes());
        batch.put_cf(meta, layout::META_EPOCH, 1u64.to_be_bytes());
        batch.put_cf(meta, layout::META_FIRST, 1u64.to_be_bytes());
        // No projection version yet: the first open builds the (empty) projection and records it.
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo)
            .map_err(StoreError::db("write initial meta"))?;
        Ok(id)
    }

    /// Opens the workspace at `data`. Takes the workspace lock, checks that the stored applied
    /// offset is the last log entry and that this entry verifies, rebuilds the projection if
    /// its version differs from the machine's, and starts the writer. Work at open does not
    /// grow with the log, except for that rebuild.
    pub fn open(data: &Path, machine: M, opts: Options) -> Result<Self, StoreError> {
        let lock = lock_workspace(data)?;
        let Opened {
            db,
            workspace_id,
            epoch,
            head,
        } = open_current(data, &machine, Access::Write, || open_raw_db(data))?;
        let db = Arc::new(db);
        let machine = Arc::new(machine);
        let shared = Arc::new(Shared::new(head.offset));
        let (tx, rx) = mpsc::sync_channel(opts.queue_depth_max);
        let durability = opts.durability;
        let writer = Writer {
            db: Arc::clone(&db),
            machine: Arc::clone(&machine),
            opts,
            shared: Arc::clone(&shared),
            head,
            epoch,
            stopped: None,
            replier: None,
            cache: std::cell::RefCell::new(crate::overlay::ReadCache::new()),
            bulk: std::collections::VecDeque::new(),
            foreground_at: None,
        };
        let writer = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io("spawn writer thread", e))?;
        let flusher = (durability == Durability::Buffered)
            .then(|| spawn_flusher(Arc::clone(&db), Arc::clone(&shared)))
            .transpose()?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            flusher,
            db,
            machine,
            shared,
            durability,
            workspace_id,
            data: data.to_owned(),
            _lock: lock,
        })
    }

    /// Opens the workspace at `data` for reading only: no writer, every command is answered
    /// with [`StoreError::ReadOnly`], and RocksDB opens read-only, writing nothing, so this
    /// works on a full disk. The same checks as [`Store::open`] (WAL, layout, head, the
    /// machine's `check_open`). Only a projection built by another version is rebuilt first
    /// (that writes the projection, never the log).
    pub fn open_read_only(data: &Path, machine: M) -> Result<Self, StoreError> {
        let lock = lock_workspace(data)?;
        let Opened {
            db,
            workspace_id,
            head,
            ..
        } = open_current(data, &machine, Access::Read, || open_db_read_only(data))?;
        let shared = Arc::new(Shared::new(head.offset));
        shared.set_health(WriterHealth::ReadOnly);
        Ok(Self {
            tx: None,
            writer: None,
            flusher: None,
            db: Arc::new(db),
            machine: Arc::new(machine),
            shared,
            durability: Durability::None,
            workspace_id,
            data: data.to_owned(),
            _lock: lock,
        })
    }

    /// Rebuilds the projection of the (closed) workspace at `data` from its log.
    pub fn rebuild(
        data: &Path,
        machine: &M,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RebuildReport, StoreError> {
        let _lock = lock_workspace(data)?;
        let mut db = open_db_checked(data, Access::Write, || open_for_rebuild(data))?;
        check_layout(&db)?;
        check_head(&db)?;
        rebuild_db(&mut db, machine, progress)
    }

    /// Accepts the recorded WAL damage of the (closed) workspace at `data`: it will open at the
    /// offset its WAL replay recovered, without the lost commits. The WAL files holding them
    /// are removed (copies are in the quarantine directory the damage names). The acceptance
    /// waits in [`Store::pending_wal_loss`] until the caller has logged it (the `cairn` runtime
    /// does at its next open) and called [`Store::wal_loss_recorded`].
    pub fn accept_wal_loss(data: &Path) -> Result<crate::WalDamage, StoreError> {
        let _lock = lock_workspace(data)?;
        crate::recovery::accept(data, || open_raw_db(data))
    }

    /// An accepted WAL loss that is not logged yet (see [`Store::accept_wal_loss`]).
    pub fn pending_wal_loss(&self) -> Result<Option<crate::WalDamage>, StoreError> {
        crate::recovery::pending_accepted(&self.data)
    }

    /// The accepted WAL loss has been logged: forget it.
    pub fn wal_loss_recorded(&self) -> Result<(), StoreError> {
        crate::recovery::accepted_recorded(&self.data)
    }

    /// Submits a command; the ticket answers once it is committed (or rejected).
    pub fn submit(&self, meta: Meta, command: M::Command) -> CommandTicket<M> {
        self.submit_with_epoch(meta, command, None)
    }

    /// Submits a command whose entries open a new epoch (a promoted mirror's first): they are
    /// written in `epoch` (which must be newer than the log's), and every commit after them
    /// too. If the command is rejected, nothing changes.
    pub fn submit_in_epoch(&self, meta: Meta, command: M::Command, epoch: u64) -> CommandTicket<M> {
        self.submit_with_epoch(meta, command, Some(epoch))
    }

    fn submit_with_epoch(
        &self,
        meta: Meta,
        command: M::Command,
        epoch: Option<u64>,
    ) -> CommandTicket<M> {
        let (reply, rx) = oneshot::channel();
        if self.tx.is_none() {
            let _ = reply.send((Err(StoreError::ReadOnly.into()), (meta, command)));
            return Ticket { rx, quick: false };
        }
        self.send(Request::Command {
            meta,
            command,
            epoch,
            reply,
        });
        Ticket {
            rx,
            quick: self.shared.answers_quick(),
        }
    }

    /// Submits a command and waits for the answer.
    pub fn execute(
        &self,
        meta: Meta,
        command: M::Command,
    ) -> Result<Committed, CommandError<M::Rejection>> {
        self.submit(meta, command).wait()
    }

    /// Submits entries written elsewhere (a leader's, for a mirror). They must continue the
    /// chain; they are applied and committed like the store's own.
    pub fn submit_entries(&self, entries: Vec<StoredEntry>) -> Ticket<Committed, StoreError> {
        let verified: Result<Vec<VerifiedEntry>, _> = entries
            .into_iter()
            .map(|e| VerifiedEntry::verify(EncodedEntry::new(e)))
            .collect();
        match verified {
            Ok(v) => self.submit_verified(v),
            Err(e) => {
                let (reply, rx) = oneshot::channel();
                let _ = reply.send((Err(StoreError::Refused(e)), ()));
                Ticket { rx, quick: false }
            }
        }
    }

    /// [`Store::submit_entries`] of entries already verified, with their encoding (as a
    /// mirror received them): only their links are checked, and their bytes are stored as
    /// they are.
    pub fn submit_verified(&self, entries: Vec<VerifiedEntry>) -> Ticket<Committed, StoreError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.is_none() {
            let _ = reply.send((Err(StoreError::ReadOnly), ()));
            return Ticket { rx, quick: false };
        }
        self.send(Request::Entries { entries, reply });
        Ticket {
            rx,
            quick: self.shared.answers_quick(),
        }
    }

    fn send(&self, request: Request<M>) {
        let tx = self
            .tx
            .as_ref()
            .expect("a writable store keeps its sender until drop (read-only ones never send)");
        // If the writer is gone, the request (and its reply sender) is dropped here, and the
        // ticket answers "writer exited".
        let _ = tx.send(request);
    }

    /// A consistent read view at the latest commit.
    pub fn read(&self) -> Result<ReadView, StoreError> {
        ReadView::new(Arc::clone(&self.db))
    }

    /// Whether the writer can commit: ok, degraded by failing writes (they are retried), stopped,
    /// or read-only.
    pub fn health(&self) -> WriterHealth {
        self.shared.health()
    }

    /// Whether this store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.tx.is_none()
    }

    /// What the writer has done since open: group commits, entries, rejections, write time.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats.snapshot()
    }

    /// Whether answers currently come quickly (the last group write took at most
    /// [`QUICK_WRITE_NS_MAX`](crate::QUICK_WRITE_NS_MAX)), so that threads waiting on a
    /// [`Ticket`] yield for up to [`ANSWER_YIELD_US_MAX`](crate::ANSWER_YIELD_US_MAX) before
    /// they sleep.
    pub fn answers_quick(&self) -> bool {
        self.shared.answers_quick()
    }

    /// The applied offset of the latest commit.
    pub fn applied(&self) -> u64 {
        self.shared.applied()
    }

    /// Calls `listener` with the new applied offset after every commit from now on, whoever
    /// made it: commands and entries submitted from elsewhere (a mirror's) alike. It runs on
    /// the writer thread between commits, so it must be quick and must not block (sending on a
    /// channel or a `watch` is right; submitting to this store would deadlock).
    pub fn on_applied(&self, listener: impl Fn(u64) + Send + Sync + 'static) {
        self.shared.add_listener(Box::new(listener));
    }

    /// Waits until `offset` is applied or `timeout` passes; returns whether it is applied.
    pub fn wait_for(&self, offset: u64, timeout: Duration) -> bool {
        self.shared.wait_for(offset, timeout)
    }

    /// The workspace id, fixed at init.
    pub fn workspace_id(&self) -> Uuid {
        self.workspace_id
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The state machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// Writes a consistent checkpoint (log + state + meta) into `dir`, which must not exist.
    /// The result is a workspace directory that opens as it is. It is built in
    /// `<dir>.partial` and renamed when complete, so `dir` appears whole or not at all (see
    /// [`PartialDir`] for what happens to a `<dir>.partial` left by an interrupted run).
    pub fn backup(&self, dir: &Path) -> Result<Head, StoreError> {
        let partial = PartialDir::create(dir, "backup")?;
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(StoreError::db("prepare checkpoint"))?;
        checkpoint
            .create_checkpoint(layout::db_dir(partial.path()))
            .map_err(StoreError::db("create checkpoint"))?;
        // The checkpoint is self-consistent; report what it holds.
        let head = check_head(&open_raw_db(partial.path())?)?;
        partial.commit()?;
        Ok(head)
    }
}

/// Opens the database with `open` (after the WAL check) and checks it: layout, head, the
/// machine's compatibility; rebuilds a projection of another version first (through a
/// writable open, even for reading: the projection is derived, the log is not touched).
fn open_current<M: StateMachine>(
    data: &Path,
    machine: &M,
    access: Access,
    open: impl Fn() -> Result<DB, StoreError>,
) -> Result<Opened, StoreError> {
    let db = open_db_checked(data, access, &open)?;
    let (workspace_id, meta_epoch) = check_layout(&db)?;
    let head = check_head(&db)?;
    let stored_projection = read_projection_version(&db)?;
    let current = stored_projection == Some(machine.projection_version());
    // Checked before a rebuild too, against the old projection, so that a binary too old for
    // the data refuses it before dropping anything; a projection of another version may not
    // be readable, so only a clear refusal counts then, and the check is made again after the
    // rebuild, against the projection it built.
    match check_machine(&db, machine) {
        Err(e @ StoreError::Incompatible(_)) => return Err(e),
        Err(e) if current => return Err(e),
        _ => {}
    }
    let db = if current {
        db
    } else {
        match stored_projection {
            // A new workspace (or a replay target) builds its first projection.
            None => tracing::debug!("building the projection from the log"),
            Some(stored) => tracing::info!(
                stored,
                wanted = machine.projection_version(),
                "projection version differs; rebuilding from the log"
            ),
        }
        drop(db);
        rebuild_db(&mut open_for_rebuild(data)?, machine, &mut |_| {})?;
        let db = open()?;
        check_machine(&db, machine)?;
        db
    };
    Ok(Opened {
        db,
        workspace_id,
        epoch: meta_epoch.max(head.epoch),
        head,
    })
}

/// The machine's own check of the data at open (`StateMachine::check_open`).
fn check_machine<M: StateMachine>(db: &DB, machine: &M) -> Result<(), StoreError> {
    machine
        .check_open(&Base { db, snap: None })
        .map_err(|e| match e {
            CheckOpenError::Incompatible(why) => StoreError::Incompatible(why),
            CheckOpenError::State(e) => StoreError::state("check the workspace at open", e),
        })
}

impl<M: StateMachine> Drop for Store<M> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some((stop, flusher)) = self.flusher.take() {
            drop(stop);
            let _ = flusher.join();
        }
        // A read-only store has durability `None`: nothing to sync.
        if self.durability != Durability::None {
            if let Err(e) = self.db.flush_wal(true) {
                tracing::error!(error = %e, "final WAL sync failed");
            }
        }
    }
}

impl<M: StateMachine> LogStore for Store<M> {
    fn append(&self, entries: &[StoredEntry]) -> Result<(), LogError> {
        self.submit_entries(entries.to_vec()).wait()?;
        Ok(())
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, LogError> {
        Ok(Store::read(self)?.read_log(from, limit)?)
    }

    fn head(&self) -> Result<Head, LogError> {
        Ok(Store::read(self)?.head())
    }

    fn first_retained(&self) -> Result<u64, LogError> {
        Ok(Store::read(self)?.first_retained())
    }
}

fn spawn_flusher(
    db: Arc<DB>,
    shared: Arc<Shared>,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>), StoreError> {
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("cairn-wal-sync".into())
        .spawn(move || loop {
            let done = match stopped.recv_timeout(Duration::from_millis(BUFFERED_SYNC_INTERVAL_MS))
            {
                Err(RecvTimeoutError::Timeout) => false,
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            };
            if shared
                .dirty
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                if let Err(e) = db.flush_wal(true) {
                    tracing::error!(error = %e, "WAL sync failed");
                }
            }
            if done {
                return;
            }
        })
        .map_err(|e| StoreError::io("spawn WAL sync thread", e))?;
    Ok((stop, handle))
}

fn lock_workspace(data: &Path) -> Result<WorkspaceLock, StoreError> {
    if !layout::db_dir(data).is_dir() {
        return Err(StoreError::NotInitialized {
            path: data.display().to_string(),
        });
    }
    WorkspaceLock::acquire(&layout::lock_path(data))
}

/// Checks the layout version; returns the workspace id and current epoch.
fn check_layout(db: &DB) -> Result<(Uuid, u64), StoreError> {
    let meta = db
        .cf_handle(CF_META)
        .expect("meta CF is opened with the DB");
    let get = |key: &[u8]| db.get_cf(meta, key).map_err(StoreError::db("read meta"));
    let layout_version = get(layout::META_LAYOUT)?
        .and_then(|v| layout::parse_u64(&v))
        .ok_or_else(|| StoreError::Inconsistent("meta layout_version is missing".into()))?;
    if layout_version != layout::LAYOUT_VERSION {
        return Err(StoreError::Layout {
            found: layout_version,
            supported: layout::LAYOUT_VERSION,
        });
    }
    let id = get(layout::META_WORKSPACE_ID)?
        .and_then(|v| Uuid::from_slice(&v).ok())
        .ok_or_else(|| StoreError::Inconsistent("meta workspace_id is missing".into()))?;
    let epoch = get(layout::META_EPOCH)?
        .and_then(|v| layout::parse_u64(&v))
        .ok_or_else(|| StoreError::Inconsistent("meta epoch is missing".into()))?;
    Ok((id, epoch))
}

/// The O(1) open check: the last log key is the applied offset, and that entry decodes,
/// hashes right and is the head recorded in meta.
fn check_head(db: &DB) -> Result<Head, StoreError> {
    let base = Base { db, snap: None };
    let meta = read_meta(base)?;
    let mut last = db.iterator_cf(base.cf(CF_LOG), IteratorMode::End);
    let Some(item) = last.next() else {
        if meta.head.offset != 0 {
            return Err(StoreError::Inconsistent(format!(
                "meta says applied offset {}, but the log is empty",
                meta.head.offset
            )));
        }
        return Ok(meta.head);
    };
    let (key, value) = item.map_err(StoreError::db("read last log entry"))?;
    let last_offset = layout::parse_log_key(&key)
        .ok_or_else(|| StoreError::Inconsistent("last log key is not an offset".into()))?;
    if last_offset != meta.head.offset {
        return Err(StoreError::Inconsistent(format!(
            "the log ends at offset {last_offset}, but meta says applied offset {}",
            meta.head.offset
        )));
    }
    let entry = decode_stored(&key, &value)?;
    if entry.head() != meta.head {
        return Err(StoreError::Corrupt {
            offset: entry.offset,
            reason: CorruptReason::Chain(cairn_log::ChainError::HashMismatch {
                offset: entry.offset,
                stored: entry.hash,
                computed: meta.head.hash,
            }),
        });
    }
    Ok(meta.head)
}

fn read_projection_version(db: &DB) -> Result<Option<u64>, StoreError> {
    let meta = db
        .cf_handle(CF_META)
        .expect("meta CF is opened with the DB");
    Ok(db
        .get_cf(meta, layout::META_PROJECTION)
        .map_err(StoreError::db("read meta"))?
        .and_then(|v| layout::parse_u64(&v)))
}

/// Entries per rebuild batch.
const REBUILD_BATCH_ENTRIES: usize = 16 * 1024;
/// Entries the rebuild's log reader hands over at once.
const REBUILD_READ_BATCH_ENTRIES: usize = 1024;
/// Batches of entries read ahead of the rebuild's applier.
const REBUILD_QUEUE_BATCHES: usize = 8;
/// Pending state bytes per rebuild batch.
const REBUILD_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Drops the projection and replays the log through `apply`.
///
/// Crash safety: the projection version is deleted first and written back (synced) only after
/// every state write is flushed to SST files, so an interrupted rebuild is redone at next open.
/// That is why the state writes themselves can skip the WAL.
fn rebuild_db<M: StateMachine>(
    db: &mut DB,
    machine: &M,
    progress: &mut dyn FnMut(Progress),
) -> Result<RebuildReport, StoreError> {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    {
        let meta = db
            .cf_handle(CF_META)
            .expect("meta CF is opened with the DB");
        let mut batch = WriteBatch::default();
        batch.delete_cf(meta, layout::META_PROJECTION);
        db.write_opt(batch, &wo)
            .map_err(StoreError::db("rebuild: clear projection version"))?;
    }
    for space in cairn_log::Space::ALL {
        db.drop_cf(space.name())
            .map_err(StoreError::db("rebuild: drop projection"))?;
        db.create_cf(space.name(), &db_options())
            .map_err(StoreError::db("rebuild: create projection"))?;
    }
    let db: &DB = db;
    let base = Base { db, snap: None };
    let meta = read_meta(base)?;
    let total = meta.head.offset.saturating_sub(meta.first - 1);
    let mut overlay = crate::overlay::Overlay::new(base);
    let mut done = 0u64;
    let mut in_batch = 0usize;
    let mut failed = None;
    let mut head = Head::EMPTY;
    // Two stages, so two cores share the work: a reader thread iterates the log through the
    // same checked iteration as reads and verify (key, hash, link, gaps) and hands over
    // batches of entries; this thread applies them and writes the projection.
    let (to_apply, batches) = mpsc::sync_channel::<Vec<StoredEntry>>(REBUILD_QUEUE_BATCHES);
    // Applied batches go back to the reader to be freed where they were allocated (a free
    // into another thread's malloc arena is markedly slower).
    let (to_free, applied) = mpsc::channel::<Vec<StoredEntry>>();
    let read = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut batch = Vec::with_capacity(REBUILD_READ_BATCH_ENTRIES);
            let mut gone = false;
            let read = crate::view::visit_log_at(
                base,
                meta.first,
                meta.head.offset,
                meta.first,
                &mut |entry| {
                    batch.push(entry);
                    if batch.len() >= REBUILD_READ_BATCH_ENTRIES {
                        let full = std::mem::replace(
                            &mut batch,
                            Vec::with_capacity(REBUILD_READ_BATCH_ENTRIES),
                        );
                        // The applier stopped (it failed): stop reading.
                        gone = to_apply.send(full).is_err();
                        applied.try_iter().for_each(drop);
                    }
                    !gone
                },
            );
            if !batch.is_empty() && !gone {
                let _ = to_apply.send(batch);
            }
            read
        });
        'apply: for entries in batches.iter() {
            for entry in &entries {
                let step = machine
                    .apply(&mut overlay, entry)
                    .map_err(StoreError::from)
                    .and_then(|()| {
                        done += 1;
                        in_batch += 1;
                        if in_batch >= REBUILD_BATCH_ENTRIES
                            || overlay.bytes() >= REBUILD_BATCH_BYTES
                        {
                            in_batch = 0;
                            progress(Progress { done, total });
                            return crate::writer::write_overlay(db, &mut overlay, true);
                        }
                        Ok(())
                    });
                head = entry.head();
                if let Err(e) = step {
                    failed = Some(e);
                    break 'apply;
                }
            }
            // A reader that has finished no longer frees: then this thread does.
            let _ = to_free.send(entries);
        }
        // Dropping the receiver tells a reader still sending to stop.
        drop(batches);
        reader.join().unwrap_or_else(|_| {
            Err(StoreError::Inconsistent(
                "rebuild log reader panicked".into(),
            ))
        })
    });
    if failed.is_none() {
        read?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    crate::writer::write_overlay(db, &mut overlay, true)?;
    progress(Progress { done, total });
    if head.offset != meta.head.offset || (head.offset > 0 && head.hash != meta.head.hash) {
        return Err(StoreError::Inconsistent(format!(
            "rebuild replayed up to offset {}, but meta says head is offset {}",
            head.offset, meta.head.offset
        )));
    }
    for space in cairn_log::Space::ALL {
        let cf = base.cf(space.name());
        db.flush_cf(cf)
            .map_err(StoreError::db("rebuild: flush projection"))?;
    }
    let meta_cf = base.cf(CF_META);
    let mut batch = WriteBatch::default();
    batch.put_cf(
        meta_cf,
        layout::META_PROJECTION,
        machine.projection_version().to_be_bytes(),
    );
    db.write_opt(batch, &wo)
        .map_err(StoreError::db("rebuild: record projection version"))?;
    Ok(RebuildReport {
        entries: done,
        head: meta.head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Answer = oneshot::Sender<(Result<u32, StoreError>, ())>;

    fn quick_ticket() -> (Answer, Ticket<u32, StoreError>) {
        let (tx, rx) = oneshot::channel();
        (tx, Ticket { rx, quick: true })
    }

    #[test]
    fn a_yielding_wait_gets_an_answer_sent_at_once_or_later() {
        let (tx, ticket) = quick_ticket();
        tx.send((Ok(1), ())).unwrap();
        assert_eq!(ticket.wait().unwrap(), 1);
        // Later than the yielding lasts: the wait goes on to sleep and still gets it.
        for delay_us in [10, 5_000] {
            let (tx, ticket) = quick_ticket();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(delay_us));
                tx.send((Ok(2), ())).unwrap();
            });
            assert_eq!(ticket.wait().unwrap(), 2);
            sender.join().unwrap();
        }
    }

    #[test]
    fn a_yielding_wait_ends_when_the_writer_is_gone() {
        let (tx, ticket) = quick_ticket();
        drop(tx);
        assert!(matches!(ticket.wait(), Err(StoreError::Stopped(_))));
        let (tx, ticket) = quick_ticket();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            drop(tx);
        });
        assert!(matches!(ticket.wait(), Err(StoreError::Stopped(_))));
        sender.join().unwrap();
    }
}
