//! The projection's records (values under the keys in [`crate::keys`]), encoded with the log's
//! codec. Every entity record carries `revision`: the offset of the entry that last changed it.
//!
//! A record holds facts the events stated, never a message this binary formatted: a mirror may
//! run a newer binary than its leader and must fold the same log to the same bytes. Messages
//! (a broken package's reason, a task's notes) are rendered when read, by their `Display`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::change::End;
use crate::event::HookSummary;
use crate::manifest::Manifest;
use crate::model::{DaemonState, FeatureState, ResourceKind, Restart, Role, Scope};

/// A package's lifecycle status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageStatus {
    /// Its install change is running.
    Installing {
        /// The install change.
        change: Uuid,
    },
    /// Installed.
    Installed,
    /// Its uninstall change is running; install of the same name is refused.
    Uninstalling {
        /// Kept resource kinds.
        keep: Vec<ResourceKind>,
        /// The uninstall change.
        change: Uuid,
    },
    /// Something failed; uninstall cleans it up.
    Broken {
        /// Why.
        reason: BrokenReason,
    },
}

/// Why a package is broken, as the events said. Rendered when read (`Display`); in
/// human-readable encodings (the API's JSON) it serializes as that rendered text, in the
/// projection as the typed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokenReason {
    /// Its `onload` hook failed (`hook.finished.v1` of an `onload` run).
    OnloadFailed {
        /// The attempt that failed, from 1.
        attempt: u32,
        /// How it ended.
        result: HookSummary,
    },
    /// A reason an event stated in words: `package.status_changed.v1` carries a broken status
    /// as text (an install change that failed, or the status an undone uninstall restores).
    Stated {
        /// The event's words.
        why: String,
    },
}

impl fmt::Display for BrokenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokenReason::OnloadFailed { attempt: _, result } => {
                write!(f, "onload hook {result}")
            }
            BrokenReason::Stated { why } => f.write_str(why),
        }
    }
}

/// The projection's layout of [`BrokenReason`] (serde's derive, through `remote`).
#[derive(Serialize, Deserialize)]
#[serde(remote = "BrokenReason")]
enum BrokenReasonLayout {
    OnloadFailed { attempt: u32, result: HookSummary },
    Stated { why: String },
}

impl Serialize for BrokenReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            BrokenReasonLayout::serialize(self, s)
        }
    }
}

impl<'de> Deserialize<'de> for BrokenReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BrokenReasonLayout::deserialize(d)
    }
}

impl PackageStatus {
    /// The status name as shown by `pkg list`.
    pub fn name(&self) -> &'static str {
        match self {
            PackageStatus::Installing { .. } => "installing",
            PackageStatus::Installed => "installed",
            PackageStatus::Uninstalling { .. } => "uninstalling",
            PackageStatus::Broken { .. } => "broken",
        }
    }
}

/// Where a package's `onload` hook is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnloadState {
    /// The package declares no `onload`.
    None,
    /// Declared, not started yet (it starts once the package is installed).
    Pending,
    /// Running (found at open: run again).
    Running {
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// Finished.
    Finished {
        /// Whether it succeeded.
        ok: bool,
    },
    /// Cancelled by an uninstall.
    Cancelled,
}

/// `pkg/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// The manifest it was installed from.
    pub manifest: Manifest,
    /// Status.
    pub status: PackageStatus,
    /// Its `onload`.
    pub onload: OnloadState,
    /// The change that installed it.
    pub install_change: Uuid,
    /// Offset of the entry that last changed it.
    pub revision: u64,
}

/// `var/<owner>/<key>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarRecord {
    /// Value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision.
    pub revision: u64,
    /// Set when the owner was uninstalled with `keep` including vars.
    pub kept_from: Option<String>,
}

/// `queue/<owner>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Sequence number the next item gets (from 1).
    pub next_seq: u64,
    /// Items up to and including this one are acknowledged (and deleted).
    pub acked: u64,
    /// Revision.
    pub revision: u64,
    /// Kept-from marker.
    pub kept_from: Option<String>,
}

/// `vault/<owner>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    /// The sealed secret (never plaintext), if one was set.
    pub sealed: Option<serde_bytes::ByteBuf>,
    /// Revision.
    pub revision: u64,
    /// Kept-from marker.
    pub kept_from: Option<String>,
}

/// `daemon/<owner>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecord {
    /// Argv.
    pub command: Vec<String>,
    /// Restart policy.
    pub restart: Restart,
    /// Desired state.
    pub desired: DaemonState,
    /// Last state reported by whoever runs it (`daemon.observed.v1`, `daemon report`).
    pub observed: Option<DaemonState>,
    /// Revision.
    pub revision: u64,
    /// Kept-from marker.
    pub kept_from: Option<String>,
    /// The last observation of cairn's own supervisor (`daemon.observed.v2`).
    pub run: Option<crate::model::DaemonObservation>,
}

/// `model/<owner>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Base type.
    pub base: String,
    /// Documentation.
    pub doc: String,
    /// Revision.
    pub revision: u64,
    /// Kept-from marker.
    pub kept_from: Option<String>,
}

/// `feature/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureRecord {
    /// Name.
    pub name: String,
    /// Owning package.
    pub owner: String,
    /// Configured state.
    pub state: FeatureState,
    /// Restart automatically.
    pub auto_restart: bool,
    /// Scope.
    pub scope: Scope,
    /// Last state reported by the service side.
    pub observed: Option<FeatureState>,
    /// Revision.
    pub revision: u64,
}

/// `conn/<plug pkg>/<plug>/<slot pkg>/<slot>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// Plug end.
    pub plug: End,
    /// Slot end.
    pub slot: End,
    /// Interface.
    pub interface: String,
    /// Made by auto-connect.
    pub auto: bool,
    /// Revision.
    pub revision: u64,
}

/// `schema/<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    /// Applied schema version.
    pub version: u32,
    /// Oldest binary schema version that can open this data.
    pub compat: u32,
}

/// `idem/key/<key>`: the offsets a command with this idempotency key committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    /// First offset.
    pub first: u64,
    /// One past the last offset.
    pub end: u64,
    /// Retention sequence number.
    pub seq: u64,
}

/// `token/<name>`: an API token. Only the blake3 hash of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// blake3 of the secret.
    pub hash: [u8; 32],
    /// When it was created (the entry's leader time).
    pub created_ms: u64,
    /// Revision.
    pub revision: u64,
}

/// The table name of a resource kind.
pub fn table(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Vars => "var",
        ResourceKind::Queues => "queue",
        ResourceKind::Vaults => "vault",
        ResourceKind::Daemons => "daemon",
        ResourceKind::Model => "model",
    }
}
