//! The write-ahead log check made before RocksDB opens a workspace.
//!
//! RocksDB's WAL recovery mode `kPointInTimeRecovery` (the only strict mode that allows
//! recycled WAL files, see `store::db_options`) replays each WAL up to its first damaged record
//! and drops everything after it, with no error: its only trace is a line in `db/LOG`. For a
//! torn tail after a power cut (the write in flight, never acknowledged) that is right. For a
//! damaged record *followed by intact ones* it is silent loss: those later records were written,
//! and under `sync` each was acknowledged only after everything before it was fsynced.
//!
//! So the store reads the WAL files itself, in RocksDB's format (`db/log_format.h`), before
//! RocksDB opens them: [`scan`] follows RocksDB's reader record by record and notes every intact
//! write batch that comes after damage without continuing the sequence numbers from before it
//! (RocksDB's recovery resumes only at a batch that continues them). After the open, a stranded
//! batch whose sequence numbers lie beyond what RocksDB recovered ([`WalScan::loss`]) was
//! dropped: the open is refused, naming the file, the byte and the reason.
//!
//! The format, as far as this check needs it: a WAL file is a sequence of 32 KiB blocks; a
//! block holds physical records `crc32c (4, masked) | length (2) | type (1) [| log number (4)]
//! | payload`, and a block tail too short for a header is padding. A logical record (one
//! `WriteBatch`: sequence number (8, LE), count (4, LE), then its operations) is one `FULL`
//! physical record or a `FIRST`, `MIDDLE`..., `LAST` run. The recyclable types carry the low
//! 32 bits of the log number (the file's number) so that a record left by an earlier use of a
//! recycled file is told apart from a current one; the CRC covers the type, the log number and
//! the payload.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::StoreError;

/// RocksDB's WAL block size.
const BLOCK_BYTES: usize = 32 * 1024;
/// Header of a legacy physical record: crc (4), length (2), type (1).
const HEADER_BYTES: usize = 7;
/// Header of a recyclable physical record: the legacy header and the log number (4).
const RECYCLABLE_HEADER_BYTES: usize = 11;
/// A write batch starts with its sequence number (8) and operation count (4).
const BATCH_HEADER_BYTES: usize = 12;

// Physical record types (`log::RecordType`).
const ZERO: u8 = 0;
const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;
const RECYCLABLE_FULL: u8 = 5;
const RECYCLABLE_LAST: u8 = 8;
const SET_COMPRESSION: u8 = 9;
const TIMESTAMP_SIZE: u8 = 10;
const RECYCLABLE_TIMESTAMP_SIZE: u8 = 11;
const PREDECESSOR_INFO: u8 = 130;
const RECYCLABLE_PREDECESSOR_INFO: u8 = 131;
/// Unknown types with this bit set may be ignored (`kRecordTypeSafeIgnoreMask`).
const SAFE_TO_IGNORE: u8 = 0x80;

/// Where RocksDB's replay of the WAL stops: a damaged or incomplete record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalDamagePoint {
    /// The WAL file's name (in `db/`).
    pub file: String,
    /// Byte offset of the damaged record in the file.
    pub byte: u64,
    /// What is wrong with it.
    pub reason: String,
    /// It is no damage at all but the end of the file's current use: a recycled file goes on
    /// with records of an earlier use (unless it is a current record with a damaged log
    /// number, which an intact record after it would show).
    pub end_of_use: bool,
}

impl std::fmt::Display for WalDamagePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.file, self.byte, self.reason)
    }
}

/// An intact write batch that RocksDB's replay will not reach (it follows damage).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stranded {
    /// Index into [`WalScan::damage`] of the damage it follows.
    damage: usize,
    /// Index into [`WalScan::files`].
    file: usize,
    /// Its last sequence number.
    last_seq: u64,
    /// The applied offset it recorded (`meta` `applied_offset`), if it recorded one.
    applied: Option<u64>,
}

/// What [`scan`] found in a database directory's WAL files.
#[derive(Clone, Debug, Default)]
pub(crate) struct WalScan {
    /// The WAL files read, in log number order (names in `db/`).
    pub files: Vec<String>,
    /// Every point where replay stops (a torn tail is one too, and so is the end of a recycled
    /// file's current use).
    pub damage: Vec<WalDamagePoint>,
    /// Intact batches after damage that do not continue the sequence before it.
    stranded: Vec<Stranded>,
}

/// Commits that RocksDB's recovery dropped although they were intact in the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalLoss {
    /// The first point where replay stopped with intact commits after it.
    pub damage: WalDamagePoint,
    /// Intact commits (write batches) found after damage and not recovered.
    pub commits: u64,
    /// The highest applied offset those commits recorded.
    pub through_offset: Option<u64>,
    /// WAL files holding the damage or the dropped commits.
    pub files: Vec<String>,
}

impl WalScan {
    /// The files that hold damage followed by stranded batches (worth keeping a copy of
    /// before RocksDB's open may recycle them).
    pub fn suspect_files(&self) -> Vec<String> {
        let mut files = std::collections::BTreeSet::new();
        for s in &self.stranded {
            files.insert(self.files[s.file].clone());
            files.insert(self.damage[s.damage].file.clone());
        }
        files.into_iter().collect()
    }

    /// The commits lost if RocksDB recovered up to sequence number `recovered_seq`: the
    /// stranded batches beyond it. `None` when nothing intact was dropped (no damage, or only
    /// a torn tail).
    pub fn loss(&self, recovered_seq: u64) -> Option<WalLoss> {
        let lost: Vec<&Stranded> = self
            .stranded
            .iter()
            .filter(|s| s.last_seq > recovered_seq)
            .collect();
        let first = lost.first()?;
        let mut files = std::collections::BTreeSet::new();
        files.insert(self.damage[first.damage].file.clone());
        for s in &lost {
            files.insert(self.files[s.file].clone());
        }
        Some(WalLoss {
            damage: self.damage[first.damage].clone(),
            commits: lost.len() as u64,
            through_offset: lost.iter().filter_map(|s| s.applied).max(),
            files: files.into_iter().collect(),
        })
    }

    /// The WAL files holding any batch beyond `recovered_seq` (after the loss was accepted and
    /// the database flushed, these are obsolete and would be reported again).
    pub fn files_beyond(&self, recovered_seq: u64) -> Vec<String> {
        let mut files = std::collections::BTreeSet::new();
        for s in self.stranded.iter().filter(|s| s.last_seq > recovered_seq) {
            files.insert(self.files[s.file].clone());
        }
        files.into_iter().collect()
    }
}

/// The WAL files of a database directory, in log number order.
pub(crate) fn wal_files(db_dir: &Path) -> Result<Vec<(u64, String)>, StoreError> {
    let entries = std::fs::read_dir(db_dir)
        .map_err(|e| StoreError::io(format!("list {}", db_dir.display()), e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("list {}", db_dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(number) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            files.push((number, name));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every WAL file of `db_dir` the way RocksDB's point-in-time recovery does, noting where
/// it would stop and which intact batches it would not reach.
pub(crate) fn scan(db_dir: &Path) -> Result<WalScan, StoreError> {
    let mut scan = WalScan::default();
    let mut follow = Follow::default();
    for (number, name) in wal_files(db_dir)? {
        let path = db_dir.join(&name);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| StoreError::io(format!("read WAL file {}", path.display()), e))?;
        let file = scan.files.len();
        scan.files.push(name.clone());
        let mut reader = FileReader::new(&bytes, number);
        loop {
            match reader.next_logical() {
                Logical::Batch { payload, at } => match batch_range(payload) {
                    Some((first_seq, last_seq)) => {
                        follow.batch(&mut scan, file, first_seq, last_seq, payload)
                    }
                    None => follow.damage(
                        &mut scan,
                        &name,
                        at,
                        "write batch shorter than its header",
                        false,
                    ),
                },
                Logical::Damage { at, reason } => {
                    follow.damage(&mut scan, &name, at, reason, false)
                }
                Logical::EndOfUse { at } => follow.damage(
                    &mut scan,
                    &name,
                    at,
                    "a record from an earlier use of the file, or one with a damaged log number",
                    true,
                ),
                Logical::Compressed => {
                    return Err(StoreError::Inconsistent(format!(
                        "WAL file {name} is compressed, which cairn's WAL check cannot read \
                         (cairn never enables WAL compression)"
                    )))
                }
                Logical::End => break,
            }
        }
    }
    Ok(scan)
}

/// RocksDB's replay as it moves through the batches and damage of every file in order.
#[derive(Default)]
struct Follow {
    /// The sequence number after the last batch replayed.
    next_seq: Option<u64>,
    /// Replay stopped at this damage (index into `WalScan::damage`) and has not resumed.
    stopped: Option<usize>,
}

impl Follow {
    fn damage(&mut self, scan: &mut WalScan, file: &str, at: usize, reason: &str, end: bool) {
        scan.damage.push(WalDamagePoint {
            file: file.to_owned(),
            byte: at as u64,
            reason: reason.to_owned(),
            end_of_use: end,
        });
        if self.stopped.is_none() {
            self.stopped = Some(scan.damage.len() - 1);
        }
    }

    fn batch(&mut self, scan: &mut WalScan, file: usize, first: u64, last: u64, payload: &[u8]) {
        if let Some(damage) = self.stopped {
            // RocksDB resumes replay at a batch that continues the sequence (a workspace
            // reopened after a torn tail writes on from there); one that skips ahead is a hole.
            match self.next_seq {
                Some(next) if first == next => self.stopped = None,
                Some(next) if first < next => return, // older than what was replayed
                _ => {
                    scan.stranded.push(Stranded {
                        damage,
                        file,
                        last_seq: last,
                        applied: applied_offset(payload),
                    });
                    return;
                }
            }
        }
        self.next_seq = Some(last.saturating_add(1));
    }
}

/// A write batch's first and last sequence numbers.
fn batch_range(payload: &[u8]) -> Option<(u64, u64)> {
    if payload.len() < BATCH_HEADER_BYTES {
        return None;
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
    Some((seq, seq + u64::from(count.max(1)) - 1))
}

/// The `applied_offset` a cairn commit batch writes to `meta`, if this batch holds one (for
/// messages only: the check itself works on sequence numbers).
fn applied_offset(payload: &[u8]) -> Option<u64> {
    let mut ops = BatchOps {
        rest: payload.get(BATCH_HEADER_BYTES..)?,
    };
    let mut applied = None;
    while let Some((key, value)) = ops.next_put() {
        if key == crate::layout::META_APPLIED && value.len() == 8 {
            applied = crate::layout::parse_u64(value);
        }
    }
    applied
}

/// The operations of a write batch, as far as cairn writes them (puts and deletes); stops at
/// anything else.
struct BatchOps<'a> {
    rest: &'a [u8],
}

impl<'a> BatchOps<'a> {
    /// The next put's key and value, skipping deletes; `None` at the end or at an operation
    /// this reader does not know.
    fn next_put(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        loop {
            let (&tag, rest) = self.rest.split_first()?;
            self.rest = rest;
            match tag {
                // kTypeValue, kTypeColumnFamilyValue
                0x1 | 0x5 => {
                    if tag == 0x5 {
                        self.varint()?;
                    }
                    let key = self.slice()?;
                    let value = self.slice()?;
                    return Some((key, value));
                }
                // kTypeDeletion, kTypeColumnFamilyDeletion, single deletions
                0x0 | 0x4 | 0x7 | 0x8 => {
                    if tag == 0x4 || tag == 0x8 {
                        self.varint()?;
                    }
                    self.slice()?;
                }
                _ => return None,
            }
        }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first()?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn slice(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.rest.len() {
            return None;
        }
        let (slice, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(slice)
    }
}

/// One logical record, or why there is none.
enum Logical<'a> {
    /// An intact write batch starting at byte `at`.
    Batch { payload: &'a [u8], at: usize },
    /// Replay stops here.
    Damage { at: usize, reason: &'static str },
    /// A record of an earlier use of this recycled file: replay of the file ends here.
    EndOfUse { at: usize },
    /// The file turns on WAL compression.
    Compressed,
    /// The end of the file.
    End,
}

/// What adding a physical record to the logical one being built gave.
enum Assembled<'a> {
    /// A whole record in one physical record.
    Batch(&'a [u8]),
    /// The last fragment arrived: the record is in `FileReader::joined`; it started here.
    Joined(usize),
    Damage(&'static str),
    Compressed,
}

/// One physical record, or why there is none.
enum Physical<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
    },
    /// A record left by an earlier use of this (recycled) file, or one whose log number is
    /// damaged: RocksDB ends the file's replay there.
    Old,
    /// The rest of the block is skipped without loss (padding, preallocated zeros).
    Skip,
    /// A damaged record (the rest of its block is skipped), or a torn one at the end.
    Bad(&'static str),
    End,
}

/// Reads one WAL file record by record, as RocksDB's `log::Reader` does.
struct FileReader<'a> {
    bytes: &'a [u8],
    /// Low 32 bits of the file's log number, which current recyclable records carry.
    number: u32,
    pos: usize,
    /// After an old record, nothing more of this incarnation is replayed.
    ended: bool,
    /// Fragments of the logical record being assembled: start and joined payload.
    fragment: Option<(usize, Vec<u8>)>,
    joined: Vec<u8>,
}

impl<'a> FileReader<'a> {
    fn new(bytes: &'a [u8], number: u64) -> Self {
        FileReader {
            bytes,
            number: number as u32,
            pos: 0,
            ended: false,
            fragment: None,
            joined: Vec::new(),
        }
    }

    /// The next logical record. After the end of the current incarnation (an old record), the
    /// reader goes on through the rest of the file: an intact current record there means the
    /// "old" one was a damaged log number, and what follows is stranded.
    fn next_logical(&mut self) -> Logical<'_> {
        loop {
            let at = self.pos;
            match self.next_physical() {
                Physical::End => {
                    if self.fragment.take().is_some() {
                        return Logical::Damage {
                            at,
                            reason: "the file ends inside a fragmented record",
                        };
                    }
                    return Logical::End;
                }
                Physical::Skip => {}
                Physical::Old => {
                    let torn = self.fragment.take().is_some();
                    if !self.ended {
                        self.ended = true;
                        if torn {
                            return Logical::Damage {
                                at,
                                reason: "a fragmented record is cut short by an older record",
                            };
                        }
                        return Logical::EndOfUse { at };
                    }
                }
                Physical::Bad(reason) => {
                    self.fragment = None;
                    return Logical::Damage { at, reason };
                }
                Physical::Record { kind, payload } => match self.assemble(at, kind, payload) {
                    None => {}
                    Some(Assembled::Batch(payload)) => return Logical::Batch { payload, at },
                    Some(Assembled::Joined(start)) => {
                        return Logical::Batch {
                            payload: &self.joined,
                            at: start,
                        }
                    }
                    Some(Assembled::Damage(reason)) => return Logical::Damage { at, reason },
                    Some(Assembled::Compressed) => return Logical::Compressed,
                },
            }
        }
    }

    /// Adds a physical record to the logical one being built; returns a finished record, a
    /// fragment error, or `None` to read on.
    fn assemble(&mut self, at: usize, kind: u8, payload: &'a [u8]) -> Option<Assembled<'a>> {
        let base = if (RECYCLABLE_FULL..=RECYCLABLE_LAST).contains(&kind) {
            kind - (RECYCLABLE_FULL - FULL)
        } else {
            kind
        };
        match base {
            FULL => {
                if self.fragment.take().is_some() {
                    return Some(Assembled::Damage(
                        "a fragmented record has no last fragment",
                    ));
                }
                Some(Assembled::Batch(payload))
            }
            FIRST => {
                if self.fragment.is_some() {
                    self.fragment = Some((at, payload.to_vec()));
                    return Some(Assembled::Damage(
                        "a fragmented record has no last fragment",
                    ));
                }
                self.fragment = Some((at, payload.to_vec()));
                None
            }
            MIDDLE | LAST => {
                let Some((start, mut joined)) = self.fragment.take() else {
                    return Some(Assembled::Damage("a fragment has no first fragment"));
                };
                joined.extend_from_slice(payload);
                if base == MIDDLE {
                    self.fragment = Some((start, joined));
                    return None;
                }
                self.joined = joined;
                Some(Assembled::Joined(start))
            }
            SET_COMPRESSION => {
                // Payload: the compression type; 0 is none.
                if payload.first().copied().unwrap_or(0) != 0 {
                    return Some(Assembled::Compressed);
                }
                None
            }
            TIMESTAMP_SIZE
            | RECYCLABLE_TIMESTAMP_SIZE
            | PREDECESSOR_INFO
            | RECYCLABLE_PREDECESSOR_INFO => None,
            _ if kind & SAFE_TO_IGNORE != 0 => None,
            _ => Some(Assembled::Damage("unknown record type")),
        }
    }

    fn next_physical(&mut self) -> Physical<'a> {
        let bytes = self.bytes;
        loop {
            if self.pos >= bytes.len() {
                return Physical::End;
            }
            let block_end = ((self.pos / BLOCK_BYTES + 1) * BLOCK_BYTES).min(bytes.len());
            if block_end - self.pos < HEADER_BYTES {
                let tail = &bytes[self.pos..block_end];
                self.pos = block_end;
                if block_end == bytes.len() && tail.iter().any(|b| *b != 0) {
                    return Physical::Bad("truncated record header");
                }
                continue; // a block trailer (padding)
            }
            match self.parse_at(self.pos, block_end) {
                Parsed::Record { kind, payload, end } => {
                    self.pos = end;
                    return Physical::Record { kind, payload };
                }
                Parsed::Old { end } => {
                    self.pos = end;
                    return Physical::Old;
                }
                Parsed::Zero => {
                    // Preallocated zeros: RocksDB skips the rest of the block without a report.
                    self.pos = block_end;
                    return Physical::Skip;
                }
                Parsed::Bad(reason) => {
                    // RocksDB's reader drops the rest of the block; the intact records in it
                    // are found again here, so that what replay loses is counted.
                    self.pos = self.resync(self.pos + 1, block_end);
                    return Physical::Bad(reason);
                }
            }
        }
    }

    /// Parses the physical record at `at`, which must leave at least a legacy header in the
    /// block ending at `block_end`.
    fn parse_at(&self, at: usize, block_end: usize) -> Parsed<'a> {
        let bytes = self.bytes;
        let in_block = block_end - at;
        let header = &bytes[at..block_end];
        let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        let recyclable = (RECYCLABLE_FULL..=RECYCLABLE_LAST).contains(&kind)
            || kind == RECYCLABLE_TIMESTAMP_SIZE
            || kind == RECYCLABLE_PREDECESSOR_INFO;
        let header_len = if recyclable {
            RECYCLABLE_HEADER_BYTES
        } else {
            HEADER_BYTES
        };
        if in_block < header_len {
            return Parsed::Bad("truncated record header");
        }
        if recyclable {
            let number = u32::from_le_bytes(header[7..11].try_into().expect("4 bytes"));
            if number != self.number {
                return Parsed::Old {
                    end: at + (header_len + len).min(in_block),
                };
            }
        }
        if header_len + len > in_block {
            return Parsed::Bad("bad record length");
        }
        if kind == ZERO && len == 0 {
            return Parsed::Zero;
        }
        let stored = unmask(u32::from_le_bytes(header[..4].try_into().expect("4 bytes")));
        let computed = crc32c::crc32c(&header[6..header_len + len]);
        if stored != computed {
            return Parsed::Bad("checksum mismatch");
        }
        Parsed::Record {
            kind,
            payload: &bytes[at + header_len..at + header_len + len],
            end: at + header_len + len,
        }
    }

    /// The first position in `from..block_end` where an intact data record of this file
    /// starts, or `block_end`.
    fn resync(&self, from: usize, block_end: usize) -> usize {
        (from..block_end.saturating_sub(HEADER_BYTES - 1))
            .find(|&at| {
                let kind = self.bytes[at + 6];
                (FULL..=RECYCLABLE_LAST).contains(&kind)
                    && matches!(self.parse_at(at, block_end), Parsed::Record { .. })
            })
            .unwrap_or(block_end)
    }
}

/// What lies at one position of a WAL file.
enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
        /// Where the next record starts.
        end: usize,
    },
    Old {
        end: usize,
    },
    Zero,
    Bad(&'static str),
}

/// RocksDB stores CRCs masked (`crc32c::Unmask`), so that a CRC of data holding CRCs is not
/// degenerate.
fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(0xa282_ead8);
    rot.rotate_left(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL file written in RocksDB's format, for tests of the reader.
    struct WalWriter {
        bytes: Vec<u8>,
        number: u32,
        recyclable: bool,
    }

    fn mask(crc: u32) -> u32 {
        crc.rotate_right(15).wrapping_add(0xa282_ead8)
    }

    impl WalWriter {
        fn new(number: u32, recyclable: bool) -> Self {
            WalWriter {
                bytes: Vec::new(),
                number,
                recyclable,
            }
        }

        fn header_len(&self) -> usize {
            if self.recyclable {
                RECYCLABLE_HEADER_BYTES
            } else {
                HEADER_BYTES
            }
        }

        /// Appends a logical record, fragmented over blocks as RocksDB's writer does.
        fn add(&mut self, payload: &[u8]) -> usize {
            let start = self.bytes.len();
            let mut rest = payload;
            let mut begin = true;
            loop {
                let left = BLOCK_BYTES - self.bytes.len() % BLOCK_BYTES;
                if left < self.header_len() {
                    self.bytes.extend(std::iter::repeat_n(0u8, left));
                    continue;
                }
                let room = left - self.header_len();
                let n = rest.len().min(room);
                let end = n == rest.len();
                let base = match (begin, end) {
                    (true, true) => FULL,
                    (true, false) => FIRST,
                    (false, false) => MIDDLE,
                    (false, true) => LAST,
                };
                self.physical(base, &rest[..n]);
                rest = &rest[n..];
                begin = false;
                if end {
                    return start;
                }
            }
        }

        fn physical(&mut self, base: u8, payload: &[u8]) {
            let kind = if self.recyclable {
                base + (RECYCLABLE_FULL - FULL)
            } else {
                base
            };
            let mut covered = vec![kind];
            if self.recyclable {
                covered.extend_from_slice(&self.number.to_le_bytes());
            }
            covered.extend_from_slice(payload);
            let crc = mask(crc32c::crc32c(&covered));
            self.bytes.extend_from_slice(&crc.to_le_bytes());
            self.bytes
                .extend_from_slice(&(payload.len() as u16).to_le_bytes());
            self.bytes.extend_from_slice(&covered);
        }
    }

    /// A write batch with sequence number `seq`, `count` operations and a cairn `applied`.
    fn batch(seq: u64, count: u32, applied: u64, filler: usize) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&count.to_le_bytes());
        // A put of `filler` bytes to column family 1, then meta's applied offset.
        b.push(0x5);
        b.push(1);
        b.push(8);
        b.extend_from_slice(&applied.to_be_bytes());
        let mut len = filler;
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                b.push(byte);
                break;
            }
            b.push(byte | 0x80);
        }
        b.extend(std::iter::repeat_n(b'x', filler));
        b.push(0x5);
        b.push(3);
        b.push(crate::layout::META_APPLIED.len() as u8);
        b.extend_from_slice(crate::layout::META_APPLIED);
        b.push(8);
        b.extend_from_slice(&applied.to_be_bytes());
        b
    }

    fn scan_files(files: &[(u32, Vec<u8>)]) -> WalScan {
        let dir = tempfile::tempdir().unwrap();
        for (number, bytes) in files {
            std::fs::write(dir.path().join(format!("{number:06}.log")), bytes).unwrap();
        }
        scan(dir.path()).unwrap()
    }

    /// Ten commits of 2 sequence numbers each, `filler` bytes big, from sequence 1.
    fn ten_commits(w: &mut WalWriter, filler: usize) -> Vec<usize> {
        (0..10u64)
            .map(|i| w.add(&batch(1 + 2 * i, 2, i + 1, filler)))
            .collect()
    }

    #[test]
    fn an_intact_wal_has_no_damage() {
        for filler in [10, 50_000] {
            for recyclable in [false, true] {
                let mut w = WalWriter::new(7, recyclable);
                ten_commits(&mut w, filler);
                let scan = scan_files(&[(7, w.bytes)]);
                assert!(scan.damage.is_empty(), "{:?}", scan.damage);
                assert_eq!(scan.loss(20), None);
            }
        }
    }

    #[test]
    fn a_torn_tail_is_damage_but_no_loss() {
        let mut w = WalWriter::new(7, true);
        let starts = ten_commits(&mut w, 100);
        // The last commit was cut short by the power cut.
        let cut = starts[9] + 20;
        let scan = scan_files(&[(7, w.bytes[..cut].to_vec())]);
        assert_eq!(scan.damage.len(), 1, "{:?}", scan.damage);
        assert_eq!(scan.damage[0].byte, starts[9] as u64);
        // RocksDB recovers through commit 9 (sequence 18).
        assert_eq!(scan.loss(18), None);
        // A torn fragmented record (the last one spans blocks) is no loss either.
        let mut w = WalWriter::new(7, true);
        let starts = ten_commits(&mut w, 20_000);
        let scan = scan_files(&[(7, w.bytes[..starts[9] + 10_000].to_vec())]);
        assert_eq!(scan.damage.len(), 1, "{:?}", scan.damage);
        assert_eq!(scan.loss(18), None);
    }

    #[test]
    fn a_flipped_byte_before_intact_commits_is_named_with_the_loss() {
        for recyclable in [false, true] {
            let mut w = WalWriter::new(7, recyclable);
            let starts = ten_commits(&mut w, 100);
            let mut bytes = w.bytes.clone();
            bytes[starts[4] + 30] ^= 0x10;
            let scan = scan_files(&[(7, bytes)]);
            // RocksDB stops before commit 5 (sequence 9): commits 5..10 are lost.
            let loss = scan.loss(8).expect("the loss is found");
            assert_eq!(loss.damage.file, "000007.log");
            assert_eq!(loss.damage.byte, starts[4] as u64);
            assert_eq!(loss.damage.reason, "checksum mismatch");
            // Commits 6..10 share the damaged record's block: they are found all the same.
            assert_eq!(loss.files, vec!["000007.log".to_owned()]);
            assert_eq!(loss.commits, 5);
            assert_eq!(loss.through_offset, Some(10));
        }
    }

    #[test]
    fn damage_in_one_block_strands_the_commits_in_later_blocks() {
        let mut w = WalWriter::new(7, true);
        let starts = ten_commits(&mut w, 20_000);
        let mut bytes = w.bytes.clone();
        bytes[starts[2] + 100] ^= 0x01;
        let scan = scan_files(&[(7, bytes)]);
        let loss = scan.loss(4).expect("the loss is found");
        assert_eq!(loss.through_offset, Some(10));
        assert_eq!(loss.commits, 7, "{loss:?}");
        // Had RocksDB recovered everything, nothing would be lost.
        assert_eq!(scan.loss(20), None);
    }

    #[test]
    fn a_damaged_log_number_is_not_taken_for_the_end_of_the_file() {
        let mut w = WalWriter::new(7, true);
        let starts = ten_commits(&mut w, 100);
        let mut bytes = w.bytes.clone();
        // The log number field of commit 4's header: RocksDB's reader takes it for a record
        // of an earlier use of the file and stops there without a word.
        bytes[starts[3] + 8] ^= 0x01;
        let scan = scan_files(&[(7, bytes)]);
        let loss = scan.loss(6).expect("the loss is found");
        assert_eq!(loss.commits, 6);
        assert_eq!(loss.through_offset, Some(10));
    }

    #[test]
    fn records_of_an_earlier_use_of_a_recycled_file_are_ignored() {
        // The file was used as log 3 with ten commits, then recycled as log 7 with three.
        let mut old = WalWriter::new(3, true);
        ten_commits(&mut old, 100);
        let mut new = WalWriter::new(7, true);
        for i in 0..3u64 {
            new.add(&batch(100 + i, 1, 50 + i, 100));
        }
        let mut bytes = old.bytes.clone();
        bytes[..new.bytes.len()].copy_from_slice(&new.bytes);
        let scan = scan_files(&[(7, bytes)]);
        assert_eq!(scan.loss(102), None);
    }

    #[test]
    fn a_later_file_that_continues_the_sequence_after_a_torn_tail_is_no_loss() {
        let mut first = WalWriter::new(7, true);
        let starts = ten_commits(&mut first, 100);
        let torn = first.bytes[..starts[9] + 20].to_vec();
        // Reopened after the power cut: RocksDB recovered through sequence 18 and the next
        // file starts at 19.
        let mut second = WalWriter::new(9, true);
        second.add(&batch(19, 2, 10, 100));
        second.add(&batch(21, 2, 11, 100));
        let scan = scan_files(&[(7, torn.clone()), (9, second.bytes)]);
        assert_eq!(scan.loss(22), None);
        // A later file that skips ahead is a hole: its commits are stranded.
        let mut skipping = WalWriter::new(9, true);
        skipping.add(&batch(25, 2, 12, 100));
        let scan = scan_files(&[(7, torn), (9, skipping.bytes)]);
        let loss = scan.loss(18).expect("the hole is found");
        assert_eq!(loss.damage.file, "000007.log");
        assert_eq!(
            loss.files,
            vec!["000007.log".to_owned(), "000009.log".to_owned()]
        );
    }

    #[test]
    fn applied_offsets_are_read_from_cairn_batches() {
        assert_eq!(applied_offset(&batch(1, 2, 42, 10)), Some(42));
        assert_eq!(applied_offset(&batch(1, 2, 42, 300)), Some(42));
        assert_eq!(applied_offset(&[0; 12]), None);
    }
}
