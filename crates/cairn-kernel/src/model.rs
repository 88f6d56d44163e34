//! Small domain value types shared by the manifest, commands, events and records, with the
//! name rules they obey.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A feature's configured state. `always_*` states cannot be changed by `feature set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureState {
    /// On; may be switched off.
    Enabled,
    /// Off; may be switched on.
    Disabled,
    /// On, and cannot be changed.
    AlwaysEnabled,
    /// Off, and cannot be changed.
    AlwaysDisabled,
}

impl FeatureState {
    /// Every state, for parsers and property tests.
    pub const ALL: [FeatureState; 4] = [
        FeatureState::Enabled,
        FeatureState::Disabled,
        FeatureState::AlwaysEnabled,
        FeatureState::AlwaysDisabled,
    ];

    /// The state's name as written in manifests, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureState::Enabled => "enabled",
            FeatureState::Disabled => "disabled",
            FeatureState::AlwaysEnabled => "always_enabled",
            FeatureState::AlwaysDisabled => "always_disabled",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Option<FeatureState> {
        FeatureState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the state is fixed (`always_*`).
    pub fn is_fixed(self) -> bool {
        match self {
            FeatureState::AlwaysEnabled | FeatureState::AlwaysDisabled => true,
            FeatureState::Enabled | FeatureState::Disabled => false,
        }
    }
}

impl fmt::Display for FeatureState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a feature runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// Runs once for the whole system.
    pub global: bool,
    /// Runs once per instance.
    pub per_instance: bool,
}

/// When a daemon is restarted after it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Always.
    Always,
    /// Only after a failure.
    OnFailure,
    /// Never.
    Never,
}

impl Restart {
    /// The policy's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }
}

/// A daemon's desired or observed run state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    /// Should run / is running.
    Enabled,
    /// Should not run / is not running.
    Disabled,
}

impl DaemonState {
    /// The state's name: `enabled` or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Enabled => "enabled",
            DaemonState::Disabled => "disabled",
        }
    }
}

/// What a daemon's supervisor saw it do (`daemon.observed.v2`): a fact, rendered when read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonRun {
    /// It was started and runs.
    Running,
    /// Its process ended on its own (a restart may follow, by its policy).
    Exited {
        /// Exit status, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did (one cairn did not send).
        signal: Option<i32>,
    },
    /// It is left stopped until asked to run again.
    Failed {
        /// Why.
        reason: DaemonFailure,
    },
    /// Cairn stopped it (disabled, its feature disabled, its package uninstalled, its leader
    /// stepped down).
    Stopped,
}

impl DaemonRun {
    /// The state's name: `running`, `exited`, `failed`, `stopped`.
    pub fn name(&self) -> &'static str {
        match self {
            DaemonRun::Running => "running",
            DaemonRun::Exited { .. } => "exited",
            DaemonRun::Failed { .. } => "failed",
            DaemonRun::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for DaemonRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonRun::Running | DaemonRun::Stopped => f.write_str(self.name()),
            DaemonRun::Exited {
                code: Some(code), ..
            } => write!(f, "exited {code}"),
            DaemonRun::Exited {
                code: None,
                signal: Some(signal),
            } => write!(f, "exited (signal {signal})"),
            DaemonRun::Exited {
                code: None,
                signal: None,
            } => f.write_str("exited"),
            DaemonRun::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Why a daemon was marked failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonFailure {
    /// It ended `ends` times within `window_ms`: a crash loop.
    CrashLoop {
        /// Ends counted.
        ends: u32,
        /// The window, ms.
        window_ms: u64,
    },
    /// Its program could not be started (and its policy does not retry).
    SpawnFailed {
        /// The error the runtime got.
        error: String,
    },
}

impl std::fmt::Display for DaemonFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonFailure::CrashLoop { ends, window_ms } => write!(
                f,
                "crash loop: ended {ends} times within {} s",
                window_ms / 1000
            ),
            DaemonFailure::SpawnFailed { error } => write!(f, "cannot start: {error}"),
        }
    }
}

/// The last observation of a daemon's supervisor, as the projection keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DaemonObservation {
    /// What it saw.
    pub state: DaemonRun,
    /// Restarts since the daemon was last asked to run.
    pub restarts: u32,
}

/// An API token's role. Each role includes the ones before it, except `mirror`, which may only
/// follow the replication stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads (every GET).
    Read,
    /// Reads and commands.
    Write,
    /// Everything: tokens, backup, promote, vault reads.
    Admin,
    /// The replication stream only.
    Mirror,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Read, Role::Write, Role::Admin, Role::Mirror];

    /// The role's name as written in the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
            Role::Mirror => "mirror",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a token of this role may do what `needed` allows: `read` ⊂ `write` ⊂
    /// `admin`; `mirror` grants only the replication endpoints, and only a `mirror` token
    /// grants them (an admin token cannot stream the log: a leaked one must not turn into a
    /// copy of the workspace's log elsewhere without a token made for that).
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Mirror, Role::Mirror) => true,
            (Role::Mirror, Role::Read | Role::Write | Role::Admin) => false,
            (Role::Read | Role::Write | Role::Admin, Role::Mirror) => false,
            (Role::Admin, Role::Read | Role::Write | Role::Admin) => true,
            (Role::Write, Role::Read | Role::Write) => true,
            (Role::Write, Role::Admin) => false,
            (Role::Read, Role::Read) => true,
            (Role::Read, Role::Write | Role::Admin) => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of package-owned resources, as named in `uninstall --keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// Key/value variables.
    Vars,
    /// Durable FIFO queues.
    Queues,
    /// Encrypted secrets.
    Vaults,
    /// Declared background services.
    Daemons,
    /// Declared extension types.
    Model,
}

impl ResourceKind {
    /// Every kind, in canonical order.
    pub const ALL: [ResourceKind; 5] = [
        ResourceKind::Vars,
        ResourceKind::Queues,
        ResourceKind::Vaults,
        ResourceKind::Daemons,
        ResourceKind::Model,
    ];

    /// The kind's name as written in `--keep` and `CAIRN_KEEP`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Vars => "vars",
            ResourceKind::Queues => "queues",
            ResourceKind::Vaults => "vaults",
            ResourceKind::Daemons => "daemons",
            ResourceKind::Model => "model",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<ResourceKind> {
        ResourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest package name.
pub const PACKAGE_NAME_BYTES_MAX: usize = 63;
/// Longest resource, feature, plug or slot name.
pub const ITEM_NAME_BYTES_MAX: usize = 128;
/// Longest interface name.
pub const INTERFACE_NAME_BYTES_MAX: usize = 64;

/// Whether `name` is a valid package name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_package_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= PACKAGE_NAME_BYTES_MAX
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Whether `name` is a valid resource, feature, plug, slot or interface name:
/// `[a-z0-9][a-z0-9_.:-]{0,127}` (a colon allows model names such as `netmon:ip`).
pub fn is_item_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= ITEM_NAME_BYTES_MAX
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(*c, b'-' | b'_' | b'.' | b':')
        })
}

/// The rule [`is_package_name`] checks, for error messages.
pub const PACKAGE_NAME_RULE: &str = "[a-z0-9][a-z0-9-]{0,62}";
/// The rule [`is_item_name`] checks, for error messages.
pub const ITEM_NAME_RULE: &str = "[a-z0-9][a-z0-9_.:-]{0,127}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["a", "netmon", "0x", "a-b-c", &"a".repeat(63)] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a/b", "é", &"a".repeat(64)] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn item_names() {
        for ok in ["x", "netmon:ip", "a.b_c-d", &"a".repeat(128)] {
            assert!(is_item_name(ok), "{ok}");
        }
        for bad in ["", "_a", "a/b", "a b", "..", "A", &"a".repeat(129)] {
            assert!(!is_item_name(bad), "{bad}");
        }
    }

    #[test]
    fn state_names_round_trip() {
        for s in FeatureState::ALL {
            assert_eq!(FeatureState::parse(s.as_str()), Some(s));
        }
        for k in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FeatureState::parse("on"), None);
    }
}
