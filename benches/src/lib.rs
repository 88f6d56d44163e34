//! Shared pieces of cairn's benchmarks: the workload driver and the peers cairn is compared
//! against (raw RocksDB and an SQLite events table), so the `compare` binary and the criterion
//! benches measure the same work; the lifecycle, server and replication figures of `compare`.

pub mod drive;
pub mod lifecycle;
pub mod replication;
pub mod server;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_log::Meta;
use cairn_store::testing::NullMachine;
use cairn_store::{Durability, Event, Options, Store};
use uuid::Uuid;

/// Payload size of every benchmark write.
pub const PAYLOAD_BYTES: usize = 256;

/// A deterministic 256-byte payload.
pub fn payload(i: u64) -> Vec<u8> {
    (0..PAYLOAD_BYTES)
        .map(|j| (i as usize * 131 + j * 7) as u8)
        .collect()
}

/// A benchmark event.
pub fn event(i: u64) -> Event {
    Event {
        kind: "bench.write.v1".into(),
        payload: payload(i),
    }
}

/// Meta of a benchmark command.
pub fn meta(i: u64) -> Meta {
    Meta {
        actor: "bench".into(),
        change: None,
        command: Uuid::from_u128(i as u128),
        idempotency_key: None,
    }
}

/// The `p`-th percentile (0..=100) of `sorted` durations in seconds, in milliseconds (NaN
/// when there are none).
pub fn percentile_ms(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i] * 1e3
}

/// The runtime every bench that serves or opens a `Workspace` runs on: two workers, the
/// machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a bench runtime")
}

/// Something that acknowledges one 256-byte write at a time, from many threads.
pub trait Sink: Send + Sync {
    /// Writes one payload and returns once it is acknowledged.
    fn write(&self, i: u64);

    /// Group commits so far: (groups, entries, nanoseconds spent writing them), where the sink
    /// groups writes itself.
    fn groups(&self) -> Option<GroupStats> {
        None
    }
}

/// How a grouping sink's commits went.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupStats {
    /// Group commits written.
    pub groups: u64,
    /// Writes in them.
    pub entries: u64,
    /// Time spent in the commits' writes (fsync included).
    pub write_ns: u64,
}

impl From<cairn_store::WriterStats> for GroupStats {
    fn from(s: cairn_store::WriterStats) -> Self {
        Self {
            groups: s.groups,
            entries: s.entries,
            write_ns: s.write_ns,
        }
    }
}

impl GroupStats {
    /// "N per group, M µs per group write".
    pub fn describe(&self) -> String {
        let groups = self.groups.max(1) as f64;
        format!(
            "{:.1} per group, {:.0} µs per group write",
            self.entries as f64 / groups,
            self.write_ns as f64 / 1e3 / groups
        )
    }
}

/// Runs `threads` writers against `sink` for `duration`; returns acknowledged writes per second.
pub fn throughput(sink: &dyn Sink, threads: usize, duration: Duration) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count) = (&stop, &count);
            s.spawn(move || {
                let mut i = (t as u64) << 40;
                while !stop.load(Ordering::Relaxed) {
                    sink.write(i);
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// cairn's store, appending through its single writer (log path only: [`NullMachine`]).
pub struct CairnSink {
    /// The store.
    pub store: Store<NullMachine>,
}

impl CairnSink {
    /// A fresh workspace in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Self {
        Store::<NullMachine>::init(dir).expect("init bench workspace");
        let opts = Options {
            durability,
            ..Options::default()
        };
        Self {
            store: Store::open(dir, NullMachine, opts).expect("open bench workspace"),
        }
    }
}

impl Sink for CairnSink {
    fn write(&self, i: u64) {
        self.store.execute(meta(i), event(i)).expect("cairn write");
    }

    fn groups(&self) -> Option<GroupStats> {
        Some(self.store.stats().into())
    }
}

fn raw_db(dir: &Path) -> rocksdb::DB {
    let mut o = cairn_store::db_options();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    rocksdb::DB::open_cf(&o, dir, ["log"]).expect("open raw rocksdb")
}

/// Raw RocksDB, every writer thread calling `write` itself (RocksDB groups concurrent writers
/// into one WAL write internally): same column family options, same WAL, same sync setting.
pub struct RawDirect {
    db: rocksdb::DB,
    next: AtomicU64,
    sync: bool,
}

impl RawDirect {
    /// A fresh database in `dir`.
    pub fn open(dir: &Path, sync: bool) -> Self {
        Self {
            db: raw_db(dir),
            next: AtomicU64::new(1),
            sync,
        }
    }
}

impl Sink for RawDirect {
    fn write(&self, i: u64) {
        let offset = self.next.fetch_add(1, Ordering::Relaxed);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.db.cf_handle("log").unwrap(),
            offset.to_be_bytes(),
            payload(i),
        );
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(batch, &wo).expect("raw write");
    }
}

type Job = (u64, mpsc::SyncSender<()>);

/// A peer with cairn's shape: writers hand their payload to one group-commit thread, which
/// writes whatever is queued as one group and answers everyone.
pub struct Grouped {
    tx: Option<mpsc::SyncSender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
    stats: Arc<[AtomicU64; 3]>,
}

impl Grouped {
    fn start(mut commit: impl FnMut(&[u64]) + Send + 'static) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(4096);
        let stats = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let counters = Arc::clone(&stats);
        let worker = std::thread::spawn(move || {
            let mut jobs = Vec::new();
            while let Ok(first) = rx.recv() {
                jobs.push(first);
                while jobs.len() < 1024 {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let ids: Vec<u64> = jobs.iter().map(|(i, _)| *i).collect();
                let started = Instant::now();
                commit(&ids);
                let [groups, entries, write_ns] = &*counters;
                write_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                groups.fetch_add(1, Ordering::Relaxed);
                entries.fetch_add(ids.len() as u64, Ordering::Relaxed);
                for (_, reply) in jobs.drain(..) {
                    let _ = reply.send(());
                }
            }
        });
        Self {
            tx: Some(tx),
            worker: Some(worker),
            stats,
        }
    }

    /// Raw RocksDB: one `WriteBatch` per group.
    pub fn rocksdb(dir: &Path, sync: bool) -> Self {
        let db = Arc::new(raw_db(dir));
        let mut next = 1u64;
        Self::start(move |ids| {
            let mut batch = rocksdb::WriteBatch::default();
            let cf = db.cf_handle("log").unwrap();
            for i in ids {
                batch.put_cf(cf, next.to_be_bytes(), payload(*i));
                next += 1;
            }
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(sync);
            db.write_opt(batch, &wo).expect("raw group write");
        })
    }

    /// SQLite in WAL mode with `synchronous=FULL`: one transaction per group into an events
    /// table, which is what a user would otherwise build.
    pub fn sqlite(dir: &Path) -> Self {
        let conn = rusqlite::Connection::open(dir.join("events.sqlite")).expect("open sqlite");
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute_batch(
            "CREATE TABLE events (offset INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload BLOB NOT NULL)",
        )
        .unwrap();
        let mut conn = conn;
        Self::start(move |ids| {
            let tx = conn.transaction().expect("sqlite begin");
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO events (kind, payload) VALUES ('bench.write.v1', ?1)",
                    )
                    .unwrap();
                for i in ids {
                    stmt.execute([payload(*i)]).expect("sqlite insert");
                }
            }
            tx.commit().expect("sqlite commit");
        })
    }
}

impl Sink for Grouped {
    fn write(&self, i: u64) {
        let (reply, done) = mpsc::sync_channel(1);
        self.tx
            .as_ref()
            .expect("open until drop")
            .send((i, reply))
            .expect("group thread alive");
        done.recv().expect("group thread answers");
    }

    fn groups(&self) -> Option<GroupStats> {
        let [groups, entries, write_ns] = &*self.stats;
        Some(GroupStats {
            groups: groups.load(Ordering::Relaxed),
            entries: entries.load(Ordering::Relaxed),
            write_ns: write_ns.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Grouped {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
