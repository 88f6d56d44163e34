//! The fault file system itself, mounted for real: what survives a power cut and what does
//! not. Its own harness (`harness = false`) so that a machine without FUSE reports these tests
//! as ignored, not passed (and `CI=true` makes that a failure).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_faultfs::harness::{self, Test};
use cairn_faultfs::{Cut, FaultFs, Mounted};

fn main() {
    harness::main(
        "faultfs",
        &[
            Test {
                name: "fsynced_write_survives_a_cut",
                run: fsynced_write_survives_a_cut,
            },
            Test {
                name: "unsynced_write_is_gone_after_a_cut",
                run: unsynced_write_is_gone_after_a_cut,
            },
            Test {
                name: "rename_keeps_pending_data_with_the_file",
                run: rename_keeps_pending_data_with_the_file,
            },
            Test {
                name: "truncate_then_regrow_reads_zeros",
                run: truncate_then_regrow_reads_zeros,
            },
            Test {
                name: "torn_cut_keeps_a_prefix",
                run: torn_cut_keeps_a_prefix,
            },
            Test {
                name: "metadata_passes_through_at_once",
                run: metadata_passes_through_at_once,
            },
            Test {
                name: "fallocate_allocates_and_grows_pending",
                run: fallocate_allocates_and_grows_pending,
            },
        ],
    );
}

/// A mount over a fresh backing directory; the mount goes first when dropped.
struct Fixture {
    mounted: Option<Mounted>,
    _backing: tempfile::TempDir,
    _mountpoint: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let backing = tempfile::tempdir().unwrap();
        let mountpoint = tempfile::tempdir().unwrap();
        let mounted = FaultFs::mount(backing.path(), mountpoint.path()).unwrap();
        Self {
            mounted: Some(mounted),
            _backing: backing,
            _mountpoint: mountpoint,
        }
    }

    fn fs(&self) -> &Mounted {
        self.mounted.as_ref().unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.fs().path().join(name)
    }

    /// Cuts power and brings the file system back up.
    fn cut(&mut self, cut: Cut) -> cairn_faultfs::CutReport {
        let mounted = self.mounted.take().unwrap();
        let report = mounted.power_cut(cut).unwrap();
        let probe = fs::read_dir(mounted.path()).map(|d| d.count());
        assert_eq!(
            probe.unwrap_err().raw_os_error(),
            Some(libc::EIO),
            "after a cut every operation fails"
        );
        self.mounted = Some(mounted.remount().unwrap());
        report
    }
}

fn write_file(path: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    if sync {
        f.sync_all().unwrap();
    }
}

fn fsynced_write_survives_a_cut() {
    let mut fx = Fixture::new();
    let path = fx.path("f");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" and not").unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"durable and not");
    let stats = fx.fs().stats();
    assert_eq!(stats.fsyncs, 1);
    assert_eq!(stats.bytes_written, 15);
    assert_eq!(stats.bytes_synced, 7);
    let report = fx.cut(Cut::DropAll);
    assert_eq!((report.files, report.bytes_dropped), (1, 8));
    assert_eq!(fs::read(&path).unwrap(), b"durable");
    assert_eq!(fs::metadata(&path).unwrap().len(), 7);
}

fn unsynced_write_is_gone_after_a_cut() {
    let mut fx = Fixture::new();
    let path = fx.path("f");
    write_file(&path, &[7u8; 100_000], false);
    // Before the cut, reads and stat see the pending data; the backing file has none of it.
    assert_eq!(fs::read(&path).unwrap(), vec![7u8; 100_000]);
    assert_eq!(fs::metadata(&path).unwrap().len(), 100_000);
    assert_eq!(fs::metadata(fx.fs().backing().join("f")).unwrap().len(), 0);
    assert!(fx.fs().stats().pending_bytes >= 100_000);
    let report = fx.cut(Cut::DropAll);
    assert_eq!(report.bytes_dropped, 100_000);
    // The file's creation is metadata, durable at once; its data is gone.
    assert_eq!(fs::read(&path).unwrap(), b"");
    assert_eq!(fx.fs().stats().pending_bytes, 0);
}

fn rename_keeps_pending_data_with_the_file() {
    let mut fx = Fixture::new();
    let (tmp, target) = (fx.path("log.tmp"), fx.path("log"));
    write_file(&target, b"old target", true);
    write_file(&tmp, b"new content", false);
    fs::rename(&tmp, &target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"new content");
    let pending = fx.fs().pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].path.as_deref(), Some(Path::new("log")));
    assert_eq!((pending[0].size, pending[0].bytes), (11, 11));
    // An fsync under the new name writes the data that was written under the old one.
    File::open(&target).unwrap().sync_all().unwrap();
    // And data written after the rename, never synced, is lost with the cut.
    let f = OpenOptions::new().write(true).open(&target).unwrap();
    f.write_all_at(b"NEW", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(&target).unwrap(), b"NEW content");
    fx.cut(Cut::DropAll);
    assert_eq!(fs::read(&target).unwrap(), b"new content");
    assert!(!tmp.exists());

    // A recycled file (RocksDB's WAL): renamed, then overwritten in place without a sync.
    let (old, new) = (fx.path("000004.log"), fx.path("000009.log"));
    write_file(&old, &[b'o'; 8192], true);
    fs::rename(&old, &new).unwrap();
    let f = OpenOptions::new().write(true).open(&new).unwrap();
    f.write_all_at(&[b'n'; 100], 0).unwrap();
    drop(f);
    fx.cut(Cut::DropAll);
    assert_eq!(fs::read(&new).unwrap(), vec![b'o'; 8192]);
}

fn truncate_then_regrow_reads_zeros() {
    let mut fx = Fixture::new();
    let path = fx.path("f");
    write_file(&path, &[b'a'; 10_000], true);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(10).unwrap();
    f.set_len(6000).unwrap();
    let expected = [&[b'a'; 10][..], &[0u8; 5990]].concat();
    assert_eq!(fs::read(&path).unwrap(), expected);
    // Truncation is data: unsynced, the cut restores the old content.
    drop(f);
    fx.cut(Cut::DropAll);
    assert_eq!(fs::read(&path).unwrap(), vec![b'a'; 10_000]);
    // Synced, the zeros are durable.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(10).unwrap();
    f.set_len(6000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fx.cut(Cut::DropAll);
    assert_eq!(fs::read(&path).unwrap(), expected);
}

fn torn_cut_keeps_a_prefix() {
    let chunks: Vec<Vec<u8>> = (0..50u8).map(|i| vec![b'A' + i % 26; 300]).collect();
    let all = chunks.concat();
    let mut kept_lengths = Vec::new();
    for seed in 1..=6 {
        let mut fx = Fixture::new();
        let path = fx.path("wal");
        write_file(&path, b"synced|", true);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        for chunk in &chunks {
            f.write_all(chunk).unwrap();
        }
        drop(f);
        let report = fx.cut(Cut::Torn { seed });
        let got = fs::read(&path).unwrap();
        let tail = got.strip_prefix(b"synced|").expect("the synced part stays");
        assert_eq!(
            tail,
            &all[..tail.len()],
            "seed {seed}: a prefix, in write order"
        );
        assert_eq!(report.bytes_kept, tail.len() as u64);
        assert_eq!(report.bytes_kept + report.bytes_dropped, all.len() as u64);
        kept_lengths.push(tail.len());
    }
    kept_lengths.sort_unstable();
    kept_lengths.dedup();
    assert!(
        kept_lengths.len() > 1,
        "different seeds tear at different points: {kept_lengths:?}"
    );
    assert!(
        kept_lengths.iter().any(|&n| n % 300 != 0),
        "some tear falls inside a write: {kept_lengths:?}"
    );
}

fn metadata_passes_through_at_once() {
    let mut fx = Fixture::new();
    fs::create_dir(fx.path("d")).unwrap();
    write_file(&fx.path("d/a"), b"a", false);
    write_file(&fx.path("d/b"), b"b", false);
    fs::remove_file(fx.path("d/b")).unwrap();
    fs::create_dir(fx.path("gone")).unwrap();
    fs::remove_dir(fx.path("gone")).unwrap();
    let names = |fx: &Fixture| {
        let mut n: Vec<String> = fs::read_dir(fx.path("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&fx), ["a"]);
    File::open(fx.path("d")).unwrap().sync_all().unwrap();
    assert_eq!(fx.fs().stats().dir_fsyncs, 1);
    fx.cut(Cut::DropAll);
    assert_eq!(names(&fx), ["a"]);
    assert!(!fx.path("gone").exists());
    assert_eq!(fs::read(fx.path("d/a")).unwrap(), b"");
    let statfs = statfs_blocks(fx.fs().path());
    assert!(statfs > 0, "statfs answers");
}

fn fallocate_allocates_and_grows_pending() {
    let mut fx = Fixture::new();
    let path = fx.path("f");
    write_file(&path, b"x", true);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    // RocksDB preallocates WAL and table files this way.
    // SAFETY: fallocate on a descriptor owned by `f`.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(fs::metadata(&path).unwrap().len(), 1);
    // SAFETY: as above.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 5000) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(fs::metadata(&path).unwrap().len(), 5000);
    drop(f);
    fx.cut(Cut::DropAll);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        1,
        "the growth was pending"
    );
}

/// Total blocks that statfs reports for `path`.
fn statfs_blocks(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: an all-zero statvfs is valid; `c` is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_blocks
}
