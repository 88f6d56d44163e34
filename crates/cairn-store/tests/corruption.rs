//! Corruption underneath the store: a flipped byte in a stored entry, a missing entry, meta
//! that contradicts the log. Verification names the offset; open refuses a bad head.

use std::path::Path;

use cairn_log::CorruptReason;
use cairn_store::layout::{self, CF_LOG, CF_META};
use cairn_store::testing::{meta, KvCommand, KvMachine};
use cairn_store::{open_raw_db, Options, Store, StoreError};

const ENTRIES: u64 = 20;

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Store::<KvMachine>::init(dir.path()).unwrap();
    let store = Store::open(dir.path(), KvMachine::default(), Options::default()).unwrap();
    for i in 0..ENTRIES {
        let key = format!("key-{i}");
        store
            .execute(
                meta(i),
                KvCommand::Set {
                    key,
                    value: vec![i as u8; 40],
                },
            )
            .unwrap();
    }
    dir
}

fn open(dir: &Path) -> Result<Store<KvMachine>, StoreError> {
    Store::open(dir, KvMachine::default(), Options::default())
}

/// Rewrites the stored bytes of `offset` through a raw RocksDB handle.
fn tamper(dir: &Path, offset: u64, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let db = open_raw_db(dir).unwrap();
    let cf = db.cf_handle(CF_LOG).unwrap();
    let original = db.get_cf(cf, layout::log_key(offset)).unwrap().unwrap();
    let mut bytes = original.clone();
    f(&mut bytes);
    db.put_cf(cf, layout::log_key(offset), &bytes).unwrap();
    original
}

/// Deletes the stored entry at `offset` through a raw RocksDB handle.
fn delete_entry(dir: &Path, offset: u64) {
    let db = open_raw_db(dir).unwrap();
    db.delete_cf(db.cf_handle(CF_LOG).unwrap(), layout::log_key(offset))
        .unwrap();
}

fn restore(dir: &Path, offset: u64, bytes: &[u8]) {
    let db = open_raw_db(dir).unwrap();
    db.put_cf(
        db.cf_handle(CF_LOG).unwrap(),
        layout::log_key(offset),
        bytes,
    )
    .unwrap();
}

fn verify_error(dir: &Path) -> StoreError {
    let store = open(dir).expect("a bad entry below the head does not stop open");
    let view = store.read().unwrap();
    view.verify(&mut |_| {}).unwrap_err()
}

#[test]
fn a_flipped_byte_anywhere_in_an_entry_is_named_by_verify() {
    let dir = workspace();
    let len = tamper(dir.path(), 7, |_| {}).len();
    for i in 0..len {
        let original = tamper(dir.path(), 7, |b| b[i] ^= 0x04);
        let err = verify_error(dir.path());
        assert!(
            matches!(err, StoreError::Corrupt { offset: 7, .. }),
            "flip at byte {i}: {err}"
        );
        assert!(err.to_string().contains("offset 7"), "{err}");
        restore(dir.path(), 7, &original);
    }
    open(dir.path())
        .unwrap()
        .read()
        .unwrap()
        .verify(&mut |_| {})
        .unwrap();
}

#[test]
fn reading_a_corrupt_range_fails_at_the_bad_offset() {
    let dir = workspace();
    tamper(dir.path(), 9, |b| {
        let n = b.len();
        b[n - 3] ^= 0xff;
    });
    let store = open(dir.path()).unwrap();
    let view = store.read().unwrap();
    assert_eq!(
        view.read_log(1, 8).unwrap().len(),
        8,
        "entries before it still read"
    );
    let err = view.read_log(5, 10).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 9, .. }),
        "{err}"
    );
}

#[test]
fn open_refuses_a_head_entry_that_fails_verification() {
    let dir = workspace();
    tamper(dir.path(), ENTRIES, |b| {
        let n = b.len();
        b[n / 2] ^= 0x01;
    });
    let err = open(dir.path()).err().expect("open refuses");
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                offset: ENTRIES,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("offset {ENTRIES}")),
        "{err}"
    );
    assert!(err.is_integrity());
}

#[test]
fn a_missing_entry_is_named() {
    let dir = workspace();
    delete_entry(dir.path(), 12);
    let err = verify_error(dir.path());
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                offset: 12,
                reason: CorruptReason::Missing
            }
        ),
        "{err}"
    );
}

#[test]
fn an_entry_under_the_wrong_key_is_named() {
    let dir = workspace();
    {
        let db = open_raw_db(dir.path()).unwrap();
        let cf = db.cf_handle(CF_LOG).unwrap();
        let five = db.get_cf(cf, layout::log_key(5)).unwrap().unwrap();
        db.put_cf(cf, layout::log_key(6), five).unwrap();
    }
    let err = verify_error(dir.path());
    assert!(
        matches!(err, StoreError::Corrupt { offset: 6, .. }),
        "{err}"
    );
}

#[test]
fn open_refuses_meta_that_contradicts_the_log() {
    let dir = workspace();
    {
        let db = open_raw_db(dir.path()).unwrap();
        let cf = db.cf_handle(CF_META).unwrap();
        db.put_cf(cf, layout::META_APPLIED, (ENTRIES - 1).to_be_bytes())
            .unwrap();
    }
    let err = open(dir.path()).err().expect("open refuses");
    assert!(matches!(err, StoreError::Inconsistent(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("the log ends at offset {ENTRIES}")),
        "{err}"
    );
}

#[test]
fn rebuild_stops_at_a_corrupted_entry_naming_it_and_is_redone_at_the_next_open() {
    // Enough entries that the rebuild's reader has handed over whole batches before the bad
    // one (it reads ahead in batches of 1024).
    let dir = tempfile::tempdir().unwrap();
    Store::<KvMachine>::init(dir.path()).unwrap();
    let store = open(dir.path()).unwrap();
    let tickets: Vec<_> = (0..3000u64)
        .map(|i| {
            store.submit(
                meta(i),
                KvCommand::Set {
                    key: format!("key-{}", i % 100),
                    value: vec![i as u8; 16],
                },
            )
        })
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
    let digest = store.read().unwrap().digest().unwrap();
    drop(store);
    let original = tamper(dir.path(), 2500, |b| {
        let i = b.len() - 3;
        b[i] ^= 0x10;
    });
    let err = Store::rebuild(dir.path(), &KvMachine::default(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 2500, .. }),
        "rebuild names the bad entry: {err}"
    );
    // The projection was dropped half-way: the next open must rebuild again, and with the
    // entry restored that rebuild gives the digest the workspace had.
    restore(dir.path(), 2500, &original);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.read().unwrap().digest().unwrap(), digest);
}

#[test]
fn a_raw_log_read_gives_the_stored_bytes_and_names_a_missing_entry() {
    // The leader streams these bytes to its mirrors without decoding them: they must be the
    // stored ones, dense, and a gap must be named, not skipped.
    let dir = workspace();
    let store = open(dir.path()).unwrap();
    let view = store.read().unwrap();
    let entries = view.read_log(1, ENTRIES as usize).unwrap();
    let mut raw = Vec::new();
    view.visit_log_raw(3, |offset, bytes| {
        raw.push((offset, bytes.to_vec()));
        raw.len() < 4
    })
    .unwrap();
    assert_eq!(raw.len(), 4, "the visit stops when asked");
    for ((offset, bytes), e) in raw.iter().zip(&entries[2..]) {
        assert_eq!(*offset, e.offset);
        assert_eq!(&bytes[..], &cairn_log::codec::encode(e)[..]);
    }
    let mut all = 0;
    view.visit_log_raw(1, |_, _| {
        all += 1;
        true
    })
    .unwrap();
    assert_eq!(all, ENTRIES);
    drop((view, store));
    delete_entry(dir.path(), 12);
    let store = open(dir.path()).unwrap();
    let err = store
        .read()
        .unwrap()
        .visit_log_raw(10, |_, _| true)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                offset: 12,
                reason: CorruptReason::Missing
            }
        ),
        "{err}"
    );
}
