//! Test support shared by every crate that holds a log: the [`LogStore`] conformance suite,
//! deterministic entry builders, and the bodies of the fuzz targets (so the fuzzer and the
//! plain seed-corpus test run exactly the same code).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::chain::{ChainCursor, Head};
use crate::codec;
use crate::entry::{EntryDraft, Hash, Meta, StoredEntry};
use crate::error::{ChainError, LogError};
use crate::frame;
use crate::state::{Space, StateError, StateRead, StateWrite};
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

/// A projection in memory: the simplest `StateRead` + `StateWrite`, a `BTreeMap` over
/// `(space, key)`, for tests of code that folds or decides over state (the kernel's) without a
/// store. It passes [`state_suite`]; two of them compare equal when they hold the same keys
/// and values, which is what a replay test checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemState(BTreeMap<(Space, Vec<u8>), Vec<u8>>);

impl MemState {
    /// A state holding `pairs`.
    pub fn from_pairs(pairs: &[Pair]) -> Self {
        let mut s = MemState::default();
        for (space, k, v) in pairs {
            s.put(*space, k, v);
        }
        s
    }

    /// Every `(space, key, value)`, in space then key order (the digest's order).
    pub fn iter(&self) -> impl Iterator<Item = (Space, &[u8], &[u8])> + '_ {
        self.0
            .iter()
            .map(|((s, k), v)| (*s, k.as_slice(), v.as_slice()))
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl StateRead for MemState {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.0.get(&(space, key.to_vec())).cloned())
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.scan_prefix_from(space, prefix, prefix, visit)
    }

    fn scan_prefix_from(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let start = prefix.max(from).to_vec();
        for ((s, k), v) in self.0.range((space, start)..) {
            if *s != space || !k.starts_with(prefix) || !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

impl StateWrite for MemState {
    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.0.insert((space, key.to_vec()), value.to_vec());
    }

    fn delete(&mut self, space: Space, key: &[u8]) {
        self.0.remove(&(space, key.to_vec()));
    }
}

// --- the state conformance suite ---------------------------------------------------------

/// One `(space, key, value)` of a state's contents.
pub type Pair = (Space, Vec<u8>, Vec<u8>);

/// The contents every case of the state suites starts from: keys that share prefixes, sit
/// right after a prefix's end, hold empty values or `0xff` bytes, in both spaces.
pub fn state_seed() -> Vec<Pair> {
    let pairs: [(Space, &[u8], &[u8]); 12] = [
        (Space::State, b"t/a", b"1"),
        (Space::State, b"t/b", b""),
        (Space::State, b"t/b/c", b"3"),
        (Space::State, b"t/d", b"4"),
        (Space::State, b"t", b"bare"),
        (Space::State, b"t0", b"after"),
        (Space::State, b"u/a", b"5"),
        (Space::State, b"\xff", b"ff"),
        (Space::State, b"\xff\x00", b"ff00"),
        (Space::State, b"\xff\xff", b"ffff"),
        (Space::Drive, b"t/a", b"drive-a"),
        (Space::Drive, b"t/c", b"drive-c"),
    ];
    pairs
        .iter()
        .map(|(s, k, v)| (*s, k.to_vec(), v.to_vec()))
        .collect()
}

type Scanned = Vec<(Vec<u8>, Vec<u8>)>;

/// `scan_prefix` of `state`, stopping after `stop_after` visits.
fn scanned(state: &dyn StateRead, space: Space, prefix: &[u8], stop_after: usize) -> Scanned {
    let mut out = Vec::new();
    state
        .scan_prefix(space, prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < stop_after
        })
        .expect("a scan of a healthy state succeeds");
    out
}

/// Checks `state` against `model` (a [`MemState`] with the contents it should have): every
/// key's `get`, and scans of every prefix of every key (plus the empty one), whole and
/// stopped after each visit. Panics naming `case` and what differs.
pub fn check_state_matches(case: &str, state: &dyn StateRead, model: &MemState) {
    let mut prefixes: BTreeSet<Vec<u8>> = BTreeSet::from([Vec::new(), b"t/".to_vec()]);
    for (_, k, _) in model.iter() {
        for n in 0..=k.len() {
            prefixes.insert(k[..n].to_vec());
        }
    }
    for space in Space::ALL {
        for (s, k, v) in model.iter().filter(|(s, _, _)| *s == space) {
            assert_eq!(
                state
                    .get(s, k)
                    .expect("a get of a healthy state succeeds")
                    .as_deref(),
                Some(v),
                "{case}: get({s}, {k:?})"
            );
        }
        for missing in [&b"t/c"[..], b"t/", b"v", b"\xfe", b"\xff\x01"] {
            if model.get(space, missing).unwrap().is_none() {
                assert_eq!(
                    state.get(space, missing).unwrap(),
                    None,
                    "{case}: get({space}, {missing:?}) of a missing key"
                );
            }
        }
        for prefix in &prefixes {
            let expect = scanned(model, space, prefix, usize::MAX);
            assert_eq!(
                scanned(state, space, prefix, usize::MAX),
                expect,
                "{case}: scan_prefix({space}, {prefix:?}) visits exactly the keys with the \
                 prefix, in key order"
            );
            for stop in 1..expect.len() {
                assert_eq!(
                    scanned(state, space, prefix, stop),
                    expect[..stop],
                    "{case}: scan_prefix({space}, {prefix:?}) stops when the visitor says so"
                );
            }
            // From every key, just after it, and from below and past the prefix.
            let mut starts: Vec<Vec<u8>> = vec![Vec::new(), prefix.clone(), vec![0xff; 3]];
            for (k, _) in &expect {
                starts.push(k.clone());
                let mut after = k.clone();
                after.push(0);
                starts.push(after);
            }
            for from in &starts {
                let want: Vec<_> = expect
                    .iter()
                    .filter(|(k, _)| k.as_slice() >= from.as_slice())
                    .cloned()
                    .collect();
                let mut got = Vec::new();
                state
                    .scan_prefix_from(space, prefix, from, &mut |k, v| {
                        got.push((k.to_vec(), v.to_vec()));
                        true
                    })
                    .expect("a scan of a healthy state succeeds");
                assert_eq!(
                    got, want,
                    "{case}: scan_prefix_from({space}, {prefix:?}, {from:?}) visits the keys \
                     with the prefix from `from` on"
                );
                if want.len() > 1 {
                    let mut first = Vec::new();
                    state
                        .scan_prefix_from(space, prefix, from, &mut |k, v| {
                            first.push((k.to_vec(), v.to_vec()));
                            false
                        })
                        .unwrap();
                    assert_eq!(first, want[..1], "{case}: scan_prefix_from stops when told");
                }
            }
        }
    }
}

/// The [`StateRead`] conformance suite. `with(contents, check)` builds a state holding exactly
/// `contents` and calls `check` on it (so a state may borrow what it is built on). Panics,
/// naming the broken rule, on the first failure.
pub fn state_read_suite(mut with: impl FnMut(&[Pair], &mut dyn FnMut(&dyn StateRead))) {
    let seed = state_seed();
    for (case, contents) in [("empty", Vec::new()), ("seeded", seed)] {
        let model = MemState::from_pairs(&contents);
        with(&contents, &mut |state| {
            check_state_matches(case, state, &model)
        });
    }
}

/// One batch of writes of the write suite, applied in order to the state under test and to a
/// [`MemState`] model, then compared.
type Writes = &'static [(Space, &'static [u8], Option<&'static [u8]>)];

const WRITE_CASES: &[(&str, Writes)] = &[
    (
        "puts of new keys sort among the old ones",
        &[
            (Space::State, b"t/", Some(b"prefix itself")),
            (Space::State, b"t/aa", Some(b"between")),
            (Space::State, b"t/e", Some(b"last")),
            (Space::State, b"s", Some(b"before")),
            (Space::Drive, b"t/b", Some(b"other space")),
        ],
    ),
    (
        "an overwrite replaces the value, an empty one too",
        &[
            (Space::State, b"t/a", Some(b"new")),
            (Space::State, b"t/b", Some(b"no longer empty")),
            (Space::State, b"t/d", Some(b"")),
            (Space::State, b"t/a", Some(b"newer")),
        ],
    ),
    (
        "a delete hides the key, a delete of a missing key does nothing",
        &[
            (Space::State, b"t/a", None),
            (Space::State, b"t/b/c", None),
            (Space::State, b"t/zz", None),
            (Space::Drive, b"t/c", None),
            (Space::State, b"\xff\x00", None),
        ],
    ),
    (
        "put, delete, put again: the last write wins",
        &[
            (Space::State, b"t/x", Some(b"1")),
            (Space::State, b"t/x", None),
            (Space::State, b"t/d", None),
            (Space::State, b"t/d", Some(b"back")),
            (Space::State, b"t/x", Some(b"2")),
            (Space::State, b"t/a", None),
            (Space::State, b"t/a", Some(b"again")),
        ],
    ),
    (
        "writes at the end of the keyspace",
        &[
            (Space::State, b"\xff\xff\xff", Some(b"max")),
            (Space::State, b"\xff", None),
            (Space::Drive, b"\xff", Some(b"drive ff")),
        ],
    ),
];

/// The [`StateWrite`] conformance suite: every rule of [`state_read_suite`], then writes over
/// the seeded contents, each checked with reads through the same handle (read your writes:
/// `get` and `scan_prefix` merge pending writes over what was there, in key order, deletes
/// hide keys, a visitor can stop on any of them). `with` is as for [`state_read_suite`].
pub fn state_suite(mut with: impl FnMut(&[Pair], &mut dyn FnMut(&mut dyn StateWrite))) {
    state_read_suite(|contents, check| with(contents, &mut |state| check(state)));
    let seed = state_seed();
    for (case, writes) in WRITE_CASES {
        let mut model = MemState::from_pairs(&seed);
        with(&seed, &mut |state| {
            for (i, (space, key, value)) in writes.iter().enumerate() {
                match value {
                    Some(v) => {
                        state.put(*space, key, v);
                        model.put(*space, key, v);
                    }
                    None => {
                        state.delete(*space, key);
                        model.delete(*space, key);
                    }
                }
                check_state_matches(&format!("{case} (after write {i})"), state, &model);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_state_passes_the_state_suite() {
        state_suite(|contents, check| check(&mut MemState::from_pairs(contents)));
    }

    /// A state whose scans ignore a visitor's stop and whose deletes are lost: the suite must
    /// notice both.
    struct Sloppy(MemState, bool);

    impl StateRead for Sloppy {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
            self.0.get(space, key)
        }
        fn scan_prefix(
            &self,
            space: Space,
            prefix: &[u8],
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StateError> {
            let stops = self.1;
            self.0
                .scan_prefix(space, prefix, &mut |k, v| visit(k, v) || !stops)
        }
    }

    impl StateWrite for Sloppy {
        fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
            self.0.put(space, key, value);
        }
        fn delete(&mut self, _: Space, _: &[u8]) {}
    }

    #[test]
    #[should_panic(expected = "stops when the visitor says so")]
    fn the_suite_notices_a_scan_that_does_not_stop() {
        state_read_suite(|contents, check| check(&Sloppy(MemState::from_pairs(contents), false)));
    }

    #[test]
    #[should_panic(expected = "a delete hides the key")]
    fn the_suite_notices_a_lost_delete() {
        state_suite(|contents, check| check(&mut Sloppy(MemState::from_pairs(contents), true)));
    }
}
