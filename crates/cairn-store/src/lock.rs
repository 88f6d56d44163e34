//! The workspace lock: one opener at a time, and the next one is told who holds it.
//!
//! An advisory `flock` on `<data>/cairn.lock`, which holds the holder's pid. The kernel drops the
//! lock when the holder dies, even by SIGKILL, so a crash never leaves a stale lock behind.
//!
//! A `flock` belongs to the open file, and a child process being spawned holds a copy of every
//! descriptor until its `exec` closes the close-on-exec ones: a lock this process has just
//! released can stay held for that moment if a hook was being spawned meanwhile. So when the
//! lock file names this very process, taking the lock is retried for up to `LOCK_RETRY_MS`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::StoreError;

/// How long a lock that names this process is retried (see the module doc).
pub const LOCK_RETRY_MS: u64 = 200;

/// Held for as long as the workspace is open.
#[derive(Debug)]
pub struct WorkspaceLock {
    _file: File,
}

impl WorkspaceLock {
    /// Takes the lock at `path`, or says which pid holds it.
    pub fn acquire(path: &Path) -> Result<Self, StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::io(format!("open lock file {}", path.display()), e))?;
        let started = std::time::Instant::now();
        let ours = std::process::id().to_string();
        loop {
            // SAFETY: flock on a file descriptor we own, for the lifetime of `file`.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let mut pid = String::new();
            let _ = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut pid));
            let pid = pid.trim().to_owned();
            if pid != ours || started.elapsed() >= std::time::Duration::from_millis(LOCK_RETRY_MS) {
                return Err(StoreError::Locked { pid });
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // The pid is written over the old one, then the file cut to it: on a full disk, bytes
        // within the file's existing block still fit (cutting first would give the block up).
        // The pid is only for messages: the flock is the lock, so a pid that cannot be written
        // is a warning, not a failure (reads must open on a full disk).
        let pid = format!("{}\n", std::process::id());
        let written = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .and_then(|_| file.set_len(pid.len() as u64));
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "could not write the pid into the lock file");
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_only_by_a_child_being_spawned_is_taken_once_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.lock");
        let lock = WorkspaceLock::acquire(&path).unwrap();
        // A copy of the descriptor without close-on-exec, inherited by a child that lives
        // until its stdin closes: the child holds the lock after this process lets go, as a
        // hook being spawned does until its exec.
        // SAFETY: dup of a descriptor we own; the copy is closed below.
        let copy = unsafe { libc::dup(lock._file.as_raw_fd()) };
        assert!(copy >= 0);
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // SAFETY: closing the copy made above.
        unsafe { libc::close(copy) };
        drop(lock);
        // The child really holds it now.
        let probe = File::open(&path).unwrap();
        // SAFETY: flock on a descriptor we own; it fails, so there is nothing to release.
        let held = unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(held, 0, "the child holds the lock");
        // The child lets go (its stdin closes, it exits) while the lock is being retried.
        let stdin = child.stdin.take().unwrap();
        let ender = std::thread::spawn(move || {
            drop(stdin);
            child.wait().unwrap()
        });
        let again = WorkspaceLock::acquire(&path);
        ender.join().unwrap();
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn a_lock_held_in_this_process_is_refused_after_the_retries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.lock");
        let _held = WorkspaceLock::acquire(&path).unwrap();
        match WorkspaceLock::acquire(&path) {
            Err(StoreError::Locked { pid }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
