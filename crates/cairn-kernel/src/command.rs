//! Commands (requests to change state) and rejections (why one was refused; nothing written).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::End;
#[cfg(doc)]
use crate::echo::ERROR_ECHO_CHARS_MAX;
use crate::echo::{echo, echo_bare};
use crate::event::HookResult;
use crate::manifest::ManifestError;
use crate::model::{DaemonState, FeatureState, ResourceKind, Role, Scope};
use crate::Subsystem;

pub use crate::manifest::VAR_VALUE_BYTES_MAX;
/// Largest queue item.
pub const QUEUE_ITEM_BYTES_MAX: usize = 64 * 1024;
/// Most items in one `queue put`.
pub const QUEUE_PUT_ITEMS_MAX: usize = 1024;
/// Largest sealed vault value (plaintext limit plus sealing overhead).
pub const VAULT_SEALED_BYTES_MAX: usize = 64 * 1024 + 64;
/// Most keys in one bulk var delete.
pub const VAR_DELETE_KEYS_MAX: usize = 4096;
/// Largest extension event payload.
pub const EXT_PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
pub use cairn_log::limits::IDEMPOTENCY_KEY_BYTES_MAX;
/// Idempotency keys remembered (the oldest is forgotten first).
pub const IDEMPOTENCY_KEYS_RETAINED: u64 = 100_000;

/// A request to change state. Ids (`change`) are chosen by the runtime: the kernel draws no
/// randomness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Install a package from a validated manifest.
    Install {
        /// The manifest (validated: see [`crate::manifest::Validated`]).
        manifest: crate::manifest::Validated,
        /// Id for the install change.
        change: Uuid,
    },
    /// Uninstall a package.
    Uninstall {
        /// The package.
        package: String,
        /// Resource kinds to keep.
        keep: Vec<ResourceKind>,
        /// Abort (and return to installed) if `onuninstall` fails.
        strict: bool,
        /// Id for the uninstall change.
        change: Uuid,
    },
    /// Connect a plug to a slot.
    Connect {
        /// Plug end.
        plug: End,
        /// Slot end.
        slot: End,
        /// Id for the connect change.
        change: Uuid,
    },
    /// Disconnect a plug from a slot.
    Disconnect {
        /// Plug end.
        plug: End,
        /// Slot end.
        slot: End,
        /// Id for the disconnect change.
        change: Uuid,
    },
    /// Abort a change: cancel its running task, then undo.
    Abort {
        /// The change.
        change: Uuid,
    },
    /// Engine: perform a kernel step (or an undeclared hook's no-op) of the next task.
    TaskRun {
        /// The change.
        change: Uuid,
        /// Task index.
        task: u32,
        /// Undo rather than do.
        undo: bool,
    },
    /// Engine: the next task's hook is starting.
    HookStart {
        /// The change.
        change: Uuid,
        /// Task index.
        task: u32,
        /// Undo rather than do.
        undo: bool,
    },
    /// Engine: the running task's hook ended (`cancelled`: killed by an abort).
    HookFinish {
        /// The change.
        change: Uuid,
        /// Task index.
        task: u32,
        /// Undo rather than do.
        undo: bool,
        /// What happened; `None` when it was cancelled.
        result: Option<HookResult>,
    },
    /// Engine: a package's `onload` is starting.
    OnloadStart {
        /// The package.
        package: String,
    },
    /// Engine: a package's `onload` ended.
    OnloadFinish {
        /// The package.
        package: String,
        /// The attempt that ended.
        attempt: u32,
        /// What happened.
        result: HookResult,
    },
    /// Set a variable.
    VarSet {
        /// Owning package.
        owner: String,
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Expected revision of the variable (0: must not exist).
        expect_revision: Option<u64>,
    },
    /// Delete one or many variables (one event); each must exist.
    VarDelete {
        /// Owning package.
        owner: String,
        /// Keys.
        keys: Vec<String>,
    },
    /// Append items to a queue (one event).
    QueuePut {
        /// Owning package.
        owner: String,
        /// Queue.
        queue: String,
        /// Items.
        items: Vec<Vec<u8>>,
    },
    /// Acknowledge (and delete) items up to a sequence number.
    QueueAck {
        /// Owning package.
        owner: String,
        /// Queue.
        queue: String,
        /// Last item to acknowledge.
        upto: u64,
    },
    /// Store a sealed secret in a declared vault.
    VaultSet {
        /// Owning package.
        owner: String,
        /// Vault.
        vault: String,
        /// Sealed value (the runtime encrypts; the kernel never sees plaintext).
        sealed: Vec<u8>,
    },
    /// Set a daemon's desired state.
    DaemonSet {
        /// Owning package.
        owner: String,
        /// Daemon.
        daemon: String,
        /// Desired state.
        desired: DaemonState,
        /// Expected revision.
        expect_revision: Option<u64>,
    },
    /// Report a daemon's observed state.
    DaemonReport {
        /// Owning package.
        owner: String,
        /// Daemon.
        daemon: String,
        /// Observed state.
        observed: DaemonState,
    },
    /// Record what cairn's supervisor saw a daemon do (`daemon.observed.v2`). Rejected for a
    /// daemon that does not exist or that an uninstall kept (its package is gone): never an
    /// upsert.
    DaemonObserve {
        /// Owning package.
        owner: String,
        /// Daemon.
        daemon: String,
        /// What it saw.
        state: crate::model::DaemonRun,
        /// Restarts since the daemon was asked to run.
        restarts: u32,
    },
    /// Change a feature's state.
    FeatureSet {
        /// Feature.
        name: String,
        /// New state.
        state: FeatureState,
        /// Expected revision.
        expect_revision: Option<u64>,
    },
    /// Report a feature's observed state (from the service side).
    FeatureReport {
        /// Feature.
        name: String,
        /// Observed state.
        observed: FeatureState,
    },
    /// Sync a feature's scope.
    FeatureScopeSync {
        /// Feature.
        name: String,
        /// Scope.
        scope: Scope,
    },
    /// Record a registered schema migration (the runtime issues these at open).
    MigrateSchema {
        /// Schema.
        schema: String,
        /// Version before.
        from: u32,
        /// Version after.
        to: u32,
    },
    /// Create an API token (the runtime draws the secret; only its hash is logged).
    TokenCreate {
        /// Name (unique).
        name: String,
        /// Role.
        role: Role,
        /// blake3 of the secret.
        hash: [u8; 32],
    },
    /// Revoke an API token.
    TokenRevoke {
        /// Name.
        name: String,
    },
    /// Record that an operator accepted a WAL loss the store found (the runtime issues it
    /// once, after the acceptance).
    AcceptWalLoss(crate::event::WalLossAccepted),
    /// Start a new epoch as its leader (a promoted mirror). The store must already write in
    /// that epoch: this command's entry is the epoch's first.
    StartEpoch {
        /// The new epoch.
        epoch: u64,
        /// Who leads it.
        leader: String,
        /// The offset of the last entry of the previous epoch.
        prev_head: u64,
    },
    /// Append an extension event.
    Ext {
        /// Kind, `ext.<app>.<name>.v<N>`.
        kind: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A drive operation, checked against `actor`'s permissions.
    Drive {
        /// Who asks.
        actor: crate::drive::DriveActor,
        /// What.
        op: crate::drive::DriveCommand,
    },
}

impl Command {
    /// The subsystem whose `decide` validates this command (the routing table of commands).
    pub fn subsystem(&self) -> Subsystem {
        match self {
            Command::Install { .. }
            | Command::Uninstall { .. }
            | Command::OnloadStart { .. }
            | Command::OnloadFinish { .. } => Subsystem::Lifecycle,
            Command::Abort { .. }
            | Command::TaskRun { .. }
            | Command::HookStart { .. }
            | Command::HookFinish { .. } => Subsystem::Changes,
            Command::Connect { .. } | Command::Disconnect { .. } => Subsystem::Interfaces,
            Command::VarSet { .. }
            | Command::VarDelete { .. }
            | Command::QueuePut { .. }
            | Command::QueueAck { .. }
            | Command::VaultSet { .. }
            | Command::DaemonSet { .. }
            | Command::DaemonReport { .. }
            | Command::DaemonObserve { .. } => Subsystem::Resources,
            Command::FeatureSet { .. }
            | Command::FeatureReport { .. }
            | Command::FeatureScopeSync { .. } => Subsystem::Features,
            Command::MigrateSchema { .. } => Subsystem::Schema,
            Command::TokenCreate { .. } | Command::TokenRevoke { .. } => Subsystem::Tokens,
            Command::AcceptWalLoss(_) => Subsystem::Store,
            Command::StartEpoch { .. } => Subsystem::Epoch,
            Command::Ext { .. } => Subsystem::Extensions,
            Command::Drive { .. } => Subsystem::Drive,
        }
    }
}

/// What a rejection is about, for messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entity {
    /// A package.
    Package(String),
    /// A feature.
    Feature(String),
    /// A package-owned resource.
    Resource(ResourceKind, String, String),
    /// A plug.
    Plug(End),
    /// A slot.
    Slot(End),
    /// A connection.
    Connection(End, End),
    /// A change.
    Change(Uuid),
    /// A schema.
    Schema(String),
    /// An extension app.
    Extension(String),
    /// An API token.
    Token(String),
    /// A drive item (by path).
    DriveItem(String),
    /// A data version of a drive item (path, version).
    DriveVersion(String, String),
    /// A drive type.
    DriveType(String),
}

/// Names are user input: a message repeats at most [`ERROR_ECHO_CHARS_MAX`] characters of
/// each (see [`crate::echo`]).
impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entity::Package(p) => write!(f, "package {}", echo(p)),
            Entity::Feature(n) => write!(f, "feature {}", echo(n)),
            Entity::Resource(kind, owner, name) => {
                let what = match kind {
                    ResourceKind::Vars => "var",
                    ResourceKind::Queues => "queue",
                    ResourceKind::Vaults => "vault",
                    ResourceKind::Daemons => "daemon",
                    ResourceKind::Model => "model type",
                };
                write!(f, "{what} {} of package {}", echo(name), echo(owner))
            }
            Entity::Plug((p, n)) => write!(f, "plug {}:{}", echo_bare(p), echo_bare(n)),
            Entity::Slot((p, n)) => write!(f, "slot {}:{}", echo_bare(p), echo_bare(n)),
            Entity::Connection(plug, slot) => {
                write!(
                    f,
                    "connection {}:{} → {}:{}",
                    echo_bare(&plug.0),
                    echo_bare(&plug.1),
                    echo_bare(&slot.0),
                    echo_bare(&slot.1)
                )
            }
            Entity::Change(id) => write!(f, "change {id}"),
            Entity::Schema(s) => write!(f, "schema {}", echo(s)),
            Entity::Extension(a) => write!(f, "extension {}", echo(a)),
            Entity::Token(n) => write!(f, "token {}", echo(n)),
            Entity::DriveItem(p) => write!(f, "drive item {}", echo(p)),
            Entity::DriveVersion(p, v) => write!(f, "version {v} of drive item {}", echo(p)),
            Entity::DriveType(t) => write!(f, "drive type {}", echo(t)),
        }
    }
}

/// Why a command was refused. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The entity does not exist.
    #[error("{0} does not exist")]
    NotFound(Entity),
    /// The entity already exists.
    #[error("{0} already exists")]
    Exists(Entity),
    /// A change is in progress on the entity.
    #[error("{entity} has {kind} change in progress (change {change})")]
    Busy {
        /// The busy entity.
        entity: Entity,
        /// The change's kind, with its article (`an uninstall`).
        kind: String,
        /// The change.
        change: Uuid,
    },
    /// Optimistic concurrency: the entity changed since the caller read it.
    #[error("{entity} is at revision {actual}, not the expected {expected}")]
    RevisionMismatch {
        /// The entity.
        entity: Entity,
        /// What the caller expected.
        expected: u64,
        /// What it is.
        actual: u64,
    },
    /// The command makes no sense for the entity's current state.
    #[error("{entity}: {reason}")]
    State {
        /// The entity.
        entity: Entity,
        /// Why.
        reason: String,
    },
    /// A bad argument (name, size, value).
    #[error("{0}")]
    Invalid(String),
    /// A bad manifest.
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// The actor's permission on the item is below what the command needs.
    #[error("{who} may not do this on {what}: it needs {needed}")]
    Denied {
        /// The token's name.
        who: String,
        /// The item (or the drive's root).
        what: String,
        /// The level needed.
        needed: String,
    },
}

impl Rejection {
    /// A stable machine-readable code: `not_found`, `exists`, `conflict`, `revision_mismatch`,
    /// `invalid_state`, `invalid`, `bad_manifest`, `denied`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotFound(_) => "not_found",
            Rejection::Exists(_) => "exists",
            Rejection::Busy { .. } => "conflict",
            Rejection::RevisionMismatch { .. } => "revision_mismatch",
            Rejection::State { .. } => "invalid_state",
            Rejection::Invalid(_) => "invalid",
            Rejection::Manifest(_) => "bad_manifest",
            Rejection::Denied { .. } => "denied",
        }
    }

    pub(crate) fn state(entity: Entity, reason: impl Into<String>) -> Self {
        Rejection::State {
            entity,
            reason: reason.into(),
        }
    }
}
