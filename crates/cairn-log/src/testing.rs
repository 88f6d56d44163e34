//! Test support shared by every crate that holds a log: the [`LogStore`] conformance suite,
//! deterministic entry builders, and the bodies of the fuzz targets (so the fuzzer and the
//! plain seed-corpus test run exactly the same code).

use uuid::Uuid;

use crate::chain::{ChainCursor, Head};
use crate::codec;
use crate::entry::{EntryDraft, Hash, Meta, StoredEntry};
use crate::error::{ChainError, LogError};
use crate::frame;
use crate::store::LogStore;

/// A deterministic draft: the `i`-th test event, with a payload of `payload_len` bytes.
pub fn draft(i: u64, epoch: u64, payload_len: usize) -> EntryDraft {
    let payload = (0..payload_len)
        .map(|j| (i as usize).wrapping_mul(31).wrapping_add(j) as u8)
        .collect();
    EntryDraft {
        epoch,
        time_ms: 1_700_000_000_000 + i,
        meta: Meta {
            actor: "test".into(),
            change: i
                .is_multiple_of(3)
                .then(|| Uuid::from_u128(0xC0FFEE00 + i as u128)),
            command: Uuid::from_u128(i as u128),
            idempotency_key: i.is_multiple_of(5).then(|| format!("key-{i}")),
        },
        kind: "test.event.v1".into(),
        payload,
    }
}

/// `n` valid entries continuing the chain after `head`, in epoch `epoch`.
pub fn entries_after(head: Head, n: usize, epoch: u64) -> Vec<StoredEntry> {
    let mut out = Vec::with_capacity(n);
    let mut prev = head;
    for _ in 0..n {
        let offset = prev.offset + 1;
        let entry = draft(offset, epoch, 16 + (offset % 7) as usize)
            .seal(offset, prev.hash)
            .expect("test drafts are within limits");
        prev = entry.head();
        out.push(entry);
    }
    out
}

/// Runs the [`LogStore`] conformance suite. `make` returns a fresh, empty store each call.
/// Panics, naming the broken rule, on the first failure.
pub fn suite<S: LogStore>(mut make: impl FnMut() -> S) {
    empty_store(&make());
    append_and_read_back(&make());
    batches_and_ranges(&make());
    refuses_gap(&make());
    refuses_wrong_prev(&make());
    refuses_bad_hash(&make());
    refuses_epoch_regression(&make());
    refuses_whole_batch(&make());
    compacted_below_first(&make());
}

fn empty_store(s: &impl LogStore) {
    assert_eq!(
        s.head().unwrap(),
        Head::EMPTY,
        "an empty store has the empty head"
    );
    assert_eq!(
        s.first_retained().unwrap(),
        1,
        "nothing compacted: first retained is 1"
    );
    assert!(
        s.read(1, 10).unwrap().is_empty(),
        "an empty store reads nothing"
    );
    s.append(&[]).expect("an empty append is a no-op");
    assert_eq!(
        s.head().unwrap(),
        Head::EMPTY,
        "an empty append changes nothing"
    );
}

fn append_and_read_back(s: &impl LogStore) {
    let entries = entries_after(Head::EMPTY, 1, 1);
    s.append(&entries).unwrap();
    assert_eq!(
        s.head().unwrap(),
        entries[0].head(),
        "head is the appended entry"
    );
    assert_eq!(
        s.read(1, 10).unwrap(),
        entries,
        "read returns what was appended"
    );
}

fn batches_and_ranges(s: &impl LogStore) {
    let mut all = Vec::new();
    let mut head = Head::EMPTY;
    for (i, n) in [1usize, 7, 64, 3, 200].into_iter().enumerate() {
        let batch = entries_after(head, n, 1 + i as u64 / 2);
        s.append(&batch).unwrap();
        head = batch.last().unwrap().head();
        all.extend(batch);
        assert_eq!(s.head().unwrap(), head, "head follows every batch");
    }
    let total = all.len() as u64;
    assert_eq!(
        s.read(1, usize::MAX).unwrap(),
        all,
        "a full read returns every entry in order"
    );
    assert_eq!(
        s.read(10, 5).unwrap(),
        all[9..14],
        "a range read honours from and limit"
    );
    assert_eq!(
        s.read(total, 10).unwrap(),
        all[all.len() - 1..],
        "a read at the head returns it"
    );
    assert!(
        s.read(total + 1, 10).unwrap().is_empty(),
        "a read past the head is empty"
    );
    assert!(
        s.read(5, 0).unwrap().is_empty(),
        "a zero limit reads nothing"
    );
    let mut cursor = ChainCursor::new(Head::EMPTY);
    for e in s.read(1, usize::MAX).unwrap() {
        cursor
            .advance(&e)
            .expect("what a store returns is a valid chain");
    }
}

fn refuses_gap(s: &impl LogStore) {
    let first = entries_after(Head::EMPTY, 1, 1);
    s.append(&first).unwrap();
    let skipped = entries_after(first[0].head(), 2, 1);
    let err = s.append(&skipped[1..]).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Refused(ChainError::OffsetMismatch {
                expected: 2,
                found: 3
            })
        ),
        "a gap is refused naming both offsets, got {err:?}"
    );
    assert_eq!(
        s.head().unwrap(),
        first[0].head(),
        "a refused append writes nothing"
    );
    let again = entries_after(Head::EMPTY, 1, 1);
    let err = s.append(&again).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Refused(ChainError::OffsetMismatch {
                expected: 2,
                found: 1
            })
        ),
        "re-appending an existing offset is refused, got {err:?}"
    );
}

fn refuses_wrong_prev(s: &impl LogStore) {
    let first = entries_after(Head::EMPTY, 3, 1);
    s.append(&first).unwrap();
    let wrong_head = Head {
        hash: Hash([7; 32]),
        ..first[2].head()
    };
    let err = s.append(&entries_after(wrong_head, 1, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Refused(ChainError::PrevMismatch { offset: 4, .. })
        ),
        "a wrong prev is refused, got {err:?}"
    );
    assert_eq!(
        s.head().unwrap(),
        first[2].head(),
        "a refused append writes nothing"
    );
    assert!(
        s.read(4, 1).unwrap().is_empty(),
        "a refused entry cannot be read"
    );
}

fn refuses_bad_hash(s: &impl LogStore) {
    let mut batch = entries_after(Head::EMPTY, 2, 1);
    batch[0].payload.push(1);
    let err = s.append(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Refused(ChainError::HashMismatch { offset: 1, .. })
        ),
        "an entry whose contents do not match its hash is refused, got {err:?}"
    );
    assert_eq!(
        s.head().unwrap(),
        Head::EMPTY,
        "a refused append writes nothing"
    );
}

fn refuses_epoch_regression(s: &impl LogStore) {
    let first = entries_after(Head::EMPTY, 1, 5);
    s.append(&first).unwrap();
    let err = s.append(&entries_after(first[0].head(), 1, 4)).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Refused(ChainError::EpochRegressed { offset: 2, .. })
        ),
        "an entry from an older epoch is refused, got {err:?}"
    );
}

fn refuses_whole_batch(s: &impl LogStore) {
    let mut batch = entries_after(Head::EMPTY, 10, 1);
    batch[7].time_ms += 1;
    let err = s.append(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Refused(ChainError::HashMismatch { offset: 8, .. })
        ),
        "a bad entry late in a batch is refused, got {err:?}"
    );
    assert_eq!(
        s.head().unwrap(),
        Head::EMPTY,
        "no entry of a refused batch is written"
    );
    assert!(
        s.read(1, 10).unwrap().is_empty(),
        "no entry of a refused batch is readable"
    );
}

fn compacted_below_first(s: &impl LogStore) {
    let err = s.read(0, 1).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Compacted {
                requested: 0,
                first: 1
            }
        ),
        "offset 0 never exists, got {err:?}"
    );
}

/// Body of the `decode_entry` fuzz target: decoding arbitrary bytes returns an error or an
/// entry whose canonical encoding is exactly those bytes; it never panics.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(entry) = codec::decode(data) {
        assert_eq!(
            codec::encode(&entry),
            data,
            "decode accepted a non-canonical encoding"
        );
        let _ = entry.compute_hash();
    }
}

/// Body of the `verify_chain` fuzz target: arbitrary bytes read as a framed stream of entries
/// (the replication stream's shape) are checked link by link; every outcome is a value, never
/// a panic, and an accepted entry really continues the chain.
pub fn fuzz_chain(data: &[u8]) {
    let mut buf = data;
    let mut cursor = ChainCursor::new(Head::EMPTY);
    loop {
        let at = data.len() - buf.len();
        let frame = match frame::next_frame(&mut buf, at) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        let Ok(entry) = codec::decode(frame) else {
            return;
        };
        let before = cursor.head();
        match cursor.advance(&entry) {
            Ok(()) => {
                assert_eq!(
                    entry.offset,
                    before.offset + 1,
                    "accepted entry is the next one"
                );
                assert_eq!(entry.prev, before.hash, "accepted entry links to the head");
                assert_eq!(
                    entry.hash,
                    entry.compute_hash(),
                    "accepted entry hashes right"
                );
            }
            Err(_) => {
                assert_eq!(
                    cursor.head(),
                    before,
                    "a refused entry does not move the cursor"
                );
                return;
            }
        }
    }
}

/// A projection in memory: the simplest `StateRead` + `StateWrite`, for tests of code that
/// folds or decides over state (the kernel's) without a store.
#[derive(Debug, Default)]
pub struct MemState(std::collections::BTreeMap<(crate::Space, Vec<u8>), Vec<u8>>);

impl crate::StateRead for MemState {
    fn get(&self, space: crate::Space, key: &[u8]) -> Result<Option<Vec<u8>>, crate::StateError> {
        Ok(self.0.get(&(space, key.to_vec())).cloned())
    }

    fn scan_prefix(
        &self,
        space: crate::Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), crate::StateError> {
        for ((s, k), v) in self.0.range((space, prefix.to_vec())..) {
            if *s != space || !k.starts_with(prefix) || !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

impl crate::StateWrite for MemState {
    fn put(&mut self, space: crate::Space, key: &[u8], value: &[u8]) {
        self.0.insert((space, key.to_vec()), value.to_vec());
    }

    fn delete(&mut self, space: crate::Space, key: &[u8]) {
        self.0.remove(&(space, key.to_vec()));
    }
}
