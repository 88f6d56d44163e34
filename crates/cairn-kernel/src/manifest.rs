//! Package manifests: the TOML a package is installed from, parsed strictly and validated, with
//! errors that name the field path and the reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{FeatureState, Restart, Scope};

/// Largest manifest accepted, in bytes of TOML.
pub const MANIFEST_BYTES_MAX: usize = 256 * 1024;
/// Longest hook timeout a manifest may ask for.
pub const HOOK_TIMEOUT_S_MAX: u64 = 24 * 3600;
/// Hook timeout when a manifest gives none.
pub const HOOK_TIMEOUT_S_DEFAULT: u64 = 600;

/// A validated package manifest. Stored in the package record (bincode), so only plain types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Package name.
    pub name: String,
    /// Package version (free text, 1..=64 printable ASCII bytes).
    pub version: String,
    /// Hooks by name (`onload`, `onuninstall`, `prepare-plug-<plug>`, ...).
    pub hooks: BTreeMap<String, HookSpec>,
    /// Initial variable values.
    pub vars: BTreeMap<String, String>,
    /// Declared queues.
    pub queues: Vec<String>,
    /// Declared vaults.
    pub vaults: Vec<String>,
    /// Declared daemons.
    pub daemons: Vec<DaemonDecl>,
    /// Declared features.
    pub features: Vec<FeatureDecl>,
    /// Declared plugs.
    pub plugs: Vec<PlugDecl>,
    /// Declared slots.
    pub slots: Vec<SlotDecl>,
    /// Declared model types.
    pub model: Vec<ModelType>,
}

/// How to run a hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// What to execute.
    pub exec: HookExec,
    /// Seconds before the hook is killed.
    pub timeout_s: u64,
}

/// A hook's program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookExec {
    /// `run = "..."`: run with `sh -c`.
    Shell(String),
    /// `command = [...]`: run as argv.
    Argv(Vec<String>),
}

/// A declared daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonDecl {
    /// Name.
    pub name: String,
    /// Argv.
    pub command: Vec<String>,
    /// Restart policy.
    pub restart: Restart,
    /// Initially desired enabled.
    pub enabled: bool,
}

/// A declared feature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureDecl {
    /// Name (unique across the workspace).
    pub name: String,
    /// Initial state.
    pub state: FeatureState,
    /// Restart the service automatically.
    pub auto_restart: bool,
    /// Scope.
    pub scope: Scope,
}

/// A declared plug.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlugDecl {
    /// Name (unique within the package).
    pub name: String,
    /// Interface it connects to.
    pub interface: String,
    /// Connect automatically at install to the one matching slot, if exactly one exists.
    pub auto_connect: bool,
}

/// A declared slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotDecl {
    /// Name (unique within the package).
    pub name: String,
    /// Interface it offers.
    pub interface: String,
}

/// A declared model type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelType {
    /// Type name, e.g. `netmon:ip`.
    pub name: String,
    /// Base type, e.g. `str`.
    pub base: String,
    /// Documentation.
    pub doc: String,
}

/// A manifest that cannot be used: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("manifest {path}: {reason}")]
pub struct ManifestError {
    /// Field path, e.g. `features[1].name`, or `(document)` for the whole file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}
