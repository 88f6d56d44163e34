//! A directory that appears complete under its final name or not at all: backups, replays and
//! received bundles are built in `<target>.partial` and renamed to `<target>` only when whole.
//!
//! The partial directory holds a marker file, [`PARTIAL_MARKER_FILE`], record-locked by the
//! process building it (`crate::lock::RecordLock`, the workspace lock's kind: never inherited
//! by a child between its `fork` and `exec`, so a killed builder's half-spawned child cannot
//! keep it) and holding that process's pid. So a later run can tell the three kinds
//! of `<target>.partial` apart without guessing:
//! - marker present and locked: another run is building it now; refused, naming its pid;
//! - marker present and unlocked: left by a run that was killed or crashed (the kernel drops a
//!   record lock when its holder dies); removed, with a warning, and the new run goes on;
//! - no marker and empty: a run killed between creating the directory and its marker (or one
//!   in that very instant, which then fails cleanly); removed, as there is nothing in it;
//! - no marker and not empty: cairn did not make it; refused and left alone, with what to do.
//!
//! The marker is removed just before the rename, so the finished directory does not hold it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::lock::{Attempt, Reach, RecordLock};

/// Name of the marker file inside a partial directory.
pub const PARTIAL_MARKER_FILE: &str = ".cairn-partial";

/// How often creating a partial directory is retried when another run removes or creates one
/// at the same moment.
const PARTIAL_CREATE_ATTEMPTS_MAX: usize = 3;

/// The sibling a directory is built in: `<target>.partial`. `target` is normalized first, so
/// `dir/` gives `dir.partial` beside it rather than `dir/.partial` inside it.
pub fn partial_path(target: &Path) -> PathBuf {
    let target: PathBuf = target.components().collect();
    PathBuf::from(format!("{}.partial", target.display()))
}

/// A directory being built at `<target>.partial`. [`PartialDir::commit`] renames it to
/// `target`; dropping it uncommitted removes it.
#[derive(Debug)]
pub struct PartialDir {
    target: PathBuf,
    path: PathBuf,
    /// The locked marker; `None` once committed.
    marker: Option<RecordLock>,
}

impl PartialDir {
    /// Starts building `target`, which must not exist. A `<target>.partial` left by an
    /// interrupted run is removed first; one that another run is building, or one without
    /// cairn's marker, is refused and left as it is. `what` names the operation in messages
    /// (`backup`, `replay`).
    pub fn create(target: &Path, what: &str) -> Result<PartialDir, StoreError> {
        let target: PathBuf = target.components().collect();
        let context = || format!("{what} into {}", target.display());
        if target.exists() {
            return Err(StoreError::io(context(), "the directory already exists"));
        }
        let path = partial_path(&target);
        for _ in 0..PARTIAL_CREATE_ATTEMPTS_MAX {
            match fs::create_dir(&path) {
                Ok(()) => {
                    let marker = take_new_marker(&path)?;
                    return Ok(PartialDir {
                        target,
                        path,
                        marker: Some(marker),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    remove_if_abandoned(&path, &context())?;
                }
                Err(e) => {
                    return Err(StoreError::io(format!("create {}", path.display()), e));
                }
            }
        }
        Err(StoreError::io(
            context(),
            format!(
                "{} keeps being created and removed by other runs; try again once they are done",
                path.display()
            ),
        ))
    }

    /// Where the directory is being built.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it goes when complete.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the finished directory to its target (which must still not exist) and syncs
    /// the parent directory, so the rename survives a crash.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let marker = self.path.join(PARTIAL_MARKER_FILE);
        fs::remove_file(&marker)
            .map_err(|e| StoreError::io(format!("remove {}", marker.display()), e))?;
        if self.target.exists() {
            return Err(StoreError::io(
                format!(
                    "rename {} to {}",
                    self.path.display(),
                    self.target.display()
                ),
                "the target appeared meanwhile",
            ));
        }
        fs::rename(&self.path, &self.target).map_err(|e| {
            StoreError::io(
                format!(
                    "rename {} to {}",
                    self.path.display(),
                    self.target.display()
                ),
                e,
            )
        })?;
        // Renamed: nothing is left to clean up, whatever the sync below says.
        self.marker = None;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(format!("sync {}", parent.display()), e))?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        // Uncommitted: remove what was built, while the marker is still locked by us.
        if let Some(_locked) = self.marker.take() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Creates, locks and fills in the marker of a partial directory this process just created.
/// On failure the directory is left to the next run, except when the marker could not even be
/// created (then the directory is still empty and ours alone, and is removed).
fn take_new_marker(dir: &Path) -> Result<RecordLock, StoreError> {
    let path = dir.join(PARTIAL_MARKER_FILE);
    let failed = |e: io::Error| StoreError::io(format!("create {}", path.display()), e);
    let mut lock = match RecordLock::try_take(&path, Reach::New) {
        Ok(Attempt::Taken(lock)) => lock,
        // Between the creation and the lock another run can find the marker unlocked, take it
        // and remove the directory as abandoned; then it is that run's, and is not touched here.
        Ok(Attempt::Held { .. }) => {
            return Err(StoreError::io(
                format!("create {}", dir.display()),
                "another run took it over as it was created; try again",
            ))
        }
        Err(e) => {
            let _ = fs::remove_dir(dir);
            return Err(failed(e));
        }
    };
    if !lock.is_at(&path) {
        return Err(StoreError::io(
            format!("create {}", dir.display()),
            "another run took it over as it was created; try again",
        ));
    }
    let file = lock.file();
    writeln!(file, "{}", std::process::id())
        .and_then(|_| file.sync_all())
        .map_err(|e| StoreError::io(format!("write {}", path.display()), e))?;
    Ok(lock)
}

/// Removes `dir` (an existing `<target>.partial`) if its marker says it was abandoned;
/// otherwise explains why it is left alone.
fn remove_if_abandoned(dir: &Path, context: &str) -> Result<(), StoreError> {
    let marker_path = dir.join(PARTIAL_MARKER_FILE);
    let lock = match RecordLock::try_take(&marker_path, Reach::Existing) {
        Ok(Attempt::Taken(lock)) => lock,
        Ok(Attempt::Held { pid }) => {
            return Err(StoreError::io(
                context,
                format!(
                    "{} is being written by another run (pid {pid}); wait for it to finish, or \
                     choose another directory",
                    dir.display(),
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // `remove_dir` removes only an empty directory: nothing can be lost.
            if fs::remove_dir(dir).is_ok() {
                tracing::warn!(
                    "removed {}, left by an interrupted backup or replay",
                    dir.display()
                );
                return Ok(());
            }
            return Err(StoreError::io(
                context,
                format!(
                    "{} exists and was not made by cairn (it holds no {PARTIAL_MARKER_FILE}); \
                     it is left as it is: remove it first, or move it aside",
                    dir.display()
                ),
            ));
        }
        Err(e) => return Err(StoreError::io(format!("lock {}", marker_path.display()), e)),
    };
    // The marker we locked may have been replaced since we opened it (another run removed the
    // old directory and made its own): then it is not abandoned; look again.
    if !lock.is_at(&marker_path) {
        return Ok(());
    }
    fs::remove_dir_all(dir).map_err(|e| StoreError::io(format!("remove {}", dir.display()), e))?;
    drop(lock);
    tracing::warn!(
        "removed {}, left by an interrupted backup or replay",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        (tmp, target)
    }

    #[test]
    fn a_committed_directory_appears_whole_without_the_marker() {
        let (_tmp, target) = parts();
        let p = PartialDir::create(&target, "backup").unwrap();
        assert_eq!(p.path(), partial_path(&target));
        fs::write(p.path().join("data"), b"x").unwrap();
        assert!(
            !target.exists(),
            "nothing under the final name before the commit"
        );
        p.commit().unwrap();
        assert_eq!(fs::read(target.join("data")).unwrap(), b"x");
        assert!(!target.join(PARTIAL_MARKER_FILE).exists());
        assert!(!partial_path(&target).exists());
    }

    #[test]
    fn an_uncommitted_directory_is_removed() {
        let (_tmp, target) = parts();
        let p = PartialDir::create(&target, "backup").unwrap();
        fs::write(p.path().join("data"), b"x").unwrap();
        drop(p);
        assert!(!target.exists());
        assert!(!partial_path(&target).exists());
    }

    #[test]
    fn a_partial_being_built_is_refused_naming_its_pid() {
        let (_tmp, target) = parts();
        let _running = PartialDir::create(&target, "backup").unwrap();
        let e = PartialDir::create(&target, "backup")
            .unwrap_err()
            .to_string();
        assert!(e.contains("being written by another run"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(partial_path(&target).join(PARTIAL_MARKER_FILE).exists());
    }

    #[test]
    fn an_abandoned_partial_is_removed_and_a_foreign_one_is_left_alone() {
        let (_tmp, target) = parts();
        let partial = partial_path(&target);
        // What a run killed before it made its marker leaves: an empty directory.
        fs::create_dir(&partial).unwrap();
        drop(PartialDir::create(&target, "backup").unwrap());
        // What a killed run leaves: its directory and its marker, no longer locked.
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join(PARTIAL_MARKER_FILE), b"999999\n").unwrap();
        fs::write(partial.join("half"), b"x").unwrap();
        let p = PartialDir::create(&target, "backup").unwrap();
        assert!(!p.path().join("half").exists(), "the leftover was removed");
        drop(p);

        fs::create_dir(&partial).unwrap();
        fs::write(partial.join("mine"), b"user data").unwrap();
        let e = PartialDir::create(&target, "backup")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not made by cairn"), "{e}");
        assert!(e.contains("remove it first"), "{e}");
        assert_eq!(fs::read(partial.join("mine")).unwrap(), b"user data");
    }

    #[test]
    fn an_existing_target_is_refused() {
        let (_tmp, target) = parts();
        fs::create_dir(&target).unwrap();
        let e = PartialDir::create(&target, "backup")
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
        assert!(!partial_path(&target).exists());
    }
}
