//! The RocksDB store through its public entry points: commit, rejection, group commit,
//! snapshots, reopen, rebuild, backup, locking, durability modes.

use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_log::{codec, Head, LogError, LogStore, StateRead, StoredEntry};
use cairn_store::testing::{kv_location, meta, KvCommand, KvMachine, KvRejection, NullMachine};
use cairn_store::{CommandError, Durability, Event, Options, Store, StoreError};
use tempfile::TempDir;

fn fresh() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    Store::<KvMachine>::init(dir.path()).unwrap();
    dir
}

fn open(dir: &Path) -> Store<KvMachine> {
    Store::open(dir, KvMachine::default(), Options::default()).unwrap()
}

fn set(store: &Store<KvMachine>, key: &str, value: &str) -> u64 {
    let c = store
        .execute(
            meta(1),
            KvCommand::Set {
                key: key.into(),
                value: value.into(),
            },
        )
        .unwrap();
    assert_eq!(c.offsets.end - c.offsets.start, 1);
    c.offsets.start
}

fn get(store: &Store<KvMachine>, key: &str) -> Option<Vec<u8>> {
    let (space, k) = kv_location(key);
    store.read().unwrap().get(space, &k).unwrap()
}

/// A RocksDB store in a temp dir, as a `LogStore`, for the conformance suite.
struct TempStore {
    store: Store<NullMachine>,
    _dir: TempDir,
}

impl LogStore for TempStore {
    fn append(&self, entries: &[StoredEntry]) -> Result<(), LogError> {
        self.store.append(entries)
    }
    fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, LogError> {
        LogStore::read(&self.store, from, limit)
    }
    fn head(&self) -> Result<Head, LogError> {
        self.store.head()
    }
    fn first_retained(&self) -> Result<u64, LogError> {
        self.store.first_retained()
    }
}

#[test]
fn rocksdb_store_passes_the_conformance_suite() {
    cairn_log::testing::suite(|| {
        let dir = tempfile::tempdir().unwrap();
        Store::<NullMachine>::init(dir.path()).unwrap();
        let opts = Options {
            durability: Durability::None,
            ..Options::default()
        };
        TempStore {
            store: Store::open(dir.path(), NullMachine, opts).unwrap(),
            _dir: dir,
        }
    });
}

#[test]
fn a_commit_writes_entry_state_and_head_together() {
    let dir = fresh();
    let store = open(dir.path());
    assert_eq!(store.applied(), 0);
    assert_eq!(set(&store, "a", "1"), 1);
    assert_eq!(set(&store, "d/b", "2"), 2);
    let view = store.read().unwrap();
    assert_eq!(view.applied(), 2);
    assert_eq!(get(&store, "a").as_deref(), Some(&b"1"[..]));
    assert_eq!(
        get(&store, "d/b").as_deref(),
        Some(&b"2"[..]),
        "drive space is written too"
    );
    let log = view.read_log(1, 10).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].prev, log[0].hash, "entries are chained");
    assert_eq!(
        view.head(),
        log[1].head(),
        "the view's head is the last entry"
    );
    let (key, value): (String, Vec<u8>) = codec::decode_value(&log[0].payload).unwrap();
    assert_eq!((key.as_str(), value.as_slice()), ("a", &b"1"[..]));
}

#[test]
fn a_rejection_writes_nothing() {
    let dir = fresh();
    let store = open(dir.path());
    set(&store, "a", "1");
    let before = store.read().unwrap().digest().unwrap();
    let err = store
        .execute(
            meta(2),
            KvCommand::Delete {
                key: "ghost".into(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(KvRejection::Missing(ref k)) if k == "ghost"));
    let after = store.read().unwrap().digest().unwrap();
    assert_eq!(before, after, "neither log nor state moved");
    assert_eq!(store.read().unwrap().read_log(2, 10).unwrap(), vec![]);
}

#[test]
fn commands_in_one_group_see_the_ones_before_them() {
    let dir = fresh();
    let store = open(dir.path());
    // Submitted without waiting, so they land in the same group: the delete must be decided
    // against the uncommitted set before it, and the second delete against both.
    let t1 = store.submit(
        meta(1),
        KvCommand::Set {
            key: "k".into(),
            value: b"v".to_vec(),
        },
    );
    let t2 = store.submit(meta(2), KvCommand::Delete { key: "k".into() });
    let t3 = store.submit(meta(3), KvCommand::Delete { key: "k".into() });
    assert_eq!(t1.wait().unwrap().offsets, 1..2);
    assert_eq!(t2.wait().unwrap().offsets, 2..3);
    assert!(matches!(
        t3.wait(),
        Err(CommandError::Rejected(KvRejection::Missing(_)))
    ));
    assert_eq!(get(&store, "k"), None);
    assert_eq!(store.applied(), 2);
}

fn submit_bulk(store: &Store<KvMachine>, n: usize) -> Vec<cairn_store::CommandTicket<KvMachine>> {
    (0..n)
        .map(|i| {
            store.submit(
                meta(10 + i as u64),
                KvCommand::Set {
                    key: format!("bulk/{i}"),
                    value: b"v".to_vec(),
                },
            )
        })
        .collect()
}

/// A foreground command (just after another, so foreground traffic is recent) submitted
/// behind `n` bulk commands; its answer, and the bulk commands' tickets.
fn foreground_behind_bulk(
    store: &Store<KvMachine>,
    n: usize,
) -> (
    cairn_store::Committed,
    Vec<cairn_store::CommandTicket<KvMachine>>,
) {
    set(store, "recent", "a foreground command just before");
    let bulk = submit_bulk(store, n);
    let foreground = store
        .submit(
            meta(2),
            KvCommand::Set {
                key: "fg".into(),
                value: b"v".to_vec(),
            },
        )
        .wait()
        .unwrap();
    (foreground, bulk)
}

/// While foreground commands keep coming, a group decides only a few bulk commands, in groups
/// of their own: a foreground command submitted behind a thousand bulk ones overtakes them
/// (one queue in arrival order would commit it last). Bulk commands keep their order.
#[test]
fn a_foreground_command_overtakes_queued_bulk_commands_which_keep_their_order() {
    let dir = fresh();
    let store = open(dir.path());
    let (foreground, bulk) = foreground_behind_bulk(&store, 1000);
    let foreground = foreground.offsets.start;
    let offsets: Vec<u64> = bulk
        .into_iter()
        .map(|t| t.wait().unwrap().offsets.start)
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "bulk commands committed out of their order"
    );
    let after = offsets.iter().filter(|&&o| o > foreground).count();
    assert!(
        after > 0,
        "the foreground command (offset {foreground}) waited for all 1000 bulk commands"
    );
    assert_eq!(store.applied(), 1 + 1000 + 1);
}

/// A group that holds a foreground command decides no bulk command, so its write waits for no
/// bulk decide: the command's commit ends at its own entry.
#[test]
fn a_foreground_command_commits_in_a_group_without_bulk_commands() {
    let dir = fresh();
    let store = open(dir.path());
    let (foreground, bulk) = foreground_behind_bulk(&store, 1000);
    let own = foreground.offsets.end - 1;
    assert_eq!(
        foreground.applied, own,
        "bulk commands were decided into the foreground command's group (it ended at {} \
         after the command's entry {own})",
        foreground.applied
    );
    for t in bulk {
        t.wait().unwrap();
    }
    assert_eq!(store.applied(), 1 + 1000 + 1);
}

/// Entries (a mirror's, or the empty fence a handoff waits on) are committed after every
/// command queued before them, bulk ones included, so "everything before the fence is
/// committed" holds.
#[test]
fn entries_come_after_every_bulk_command_queued_before_them() {
    let dir = fresh();
    let store = open(dir.path());
    set(&store, "recent", "a foreground command just before");
    let bulk = submit_bulk(&store, 500);
    let fence = store.submit_entries(Vec::new()).wait().unwrap().offsets;
    assert!(fence.is_empty(), "an empty fence writes nothing: {fence:?}");
    for t in bulk {
        let at = t.wait().unwrap().offsets.start;
        assert!(
            at < fence.start,
            "a bulk command queued before the fence committed after it ({at} >= {})",
            fence.start
        );
    }
}

/// 16 threads × 40 commands under `durability`: offsets are dense and unique, and each answer
/// names the entry its own command wrote. (Under `buffered` and `none`, writes are quick and
/// waiting threads yield before they sleep: `cairn_store::QUICK_WRITE_NS_MAX`.)
fn concurrent_writers(durability: Durability) {
    let dir = fresh();
    let opts = Options {
        durability,
        ..Options::default()
    };
    let store = Arc::new(Store::open(dir.path(), KvMachine::default(), opts).unwrap());
    let threads = 16;
    let per_thread = 40;
    let mut answered: Vec<(u64, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = Arc::clone(&store);
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let key = format!("t{t}-{i}");
                            (set(&store, &key, "x"), key)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    answered.sort_unstable();
    let n = (threads * per_thread) as u64;
    let offsets: Vec<u64> = answered.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=n).collect::<Vec<_>>());
    let view = store.read().unwrap();
    let entries = view.read_log(1, n as usize).unwrap();
    assert_eq!(entries.len(), n as usize);
    for ((offset, key), entry) in answered.iter().zip(&entries) {
        assert_eq!(entry.offset, *offset);
        let (written, _): (String, Vec<u8>) = codec::decode_value(&entry.payload).unwrap();
        assert_eq!(
            &written, key,
            "the answer at offset {offset} is its own command's"
        );
    }
    let report = view.verify(&mut |_| {}).unwrap();
    assert_eq!(report.entries, n);
}

#[test]
fn concurrent_writers_get_dense_unique_offsets() {
    concurrent_writers(Durability::Sync);
}

#[test]
fn concurrent_writers_get_their_own_answers_when_writes_are_quick() {
    concurrent_writers(Durability::Buffered);
    concurrent_writers(Durability::None);
}

#[test]
fn a_multi_event_command_commits_all_or_nothing() {
    let dir = fresh();
    let store = open(dir.path());
    let pairs: Vec<_> = (0..10).map(|i| (format!("m{i}"), vec![i as u8])).collect();
    let c = store.execute(meta(1), KvCommand::SetMany(pairs)).unwrap();
    assert_eq!(c.offsets, 1..11);
    let log = store.read().unwrap().read_log(1, 100).unwrap();
    assert!(
        log.iter().all(|e| e.meta.command == log[0].meta.command),
        "one command"
    );

    let mut bad: Vec<_> = (0..5).map(|i| (format!("n{i}"), vec![])).collect();
    bad.push((String::new(), vec![]));
    assert!(matches!(
        store.execute(meta(2), KvCommand::SetMany(bad)),
        Err(CommandError::Rejected(KvRejection::EmptyKey))
    ));
    assert_eq!(
        store.applied(),
        10,
        "a rejected multi-event command writes none of them"
    );
}

#[test]
fn a_command_over_the_event_limit_is_refused_whole() {
    let dir = fresh();
    let opts = Options {
        command_entries_max: 8,
        batch_entries_max: 4,
        ..Options::default()
    };
    let store = Store::open(dir.path(), KvMachine::default(), opts).unwrap();
    let pairs: Vec<_> = (0..9).map(|i| (format!("m{i}"), vec![])).collect();
    let err = store
        .execute(meta(1), KvCommand::SetMany(pairs))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Store(StoreError::TooManyEvents { count: 9, max: 8 })
        ),
        "{err:?}"
    );
    assert_eq!(store.applied(), 0);
    // Eight events exceed batch_entries_max (4) but are one command: never split.
    let pairs: Vec<_> = (0..8).map(|i| (format!("m{i}"), vec![])).collect();
    assert_eq!(
        store
            .execute(meta(2), KvCommand::SetMany(pairs))
            .unwrap()
            .offsets,
        1..9
    );
}

#[test]
fn an_oversized_event_is_refused_naming_the_field() {
    let dir = fresh();
    let store = open(dir.path());
    let big = vec![0u8; cairn_log::limits::ENTRY_BYTES_MAX];
    let err = store
        .execute(
            meta(1),
            KvCommand::Emit(Event {
                kind: "kv.set.v1".into(),
                payload: big,
            }),
        )
        .unwrap_err();
    assert!(err.to_string().contains("payload"), "{err}");
    let err = store
        .execute(
            meta(1),
            KvCommand::Emit(Event {
                kind: "Bad Kind".into(),
                payload: vec![],
            }),
        )
        .unwrap_err();
    assert!(err.to_string().contains("Bad Kind"), "{err}");
    assert_eq!(store.applied(), 0);
    set(&store, "still", "works");
}

#[test]
fn an_unappliable_entry_stops_the_writer_and_writes_nothing() {
    let dir = fresh();
    {
        let store = open(dir.path());
        set(&store, "a", "1");
        let err = store
            .execute(
                meta(2),
                KvCommand::Emit(Event {
                    kind: "nobody.knows.v1".into(),
                    payload: vec![],
                }),
            )
            .unwrap_err();
        assert!(err.to_string().contains("nobody.knows.v1"), "{err}");
        assert!(
            err.to_string().contains("offset") || err.to_string().contains("entry 2"),
            "{err}"
        );
        let err = store
            .execute(
                meta(3),
                KvCommand::Set {
                    key: "b".into(),
                    value: vec![],
                },
            )
            .unwrap_err();
        assert!(
            matches!(err, CommandError::Store(StoreError::Stopped(_))),
            "{err:?}"
        );
    }
    let store = open(dir.path());
    assert_eq!(
        store.applied(),
        1,
        "nothing of the failed group was written"
    );
    store.read().unwrap().verify(&mut |_| {}).unwrap();
}

#[test]
fn a_read_view_is_a_stable_snapshot() {
    let dir = fresh();
    let store = open(dir.path());
    set(&store, "a", "1");
    let view = store.read().unwrap();
    set(&store, "a", "2");
    set(&store, "b", "3");
    let (space, k) = kv_location("a");
    assert_eq!(view.applied(), 1);
    assert_eq!(view.get(space, &k).unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        view.read_log(1, 10).unwrap().len(),
        1,
        "the log is read at the snapshot too"
    );
    assert_eq!(store.read().unwrap().applied(), 3);
}

#[test]
fn reopen_keeps_everything_and_the_digest() {
    let dir = fresh();
    let digest = {
        let store = open(dir.path());
        for i in 0..50 {
            set(&store, &format!("k{i}"), "v");
        }
        store.read().unwrap().digest().unwrap()
    };
    let store = open(dir.path());
    assert_eq!(store.applied(), 50);
    assert_eq!(store.read().unwrap().digest().unwrap(), digest);
    assert_eq!(
        set(&store, "next", "v"),
        51,
        "appending continues the chain"
    );
    store.read().unwrap().verify(&mut |_| {}).unwrap();
}

#[test]
fn rebuild_reproduces_the_digest() {
    let dir = fresh();
    let digest = {
        let store = open(dir.path());
        for i in 0..300 {
            set(&store, &format!("k{}", i % 37), &format!("v{i}"));
            if i % 5 == 0 {
                store
                    .execute(
                        meta(i),
                        KvCommand::Delete {
                            key: format!("k{}", i % 37),
                        },
                    )
                    .unwrap();
            }
        }
        set(&store, "d/drive-key", "x");
        store.read().unwrap().digest().unwrap()
    };
    let mut seen = 0;
    let report = Store::rebuild(dir.path(), &KvMachine::default(), &mut |p| seen = p.done).unwrap();
    assert_eq!(report.head.offset, digest.applied);
    assert_eq!(seen, digest.applied, "progress reaches the end");
    let store = open(dir.path());
    assert_eq!(store.read().unwrap().digest().unwrap(), digest);
}

#[test]
fn a_new_projection_version_rebuilds_at_open() {
    let dir = fresh();
    let digest = {
        let store = open(dir.path());
        for i in 0..20 {
            set(&store, &format!("k{i}"), "v");
        }
        store.read().unwrap().digest().unwrap()
    };
    {
        // Garbage in the projection that the log does not explain.
        let db = cairn_store::open_raw_db(dir.path()).unwrap();
        db.put_cf(db.cf_handle("state").unwrap(), b"kv/ghost", b"boo")
            .unwrap();
    }
    let store = open(dir.path());
    assert_ne!(
        store.read().unwrap().digest().unwrap(),
        digest,
        "same version: no rebuild"
    );
    drop(store);
    let store = Store::open(dir.path(), KvMachine { version: 2 }, Options::default()).unwrap();
    assert_eq!(
        store.read().unwrap().digest().unwrap(),
        digest,
        "rebuilt from the log"
    );
    assert_eq!(get(&store, "ghost"), None);
}

#[test]
fn backup_is_a_workspace_with_the_same_state() {
    let dir = fresh();
    let store = open(dir.path());
    for i in 0..30 {
        set(&store, &format!("k{i}"), "v");
    }
    let digest = store.read().unwrap().digest().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let target = backups.path().join("b1");
    let head = store.backup(&target).unwrap();
    assert_eq!(head.offset, 30);
    set(&store, "after", "backup");
    let err = store.backup(&target).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    drop(store);
    let restored = open(&target);
    assert_eq!(restored.read().unwrap().digest().unwrap(), digest);
    assert_eq!(restored.workspace_id(), open_id(dir.path()));
    restored.read().unwrap().verify(&mut |_| {}).unwrap();
}

fn open_id(dir: &Path) -> uuid::Uuid {
    open(dir).workspace_id()
}

#[test]
fn a_second_opener_is_told_who_holds_the_lock() {
    let dir = fresh();
    let _store = open(dir.path());
    let err = Store::open(dir.path(), KvMachine::default(), Options::default())
        .err()
        .expect("second open fails");
    assert_eq!(
        err.to_string(),
        format!("workspace is locked by pid {}", std::process::id())
    );
}

#[test]
fn init_and_open_refuse_the_wrong_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path(), KvMachine::default(), Options::default())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::NotInitialized { .. }), "{err}");
    assert!(err.to_string().contains("not a cairn workspace"));
    Store::<KvMachine>::init(dir.path()).unwrap();
    let err = Store::<KvMachine>::init(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyInitialized { .. }),
        "{err}"
    );
}

#[test]
fn every_durability_mode_commits_and_survives_a_clean_close() {
    for durability in [Durability::Sync, Durability::Buffered, Durability::None] {
        let dir = fresh();
        {
            let opts = Options {
                durability,
                ..Options::default()
            };
            let store = Store::open(dir.path(), KvMachine::default(), opts).unwrap();
            for i in 0..20 {
                set(&store, &format!("k{i}"), "v");
            }
        }
        let store = open(dir.path());
        assert_eq!(store.applied(), 20, "{durability:?}");
    }
}

#[test]
fn wait_for_and_tickets_as_futures() {
    let dir = fresh();
    let store = Arc::new(open(dir.path()));
    assert!(!store.wait_for(1, Duration::from_millis(1)));
    let ticket = store.submit(
        meta(1),
        KvCommand::Set {
            key: "a".into(),
            value: vec![],
        },
    );
    let committed = block_on(ticket.into_future()).unwrap();
    assert_eq!(committed.offsets, 1..2);
    assert!(store.wait_for(1, Duration::from_secs(5)));
}

/// A minimal executor, enough to drive a ticket as a future.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn stats_count_groups_entries_rejections_and_write_time() {
    let dir = fresh();
    let store = open(dir.path());
    assert_eq!(store.stats(), Default::default(), "nothing done at open");
    set(&store, "a", "1");
    set(&store, "b", "2");
    let rejected = store.execute(
        meta(2),
        KvCommand::Set {
            key: String::new(),
            value: "x".into(),
        },
    );
    assert!(matches!(rejected, Err(CommandError::Rejected(_))));
    let stats = store.stats();
    assert_eq!(stats.entries, 2, "two entries committed");
    assert_eq!(stats.entries, store.applied());
    assert_eq!(stats.groups, 2, "each lone command is its own group commit");
    assert_eq!(stats.rejections, 1);
    assert!(stats.write_ns > 0, "writes take time");
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.stats().entries,
        0,
        "counters start again at each open"
    );
}

#[test]
fn decisions_see_every_commit_even_for_keys_read_before() {
    // The writer keeps committed values it has read; each commit must update them, whether
    // the key was absent, present, or deleted when first read.
    let dir = fresh();
    let store = open(dir.path());
    let delete = |store: &Store<KvMachine>, key: &str| {
        store.execute(
            meta(9),
            KvCommand::Delete {
                key: key.to_string(),
            },
        )
    };
    let missing = |r: Result<_, CommandError<KvRejection>>| {
        matches!(r, Err(CommandError::Rejected(KvRejection::Missing(_))))
    };
    for key in ["k", "d/k"] {
        assert!(missing(delete(&store, key)), "{key}: absent at first read");
        set(&store, key, "1");
        assert!(
            delete(&store, key).is_ok(),
            "{key}: the set is seen after an absent read"
        );
        assert!(missing(delete(&store, key)), "{key}: the delete is seen");
        set(&store, key, "2");
        set(&store, key, "3");
        assert!(
            delete(&store, key).is_ok(),
            "{key}: sets are seen after a deleted read"
        );
    }
    drop(store);
    let store = open(dir.path());
    assert!(
        missing(delete(&store, "k")),
        "a reopen starts from committed state"
    );
}

#[test]
fn waiters_are_woken_by_the_commit_they_wait_for() {
    let dir = fresh();
    let store = Arc::new(open(dir.path()));
    let timeout = Duration::from_secs(60);
    let started = Arc::new(std::sync::Barrier::new(4));
    let waiters: Vec<_> = (1..=3u64)
        .map(|offset| {
            let (store, started) = (Arc::clone(&store), Arc::clone(&started));
            std::thread::spawn(move || {
                started.wait();
                let start = std::time::Instant::now();
                (store.wait_for(offset, timeout), start.elapsed())
            })
        })
        .collect();
    // The waiters are running; each commit (an fsync) gives them time to block, and one that
    // has not yet returns at once, which is also correct.
    started.wait();
    for i in 0..3 {
        set(&store, &format!("k{i}"), "v");
    }
    for w in waiters {
        let (reached, waited) = w.join().unwrap();
        assert!(reached);
        // Not a performance check: a waiter nobody woke would sit out the whole timeout.
        assert!(waited < timeout / 2, "woken by the commit, not the timeout");
    }
}

/// Set in the child process of the next tests: what it holds (a workspace, a partial dir).
const LOCK_CHILD_ENV: &str = "CAIRN_TEST_LOCK_CHILD";

/// Runs the test `name` of this binary as a child with `LOCK_CHILD_ENV=dir`, which takes a lock
/// and forks a grandchild frozen before any `exec`; kills the child, checks the grandchild
/// lives on, runs `then` (the next taker, which must succeed while it lives), and kills the
/// grandchild.
fn kill_holder_whose_child_is_half_spawned<T>(
    name: &str,
    dir: &Path,
    then: impl FnOnce() -> T,
) -> T {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(LOCK_CHILD_ENV, dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let grandchild = loop {
        let mut line = String::new();
        use std::io::BufRead;
        assert_ne!(
            out.read_line(&mut line).unwrap(),
            0,
            "the child ended early"
        );
        // libtest prints the test's name on the same line first.
        if let Some((_, pid)) = line.trim().split_once("forked ") {
            break pid.parse::<i32>().unwrap();
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // The grandchild lives on (it sleeps up to 30 s) with the dead holder's descriptors.
    // SAFETY: kill with signal 0 only checks that the process exists.
    assert_eq!(
        unsafe { libc::kill(grandchild, 0) },
        0,
        "the forked child is alive"
    );
    let result = then();
    // SAFETY: SIGKILL to the grandchild this test made; it was reparented, so it is not reaped
    // here.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    result
}

/// A process that had the workspace open is killed while a child it forked has not reached its
/// `exec` yet (a hook being spawned when the leader dies): that child still holds copies of all
/// its descriptors, and the next opener must still get the workspace. It was refused with
/// "locked by pid N" for a dead N while the lock was a `flock`.
#[test]
fn a_killed_opener_s_half_spawned_child_does_not_keep_the_workspace() {
    if let Some(dir) = std::env::var_os(LOCK_CHILD_ENV) {
        let _store = open(Path::new(&dir));
        fork_then_wait();
    }
    let dir = fresh();
    let reopened = kill_holder_whose_child_is_half_spawned(
        "a_killed_opener_s_half_spawned_child_does_not_keep_the_workspace",
        dir.path(),
        || Store::open(dir.path(), KvMachine::default(), Options::default()),
    );
    let store = reopened.expect("the workspace opens while the forked child lives");
    assert_eq!(store.applied(), 0);
}

/// The same for a backup's partial directory: a killed builder's half-spawned child does not
/// keep it, and the next backup into the same target removes it and goes on. It was refused
/// ("being written by another run") while its marker was a `flock`.
#[test]
fn a_killed_backup_s_half_spawned_child_does_not_keep_its_partial_directory() {
    if let Some(dir) = std::env::var_os(LOCK_CHILD_ENV) {
        let _partial =
            cairn_store::PartialDir::create(&Path::new(&dir).join("out"), "backup").unwrap();
        fork_then_wait();
    }
    let dir = fresh();
    let target = dir.path().join("out");
    let again = kill_holder_whose_child_is_half_spawned(
        "a_killed_backup_s_half_spawned_child_does_not_keep_its_partial_directory",
        dir.path(),
        || cairn_store::PartialDir::create(&target, "backup"),
    );
    let again = again.expect("the abandoned partial directory is taken over");
    again.commit().unwrap();
    assert!(target.is_dir());
}

/// The child's part: fork a child that only sleeps (frozen before an `exec`), say its pid, and
/// wait to be killed.
fn fork_then_wait() -> ! {
    // SAFETY: the forked child calls only async-signal-safe functions (sleep, _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls in the forked child.
        unsafe {
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork failed");
    println!("forked {pid}");
    std::thread::sleep(Duration::from_secs(30));
    std::process::exit(1);
}

#[test]
fn every_commit_reaches_the_applied_listeners_whoever_made_it() {
    let dir = fresh();
    let store = open(dir.path());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    store.on_applied({
        let seen = Arc::clone(&seen);
        move |offset| seen.lock().unwrap().push(offset)
    });
    set(&store, "a", "1");
    set(&store, "b", "2");
    assert_eq!(*seen.lock().unwrap(), [1, 2], "commands");
    // Entries written elsewhere (a leader's, on a mirror) are announced too.
    let entries = store.read().unwrap().read_log(1, 10).unwrap();
    let other = fresh();
    let mirror = open(other.path());
    let mirrored = Arc::new(std::sync::Mutex::new(Vec::new()));
    mirror.on_applied({
        let mirrored = Arc::clone(&mirrored);
        move |offset| mirrored.lock().unwrap().push(offset)
    });
    mirror.submit_entries(entries).wait().unwrap();
    assert_eq!(*mirrored.lock().unwrap(), [2], "one commit of two entries");
    // A rejected command commits nothing and announces nothing.
    let rejected = store.execute(
        meta(1),
        KvCommand::Delete {
            key: "missing".into(),
        },
    );
    assert!(rejected.is_err());
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
}

#[test]
fn entries_submitted_behind_a_refused_batch_without_waiting_are_refused_too() {
    // A mirror keeps several batches in flight; one that continues a batch that failed must
    // never commit, whether or not its ticket was waited for first.
    let dir = fresh();
    let store = open(dir.path());
    for i in 0..6 {
        set(&store, &format!("k{i}"), "v");
    }
    let entries = store.read().unwrap().read_log(1, 10).unwrap();
    assert_eq!(entries.len(), 6);
    let other = fresh();
    let mirror = open(other.path());
    let mut bad = entries[2..4].to_vec();
    bad[1].payload.push(0);
    let first = mirror.submit_entries(entries[..2].to_vec());
    let second = mirror.submit_entries(bad);
    let third = mirror.submit_entries(entries[4..].to_vec());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(first.is_answered() && second.is_answered() && third.is_answered()) {
        assert!(std::time::Instant::now() < deadline, "the writer answers");
        std::thread::sleep(Duration::from_millis(1));
    }
    first.wait().unwrap();
    assert!(second.wait().is_err(), "a batch with a bad hash");
    assert!(third.wait().is_err(), "a batch continuing the refused one");
    assert_eq!(mirror.applied(), 2);
    assert_eq!(mirror.read().unwrap().head(), entries[1].head());
    // From the real head, the leader's entries apply.
    mirror.submit_entries(entries[2..].to_vec()).wait().unwrap();
    assert_eq!(mirror.read().unwrap().head(), entries[5].head());
}
