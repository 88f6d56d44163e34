//! The batch being built: state writes not yet committed, layered over the committed state, so
//! each command in a group commit is decided against everything before it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use cairn_log::{Space, StateError, StateRead, StateWrite};

use crate::base::Base;

/// Pending writes over committed state. `None` marks a delete.
pub(crate) struct Overlay<'a> {
    base: Base<'a>,
    /// Committed values read before (the writer's; `None` for other users).
    cache: Option<&'a RefCell<ReadCache>>,
    writes: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
    /// Bytes of keys and values pending, for the batch size limit.
    bytes: usize,
}

/// Most bytes of keys and values the writer's [`ReadCache`] holds.
pub const READ_CACHE_BYTES_MAX: usize = 8 << 20;
/// Most keys the writer's [`ReadCache`] holds; its table is made for this many at open, so it
/// does not grow on the writer's path (at most its index is rebuilt once in a while, after
/// many evictions, which costs well under a millisecond).
pub const READ_CACHE_ENTRIES_MAX: usize = 16 << 10;
/// Largest key and value the writer's [`ReadCache`] keeps together (a larger one is read from
/// RocksDB each time rather than evict a large part of the cache).
pub const READ_CACHE_VALUE_BYTES_MAX: usize = 256 << 10;

type CacheKey = (Space, Vec<u8>);

/// A cached value and whether it was read since the clock hand last passed it.
struct Cached {
    value: Option<Vec<u8>>,
    read: std::cell::Cell<bool>,
}

/// Committed state the writer has read, so that commands about the same entities (a package's
/// status, a feature) do not go to RocksDB each time. Only the writer commits, and it updates
/// every cached key it commits, so a cached value is always the committed one.
///
/// Bounded by [`READ_CACHE_ENTRIES_MAX`] keys and [`READ_CACHE_BYTES_MAX`] bytes. When full it
/// evicts with a clock (second chance): a key read since the hand last passed it is skipped
/// once, so the keys commands read again and again stay while the keys a bulk load reads once
/// go. Eviction is one entry at a time and the entries never outgrow the room made at
/// creation: starting over, or rehashing into a bigger table, took the writer tens of
/// milliseconds once the cache held a bulk load's hundred thousand keys.
#[derive(Default)]
pub(crate) struct ReadCache {
    values: indexmap::IndexMap<CacheKey, Cached>,
    /// The clock hand: the index the next eviction looks at first.
    hand: usize,
    bytes: usize,
}

fn cached_size(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
}

impl ReadCache {
    /// An empty cache with its table made for [`READ_CACHE_ENTRIES_MAX`] keys.
    pub fn new() -> Self {
        Self {
            values: indexmap::IndexMap::with_capacity(READ_CACHE_ENTRIES_MAX),
            hand: 0,
            bytes: 0,
        }
    }

    fn get(&self, space: Space, key: &[u8]) -> Option<Option<Vec<u8>>> {
        // The borrowed lookup needs the owned key type; the allocation is small next to a
        // RocksDB read.
        let cached = self.values.get(&(space, key.to_vec()))?;
        cached.read.set(true);
        Some(cached.value.clone())
    }

    fn insert(&mut self, space: Space, key: &[u8], value: Option<Vec<u8>>) {
        let size = cached_size(key, &value);
        let key = (space, key.to_vec());
        if let Some(old) = self.values.swap_remove(&key) {
            self.bytes -= cached_size(&key.1, &old.value);
        }
        if size > READ_CACHE_VALUE_BYTES_MAX {
            return;
        }
        while !self.values.is_empty()
            && (self.values.len() >= READ_CACHE_ENTRIES_MAX
                || self.bytes + size > READ_CACHE_BYTES_MAX)
        {
            self.evict_one();
        }
        self.bytes += size;
        self.values.insert(
            key,
            Cached {
                value,
                read: std::cell::Cell::new(false),
            },
        );
    }

    /// Evicts the first entry at or after the hand that was not read since the hand last
    /// passed it (at most one sweep: the sweep clears the marks it passes).
    fn evict_one(&mut self) {
        loop {
            if self.hand >= self.values.len() {
                self.hand = 0;
            }
            let Some((_, cached)) = self.values.get_index(self.hand) else {
                return;
            };
            if cached.read.replace(false) {
                self.hand += 1;
                continue;
            }
            // The last entry (the newest) moves into the hand's place; the hand moves on, so
            // that entry is looked at when the hand comes round, like every other.
            if let Some((key, old)) = self.values.swap_remove_index(self.hand) {
                self.bytes -= cached_size(&key.1, &old.value);
            }
            self.hand += 1;
            return;
        }
    }

    /// Records committed writes: a cached key takes its new value (others are not added).
    pub fn committed(&mut self, writes: &BTreeMap<CacheKey, Option<Vec<u8>>>) {
        for (k, v) in writes {
            let Some((index, _, slot)) = self.values.get_full_mut(k) else {
                continue;
            };
            self.bytes -= cached_size(&k.1, &slot.value);
            let new = cached_size(&k.1, v);
            if new <= READ_CACHE_VALUE_BYTES_MAX {
                self.bytes += new;
                slot.value.clone_from(v);
            } else {
                self.values.swap_remove_index(index);
            }
        }
        // Grown values count against the limit too.
        while self.bytes > READ_CACHE_BYTES_MAX && !self.values.is_empty() {
            self.evict_one();
        }
    }

    /// Forgets everything (after a failed write, whose effect on RocksDB is unknown).
    pub fn clear(&mut self) {
        self.values.clear();
        self.hand = 0;
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.values.len()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.values.capacity()
    }
}

impl<'a> Overlay<'a> {
    pub fn new(base: Base<'a>) -> Self {
        Self {
            base,
            cache: None,
            writes: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// An overlay whose reads of committed state go through (and fill) `cache`.
    pub fn cached(base: Base<'a>, cache: &'a RefCell<ReadCache>) -> Self {
        Self {
            cache: Some(cache),
            ..Self::new(base)
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Tells the read cache that `writes` are committed.
    pub fn committed(&self, writes: &BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>) {
        if let Some(cache) = self.cache {
            cache.borrow_mut().committed(writes);
        }
    }

    /// Empties the read cache.
    pub fn forget_cache(&self) {
        if let Some(cache) = self.cache {
            cache.borrow_mut().clear();
        }
    }

    /// Takes the pending writes, in key order, leaving the overlay empty.
    pub fn drain(&mut self) -> BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>> {
        self.bytes = 0;
        std::mem::take(&mut self.writes)
    }
}

impl StateRead for Overlay<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        // Avoids allocating a key for the lookup in the common case of an empty overlay.
        if !self.writes.is_empty() {
            if let Some(v) = self.writes.get(&(space, key.to_vec())) {
                return Ok(v.clone());
            }
        }
        let Some(cache) = self.cache else {
            return self.base.get(space, key);
        };
        if let Some(v) = cache.borrow().get(space, key) {
            return Ok(v);
        }
        let v = self.base.get(space, key)?;
        cache.borrow_mut().insert(space, key, v.clone());
        Ok(v)
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
        let mut pending = self
            .writes
            .range((space, prefix.max(from).to_vec())..)
            .take_while(|((s, k), _)| *s == space && k.starts_with(prefix))
            .peekable();
        let mut go_on = true;
        self.base
            .scan_prefix_from(space, prefix, from, &mut |key, value| {
                // Emit pending writes that sort before this committed key.
                while let Some(((_, pk), pv)) = pending.peek() {
                    if pk.as_slice() >= key {
                        break;
                    }
                    if let Some(pv) = pv {
                        if !visit(pk, pv) {
                            go_on = false;
                            return false;
                        }
                    }
                    pending.next();
                }
                match pending.peek() {
                    Some(((_, pk), _)) if pk.as_slice() == key => {
                        let (_, pv) = pending.next().expect("just peeked");
                        if let Some(pv) = pv {
                            go_on = visit(key, pv);
                        }
                    }
                    _ => go_on = visit(key, value),
                }
                go_on
            })?;
        if go_on {
            for ((_, pk), pv) in pending {
                if let Some(pv) = pv {
                    if !visit(pk, pv) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

impl StateWrite for Overlay<'_> {
    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.bytes += key.len() + value.len();
        self.writes
            .insert((space, key.to_vec()), Some(value.to_vec()));
    }

    fn delete(&mut self, space: Space, key: &[u8]) {
        self.bytes += key.len();
        self.writes.insert((space, key.to_vec()), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::KvMachine;

    fn scan(state: &dyn StateRead, prefix: &[u8], stop_after: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        state
            .scan_prefix(Space::State, prefix, &mut |k, v| {
                out.push((
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ));
                out.len() < stop_after
            })
            .unwrap();
        out
    }

    /// A fresh store whose database holds `contents` in its projection's column families.
    fn committed(contents: &[cairn_log::testing::Pair]) -> (tempfile::TempDir, rocksdb::DB) {
        let dir = tempfile::tempdir().unwrap();
        crate::Store::<KvMachine>::init(dir.path()).unwrap();
        let db = crate::open_raw_db(dir.path()).unwrap();
        for (space, k, v) in contents {
            db.put_cf(db.cf_handle(space.name()).unwrap(), k, v)
                .unwrap();
        }
        (dir, db)
    }

    #[test]
    fn an_overlay_over_committed_state_passes_the_state_suite() {
        cairn_log::testing::state_suite(|contents, check| {
            let (_dir, db) = committed(contents);
            check(&mut Overlay::new(Base {
                db: &db,
                snap: None,
            }));
        });
    }

    #[test]
    fn an_overlay_through_the_writers_read_cache_passes_the_state_suite() {
        cairn_log::testing::state_suite(|contents, check| {
            let (_dir, db) = committed(contents);
            let cache = RefCell::new(ReadCache::default());
            // Warm the cache with every committed key (and some missing ones), as the writer's
            // earlier commands would have.
            let warm = Overlay::cached(
                Base {
                    db: &db,
                    snap: None,
                },
                &cache,
            );
            for (space, k, _) in contents {
                warm.get(*space, k).unwrap();
                warm.get(*space, b"t/c").unwrap();
            }
            check(&mut Overlay::cached(
                Base {
                    db: &db,
                    snap: None,
                },
                &cache,
            ));
        });
    }

    #[test]
    fn an_overlay_holding_everything_as_pending_writes_passes_the_state_suite() {
        cairn_log::testing::state_suite(|contents, check| {
            let (_dir, db) = committed(&[]);
            let mut o = Overlay::new(Base {
                db: &db,
                snap: None,
            });
            for (space, k, v) in contents {
                o.put(*space, k, v);
            }
            check(&mut o);
        });
    }

    #[test]
    fn scans_merge_pending_writes_over_committed_state_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        crate::Store::<KvMachine>::init(dir.path()).unwrap();
        let db = crate::open_raw_db(dir.path()).unwrap();
        let cf = db.cf_handle("state").unwrap();
        for k in ["t/b", "t/d", "t/f", "u/a"] {
            db.put_cf(cf, k, format!("db-{k}")).unwrap();
        }
        let mut o = Overlay::new(Base {
            db: &db,
            snap: None,
        });
        o.put(Space::State, b"t/a", b"new-a");
        o.put(Space::State, b"t/d", b"new-d");
        o.delete(Space::State, b"t/f");
        o.put(Space::State, b"t/g", b"new-g");
        o.put(Space::Drive, b"t/c", b"other space");
        let all = scan(&o, b"t/", usize::MAX);
        let expect = [
            ("t/a", "new-a"),
            ("t/b", "db-t/b"),
            ("t/d", "new-d"),
            ("t/g", "new-g"),
        ];
        let expect: Vec<_> = expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(all, expect);
        assert_eq!(
            scan(&o, b"t/", 2),
            expect[..2],
            "a visitor can stop the scan"
        );
        assert_eq!(
            scan(&o, b"t/", 3),
            expect[..3],
            "stopping on a replaced key works too"
        );
        assert_eq!(
            o.get(Space::State, b"t/f").unwrap(),
            None,
            "a pending delete hides the key"
        );
        assert_eq!(
            o.get(Space::State, b"u/a").unwrap().as_deref(),
            Some(&b"db-u/a"[..])
        );
        assert_eq!(
            o.get(Space::Drive, b"t/c").unwrap().as_deref(),
            Some(&b"other space"[..])
        );
    }

    #[test]
    fn the_read_cache_stays_under_its_limit_and_follows_commits() {
        let mut cache = ReadCache::new();
        cache.insert(Space::State, b"a", Some(vec![1; 10]));
        cache.insert(Space::State, b"b", None);
        assert_eq!(cache.bytes, 1 + 10 + 1);
        let mut writes = BTreeMap::new();
        writes.insert((Space::State, b"a".to_vec()), None);
        writes.insert((Space::State, b"b".to_vec()), Some(vec![2; 4]));
        writes.insert((Space::State, b"c".to_vec()), Some(vec![3; 4]));
        cache.committed(&writes);
        assert_eq!(cache.get(Space::State, b"a"), Some(None));
        assert_eq!(cache.get(Space::State, b"b"), Some(Some(vec![2; 4])));
        assert_eq!(cache.get(Space::State, b"c"), None, "commits add no keys");
        assert_eq!(cache.bytes, 1 + 1 + 4);
        let big = vec![0; READ_CACHE_VALUE_BYTES_MAX - 16];
        for k in 0..(READ_CACHE_BYTES_MAX / READ_CACHE_VALUE_BYTES_MAX + 8) {
            cache.insert(
                Space::State,
                format!("big{k}").as_bytes(),
                Some(big.clone()),
            );
            assert!(
                cache.bytes <= READ_CACHE_BYTES_MAX,
                "at {k}: {}",
                cache.bytes
            );
        }
        cache.insert(
            Space::State,
            b"huge",
            Some(vec![0; READ_CACHE_VALUE_BYTES_MAX + 1]),
        );
        assert_eq!(cache.get(Space::State, b"huge"), None, "too big to keep");
        let mut grown = BTreeMap::new();
        grown.insert(
            (Space::State, b"big0".to_vec()),
            Some(vec![0; READ_CACHE_BYTES_MAX]),
        );
        cache.insert(Space::State, b"big0", Some(vec![1]));
        cache.committed(&grown);
        assert!(cache.bytes <= READ_CACHE_BYTES_MAX, "a grown value counts");
        assert_eq!(
            cache.get(Space::State, b"big0"),
            None,
            "a grown value past the limit goes"
        );
    }

    /// The writer's cache must never stall it: however many distinct keys go through it (a bulk
    /// load reads a new key per command), its table keeps the size it was made with (no rehash
    /// into a larger one on the writer's path), and a full cache makes room by evicting one
    /// entry at a time, keeping the keys read again and again (not by dropping everything).
    #[test]
    fn a_full_read_cache_evicts_cold_keys_one_at_a_time_and_never_grows() {
        let mut cache = ReadCache::new();
        let capacity = cache.capacity();
        assert!(capacity >= READ_CACHE_ENTRIES_MAX, "made for its limit");
        cache.insert(Space::State, b"hot", Some(b"status".to_vec()));
        for k in 0..(4 * READ_CACHE_ENTRIES_MAX) {
            let before = cache.len();
            cache.insert(Space::Drive, format!("cold/{k}").as_bytes(), None);
            assert!(
                cache.len() <= READ_CACHE_ENTRIES_MAX,
                "at {k}: {} entries",
                cache.len()
            );
            assert!(
                cache.len() + 1 >= before,
                "at {k}: an insert evicted {} entries",
                before + 1 - cache.len()
            );
            assert_eq!(cache.capacity(), capacity, "at {k}: the table was resized");
            assert_eq!(
                cache.get(Space::State, b"hot"),
                Some(Some(b"status".to_vec())),
                "at {k}: a key read before each insert was evicted"
            );
        }
        assert_eq!(cache.len(), READ_CACHE_ENTRIES_MAX, "full, not emptied");
    }

    /// A key first read once the cache is full stays while it is read now and then (here once
    /// every 100 other keys): eviction goes round the whole cache, not only over the newest keys.
    #[test]
    fn a_key_first_read_once_the_cache_is_full_stays_while_it_is_read() {
        let mut cache = ReadCache::new();
        for k in 0..READ_CACHE_ENTRIES_MAX + 10 {
            cache.insert(Space::Drive, format!("old/{k}").as_bytes(), None);
        }
        cache.insert(Space::State, b"late", Some(b"status".to_vec()));
        for k in 0..(4 * READ_CACHE_ENTRIES_MAX) {
            if k % 100 == 0 {
                assert_eq!(
                    cache.get(Space::State, b"late"),
                    Some(Some(b"status".to_vec())),
                    "after {k} other keys"
                );
            }
            cache.insert(Space::Drive, format!("new/{k}").as_bytes(), None);
        }
        let old = (0..READ_CACHE_ENTRIES_MAX + 10)
            .filter(|k| {
                cache
                    .get(Space::Drive, format!("old/{k}").as_bytes())
                    .is_some()
            })
            .count();
        assert_eq!(old, 0, "keys never read again are still cached");
    }

    #[test]
    fn prefix_successor_bounds_every_key_with_the_prefix() {
        use crate::base::prefix_successor;
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
