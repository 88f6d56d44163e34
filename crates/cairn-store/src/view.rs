//! Read views: a RocksDB snapshot of the whole store, reporting the applied offset it reflects.

use std::sync::Arc;

use cairn_log::{
    codec, ChainCursor, CorruptReason, Hash, Head, Space, StateError, StateRead, StoredEntry,
};
use rocksdb::{IteratorMode, DB};

use crate::base::{Base, Snapshot};
use crate::error::StoreError;
use crate::layout::{self, CF_LOG, CF_META};

/// A consistent view of the log, the projection and the metadata at one commit.
pub struct ReadView {
    // Field order matters: `snap` borrows from `db` and must be dropped first.
    snap: Snapshot<'static>,
    db: Arc<DB>,
    head: Head,
    first: u64,
}

/// How far a long-running read has got: `done` of `total` entries (or keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Done so far.
    pub done: u64,
    /// Expected in all.
    pub total: u64,
}

/// What a full verification found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// First offset checked.
    pub first: u64,
    /// The verified head (matches the stored applied offset and head hash).
    pub head: Head,
    /// Entries checked.
    pub entries: u64,
}

/// The state digest at an applied offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The applied offset the digest reflects.
    pub applied: u64,
    /// blake3 over every `(column family, key, value)` of the projection, in key order.
    pub hash: Hash,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.applied, self.hash)
    }
}

/// The store's metadata as read at one point.
pub(crate) struct MetaRecord {
    pub head: Head,
    pub first: u64,
}

/// Reads `applied`, `head_hash`, `head_epoch` and `first_retained` from `base`.
pub(crate) fn read_meta(base: Base<'_>) -> Result<MetaRecord, StoreError> {
    let cf = base.cf(CF_META);
    let get = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
        base.db
            .get_cf_opt(cf, key, &base.read_opts())
            .map_err(StoreError::db("read meta"))
    };
    let u64_of = |key: &[u8]| -> Result<u64, StoreError> {
        let v = get(key)?.ok_or_else(|| {
            StoreError::Inconsistent(format!("meta {} is missing", String::from_utf8_lossy(key)))
        })?;
        layout::parse_u64(&v).ok_or_else(|| {
            StoreError::Inconsistent(format!(
                "meta {} is malformed",
                String::from_utf8_lossy(key)
            ))
        })
    };
    let hash = get(layout::META_HEAD_HASH)?
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
        .ok_or_else(|| StoreError::Inconsistent("meta head_hash is missing or malformed".into()))?;
    Ok(MetaRecord {
        head: Head {
            offset: u64_of(layout::META_APPLIED)?,
            hash: Hash(hash),
            epoch: u64_of(layout::META_HEAD_EPOCH)?,
        },
        first: u64_of(layout::META_FIRST)?,
    })
}

/// Decodes the `log` value stored under `key`, checking the key and the entry's own hash.
pub(crate) fn decode_stored(key: &[u8], value: &[u8]) -> Result<StoredEntry, StoreError> {
    let Some(offset) = layout::parse_log_key(key) else {
        return Err(StoreError::Inconsistent(format!(
            "log key of {} bytes is not an offset",
            key.len()
        )));
    };
    let corrupt = |reason: CorruptReason| StoreError::Corrupt { offset, reason };
    let entry = codec::decode(value).map_err(|e| corrupt(e.into()))?;
    if entry.offset != offset {
        return Err(StoreError::Corrupt {
            offset,
            reason: CorruptReason::WrongKey { key: offset },
        });
    }
    cairn_log::verify_hash(&entry).map_err(|e| corrupt(e.into()))?;
    Ok(entry)
}

impl ReadView {
    pub(crate) fn new(db: Arc<DB>) -> Result<Self, StoreError> {
        let snap = db.snapshot();
        // SAFETY: the snapshot borrows the database, which `db` keeps alive for as long as this
        // view exists: `snap` is declared before `db`, so it is dropped first, and neither field
        // is ever moved out of the view.
        let snap: Snapshot<'static> = unsafe { std::mem::transmute(snap) };
        let meta = read_meta(Base {
            db: &db,
            snap: Some(&snap),
        })?;
        Ok(Self {
            snap,
            db,
            head: meta.head,
            first: meta.first,
        })
    }

    fn base(&self) -> Base<'_> {
        Base {
            db: &self.db,
            snap: Some(&self.snap),
        }
    }

    /// The applied offset this view reflects.
    pub fn applied(&self) -> u64 {
        self.head.offset
    }

    /// The chain head this view reflects.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The first retained offset.
    pub fn first_retained(&self) -> u64 {
        self.first
    }

    /// Reads up to `limit` entries from `from`, each checked against its hash, its key and the
    /// entry before it.
    pub fn read_log(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.visit_log(from, |entry| {
            out.push(entry);
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Visits entries from `from` up to the applied offset (checked like `read_log`) until
    /// `visit` returns false. Entries come straight off a RocksDB iterator: no batch is held.
    pub fn visit_log(
        &self,
        from: u64,
        mut visit: impl FnMut(StoredEntry) -> bool,
    ) -> Result<(), StoreError> {
        visit_log_at(self.base(), self.first, self.head.offset, from, &mut visit)
    }

    /// Visits the stored bytes of entries from `from` up to the applied offset until `visit`
    /// returns false, without decoding them: for streaming the log to mirrors, which verify
    /// every entry themselves. The bytes are the iterator's, lent for the call. Only the keys
    /// are checked (dense, from `from` to the last one visited); a missing entry is `Corrupt`
    /// with its offset.
    pub fn visit_log_raw(
        &self,
        from: u64,
        mut visit: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        visit_raw_at(
            self.base(),
            self.first,
            self.head.offset,
            from,
            &mut |offset, _, v| Ok(visit(offset, v)),
        )
    }

    /// Verifies the whole retained log: every entry decodes, sits under its own offset, hashes
    /// to its stored hash and links to the one before; the last one is the stored head. The
    /// error names the first bad offset.
    pub fn verify(&self, progress: &mut dyn FnMut(Progress)) -> Result<VerifyReport, StoreError> {
        let total = self.head.offset.saturating_sub(self.first - 1);
        let mut last = Head::EMPTY;
        let mut checked = 0u64;
        self.visit_log(self.first, |entry| {
            last = entry.head();
            checked += 1;
            if checked.is_multiple_of(4096) {
                progress(Progress {
                    done: checked,
                    total,
                });
            }
            true
        })?;
        progress(Progress {
            done: checked,
            total,
        });
        if last.offset != self.head.offset || last.hash != self.head.hash {
            return Err(StoreError::Inconsistent(format!(
                "log ends at offset {} with hash {}, but meta says head is offset {} with hash {}",
                last.offset, last.hash, self.head.offset, self.head.hash
            )));
        }
        Ok(VerifyReport {
            first: self.first,
            head: self.head,
            entries: checked,
        })
    }

    /// The state digest: blake3 over every `(column family, key, value)` of the projection
    /// spaces in order, each part length-prefixed (u64 little endian).
    pub fn digest(&self) -> Result<Digest, StoreError> {
        let mut h = blake3::Hasher::new();
        let base = self.base();
        for space in Space::ALL {
            let iter = self.db.iterator_cf_opt(
                base.cf(space.name()),
                base.read_opts(),
                IteratorMode::Start,
            );
            for item in iter {
                let (k, v) = item.map_err(StoreError::db("digest"))?;
                for part in [space.name().as_bytes(), &k, &v] {
                    h.update(&(part.len() as u64).to_le_bytes());
                    h.update(part);
                }
            }
        }
        Ok(Digest {
            applied: self.head.offset,
            hash: Hash(*h.finalize().as_bytes()),
        })
    }
}

impl StateRead for ReadView {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.base().get(space, key)
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.base().scan_prefix(space, prefix, visit)
    }

    fn scan_prefix_from(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.base().scan_prefix_from(space, prefix, from, visit)
    }
}

/// Visits log entries `from..=last` through `base` (checked for key, hash, link and gaps) until
/// `visit` returns false. Shared by read views and rebuild.
pub(crate) fn visit_log_at(
    base: Base<'_>,
    first: u64,
    last: u64,
    from: u64,
    visit: &mut dyn FnMut(StoredEntry) -> bool,
) -> Result<(), StoreError> {
    let mut cursor: Option<ChainCursor> = None;
    visit_raw_at(base, first, last, from, &mut |_, k, v| {
        let entry = decode_stored(k, v)?;
        let cur = cursor.get_or_insert_with(|| {
            ChainCursor::new(Head {
                offset: entry.offset - 1,
                hash: entry.prev,
                epoch: 0,
            })
        });
        cur.advance(&entry).map_err(|e| StoreError::Corrupt {
            offset: entry.offset,
            reason: e.into(),
        })?;
        Ok(visit(entry))
    })
}

/// What [`visit_raw_at`] calls with each entry: its offset, key and stored value (borrowed
/// from the iterator, valid for the call); `Ok(false)` stops the visit.
type RawVisit<'a> = dyn FnMut(u64, &[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// Visits the stored values of log entries `from..=last` through `base`, with their offsets
/// and keys, until `visit` returns false or fails; checks only that the keys are dense
/// (a gap is `Corrupt` `Missing` at the first absent offset), not what the values hold.
/// Nothing is copied or allocated per entry: the visitor sees the iterator's own slices.
fn visit_raw_at(
    base: Base<'_>,
    first: u64,
    last: u64,
    from: u64,
    visit: &mut RawVisit<'_>,
) -> Result<(), StoreError> {
    if from < first {
        return Err(StoreError::Compacted {
            requested: from,
            first,
        });
    }
    if from > last {
        return Ok(());
    }
    let mut opts = base.read_opts();
    // The iterator stops at `last` rather than looking at what a later commit wrote.
    opts.set_iterate_upper_bound(layout::log_key(last + 1).to_vec());
    let mut iter = base.db.raw_iterator_cf_opt(base.cf(CF_LOG), opts);
    iter.seek(layout::log_key(from));
    let missing = |offset| StoreError::Corrupt {
        offset,
        reason: CorruptReason::Missing,
    };
    let mut expected = from;
    while expected <= last {
        let (Some(k), Some(v)) = (iter.key(), iter.value()) else {
            break;
        };
        match layout::parse_log_key(k) {
            Some(offset) if offset == expected => {}
            Some(_) => return Err(missing(expected)),
            None => {
                return Err(StoreError::Inconsistent(format!(
                    "log key of {} bytes is not an offset",
                    k.len()
                )))
            }
        }
        expected += 1;
        if !visit(expected - 1, k, v)? {
            return Ok(());
        }
        iter.next();
    }
    iter.status().map_err(StoreError::db("read log"))?;
    if expected <= last {
        return Err(missing(expected));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::KvMachine;

    #[test]
    fn a_read_view_passes_the_state_read_suite() {
        cairn_log::testing::state_read_suite(|contents, check| {
            let dir = tempfile::tempdir().unwrap();
            crate::Store::<KvMachine>::init(dir.path()).unwrap();
            let db = crate::open_raw_db(dir.path()).unwrap();
            for (space, k, v) in contents {
                db.put_cf(db.cf_handle(space.name()).unwrap(), k, v)
                    .unwrap();
            }
            let view = ReadView::new(Arc::new(db)).unwrap();
            // Written after the snapshot: a view never sees it.
            view.db
                .put_cf(view.db.cf_handle("state").unwrap(), b"t/late", b"late")
                .unwrap();
            check(&view);
        });
    }
}
