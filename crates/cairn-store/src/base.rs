//! Reading the projection straight from RocksDB, at a snapshot or at the latest commit.

use cairn_log::{Space, StateError};
use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

/// The snapshot type every reader holds.
pub(crate) type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

/// RocksDB as a projection reader: at `snap` if given, else at the latest commit.
#[derive(Clone, Copy)]
pub(crate) struct Base<'a> {
    pub db: &'a DB,
    pub snap: Option<&'a Snapshot<'a>>,
}

impl<'a> Base<'a> {
    pub fn read_opts(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if let Some(snap) = self.snap {
            opts.set_snapshot(snap);
        }
        opts
    }

    pub fn cf(&self, name: &str) -> &'a rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            // Invariant: every column family in `layout::CFS` is created at init and opened
            // with the database.
            .expect("column family exists: all CFs are opened with the database")
    }

    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf_opt(self.cf(space.name()), key, &self.read_opts())
            .map_err(|e| state_error(format!("get {space}/{}", String::from_utf8_lossy(key)), &e))
    }

    /// Visits `(key, value)` pairs with `prefix` in key order until `visit` returns false.
    pub fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.scan_prefix_from(space, prefix, prefix, visit)
    }

    /// [`Base::scan_prefix`] from the first key not below `from` (a seek).
    pub fn scan_prefix_from(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let mut opts = self.read_opts();
        if let Some(upper) = prefix_successor(prefix) {
            opts.set_iterate_upper_bound(upper);
        }
        let iter = self.db.iterator_cf_opt(
            self.cf(space.name()),
            opts,
            IteratorMode::From(prefix.max(from), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| state_error(format!("scan {space}"), &e))?;
            if !k.starts_with(prefix) || !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}

/// The smallest key greater than every key starting with `prefix`, if one exists.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xff {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

impl cairn_log::StateRead for Base<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Base::get(self, space, key)
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        Base::scan_prefix(self, space, prefix, visit)
    }

    fn scan_prefix_from(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        Base::scan_prefix_from(self, space, prefix, from, visit)
    }
}

/// A RocksDB read error as a state error: corruption RocksDB detected stays corruption.
pub(crate) fn state_error(context: String, e: &rocksdb::Error) -> StateError {
    let message = format!("{context}: {e}");
    match e.kind() {
        rocksdb::ErrorKind::Corruption => StateError::corrupt(message),
        _ => StateError::io(message),
    }
}
