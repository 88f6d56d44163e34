//! Damage in RocksDB's write-ahead log: a flipped byte before intact commits refuses the open
//! (naming the file and byte) until the loss is accepted; a torn tail opens cleanly; recycled
//! WAL files never look damaged.

use std::path::{Path, PathBuf};

use cairn_store::testing::{meta, KvCommand, KvMachine};
use cairn_store::{layout, Options, Store, StoreError, WAL_DAMAGE_FILE};

fn open(dir: &Path) -> Result<Store<KvMachine>, StoreError> {
    Store::open(dir, KvMachine::default(), Options::default())
}

/// A workspace with `n` commits of `value_bytes` each, closed; they are all in the WAL.
fn workspace(n: u64, value_bytes: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Store::<KvMachine>::init(dir.path()).unwrap();
    write(dir.path(), 0..n, value_bytes);
    dir
}

fn write(dir: &Path, keys: std::ops::Range<u64>, value_bytes: usize) {
    let store = open(dir).unwrap();
    for i in keys {
        let command = KvCommand::Set {
            key: format!("key-{i}"),
            value: vec![(i % 251) as u8; value_bytes],
        };
        store.execute(meta(i), command).unwrap();
    }
}

/// The WAL files of a workspace, largest first.
fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(layout::db_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    files
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn damage_of(result: Result<Store<KvMachine>, StoreError>) -> cairn_store::WalDamage {
    match result {
        Err(StoreError::WalDamaged(damage)) => *damage,
        Err(other) => panic!("expected a WAL damage, got {other}"),
        Ok(_) => panic!("expected a WAL damage, the workspace opened"),
    }
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_wal_refuses_every_open_until_the_loss_is_accepted() {
    let dir = workspace(100, 300);
    let wal = wal_files(dir.path()).remove(0);
    let len = std::fs::metadata(&wal).unwrap().len() as usize;
    flip(&wal, len / 2);
    let damaged = std::fs::read(&wal).unwrap();

    let error = open(dir.path()).err().expect("the open is refused");
    assert!(error.is_integrity(), "{error}");
    let message = error.to_string();
    let name = wal.file_name().unwrap().to_string_lossy().into_owned();
    assert!(message.contains(&name), "{message}");
    assert!(
        message.contains("cairn recover --accept-wal-loss"),
        "{message}"
    );
    let damage = damage_of(Err(error));
    assert_eq!(damage.file, name);
    assert_eq!(damage.lost_through_offset, Some(100));
    assert!(damage.recovered_offset < 100, "{damage:?}");
    assert!(damage.lost_commits > 0);
    // The byte named is near the flip (the start of the record holding it).
    assert!(damage.byte as usize <= len / 2, "{damage:?}");
    let quarantine = dir.path().join(damage.quarantine.as_ref().unwrap());
    // RocksDB's open flushed what it recovered and deleted the file: the copy was taken
    // before.
    assert_eq!(
        std::fs::read(quarantine.join(&name)).unwrap(),
        damaged,
        "a copy of the damaged file is kept"
    );

    // The verdict is kept: RocksDB may have moved on, the workspace stays refused.
    assert!(dir.path().join(WAL_DAMAGE_FILE).exists());
    assert_eq!(damage_of(open(dir.path())), damage);
    assert!(matches!(
        Store::<KvMachine>::rebuild(dir.path(), &KvMachine::default(), &mut |_| {}),
        Err(StoreError::WalDamaged(_))
    ));

    let accepted = Store::<KvMachine>::accept_wal_loss(dir.path()).unwrap();
    assert_eq!(accepted, damage);
    assert!(matches!(
        Store::<KvMachine>::accept_wal_loss(dir.path()),
        Err(StoreError::NothingToAccept { .. })
    ));
    {
        let store = open(dir.path()).unwrap();
        assert_eq!(store.applied(), damage.recovered_offset);
        assert_eq!(store.pending_wal_loss().unwrap(), Some(damage.clone()));
        store.wal_loss_recorded().unwrap();
        assert_eq!(store.pending_wal_loss().unwrap(), None);
    }
    // Writing on reuses the lost offsets; nothing of the old commits comes back.
    write(dir.path(), 1000..1200, 300);
    let digest = {
        let store = open(dir.path()).unwrap();
        assert_eq!(store.applied(), damage.recovered_offset + 200);
        let view = store.read().unwrap();
        view.verify(&mut |_| {}).unwrap();
        view.digest().unwrap()
    };
    Store::rebuild(dir.path(), &KvMachine::default(), &mut |_| {}).unwrap();
    assert_eq!(
        open(dir.path()).unwrap().read().unwrap().digest().unwrap(),
        digest
    );
}

#[test]
fn a_torn_tail_opens_at_the_last_whole_commit() {
    let dir = workspace(50, 300);
    let wal = wal_files(dir.path()).remove(0);
    let len = std::fs::metadata(&wal).unwrap().len();
    // The last commit (about 400 bytes in the WAL) lost its end, as in a power cut.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.applied(), 49);
    store.read().unwrap().verify(&mut |_| {}).unwrap();
    assert!(!dir.path().join(WAL_DAMAGE_FILE).exists());
    assert!(!dir.path().join(cairn_store::QUARANTINE_DIR).exists());
}

#[test]
fn recycled_wal_files_never_look_damaged() {
    // About 10 memtables' worth of commits, over several opens: WAL files are flushed,
    // recycled and overwritten in place, leaving records of their earlier use behind.
    let dir = workspace(0, 0);
    for round in 0..5u64 {
        write(dir.path(), round * 400..(round + 1) * 400, 40_000);
        // Each open checked the files the last run left: the live one and those kept for
        // recycling (RocksDB deletes the obsolete ones only once it has opened).
        assert!(
            wal_files(dir.path()).len() > 1,
            "round {round}: WAL files are kept for recycling"
        );
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(store.applied(), 2000);
}
