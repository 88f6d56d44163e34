//! Opening RocksDB without silent loss: the WAL check around every open, the damage record that
//! keeps refusing a damaged workspace, and the explicit acceptance of a loss.
//!
//! ```text
//! <data>/wal-damage               written when an open finds acknowledged commits dropped by
//!                                 the WAL replay; while it exists, every open is refused
//! <data>/quarantine/wal-<ms>/     copies of the damaged WAL files, taken before RocksDB opened
//! <data>/wal-loss-accepted        the accepted damage, until the runtime has logged it
//! ```
//!
//! RocksDB may flush and recycle WAL files during the open that detects the loss, so the copies
//! are taken before it, and the verdict is written down before the open is refused: once a
//! loss is found, the workspace stays refused until an operator accepts it
//! ([`accept_wal_loss`]), which is itself recorded in the log by the runtime.

use std::path::{Path, PathBuf};

use rocksdb::DB;

use crate::error::StoreError;
use crate::wal::{self, WalLoss};

/// File (in the data directory) recording a damage that refuses every open.
pub const WAL_DAMAGE_FILE: &str = "wal-damage";
/// File (in the data directory) holding an accepted damage until it is logged.
pub const WAL_LOSS_ACCEPTED_FILE: &str = "wal-loss-accepted";
/// Directory (in the data directory) holding copies of damaged WAL files.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Acknowledged commits found dropped by RocksDB's WAL replay: what, where, and what is left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalDamage {
    /// When it was found (ms since the Unix epoch); also names the quarantine directory.
    pub detected_ms: u64,
    /// The applied offset the workspace recovered to.
    pub recovered_offset: u64,
    /// The WAL file where replay stopped.
    pub file: String,
    /// The byte in that file.
    pub byte: u64,
    /// What is wrong there.
    pub reason: String,
    /// Intact commits after the damage that were not replayed.
    pub lost_commits: u64,
    /// The highest applied offset they recorded (the last acknowledged offset lost).
    pub lost_through_offset: Option<u64>,
    /// WAL files holding the damage and the lost commits.
    pub files: Vec<String>,
    /// Where copies of those files were kept (relative to the data directory), if they
    /// could be copied.
    pub quarantine: Option<String>,
}

impl std::fmt::Display for WalDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the write-ahead log is damaged: db/{} at byte {}: {}; {} intact commit(s) after it",
            self.file, self.byte, self.reason, self.lost_commits
        )?;
        if let Some(through) = self.lost_through_offset {
            write!(f, " (through offset {through})")?;
        }
        write!(
            f,
            " cannot be replayed, and opening would continue from offset {} without them",
            self.recovered_offset
        )?;
        match &self.quarantine {
            Some(q) => write!(f, "; copies of the damaged WAL files are in {q}")?,
            None => write!(f, "; the damaged WAL files could not be copied aside")?,
        }
        write!(
            f,
            ". Restore the workspace from a backup, or accept the loss explicitly with \
             `cairn recover --accept-wal-loss` (the acceptance is recorded in the log)"
        )
    }
}

impl WalDamage {
    fn to_text(&self) -> String {
        let mut text = String::from(
            "# cairn: this workspace's write-ahead log is damaged and it refuses to open.\n\
             # Restore from a backup, or run `cairn recover --accept-wal-loss`.\n",
        );
        let mut line = |key: &str, value: String| {
            text.push_str(key);
            text.push_str(": ");
            text.push_str(&value);
            text.push('\n');
        };
        line("detected_ms", self.detected_ms.to_string());
        line("recovered_offset", self.recovered_offset.to_string());
        line("file", self.file.clone());
        line("byte", self.byte.to_string());
        line("reason", self.reason.clone());
        line("lost_commits", self.lost_commits.to_string());
        if let Some(t) = self.lost_through_offset {
            line("lost_through_offset", t.to_string());
        }
        line("files", self.files.join(" "));
        if let Some(q) = &self.quarantine {
            line("quarantine", q.clone());
        }
        text
    }

    fn parse(text: &str, path: &Path) -> Result<WalDamage, StoreError> {
        let mut fields = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some((k, v)) = line.split_once(": ") {
                fields.insert(k, v);
            }
        }
        let bad = |what: &str| {
            StoreError::Inconsistent(format!(
                "{} is unreadable ({what}); it records a damaged write-ahead log",
                path.display()
            ))
        };
        let text_of = |k: &str| fields.get(k).map(|v| v.to_string());
        let number = |k: &str| -> Result<u64, StoreError> {
            fields
                .get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(&format!("no {k}")))
        };
        Ok(WalDamage {
            detected_ms: number("detected_ms")?,
            recovered_offset: number("recovered_offset")?,
            file: text_of("file").ok_or_else(|| bad("no file"))?,
            byte: number("byte")?,
            reason: text_of("reason").unwrap_or_default(),
            lost_commits: number("lost_commits")?,
            lost_through_offset: fields
                .get("lost_through_offset")
                .and_then(|v| v.parse().ok()),
            files: fields
                .get("files")
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            quarantine: text_of("quarantine"),
        })
    }
}

/// Reads a damage record file, if there is one.
fn read_record(path: &Path) -> Result<Option<WalDamage>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => WalDamage::parse(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}

/// Writes `text` to `path` durably (temporary file, fsync, rename, fsync of the directory).
fn write_durably(path: &Path, text: &str) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e: std::io::Error| StoreError::io(what, e)
    };
    let mut file = std::fs::File::create(&tmp).map_err(io("create"))?;
    file.write_all(text.as_bytes()).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))?;
    std::fs::rename(&tmp, path).map_err(io("rename into"))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory, so that a rename or removal in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("sync directory {}", dir.display()), e))
}

/// Whether an open may write (a read-only open neither copies files aside nor records a damage
/// it finds: RocksDB's read-only open leaves the WAL as it is, so the next writable open finds
/// the damage again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Write,
    Read,
}

/// Refuses to go on when a damage was recorded and not accepted.
pub(crate) fn refuse_if_damaged(data: &Path) -> Result<(), StoreError> {
    match read_record(&data.join(WAL_DAMAGE_FILE))? {
        Some(damage) => Err(StoreError::WalDamaged(Box::new(damage))),
        None => Ok(()),
    }
}

/// Opens the database with `open`, checking the WAL around it: RocksDB's replay must not have
/// dropped an intact commit. `applied` reads the applied offset of the opened database (for the
/// message).
pub(crate) fn open_checked(
    data: &Path,
    access: Access,
    open: impl FnOnce() -> Result<DB, StoreError>,
    applied: impl FnOnce(&DB) -> Result<u64, StoreError>,
    now_ms: u64,
) -> Result<DB, StoreError> {
    refuse_if_damaged(data)?;
    let db_dir = crate::layout::db_dir(data);
    let scan = wal::scan(&db_dir)?;
    let suspects = scan.suspect_files();
    // Copies first: the open below may recycle these files.
    let quarantine = if suspects.is_empty() || access == Access::Read {
        None
    } else {
        quarantine(data, &db_dir, &suspects, now_ms)
    };
    let db = open()?;
    let Some(loss) = scan.loss(db.latest_sequence_number()) else {
        if let Some(q) = quarantine {
            // Damage, but nothing intact after it was dropped: a torn, unacknowledged tail.
            let _ = std::fs::remove_dir_all(data.join(q));
        }
        let torn = scan.damage.iter().filter(|d| !d.end_of_use).count();
        if torn > 0 {
            tracing::debug!(torn, "the WAL ended in a torn write; it was discarded");
        }
        return Ok(db);
    };
    let damage = damage_of(loss, applied(&db)?, quarantine, now_ms);
    drop(db);
    tracing::error!(%damage, "refusing to open");
    if access == Access::Write {
        write_durably(&data.join(WAL_DAMAGE_FILE), &damage.to_text())?;
    }
    Err(StoreError::WalDamaged(Box::new(damage)))
}

fn damage_of(
    loss: WalLoss,
    recovered_offset: u64,
    quarantine: Option<String>,
    now_ms: u64,
) -> WalDamage {
    WalDamage {
        detected_ms: now_ms,
        recovered_offset,
        file: loss.damage.file,
        byte: loss.damage.byte,
        reason: loss.damage.reason,
        lost_commits: loss.commits,
        lost_through_offset: loss.through_offset,
        files: loss.files,
        quarantine,
    }
}

/// Copies `files` of the database directory into a new quarantine directory; returns its path
/// relative to `data`, or `None` (logged) if they could not be copied.
fn quarantine(data: &Path, db_dir: &Path, files: &[String], now_ms: u64) -> Option<String> {
    let relative = format!("{QUARANTINE_DIR}/wal-{now_ms}");
    let dir: PathBuf = data.join(&relative);
    let copied = std::fs::create_dir_all(&dir).and_then(|()| {
        for f in files {
            std::fs::copy(db_dir.join(f), dir.join(f))?;
        }
        Ok(())
    });
    match copied {
        Ok(()) => Some(relative),
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "could not copy damaged WAL files aside");
            None
        }
    }
}

/// Accepts a recorded WAL damage: the workspace will open at the offset it recovered, without
/// the lost commits. Removes the WAL files that hold them (they are obsolete once the
/// database is flushed, and copies are in quarantine), and leaves the damage in
/// [`WAL_LOSS_ACCEPTED_FILE`] until the runtime has logged the acceptance
/// ([`pending_accepted`], [`accepted_recorded`]). Idempotent: an interrupted acceptance can be
/// run again.
pub(crate) fn accept(
    data: &Path,
    open: impl FnOnce() -> Result<DB, StoreError>,
) -> Result<WalDamage, StoreError> {
    let damage_path = data.join(WAL_DAMAGE_FILE);
    let Some(damage) = read_record(&damage_path)? else {
        return Err(StoreError::NothingToAccept {
            path: data.display().to_string(),
        });
    };
    let db = open()?;
    let recovered = db.latest_sequence_number();
    let cfs: Vec<_> = crate::layout::CFS
        .iter()
        .map(|name| {
            db.cf_handle(name)
                .expect("column family exists: all CFs are opened with the database")
        })
        .collect();
    let mut flush = rocksdb::FlushOptions::default();
    flush.set_wait(true);
    db.flush_cfs_opt(&cfs, &flush)
        .map_err(StoreError::db("flush before removing damaged WAL files"))?;
    drop(cfs);
    drop(db);
    let db_dir = crate::layout::db_dir(data);
    for file in wal::scan(&db_dir)?.files_beyond(recovered) {
        let path = db_dir.join(&file);
        std::fs::remove_file(&path)
            .map_err(|e| StoreError::io(format!("remove {}", path.display()), e))?;
        tracing::warn!(file = %path.display(), "removed a WAL file holding lost commits");
    }
    sync_dir(&db_dir)?;
    write_durably(&data.join(WAL_LOSS_ACCEPTED_FILE), &damage.to_text())?;
    std::fs::remove_file(&damage_path)
        .map_err(|e| StoreError::io(format!("remove {}", damage_path.display()), e))?;
    sync_dir(data)?;
    Ok(damage)
}

/// An accepted damage that is not logged yet.
pub(crate) fn pending_accepted(data: &Path) -> Result<Option<WalDamage>, StoreError> {
    read_record(&data.join(WAL_LOSS_ACCEPTED_FILE))
}

/// The runtime has logged the accepted damage: forget it.
pub(crate) fn accepted_recorded(data: &Path) -> Result<(), StoreError> {
    let path = data.join(WAL_LOSS_ACCEPTED_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("remove {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damage_record_reads_back_as_written() {
        let damage = WalDamage {
            detected_ms: 1_733_000_000_000,
            recovered_offset: 10,
            file: "000012.log".into(),
            byte: 4096,
            reason: "checksum mismatch".into(),
            lost_commits: 90,
            lost_through_offset: Some(100),
            files: vec!["000012.log".into(), "000014.log".into()],
            quarantine: Some("quarantine/wal-1733000000000".into()),
        };
        let path = Path::new("wal-damage");
        assert_eq!(WalDamage::parse(&damage.to_text(), path).unwrap(), damage);
        let bare = WalDamage {
            lost_through_offset: None,
            quarantine: None,
            ..damage
        };
        assert_eq!(WalDamage::parse(&bare.to_text(), path).unwrap(), bare);
        assert!(WalDamage::parse("nothing", path).is_err());
    }
}
