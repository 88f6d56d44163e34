//! The workspace lock: one opener at a time, and the next one is told who holds it; and
//! [`RecordLock`], the same kind of lock for other files (partial directories' markers).
//!
//! A POSIX record lock (`fcntl(F_SETLK)`) over all of `<data>/cairn.lock`, which holds the
//! holder's pid for messages. The kernel drops it when the holder dies, even by SIGKILL, so a
//! crash never leaves a stale lock behind.
//!
//! Why a record lock and not `flock`: a `flock` belongs to the open file, and every child
//! process holds a copy of this process's descriptors from its `fork` until its `exec` closes
//! the close-on-exec ones. A hook being spawned at the moment its leader is killed (or a
//! workspace closed while a hook starts) kept such a lock held after its holder was gone, and the
//! next opener was refused. A record lock belongs to the process and is never inherited, so only
//! a live opener ever holds it.
//!
//! Record locks have two properties this module works around:
//! - they do not exclude within one process, so the open lock files of this process are kept in
//!   [`HELD`] and a second opener in the same process is refused from there;
//! - closing *any* descriptor of the file drops the process's lock on it, so the file is never
//!   opened while this process holds it (the check against [`HELD`] comes first), and a holder
//!   closes its descriptor before it leaves [`HELD`].

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use crate::error::StoreError;

/// The lock files this process holds, by device and inode (one file reached through two paths,
/// a bind mount or a hard link, is one lock).
static HELD: Mutex<BTreeSet<FileId>> = Mutex::new(BTreeSet::new());

/// A file's device and inode.
type FileId = (u64, u64);

fn held() -> std::sync::MutexGuard<'static, BTreeSet<FileId>> {
    // A panic while the set was held leaves it consistent (inserts and removes are single
    // calls), so a poisoned lock is still good to use.
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A record lock this process holds over the whole of one file; released when dropped.
#[derive(Debug)]
pub(crate) struct RecordLock {
    /// `None` only while dropping: the descriptor is closed before `id` leaves [`HELD`].
    file: Option<File>,
    id: FileId,
}

/// What trying to take a record lock found.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Taken.
    Taken(RecordLock),
    /// Held by a live process: this one or another; `pid` is what the file says (the holder
    /// writes its pid there), empty if it says nothing.
    Held {
        /// The holder's pid, as the file gives it.
        pid: String,
    },
}

/// How [`RecordLock::try_take`] reaches the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// The file exists (`NotFound` otherwise), or is created if missing.
    Existing,
    /// The file must not exist yet: it is created.
    New,
}

impl RecordLock {
    /// Tries to lock the file at `path` without waiting. The file is never opened while this
    /// process holds its lock (that open's close would drop it): [`HELD`] is asked first.
    pub(crate) fn try_take(path: &Path, reach: Reach) -> io::Result<Attempt> {
        let mut held = held();
        if reach == Reach::Existing {
            let id = std::fs::metadata(path).map(|m| (m.dev(), m.ino()))?;
            if held.contains(&id) {
                return Ok(Attempt::Held {
                    pid: std::process::id().to_string(),
                });
            }
        }
        let mut file = match reach {
            Reach::Existing => OpenOptions::new().read(true).write(true).open(path)?,
            Reach::New => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)?,
        };
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        if held.contains(&id) {
            // `path` was replaced by a file this process holds between the check and the open:
            // closing this descriptor would drop that lock, so it is kept open instead.
            std::mem::forget(file);
            return Ok(Attempt::Held {
                pid: std::process::id().to_string(),
            });
        }
        if !lock_whole(&file)? {
            let mut pid = String::new();
            let _ = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut pid));
            return Ok(Attempt::Held {
                pid: pid.trim().to_owned(),
            });
        }
        held.insert(id);
        Ok(Attempt::Taken(RecordLock {
            file: Some(file),
            id,
        }))
    }

    /// The locked file (to write the holder's pid into). Never to be closed by the caller.
    pub(crate) fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("a record lock keeps its file until it is dropped")
    }

    /// Whether the locked file is still the one at `path` (not unlinked or replaced since).
    pub(crate) fn is_at(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.id)
    }
}

impl Drop for RecordLock {
    fn drop(&mut self) {
        let mut held = held();
        // Closing the descriptor drops the record lock; only then may another opener in this
        // process open the file (its close would otherwise drop a lock it does not hold yet).
        drop(self.file.take());
        held.remove(&self.id);
    }
}

/// Held for as long as the workspace is open.
#[derive(Debug)]
pub struct WorkspaceLock {
    /// Held until dropped (never read: holding it is the point).
    _lock: RecordLock,
}

impl WorkspaceLock {
    /// Takes the lock at `path`, or says which pid holds it.
    pub fn acquire(path: &Path) -> Result<Self, StoreError> {
        {
            // Created if missing, under HELD (see `file_id`).
            let _held = held();
            file_id(path)?;
        }
        let mut lock = match RecordLock::try_take(path, Reach::Existing) {
            Ok(Attempt::Taken(lock)) => lock,
            Ok(Attempt::Held { pid }) => return Err(StoreError::Locked { pid }),
            Err(e) => {
                return Err(StoreError::io(
                    format!("lock the lock file {}", path.display()),
                    e,
                ))
            }
        };
        // The pid is written over the old one, then the file cut to it: on a full disk, bytes
        // within the file's existing block still fit (cutting first would give the block up).
        // The pid is only for messages: the record lock is the lock, so a pid that cannot be
        // written is a warning, not a failure (reads must open on a full disk).
        let pid = format!("{}\n", std::process::id());
        let file = lock.file();
        let written = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .and_then(|_| file.set_len(pid.len() as u64));
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "could not write the pid into the lock file");
        }
        Ok(Self { _lock: lock })
    }
}

/// The device and inode of the lock file at `path`, creating it first if it is missing. Called
/// with [`HELD`] locked. Creating opens and closes a descriptor of the file, which would drop a
/// record lock this process held on it: but a file this process holds a lock on exists, so it
/// is only created when no lock on it can be held here.
fn file_id(path: &Path) -> Result<FileId, StoreError> {
    let stat = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    match stat(path) {
        Ok(id) => return Ok(id),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StoreError::io(
                format!("stat lock file {}", path.display()),
                e,
            ))
        }
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io(format!("create lock file {}", path.display()), e))?;
    stat(path).map_err(|e| StoreError::io(format!("stat lock file {}", path.display()), e))
}

/// Takes a write lock over the whole of `file` without waiting; `false` when another process
/// holds one.
fn lock_whole(file: &File) -> io::Result<bool> {
    // SAFETY: a zeroed `flock` struct is a valid value (all integer fields); the fields that
    // matter are set below.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request.l_start = 0;
    request.l_len = 0; // to the end of the file, however long it grows
    loop {
        // SAFETY: fcntl on a descriptor owned by `file`, which outlives the call, with a
        // pointer to a `flock` struct that lives across it.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &request) };
        if rc == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EAGAIN) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect_locked(result: Result<WorkspaceLock, StoreError>) -> String {
        match result {
            Err(StoreError::Locked { pid }) => pid,
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn a_child_holding_a_copy_of_the_descriptor_does_not_hold_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.lock");
        let lock = WorkspaceLock::acquire(&path).unwrap();
        // A copy of the descriptor without close-on-exec, inherited by a child that lives on:
        // the state of a hook between its fork and its exec, frozen.
        let fd = lock._lock.file.as_ref().unwrap().as_raw_fd();
        // SAFETY: dup of a descriptor we own; the copy is closed below.
        let copy = unsafe { libc::dup(fd) };
        assert!(copy >= 0);
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // SAFETY: closing the copy made above.
        unsafe { libc::close(copy) };
        drop(lock);
        // The child is still running with the descriptor open, and the lock is free at once.
        let again = WorkspaceLock::acquire(&path);
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn a_second_opener_in_this_process_is_refused_and_does_not_release_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.lock");
        let _held = WorkspaceLock::acquire(&path).unwrap();
        assert_eq!(
            expect_locked(WorkspaceLock::acquire(&path)),
            std::process::id().to_string()
        );
        // Another spelling of the same file, or a hard link to it, is the same lock.
        let other = dir.path().join(".").join("cairn.lock");
        expect_locked(WorkspaceLock::acquire(&other));
        let link = dir.path().join("link.lock");
        std::fs::hard_link(&path, &link).unwrap();
        expect_locked(WorkspaceLock::acquire(&link));
        // The refusals opened nothing that could have dropped the record lock: another process
        // is still refused.
        assert!(held_by_another_process(&path));
    }

    #[test]
    fn a_released_lock_is_free_for_this_process_and_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.lock");
        drop(WorkspaceLock::acquire(&path).unwrap());
        assert!(!held_by_another_process(&path));
        let again = WorkspaceLock::acquire(&path).unwrap();
        assert!(held_by_another_process(&path));
        drop(again);
    }

    /// Whether the record lock on `path` would refuse a process other than this one: `F_GETLK`
    /// reports a conflicting lock of another process only, so it is asked by a child (`sh`
    /// cannot take record locks, and this process cannot see its own).
    fn held_by_another_process(path: &Path) -> bool {
        // This test process forks a copy of itself that probes and exits at once: the child has
        // its own (empty) set of record locks, so this process's lock conflicts with it.
        // SAFETY: the forked child calls only async-signal-safe functions (open, fcntl, _exit).
        let probe = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: in the child, async-signal-safe calls only, on a path made before fork.
            unsafe {
                let fd = libc::open(probe.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    libc::_exit(2);
                }
                let mut request: libc::flock = std::mem::zeroed();
                request.l_type = libc::F_WRLCK as libc::c_short;
                request.l_whence = libc::SEEK_SET as libc::c_short;
                let rc = libc::fcntl(fd, libc::F_GETLK, &mut request);
                if rc != 0 {
                    libc::_exit(3);
                }
                libc::_exit(if request.l_type == libc::F_UNLCK as libc::c_short {
                    0
                } else {
                    1
                });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status), "the probe did not exit: {status}");
        match libc::WEXITSTATUS(status) {
            0 => false,
            1 => true,
            code => panic!("the probe failed with {code}"),
        }
    }
}
