//! A full disk degrades the store, it does not kill it: on a small tmpfs filled to the last
//! byte, commits fail with a clear error while reads go on and the store reports itself
//! degraded; once space comes back, commits resume without a reopen, and nothing acknowledged
//! is lost. Needs root (to mount the tmpfs): without it the tests are reported ignored, loudly,
//! and fail under `CI=true`, where they must run (`cairn_faultfs::harness`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_faultfs::harness::{self, Test};
use cairn_log::StateRead;
use cairn_store::testing::{kv_location, meta, KvCommand, KvMachine};
use cairn_store::{CommandError, Options, Store, StoreError, WriterHealth};

/// Size of the file system the workspace lives on.
const TMPFS_MB: u64 = 96;
/// How long commits may take to resume after space is freed (RocksDB's own recovery polls
/// free space every few seconds).
const RESUME_WITHIN: Duration = Duration::from_secs(60);

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_MB}m")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system with a file until a write fails; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // The last bytes: smaller writes until not even one byte fits.
    let mut small = 4096;
    while small > 0 {
        if file.write_all(&vec![0u8; small]).is_err() {
            small /= 2;
        }
    }
    path
}

fn set(
    store: &Store<KvMachine>,
    n: u64,
) -> Result<u64, CommandError<cairn_store::testing::KvRejection>> {
    let command = KvCommand::Set {
        key: format!("k{n}"),
        value: vec![(n % 251) as u8; 2000],
    };
    store.execute(meta(n), command).map(|c| c.offsets.start)
}

fn main() {
    harness::main_gated(
        "diskfull",
        &[
            Test {
                name: "a_full_disk_fails_commits_keeps_reads_and_recovers_by_itself",
                run: a_full_disk_fails_commits_keeps_reads_and_recovers_by_itself,
            },
            Test {
                name: "a_full_disk_still_opens_for_reading",
                run: a_full_disk_still_opens_for_reading,
            },
        ],
        "a tmpfs mount (root)",
        || Tmpfs::mount().map(drop),
    )
}

fn a_full_disk_fails_commits_keeps_reads_and_recovers_by_itself() {
    let fs = Tmpfs::mount().expect("the harness's gate mounted one");
    let data = fs.path().join("ws");
    Store::<KvMachine>::init(&data).unwrap();
    let store = Store::open(&data, KvMachine::default(), Options::default()).unwrap();
    let mut acked = Vec::new();
    let mut n = 0u64;
    for _ in 0..200 {
        acked.push((n, set(&store, n).unwrap()));
        n += 1;
    }
    assert_eq!(store.health(), WriterHealth::Ok);

    let filler = fill(fs.path());
    // Commits fail (possibly after a few that still fit) with an error that says why.
    let mut failure = None;
    for _ in 0..10_000 {
        match set(&store, n) {
            Ok(offset) => acked.push((n, offset)),
            Err(CommandError::Store(e)) => {
                failure = Some(e);
                break;
            }
            Err(other) => panic!("{other:?}"),
        }
        n += 1;
    }
    let failure = failure.expect("a commit fails on the full disk");
    assert!(
        matches!(failure, StoreError::WriteFailed { .. }),
        "{failure}"
    );
    assert!(failure.to_string().contains("No space left"), "{failure}");
    n += 1;
    // The writer is degraded, not stopped: later commits fail the same way, quickly.
    for _ in 0..3 {
        match set(&store, n) {
            Err(CommandError::Store(StoreError::WriteFailed { .. })) => {}
            other => panic!("expected a failed write, got {other:?}"),
        }
        n += 1;
    }
    match store.health() {
        WriterHealth::Degraded { reason, .. } => {
            assert!(reason.contains("No space left"), "{reason}")
        }
        other => panic!("expected a degraded writer, got {other:?}"),
    }
    // Reads go on.
    {
        let view = store.read().unwrap();
        let (space, key) = kv_location("k0");
        assert!(view.get(space, &key).unwrap().is_some());
        view.verify(&mut |_| {}).unwrap();
    }

    // Space comes back: commits resume by themselves.
    std::fs::remove_file(filler).unwrap();
    let started = Instant::now();
    loop {
        match set(&store, n) {
            Ok(offset) => {
                acked.push((n, offset));
                break;
            }
            Err(CommandError::Store(StoreError::WriteFailed { .. })) => {}
            Err(other) => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < RESUME_WITHIN,
            "commits did not resume within {RESUME_WITHIN:?} of freeing space"
        );
        std::thread::sleep(Duration::from_millis(200));
        n += 1;
    }
    n += 1;
    assert_eq!(store.health(), WriterHealth::Ok);
    for _ in 0..50 {
        acked.push((n, set(&store, n).unwrap()));
        n += 1;
    }
    drop(store);

    // Nothing acknowledged was lost; the log and the state agree.
    let store = Store::open(&data, KvMachine::default(), Options::default()).unwrap();
    let digest = {
        let view = store.read().unwrap();
        view.verify(&mut |_| {}).unwrap();
        for (key, offset) in &acked {
            assert!(view.applied() >= *offset);
            let (space, state_key) = kv_location(&format!("k{key}"));
            assert!(
                view.get(space, &state_key).unwrap().is_some(),
                "acknowledged key k{key} (offset {offset}) is there"
            );
        }
        view.digest().unwrap()
    };
    drop(store);
    Store::rebuild(&data, &KvMachine::default(), &mut |_| {}).unwrap();
    let store = Store::open(&data, KvMachine::default(), Options::default()).unwrap();
    assert_eq!(store.read().unwrap().digest().unwrap(), digest);
}

fn a_full_disk_still_opens_for_reading() {
    let fs = Tmpfs::mount().expect("the harness's gate mounted one");
    let data = fs.path().join("ws");
    Store::<KvMachine>::init(&data).unwrap();
    {
        let store = Store::open(&data, KvMachine::default(), Options::default()).unwrap();
        for n in 0..100 {
            set(&store, n).unwrap();
        }
    }
    let _filler = fill(fs.path());
    let store = Store::open_read_only(&data, KvMachine::default()).unwrap();
    let view = store.read().unwrap();
    assert_eq!(view.applied(), 100);
    let (space, key) = kv_location("k99");
    assert!(view.get(space, &key).unwrap().is_some());
    // A read-only store refuses commands without touching the disk.
    match set(&store, 1000) {
        Err(CommandError::Store(StoreError::ReadOnly)) => {}
        other => panic!("expected a read-only refusal, got {other:?}"),
    }
}
