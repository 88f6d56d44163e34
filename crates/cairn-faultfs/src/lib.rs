//! A FUSE file system for power-cut tests: it keeps every byte written to a file in memory
//! until that file is fsynced, and on command cuts power, throwing away everything not
//! fsynced. LazyFS does this in C++ (Jepsen found lost writes in etcd with it); this is the
//! same idea, small, in Rust, mounted and driven from the test process itself.
//!
//! SIGKILL keeps the page cache, so a crash test passes even when nothing is ever fsynced;
//! under this file system, an acknowledged write that was not fsynced is gone after
//! [`Mounted::power_cut`].
//!
//! What it models, and what it does not:
//! - **File data** (writes, and size changes: truncate, and growth by `fallocate`) is cached
//!   per inode until `fsync`/`fdatasync` of that file, which writes it to the backing file and
//!   fsyncs the backing file. Reads and `stat` see the cached data. The cache follows the file
//!   across renames (RocksDB recycles WAL files by renaming them).
//! - **Metadata** (create, mkdir, unlink, rmdir, rename, chmod, chown, times) goes to the
//!   backing directory at once and so survives a cut as if it had been fsynced, as in LazyFS's
//!   default mode. A test here therefore cannot find a missing directory fsync.
//! - A cut drops all of a file's cached changes ([`Cut::DropAll`]), or keeps a random prefix of
//!   them in the order they were made ([`Cut::Torn`]), the last one possibly cut mid-write: a
//!   torn tail. Files are torn independently.
//! - After a cut every operation fails with `EIO` (the machine is off) until
//!   [`Mounted::unmount`]; [`Mounted::remount`] then "boots" the backing directory again.
//!   Files are opened for direct IO and the kernel gets zero cache TTLs, so no kernel cache
//!   serves data that a cut threw away, and the unmount drops whatever is left.
//!
//! As root the mount is a `mount(2)` call; otherwise fuser runs `fusermount3` (Debian's
//! `fuse3` package). [`FaultFs::available`] says why FUSE cannot be used here, if it cannot.
//! [`harness`] runs test binaries (`harness = false`) whose tests need FUSE, reporting them
//! as ignored when it is missing (and failed under `CI=true`).
//!
//! This crate is for tests only; no shipped crate depends on it.

mod fs;
pub mod harness;
mod pending;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use fuser::{BackgroundSession, Config, MountOption};

pub use pending::PAGE_BYTES;

/// Memory one mount may hold for unsynced data (written bytes plus their dirty pages). A write
/// past it fails with `ENOSPC`: a real page cache would write back instead, which this model
/// never does on its own.
pub const PENDING_BYTES_MAX: u64 = 1 << 30;

/// Errors of mounting, unmounting and cutting power.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing directory cannot be used.
    #[error("backing directory {path}: {source}")]
    Backing {
        /// The backing directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The FUSE mount failed.
    #[error("mount faultfs at {mountpoint}: {source}")]
    Mount {
        /// Where it was to be mounted.
        mountpoint: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The unmount failed (a file on the mount is still open?). The mount was detached lazily.
    #[error("unmount faultfs at {mountpoint}: {source}")]
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A torn cut could not write a file's kept prefix to its backing file.
    #[error("power cut: write the torn prefix of {path}: {source}")]
    Cut {
        /// The backing file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// How a power cut treats each file's unsynced changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every unsynced byte is lost.
    DropAll,
    /// Each file keeps a random prefix of its unsynced changes, in the order they were made,
    /// the last kept write possibly cut short (a torn tail). `seed` decides the prefixes.
    Torn {
        /// Seed of the prefix choices.
        seed: u64,
    },
}

/// What a power cut did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced changes.
    pub files: u64,
    /// Bytes of unsynced writes thrown away (a byte written twice counts twice).
    pub bytes_dropped: u64,
    /// Bytes of unsynced writes a torn cut kept.
    pub bytes_kept: u64,
}

/// A file holding unsynced data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingFile {
    /// Its path under the mount point; `None` if it was unlinked while open.
    pub path: Option<PathBuf>,
    /// Its size as its writers see it.
    pub size: u64,
    /// Bytes written to it since its last fsync (a byte written twice counts twice).
    pub bytes: u64,
}

/// Counters since the mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write calls.
    pub writes: u64,
    /// Bytes written (all pending until their file is fsynced).
    pub bytes_written: u64,
    /// `fsync`/`fdatasync` calls on files.
    pub fsyncs: u64,
    /// `fsync` calls on directories (passed through; metadata is durable at once anyway).
    pub dir_fsyncs: u64,
    /// Bytes written to backing files by fsyncs.
    pub bytes_synced: u64,
    /// Memory held for unsynced data now.
    pub pending_bytes: u64,
    /// The last power cut, if there was one.
    pub last_cut: Option<CutReport>,
}

/// The file system's entry points.
#[derive(Debug)]
pub struct FaultFs;

impl FaultFs {
    /// Mounts a fault file system at `mountpoint` over the directory `backing` (both must
    /// exist), served from a background thread of this process until [`Mounted::unmount`] or
    /// drop. `backing` must be one file system (inodes are told apart by number).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Mounted, Error> {
        let backing_error = |source| Error::Backing {
            path: backing.to_owned(),
            source,
        };
        let root = backing.canonicalize().map_err(backing_error)?;
        let meta = std::fs::metadata(&root).map_err(backing_error)?;
        if !meta.is_dir() {
            return Err(backing_error(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        let state = Arc::new(Mutex::new(fs::State::new(root.clone(), meta.ino())));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("cairn-faultfs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(
            fs::Fs {
                state: Arc::clone(&state),
            },
            mountpoint,
            &config,
        )
        .map_err(|source| Error::Mount {
            mountpoint: mountpoint.to_owned(),
            source,
        })?;
        Ok(Mounted {
            session: Some(session),
            state,
            backing: root,
            mountpoint: mountpoint.to_owned(),
        })
    }

    /// `Ok` if FUSE can be mounted here, else why not: no `/dev/fuse`, `/dev/fuse` not
    /// openable, not root and no `fusermount3`, or a trial mount failing (a container without
    /// the right to mount).
    pub fn available() -> Result<(), String> {
        let dev = Path::new("/dev/fuse");
        if !dev.exists() {
            return Err(
                "no /dev/fuse (no FUSE kernel module, or not passed to this container)".into(),
            );
        }
        if let Err(e) = OpenOptions::new().read(true).write(true).open(dev) {
            return Err(format!("cannot open /dev/fuse: {e}"));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root && !on_path("fusermount3") && !on_path("fusermount") {
            return Err("not root, and no fusermount3 on PATH (Debian package fuse3)".into());
        }
        let scratch = |what| move |e: io::Error| format!("trial mount: {what}: {e}");
        let backing = tempfile::tempdir().map_err(scratch("backing tempdir"))?;
        let mountpoint = tempfile::tempdir().map_err(scratch("mountpoint tempdir"))?;
        let mounted = Self::mount(backing.path(), mountpoint.path())
            .map_err(|e| format!("trial mount failed: {e}"))?;
        std::fs::write(mounted.path().join("probe"), b"probe").map_err(scratch("write"))?;
        mounted
            .unmount()
            .map_err(|e| format!("trial unmount failed: {e}"))
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// A mounted fault file system. Unmounted on drop (errors then ignored).
#[derive(Debug)]
pub struct Mounted {
    session: Option<BackgroundSession>,
    state: Arc<Mutex<fs::State>>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl Mounted {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory (canonical).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Cuts power: throws away every unsynced byte of every file (or keeps torn prefixes, see
    /// [`Cut`]). From here on every operation on the mount fails with `EIO`; stop whatever
    /// uses it, then [`Mounted::remount`] or [`Mounted::unmount`].
    pub fn power_cut(&self, cut: Cut) -> Result<CutReport, Error> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cut(cut)
    }

    /// The files holding unsynced data now, most bytes first: what a cut would drop.
    pub fn pending(&self) -> Vec<PendingFile> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending_files()
    }

    /// The counters since the mount.
    pub fn stats(&self) -> Stats {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats()
    }

    /// Unmounts and waits for the serving thread to end. Fails (and detaches the mount
    /// lazily) if something still has a file open on it.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.unmount_inner()
    }

    /// Unmounts, then mounts the same backing directory at the same place: after a cut, the
    /// machine coming back up.
    pub fn remount(mut self) -> Result<Mounted, Error> {
        self.unmount_inner()?;
        FaultFs::mount(&self.backing, &self.mountpoint)
    }

    fn unmount_inner(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            // The serving thread's last read can find the connection aborted rather than
            // gone (`ENODEV`, which fuser takes as the clean end) when the unmount tears it
            // down; the unmount itself succeeded, as umount(2) never fails so.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            Err(source) => {
                lazy_detach(&self.mountpoint);
                Err(Error::Unmount {
                    mountpoint: self.mountpoint.clone(),
                    source,
                })
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

/// Detaches a mount that a plain unmount could not remove; it goes once nothing uses it.
fn lazy_detach(mountpoint: &Path) {
    let Ok(path) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a NUL-terminated path; umount2 reads it and nothing else.
    unsafe {
        libc::umount2(path.as_ptr(), libc::MNT_DETACH);
    }
}
