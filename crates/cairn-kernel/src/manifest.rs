//! Package manifests: the TOML a package is installed from, parsed strictly and validated, with
//! errors that name the field path and the reason.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{
    is_item_name, is_package_name, FeatureState, Restart, Scope, INTERFACE_NAME_BYTES_MAX,
    ITEM_NAME_RULE, PACKAGE_NAME_RULE,
};

/// Largest manifest accepted, in bytes of TOML.
pub const MANIFEST_BYTES_MAX: usize = 256 * 1024;
/// Longest hook timeout a manifest may ask for.
pub const HOOK_TIMEOUT_S_MAX: u64 = 24 * 3600;
/// Hook timeout when a manifest gives none.
pub const HOOK_TIMEOUT_S_DEFAULT: u64 = 600;
/// Longest package version, in bytes.
pub const VERSION_BYTES_MAX: usize = 64;
/// Longest initial value of one var, in bytes.
pub const VAR_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Longest model type `doc`, in bytes.
pub const MODEL_DOC_BYTES_MAX: usize = 4 * 1024;
/// Most items a manifest may declare of one kind (vars, queues, vaults, daemons, features, plugs,
/// slots, model types, hooks).
pub const ITEMS_PER_KIND_MAX: usize = 1024;
/// The base types a model type may build on.
pub const MODEL_BASE_TYPES: [&str; 6] = ["str", "int", "bool", "float", "bytes", "json"];

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
    /// The feature of the same package it is linked to: it runs only while that feature is
    /// enabled, and its runs set the feature's observed state.
    pub feature: Option<String>,
}

impl DaemonDecl {
    /// The declaration as `package.install_started.v1` stored it, if it has that layout (it
    /// names no feature).
    pub fn is_v1(&self) -> bool {
        self.feature.is_none()
    }
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
#[error("manifest {}: {reason}", crate::echo::echo_bare(.path))]
pub struct ManifestError {
    /// Field path, e.g. `features[1].name`, or `(document)` for the whole file (cut in the
    /// message when a long user-chosen key makes it long, see [`crate::echo`]).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The `path` of a [`ManifestError`] about the whole file: its size or its TOML syntax.
pub const DOCUMENT_PATH: &str = "(document)";

/// The rule interface names obey: [`ITEM_NAME_RULE`] capped at [`INTERFACE_NAME_BYTES_MAX`].
const INTERFACE_NAME_RULE: &str = "[a-z0-9][a-z0-9_.:-]{0,63}";

/// The hook names a package may declare, for error messages.
const HOOK_NAME_RULE: &str =
    "onload, onuninstall, or {prepare,unprepare,connect,disconnect}-plug-<plug> \
     or -slot-<slot> for a declared plug or slot";

/// Parses and validates a package manifest.
///
/// The text is rejected before parsing when larger than [`MANIFEST_BYTES_MAX`]. Unknown fields and
/// wrong types are rejected with their path; then every name, limit and cross-reference is
/// checked. The first problem found is returned; checks run in a fixed order (name, version,
/// vars, queues, vaults, daemons, features, plugs, slots, model, hooks), so the same text always
/// gives the same error.
///
/// Error paths name the field as written: `name`, `vars.<key>`, `queues[<i>].name`,
/// `features[<i>].scope.global`, `model.types[<i>].base`, `hooks.<hook>` (the hook's name or its
/// `run`/`command` choice), `hooks.<hook>.command[<j>]`; an unknown or missing field is named by
/// its own path (`features[0].colour`, `daemons[0].command`); a count over
/// [`ITEMS_PER_KIND_MAX`] by the kind (`queues`, `model.types`). [`DOCUMENT_PATH`] is used for
/// the size limit and for TOML syntax errors, whose reason gives the line and column.
pub fn parse(text: &str) -> Result<Validated, ManifestError> {
    if text.len() > MANIFEST_BYTES_MAX {
        return Err(err(
            DOCUMENT_PATH,
            format!(
                "manifest is {} bytes, at most {MANIFEST_BYTES_MAX} allowed",
                text.len()
            ),
        ));
    }
    let raw = deserialize(text)?;
    raw.validate().map(Validated)
}

impl FromStr for Validated {
    type Err = ManifestError;

    /// Same as [`parse`].
    fn from_str(text: &str) -> Result<Validated, ManifestError> {
        parse(text)
    }
}

/// A manifest that passed validation: only [`parse`] and [`Validated::new`] make one, so a
/// command that installs a package (`Command::Install`) cannot carry a manifest that was never
/// checked, whoever builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated(Manifest);

impl Validated {
    /// Validates a manifest built in code, with the same rules and messages as [`parse`]
    /// (error paths as the TOML form would name them). A manifest that validation would
    /// normalize differently is refused too.
    pub fn new(manifest: Manifest) -> Result<Validated, ManifestError> {
        let checked = RawManifest::from_manifest(&manifest).validate()?;
        if checked != manifest {
            return Err(err(
                DOCUMENT_PATH,
                "manifest is not in the form validation gives (build it with manifest::parse)",
            ));
        }
        Ok(Validated(checked))
    }

    /// The manifest.
    pub fn into_inner(self) -> Manifest {
        self.0
    }
}

impl std::ops::Deref for Validated {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.0
    }
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    let path: String = path.into();
    // Keys come from the text: keep control characters in a quoted key out of the message.
    let path = if path.chars().any(char::is_control) {
        path.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_debug().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        path
    };
    ManifestError {
        path,
        reason: reason.into(),
    }
}

/// Parses the TOML into the raw shape, mapping syntax errors to [`DOCUMENT_PATH`] with a line and
/// column, and shape errors (unknown field, wrong type, missing field) to their field path.
fn deserialize(text: &str) -> Result<RawManifest, ManifestError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let (line, column) = line_column(text, span.start);
                let near = text
                    .get(span)
                    .filter(|s| !s.is_empty() && !s.contains('\n'))
                    .map(|s| format!(", near {}", q(s)))
                    .unwrap_or_default();
                format!(" at line {line}, column {column}{near}")
            })
            .unwrap_or_default();
        err(
            DOCUMENT_PATH,
            format!("invalid toml{at}: {}", one_line(e.message())),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = e.path().to_string();
        let message = one_line(e.inner().message());
        // The tracker stops at the table a required field is missing from: name the field too
        // (`daemons[0].command`, not `daemons[0]`), as it does for unknown fields.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            path = if path == "." {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
        }
        if path == "." {
            path = DOCUMENT_PATH.to_owned();
        }
        err(path, message)
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Joins a possibly multi-line message into one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Quotes a value for an error message: escaped, and cut short when long.
fn q(value: &str) -> String {
    crate::echo::echo(value).to_string()
}

fn check_count(path: &str, noun: &str, count: usize) -> Result<(), ManifestError> {
    if count > ITEMS_PER_KIND_MAX {
        return Err(err(
            path,
            format!("{count} {noun} declared, at most {ITEMS_PER_KIND_MAX} allowed"),
        ));
    }
    Ok(())
}

fn check_item_name(path: &str, what: &str, name: &str) -> Result<(), ManifestError> {
    if !is_item_name(name) {
        return Err(err(
            path,
            format!("{} is not a valid {what} name ({ITEM_NAME_RULE})", q(name)),
        ));
    }
    Ok(())
}

fn check_interface_name(path: &str, name: &str) -> Result<(), ManifestError> {
    if !is_item_name(name) || name.len() > INTERFACE_NAME_BYTES_MAX {
        return Err(err(
            path,
            format!(
                "{} is not a valid interface name ({INTERFACE_NAME_RULE})",
                q(name)
            ),
        ));
    }
    Ok(())
}

fn check_no_nul(path: &str, value: &str) -> Result<(), ManifestError> {
    if value.contains('\0') {
        return Err(err(path, format!("{} contains a nul byte", q(value))));
    }
    Ok(())
}

/// Checks an argv: at least one element, none empty or containing NUL.
fn check_argv(path: &str, argv: &[String]) -> Result<(), ManifestError> {
    if argv.is_empty() {
        return Err(err(
            path,
            "command is empty; give at least the program to run",
        ));
    }
    for (j, arg) in argv.iter().enumerate() {
        let path = format!("{path}[{j}]");
        if arg.is_empty() {
            return Err(err(path, "command argument is empty"));
        }
        check_no_nul(&path, arg)?;
    }
    Ok(())
}

/// Remembers the first index of each name of one namespace, to report duplicates.
struct Seen<'a> {
    first: BTreeMap<&'a str, String>,
}

impl<'a> Seen<'a> {
    fn new() -> Self {
        Seen {
            first: BTreeMap::new(),
        }
    }

    /// Records `name` declared at `item` (e.g. `queues[2]`); a name seen before is rejected.
    fn insert(&mut self, item: &str, noun: &str, name: &'a str) -> Result<(), ManifestError> {
        if let Some(first) = self.first.get(name) {
            return Err(err(
                format!("{item}.name"),
                format!("duplicate {noun} {} (also {first})", q(name)),
            ));
        }
        self.first.insert(name, item.to_owned());
        Ok(())
    }
}

/// Validates a list of `{ name }` items (queues, vaults).
fn named_items(kind: &str, noun: &str, items: Vec<RawNamed>) -> Result<Vec<String>, ManifestError> {
    check_count(kind, kind, items.len())?;
    let mut seen = Seen::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{kind}[{i}]");
        check_item_name(&format!("{at}.name"), noun, &item.name)?;
        seen.insert(&at, noun, &item.name)?;
    }
    Ok(items.into_iter().map(|item| item.name).collect())
}

/// The raw shape of a manifest, as written. Everything not required has a default here or in
/// [`RawManifest::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    #[serde(default)]
    hooks: BTreeMap<String, RawHook>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    queues: Vec<RawNamed>,
    #[serde(default)]
    vaults: Vec<RawNamed>,
    #[serde(default)]
    daemons: Vec<RawDaemon>,
    #[serde(default)]
    features: Vec<RawFeature>,
    #[serde(default)]
    plugs: Vec<RawPlug>,
    #[serde(default)]
    slots: Vec<RawSlot>,
    #[serde(default)]
    model: RawModel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    run: Option<String>,
    command: Option<Vec<String>>,
    timeout_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamed {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    name: String,
    command: Vec<String>,
    restart: Option<String>,
    enabled: Option<bool>,
    feature: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    state: Option<String>,
    auto_restart: Option<bool>,
    scope: Option<RawScope>,
}

/// A feature's scope; each field has its own default (`global = true`, `per_instance = false`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    global: Option<bool>,
    per_instance: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlug {
    name: String,
    interface: String,
    auto_connect: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlot {
    name: String,
    interface: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    types: Vec<RawModelType>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelType {
    name: String,
    base: String,
    doc: Option<String>,
}

impl RawManifest {
    /// The raw form a manifest would have been parsed from.
    fn from_manifest(m: &Manifest) -> RawManifest {
        let named = |names: &[String]| {
            names
                .iter()
                .map(|name| RawNamed { name: name.clone() })
                .collect()
        };
        RawManifest {
            name: m.name.clone(),
            version: m.version.clone(),
            hooks: m
                .hooks
                .iter()
                .map(|(name, spec)| {
                    let (run, command) = match &spec.exec {
                        HookExec::Shell(script) => (Some(script.clone()), None),
                        HookExec::Argv(argv) => (None, Some(argv.clone())),
                    };
                    let hook = RawHook {
                        run,
                        command,
                        timeout_s: Some(spec.timeout_s),
                    };
                    (name.clone(), hook)
                })
                .collect(),
            vars: m.vars.clone(),
            queues: named(&m.queues),
            vaults: named(&m.vaults),
            daemons: m
                .daemons
                .iter()
                .map(|d| RawDaemon {
                    name: d.name.clone(),
                    command: d.command.clone(),
                    restart: Some(d.restart.as_str().to_owned()),
                    enabled: Some(d.enabled),
                    feature: d.feature.clone(),
                })
                .collect(),
            features: m
                .features
                .iter()
                .map(|f| RawFeature {
                    name: f.name.clone(),
                    state: Some(f.state.as_str().to_owned()),
                    auto_restart: Some(f.auto_restart),
                    scope: Some(RawScope {
                        global: Some(f.scope.global),
                        per_instance: Some(f.scope.per_instance),
                    }),
                })
                .collect(),
            plugs: m
                .plugs
                .iter()
                .map(|p| RawPlug {
                    name: p.name.clone(),
                    interface: p.interface.clone(),
                    auto_connect: Some(p.auto_connect),
                })
                .collect(),
            slots: m
                .slots
                .iter()
                .map(|s| RawSlot {
                    name: s.name.clone(),
                    interface: s.interface.clone(),
                })
                .collect(),
            model: RawModel {
                types: m
                    .model
                    .iter()
                    .map(|t| RawModelType {
                        name: t.name.clone(),
                        base: t.base.clone(),
                        doc: Some(t.doc.clone()),
                    })
                    .collect(),
            },
        }
    }

    fn validate(self) -> Result<Manifest, ManifestError> {
        if !is_package_name(&self.name) {
            return Err(err(
                "name",
                format!(
                    "{} is not a valid package name ({PACKAGE_NAME_RULE})",
                    q(&self.name)
                ),
            ));
        }
        let printable = |b: &u8| (b' '..=b'~').contains(b);
        if self.version.is_empty()
            || self.version.len() > VERSION_BYTES_MAX
            || !self.version.bytes().all(|b| printable(&b))
        {
            return Err(err(
                "version",
                format!(
                    "{} is not a valid version (1..={VERSION_BYTES_MAX} printable ascii bytes)",
                    q(&self.version)
                ),
            ));
        }

        check_count("vars", "vars", self.vars.len())?;
        for (key, value) in &self.vars {
            let path = format!("vars.{key}");
            check_item_name(&path, "var", key)?;
            if value.len() > VAR_VALUE_BYTES_MAX {
                return Err(err(
                    path,
                    format!(
                        "value of var {} is {} bytes, at most {VAR_VALUE_BYTES_MAX} allowed",
                        q(key),
                        value.len()
                    ),
                ));
            }
            check_no_nul(&path, value)?;
        }

        let queues = named_items("queues", "queue", self.queues)?;
        let vaults = named_items("vaults", "vault", self.vaults)?;
        let daemons = validate_daemons(self.daemons)?;
        let features = validate_features(self.features)?;
        check_daemon_features(&daemons, &features)?;
        let (plugs, slots) = validate_plugs_slots(self.plugs, self.slots)?;
        let model = validate_model(self.model)?;
        let hooks = validate_hooks(self.hooks, &plugs, &slots)?;

        Ok(Manifest {
            name: self.name,
            version: self.version,
            hooks,
            vars: self.vars,
            queues,
            vaults,
            daemons,
            features,
            plugs,
            slots,
            model,
        })
    }
}

fn validate_daemons(raw: Vec<RawDaemon>) -> Result<Vec<DaemonDecl>, ManifestError> {
    check_count("daemons", "daemons", raw.len())?;
    let mut seen = Seen::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, d) in raw.iter().enumerate() {
        let at = format!("daemons[{i}]");
        check_item_name(&format!("{at}.name"), "daemon", &d.name)?;
        seen.insert(&at, "daemon", &d.name)?;
        check_argv(&format!("{at}.command"), &d.command)?;
        let restart = match d.restart.as_deref() {
            None | Some("on-failure") => Restart::OnFailure,
            Some("always") => Restart::Always,
            Some("never") => Restart::Never,
            Some(other) => {
                return Err(err(
                    format!("{at}.restart"),
                    format!(
                        "{} is not a restart policy (always, on-failure, never)",
                        q(other)
                    ),
                ))
            }
        };
        out.push(DaemonDecl {
            name: d.name.clone(),
            command: d.command.clone(),
            restart,
            enabled: d.enabled.unwrap_or(true),
            feature: d.feature.clone(),
        });
    }
    Ok(out)
}

/// A daemon's `feature` names a feature the same manifest declares.
fn check_daemon_features(
    daemons: &[DaemonDecl],
    features: &[FeatureDecl],
) -> Result<(), ManifestError> {
    for (i, d) in daemons.iter().enumerate() {
        let Some(feature) = &d.feature else { continue };
        if !features.iter().any(|f| &f.name == feature) {
            return Err(err(
                format!("daemons[{i}].feature"),
                format!(
                    "daemon {} names feature {}, which this package does not declare",
                    q(&d.name),
                    q(feature)
                ),
            ));
        }
    }
    Ok(())
}

fn validate_features(raw: Vec<RawFeature>) -> Result<Vec<FeatureDecl>, ManifestError> {
    check_count("features", "features", raw.len())?;
    let mut seen = Seen::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let at = format!("features[{i}]");
        check_item_name(&format!("{at}.name"), "feature", &f.name)?;
        seen.insert(&at, "feature", &f.name)?;
        let state = match f.state.as_deref() {
            None => FeatureState::Enabled,
            Some(s) => FeatureState::parse(s).ok_or_else(|| {
                err(
                    format!("{at}.state"),
                    format!(
                        "{} is not a feature state (enabled, disabled, always_enabled, \
                         always_disabled)",
                        q(s)
                    ),
                )
            })?,
        };
        let scope = f.scope.as_ref().map_or(
            Scope {
                global: true,
                per_instance: false,
            },
            |s| Scope {
                global: s.global.unwrap_or(true),
                per_instance: s.per_instance.unwrap_or(false),
            },
        );
        out.push(FeatureDecl {
            name: f.name.clone(),
            state,
            auto_restart: f.auto_restart.unwrap_or(false),
            scope,
        });
    }
    Ok(out)
}

/// Plugs and slots share one namespace within the package: hook names refer to either.
fn validate_plugs_slots(
    plugs: Vec<RawPlug>,
    slots: Vec<RawSlot>,
) -> Result<(Vec<PlugDecl>, Vec<SlotDecl>), ManifestError> {
    check_count("plugs", "plugs", plugs.len())?;
    check_count("slots", "slots", slots.len())?;
    let mut seen = Seen::new();
    for (i, p) in plugs.iter().enumerate() {
        let at = format!("plugs[{i}]");
        check_item_name(&format!("{at}.name"), "plug", &p.name)?;
        seen.insert(&at, "plug or slot", &p.name)?;
        check_interface_name(&format!("{at}.interface"), &p.interface)?;
    }
    for (i, s) in slots.iter().enumerate() {
        let at = format!("slots[{i}]");
        check_item_name(&format!("{at}.name"), "slot", &s.name)?;
        seen.insert(&at, "plug or slot", &s.name)?;
        check_interface_name(&format!("{at}.interface"), &s.interface)?;
    }
    let plugs = plugs
        .into_iter()
        .map(|p| PlugDecl {
            name: p.name,
            interface: p.interface,
            auto_connect: p.auto_connect.unwrap_or(false),
        })
        .collect();
    let slots = slots
        .into_iter()
        .map(|s| SlotDecl {
            name: s.name,
            interface: s.interface,
        })
        .collect();
    Ok((plugs, slots))
}

fn validate_model(raw: RawModel) -> Result<Vec<ModelType>, ManifestError> {
    check_count("model.types", "model types", raw.types.len())?;
    let mut seen = Seen::new();
    for (i, t) in raw.types.iter().enumerate() {
        let at = format!("model.types[{i}]");
        check_item_name(&format!("{at}.name"), "model type", &t.name)?;
        seen.insert(&at, "model type", &t.name)?;
        if !MODEL_BASE_TYPES.contains(&t.base.as_str()) {
            return Err(err(
                format!("{at}.base"),
                format!(
                    "{} is not a model base type ({})",
                    q(&t.base),
                    MODEL_BASE_TYPES.join(", ")
                ),
            ));
        }
        if let Some(doc) = &t.doc {
            let path = format!("{at}.doc");
            if doc.len() > MODEL_DOC_BYTES_MAX {
                return Err(err(
                    path,
                    format!(
                        "doc of model type {} is {} bytes, at most {MODEL_DOC_BYTES_MAX} allowed",
                        q(&t.name),
                        doc.len()
                    ),
                ));
            }
            check_no_nul(&path, doc)?;
        }
    }
    Ok(raw
        .types
        .into_iter()
        .map(|t| ModelType {
            name: t.name,
            base: t.base,
            doc: t.doc.unwrap_or_default(),
        })
        .collect())
}

/// Which plug or slot a hook name is for.
enum HookTarget<'a> {
    /// `onload`, `onuninstall`.
    Package,
    /// `<step>-plug-<name>`.
    Plug(&'a str),
    /// `<step>-slot-<name>`.
    Slot(&'a str),
}

/// Splits a hook name by [`HOOK_NAME_RULE`]; `None` when it has none of the allowed shapes.
fn hook_target(name: &str) -> Option<HookTarget<'_>> {
    if name == "onload" || name == "onuninstall" {
        return Some(HookTarget::Package);
    }
    let rest = ["prepare-", "unprepare-", "connect-", "disconnect-"]
        .into_iter()
        .find_map(|step| name.strip_prefix(step))?;
    if let Some(plug) = rest.strip_prefix("plug-") {
        Some(HookTarget::Plug(plug))
    } else {
        rest.strip_prefix("slot-").map(HookTarget::Slot)
    }
}

fn validate_hooks(
    raw: BTreeMap<String, RawHook>,
    plugs: &[PlugDecl],
    slots: &[SlotDecl],
) -> Result<BTreeMap<String, HookSpec>, ManifestError> {
    check_count("hooks", "hooks", raw.len())?;
    let mut out = BTreeMap::new();
    for (name, hook) in raw {
        let at = format!("hooks.{name}");
        match hook_target(&name) {
            None => {
                return Err(err(
                    at,
                    format!("{} is not a valid hook name ({HOOK_NAME_RULE})", q(&name)),
                ))
            }
            Some(HookTarget::Package) => {}
            Some(HookTarget::Plug(plug)) => {
                if !plugs.iter().any(|p| p.name == plug) {
                    return Err(err(
                        at,
                        format!(
                            "hook {} is for plug {}, which is not declared in plugs",
                            q(&name),
                            q(plug)
                        ),
                    ));
                }
            }
            Some(HookTarget::Slot(slot)) => {
                if !slots.iter().any(|s| s.name == slot) {
                    return Err(err(
                        at,
                        format!(
                            "hook {} is for slot {}, which is not declared in slots",
                            q(&name),
                            q(slot)
                        ),
                    ));
                }
            }
        }
        let exec = match (hook.run, hook.command) {
            (Some(_), Some(_)) => {
                return Err(err(
                    at,
                    format!(
                        "hook {} has both run and command; give exactly one",
                        q(&name)
                    ),
                ))
            }
            (None, None) => {
                return Err(err(
                    at,
                    format!(
                        "hook {} has neither run nor command; give exactly one",
                        q(&name)
                    ),
                ))
            }
            (Some(run), None) => {
                let path = format!("{at}.run");
                if run.trim().is_empty() {
                    return Err(err(path, format!("run of hook {} is empty", q(&name))));
                }
                check_no_nul(&path, &run)?;
                HookExec::Shell(run)
            }
            (None, Some(argv)) => {
                check_argv(&format!("{at}.command"), &argv)?;
                HookExec::Argv(argv)
            }
        };
        let timeout_s = hook.timeout_s.unwrap_or(HOOK_TIMEOUT_S_DEFAULT);
        if !(1..=HOOK_TIMEOUT_S_MAX).contains(&timeout_s) {
            return Err(err(
                format!("{at}.timeout_s"),
                format!("timeout {timeout_s} is out of range (1..={HOOK_TIMEOUT_S_MAX} seconds)"),
            ));
        }
        out.insert(name, HookSpec { exec, timeout_s });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from DESIGN.md, "Package manifest (TOML)", verbatim.
    const DESIGN_EXAMPLE: &str = r#"
name = "netmon"                 # [a-z0-9][a-z0-9-]{0,62}
version = "1.2.0"

[hooks.onload]
run = "echo loading"            # or: command = ["/usr/bin/netmon", "--init"]
timeout_s = 30
[hooks.onuninstall]
run = "echo keep=$CAIRN_KEEP"
[hooks.connect-plug-net]
run = "true"

[vars]                          # initial values
threshold = "10"

[[queues]]
name = "events"

[[vaults]]
name = "api-token"

[[daemons]]
name = "collector"
command = ["/usr/bin/netmon-collector"]
restart = "on-failure"          # always | on-failure | never
enabled = true

[[features]]
name = "netmon"
state = "enabled"
auto_restart = true
scope = { global = true, per_instance = false }

[[plugs]]
name = "net"
interface = "network"

[[slots]]
name = "metrics"
interface = "metrics"

[model]
types = [{ name = "netmon:ip", base = "str", doc = "an address seen by netmon" }]
"#;

    const HEAD: &str = "name = \"netmon\"\nversion = \"1.0\"\n";

    /// A manifest with the required fields and then `body`.
    fn m(body: &str) -> String {
        format!("{HEAD}{body}")
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn shell(run: &str, timeout_s: u64) -> HookSpec {
        HookSpec {
            exec: HookExec::Shell(run.to_owned()),
            timeout_s,
        }
    }

    fn empty(name: &str, version: &str) -> Manifest {
        Manifest {
            name: name.to_owned(),
            version: version.to_owned(),
            hooks: BTreeMap::new(),
            vars: BTreeMap::new(),
            queues: vec![],
            vaults: vec![],
            daemons: vec![],
            features: vec![],
            plugs: vec![],
            slots: vec![],
            model: vec![],
        }
    }

    fn check_ok(text: &str) -> Manifest {
        match parse(text) {
            Ok(manifest) => manifest.into_inner(),
            Err(e) => panic!("expected ok, got {e}\n--- manifest:\n{text}"),
        }
    }

    fn check_err(text: &str, path: &str, contains: &str) {
        match parse(text) {
            Ok(manifest) => {
                panic!("expected error at {path}, got {manifest:?}\n--- manifest:\n{text}")
            }
            Err(e) => {
                assert_eq!(e.path, path, "path of {e}\n--- manifest:\n{text}");
                assert!(
                    e.reason.contains(contains),
                    "reason of {e} lacks {contains:?}\n--- manifest:\n{text}"
                );
                assert!(!e.reason.ends_with('.'), "trailing period: {e}");
                assert!(!e.reason.contains('\n'), "multi-line reason: {e}");
            }
        }
    }

    #[test]
    fn design_example() {
        let expected = Manifest {
            name: "netmon".into(),
            version: "1.2.0".into(),
            hooks: BTreeMap::from([
                ("onload".into(), shell("echo loading", 30)),
                (
                    "onuninstall".into(),
                    shell("echo keep=$CAIRN_KEEP", HOOK_TIMEOUT_S_DEFAULT),
                ),
                (
                    "connect-plug-net".into(),
                    shell("true", HOOK_TIMEOUT_S_DEFAULT),
                ),
            ]),
            vars: BTreeMap::from([("threshold".into(), "10".into())]),
            queues: strings(&["events"]),
            vaults: strings(&["api-token"]),
            daemons: vec![DaemonDecl {
                name: "collector".into(),
                command: strings(&["/usr/bin/netmon-collector"]),
                restart: Restart::OnFailure,
                enabled: true,
                feature: None,
            }],
            features: vec![FeatureDecl {
                name: "netmon".into(),
                state: FeatureState::Enabled,
                auto_restart: true,
                scope: Scope {
                    global: true,
                    per_instance: false,
                },
            }],
            plugs: vec![PlugDecl {
                name: "net".into(),
                interface: "network".into(),
                auto_connect: false,
            }],
            slots: vec![SlotDecl {
                name: "metrics".into(),
                interface: "metrics".into(),
            }],
            model: vec![ModelType {
                name: "netmon:ip".into(),
                base: "str".into(),
                doc: "an address seen by netmon".into(),
            }],
        };
        assert_eq!(check_ok(DESIGN_EXAMPLE), expected);
        assert_eq!(
            DESIGN_EXAMPLE
                .parse::<Validated>()
                .map(Validated::into_inner),
            Ok(expected)
        );
    }

    #[test]
    fn only_name_and_version_are_required() {
        assert_eq!(check_ok(HEAD), empty("netmon", "1.0"));
        // Empty sections are the same as absent ones.
        let text = m(
            "queues = []\nvaults = []\ndaemons = []\nfeatures = []\nplugs = []\nslots = []\n\
             [hooks]\n[vars]\n[model]\n",
        );
        assert_eq!(check_ok(&text), empty("netmon", "1.0"));
        // Version is free printable text.
        assert_eq!(
            check_ok("name = \"0x\"\nversion = \"2024.1 beta~3\"\n").version,
            "2024.1 beta~3"
        );
    }

    #[test]
    fn defaults_are_applied() {
        let got = check_ok(&m(r#"
[hooks.onload]
command = ["/bin/x", "--y"]
[[daemons]]
name = "d"
command = ["/bin/d"]
[[features]]
name = "f"
[[features]]
name = "g"
scope = { per_instance = true }
[[plugs]]
name = "p"
interface = "i"
[model]
types = [{ name = "t", base = "json" }]
"#));
        assert_eq!(
            got.hooks["onload"],
            HookSpec {
                exec: HookExec::Argv(strings(&["/bin/x", "--y"])),
                timeout_s: HOOK_TIMEOUT_S_DEFAULT,
            }
        );
        assert_eq!(
            got.daemons,
            vec![DaemonDecl {
                name: "d".into(),
                command: strings(&["/bin/d"]),
                restart: Restart::OnFailure,
                enabled: true,
                feature: None,
            }]
        );
        assert_eq!(
            got.features,
            vec![
                FeatureDecl {
                    name: "f".into(),
                    state: FeatureState::Enabled,
                    auto_restart: false,
                    scope: Scope {
                        global: true,
                        per_instance: false,
                    },
                },
                FeatureDecl {
                    name: "g".into(),
                    state: FeatureState::Enabled,
                    auto_restart: false,
                    scope: Scope {
                        global: true,
                        per_instance: true,
                    },
                },
            ]
        );
        assert!(!got.plugs[0].auto_connect);
        assert_eq!(got.model[0].doc, "");
    }

    #[test]
    fn explicit_values_are_kept() {
        let got = check_ok(&m(r#"
[hooks.onload]
run = "x"
timeout_s = 86400
[hooks.onuninstall]
run = "y"
timeout_s = 1
[[daemons]]
name = "a"
command = ["/bin/a"]
restart = "always"
enabled = false
[[daemons]]
name = "n"
command = ["/bin/n", "-v"]
restart = "never"
[[features]]
name = "f1"
state = "disabled"
scope = { global = false, per_instance = true }
[[features]]
name = "f2"
state = "always_enabled"
[[features]]
name = "f3"
state = "always_disabled"
[[plugs]]
name = "p"
interface = "i"
auto_connect = true
"#));
        assert_eq!(got.hooks["onload"].timeout_s, HOOK_TIMEOUT_S_MAX);
        assert_eq!(got.hooks["onuninstall"].timeout_s, 1);
        assert_eq!(
            got.daemons
                .iter()
                .map(|d| (d.restart, d.enabled))
                .collect::<Vec<_>>(),
            vec![(Restart::Always, false), (Restart::Never, true)]
        );
        assert_eq!(
            got.features.iter().map(|f| f.state).collect::<Vec<_>>(),
            vec![
                FeatureState::Disabled,
                FeatureState::AlwaysEnabled,
                FeatureState::AlwaysDisabled
            ]
        );
        assert_eq!(
            got.features[0].scope,
            Scope {
                global: false,
                per_instance: true,
            }
        );
        assert!(got.plugs[0].auto_connect);
    }

    #[test]
    fn declaration_order_is_kept_and_maps_are_sorted() {
        let got = check_ok(&m(r#"
[hooks.onuninstall]
run = "b"
[hooks.onload]
run = "a"
[vars]
zeta = "1"
alpha = "2"
[[queues]]
name = "zz"
[[queues]]
name = "aa"
[[queues]]
name = "mm"
"#));
        assert_eq!(got.queues, strings(&["zz", "aa", "mm"]));
        assert_eq!(
            got.hooks.keys().collect::<Vec<_>>(),
            vec!["onload", "onuninstall"]
        );
        assert_eq!(got.vars.keys().collect::<Vec<_>>(), vec!["alpha", "zeta"]);
    }

    #[test]
    fn every_hook_name_shape_is_accepted() {
        let mut body = String::from(
            "[[plugs]]\nname = \"net\"\ninterface = \"network\"\n\
             [[slots]]\nname = \"metrics\"\ninterface = \"metrics\"\n",
        );
        let mut names = vec!["onload".to_owned(), "onuninstall".to_owned()];
        for step in ["prepare", "unprepare", "connect", "disconnect"] {
            names.push(format!("{step}-plug-net"));
            names.push(format!("{step}-slot-metrics"));
        }
        for name in &names {
            body.push_str(&format!("[hooks.{name}]\nrun = \"true\"\n"));
        }
        let got = check_ok(&m(&body));
        names.sort();
        assert_eq!(got.hooks.into_keys().collect::<Vec<_>>(), names);
    }

    #[test]
    fn shape_errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            // Unknown fields, at the top and nested.
            ("colour = \"red\"\n", "colour", "unknown field `colour`"),
            (
                "[[features]]\nname = \"f\"\ncolour = \"red\"\n",
                "features[0].colour",
                "unknown field `colour`",
            ),
            (
                "[[features]]\nname = \"f\"\n[[features]]\nname = \"g\"\nstat = \"enabled\"\n",
                "features[1].stat",
                "unknown field `stat`",
            ),
            (
                "[[features]]\nname = \"f\"\nscope = { globl = true }\n",
                "features[0].scope.globl",
                "unknown field `globl`",
            ),
            (
                "[hooks.onload]\nrun = \"x\"\nshell = \"sh\"\n",
                "hooks.onload.shell",
                "unknown field `shell`",
            ),
            (
                "[[queues]]\nname = \"q\"\nsize = 3\n",
                "queues[0].size",
                "unknown field `size`",
            ),
            (
                "[[vaults]]\nname = \"v\"\nkey = \"k\"\n",
                "vaults[0].key",
                "unknown field `key`",
            ),
            (
                "[[daemons]]\nname = \"d\"\ncommand = [\"/d\"]\nuser = \"root\"\n",
                "daemons[0].user",
                "unknown field `user`",
            ),
            (
                "[[plugs]]\nname = \"p\"\ninterface = \"i\"\nauto = true\n",
                "plugs[0].auto",
                "unknown field `auto`",
            ),
            (
                "[[slots]]\nname = \"s\"\ninterface = \"i\"\nauto_connect = true\n",
                "slots[0].auto_connect",
                "unknown field `auto_connect`",
            ),
            (
                "[model]\ntypez = []\n",
                "model.typez",
                "unknown field `typez`",
            ),
            (
                "[model]\ntypes = [{ name = \"t\", base = \"str\", dox = \"\" }]\n",
                "model.types[0].dox",
                "unknown field `dox`",
            ),
            // Wrong types.
            (
                "[hooks.onload]\nrun = \"x\"\ntimeout_s = \"ten\"\n",
                "hooks.onload.timeout_s",
                "\"ten\"",
            ),
            (
                "[hooks.onload]\nrun = \"x\"\ntimeout_s = -1\n",
                "hooks.onload.timeout_s",
                "-1",
            ),
            (
                "[hooks.onload]\nrun = \"x\"\ntimeout_s = 1.5\n",
                "hooks.onload.timeout_s",
                "1.5",
            ),
            (
                "[hooks.onload]\nrun = [\"x\"]\n",
                "hooks.onload.run",
                "expected a string",
            ),
            (
                "[hooks.onload]\ncommand = \"x\"\n",
                "hooks.onload.command",
                "\"x\"",
            ),
            ("[hooks]\nonload = \"x\"\n", "hooks.onload", "\"x\""),
            ("[vars]\nthreshold = 10\n", "vars.threshold", "10"),
            (
                "[vars]\nlimits.max = \"10\"\n",
                "vars.limits",
                "expected a string",
            ),
            ("queues = [\"events\"]\n", "queues[0]", "\"events\""),
            (
                "[[daemons]]\nname = \"d\"\ncommand = [\"/d\"]\nenabled = \"yes\"\n",
                "daemons[0].enabled",
                "\"yes\"",
            ),
            (
                "[[daemons]]\nname = \"d\"\ncommand = [\"/d\", 3]\n",
                "daemons[0].command[1]",
                "3",
            ),
            (
                "[[features]]\nname = \"f\"\nscope = true\n",
                "features[0].scope",
                "true",
            ),
            (
                "[[features]]\nname = \"f\"\nscope = { global = 1 }\n",
                "features[0].scope.global",
                "1",
            ),
            (
                "[[features]]\nname = \"f\"\nauto_restart = \"no\"\n",
                "features[0].auto_restart",
                "\"no\"",
            ),
            (
                "[[plugs]]\nname = \"p\"\ninterface = \"i\"\nauto_connect = 1\n",
                "plugs[0].auto_connect",
                "1",
            ),
            (
                "[model]\ntypes = { name = \"t\" }\n",
                "model.types",
                "expected a sequence",
            ),
            // Missing required fields.
            ("[[queues]]\n", "queues[0].name", "missing field `name`"),
            (
                "[[daemons]]\nname = \"d\"\n",
                "daemons[0].command",
                "missing field `command`",
            ),
            (
                "[[plugs]]\nname = \"p\"\n",
                "plugs[0].interface",
                "missing field `interface`",
            ),
            (
                "[[slots]]\ninterface = \"i\"\n",
                "slots[0].name",
                "missing field `name`",
            ),
            (
                "[model]\ntypes = [{ name = \"t\" }]\n",
                "model.types[0].base",
                "missing field `base`",
            ),
        ];
        for (body, path, contains) in cases {
            check_err(&m(body), path, contains);
        }
        check_err("version = \"1\"\n", "name", "missing field `name`");
        check_err("name = \"netmon\"\n", "version", "missing field `version`");
        check_err("name = 3\nversion = \"1\"\n", "name", "3");
    }

    #[test]
    fn syntax_errors_are_reported_for_the_document() {
        check_err(
            &m("[features\n"),
            DOCUMENT_PATH,
            "invalid toml at line 3, column",
        );
        check_err(
            &m("[vars]\nthreshold = \"1\"\nthreshold = \"2\"\n"),
            DOCUMENT_PATH,
            "at line 5, column 1, near \"threshold\": duplicate key",
        );
        check_err(
            &m("[hooks.onload]\nrun = \"x\"\n[hooks.onload]\nrun = \"y\"\n"),
            DOCUMENT_PATH,
            "line 5",
        );
        check_err("name = \"a\"\nversion = \"1\n", DOCUMENT_PATH, "line 2");
        check_err("\u{0}", DOCUMENT_PATH, "invalid toml at line 1");
    }

    /// Runs `check_err` over `(body, path, contains)` cases, each body after [`HEAD`].
    fn check_errs(cases: &[(&str, &str, &str)]) {
        for (body, path, contains) in cases {
            check_err(&m(body), path, contains);
        }
    }

    #[test]
    fn package_name_and_version_errors() {
        let long_name = format!("name = \"{}\"\nversion = \"1\"\n", "a".repeat(64));
        let long_version = format!("name = \"a\"\nversion = \"{}\"\n", "1".repeat(65));
        let cases: &[(&str, &str, &str)] = &[
            (
                "name = \"Net Mon\"\nversion = \"1\"\n",
                "name",
                "\"Net Mon\" is not a valid package name ([a-z0-9][a-z0-9-]{0,62})",
            ),
            (&long_name, "name", "is not a valid package name"),
            (
                "name = \"\"\nversion = \"1\"\n",
                "name",
                "\"\" is not a valid package name",
            ),
            (
                "name = \"net_mon\"\nversion = \"1\"\n",
                "name",
                "\"net_mon\"",
            ),
            (
                "name = \"a\"\nversion = \"\"\n",
                "version",
                "\"\" is not a valid version (1..=64 printable ascii bytes)",
            ),
            (&long_version, "version", "is not a valid version"),
            (
                "name = \"a\"\nversion = \"1.0\\t\"\n",
                "version",
                "\"1.0\\t\"",
            ),
            ("name = \"a\"\nversion = \"1.0é\"\n", "version", "\"1.0é\""),
        ];
        for (text, path, contains) in cases {
            check_err(text, path, contains);
        }
    }

    #[test]
    fn resource_errors() {
        let long = m(&format!(
            "queues = [{{ name = \"{}\" }}]\n",
            "a".repeat(129)
        ));
        check_err(&long, "queues[0].name", "is not a valid queue name");
        check_errs(&[
            (
                r#"vars = { "a\nb" = "1" }"#,
                r"vars.a\nb",
                r#""a\nb" is not a valid var name"#,
            ),
            (
                "vars = { Threshold = \"1\" }",
                "vars.Threshold",
                "\"Threshold\" is not a valid var name ([a-z0-9][a-z0-9_.:-]{0,127})",
            ),
            (
                r#"vars = { "a b" = "1" }"#,
                "vars.a b",
                "\"a b\" is not a valid var name",
            ),
            (
                r#"vars = { x = "a\u0000b" }"#,
                "vars.x",
                r#""a\0b" contains a nul byte"#,
            ),
            (
                r#"queues = [{ name = "Events" }]"#,
                "queues[0].name",
                "\"Events\" is not a valid queue name",
            ),
            (
                r#"queues = [{ name = "events" }, { name = "other" }, { name = "events" }]"#,
                "queues[2].name",
                "duplicate queue \"events\" (also queues[0])",
            ),
            (
                r#"vaults = [{ name = "api token" }]"#,
                "vaults[0].name",
                "\"api token\" is not a valid vault name",
            ),
            (
                r#"vaults = [{ name = "k" }, { name = "k" }]"#,
                "vaults[1].name",
                "duplicate vault \"k\" (also vaults[0])",
            ),
        ]);
    }

    #[test]
    fn daemon_and_feature_errors() {
        check_errs(&[
            (
                r#"daemons = [{ name = "-d", command = ["/d"] }]"#,
                "daemons[0].name",
                "\"-d\" is not a valid daemon name",
            ),
            (
                r#"daemons = [{ name = "d", command = [] }]"#,
                "daemons[0].command",
                "command is empty",
            ),
            (
                r#"daemons = [{ name = "d", command = ["/d", ""] }]"#,
                "daemons[0].command[1]",
                "command argument is empty",
            ),
            (
                r#"daemons = [{ name = "d", command = ["/d\u0000"] }]"#,
                "daemons[0].command[0]",
                r#""/d\0" contains a nul byte"#,
            ),
            (
                r#"daemons = [{ name = "d", command = ["/d"], restart = "sometimes" }]"#,
                "daemons[0].restart",
                "\"sometimes\" is not a restart policy (always, on-failure, never)",
            ),
            (
                r#"daemons = [{ name = "d", command = ["/d"], restart = "on_failure" }]"#,
                "daemons[0].restart",
                "\"on_failure\"",
            ),
            (
                r#"daemons = [{ name = "d", command = ["/d"] }, { name = "d", command = ["/e"] }]"#,
                "daemons[1].name",
                "duplicate daemon \"d\" (also daemons[0])",
            ),
            (
                r#"daemons = [{ name = "d", command = ["/d"], feature = "f" }]"#,
                "daemons[0].feature",
                "daemon \"d\" names feature \"f\", which this package does not declare",
            ),
            (
                r#"features = [{ name = "Net" }]"#,
                "features[0].name",
                "\"Net\" is not a valid feature name",
            ),
            (
                r#"features = [{ name = "f", state = "on" }]"#,
                "features[0].state",
                "\"on\" is not a feature state (enabled, disabled, always_enabled, always_disabled)",
            ),
            (
                r#"features = [{ name = "f" }, { name = "g" }, { name = "f" }]"#,
                "features[2].name",
                "duplicate feature \"f\" (also features[0])",
            ),
        ]);
    }

    #[test]
    fn plug_and_slot_errors() {
        let long = m(&format!(
            "plugs = [{{ name = \"net\", interface = \"{}\" }}]\n",
            "i".repeat(65)
        ));
        check_err(&long, "plugs[0].interface", "is not a valid interface name");
        check_errs(&[
            (
                r#"plugs = [{ name = "Net", interface = "network" }]"#,
                "plugs[0].name",
                "\"Net\" is not a valid plug name",
            ),
            (
                r#"plugs = [{ name = "net", interface = "Network" }]"#,
                "plugs[0].interface",
                "\"Network\" is not a valid interface name ([a-z0-9][a-z0-9_.:-]{0,63})",
            ),
            (
                r#"plugs = [{ name = "net", interface = "a" }, { name = "net", interface = "b" }]"#,
                "plugs[1].name",
                "duplicate plug or slot \"net\" (also plugs[0])",
            ),
            (
                r#"slots = [{ name = "s/1", interface = "i" }]"#,
                "slots[0].name",
                "\"s/1\" is not a valid slot name",
            ),
            (
                r#"slots = [{ name = "s", interface = "" }]"#,
                "slots[0].interface",
                "\"\" is not a valid interface name",
            ),
            (
                r#"slots = [{ name = "s", interface = "a" }, { name = "s", interface = "a" }]"#,
                "slots[1].name",
                "duplicate plug or slot \"s\" (also slots[0])",
            ),
            // Plugs and slots share one namespace.
            (
                "plugs = [{ name = \"net\", interface = \"a\" }]\n\
                 slots = [{ name = \"net\", interface = \"a\" }]",
                "slots[0].name",
                "duplicate plug or slot \"net\" (also plugs[0])",
            ),
        ]);
    }

    #[test]
    fn model_errors() {
        check_errs(&[
            (
                r#"model.types = [{ name = "Ip", base = "str" }]"#,
                "model.types[0].name",
                "\"Ip\" is not a valid model type name",
            ),
            (
                r#"model.types = [{ name = "ip", base = "string" }]"#,
                "model.types[0].base",
                "\"string\" is not a model base type (str, int, bool, float, bytes, json)",
            ),
            (
                r#"model.types = [{ name = "ip", base = "str", doc = "a\u0000" }]"#,
                "model.types[0].doc",
                r#""a\0" contains a nul byte"#,
            ),
            (
                r#"model.types = [{ name = "ip", base = "str" }, { name = "ip", base = "int" }]"#,
                "model.types[1].name",
                "duplicate model type \"ip\" (also model.types[0])",
            ),
        ]);
    }

    #[test]
    fn hook_errors() {
        const PLUG: &str = "plugs = [{ name = \"net\", interface = \"i\" }]\n";
        let for_plug = |hook: &str| format!("{PLUG}{hook}");
        let (plug_timeout, plug_as_slot) = (
            for_plug(r#"hooks.connect-plug-net = { run = "x", timeout_s = 0 }"#),
            for_plug(r#"hooks.prepare-slot-net = { run = "x" }"#),
        );
        check_errs(&[
            // Names.
            (
                r#"hooks.frobnicate = { run = "x" }"#,
                "hooks.frobnicate",
                "\"frobnicate\" is not a valid hook name (onload, onuninstall, or",
            ),
            (
                r#"hooks.onLoad = { run = "x" }"#,
                "hooks.onLoad",
                "\"onLoad\" is not a valid hook name",
            ),
            (
                r#"hooks.connect-net = { run = "x" }"#,
                "hooks.connect-net",
                "\"connect-net\" is not a valid hook name",
            ),
            (
                r#"hooks.reconnect-plug-net = { run = "x" }"#,
                "hooks.reconnect-plug-net",
                "is not a valid hook name",
            ),
            (
                r#"hooks.connect-plug-net = { run = "x" }"#,
                "hooks.connect-plug-net",
                "hook \"connect-plug-net\" is for plug \"net\", which is not declared in plugs",
            ),
            (
                &plug_as_slot,
                "hooks.prepare-slot-net",
                "is for slot \"net\", which is not declared in slots",
            ),
            (
                r#"hooks.disconnect-plug- = { run = "x" }"#,
                "hooks.disconnect-plug-",
                "is for plug \"\"",
            ),
            // Exec.
            (
                r#"hooks.onload = { run = "x", command = ["/x"] }"#,
                "hooks.onload",
                "hook \"onload\" has both run and command; give exactly one",
            ),
            (
                "hooks.onload = { timeout_s = 5 }",
                "hooks.onload",
                "hook \"onload\" has neither run nor command",
            ),
            (
                "[hooks.onload]",
                "hooks.onload",
                "has neither run nor command",
            ),
            (
                r#"hooks.onload = { run = "" }"#,
                "hooks.onload.run",
                "run of hook \"onload\" is empty",
            ),
            (
                r#"hooks.onload = { run = "a\u0000" }"#,
                "hooks.onload.run",
                r#""a\0" contains a nul byte"#,
            ),
            (
                "hooks.onload = { command = [] }",
                "hooks.onload.command",
                "command is empty",
            ),
            (
                r#"hooks.onload = { command = ["/x", "-v", ""] }"#,
                "hooks.onload.command[2]",
                "command argument is empty",
            ),
            // Timeout.
            (
                r#"hooks.onload = { run = "x", timeout_s = 0 }"#,
                "hooks.onload.timeout_s",
                "timeout 0 is out of range (1..=86400 seconds)",
            ),
            (
                r#"hooks.onload = { run = "x", timeout_s = 86401 }"#,
                "hooks.onload.timeout_s",
                "timeout 86401 is out of range",
            ),
            (
                &plug_timeout,
                "hooks.connect-plug-net.timeout_s",
                "timeout 0",
            ),
        ]);
    }

    #[test]
    fn kinds_are_separate_namespaces_except_plugs_and_slots() {
        let got = check_ok(&m(r#"
[vars]
x = "1"
[[queues]]
name = "x"
[[vaults]]
name = "x"
[[daemons]]
name = "x"
command = ["/x"]
[[features]]
name = "x"
[[plugs]]
name = "x"
interface = "x"
[[slots]]
name = "y"
interface = "x"
[model]
types = [{ name = "x", base = "bytes" }]
"#));
        assert_eq!(got.queues, strings(&["x"]));
        assert_eq!(got.plugs[0].name, "x");
        assert_eq!(got.slots[0].name, "y");
    }

    #[test]
    fn size_limits() {
        // The whole text.
        let pad = |len: usize| {
            let mut text = m("# ");
            let fill = len - text.len() - 1;
            text.push_str(&"x".repeat(fill));
            text.push('\n');
            assert_eq!(text.len(), len);
            text
        };
        check_ok(&pad(MANIFEST_BYTES_MAX));
        check_err(
            &pad(MANIFEST_BYTES_MAX + 1),
            DOCUMENT_PATH,
            "manifest is 262145 bytes, at most 262144 allowed",
        );
        // Checked before parsing: oversized garbage reports the size, not the syntax.
        check_err(
            &"[".repeat(MANIFEST_BYTES_MAX + 1),
            DOCUMENT_PATH,
            "262145 bytes",
        );

        // One var value.
        let var = |len: usize| m(&format!("[vars]\nblob = \"{}\"\n", "v".repeat(len)));
        assert_eq!(
            check_ok(&var(VAR_VALUE_BYTES_MAX)).vars["blob"].len(),
            VAR_VALUE_BYTES_MAX
        );
        check_err(
            &var(VAR_VALUE_BYTES_MAX + 1),
            "vars.blob",
            "value of var \"blob\" is 65537 bytes, at most 65536 allowed",
        );

        // A model type's doc.
        let doc = |len: usize| {
            m(&format!(
                "[model]\ntypes = [{{ name = \"t\", base = \"str\", doc = \"{}\" }}]\n",
                "d".repeat(len)
            ))
        };
        check_ok(&doc(MODEL_DOC_BYTES_MAX));
        check_err(
            &doc(MODEL_DOC_BYTES_MAX + 1),
            "model.types[0].doc",
            "doc of model type \"t\" is 4097 bytes, at most 4096 allowed",
        );

        // Long values are cut short when quoted.
        let e = parse(&m(&format!("[[queues]]\nname = \"{}\"\n", "Q".repeat(500)))).unwrap_err();
        assert!(
            e.reason
                .contains("... (500 bytes) is not a valid queue name"),
            "{e}"
        );
        assert!(e.reason.len() < 300, "{e}");
    }

    #[test]
    fn items_per_kind_limit() {
        // (path, section header, one item with `#` for its index)
        let kinds: &[(&str, &str, &str)] = &[
            ("vars", "[vars]\n", "v# = \"x\"\n"),
            ("queues", "", "[[queues]]\nname = \"q#\"\n"),
            ("vaults", "", "[[vaults]]\nname = \"v#\"\n"),
            (
                "daemons",
                "",
                "[[daemons]]\nname = \"d#\"\ncommand = [\"/d\"]\n",
            ),
            ("features", "", "[[features]]\nname = \"f#\"\n"),
            ("plugs", "", "[[plugs]]\nname = \"p#\"\ninterface = \"i\"\n"),
            ("slots", "", "[[slots]]\nname = \"s#\"\ninterface = \"i\"\n"),
            (
                "model.types",
                "",
                "[[model.types]]\nname = \"t#\"\nbase = \"str\"\n",
            ),
        ];
        let many = |head: &str, item: &str, n: usize| {
            let items: String = (0..n).map(|i| item.replace('#', &i.to_string())).collect();
            m(&format!("{head}{items}"))
        };
        for (path, head, item) in kinds {
            check_ok(&many(head, item, ITEMS_PER_KIND_MAX));
            check_err(
                &many(head, item, ITEMS_PER_KIND_MAX + 1),
                path,
                &format!(
                    "1025 {} declared, at most 1024 allowed",
                    path.replace("model.", "model ")
                ),
            );
        }
    }

    #[test]
    fn error_display_names_path_and_reason() {
        let text = m(r#"queues = [{ name = "events" }, { name = "x" }, { name = "events" }]"#);
        assert_eq!(
            parse(&text).unwrap_err().to_string(),
            "manifest queues[2].name: duplicate queue \"events\" (also queues[0])"
        );
        assert_eq!("".parse::<Validated>().unwrap_err().path, "name");
    }

    #[test]
    fn parsing_is_deterministic() {
        let first = check_ok(DESIGN_EXAMPLE);
        for _ in 0..3 {
            assert_eq!(check_ok(DESIGN_EXAMPLE), first);
        }
    }
}
