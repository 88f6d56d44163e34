//! Audit and recovery tools over an open workspace: `replay` (a new workspace holding the state
//! at an offset, built by feeding the log through the same apply and commit path as a mirror)
//! and `audit_verify` (hash chain, then a full replay into a scratch store, then the two state
//! digests compared).

use std::path::Path;

use cairn_kernel::Rejection;
use cairn_log::Head;
use cairn_store::{Digest, PartialDir, Progress, ReadView, Store, StoreError};
use serde::Serialize;

use crate::error::Error;
use crate::machine::KernelMachine;
use crate::workspace::{Workspace, VAULT_KEY_FILE};

/// Entries handed to the replaying store per commit.
pub const REPLAY_BATCH_ENTRIES: usize = 1024;

/// What a replay produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// The new workspace's head (its applied offset is the `until` asked for, or the source's
    /// head when that is lower).
    pub head: Head,
    /// The state digest of the new workspace.
    pub digest: Digest,
}

/// What a full audit found (every check passed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Entries whose hash and chain link were checked.
    pub entries: u64,
    /// The verified head offset.
    pub head_offset: u64,
    /// The verified head hash (hex).
    #[serde(serialize_with = "hex32")]
    pub head_hash: [u8; 32],
    /// The stored projection's digest (hex), at `head_offset`.
    #[serde(serialize_with = "hex32")]
    pub digest: [u8; 32],
}

fn hex32<S: serde::Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&cairn_log::Hash(*h))
}

/// What a replay is told when asked for offset 0 (which holds nothing: offsets start at 1).
pub const REPLAY_UNTIL_ZERO: &str =
    "replay until offset 0: offsets start at 1 (until N keeps the log up to offset N)";

/// Builds a new workspace at `into` (which must not exist) holding the log of `view` up to
/// `until` (at least 1) and the state that log folds to. The vault key is copied, so the
/// replayed workspace opens the same secrets. `progress` sees entries replayed of entries to
/// replay. It is built in `<into>.partial` and renamed when complete, so `into` appears whole
/// or not at all (see [`PartialDir`] for a `<into>.partial` left by an interrupted run).
pub fn replay(
    view: &ReadView,
    source_data: &Path,
    kernel: cairn_kernel::Kernel,
    until: u64,
    into: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<ReplayReport, Error> {
    if until == 0 {
        return Err(Error::Rejected(Rejection::Invalid(
            REPLAY_UNTIL_ZERO.into(),
        )));
    }
    let until = until.min(view.applied());
    let partial = PartialDir::create(into, "replay")?;
    let report = replay_at(view, source_data, kernel, until, partial.path(), progress)?;
    partial.commit()?;
    Ok(report)
}

fn replay_at(
    view: &ReadView,
    source_data: &Path,
    kernel: cairn_kernel::Kernel,
    until: u64,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<ReplayReport, Error> {
    Store::<KernelMachine>::init(dir)?;
    let key = source_data.join(VAULT_KEY_FILE);
    if key.exists() {
        std::fs::copy(&key, dir.join(VAULT_KEY_FILE))
            .map_err(|e| StoreError::io(format!("copy {}", key.display()), e))?;
    }
    let store = Store::open(dir, KernelMachine(kernel), cairn_store::Options::default())?;
    replay_into(view, &store, until, progress)?;
    let out = store.read()?;
    Ok(ReplayReport {
        head: out.head(),
        digest: out.digest()?,
    })
}

/// Feeds the log `1..=until` to `store` in batches, in one checked pass over the log (every
/// entry's decoding, hash and link to the one before, across batches too; the error names the
/// first bad offset). Returns the head of what was replayed.
fn replay_into(
    view: &ReadView,
    store: &Store<KernelMachine>,
    until: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<cairn_log::Head, Error> {
    let first = view.first_retained();
    if first > 1 {
        return Err(Error::Compacted {
            requested: 1,
            first,
        });
    }
    let mut batch = Vec::with_capacity(REPLAY_BATCH_ENTRIES);
    let mut head = cairn_log::Head::EMPTY;
    let mut failed = None;
    let mut flush = |batch: &mut Vec<cairn_log::StoredEntry>| -> Result<(), Error> {
        let done = batch.last().map_or(0, |e| e.offset);
        store
            .submit_entries(std::mem::take(batch))
            .wait()
            .map_err(Error::Store)?;
        progress(Progress { done, total: until });
        Ok(())
    };
    if until > 0 {
        view.visit_log(1, |entry| {
            head = entry.head();
            batch.push(entry);
            if batch.len() == REPLAY_BATCH_ENTRIES || head.offset == until {
                if let Err(e) = flush(&mut batch) {
                    failed = Some(e);
                    return false;
                }
            }
            head.offset < until
        })?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(head)
}

/// Audits the workspace: replays the whole log into a scratch store through the same apply,
/// checking every entry's hash and chain link on the way (the error names the first bad
/// offset), checks that the log ends at the stored head, and compares the scratch store's
/// digest with the stored projection's. `progress` sees the replay (`done` of `total`
/// entries).
pub fn audit_verify(
    ws: &Workspace,
    progress: &mut dyn FnMut(Progress),
) -> Result<AuditReport, Error> {
    let view = ws.view()?;
    let stored = view.digest()?;
    // Next to the workspace, on the same file system (system temp may be a small tmpfs).
    let scratch = scratch_dir(ws.data_dir(), "audit")?;
    let dir = scratch.path().join("replay");
    Store::<KernelMachine>::init(&dir)?;
    let store = Store::open(
        &dir,
        KernelMachine(ws.store().machine().0.clone()),
        cairn_store::Options {
            durability: cairn_store::Durability::None,
            ..Default::default()
        },
    )?;
    // The replay reads every entry through the checked iteration, so it is also the chain
    // verification: one pass over the log, not two.
    let head = replay_into(&view, &store, view.applied(), progress)?;
    if head != view.head() {
        return Err(Error::Store(StoreError::Inconsistent(format!(
            "the log ends at offset {} with hash {}, but the stored head is offset {} with \
             hash {}",
            head.offset,
            head.hash,
            view.head().offset,
            view.head().hash
        ))));
    }
    let replayed = store.read()?.digest()?;
    drop(store);
    if replayed != stored {
        return Err(Error::Store(StoreError::Inconsistent(format!(
            "the stored projection at offset {} has digest {}, but replaying the log gives {} \
             (run `cairn rebuild` to rebuild it from the log)",
            stored.applied, stored.hash, replayed.hash
        ))));
    }
    Ok(AuditReport {
        entries: head.offset,
        head_offset: head.offset,
        head_hash: head.hash.0,
        digest: stored.hash.0,
    })
}

/// A scratch directory for a full-size copy of the workspace: inside the data directory
/// (`.scratch-<what>-*`), so it is on the same file system, and removed when dropped.
pub fn scratch_dir(data: &Path, what: &str) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(&format!(".scratch-{what}-"))
        .tempdir_in(data)
        .map_err(|e| {
            Error::Store(StoreError::io(
                format!("create a scratch directory in {}", data.display()),
                e,
            ))
        })
}
