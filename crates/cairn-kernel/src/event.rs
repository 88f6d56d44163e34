//! Events: what happened, as stored in log entries. Each has a versioned kind string; the
//! payload is the event struct encoded with the log's codec. A changed event layout is a new
//! kind version (`.v2`), never an edit of an existing one: old logs must replay forever.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::{ChangeRecord, End, TaskOutcome};
use crate::drive::DriveEvent;
use crate::manifest::{DaemonDecl, Manifest};
use crate::model::{DaemonState, FeatureState, ResourceKind, Role, Scope};
use crate::records::PackageStatus;
use crate::Subsystem;

/// Longest hook output tail recorded per stream.
pub const HOOK_OUTPUT_BYTES_MAX: usize = 64 * 1024;

/// How a hook run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookOutcome {
    /// Exit 0.
    Succeeded,
    /// Non-zero exit or killed by a signal.
    Failed,
    /// Killed after its timeout.
    TimedOut,
    /// Could not be started.
    SpawnFailed,
}

impl HookOutcome {
    /// The outcome's name.
    pub fn as_str(self) -> &'static str {
        match self {
            HookOutcome::Succeeded => "succeeded",
            HookOutcome::Failed => "failed",
            HookOutcome::TimedOut => "timed_out",
            HookOutcome::SpawnFailed => "spawn_failed",
        }
    }
}

/// A finished hook run, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookResult {
    /// How it ended.
    pub outcome: HookOutcome,
    /// Exit code, if it exited.
    pub exit: Option<i32>,
    /// Signal, if it was killed by one.
    pub signal: Option<i32>,
    /// Wall time, ms.
    pub duration_ms: u64,
    /// Last bytes of stdout (≤ [`HOOK_OUTPUT_BYTES_MAX`]).
    pub stdout_tail: String,
    /// Last bytes of stderr (≤ [`HOOK_OUTPUT_BYTES_MAX`]).
    pub stderr_tail: String,
    /// Extra detail (spawn error, timeout).
    pub message: String,
}

impl HookResult {
    /// How the run ended, without its output: what the projection keeps of it.
    pub fn summary(&self) -> HookSummary {
        HookSummary {
            outcome: self.outcome,
            exit: self.exit,
            signal: self.signal,
            duration_ms: self.duration_ms,
            message: self.message.clone(),
        }
    }

    /// A one-line description, e.g. `exit 3 after 12 ms`.
    pub fn describe(&self) -> String {
        self.summary().to_string()
    }
}

/// How a hook run ended, as the projection keeps it: the facts of a [`HookResult`] without
/// its output tails (those stay in the `hook.finished.v1` entry). Displays as a one-line
/// description, e.g. `exit 3 after 12 ms`, rendered when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSummary {
    /// How it ended.
    pub outcome: HookOutcome,
    /// Exit code, if it exited.
    pub exit: Option<i32>,
    /// Signal, if it was killed by one.
    pub signal: Option<i32>,
    /// Wall time, ms.
    pub duration_ms: u64,
    /// Extra detail (spawn error, timeout), as the event says.
    pub message: String,
}

impl fmt::Display for HookSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.outcome, self.exit, self.signal) {
            (HookOutcome::Succeeded, _, _) => f.write_str("exit 0")?,
            (HookOutcome::TimedOut, _, _) => f.write_str("timed out")?,
            (HookOutcome::SpawnFailed, _, _) => write!(f, "could not start: {}", self.message)?,
            (HookOutcome::Failed, Some(code), _) => write!(f, "exit {code}")?,
            (HookOutcome::Failed, None, Some(sig)) => write!(f, "killed by signal {sig}")?,
            (HookOutcome::Failed, None, None) => f.write_str("failed")?,
        }
        write!(f, " after {} ms", self.duration_ms)
    }
}

/// Which hook run an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRef {
    /// The change it belongs to (for `onload`: the package's install change).
    pub change: Uuid,
    /// The task, for task hooks; `None` for `onload`.
    pub task: Option<u32>,
    /// Whose hook.
    pub package: String,
    /// Hook name.
    pub hook: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// `epoch.started.v1`: a mirror became the leader (`cairn promote`). It is the first entry of
/// its epoch; `prev_head` is the offset of the last entry of the epoch before, where the old
/// leader's log and the new one's may fork.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStarted {
    /// The new epoch (the one before + 1).
    pub epoch: u64,
    /// Who leads it (the node's name or URL, as the operator gave it).
    pub leader: String,
    /// The offset of the last entry of the previous epoch.
    pub prev_head: u64,
}

/// `store.wal_loss_accepted.v1`: an operator accepted that the workspace's WAL replay dropped
/// acknowledged commits (the store refused to open until then). The entries after
/// `recovered_offset` in the log are new ones, written after the acceptance; the lost ones
/// are gone. Applying it changes no state: it is the audit trail of the loss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalLossAccepted {
    /// When the store found the damage (ms since the Unix epoch).
    pub detected_ms: u64,
    /// The offset the workspace recovered to (this entry follows it).
    pub recovered_offset: u64,
    /// The WAL file where the replay stopped.
    pub file: String,
    /// The byte in that file.
    pub byte: u64,
    /// What was wrong there.
    pub reason: String,
    /// Intact commits after the damage that were dropped.
    pub lost_commits: u64,
    /// The highest offset those commits had reached, if known.
    pub lost_through_offset: Option<u64>,
}

/// `package.install_started.v1` (`.v2` when a daemon names its feature): the package,
/// everything it declares and its install change, created in one commit. Kept resources of the
/// same name are adopted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallStarted {
    /// The manifest.
    pub manifest: Manifest,
    /// The install change (tasks decided by the leader).
    pub change: ChangeRecord,
}

/// `package.uninstall_started.v1` (`.v2` when the change has a `stop-daemons` task: the
/// package owns daemons): the package is uninstalling; its uninstall change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UninstallStarted {
    /// The package.
    pub package: String,
    /// Kept kinds.
    pub keep: Vec<ResourceKind>,
    /// The uninstall change.
    pub change: ChangeRecord,
}

/// `resources.deleted.v1`: one event deleting everything listed; kept kinds are marked
/// `kept_from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesDeleted {
    /// The owner.
    pub package: String,
    /// Kept kinds (their records get `kept_from = package`).
    pub keep: Vec<ResourceKind>,
    /// Deleted resources by kind (names).
    pub deleted: Vec<(ResourceKind, Vec<String>)>,
    /// Deleted features.
    pub features: Vec<String>,
}

/// Every event the kernel knows, with its kind string. `Serialize` is for display (the CLI's
/// and the server's JSON); the log's encoding is [`Event::encode`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// `package.install_started.v1`, `.v2`
    InstallStarted(InstallStarted),
    /// `package.uninstall_started.v1`, `.v2`
    UninstallStarted(UninstallStarted),
    /// `package.status_changed.v1`
    PackageStatusChanged {
        /// The package.
        package: String,
        /// New status.
        status: PackageStatus,
    },
    /// `package.removed.v1`
    PackageRemoved {
        /// The package.
        package: String,
    },
    /// `resources.deleted.v1`
    ResourcesDeleted(ResourcesDeleted),
    /// `change.created.v1` (connect, disconnect)
    ChangeCreated(ChangeRecord),
    /// `change.abort_requested.v1`
    AbortRequested {
        /// The change.
        change: Uuid,
    },
    /// `task.started.v1`
    TaskStarted {
        /// The change.
        change: Uuid,
        /// Task index.
        task: u32,
        /// Undoing rather than doing.
        undo: bool,
    },
    /// `task.finished.v1`
    TaskFinished {
        /// The change.
        change: Uuid,
        /// Task index.
        task: u32,
        /// Undoing rather than doing.
        undo: bool,
        /// How it ended.
        outcome: TaskOutcome,
    },
    /// `hook.started.v1`
    HookStarted(HookRef),
    /// `hook.finished.v1`
    HookFinished(HookRef, HookResult),
    /// `hook.cancelled.v1`
    HookCancelled(HookRef),
    /// `connection.established.v1`
    ConnectionEstablished {
        /// Plug end.
        plug: End,
        /// Slot end.
        slot: End,
        /// Interface.
        interface: String,
        /// By auto-connect.
        auto: bool,
    },
    /// `connection.removed.v1`
    ConnectionRemoved {
        /// Plug end.
        plug: End,
        /// Slot end.
        slot: End,
        /// Never auto-connect this pair again.
        undesired: bool,
    },
    /// `connection.marked.v1`: the pair's undesired mark is set or cleared.
    ConnectionMarked {
        /// Plug end.
        plug: End,
        /// Slot end.
        slot: End,
        /// Marked undesired.
        undesired: bool,
    },
    /// `var.set.v1`
    VarSet {
        /// Owner.
        owner: String,
        /// Key.
        key: String,
        /// Value.
        value: serde_bytes::ByteBuf,
    },
    /// `var.deleted.v1` (one or many keys)
    VarsDeleted {
        /// Owner.
        owner: String,
        /// Keys.
        keys: Vec<String>,
    },
    /// `queue.put.v1` (one or many items)
    QueuePut {
        /// Owner.
        owner: String,
        /// Queue.
        queue: String,
        /// Items.
        items: Vec<serde_bytes::ByteBuf>,
    },
    /// `queue.acked.v1`: items up to `upto` are acknowledged and deleted.
    QueueAcked {
        /// Owner.
        owner: String,
        /// Queue.
        queue: String,
        /// Last acknowledged sequence number.
        upto: u64,
    },
    /// `vault.set.v1` (sealed: never plaintext)
    VaultSet {
        /// Owner.
        owner: String,
        /// Vault.
        vault: String,
        /// Sealed value.
        sealed: serde_bytes::ByteBuf,
    },
    /// `daemon.desired_set.v1`
    DaemonDesired {
        /// Owner.
        owner: String,
        /// Daemon.
        daemon: String,
        /// Desired state.
        desired: DaemonState,
    },
    /// `daemon.observed.v2`: what cairn's supervisor saw a daemon do.
    DaemonRan {
        /// Owner package.
        owner: String,
        /// Daemon.
        daemon: String,
        /// What it saw, and the restarts since the daemon was asked to run.
        observation: crate::model::DaemonObservation,
    },
    /// `daemon.observed.v1`
    DaemonObserved {
        /// Owner.
        owner: String,
        /// Daemon.
        daemon: String,
        /// Observed state.
        observed: DaemonState,
    },
    /// `feature.state_changed.v1`
    FeatureStateChanged {
        /// Feature.
        name: String,
        /// New state.
        state: FeatureState,
    },
    /// `feature.observed.v1`
    FeatureObserved {
        /// Feature.
        name: String,
        /// Observed state.
        observed: FeatureState,
    },
    /// `feature.scope_synced.v1`
    FeatureScopeSynced {
        /// Feature.
        name: String,
        /// New scope.
        scope: Scope,
    },
    /// `schema.migrated.v1`
    SchemaMigrated {
        /// Schema name (`cairn` or an embedder's).
        schema: String,
        /// Version before.
        from: u32,
        /// Version after.
        to: u32,
        /// Compat version after.
        compat: u32,
        /// Migration name.
        name: String,
    },
    /// `token.created.v1`
    TokenCreated {
        /// Name.
        name: String,
        /// Role.
        role: Role,
        /// blake3 of the secret.
        hash: [u8; 32],
    },
    /// `token.revoked.v1`
    TokenRevoked {
        /// Name.
        name: String,
    },
    /// `store.wal_loss_accepted.v1`
    WalLossAccepted(WalLossAccepted),
    /// `epoch.started.v1`
    EpochStarted(EpochStarted),
    /// A drive event (`drive.*`).
    Drive(crate::drive::DriveEvent),
    /// An extension's event (`ext.<app>.<name>.v<N>`), applied by its registered handler.
    Ext {
        /// Kind.
        kind: String,
        /// Payload, encoded by the extension.
        payload: Vec<u8>,
    },
}

/// Payload layouts of the variants with inline fields (the encoding is of these tuples/structs).
mod wire {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub struct PackageStatusChanged {
        pub package: String,
        pub status: v1::PackageStatus,
    }
    #[derive(Serialize, Deserialize)]
    pub struct Package {
        pub package: String,
    }
    #[derive(Serialize, Deserialize)]
    pub struct Change {
        pub change: Uuid,
    }
    #[derive(Serialize, Deserialize)]
    pub struct TaskStarted {
        pub change: Uuid,
        pub task: u32,
        pub undo: bool,
    }
    #[derive(Serialize, Deserialize)]
    pub struct TaskFinished {
        pub change: Uuid,
        pub task: u32,
        pub undo: bool,
        pub outcome: TaskOutcome,
    }
    #[derive(Serialize, Deserialize)]
    pub struct HookFinished {
        pub hook: HookRef,
        pub result: HookResult,
    }
    #[derive(Serialize, Deserialize)]
    pub struct ConnectionEstablished {
        pub plug: End,
        pub slot: End,
        pub interface: String,
        pub auto: bool,
    }
    #[derive(Serialize, Deserialize)]
    pub struct ConnectionRemoved {
        pub plug: End,
        pub slot: End,
        pub undesired: bool,
    }
    #[derive(Serialize, Deserialize)]
    pub struct VarSet {
        pub owner: String,
        pub key: String,
        pub value: serde_bytes::ByteBuf,
    }
    #[derive(Serialize, Deserialize)]
    pub struct VarsDeleted {
        pub owner: String,
        pub keys: Vec<String>,
    }
    #[derive(Serialize, Deserialize)]
    pub struct QueuePut {
        pub owner: String,
        pub queue: String,
        pub items: Vec<serde_bytes::ByteBuf>,
    }
    #[derive(Serialize, Deserialize)]
    pub struct QueueAcked {
        pub owner: String,
        pub queue: String,
        pub upto: u64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct VaultSet {
        pub owner: String,
        pub vault: String,
        pub sealed: serde_bytes::ByteBuf,
    }
    #[derive(Serialize, Deserialize)]
    pub struct DaemonDesired {
        pub owner: String,
        pub daemon: String,
        pub desired: DaemonState,
    }
    #[derive(Serialize, Deserialize)]
    pub struct DaemonObserved {
        pub owner: String,
        pub daemon: String,
        pub observed: DaemonState,
    }
    #[derive(Serialize, Deserialize)]
    pub struct DaemonRan {
        pub owner: String,
        pub daemon: String,
        pub state: crate::model::DaemonRun,
        pub restarts: u32,
    }
    #[derive(Serialize, Deserialize)]
    pub struct FeatureStateChanged {
        pub name: String,
        pub state: FeatureState,
    }
    #[derive(Serialize, Deserialize)]
    pub struct FeatureObserved {
        pub name: String,
        pub observed: FeatureState,
    }
    #[derive(Serialize, Deserialize)]
    pub struct FeatureScopeSynced {
        pub name: String,
        pub scope: Scope,
    }
    #[derive(Serialize, Deserialize)]
    pub struct TokenCreated {
        pub name: String,
        pub role: Role,
        pub hash: [u8; 32],
    }
    #[derive(Serialize, Deserialize)]
    pub struct TokenRevoked {
        pub name: String,
    }
    #[derive(Serialize, Deserialize)]
    pub struct SchemaMigrated {
        pub schema: String,
        pub from: u32,
        pub to: u32,
        pub compat: u32,
        pub name: String,
    }
}

/// The `*.v1` layouts of a change and a package status, as those kinds were first written. The
/// kernel's own types have since moved on (a task's notes and a broken package's reason are
/// typed facts now, rendered when read), and the bytes of a v1 event never change, so these
/// events are encoded through these copies. Reading one, a note or a reason it states in words
/// becomes [`TaskNote::Stated`] / [`BrokenReason::Stated`]; writing one, a typed note or reason
/// is rendered (decide copies a broken package's status into an uninstall's undo step).
mod v1 {
    use super::*;
    use crate::change::TaskNote;
    use crate::change::{ChangeKind, ChangeStatus, Step as NowStep, Task as NowTask, TaskStatus};
    use crate::records::{BrokenReason, PackageStatus as NowStatus};

    #[derive(Serialize, Deserialize)]
    pub struct InstallStarted {
        pub manifest: Manifest1,
        pub change: Change,
    }

    /// `package.install_started.v2`: the v1 layout with today's manifest (a daemon may name
    /// its feature). Written only for a manifest that needs it, so a log without
    /// feature-linked daemons stays readable by the binaries that wrote v1.
    #[derive(Serialize, Deserialize)]
    pub struct InstallStarted2 {
        pub manifest: Manifest,
        pub change: Change,
    }

    /// The manifest as `package.install_started.v1` stores it: its daemons name no feature.
    #[derive(Serialize, Deserialize)]
    pub struct Manifest1 {
        pub name: String,
        pub version: String,
        pub hooks: std::collections::BTreeMap<String, crate::manifest::HookSpec>,
        pub vars: std::collections::BTreeMap<String, String>,
        pub queues: Vec<String>,
        pub vaults: Vec<String>,
        pub daemons: Vec<DaemonDecl1>,
        pub features: Vec<crate::manifest::FeatureDecl>,
        pub plugs: Vec<crate::manifest::PlugDecl>,
        pub slots: Vec<crate::manifest::SlotDecl>,
        pub model: Vec<crate::manifest::ModelType>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct DaemonDecl1 {
        pub name: String,
        pub command: Vec<String>,
        pub restart: crate::model::Restart,
        pub enabled: bool,
    }

    impl From<Manifest1> for Manifest {
        fn from(m: Manifest1) -> Self {
            Manifest {
                name: m.name,
                version: m.version,
                hooks: m.hooks,
                vars: m.vars,
                queues: m.queues,
                vaults: m.vaults,
                daemons: m
                    .daemons
                    .into_iter()
                    .map(|d| crate::manifest::DaemonDecl {
                        name: d.name,
                        command: d.command,
                        restart: d.restart,
                        enabled: d.enabled,
                        feature: None,
                    })
                    .collect(),
                features: m.features,
                plugs: m.plugs,
                slots: m.slots,
                model: m.model,
            }
        }
    }

    /// Only for a manifest whose daemons name no feature (the kind's guard in the event
    /// table); a feature would be lost.
    impl From<Manifest> for Manifest1 {
        fn from(m: Manifest) -> Self {
            assert!(
                m.daemons.iter().all(crate::manifest::DaemonDecl::is_v1),
                "package.install_started.v1 holds no daemon that names a feature (its kind guard)"
            );
            Manifest1 {
                name: m.name,
                version: m.version,
                hooks: m.hooks,
                vars: m.vars,
                queues: m.queues,
                vaults: m.vaults,
                daemons: m
                    .daemons
                    .into_iter()
                    .map(|d| DaemonDecl1 {
                        name: d.name,
                        command: d.command,
                        restart: d.restart,
                        enabled: d.enabled,
                    })
                    .collect(),
                features: m.features,
                plugs: m.plugs,
                slots: m.slots,
                model: m.model,
            }
        }
    }

    impl From<InstallStarted2> for super::InstallStarted {
        fn from(e: InstallStarted2) -> Self {
            super::InstallStarted {
                manifest: e.manifest,
                change: e.change.into(),
            }
        }
    }

    impl From<super::InstallStarted> for InstallStarted2 {
        fn from(e: super::InstallStarted) -> Self {
            InstallStarted2 {
                manifest: e.manifest,
                change: e.change.into(),
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    pub struct UninstallStarted {
        pub package: String,
        pub keep: Vec<ResourceKind>,
        pub change: Change,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Change {
        pub id: Uuid,
        pub kind: ChangeKind,
        pub summary: String,
        pub packages: Vec<String>,
        pub tasks: Vec<Task>,
        pub status: ChangeStatus,
        pub aborted: bool,
        pub actor: String,
        pub spawn_ms: u64,
        pub ready_ms: Option<u64>,
        pub revision: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Task {
        pub name: String,
        pub step: Step,
        pub undo: Step,
        pub status: TaskStatus,
        pub ignore_error: bool,
        pub irreversible: bool,
        pub attempts: u32,
        pub log: Vec<String>,
    }

    /// The variants in their v1 order (the encoding is by position).
    #[derive(Serialize, Deserialize)]
    pub enum Step {
        Hook {
            package: String,
            hook: String,
            plug: Option<End>,
            slot: Option<End>,
        },
        Establish {
            plug: End,
            slot: End,
            interface: String,
            auto: bool,
            undesired: bool,
        },
        RemoveConnection {
            plug: End,
            slot: End,
            undesired: bool,
        },
        MarkInstalled {
            package: String,
        },
        MarkBroken {
            package: String,
        },
        MarkUninstalling {
            package: String,
            keep: Vec<ResourceKind>,
        },
        RestoreStatus {
            package: String,
            status: PackageStatus,
        },
        CancelOnload {
            package: String,
        },
        DeleteResources {
            package: String,
            keep: Vec<ResourceKind>,
        },
        RemovePackage {
            package: String,
        },
        Nothing,
        /// Added after v1, last so that every earlier step keeps its bytes. A binary from
        /// before daemons were supervised cannot decode it, so it appears only in the payload
        /// of `package.uninstall_started.v2`: a kind that binary refuses by name, before it
        /// decodes anything. The v1 kinds never hold it ([`only_v1_steps`]).
        StopDaemons {
            package: String,
        },
    }

    impl Step {
        fn is_v1(&self) -> bool {
            match self {
                Step::Hook { .. }
                | Step::Establish { .. }
                | Step::RemoveConnection { .. }
                | Step::MarkInstalled { .. }
                | Step::MarkBroken { .. }
                | Step::MarkUninstalling { .. }
                | Step::RestoreStatus { .. }
                | Step::CancelOnload { .. }
                | Step::DeleteResources { .. }
                | Step::RemovePackage { .. }
                | Step::Nothing => true,
                Step::StopDaemons { .. } => false,
            }
        }
    }

    /// Whether every step of `change` has the layout of the v1 kinds (no `stop-daemons`).
    pub fn steps_are_v1(change: &ChangeRecord) -> bool {
        change.tasks.iter().all(|t| {
            [&t.step, &t.undo]
                .into_iter()
                .all(|s| !matches!(s, NowStep::StopDaemons { .. }))
        })
    }

    /// The payloads that hold a change.
    pub trait HasChange {
        fn change(&self) -> &Change;
    }
    impl HasChange for Change {
        fn change(&self) -> &Change {
            self
        }
    }
    impl HasChange for InstallStarted {
        fn change(&self) -> &Change {
            &self.change
        }
    }
    impl HasChange for InstallStarted2 {
        fn change(&self) -> &Change {
            &self.change
        }
    }
    impl HasChange for UninstallStarted {
        fn change(&self) -> &Change {
            &self.change
        }
    }

    /// A payload of a v1-layout kind whose change holds a step added later is refused, as
    /// the binaries that wrote the kind would refuse it.
    pub fn only_v1_steps<T: HasChange>(kind: &str, payload: T) -> Result<T, EventError> {
        let ok = payload
            .change()
            .tasks
            .iter()
            .all(|t| t.step.is_v1() && t.undo.is_v1());
        if ok {
            Ok(payload)
        } else {
            Err(EventError::BadPayload {
                kind: kind.to_string(),
                reason: "a stop-daemons step, which only package.uninstall_started.v2 holds"
                    .to_string(),
            })
        }
    }

    /// Only an uninstall has a `stop-daemons` step, and its event picks its kind by it; any
    /// other change that held one would be written in a layout its kind's readers refuse.
    pub fn assert_v1_steps(kind: &str, change: &ChangeRecord) {
        assert!(
            steps_are_v1(change),
            "only an uninstall change holds a stop-daemons step, never a {kind} event"
        );
    }

    /// The variants in their v1 order.
    #[derive(Serialize, Deserialize)]
    pub enum PackageStatus {
        Installing {
            change: Uuid,
        },
        Installed,
        Uninstalling {
            keep: Vec<ResourceKind>,
            change: Uuid,
        },
        Broken {
            reason: String,
        },
    }

    impl From<InstallStarted> for super::InstallStarted {
        fn from(e: InstallStarted) -> Self {
            super::InstallStarted {
                manifest: e.manifest.into(),
                change: e.change.into(),
            }
        }
    }

    impl From<super::InstallStarted> for InstallStarted {
        fn from(e: super::InstallStarted) -> Self {
            InstallStarted {
                manifest: e.manifest.into(),
                change: e.change.into(),
            }
        }
    }

    impl From<UninstallStarted> for super::UninstallStarted {
        fn from(e: UninstallStarted) -> Self {
            super::UninstallStarted {
                package: e.package,
                keep: e.keep,
                change: e.change.into(),
            }
        }
    }

    impl From<super::UninstallStarted> for UninstallStarted {
        fn from(e: super::UninstallStarted) -> Self {
            UninstallStarted {
                package: e.package,
                keep: e.keep,
                change: e.change.into(),
            }
        }
    }

    impl From<Change> for ChangeRecord {
        fn from(c: Change) -> Self {
            ChangeRecord {
                id: c.id,
                kind: c.kind,
                summary: c.summary,
                packages: c.packages,
                tasks: c.tasks.into_iter().map(NowTask::from).collect(),
                status: c.status,
                aborted: c.aborted,
                actor: c.actor,
                spawn_ms: c.spawn_ms,
                ready_ms: c.ready_ms,
                revision: c.revision,
            }
        }
    }

    impl From<ChangeRecord> for Change {
        fn from(c: ChangeRecord) -> Self {
            Change {
                id: c.id,
                kind: c.kind,
                summary: c.summary,
                packages: c.packages,
                tasks: c.tasks.into_iter().map(Task::from).collect(),
                status: c.status,
                aborted: c.aborted,
                actor: c.actor,
                spawn_ms: c.spawn_ms,
                ready_ms: c.ready_ms,
                revision: c.revision,
            }
        }
    }

    impl From<Task> for NowTask {
        fn from(t: Task) -> Self {
            NowTask {
                name: t.name,
                step: t.step.into(),
                undo: t.undo.into(),
                status: t.status,
                ignore_error: t.ignore_error,
                irreversible: t.irreversible,
                attempts: t.attempts,
                log: t
                    .log
                    .into_iter()
                    .map(|text| TaskNote::Stated { text })
                    .collect(),
            }
        }
    }

    impl From<NowTask> for Task {
        fn from(t: NowTask) -> Self {
            Task {
                name: t.name,
                step: t.step.into(),
                undo: t.undo.into(),
                status: t.status,
                ignore_error: t.ignore_error,
                irreversible: t.irreversible,
                attempts: t.attempts,
                log: t.log.iter().map(TaskNote::to_string).collect(),
            }
        }
    }

    impl From<Step> for NowStep {
        fn from(s: Step) -> Self {
            match s {
                Step::Hook {
                    package,
                    hook,
                    plug,
                    slot,
                } => NowStep::Hook {
                    package,
                    hook,
                    plug,
                    slot,
                },
                Step::Establish {
                    plug,
                    slot,
                    interface,
                    auto,
                    undesired,
                } => NowStep::Establish {
                    plug,
                    slot,
                    interface,
                    auto,
                    undesired,
                },
                Step::RemoveConnection {
                    plug,
                    slot,
                    undesired,
                } => NowStep::RemoveConnection {
                    plug,
                    slot,
                    undesired,
                },
                Step::MarkInstalled { package } => NowStep::MarkInstalled { package },
                Step::MarkBroken { package } => NowStep::MarkBroken { package },
                Step::MarkUninstalling { package, keep } => {
                    NowStep::MarkUninstalling { package, keep }
                }
                Step::RestoreStatus { package, status } => NowStep::RestoreStatus {
                    package,
                    status: status.into(),
                },
                Step::CancelOnload { package } => NowStep::CancelOnload { package },
                Step::DeleteResources { package, keep } => {
                    NowStep::DeleteResources { package, keep }
                }
                Step::RemovePackage { package } => NowStep::RemovePackage { package },
                Step::Nothing => NowStep::Nothing,
                Step::StopDaemons { package } => NowStep::StopDaemons { package },
            }
        }
    }

    impl From<NowStep> for Step {
        fn from(s: NowStep) -> Self {
            match s {
                NowStep::Hook {
                    package,
                    hook,
                    plug,
                    slot,
                } => Step::Hook {
                    package,
                    hook,
                    plug,
                    slot,
                },
                NowStep::Establish {
                    plug,
                    slot,
                    interface,
                    auto,
                    undesired,
                } => Step::Establish {
                    plug,
                    slot,
                    interface,
                    auto,
                    undesired,
                },
                NowStep::RemoveConnection {
                    plug,
                    slot,
                    undesired,
                } => Step::RemoveConnection {
                    plug,
                    slot,
                    undesired,
                },
                NowStep::MarkInstalled { package } => Step::MarkInstalled { package },
                NowStep::MarkBroken { package } => Step::MarkBroken { package },
                NowStep::MarkUninstalling { package, keep } => {
                    Step::MarkUninstalling { package, keep }
                }
                NowStep::RestoreStatus { package, status } => Step::RestoreStatus {
                    package,
                    status: status.into(),
                },
                NowStep::CancelOnload { package } => Step::CancelOnload { package },
                NowStep::DeleteResources { package, keep } => {
                    Step::DeleteResources { package, keep }
                }
                NowStep::RemovePackage { package } => Step::RemovePackage { package },
                NowStep::Nothing => Step::Nothing,
                NowStep::StopDaemons { package } => Step::StopDaemons { package },
            }
        }
    }

    impl From<PackageStatus> for NowStatus {
        fn from(s: PackageStatus) -> Self {
            match s {
                PackageStatus::Installing { change } => NowStatus::Installing { change },
                PackageStatus::Installed => NowStatus::Installed,
                PackageStatus::Uninstalling { keep, change } => {
                    NowStatus::Uninstalling { keep, change }
                }
                PackageStatus::Broken { reason } => NowStatus::Broken {
                    reason: BrokenReason::Stated { why: reason },
                },
            }
        }
    }

    impl From<NowStatus> for PackageStatus {
        fn from(s: NowStatus) -> Self {
            match s {
                NowStatus::Installing { change } => PackageStatus::Installing { change },
                NowStatus::Installed => PackageStatus::Installed,
                NowStatus::Uninstalling { keep, change } => {
                    PackageStatus::Uninstalling { keep, change }
                }
                NowStatus::Broken { reason } => PackageStatus::Broken {
                    reason: reason.to_string(),
                },
            }
        }
    }
}

/// Why stored bytes are not a known event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No decoder for the kind.
    #[error("unknown event kind {0:?} (is an extension or a newer binary needed?)")]
    UnknownKind(String),
    /// The payload does not decode as the kind's layout.
    #[error("payload of {kind:?} does not decode: {reason}")]
    BadPayload {
        /// Kind.
        kind: String,
        /// Decoder message.
        reason: String,
    },
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    cairn_log::codec::encode_value(v)
        .expect("kernel events are plain serde types that the codec always encodes")
}

fn dec<T: serde::de::DeserializeOwned>(kind: &str, bytes: &[u8]) -> Result<T, EventError> {
    cairn_log::codec::decode_value(bytes).map_err(|e| EventError::BadPayload {
        kind: kind.to_string(),
        reason: e.to_string(),
    })
}

/// The one table of built-in event kinds: for each, its constant in [`kinds`], its kind
/// string, the subsystem whose `apply` folds it, how the event encodes and how the payload
/// decodes. It generates [`kinds`] (with [`kinds::ALL`]), [`Event::kind`], [`Event::encode`],
/// [`Event::decode`] and [`Event::subsystem`], so adding a kind is one entry here and an arm
/// in its subsystem's `apply`.
macro_rules! event_table {
    ($(
        $konst:ident = $kind:literal, $sub:ident,
        $pat:pat $(if $guard:expr)? => $enc:expr,
        |$k:ident, $p:ident| $dec:expr;
    )*) => {
        /// Kind strings of the built-in events.
        pub mod kinds {
            $(
                #[allow(missing_docs)]
                pub const $konst: &str = $kind;
            )*
            /// Every built-in kind: the golden tests check that each one has a golden event.
            pub const ALL: &[&str] = &[$($konst),*];
            /// Prefix of extension kinds.
            pub const EXT_PREFIX: &str = "ext.";
        }

        impl Event {
            /// The event's kind string.
            #[allow(unused_variables)]
            pub fn kind(&self) -> &str {
                match self {
                    $($pat $(if $guard)? => kinds::$konst,)*
                    Event::Ext { kind, .. } => kind,
                }
            }

            /// The subsystem whose `apply` folds this event.
            #[allow(unused_variables)]
            pub fn subsystem(&self) -> Subsystem {
                match self {
                    $($pat $(if $guard)? => Subsystem::$sub,)*
                    Event::Ext { .. } => Subsystem::Extensions,
                }
            }

            /// The subsystem whose `apply` folds events of `kind`, without decoding one: `None`
            /// for a kind this binary does not know.
            pub fn subsystem_of(kind: &str) -> Option<Subsystem> {
                match kind {
                    $(kinds::$konst => Some(Subsystem::$sub),)*
                    other if other.starts_with(kinds::EXT_PREFIX) => Some(Subsystem::Extensions),
                    _ => None,
                }
            }

            /// The event's payload bytes.
            pub fn encode(&self) -> Vec<u8> {
                match self.clone() {
                    $($pat $(if $guard)? => $enc,)*
                    Event::Ext { payload, .. } => payload,
                }
            }

            /// Decodes a stored event. Extension kinds decode to [`Event::Ext`] (their handler
            /// checks the payload); any other unknown kind is an error.
            pub fn decode(kind: &str, payload: &[u8]) -> Result<Event, EventError> {
                Ok(match kind {
                    $(kinds::$konst => {
                        let ($k, $p) = (kind, payload);
                        $dec
                    })*
                    other if other.starts_with(kinds::EXT_PREFIX) => Event::Ext {
                        kind: other.to_string(),
                        payload: payload.to_vec(),
                    },
                    other => return Err(EventError::UnknownKind(other.to_string())),
                })
            }
        }
    };
}

event_table! {
    INSTALL_STARTED = "package.install_started.v1", Lifecycle,
        Event::InstallStarted(e) if e.manifest.daemons.iter().all(DaemonDecl::is_v1) => {
            v1::assert_v1_steps(kinds::INSTALL_STARTED, &e.change);
            enc(&v1::InstallStarted::from(e))
        },
        |k, p| Event::InstallStarted(v1::only_v1_steps(k, dec::<v1::InstallStarted>(k, p)?)?.into());
    INSTALL_STARTED_2 = "package.install_started.v2", Lifecycle,
        Event::InstallStarted(e) => {
            v1::assert_v1_steps(kinds::INSTALL_STARTED_2, &e.change);
            enc(&v1::InstallStarted2::from(e))
        },
        |k, p| Event::InstallStarted(v1::only_v1_steps(k, dec::<v1::InstallStarted2>(k, p)?)?.into());
    UNINSTALL_STARTED = "package.uninstall_started.v1", Lifecycle,
        Event::UninstallStarted(e) if v1::steps_are_v1(&e.change) => {
            enc(&v1::UninstallStarted::from(e))
        },
        |k, p| Event::UninstallStarted(v1::only_v1_steps(k, dec::<v1::UninstallStarted>(k, p)?)?.into());
    UNINSTALL_STARTED_2 = "package.uninstall_started.v2", Lifecycle,
        Event::UninstallStarted(e) => enc(&v1::UninstallStarted::from(e)),
        |k, p| Event::UninstallStarted(dec::<v1::UninstallStarted>(k, p)?.into());
    PACKAGE_STATUS_CHANGED = "package.status_changed.v1", Lifecycle,
        Event::PackageStatusChanged { package, status } => enc(&wire::PackageStatusChanged {
            package,
            status: status.into(),
        }),
        |k, p| {
            let w: wire::PackageStatusChanged = dec(k, p)?;
            Event::PackageStatusChanged { package: w.package, status: w.status.into() }
        };
    PACKAGE_REMOVED = "package.removed.v1", Lifecycle,
        Event::PackageRemoved { package } => enc(&wire::Package { package }),
        |k, p| {
            let w: wire::Package = dec(k, p)?;
            Event::PackageRemoved { package: w.package }
        };
    RESOURCES_DELETED = "resources.deleted.v1", Resources,
        Event::ResourcesDeleted(e) => enc(&e),
        |k, p| Event::ResourcesDeleted(dec(k, p)?);
    CHANGE_CREATED = "change.created.v1", Changes,
        Event::ChangeCreated(c) => {
            v1::assert_v1_steps(kinds::CHANGE_CREATED, &c);
            enc(&v1::Change::from(c))
        },
        |k, p| Event::ChangeCreated(v1::only_v1_steps(k, dec::<v1::Change>(k, p)?)?.into());
    ABORT_REQUESTED = "change.abort_requested.v1", Changes,
        Event::AbortRequested { change } => enc(&wire::Change { change }),
        |k, p| {
            let w: wire::Change = dec(k, p)?;
            Event::AbortRequested { change: w.change }
        };
    TASK_STARTED = "task.started.v1", Changes,
        Event::TaskStarted { change, task, undo } => enc(&wire::TaskStarted { change, task, undo }),
        |k, p| {
            let w: wire::TaskStarted = dec(k, p)?;
            Event::TaskStarted { change: w.change, task: w.task, undo: w.undo }
        };
    TASK_FINISHED = "task.finished.v1", Changes,
        Event::TaskFinished { change, task, undo, outcome } => enc(&wire::TaskFinished {
            change,
            task,
            undo,
            outcome,
        }),
        |k, p| {
            let w: wire::TaskFinished = dec(k, p)?;
            Event::TaskFinished {
                change: w.change,
                task: w.task,
                undo: w.undo,
                outcome: w.outcome,
            }
        };
    HOOK_STARTED = "hook.started.v1", Changes,
        Event::HookStarted(h) => enc(&h),
        |k, p| Event::HookStarted(dec(k, p)?);
    HOOK_FINISHED = "hook.finished.v1", Changes,
        Event::HookFinished(hook, result) => enc(&wire::HookFinished { hook, result }),
        |k, p| {
            let w: wire::HookFinished = dec(k, p)?;
            Event::HookFinished(w.hook, w.result)
        };
    HOOK_CANCELLED = "hook.cancelled.v1", Changes,
        Event::HookCancelled(h) => enc(&h),
        |k, p| Event::HookCancelled(dec(k, p)?);
    CONNECTION_ESTABLISHED = "connection.established.v1", Interfaces,
        Event::ConnectionEstablished { plug, slot, interface, auto } => {
            enc(&wire::ConnectionEstablished { plug, slot, interface, auto })
        },
        |k, p| {
            let w: wire::ConnectionEstablished = dec(k, p)?;
            Event::ConnectionEstablished {
                plug: w.plug,
                slot: w.slot,
                interface: w.interface,
                auto: w.auto,
            }
        };
    CONNECTION_REMOVED = "connection.removed.v1", Interfaces,
        Event::ConnectionRemoved { plug, slot, undesired } => {
            enc(&wire::ConnectionRemoved { plug, slot, undesired })
        },
        |k, p| {
            let w: wire::ConnectionRemoved = dec(k, p)?;
            Event::ConnectionRemoved { plug: w.plug, slot: w.slot, undesired: w.undesired }
        };
    // The same layout as a removal's.
    CONNECTION_MARKED = "connection.marked.v1", Interfaces,
        Event::ConnectionMarked { plug, slot, undesired } => {
            enc(&wire::ConnectionRemoved { plug, slot, undesired })
        },
        |k, p| {
            let w: wire::ConnectionRemoved = dec(k, p)?;
            Event::ConnectionMarked { plug: w.plug, slot: w.slot, undesired: w.undesired }
        };
    VAR_SET = "var.set.v1", Resources,
        Event::VarSet { owner, key, value } => enc(&wire::VarSet { owner, key, value }),
        |k, p| {
            let w: wire::VarSet = dec(k, p)?;
            Event::VarSet { owner: w.owner, key: w.key, value: w.value }
        };
    VARS_DELETED = "var.deleted.v1", Resources,
        Event::VarsDeleted { owner, keys } => enc(&wire::VarsDeleted { owner, keys }),
        |k, p| {
            let w: wire::VarsDeleted = dec(k, p)?;
            Event::VarsDeleted { owner: w.owner, keys: w.keys }
        };
    QUEUE_PUT = "queue.put.v1", Resources,
        Event::QueuePut { owner, queue, items } => enc(&wire::QueuePut { owner, queue, items }),
        |k, p| {
            let w: wire::QueuePut = dec(k, p)?;
            Event::QueuePut { owner: w.owner, queue: w.queue, items: w.items }
        };
    QUEUE_ACKED = "queue.acked.v1", Resources,
        Event::QueueAcked { owner, queue, upto } => enc(&wire::QueueAcked { owner, queue, upto }),
        |k, p| {
            let w: wire::QueueAcked = dec(k, p)?;
            Event::QueueAcked { owner: w.owner, queue: w.queue, upto: w.upto }
        };
    VAULT_SET = "vault.set.v1", Resources,
        Event::VaultSet { owner, vault, sealed } => enc(&wire::VaultSet { owner, vault, sealed }),
        |k, p| {
            let w: wire::VaultSet = dec(k, p)?;
            Event::VaultSet { owner: w.owner, vault: w.vault, sealed: w.sealed }
        };
    DAEMON_DESIRED = "daemon.desired_set.v1", Resources,
        Event::DaemonDesired { owner, daemon, desired } => {
            enc(&wire::DaemonDesired { owner, daemon, desired })
        },
        |k, p| {
            let w: wire::DaemonDesired = dec(k, p)?;
            Event::DaemonDesired { owner: w.owner, daemon: w.daemon, desired: w.desired }
        };
    DAEMON_OBSERVED = "daemon.observed.v1", Resources,
        Event::DaemonObserved { owner, daemon, observed } => {
            enc(&wire::DaemonObserved { owner, daemon, observed })
        },
        |k, p| {
            let w: wire::DaemonObserved = dec(k, p)?;
            Event::DaemonObserved { owner: w.owner, daemon: w.daemon, observed: w.observed }
        };
    DAEMON_RAN = "daemon.observed.v2", Resources,
        Event::DaemonRan { owner, daemon, observation } => enc(&wire::DaemonRan {
            owner,
            daemon,
            state: observation.state,
            restarts: observation.restarts,
        }),
        |k, p| {
            let w: wire::DaemonRan = dec(k, p)?;
            Event::DaemonRan {
                owner: w.owner,
                daemon: w.daemon,
                observation: crate::model::DaemonObservation {
                    state: w.state,
                    restarts: w.restarts,
                },
            }
        };
    FEATURE_STATE_CHANGED = "feature.state_changed.v1", Features,
        Event::FeatureStateChanged { name, state } => {
            enc(&wire::FeatureStateChanged { name, state })
        },
        |k, p| {
            let w: wire::FeatureStateChanged = dec(k, p)?;
            Event::FeatureStateChanged { name: w.name, state: w.state }
        };
    FEATURE_OBSERVED = "feature.observed.v1", Features,
        Event::FeatureObserved { name, observed } => {
            enc(&wire::FeatureObserved { name, observed })
        },
        |k, p| {
            let w: wire::FeatureObserved = dec(k, p)?;
            Event::FeatureObserved { name: w.name, observed: w.observed }
        };
    FEATURE_SCOPE_SYNCED = "feature.scope_synced.v1", Features,
        Event::FeatureScopeSynced { name, scope } => {
            enc(&wire::FeatureScopeSynced { name, scope })
        },
        |k, p| {
            let w: wire::FeatureScopeSynced = dec(k, p)?;
            Event::FeatureScopeSynced { name: w.name, scope: w.scope }
        };
    SCHEMA_MIGRATED = "schema.migrated.v1", Schema,
        Event::SchemaMigrated { schema, from, to, compat, name } => {
            enc(&wire::SchemaMigrated { schema, from, to, compat, name })
        },
        |k, p| {
            let w: wire::SchemaMigrated = dec(k, p)?;
            Event::SchemaMigrated {
                schema: w.schema,
                from: w.from,
                to: w.to,
                compat: w.compat,
                name: w.name,
            }
        };
    TOKEN_CREATED = "token.created.v1", Tokens,
        Event::TokenCreated { name, role, hash } => enc(&wire::TokenCreated { name, role, hash }),
        |k, p| {
            let w: wire::TokenCreated = dec(k, p)?;
            Event::TokenCreated { name: w.name, role: w.role, hash: w.hash }
        };
    TOKEN_REVOKED = "token.revoked.v1", Tokens,
        Event::TokenRevoked { name } => enc(&wire::TokenRevoked { name }),
        |k, p| {
            let w: wire::TokenRevoked = dec(k, p)?;
            Event::TokenRevoked { name: w.name }
        };
    WAL_LOSS_ACCEPTED = "store.wal_loss_accepted.v1", Store,
        Event::WalLossAccepted(e) => enc(&e),
        |k, p| Event::WalLossAccepted(dec(k, p)?);
    EPOCH_STARTED = "epoch.started.v1", Epoch,
        Event::EpochStarted(e) => enc(&e),
        |k, p| Event::EpochStarted(dec(k, p)?);
    DRIVE_ITEM_ADDED = "drive.item_added.v1", Drive,
        Event::Drive(DriveEvent::ItemAdded(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::ItemAdded(dec(k, p)?));
    DRIVE_ITEM_MOVED = "drive.item_moved.v1", Drive,
        Event::Drive(DriveEvent::ItemMoved(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::ItemMoved(dec(k, p)?));
    DRIVE_ITEM_DELETED = "drive.item_deleted.v1", Drive,
        Event::Drive(DriveEvent::ItemDeleted(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::ItemDeleted(dec(k, p)?));
    DRIVE_DATA_PUT = "drive.data_put.v1", Drive,
        Event::Drive(DriveEvent::DataPut(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::DataPut(dec(k, p)?));
    DRIVE_VERSION_DELETED = "drive.version_deleted.v1", Drive,
        Event::Drive(DriveEvent::VersionDeleted(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::VersionDeleted(dec(k, p)?));
    DRIVE_PERM_SET = "drive.perm_set.v1", Drive,
        Event::Drive(DriveEvent::PermSet(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::PermSet(dec(k, p)?));
    DRIVE_TYPE_SET = "drive.type_set.v1", Drive,
        Event::Drive(DriveEvent::TypeSet(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::TypeSet(dec(k, p)?));
    DRIVE_MIGRATED = "drive.migrated.v1", Drive,
        Event::Drive(DriveEvent::Migrated(e)) => enc(&e),
        |k, p| Event::Drive(DriveEvent::Migrated(dec(k, p)?));
}
