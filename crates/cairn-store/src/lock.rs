//! The workspace lock: one opener at a time, and the next one is told who holds it.
//!
//! An advisory `flock` on `<data>/cairn.lock`, which holds the holder's pid. The kernel drops the
//! lock when the holder dies, even by SIGKILL, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::StoreError;

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
        // SAFETY: flock on a file descriptor we own, for the lifetime of `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(StoreError::Locked {
                pid: pid.trim().to_owned(),
            });
        }
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| StoreError::io(format!("write lock file {}", path.display()), e))?;
        Ok(Self { _file: file })
    }
}
