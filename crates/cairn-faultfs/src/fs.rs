//! The FUSE file system: metadata operations pass through to the backing directory at once;
//! file data written since a file's last fsync stays in memory ([`Pending`], per inode) until
//! the file is fsynced, and a power cut throws it away.
//!
//! Inodes are this file system's own numbers, each tied to a backing inode, and each knows its
//! parent and name, so a path is found by walking up: a rename moves a file's pending data with
//! it. Hard links are not supported (a backing inode has one name here). Inodes are kept until
//! unlinked and closed or until unmount (the kernel's `forget` is ignored).

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::pending::{read_full_at, Pending};
use crate::{Cut, CutReport, Error, PendingFile, Stats, PENDING_BYTES_MAX};

/// The kernel caches nothing: every lookup and getattr comes here, so nothing it saw before a
/// power cut can answer for the file system after it.
const TTL: Duration = Duration::ZERO;

/// Path components followed from an inode up to the root before giving up (`ELOOP`).
const PATH_DEPTH_MAX: usize = 4096;

const ROOT: u64 = INodeNo::ROOT.0;

/// One inode of this file system.
#[derive(Debug)]
struct Node {
    parent: u64,
    name: OsString,
    /// Open file handles on it.
    open: u32,
    /// False once unlinked (or replaced by a rename); the node lives on while open.
    linked: bool,
    pending: Option<Pending>,
}

/// An open file: the backing file, opened read-write when permitted.
#[derive(Debug)]
struct Handle {
    ino: u64,
    file: File,
}

/// One directory entry as listed at `opendir`.
#[derive(Debug)]
struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// Everything the file system knows; shared with the [`crate::Mounted`] handle, which cuts
/// power and reads the counters.
#[derive(Debug)]
pub(crate) struct State {
    root: PathBuf,
    nodes: HashMap<u64, Node>,
    by_backing: HashMap<u64, u64>,
    files: HashMap<u64, Handle>,
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_ino: u64,
    next_fh: u64,
    /// Set by a power cut: every operation fails with `EIO` until unmount.
    dead: bool,
    /// Memory held by all pending data.
    pending_bytes: u64,
    stats: Stats,
}

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

impl State {
    pub(crate) fn new(root: PathBuf, root_backing_ino: u64) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
                open: 0,
                linked: true,
                pending: None,
            },
        );
        Self {
            root,
            nodes,
            by_backing: HashMap::from([(root_backing_ino, ROOT)]),
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            dead: false,
            pending_bytes: 0,
            stats: Stats::default(),
        }
    }

    /// The counters, with the pending bytes as of now.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            pending_bytes: self.pending_bytes,
            ..self.stats
        }
    }

    /// The files holding unsynced data now, by path under the mount (`None` once unlinked).
    pub(crate) fn pending_files(&self) -> Vec<PendingFile> {
        let mut files: Vec<PendingFile> = self
            .nodes
            .iter()
            .filter_map(|(&ino, node)| {
                let pending = node.pending.as_ref()?;
                let path = self.path(ino).ok();
                Some(PendingFile {
                    path: path.and_then(|p| p.strip_prefix(&self.root).ok().map(Path::to_owned)),
                    size: pending.size(),
                    bytes: pending.data_bytes(),
                })
            })
            .collect();
        files.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
        files
    }

    fn alive(&self) -> Res<()> {
        if self.dead {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn path(&self, ino: u64) -> Res<PathBuf> {
        let mut names = Vec::new();
        let mut at = ino;
        for _ in 0..PATH_DEPTH_MAX {
            if at == ROOT {
                let mut path = self.root.clone();
                path.extend(names.iter().rev());
                return Ok(path);
            }
            let node = self.nodes.get(&at).ok_or(Errno::ENOENT)?;
            if !node.linked {
                return Err(Errno::ENOENT);
            }
            names.push(&node.name);
            at = node.parent;
        }
        Err(Errno::ELOOP)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    /// The inode of backing inode `backing_ino` named `name` in `parent`, made if new.
    fn intern(&mut self, parent: u64, name: &OsStr, backing_ino: u64) -> u64 {
        if let Some(&ino) = self.by_backing.get(&backing_ino) {
            if ino == ROOT {
                return ino;
            }
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.parent = parent;
                node.name = name.to_owned();
                return ino;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_owned(),
                open: 0,
                linked: true,
                pending: None,
            },
        );
        self.by_backing.insert(backing_ino, ino);
        ino
    }

    /// The backing inode `backing_ino` lost its name: its node goes once no handle has it
    /// open, and its pending data with it.
    fn unlinked(&mut self, backing_ino: u64) {
        let Some(ino) = self.by_backing.remove(&backing_ino) else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.linked = false;
            if node.open == 0 {
                self.remove_node(ino);
            }
        }
    }

    fn remove_node(&mut self, ino: u64) {
        if let Some(node) = self.nodes.remove(&ino) {
            if let Some(p) = node.pending {
                self.pending_bytes -= p.memory_bytes();
            }
        }
    }

    /// Any open backing file of `ino`: the one of `fh` if given.
    fn file_of(&self, ino: u64, fh: Option<u64>) -> Option<&File> {
        if let Some(h) = fh.and_then(|fh| self.files.get(&fh)) {
            return Some(&h.file);
        }
        self.files.values().find(|h| h.ino == ino).map(|h| &h.file)
    }

    fn metadata(&self, ino: u64, fh: Option<u64>) -> Res<Metadata> {
        match self.file_of(ino, fh) {
            Some(file) => file.metadata().map_err(errno),
            None => fs::symlink_metadata(self.path(ino)?).map_err(errno),
        }
    }

    fn attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        let size = self
            .nodes
            .get(&ino)
            .and_then(|n| n.pending.as_ref())
            .map_or(meta.len(), Pending::size);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        self.alive()?;
        let meta = fs::symlink_metadata(self.child(parent, name)?).map_err(errno)?;
        let ino = self.intern(parent, name, meta.ino());
        Ok(self.attr(ino, &meta))
    }

    fn getattr(&self, ino: u64, fh: Option<u64>) -> Res<FileAttr> {
        self.alive()?;
        let meta = self.metadata(ino, fh)?;
        Ok(self.attr(ino, &meta))
    }

    /// Sets the writers' size of `ino` to `size` (pending, like a write).
    fn resize(&mut self, ino: u64, fh: Option<u64>, size: u64) -> Res<()> {
        let backing_len = self.metadata(ino, fh)?.len();
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let pending = node
            .pending
            .get_or_insert_with(|| Pending::new(backing_len));
        let before = pending.memory_bytes();
        pending.resize(size);
        self.pending_bytes = self.pending_bytes - before + pending.memory_bytes();
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Res<FileAttr> {
        self.alive()?;
        let path = self.path(ino);
        if let Some(mode) = mode {
            let perm = Permissions::from_mode(mode & 0o7777);
            match self.file_of(ino, fh) {
                Some(file) => file.set_permissions(perm),
                None => fs::set_permissions(path.clone()?, perm),
            }
            .map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            match self.file_of(ino, fh) {
                Some(file) => std::os::unix::fs::fchown(file, uid, gid),
                None => std::os::unix::fs::lchown(path.clone()?, uid, gid),
            }
            .map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            set_times(&path?, atime, mtime).map_err(errno)?;
        }
        if let Some(size) = size {
            self.resize(ino, fh, size)?;
        }
        self.getattr(ino, fh)
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32, umask: u32) -> Res<FileAttr> {
        self.alive()?;
        let path = self.child(parent, name)?;
        fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&path)
            .map_err(errno)?;
        let meta = fs::symlink_metadata(&path).map_err(errno)?;
        let ino = self.intern(parent, name, meta.ino());
        Ok(self.attr(ino, &meta))
    }

    fn add_handle(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, Handle { ino, file });
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open += 1;
        }
        fh
    }

    fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Res<(FileAttr, u64)> {
        self.alive()?;
        let path = self.child(parent, name)?;
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let file = options.open(&path).map_err(errno)?;
        let meta = file.metadata().map_err(errno)?;
        let ino = self.intern(parent, name, meta.ino());
        let fh = self.add_handle(ino, file);
        // The file existed after all (a race with the kernel's lookup): truncation is data.
        if flags & libc::O_TRUNC != 0 && meta.len() > 0 {
            self.resize(ino, Some(fh), 0)?;
        }
        Ok((self.attr(ino, &meta), fh))
    }

    fn open(&mut self, ino: u64, flags: OpenFlags) -> Res<u64> {
        self.alive()?;
        let path = self.path(ino)?;
        // Read-write when permitted, whatever the caller asked: an fsync through any handle
        // writes the file's pending data back. `O_TRUNC` never arrives here (the kernel sends a
        // setattr instead), and no other flag matters to the backing file, which is only
        // written at an fsync.
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS)) => {
                let mut options = OpenOptions::new();
                match flags.acc_mode() {
                    OpenAccMode::O_RDONLY => options.read(true),
                    OpenAccMode::O_WRONLY => options.write(true),
                    OpenAccMode::O_RDWR => options.read(true).write(true),
                };
                options.open(&path).map_err(errno)?
            }
            Err(e) => return Err(errno(e)),
        };
        Ok(self.add_handle(ino, file))
    }

    fn read(&self, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        self.alive()?;
        let handle = self.files.get(&fh).ok_or(Errno::EBADF)?;
        let pending = self.nodes.get(&handle.ino).and_then(|n| n.pending.as_ref());
        match pending {
            Some(p) => p.read(&handle.file, offset, size as usize).map_err(errno),
            None => {
                let mut buf = vec![0u8; size as usize];
                let n = read_full_at(&handle.file, &mut buf, offset).map_err(errno)?;
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        self.alive()?;
        let handle = self.files.get(&fh).ok_or(Errno::EBADF)?;
        if self.pending_bytes + Pending::memory_bytes_for_write(offset, data.len())
            > PENDING_BYTES_MAX
        {
            return Err(Errno::ENOSPC);
        }
        let node = self.nodes.get_mut(&handle.ino).ok_or(Errno::ENOENT)?;
        let pending = match &mut node.pending {
            Some(p) => p,
            None => {
                let len = handle.file.metadata().map_err(errno)?.len();
                node.pending.insert(Pending::new(len))
            }
        };
        let before = pending.memory_bytes();
        pending.write(&handle.file, offset, data).map_err(errno)?;
        self.pending_bytes = self.pending_bytes - before + pending.memory_bytes();
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(data.len() as u32)
    }

    fn fsync(&mut self, fh: u64, datasync: bool) -> Res<()> {
        self.alive()?;
        let handle = self.files.get(&fh).ok_or(Errno::EBADF)?;
        let node = self.nodes.get_mut(&handle.ino).ok_or(Errno::ENOENT)?;
        if let Some(pending) = node.pending.take() {
            match pending.write_back(&handle.file) {
                Ok(n) => {
                    self.pending_bytes -= pending.memory_bytes();
                    self.stats.bytes_synced += n;
                }
                Err(e) => {
                    // Still pending (the overlay stays right whatever part was written).
                    node.pending = Some(pending);
                    return Err(errno(e));
                }
            }
        }
        if datasync {
            handle.file.sync_data()
        } else {
            handle.file.sync_all()
        }
        .map_err(errno)?;
        self.stats.fsyncs += 1;
        Ok(())
    }

    fn fsyncdir(&mut self, ino: u64) -> Res<()> {
        self.alive()?;
        File::open(self.path(ino)?)
            .and_then(|dir| dir.sync_all())
            .map_err(errno)?;
        self.stats.dir_fsyncs += 1;
        Ok(())
    }

    fn release(&mut self, fh: u64) {
        let Some(handle) = self.files.remove(&fh) else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(&handle.ino) {
            node.open = node.open.saturating_sub(1);
            if !node.linked && node.open == 0 {
                self.remove_node(handle.ino);
            }
        }
    }

    fn unlink(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        self.alive()?;
        let path = self.child(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(errno)?;
        if dir {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        }
        .map_err(errno)?;
        self.unlinked(meta.ino());
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        self.alive()?;
        if !flags.is_empty() {
            return Err(Errno::EINVAL);
        }
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let moved = fs::symlink_metadata(&from).map_err(errno)?;
        let replaced = fs::symlink_metadata(&to).ok();
        if replaced.as_ref().is_some_and(|r| r.ino() == moved.ino()) {
            return Ok(()); // the same file: rename(2) does nothing
        }
        fs::rename(&from, &to).map_err(errno)?;
        if let Some(replaced) = replaced {
            self.unlinked(replaced.ino());
        }
        // The node, and with it the pending data, follows the file.
        self.intern(new_parent, new_name, moved.ino());
        Ok(())
    }

    fn opendir(&mut self, ino: u64) -> Res<u64> {
        self.alive()?;
        let path = self.path(ino)?;
        let parent = self.nodes.get(&ino).map_or(ROOT, |n| n.parent);
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(&path).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = entry.file_type().map_err(errno)?;
            let name = entry.file_name();
            let child = self.intern(ino, &name, entry.ino());
            entries.push(DirEntry {
                ino: child,
                kind: FileType::from_std(kind).unwrap_or(FileType::RegularFile),
                name,
            });
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    fn statfs(&self) -> Res<libc::statvfs> {
        self.alive()?;
        let root = CString::new(self.root.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
        let mut out: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `root` is a NUL-terminated path and `out` a valid statvfs to fill.
        if unsafe { libc::statvfs(root.as_ptr(), &mut out) } != 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        Ok(out)
    }

    fn fallocate(&mut self, fh: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        self.alive()?;
        // Allocation is passed through; a growth of the size (mode 0) is data, pending like a
        // write. Punching holes, collapsing or zeroing ranges is not supported.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let handle = self.files.get(&fh).ok_or(Errno::EBADF)?;
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
            return Err(Errno::EINVAL);
        };
        // SAFETY: fallocate on a descriptor owned by `handle.file`, alive for the call.
        let rc = unsafe {
            libc::fallocate(handle.file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off, len)
        };
        if rc != 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            let ino = handle.ino;
            let end = offset.saturating_add(length);
            if end > self.getattr(ino, Some(fh))?.size {
                self.resize(ino, Some(fh), end)?;
            }
        }
        Ok(())
    }

    /// Cuts power: every pending byte is thrown away, or with [`Cut::Torn`] a random prefix
    /// of each file's changes is written to its backing file first. The file system is dead
    /// from here on.
    pub(crate) fn cut(&mut self, cut: Cut) -> Result<CutReport, Error> {
        self.dead = true;
        let mut report = CutReport::default();
        let mut inos: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.pending.is_some())
            .map(|(&ino, _)| ino)
            .collect();
        inos.sort_unstable();
        let mut rng = match cut {
            Cut::DropAll => None,
            Cut::Torn { seed } => Some(SplitMix64(seed)),
        };
        for ino in inos {
            let Some(pending) = self.nodes.get_mut(&ino).and_then(|n| n.pending.take()) else {
                continue;
            };
            report.files += 1;
            let kept = match &mut rng {
                None => 0,
                Some(rng) => {
                    let point = pending.torn_point(rng.next(), rng.next());
                    self.write_torn(ino, &pending, point)?
                }
            };
            report.bytes_kept += kept;
            report.bytes_dropped += pending.data_bytes() - kept;
        }
        self.pending_bytes = 0;
        self.stats.last_cut = Some(report);
        Ok(report)
    }

    fn write_torn(
        &self,
        ino: u64,
        pending: &Pending,
        point: crate::pending::TornPoint,
    ) -> Result<u64, Error> {
        let path = self.path(ino).ok();
        let failed = |source: io::Error| Error::Cut {
            path: path.clone().unwrap_or_default(),
            source,
        };
        let opened;
        let file = match self.file_of(ino, None) {
            Some(file) => file,
            None => {
                let path = path.clone().ok_or_else(|| {
                    failed(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no path to the file",
                    ))
                })?;
                opened = OpenOptions::new().write(true).open(path).map_err(failed)?;
                &opened
            }
        };
        let kept = pending.apply_torn(file, point).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        Ok(kept)
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nsecs.clamp(0, 999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            (d.as_secs() as libc::time_t, i64::from(d.subsec_nanos()))
        }
    };
    libc::timespec { tv_sec, tv_nsec }
}

fn set_times(path: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `path` is NUL-terminated and `times` holds the two timespecs utimensat reads.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A small deterministic generator (splitmix64), so a torn cut's seed names its outcome.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The [`Filesystem`] fuser drives: each call locks the state and replies.
pub(crate) struct Fs {
    pub(crate) state: Arc<Mutex<State>>,
}

impl Fs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every file is opened for direct IO: reads and writes come here instead of the kernel's
/// page cache, which would otherwise keep serving data a power cut threw away.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO;

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lock().lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result =
            self.lock()
                .setattr(ino.0, fh.map(|f| f.0), mode, uid, gid, size, atime, mtime);
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.lock().mkdir(parent.0, name, mode, umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.lock().unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .lock()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().open(ino.0, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.lock().write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.lock();
        if state.dead {
            return reply.error(Errno::EIO);
        }
        let Some(entries) = state.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.lock().fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.lock().statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.lock().create(parent.0, name, mode, umask, flags) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.lock().fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
