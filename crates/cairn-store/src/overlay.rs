//! The batch being built: state writes not yet committed, layered over the committed state, so
//! each command in a group commit is decided against everything before it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

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

/// Most bytes of keys and values the writer's [`ReadCache`] holds before it starts over.
pub const READ_CACHE_BYTES_MAX: usize = 8 << 20;

/// Committed state the writer has read, so that commands about the same entities (a package's
/// status, a feature) do not go to RocksDB each time. Only the writer commits, and it updates
/// every cached key it commits, so a cached value is always the committed one.
#[derive(Default)]
pub(crate) struct ReadCache {
    values: HashMap<(Space, Vec<u8>), Option<Vec<u8>>>,
    bytes: usize,
}

impl ReadCache {
    fn get(&self, space: Space, key: &[u8]) -> Option<Option<Vec<u8>>> {
        // The borrowed lookup needs the owned key type; the allocation is small next to a
        // RocksDB read.
        self.values.get(&(space, key.to_vec())).cloned()
    }

    fn insert(&mut self, space: Space, key: &[u8], value: Option<Vec<u8>>) {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if self.bytes + size > READ_CACHE_BYTES_MAX {
            self.clear();
        }
        self.bytes += size;
        if let Some(old) = self.values.insert((space, key.to_vec()), value) {
            self.bytes -= key.len() + old.map_or(0, |v| v.len());
        }
    }

    /// Records committed writes: a cached key takes its new value (others are not added).
    pub fn committed(&mut self, writes: &BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>) {
        for (k, v) in writes {
            if let Some(slot) = self.values.get_mut(k) {
                let old = slot.as_ref().map_or(0, Vec::len);
                let new = v.as_ref().map_or(0, Vec::len);
                self.bytes = self.bytes + new - old;
                slot.clone_from(v);
            }
        }
        // Grown values count against the limit too.
        if self.bytes > READ_CACHE_BYTES_MAX {
            self.clear();
        }
    }

    /// Forgets everything (after a failed write, whose effect on RocksDB is unknown).
    pub fn clear(&mut self) {
        self.values.clear();
        self.bytes = 0;
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
        let mut cache = ReadCache::default();
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
        let big = vec![0; READ_CACHE_BYTES_MAX / 2];
        cache.insert(Space::State, b"x", Some(big.clone()));
        cache.insert(Space::State, b"y", Some(big));
        assert!(cache.bytes <= READ_CACHE_BYTES_MAX);
        assert_eq!(
            cache.get(Space::State, b"b"),
            None,
            "started over at the limit"
        );
        assert!(cache.get(Space::State, b"y").is_some());
        let mut grown = BTreeMap::new();
        grown.insert(
            (Space::State, b"y".to_vec()),
            Some(vec![0; READ_CACHE_BYTES_MAX]),
        );
        cache.committed(&grown);
        assert!(cache.bytes <= READ_CACHE_BYTES_MAX, "a grown value counts");
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
