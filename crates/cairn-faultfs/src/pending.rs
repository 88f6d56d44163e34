//! The unfsynced data of one file: what a page cache would hold and a power cut loses.
//!
//! [`Pending`] is pure bookkeeping over a backing file that it only reads, except in
//! [`Pending::write_back`] (an fsync) and [`Pending::apply_torn`] (a torn power cut). It keeps
//! two views of the same changes: the dirty pages with their current content (for reads and for
//! the write-back), and the changes in the order they were made (for a torn cut, which keeps a
//! prefix of them).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes per cached page.
pub const PAGE_BYTES: usize = 4096;
const PAGE: u64 = PAGE_BYTES as u64;

/// One change since the last sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `data` written at `offset`.
    Write { offset: u64, data: Vec<u8> },
    /// The file's size set to `size` (a truncate, or growth by `fallocate`).
    Resize { size: u64 },
}

/// Where a torn cut stops: `ops` changes kept whole, then the first `bytes` bytes of the next
/// change if it is a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TornPoint {
    pub ops: usize,
    pub bytes: usize,
}

/// The file as its writers see it, over what the backing file holds.
///
/// A byte at `x < size` reads from its dirty page if there is one, else as zero if
/// `x >= zero_from`, else from the backing file (zero past the backing file's end).
#[derive(Debug)]
pub(crate) struct Pending {
    /// Pages written since the last sync, by index, holding their whole current content.
    /// Invariant: every page starts below `size`, and its bytes at or past `size` are zero.
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The size the writers see.
    size: u64,
    /// The lowest size the file had since the last sync: backing bytes at or past it were
    /// truncated away and read as zeros. Invariant: `zero_from <= size`.
    zero_from: u64,
    /// The backing file's length when the first change came (it does not change until the
    /// write-back). Invariant: `zero_from <= backing_len`.
    backing_len: u64,
    /// The changes, in the order they were made.
    ops: Vec<Op>,
    /// Bytes of data in `ops`.
    op_bytes: u64,
}

impl Pending {
    /// Nothing pending yet over a backing file of `backing_len` bytes.
    pub(crate) fn new(backing_len: u64) -> Self {
        Self {
            pages: BTreeMap::new(),
            size: backing_len,
            zero_from: backing_len,
            backing_len,
            ops: Vec::new(),
            op_bytes: 0,
        }
    }

    /// The size the file's writers see.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written since the last sync (overwritten bytes count each time).
    pub(crate) fn data_bytes(&self) -> u64 {
        self.op_bytes
    }

    /// Memory held: the changes' data plus the dirty pages.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.op_bytes + self.pages.len() as u64 * PAGE
    }

    /// Memory that writing `len` bytes at `offset` would add, at most.
    pub(crate) fn memory_bytes_for_write(offset: u64, len: usize) -> u64 {
        let pages = if len == 0 {
            0
        } else {
            (offset + len as u64 - 1) / PAGE - offset / PAGE + 1
        };
        len as u64 + pages * PAGE
    }

    /// The changes since the last sync, in order.
    #[cfg(test)]
    pub(crate) fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Records `data` written at `offset`. Reads `backing` to fill the parts of newly dirtied
    /// pages that the write does not cover.
    pub(crate) fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut pos = offset;
        while pos < end {
            let index = pos / PAGE;
            let start = index * PAGE;
            let in_page = (pos - start) as usize;
            let n = (PAGE_BYTES - in_page).min((end - pos) as usize);
            let page = match self.pages.entry(index) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(base_page(backing, start, self.zero_from)?),
            };
            let from = (pos - offset) as usize;
            page[in_page..in_page + n].copy_from_slice(&data[from..from + n]);
            pos += n as u64;
        }
        self.size = self.size.max(end);
        self.op_bytes += data.len() as u64;
        self.ops.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    /// Records the file's size set to `size`: a shrink discards what lies past it (a later
    /// growth reads zeros there), a growth adds zeros.
    pub(crate) fn resize(&mut self, size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(PAGE);
            drop(self.pages.split_off(&first_gone));
            let tail = (size % PAGE) as usize;
            if tail != 0 {
                if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                    page[tail..].fill(0);
                }
            }
            self.zero_from = self.zero_from.min(size);
        }
        self.size = size;
        self.ops.push(Op::Resize { size });
    }

    /// Reads up to `len` bytes at `offset` as the file's writers see them.
    pub(crate) fn read(&self, backing: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset.saturating_add(len as u64));
        let mut out = vec![0u8; (end - offset) as usize];
        if offset < self.zero_from {
            let backed = (end.min(self.zero_from) - offset) as usize;
            read_full_at(backing, &mut out[..backed], offset)?;
        }
        for (&index, page) in self.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let start = index * PAGE;
            let a = start.max(offset);
            let b = (start + PAGE).min(end);
            out[(a - offset) as usize..(b - offset) as usize]
                .copy_from_slice(&page[(a - start) as usize..(b - start) as usize]);
        }
        Ok(out)
    }

    /// Writes the pending state to `backing` (an fsync's first half; the caller then syncs
    /// the backing file). Returns the bytes written.
    pub(crate) fn write_back(&self, backing: &File) -> io::Result<u64> {
        // Cut away what a truncate discarded, write the dirty pages, then set the final size
        // (which also adds the zeros of a growth past the last page). The backing file is
        // `zero_from` long once cut (or was all along), and a size call that would change
        // nothing is left out.
        if self.zero_from < self.backing_len {
            backing.set_len(self.zero_from)?;
        }
        let mut len = self.zero_from;
        let mut written = 0;
        for (&index, page) in &self.pages {
            let start = index * PAGE;
            let n = PAGE.min(self.size - start);
            backing.write_all_at(&page[..n as usize], start)?;
            written += n;
            len = len.max(start + n);
        }
        if len != self.size {
            backing.set_len(self.size)?;
        }
        Ok(written)
    }

    /// Where a torn cut stops, from two random numbers: any number of whole changes, then a
    /// strict prefix of the next one if it is a write.
    pub(crate) fn torn_point(&self, r1: u64, r2: u64) -> TornPoint {
        let ops = (r1 % (self.ops.len() as u64 + 1)) as usize;
        let bytes = match self.ops.get(ops) {
            Some(Op::Write { data, .. }) if !data.is_empty() => (r2 % data.len() as u64) as usize,
            _ => 0,
        };
        TornPoint { ops, bytes }
    }

    /// Applies the changes up to `point` to `backing`, in the order they were made (the caller
    /// then syncs the backing file). Returns the bytes of written data kept.
    pub(crate) fn apply_torn(&self, backing: &File, point: TornPoint) -> io::Result<u64> {
        let mut kept = 0;
        for op in &self.ops[..point.ops.min(self.ops.len())] {
            match op {
                Op::Write { offset, data } => {
                    backing.write_all_at(data, *offset)?;
                    kept += data.len() as u64;
                }
                Op::Resize { size } => backing.set_len(*size)?,
            }
        }
        if let Some(Op::Write { offset, data }) = self.ops.get(point.ops) {
            let part = &data[..point.bytes.min(data.len())];
            backing.write_all_at(part, *offset)?;
            kept += part.len() as u64;
        }
        Ok(kept)
    }
}

/// The current content of the page starting at `start`, before any pending write to it:
/// backing bytes below `zero_from`, zeros from there on.
fn base_page(backing: &File, start: u64, zero_from: u64) -> io::Result<Box<[u8]>> {
    let mut page = vec![0u8; PAGE_BYTES].into_boxed_slice();
    if start < zero_from {
        let n = (zero_from - start).min(PAGE) as usize;
        read_full_at(backing, &mut page[..n], start)?;
    }
    Ok(page)
}

/// Fills `buf` from `file` at `offset`; bytes past the end of the file are left as they are.
/// Returns the bytes read.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> (tempfile::NamedTempFile, File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), content).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(tmp.path())
            .unwrap();
        (tmp, file)
    }

    fn all(p: &Pending, f: &File) -> Vec<u8> {
        p.read(f, 0, usize::MAX).unwrap()
    }

    #[test]
    fn reads_overlay_writes_on_the_backing_file() {
        let (_tmp, f) = backing(&[b'a'; 10_000]);
        let mut p = Pending::new(10_000);
        p.write(&f, 4090, b"XYZWVU").unwrap();
        p.write(&f, 12_000, b"end").unwrap();
        let got = all(&p, &f);
        assert_eq!(got.len(), 12_003);
        assert_eq!(&got[4085..4099], b"aaaaaXYZWVUaaa");
        assert!(got[10_000..12_000].iter().all(|&b| b == 0));
        assert_eq!(&got[12_000..], b"end");
        // The backing file is untouched until the write-back.
        assert_eq!(std::fs::read(_tmp.path()).unwrap(), vec![b'a'; 10_000]);
        p.write_back(&f).unwrap();
        assert_eq!(std::fs::read(_tmp.path()).unwrap(), got);
    }

    #[test]
    fn truncate_then_regrow_reads_zeros() {
        let (tmp, f) = backing(&[b'a'; 9000]);
        let mut p = Pending::new(9000);
        p.write(&f, 0, b"bb").unwrap();
        p.resize(100);
        p.resize(9000);
        let got = all(&p, &f);
        assert_eq!(&got[..2], b"bb");
        assert!(got[2..100].iter().all(|&b| b == b'a'));
        assert!(
            got[100..].iter().all(|&b| b == 0),
            "truncated bytes read as zeros"
        );
        // A page dirtied after the truncate reads zeros past the truncation point too.
        p.write(&f, 5000, b"c").unwrap();
        let got = all(&p, &f);
        assert!(got[4096..5000].iter().all(|&b| b == 0));
        assert_eq!(got[5000], b'c');
        p.write_back(&f).unwrap();
        assert_eq!(std::fs::read(tmp.path()).unwrap(), got);
    }

    #[test]
    fn shrink_inside_a_dirty_page_zeroes_its_tail() {
        let (tmp, f) = backing(b"");
        let mut p = Pending::new(0);
        p.write(&f, 0, &[b'x'; 3000]).unwrap();
        p.resize(10);
        p.resize(20);
        assert_eq!(all(&p, &f), [&[b'x'; 10][..], &[0; 10]].concat());
        p.write_back(&f).unwrap();
        assert_eq!(std::fs::read(tmp.path()).unwrap(), all(&p, &f));
    }

    #[test]
    fn write_back_of_sizes_alone() {
        let (tmp, f) = backing(&[b'a'; 9000]);
        let mut p = Pending::new(9000);
        p.resize(5);
        p.write_back(&f).unwrap();
        assert_eq!(std::fs::read(tmp.path()).unwrap(), b"aaaaa");
        let mut p = Pending::new(5);
        p.resize(3);
        p.resize(7);
        p.write_back(&f).unwrap();
        assert_eq!(std::fs::read(tmp.path()).unwrap(), b"aaa\0\0\0\0");
    }

    #[test]
    fn torn_prefix_applies_changes_in_order() {
        let (tmp, f) = backing(b"0123456789");
        let mut p = Pending::new(10);
        p.write(&f, 10, b"abcdef").unwrap();
        p.resize(4);
        p.write(&f, 4, b"XYZ").unwrap();
        assert_eq!(p.ops().len(), 3);
        assert_eq!(all(&p, &f), b"0123XYZ");
        // The first write whole, then half of nothing (a resize is kept or not).
        let kept = p.apply_torn(&f, TornPoint { ops: 1, bytes: 0 }).unwrap();
        assert_eq!(kept, 6);
        assert_eq!(std::fs::read(tmp.path()).unwrap(), b"0123456789abcdef");
        // A strict prefix of the last write after the resize.
        let (tmp, f) = backing(b"0123456789");
        let kept = p.apply_torn(&f, TornPoint { ops: 2, bytes: 2 }).unwrap();
        assert_eq!(kept, 8);
        assert_eq!(std::fs::read(tmp.path()).unwrap(), b"0123XY");
    }

    #[test]
    fn torn_point_stays_in_range() {
        let (_tmp, f) = backing(b"");
        let mut p = Pending::new(0);
        assert_eq!(p.torn_point(7, 9), TornPoint { ops: 0, bytes: 0 });
        p.write(&f, 0, b"abc").unwrap();
        for r in 0..20 {
            let t = p.torn_point(r, r * 7);
            assert!(t.ops <= 1);
            assert!(t.ops == 1 && t.bytes == 0 || t.ops == 0 && t.bytes < 3);
        }
    }

    #[test]
    fn memory_bound_counts_touched_pages() {
        assert_eq!(Pending::memory_bytes_for_write(0, 0), 0);
        assert_eq!(Pending::memory_bytes_for_write(0, 1), 1 + PAGE);
        assert_eq!(Pending::memory_bytes_for_write(4095, 2), 2 + 2 * PAGE);
        let (_tmp, f) = backing(b"");
        let mut p = Pending::new(0);
        p.write(&f, 4095, b"ab").unwrap();
        assert_eq!(p.memory_bytes(), Pending::memory_bytes_for_write(4095, 2));
    }
}
