//! The kernel: `decide` (validate a command against state, produce events or a rejection) and
//! `apply` (fold one entry into state, purely). Both work on the `StateRead`/`StateWrite`
//! keyspace, so the same code runs on the leader, on mirrors, in rebuild and in replay.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use cairn_log::{Space, StateError, StateRead, StateWrite, StoredEntry};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::change::{
    Action, ChangeKind, ChangeRecord, ChangeStatus, End, Step, Task, TaskNote, TaskOutcome,
};
use crate::command::*;
use crate::echo::echo;
use crate::event::{
    Event, HookOutcome, HookRef, HookResult, InstallStarted, ResourcesDeleted, UninstallStarted,
    HOOK_OUTPUT_BYTES_MAX,
};
use crate::ext::{self, ExtRead, ExtWrite, Extension, Migration, Schema};
use crate::keys;
use crate::manifest::Manifest;
use crate::model::{is_item_name, is_package_name, DaemonState, ResourceKind, ITEM_NAME_RULE};
use crate::records::*;

/// Version of the projection's layout. Bump it when keys or records change, or when `apply`
/// folds the same log differently: the store then rebuilds the projection from the log at
/// open. The golden projection digest (`crates/cairn/tests/golden_projection.rs`) pins it.
/// 3: a broken package's reason and a task's notes are typed facts, rendered when read.
pub const PROJECTION_VERSION: u64 = 3;
/// The kernel's own schema version.
pub const SCHEMA_VERSION: u32 = 3;
/// Oldest binary schema version that can open data written by this one (3: an accepted WAL
/// loss is an event a version-2 binary cannot apply, so it must refuse the workspace at open,
/// as version 1 refuses API tokens).
pub const SCHEMA_COMPAT_VERSION: u32 = 3;
/// Name of the kernel's own schema.
pub const SCHEMA_NAME: &str = "cairn";

/// Why `decide` produced no events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideError {
    /// The command is wrong for the current state.
    Rejected(Rejection),
    /// Reading state failed.
    State(StateError),
}

impl From<StateError> for DecideError {
    fn from(e: StateError) -> Self {
        DecideError::State(e)
    }
}

impl From<Rejection> for DecideError {
    fn from(r: Rejection) -> Self {
        DecideError::Rejected(r)
    }
}

/// Why an entry could not be applied (the writer stops; the entry is never skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ApplyFailure(pub String);

impl From<StateError> for ApplyFailure {
    fn from(e: StateError) -> Self {
        ApplyFailure(e.to_string())
    }
}

/// A workspace opened with a schema this binary cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The data needs a newer binary.
    #[error(
        "schema {schema:?} of this workspace is at version {stored} and needs a binary with \
         schema version {compat} or newer; this binary has schema version {binary}"
    )]
    TooNew {
        /// Schema name.
        schema: String,
        /// Stored version.
        stored: u32,
        /// Stored compat version.
        compat: u32,
        /// This binary's version.
        binary: u32,
    },
    /// The log holds events of an extension this binary does not register.
    #[error(
        "unknown event kind {kind:?} at offset {offset}: no extension {app:?} is registered \
         (register it before opening this workspace)"
    )]
    UnknownExtension {
        /// The extension app.
        app: String,
        /// Its first event's kind.
        kind: String,
        /// Its first event's offset.
        offset: u64,
    },
    /// Reading state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

type Decided = Result<Vec<Event>, DecideError>;

/// The lifecycle kernel with its registered schemas and extensions.
#[derive(Clone)]
pub struct Kernel {
    schemas: BTreeMap<String, Schema>,
    extensions: BTreeMap<String, Arc<dyn Extension>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("schemas", &self.schemas.keys().collect::<Vec<_>>())
            .field("extensions", &self.extensions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Kernel {
    fn default() -> Self {
        Self::new()
    }
}

/// The kernel's own schema: version 1 is the initial layout; version 2 adds API tokens
/// (`token.created.v1`, `token.revoked.v1`), which version-1 binaries cannot apply; version 3
/// adds the record of an accepted WAL loss (`store.wal_loss_accepted.v1`).
pub fn builtin_schema() -> Schema {
    Schema {
        name: SCHEMA_NAME.into(),
        version: SCHEMA_VERSION,
        migrations: vec![
            Migration {
                to: 1,
                compat: 1,
                name: "initial".into(),
                apply: |_| Ok(()),
            },
            Migration {
                to: 2,
                compat: 2,
                name: "api-tokens".into(),
                apply: |_| Ok(()),
            },
            Migration {
                to: 3,
                compat: 3,
                name: "wal-loss-record".into(),
                apply: |_| Ok(()),
            },
        ],
    }
}

fn get<T: DeserializeOwned>(state: &dyn StateRead, key: &[u8]) -> Result<Option<T>, StateError> {
    match state.get(Space::State, key)? {
        None => Ok(None),
        Some(bytes) => cairn_log::codec::decode_value(&bytes)
            .map(Some)
            .map_err(|e| {
                StateError::corrupt(format!(
                    "record at {:?} does not decode: {e}",
                    String::from_utf8_lossy(key)
                ))
            }),
    }
}

fn put<T: Serialize>(state: &mut dyn StateWrite, key: &[u8], value: &T) {
    let bytes = cairn_log::codec::encode_value(value)
        .expect("kernel records are plain serde types that the codec always encodes");
    state.put(Space::State, key, &bytes);
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn scan(state: &dyn StateRead, prefix: &[u8]) -> Result<Pairs, StateError> {
    let mut out = Vec::new();
    state.scan_prefix(Space::State, prefix, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

/// Writes the record `make` builds at `key` unless something is there already.
fn put_new<T: Serialize>(
    state: &mut dyn StateWrite,
    key: &[u8],
    make: impl FnOnce() -> T,
) -> Result<(), StateError> {
    if state.get(Space::State, key)?.is_none() {
        put(state, key, &make());
    }
    Ok(())
}

/// Writes a package record and its status key together.
fn put_package(state: &mut dyn StateWrite, p: &PackageRecord) {
    let name = &p.manifest.name;
    put(state, &keys::package(name), p);
    put(state, &keys::package_status(name), &p.status);
    let wanted = p.status == PackageStatus::Installed
        && matches!(p.onload, OnloadState::Pending | OnloadState::Running { .. });
    if wanted {
        state.put(Space::State, &keys::onload_wanted(name), b"");
    } else {
        state.delete(Space::State, &keys::onload_wanted(name));
    }
}

fn scan_records<T: DeserializeOwned>(
    state: &dyn StateRead,
    prefix: &[u8],
) -> Result<Vec<T>, StateError> {
    scan(state, prefix)?
        .into_iter()
        .map(|(k, v)| {
            cairn_log::codec::decode_value(&v).map_err(|e| {
                StateError::corrupt(format!(
                    "record at {:?} does not decode: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })
        })
        .collect()
}

/// Names of the keys under `prefix` (the part after it).
fn names_under(state: &dyn StateRead, prefix: &[u8]) -> Result<Vec<String>, StateError> {
    Ok(scan(state, prefix)?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect())
}

fn check_name(what: &str, name: &str) -> Result<(), Rejection> {
    if is_item_name(name) {
        Ok(())
    } else {
        Err(Rejection::Invalid(format!(
            "{what} {} is not a valid name ({ITEM_NAME_RULE})",
            echo(name)
        )))
    }
}

fn change_kind_article(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Install => "an install",
        ChangeKind::Uninstall => "an uninstall",
        ChangeKind::Connect => "a connect",
        ChangeKind::Disconnect => "a disconnect",
    }
}

fn hook_step(package: &str, hook: String, plug: &End, slot: &End) -> Step {
    Step::Hook {
        package: package.to_string(),
        hook,
        plug: Some(plug.clone()),
        slot: Some(slot.clone()),
    }
}

/// The five tasks of a connect, in order (undo counterparts alongside). `was_undesired`: the
/// pair's mark before the connect, which undo restores.
fn connect_tasks(
    plug: &End,
    slot: &End,
    interface: &str,
    auto: bool,
    was_undesired: bool,
) -> Vec<Task> {
    let (pp, p) = (&plug.0, &plug.1);
    let (sp, s) = (&slot.0, &slot.1);
    vec![
        Task::new(
            format!("prepare-plug-{p}"),
            hook_step(pp, format!("prepare-plug-{p}"), plug, slot),
            hook_step(pp, format!("unprepare-plug-{p}"), plug, slot),
        ),
        Task::new(
            format!("prepare-slot-{s}"),
            hook_step(sp, format!("prepare-slot-{s}"), plug, slot),
            hook_step(sp, format!("unprepare-slot-{s}"), plug, slot),
        ),
        Task::new(
            format!("establish {pp}:{p} → {sp}:{s}"),
            Step::Establish {
                plug: plug.clone(),
                slot: slot.clone(),
                interface: interface.to_string(),
                auto,
                undesired: false,
            },
            Step::RemoveConnection {
                plug: plug.clone(),
                slot: slot.clone(),
                undesired: was_undesired,
            },
        ),
        Task::new(
            format!("connect-slot-{s}"),
            hook_step(sp, format!("connect-slot-{s}"), plug, slot),
            hook_step(sp, format!("disconnect-slot-{s}"), plug, slot),
        ),
        Task::new(
            format!("connect-plug-{p}"),
            hook_step(pp, format!("connect-plug-{p}"), plug, slot),
            hook_step(pp, format!("disconnect-plug-{p}"), plug, slot),
        ),
    ]
}

/// The five tasks of a disconnect: the mirror image of a connect.
fn disconnect_tasks(conn: &ConnRecord, undesired: bool, ignore_errors: bool) -> Vec<Task> {
    let (plug, slot) = (&conn.plug, &conn.slot);
    let (pp, p) = (&plug.0, &plug.1);
    let (sp, s) = (&slot.0, &slot.1);
    let hook = |pkg: &str, name: String, undo: String| {
        let t = Task::new(
            name.clone(),
            hook_step(pkg, name, plug, slot),
            hook_step(pkg, undo, plug, slot),
        );
        if ignore_errors {
            t.ignoring_errors()
        } else {
            t
        }
    };
    vec![
        hook(
            pp,
            format!("disconnect-plug-{p}"),
            format!("connect-plug-{p}"),
        ),
        hook(
            sp,
            format!("disconnect-slot-{s}"),
            format!("connect-slot-{s}"),
        ),
        Task::new(
            format!("remove {pp}:{p} → {sp}:{s}"),
            Step::RemoveConnection {
                plug: plug.clone(),
                slot: slot.clone(),
                undesired,
            },
            // A connected pair is never marked undesired.
            Step::Establish {
                plug: plug.clone(),
                slot: slot.clone(),
                interface: conn.interface.clone(),
                auto: conn.auto,
                undesired: false,
            },
        ),
        hook(
            sp,
            format!("unprepare-slot-{s}"),
            format!("prepare-slot-{s}"),
        ),
        hook(
            pp,
            format!("unprepare-plug-{p}"),
            format!("prepare-plug-{p}"),
        ),
    ]
}

fn new_change(
    id: Uuid,
    kind: ChangeKind,
    summary: String,
    packages: BTreeSet<String>,
    tasks: Vec<Task>,
) -> ChangeRecord {
    let mut c = ChangeRecord {
        id,
        kind,
        summary,
        packages: packages.into_iter().collect(),
        tasks,
        status: ChangeStatus::Doing,
        aborted: false,
        actor: String::new(),
        spawn_ms: 0,
        ready_ms: None,
        revision: 0,
    };
    c.status = c.derive_status();
    c
}

/// A resource record's kept-from marker and revision, for code that handles every kind.
trait Owned: Serialize + DeserializeOwned {
    fn owned(&mut self) -> (&mut Option<String>, &mut u64);
}

macro_rules! owned {
    ($($t:ty),*) => {$(
        impl Owned for $t {
            fn owned(&mut self) -> (&mut Option<String>, &mut u64) {
                (&mut self.kept_from, &mut self.revision)
            }
        }
    )*};
}
owned!(
    VarRecord,
    QueueRecord,
    VaultRecord,
    DaemonRecord,
    ModelRecord
);

fn remark<T: Owned>(
    state: &mut dyn StateWrite,
    key: &[u8],
    bytes: &[u8],
    kept_from: &Option<String>,
    revision: u64,
) -> Result<(), StateError> {
    let mut r: T = cairn_log::codec::decode_value(bytes)
        .map_err(|e| StateError::corrupt(format!("record does not decode: {e}")))?;
    let (k, rev) = r.owned();
    if k != kept_from {
        *k = kept_from.clone();
        *rev = revision;
        put(state, key, &r);
    }
    Ok(())
}

/// Changes an existing resource record and stamps its revision.
fn update_owned<T: Owned>(
    state: &mut dyn StateWrite,
    key: &[u8],
    revision: u64,
    f: impl FnOnce(&mut T),
) -> Result<(), ApplyFailure> {
    let mut r: T = get(state, key)?.ok_or_else(|| {
        ApplyFailure(format!(
            "record {:?} does not exist",
            String::from_utf8_lossy(key)
        ))
    })?;
    f(&mut r);
    *r.owned().1 = revision;
    put(state, key, &r);
    Ok(())
}

/// Sets (or clears) `kept_from` on every resource of `kind` owned by `owner`.
fn mark_kept(
    state: &mut dyn StateWrite,
    kind: ResourceKind,
    owner: &str,
    kept_from: Option<String>,
    revision: u64,
) -> Result<(), StateError> {
    for (key, bytes) in scan(state, &keys::resources_of(table(kind), owner))? {
        match kind {
            ResourceKind::Vars => remark::<VarRecord>(state, &key, &bytes, &kept_from, revision)?,
            ResourceKind::Queues => {
                remark::<QueueRecord>(state, &key, &bytes, &kept_from, revision)?
            }
            ResourceKind::Vaults => {
                remark::<VaultRecord>(state, &key, &bytes, &kept_from, revision)?
            }
            ResourceKind::Daemons => {
                remark::<DaemonRecord>(state, &key, &bytes, &kept_from, revision)?
            }
            ResourceKind::Model => {
                remark::<ModelRecord>(state, &key, &bytes, &kept_from, revision)?
            }
        }
    }
    Ok(())
}

impl Kernel {
    /// A kernel with the built-in schema and no extensions.
    pub fn new() -> Self {
        let builtin = builtin_schema();
        let mut schemas = BTreeMap::new();
        schemas.insert(builtin.name.clone(), builtin);
        Self {
            schemas,
            extensions: BTreeMap::new(),
        }
    }

    /// Registers an embedder's schema (or replaces the built-in one, for tests of upgrades).
    pub fn with_schema(mut self, schema: Schema) -> Result<Self, String> {
        schema.check()?;
        self.schemas.insert(schema.name.clone(), schema);
        Ok(self)
    }

    /// Registers an extension.
    pub fn with_extension(mut self, extension: Arc<dyn Extension>) -> Result<Self, String> {
        let app = extension.app().to_string();
        if !ext::is_app_name(&app) {
            return Err(format!("extension app name {app:?} is not valid"));
        }
        if self.extensions.contains_key(&app) {
            return Err(format!("extension {app:?} is registered twice"));
        }
        self.extensions.insert(app, extension);
        Ok(self)
    }

    /// The registered schemas.
    pub fn schemas(&self) -> impl Iterator<Item = &Schema> {
        self.schemas.values()
    }

    /// Whether this kernel can fold an entry of `kind` with `payload`: a built-in kind of a
    /// version it decodes, an extension registered here, and no schema migration to a
    /// compatibility version newer than this binary's. A mirror asks this of every entry from
    /// its leader before applying it, so an older binary stops before what it cannot fold
    /// instead of failing in the middle of a commit. The error says what is missing.
    pub fn understands(&self, kind: &str, payload: &[u8]) -> Result<(), String> {
        let event = Event::decode(kind, payload).map_err(|e| e.to_string())?;
        match &event {
            Event::Ext { kind, .. } => {
                let app = ext::app_of(kind)
                    .ok_or_else(|| format!("malformed extension kind {kind:?}"))?;
                if !self.extensions.contains_key(app) {
                    return Err(format!(
                        "event kind {kind:?} needs extension {app:?}, which is not registered"
                    ));
                }
            }
            Event::SchemaMigrated { schema, compat, .. } => {
                if let Some(known) = self.schemas.get(schema) {
                    if *compat > known.version {
                        return Err(format!(
                            "schema {schema:?} migrates to compatibility version {compat}; \
                             this binary supports version {}",
                            known.version
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Refuses a workspace whose stored compat version of any registered schema is newer than
    /// this binary's version of it.
    pub fn check_open(&self, state: &dyn StateRead) -> Result<(), OpenError> {
        for schema in self.schemas.values() {
            if let Some(stored) = get::<SchemaRecord>(state, &keys::schema(&schema.name))? {
                if stored.compat > schema.version {
                    return Err(OpenError::TooNew {
                        schema: schema.name.clone(),
                        stored: stored.version,
                        compat: stored.compat,
                        binary: schema.version,
                    });
                }
            }
        }
        let mut unknown = None;
        state.scan_prefix(Space::State, keys::EXT_APPS, &mut |k, v| {
            let app = String::from_utf8_lossy(&k[keys::EXT_APPS.len()..]).into_owned();
            if !self.extensions.contains_key(&app) {
                unknown = Some((app, v.to_vec()));
                return false;
            }
            true
        })?;
        if let Some((app, first)) = unknown {
            let (kind, offset): (String, u64) = cairn_log::codec::decode_value(&first)
                .map_err(|e| StateError::corrupt(format!("extapp/{app} does not decode: {e}")))?;
            return Err(OpenError::UnknownExtension { app, kind, offset });
        }
        Ok(())
    }

    /// The migrations the leader must still record, in order.
    pub fn pending_migrations(&self, state: &dyn StateRead) -> Result<Vec<Command>, StateError> {
        let mut out = Vec::new();
        for schema in self.schemas.values() {
            let stored =
                get::<SchemaRecord>(state, &keys::schema(&schema.name))?.map_or(0, |r| r.version);
            for m in &schema.migrations {
                if m.to > stored {
                    out.push(Command::MigrateSchema {
                        schema: schema.name.clone(),
                        from: m.to - 1,
                        to: m.to,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The offsets a command with this idempotency key committed, if it is remembered.
    pub fn idempotent(
        &self,
        state: &dyn StateRead,
        key: &str,
    ) -> Result<Option<Range<u64>>, StateError> {
        Ok(get::<IdemRecord>(state, &keys::idem_key(key))?.map(|r| r.first..r.end))
    }

    // ------------------------------------------------------------------------------------
    // decide
    // ------------------------------------------------------------------------------------

    /// Validates `command` against `state` and yields its events, or a rejection.
    pub fn decide(&self, state: &dyn StateRead, command: &Command) -> Decided {
        match command {
            Command::Install { manifest, change } => self.decide_install(state, manifest, *change),
            Command::Uninstall {
                package,
                keep,
                strict,
                change,
            } => self.decide_uninstall(state, package, keep, *strict, *change),
            Command::Connect { plug, slot, change } => {
                self.decide_connect(state, plug, slot, *change)
            }
            Command::Disconnect { plug, slot, change } => {
                self.decide_disconnect(state, plug, slot, *change)
            }
            Command::Abort { change } => {
                let c = self.change(state, *change)?;
                if c.status.is_ready() {
                    return Err(Rejection::state(
                        Entity::Change(c.id),
                        format!("has already finished (status {})", c.status),
                    )
                    .into());
                }
                if c.aborted {
                    return Err(
                        Rejection::state(Entity::Change(c.id), "is already aborting").into(),
                    );
                }
                if let Some(task) = c.point_of_no_return() {
                    return Err(Rejection::state(
                        Entity::Change(c.id),
                        format!("is past the point of no return (task {task} is done)"),
                    )
                    .into());
                }
                Ok(vec![Event::AbortRequested { change: c.id }])
            }
            Command::TaskRun { change, task, undo } => {
                self.decide_task_run(state, *change, *task, *undo)
            }
            Command::HookStart { change, task, undo } => {
                let (c, action, step) = self.next_task(state, *change, *task, *undo)?;
                let (package, hook) = self.declared_hook(state, &step)?.ok_or_else(|| {
                    Rejection::state(
                        Entity::Change(c.id),
                        format!("task {task} runs no declared hook; use TaskRun"),
                    )
                })?;
                let attempt = c.tasks[*task as usize].attempts + 1;
                let _ = action;
                Ok(vec![
                    Event::TaskStarted {
                        change: c.id,
                        task: *task,
                        undo: *undo,
                    },
                    Event::HookStarted(HookRef {
                        change: c.id,
                        task: Some(*task),
                        package,
                        hook,
                        attempt,
                    }),
                ])
            }
            Command::HookFinish {
                change,
                task,
                undo,
                result,
            } => self.decide_hook_finish(state, *change, *task, *undo, result.as_ref()),
            Command::OnloadStart { package } => {
                let p = self.package(state, package)?;
                let attempt = match (&p.status, &p.onload) {
                    (PackageStatus::Installed, OnloadState::Pending) => 1,
                    (PackageStatus::Installed, OnloadState::Running { attempt }) => attempt + 1,
                    (status, onload) => {
                        return Err(Rejection::state(
                            Entity::Package(package.clone()),
                            format!(
                                "onload cannot start (package {}, onload {onload:?})",
                                status.name()
                            ),
                        )
                        .into())
                    }
                };
                Ok(vec![Event::HookStarted(HookRef {
                    change: p.install_change,
                    task: None,
                    package: package.clone(),
                    hook: "onload".into(),
                    attempt,
                })])
            }
            Command::OnloadFinish {
                package,
                attempt,
                result,
            } => {
                let p = self.package(state, package)?;
                if p.onload != (OnloadState::Running { attempt: *attempt }) {
                    return Err(Rejection::state(
                        Entity::Package(package.clone()),
                        format!("onload attempt {attempt} is not running ({:?})", p.onload),
                    )
                    .into());
                }
                check_hook_result(result)?;
                Ok(vec![Event::HookFinished(
                    HookRef {
                        change: p.install_change,
                        task: None,
                        package: package.clone(),
                        hook: "onload".into(),
                        attempt: *attempt,
                    },
                    result.clone(),
                )])
            }
            Command::VarSet {
                owner,
                key,
                value,
                expect_revision,
            } => {
                self.writable_package(state, owner)?;
                check_name("var", key)?;
                if value.len() > VAR_VALUE_BYTES_MAX {
                    return Err(Rejection::Invalid(format!(
                        "value of var {} is {} bytes, over the limit of {VAR_VALUE_BYTES_MAX}",
                        echo(key),
                        value.len()
                    ))
                    .into());
                }
                let entity = Entity::Resource(ResourceKind::Vars, owner.clone(), key.clone());
                if expect_revision.is_some() {
                    let current = get::<VarRecord>(state, &keys::resource("var", owner, key))?;
                    check_revision(
                        entity,
                        expect_revision,
                        current.as_ref().map(|r| r.revision),
                    )?;
                }
                Ok(vec![Event::VarSet {
                    owner: owner.clone(),
                    key: key.clone(),
                    value: serde_bytes::ByteBuf::from(value.clone()),
                }])
            }
            Command::VarDelete { owner, keys: names } => {
                self.writable_package(state, owner)?;
                if names.is_empty() || names.len() > VAR_DELETE_KEYS_MAX {
                    return Err(Rejection::Invalid(format!(
                        "var delete takes 1..={VAR_DELETE_KEYS_MAX} keys, got {}",
                        names.len()
                    ))
                    .into());
                }
                let unique: BTreeSet<&String> = names.iter().collect();
                for key in &unique {
                    if state
                        .get(Space::State, &keys::resource("var", owner, key))?
                        .is_none()
                    {
                        return Err(Rejection::NotFound(Entity::Resource(
                            ResourceKind::Vars,
                            owner.clone(),
                            (*key).clone(),
                        ))
                        .into());
                    }
                }
                Ok(vec![Event::VarsDeleted {
                    owner: owner.clone(),
                    keys: unique.into_iter().cloned().collect(),
                }])
            }
            Command::QueuePut {
                owner,
                queue,
                items,
            } => {
                self.writable_package(state, owner)?;
                self.resource::<QueueRecord>(state, ResourceKind::Queues, owner, queue)?;
                if items.is_empty() || items.len() > QUEUE_PUT_ITEMS_MAX {
                    return Err(Rejection::Invalid(format!(
                        "queue put takes 1..={QUEUE_PUT_ITEMS_MAX} items, got {}",
                        items.len()
                    ))
                    .into());
                }
                if let Some((i, item)) = items
                    .iter()
                    .enumerate()
                    .find(|(_, i)| i.len() > QUEUE_ITEM_BYTES_MAX)
                {
                    return Err(Rejection::Invalid(format!(
                        "queue item {i} is {} bytes, over the limit of {QUEUE_ITEM_BYTES_MAX}",
                        item.len()
                    ))
                    .into());
                }
                Ok(vec![Event::QueuePut {
                    owner: owner.clone(),
                    queue: queue.clone(),
                    items: items
                        .iter()
                        .map(|i| serde_bytes::ByteBuf::from(i.clone()))
                        .collect(),
                }])
            }
            Command::QueueAck { owner, queue, upto } => {
                self.writable_package(state, owner)?;
                let q = self.resource::<QueueRecord>(state, ResourceKind::Queues, owner, queue)?;
                if *upto >= q.next_seq {
                    return Err(Rejection::Invalid(format!(
                        "cannot ack queue {} up to {upto}: its last item is {}",
                        echo(queue),
                        q.next_seq - 1
                    ))
                    .into());
                }
                if *upto <= q.acked {
                    return Ok(vec![]);
                }
                Ok(vec![Event::QueueAcked {
                    owner: owner.clone(),
                    queue: queue.clone(),
                    upto: *upto,
                }])
            }
            Command::VaultSet {
                owner,
                vault,
                sealed,
            } => {
                self.writable_package(state, owner)?;
                self.resource::<VaultRecord>(state, ResourceKind::Vaults, owner, vault)?;
                if sealed.len() > VAULT_SEALED_BYTES_MAX {
                    return Err(Rejection::Invalid(format!(
                        "sealed value of vault {} is {} bytes, over the limit of \
                         {VAULT_SEALED_BYTES_MAX}",
                        echo(vault),
                        sealed.len()
                    ))
                    .into());
                }
                Ok(vec![Event::VaultSet {
                    owner: owner.clone(),
                    vault: vault.clone(),
                    sealed: serde_bytes::ByteBuf::from(sealed.clone()),
                }])
            }
            Command::DaemonSet {
                owner,
                daemon,
                desired,
                expect_revision,
            } => {
                self.writable_package(state, owner)?;
                let d =
                    self.resource::<DaemonRecord>(state, ResourceKind::Daemons, owner, daemon)?;
                check_revision(
                    Entity::Resource(ResourceKind::Daemons, owner.clone(), daemon.clone()),
                    expect_revision,
                    Some(d.revision),
                )?;
                if d.desired == *desired {
                    return Ok(vec![]);
                }
                Ok(vec![Event::DaemonDesired {
                    owner: owner.clone(),
                    daemon: daemon.clone(),
                    desired: *desired,
                }])
            }
            Command::DaemonReport {
                owner,
                daemon,
                observed,
            } => {
                self.resource::<DaemonRecord>(state, ResourceKind::Daemons, owner, daemon)?;
                Ok(vec![Event::DaemonObserved {
                    owner: owner.clone(),
                    daemon: daemon.clone(),
                    observed: *observed,
                }])
            }
            Command::FeatureSet {
                name,
                state: to,
                expect_revision,
            } => {
                let f = self.feature(state, name)?;
                // The package is being removed: its features' desired state is frozen (the
                // service side may still report what it observes until they are deleted).
                self.owner_not_uninstalling(state, &f.owner)?;
                check_revision(
                    Entity::Feature(name.clone()),
                    expect_revision,
                    Some(f.revision),
                )?;
                if f.state.is_fixed() {
                    return Err(Rejection::state(
                        Entity::Feature(name.clone()),
                        format!("is {} and cannot be changed", f.state),
                    )
                    .into());
                }
                if f.state == *to {
                    return Ok(vec![]);
                }
                Ok(vec![Event::FeatureStateChanged {
                    name: name.clone(),
                    state: *to,
                }])
            }
            Command::FeatureReport { name, observed } => {
                self.feature(state, name)?;
                Ok(vec![Event::FeatureObserved {
                    name: name.clone(),
                    observed: *observed,
                }])
            }
            Command::FeatureScopeSync { name, scope } => {
                let f = self.feature(state, name)?;
                // The scope is configuration, like the desired state: frozen while uninstalling.
                self.owner_not_uninstalling(state, &f.owner)?;
                Ok(vec![Event::FeatureScopeSynced {
                    name: name.clone(),
                    scope: *scope,
                }])
            }
            Command::MigrateSchema { schema, from, to } => {
                let def = self
                    .schemas
                    .get(schema)
                    .ok_or_else(|| Rejection::NotFound(Entity::Schema(schema.clone())))?;
                let stored =
                    get::<SchemaRecord>(state, &keys::schema(schema))?.map_or(0, |r| r.version);
                if stored != *from || *to != from + 1 {
                    return Err(Rejection::state(
                        Entity::Schema(schema.clone()),
                        format!("is at version {stored}; cannot migrate {from} → {to}"),
                    )
                    .into());
                }
                let m = def.migrations.iter().find(|m| m.to == *to).ok_or_else(|| {
                    Rejection::state(
                        Entity::Schema(schema.clone()),
                        format!("no migration to version {to} is registered"),
                    )
                })?;
                Ok(vec![Event::SchemaMigrated {
                    schema: schema.clone(),
                    from: *from,
                    to: *to,
                    compat: m.compat,
                    name: m.name.clone(),
                }])
            }
            Command::TokenCreate { name, role, hash } => {
                check_name("token", name)?;
                if get::<TokenRecord>(state, &keys::token(name))?.is_some() {
                    return Err(Rejection::Exists(Entity::Token(name.clone())).into());
                }
                if state.get(Space::State, &keys::token_hash(hash))?.is_some() {
                    return Err(Rejection::Invalid(format!(
                        "token {}: its secret's hash is already in use by another token",
                        echo(name)
                    ))
                    .into());
                }
                Ok(vec![Event::TokenCreated {
                    name: name.clone(),
                    role: *role,
                    hash: *hash,
                }])
            }
            Command::TokenRevoke { name } => {
                get::<TokenRecord>(state, &keys::token(name))?
                    .ok_or_else(|| Rejection::NotFound(Entity::Token(name.clone())))?;
                Ok(vec![Event::TokenRevoked { name: name.clone() }])
            }
            Command::AcceptWalLoss(loss) => Ok(vec![Event::WalLossAccepted(loss.clone())]),
            Command::StartEpoch {
                epoch,
                leader,
                prev_head,
            } => {
                let current = get::<u64>(state, keys::EPOCH_CURRENT)?.unwrap_or(1);
                if *epoch <= current {
                    return Err(Rejection::Invalid(format!(
                        "epoch {epoch} does not follow the current epoch {current}"
                    ))
                    .into());
                }
                Ok(vec![Event::EpochStarted(crate::event::EpochStarted {
                    epoch: *epoch,
                    leader: leader.clone(),
                    prev_head: *prev_head,
                })])
            }
            Command::Ext { kind, payload } => {
                let app = ext::app_of(kind).ok_or_else(|| {
                    Rejection::Invalid(format!(
                        "extension event kind {} is not of the form ext.<app>.<name>.v<N>",
                        echo(kind)
                    ))
                })?;
                let extension = self
                    .extensions
                    .get(app)
                    .ok_or_else(|| Rejection::NotFound(Entity::Extension(app.to_string())))?;
                if payload.len() > EXT_PAYLOAD_BYTES_MAX {
                    return Err(Rejection::Invalid(format!(
                        "extension payload is {} bytes, over the limit of {EXT_PAYLOAD_BYTES_MAX}",
                        payload.len()
                    ))
                    .into());
                }
                extension
                    .validate(&ExtRead::new(state, app), kind, payload)
                    .map_err(|reason| {
                        Rejection::Invalid(format!(
                            "extension {} refused {}: {reason}",
                            echo(app),
                            echo(kind)
                        ))
                    })?;
                Ok(vec![Event::Ext {
                    kind: kind.clone(),
                    payload: payload.clone(),
                }])
            }
        }
    }

    fn package(&self, state: &dyn StateRead, name: &str) -> Result<PackageRecord, DecideError> {
        get::<PackageRecord>(state, &keys::package(name))?
            .ok_or_else(|| Rejection::NotFound(Entity::Package(name.to_string())).into())
    }

    fn feature(&self, state: &dyn StateRead, name: &str) -> Result<FeatureRecord, DecideError> {
        get::<FeatureRecord>(state, &keys::feature(name))?
            .ok_or_else(|| Rejection::NotFound(Entity::Feature(name.to_string())).into())
    }

    fn change(&self, state: &dyn StateRead, id: Uuid) -> Result<ChangeRecord, DecideError> {
        get::<ChangeRecord>(state, &keys::change(id))?
            .ok_or_else(|| Rejection::NotFound(Entity::Change(id)).into())
    }

    fn resource<T: DeserializeOwned>(
        &self,
        state: &dyn StateRead,
        kind: ResourceKind,
        owner: &str,
        name: &str,
    ) -> Result<T, DecideError> {
        get::<T>(state, &keys::resource(table(kind), owner, name))?.ok_or_else(|| {
            Rejection::NotFound(Entity::Resource(kind, owner.to_string(), name.to_string())).into()
        })
    }

    /// The package exists and is not being uninstalled: its resources may be written.
    fn writable_package(&self, state: &dyn StateRead, owner: &str) -> Result<(), DecideError> {
        if state
            .get(Space::State, &keys::package_status(owner))?
            .is_none()
        {
            return Err(Rejection::NotFound(Entity::Package(owner.to_string())).into());
        }
        self.owner_not_uninstalling(state, owner)
    }

    /// Rejects a desired-state change of something `owner` owns while `owner` is being
    /// uninstalled (as [`Kernel::writable_package`] does for resource writes).
    fn owner_not_uninstalling(
        &self,
        state: &dyn StateRead,
        owner: &str,
    ) -> Result<(), DecideError> {
        if let Some(PackageStatus::Uninstalling { change, .. }) =
            get::<PackageStatus>(state, &keys::package_status(owner))?
        {
            return Err(Rejection::Busy {
                entity: Entity::Package(owner.to_string()),
                kind: "an uninstall".into(),
                change,
            }
            .into());
        }
        Ok(())
    }

    /// Rejects if a change is in progress on any of `packages`.
    fn check_not_busy<'a>(
        &self,
        state: &dyn StateRead,
        packages: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), DecideError> {
        for p in packages {
            if let Some(id) = state.get(Space::State, &keys::busy(p))? {
                let id = Uuid::from_slice(&id).map_err(|_| {
                    StateError::corrupt(format!("busy/{p} does not hold a change id"))
                })?;
                let kind = get::<ChangeRecord>(state, &keys::change(id))?
                    .map_or("a", |c| change_kind_article(c.kind));
                return Err(Rejection::Busy {
                    entity: Entity::Package(p.clone()),
                    kind: kind.to_string(),
                    change: id,
                }
                .into());
            }
        }
        Ok(())
    }

    fn check_new_change(&self, state: &dyn StateRead, id: Uuid) -> Result<(), DecideError> {
        if state.get(Space::State, &keys::change(id))?.is_some() {
            return Err(Rejection::Exists(Entity::Change(id)).into());
        }
        Ok(())
    }

    fn decide_install(&self, state: &dyn StateRead, m: &Manifest, change: Uuid) -> Decided {
        if !is_package_name(&m.name) {
            return Err(Rejection::Invalid(format!(
                "{} is not a valid package name",
                echo(&m.name)
            ))
            .into());
        }
        self.check_new_change(state, change)?;
        if let Some(p) = get::<PackageRecord>(state, &keys::package(&m.name))? {
            if let PackageStatus::Uninstalling { change, .. } = p.status {
                return Err(Rejection::Busy {
                    entity: Entity::Package(m.name.clone()),
                    kind: "an uninstall".into(),
                    change,
                }
                .into());
            }
            self.check_not_busy(state, [&m.name])?;
            return Err(Rejection::Exists(Entity::Package(m.name.clone())).into());
        }
        for f in &m.features {
            if let Some(existing) = get::<FeatureRecord>(state, &keys::feature(&f.name))? {
                return Err(Rejection::state(
                    Entity::Feature(f.name.clone()),
                    format!("is already owned by package {:?}", existing.owner),
                )
                .into());
            }
        }
        // Auto-connect each plug to the one matching slot, if exactly one exists among
        // installed, idle packages (and this package's own slots), and the pair is not
        // marked undesired.
        let installed: Vec<PackageRecord> = if m.plugs.iter().any(|p| p.auto_connect) {
            scan_records(state, keys::PACKAGES)?
        } else {
            Vec::new()
        };
        let mut packages = BTreeSet::from([m.name.clone()]);
        let mut tasks = vec![Task::new(
            "create",
            Step::Nothing,
            Step::MarkBroken {
                package: m.name.clone(),
            },
        )
        .done()];
        for plug in m.plugs.iter().filter(|p| p.auto_connect) {
            let plug_end = (m.name.clone(), plug.name.clone());
            let mut candidates = Vec::new();
            for slot in m.slots.iter().filter(|s| s.interface == plug.interface) {
                candidates.push((m.name.clone(), slot.name.clone()));
            }
            for p in &installed {
                if p.status != PackageStatus::Installed
                    || state
                        .get(Space::State, &keys::busy(&p.manifest.name))?
                        .is_some()
                {
                    continue;
                }
                for slot in p
                    .manifest
                    .slots
                    .iter()
                    .filter(|s| s.interface == plug.interface)
                {
                    candidates.push((p.manifest.name.clone(), slot.name.clone()));
                }
            }
            let mut eligible = Vec::new();
            for slot_end in candidates {
                if state
                    .get(Space::State, &keys::undesired(&plug_end, &slot_end))?
                    .is_none()
                {
                    eligible.push(slot_end);
                }
            }
            if let [slot_end] = eligible.as_slice() {
                packages.insert(slot_end.0.clone());
                tasks.extend(connect_tasks(
                    &plug_end,
                    slot_end,
                    &plug.interface,
                    true,
                    false,
                ));
            }
        }
        tasks.push(Task::new(
            "mark-installed",
            Step::MarkInstalled {
                package: m.name.clone(),
            },
            Step::Nothing,
        ));
        let record = new_change(
            change,
            ChangeKind::Install,
            format!("install {:?} {}", m.name, m.version),
            packages,
            tasks,
        );
        Ok(vec![Event::InstallStarted(InstallStarted {
            manifest: m.clone(),
            change: record,
        })])
    }

    fn decide_uninstall(
        &self,
        state: &dyn StateRead,
        name: &str,
        keep: &[ResourceKind],
        strict: bool,
        change: Uuid,
    ) -> Decided {
        self.check_new_change(state, change)?;
        let p = self.package(state, name)?;
        match &p.status {
            PackageStatus::Installed | PackageStatus::Broken { .. } => {}
            PackageStatus::Uninstalling { change, .. } => {
                return Err(Rejection::Busy {
                    entity: Entity::Package(name.to_string()),
                    kind: "an uninstall".into(),
                    change: *change,
                }
                .into())
            }
            PackageStatus::Installing { change } => {
                return Err(Rejection::Busy {
                    entity: Entity::Package(name.to_string()),
                    kind: "an install".into(),
                    change: *change,
                }
                .into())
            }
        }
        let keep: Vec<ResourceKind> = keep
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let conns: Vec<ConnRecord> = scan_records(state, keys::CONNECTIONS)?
            .into_iter()
            .filter(|c: &ConnRecord| c.plug.0 == name || c.slot.0 == name)
            .collect();
        let mut packages = BTreeSet::from([name.to_string()]);
        for c in &conns {
            packages.insert(c.plug.0.clone());
            packages.insert(c.slot.0.clone());
        }
        self.check_not_busy(state, &packages)?;
        let mut tasks = vec![
            Task::new(
                "mark-uninstalling",
                Step::MarkUninstalling {
                    package: name.to_string(),
                    keep: keep.clone(),
                },
                Step::RestoreStatus {
                    package: name.to_string(),
                    status: p.status.clone(),
                },
            )
            .done(),
            Task::new(
                "cancel-onload",
                Step::CancelOnload {
                    package: name.to_string(),
                },
                Step::Nothing,
            ),
        ];
        let onuninstall = Task::new(
            "onuninstall",
            Step::Hook {
                package: name.to_string(),
                hook: "onuninstall".into(),
                plug: None,
                slot: None,
            },
            Step::Nothing,
        );
        tasks.push(if strict {
            onuninstall
        } else {
            onuninstall.ignoring_errors()
        });
        for c in &conns {
            tasks.extend(disconnect_tasks(c, false, true));
        }
        tasks.push(
            Task::new(
                "delete-resources",
                Step::DeleteResources {
                    package: name.to_string(),
                    keep: keep.clone(),
                },
                Step::Nothing,
            )
            .irreversible(),
        );
        tasks.push(
            Task::new(
                "remove-package",
                Step::RemovePackage {
                    package: name.to_string(),
                },
                Step::Nothing,
            )
            .irreversible(),
        );
        let keep_text = if keep.is_empty() {
            String::new()
        } else {
            let k: Vec<&str> = keep.iter().map(|k| k.as_str()).collect();
            format!(" keeping {}", k.join(","))
        };
        let record = new_change(
            change,
            ChangeKind::Uninstall,
            format!("uninstall {name:?}{keep_text}"),
            packages,
            tasks,
        );
        Ok(vec![Event::UninstallStarted(UninstallStarted {
            package: name.to_string(),
            keep,
            change: record,
        })])
    }

    fn installed_end(
        &self,
        state: &dyn StateRead,
        end: &End,
        plug: bool,
    ) -> Result<String, DecideError> {
        let p = self.package(state, &end.0)?;
        if p.status != PackageStatus::Installed {
            return Err(Rejection::state(
                Entity::Package(end.0.clone()),
                format!("is {}, not installed", p.status.name()),
            )
            .into());
        }
        let interface = if plug {
            p.manifest
                .plugs
                .iter()
                .find(|x| x.name == end.1)
                .map(|x| x.interface.clone())
        } else {
            p.manifest
                .slots
                .iter()
                .find(|x| x.name == end.1)
                .map(|x| x.interface.clone())
        };
        interface.ok_or_else(|| {
            Rejection::NotFound(if plug {
                Entity::Plug(end.clone())
            } else {
                Entity::Slot(end.clone())
            })
            .into()
        })
    }

    fn decide_connect(
        &self,
        state: &dyn StateRead,
        plug: &End,
        slot: &End,
        change: Uuid,
    ) -> Decided {
        self.check_new_change(state, change)?;
        let pi = self.installed_end(state, plug, true)?;
        let si = self.installed_end(state, slot, false)?;
        if pi != si {
            return Err(Rejection::Invalid(format!(
                "plug {}:{} has interface {pi:?} but slot {}:{} has interface {si:?}",
                plug.0, plug.1, slot.0, slot.1
            ))
            .into());
        }
        if state
            .get(Space::State, &keys::connection(plug, slot))?
            .is_some()
        {
            return Err(Rejection::Exists(Entity::Connection(plug.clone(), slot.clone())).into());
        }
        let packages = BTreeSet::from([plug.0.clone(), slot.0.clone()]);
        self.check_not_busy(state, &packages)?;
        let was_undesired = state
            .get(Space::State, &keys::undesired(plug, slot))?
            .is_some();
        let record = new_change(
            change,
            ChangeKind::Connect,
            format!("connect {}:{} to {}:{}", plug.0, plug.1, slot.0, slot.1),
            packages,
            connect_tasks(plug, slot, &pi, false, was_undesired),
        );
        Ok(vec![Event::ChangeCreated(record)])
    }

    fn decide_disconnect(
        &self,
        state: &dyn StateRead,
        plug: &End,
        slot: &End,
        change: Uuid,
    ) -> Decided {
        self.check_new_change(state, change)?;
        let conn = get::<ConnRecord>(state, &keys::connection(plug, slot))?
            .ok_or_else(|| Rejection::NotFound(Entity::Connection(plug.clone(), slot.clone())))?;
        let packages = BTreeSet::from([plug.0.clone(), slot.0.clone()]);
        self.check_not_busy(state, &packages)?;
        let record = new_change(
            change,
            ChangeKind::Disconnect,
            format!(
                "disconnect {}:{} from {}:{}",
                plug.0, plug.1, slot.0, slot.1
            ),
            packages,
            // A manual disconnect of an auto connection marks the pair undesired.
            disconnect_tasks(&conn, conn.auto, false),
        );
        Ok(vec![Event::ChangeCreated(record)])
    }

    /// The change, the action and the step of task `task` if it is the next one to run.
    fn next_task(
        &self,
        state: &dyn StateRead,
        change: Uuid,
        task: u32,
        undo: bool,
    ) -> Result<(ChangeRecord, Action, Step), DecideError> {
        let c = self.change(state, change)?;
        let i = task as usize;
        let action = if undo { Action::Undo(i) } else { Action::Do(i) };
        if c.next_action() != Some(action) {
            return Err(Rejection::state(
                Entity::Change(change),
                format!(
                    "task {task} ({}) is not the next to {} (next: {:?})",
                    c.tasks.get(i).map_or("no such task", |t| t.name.as_str()),
                    if undo { "undo" } else { "do" },
                    c.next_action()
                ),
            )
            .into());
        }
        let t = &c.tasks[i];
        let step = if undo { t.undo.clone() } else { t.step.clone() };
        Ok((c, action, step))
    }

    /// For a hook step whose package declares the hook: (package, hook).
    fn declared_hook(
        &self,
        state: &dyn StateRead,
        step: &Step,
    ) -> Result<Option<(String, String)>, DecideError> {
        let Step::Hook { package, hook, .. } = step else {
            return Ok(None);
        };
        let Some(p) = get::<PackageRecord>(state, &keys::package(package))? else {
            return Ok(None);
        };
        Ok(p.manifest
            .hooks
            .contains_key(hook)
            .then(|| (package.clone(), hook.clone())))
    }

    fn decide_task_run(
        &self,
        state: &dyn StateRead,
        change: Uuid,
        task: u32,
        undo: bool,
    ) -> Decided {
        let (c, _action, step) = self.next_task(state, change, task, undo)?;
        if self.declared_hook(state, &step)?.is_some() {
            return Err(Rejection::state(
                Entity::Change(change),
                format!("task {task} runs a declared hook; use HookStart"),
            )
            .into());
        }
        let mut events = Vec::new();
        let mut outcome = TaskOutcome::Succeeded;
        match step {
            Step::Hook { .. } | Step::Nothing => {}
            Step::Establish {
                plug,
                slot,
                interface,
                auto,
                undesired,
            } => {
                let marked = state
                    .get(Space::State, &keys::undesired(&plug, &slot))?
                    .is_some();
                // A failed read is a failure of the decision, never "the package exists".
                let mut missing = None;
                for p in [&plug.0, &slot.0] {
                    if state.get(Space::State, &keys::package(p))?.is_none() {
                        missing = Some(p);
                        break;
                    }
                }
                if let Some(p) = missing {
                    outcome = TaskOutcome::Failed(format!("package {p:?} no longer exists"));
                } else if state
                    .get(Space::State, &keys::connection(&plug, &slot))?
                    .is_some()
                {
                    outcome = TaskOutcome::Failed("the connection already exists".into());
                } else {
                    // Establishing by hand clears the mark; then set it as the step says.
                    let after = marked && auto;
                    events.push(Event::ConnectionEstablished {
                        plug: plug.clone(),
                        slot: slot.clone(),
                        interface,
                        auto,
                    });
                    if after != undesired {
                        events.push(Event::ConnectionMarked {
                            plug,
                            slot,
                            undesired,
                        });
                    }
                }
            }
            Step::RemoveConnection {
                plug,
                slot,
                undesired,
            } => {
                let marked = state
                    .get(Space::State, &keys::undesired(&plug, &slot))?
                    .is_some();
                let mut after = marked;
                if state
                    .get(Space::State, &keys::connection(&plug, &slot))?
                    .is_some()
                {
                    after = marked || undesired;
                    events.push(Event::ConnectionRemoved {
                        plug: plug.clone(),
                        slot: slot.clone(),
                        undesired,
                    });
                }
                if after != undesired {
                    events.push(Event::ConnectionMarked {
                        plug,
                        slot,
                        undesired,
                    });
                }
            }
            Step::MarkInstalled { package } => events.push(Event::PackageStatusChanged {
                package,
                status: PackageStatus::Installed,
            }),
            Step::MarkBroken { package } => {
                if state.get(Space::State, &keys::package(&package))?.is_some() {
                    events.push(Event::PackageStatusChanged {
                        package,
                        status: PackageStatus::Broken {
                            reason: BrokenReason::Stated {
                                why: format!("install change {} failed", c.id),
                            },
                        },
                    });
                }
            }
            Step::MarkUninstalling { package, keep } => events.push(Event::PackageStatusChanged {
                package,
                status: PackageStatus::Uninstalling { keep, change: c.id },
            }),
            Step::RestoreStatus { package, status } => {
                events.push(Event::PackageStatusChanged { package, status })
            }
            Step::CancelOnload { package } => {
                if let Some(p) = get::<PackageRecord>(state, &keys::package(&package))? {
                    let attempt = match p.onload {
                        OnloadState::Running { attempt } => Some(attempt),
                        OnloadState::Pending => Some(0),
                        OnloadState::None
                        | OnloadState::Finished { .. }
                        | OnloadState::Cancelled => None,
                    };
                    if let Some(attempt) = attempt {
                        events.push(Event::HookCancelled(HookRef {
                            change: p.install_change,
                            task: None,
                            package,
                            hook: "onload".into(),
                            attempt,
                        }));
                    }
                }
            }
            Step::DeleteResources { package, keep } => {
                let mut deleted = Vec::new();
                for kind in ResourceKind::ALL {
                    if keep.contains(&kind) {
                        continue;
                    }
                    let names = names_under(state, &keys::resources_of(table(kind), &package))?;
                    if !names.is_empty() {
                        deleted.push((kind, names));
                    }
                }
                let mut features = Vec::new();
                if let Some(p) = get::<PackageRecord>(state, &keys::package(&package))? {
                    for f in &p.manifest.features {
                        let owned = get::<FeatureRecord>(state, &keys::feature(&f.name))?
                            .is_some_and(|r| r.owner == package);
                        if owned {
                            features.push(f.name.clone());
                        }
                    }
                }
                events.push(Event::ResourcesDeleted(ResourcesDeleted {
                    package,
                    keep,
                    deleted,
                    features,
                }));
            }
            Step::RemovePackage { package } => events.push(Event::PackageRemoved { package }),
        }
        events.push(Event::TaskFinished {
            change,
            task,
            undo,
            outcome,
        });
        Ok(events)
    }

    fn decide_hook_finish(
        &self,
        state: &dyn StateRead,
        change: Uuid,
        task: u32,
        undo: bool,
        result: Option<&HookResult>,
    ) -> Decided {
        let (c, _action, step) = self.next_task(state, change, task, undo)?;
        let t = &c.tasks[task as usize];
        let running = if undo {
            crate::change::TaskStatus::Undoing
        } else {
            crate::change::TaskStatus::Doing
        };
        if t.status != running {
            return Err(Rejection::state(
                Entity::Change(change),
                format!("task {task} ({}) is {}, not running", t.name, t.status),
            )
            .into());
        }
        let Some((package, hook)) = self.declared_hook(state, &step)? else {
            return Err(Rejection::state(
                Entity::Change(change),
                format!("task {task} runs no declared hook"),
            )
            .into());
        };
        let hook_ref = HookRef {
            change,
            task: Some(task),
            package,
            hook,
            attempt: t.attempts,
        };
        let (event, outcome) = match result {
            None => (Event::HookCancelled(hook_ref), TaskOutcome::Cancelled),
            Some(r) => {
                check_hook_result(r)?;
                let outcome = match r.outcome {
                    HookOutcome::Succeeded => TaskOutcome::Succeeded,
                    HookOutcome::Failed | HookOutcome::TimedOut | HookOutcome::SpawnFailed => {
                        TaskOutcome::Failed(format!("hook {} {}", hook_ref.hook, r.describe()))
                    }
                };
                (Event::HookFinished(hook_ref, r.clone()), outcome)
            }
        };
        Ok(vec![
            event,
            Event::TaskFinished {
                change,
                task,
                undo,
                outcome,
            },
        ])
    }

    // ------------------------------------------------------------------------------------
    // apply
    // ------------------------------------------------------------------------------------

    /// Applies one entry to state. Pure: reads only `state` and `entry`.
    pub fn apply(
        &self,
        state: &mut dyn StateWrite,
        entry: &StoredEntry,
    ) -> Result<(), ApplyFailure> {
        let event =
            Event::decode(&entry.kind, &entry.payload).map_err(|e| ApplyFailure(e.to_string()))?;
        let rev = entry.offset;
        match event {
            Event::InstallStarted(e) => {
                let m = &e.manifest;
                let name = &m.name;
                self.put_new_change(state, e.change.clone(), entry);
                put_package(
                    state,
                    &PackageRecord {
                        manifest: m.clone(),
                        status: PackageStatus::Installing {
                            change: e.change.id,
                        },
                        onload: if m.hooks.contains_key("onload") {
                            OnloadState::Pending
                        } else {
                            OnloadState::None
                        },
                        install_change: e.change.id,
                        revision: rev,
                    },
                );
                // Adopt whatever an earlier uninstall kept under this name.
                if state.get(Space::State, &keys::kept(name))?.is_some() {
                    for kind in ResourceKind::ALL {
                        mark_kept(state, kind, name, None, rev)?;
                    }
                    state.delete(Space::State, &keys::kept(name));
                }
                for (key, value) in &m.vars {
                    put_new(state, &keys::resource("var", name, key), || VarRecord {
                        value: value.clone().into_bytes(),
                        revision: rev,
                        kept_from: None,
                    })?;
                }
                for q in &m.queues {
                    put_new(state, &keys::resource("queue", name, q), || QueueRecord {
                        next_seq: 1,
                        acked: 0,
                        revision: rev,
                        kept_from: None,
                    })?;
                }
                for v in &m.vaults {
                    put_new(state, &keys::resource("vault", name, v), || VaultRecord {
                        sealed: None,
                        revision: rev,
                        kept_from: None,
                    })?;
                }
                for d in &m.daemons {
                    put_new(state, &keys::resource("daemon", name, &d.name), || {
                        DaemonRecord {
                            command: d.command.clone(),
                            restart: d.restart,
                            desired: if d.enabled {
                                DaemonState::Enabled
                            } else {
                                DaemonState::Disabled
                            },
                            observed: None,
                            revision: rev,
                            kept_from: None,
                        }
                    })?;
                }
                for t in &m.model {
                    put_new(state, &keys::resource("model", name, &t.name), || {
                        ModelRecord {
                            base: t.base.clone(),
                            doc: t.doc.clone(),
                            revision: rev,
                            kept_from: None,
                        }
                    })?;
                }
                for f in &m.features {
                    put(
                        state,
                        &keys::feature(&f.name),
                        &FeatureRecord {
                            name: f.name.clone(),
                            owner: name.clone(),
                            state: f.state,
                            auto_restart: f.auto_restart,
                            scope: f.scope,
                            observed: None,
                            revision: rev,
                        },
                    );
                }
            }
            Event::UninstallStarted(e) => {
                let id = e.change.id;
                self.put_new_change(state, e.change, entry);
                self.update_package(state, &e.package, rev, |p| {
                    p.status = PackageStatus::Uninstalling {
                        keep: e.keep,
                        change: id,
                    };
                })?;
            }
            Event::PackageStatusChanged { package, status } => {
                self.update_package(state, &package, rev, |p| p.status = status)?;
            }
            Event::PackageRemoved { package } => {
                state.delete(Space::State, &keys::package(&package));
                state.delete(Space::State, &keys::package_status(&package));
                state.delete(Space::State, &keys::onload_wanted(&package));
            }
            Event::ResourcesDeleted(e) => {
                for (kind, names) in &e.deleted {
                    for n in names {
                        let key = keys::resource(table(*kind), &e.package, n);
                        if *kind == ResourceKind::Queues {
                            // A queue's live items are exactly `acked + 1 .. next_seq` (puts
                            // append at `next_seq`, acks delete up to `acked`), so they are
                            // deleted by key: no scan over the prefix's tombstones.
                            if let Some(q) = get::<QueueRecord>(state, &key)? {
                                for seq in q.acked + 1..q.next_seq {
                                    state.delete(
                                        Space::State,
                                        &keys::queue_item(&e.package, n, seq),
                                    );
                                }
                            }
                        }
                        state.delete(Space::State, &key);
                    }
                }
                for kind in &e.keep {
                    mark_kept(state, *kind, &e.package, Some(e.package.clone()), rev)?;
                }
                if !e.keep.is_empty() {
                    state.put(Space::State, &keys::kept(&e.package), b"");
                }
                for f in &e.features {
                    state.delete(Space::State, &keys::feature(f));
                }
            }
            Event::ChangeCreated(c) => self.put_new_change(state, c, entry),
            Event::AbortRequested { change } => {
                let mut c = self.applied_change(state, change)?;
                c.abort();
                self.save_change(state, c, entry)?;
            }
            Event::TaskStarted { change, task, undo } => {
                let mut c = self.applied_change(state, change)?;
                let i = task as usize;
                let action = if undo { Action::Undo(i) } else { Action::Do(i) };
                if !c.start_task(action) {
                    return Err(ApplyFailure(format!(
                        "change {change}: task {task} cannot start from its current status"
                    )));
                }
                self.save_change(state, c, entry)?;
            }
            Event::TaskFinished {
                change,
                task,
                undo,
                outcome,
            } => {
                let mut c = self.applied_change(state, change)?;
                let i = task as usize;
                if i >= c.tasks.len() {
                    return Err(ApplyFailure(format!("change {change} has no task {task}")));
                }
                c.finish_task(if undo { Action::Undo(i) } else { Action::Do(i) }, &outcome);
                self.save_change(state, c, entry)?;
            }
            Event::HookStarted(h) => {
                if h.task.is_none() {
                    self.update_package(state, &h.package, rev, |p| {
                        p.onload = OnloadState::Running { attempt: h.attempt }
                    })?;
                }
            }
            Event::HookFinished(h, result) => match h.task {
                None => {
                    let ok = result.outcome == HookOutcome::Succeeded;
                    self.update_package(state, &h.package, rev, |p| {
                        p.onload = OnloadState::Finished { ok };
                        if !ok && p.status == PackageStatus::Installed {
                            p.status = PackageStatus::Broken {
                                reason: BrokenReason::OnloadFailed {
                                    attempt: h.attempt,
                                    result: result.summary(),
                                },
                            };
                        }
                    })?;
                }
                Some(task) => {
                    let mut c = self.applied_change(state, h.change)?;
                    let t = applied_task(&mut c, task)?;
                    t.log.push(TaskNote::HookFinished {
                        hook: h.hook,
                        attempt: h.attempt,
                        result: result.summary(),
                    });
                    self.save_change(state, c, entry)?;
                }
            },
            Event::HookCancelled(h) => match h.task {
                None => self.update_package(state, &h.package, rev, |p| {
                    p.onload = OnloadState::Cancelled;
                })?,
                Some(task) => {
                    let mut c = self.applied_change(state, h.change)?;
                    applied_task(&mut c, task)?
                        .log
                        .push(TaskNote::HookCancelled {
                            hook: h.hook,
                            attempt: h.attempt,
                        });
                    self.save_change(state, c, entry)?;
                }
            },
            Event::ConnectionEstablished {
                plug,
                slot,
                interface,
                auto,
            } => {
                if !auto {
                    state.delete(Space::State, &keys::undesired(&plug, &slot));
                }
                put(
                    state,
                    &keys::connection(&plug, &slot),
                    &ConnRecord {
                        plug,
                        slot,
                        interface,
                        auto,
                        revision: rev,
                    },
                );
            }
            Event::ConnectionRemoved {
                plug,
                slot,
                undesired,
            } => {
                state.delete(Space::State, &keys::connection(&plug, &slot));
                if undesired {
                    state.put(Space::State, &keys::undesired(&plug, &slot), b"");
                }
            }
            Event::ConnectionMarked {
                plug,
                slot,
                undesired,
            } => {
                let k = keys::undesired(&plug, &slot);
                if undesired {
                    state.put(Space::State, &k, b"");
                } else {
                    state.delete(Space::State, &k);
                }
            }
            Event::VarSet { owner, key, value } => put(
                state,
                &keys::resource("var", &owner, &key),
                &VarRecord {
                    value: value.into_vec(),
                    revision: rev,
                    kept_from: None,
                },
            ),
            Event::VarsDeleted { owner, keys: names } => {
                for k in names {
                    state.delete(Space::State, &keys::resource("var", &owner, &k));
                }
            }
            Event::QueuePut {
                owner,
                queue,
                items,
            } => {
                let key = keys::resource("queue", &owner, &queue);
                let mut q = self.applied_record::<QueueRecord>(state, &key)?;
                for item in items {
                    state.put(
                        Space::State,
                        &keys::queue_item(&owner, &queue, q.next_seq),
                        &item,
                    );
                    q.next_seq += 1;
                }
                q.revision = rev;
                put(state, &key, &q);
            }
            Event::QueueAcked { owner, queue, upto } => {
                let key = keys::resource("queue", &owner, &queue);
                let mut q = self.applied_record::<QueueRecord>(state, &key)?;
                for seq in q.acked + 1..=upto.min(q.next_seq.saturating_sub(1)) {
                    state.delete(Space::State, &keys::queue_item(&owner, &queue, seq));
                }
                q.acked = q.acked.max(upto);
                q.revision = rev;
                put(state, &key, &q);
            }
            Event::VaultSet {
                owner,
                vault,
                sealed,
            } => {
                update_owned::<VaultRecord>(
                    state,
                    &keys::resource("vault", &owner, &vault),
                    rev,
                    |v| v.sealed = Some(sealed),
                )?;
            }
            Event::DaemonDesired {
                owner,
                daemon,
                desired,
            } => {
                update_owned::<DaemonRecord>(
                    state,
                    &keys::resource("daemon", &owner, &daemon),
                    rev,
                    |d| d.desired = desired,
                )?;
            }
            Event::DaemonObserved {
                owner,
                daemon,
                observed,
            } => {
                update_owned::<DaemonRecord>(
                    state,
                    &keys::resource("daemon", &owner, &daemon),
                    rev,
                    |d| d.observed = Some(observed),
                )?;
            }
            Event::FeatureStateChanged { name, state: to } => {
                self.update_feature(state, &name, rev, |f| f.state = to)?
            }
            Event::FeatureObserved { name, observed } => {
                self.update_feature(state, &name, rev, |f| f.observed = Some(observed))?
            }
            Event::FeatureScopeSynced { name, scope } => {
                self.update_feature(state, &name, rev, |f| f.scope = scope)?
            }
            Event::SchemaMigrated {
                schema,
                from: _,
                to,
                compat,
                name,
            } => {
                let m = self
                    .schemas
                    .get(&schema)
                    .and_then(|s| s.migrations.iter().find(|m| m.to == to && m.name == name))
                    .ok_or_else(|| {
                        ApplyFailure(format!(
                            "schema {schema:?} migration {name:?} to version {to} is not known \
                             to this binary; upgrade it (mirrors are upgraded before the leader)"
                        ))
                    })?;
                (m.apply)(state).map_err(|e| {
                    ApplyFailure(format!("schema {schema:?} migration {name:?} failed: {e}"))
                })?;
                put(
                    state,
                    &keys::schema(&schema),
                    &SchemaRecord {
                        version: to,
                        compat,
                    },
                );
            }
            Event::TokenCreated { name, role, hash } => {
                put(
                    state,
                    &keys::token(&name),
                    &TokenRecord {
                        name: name.clone(),
                        role,
                        hash,
                        created_ms: entry.time_ms,
                        revision: rev,
                    },
                );
                state.put(Space::State, &keys::token_hash(&hash), name.as_bytes());
            }
            Event::TokenRevoked { name } => {
                let t = get::<TokenRecord>(state, &keys::token(&name))?.ok_or_else(|| {
                    ApplyFailure(format!("token.revoked: token {name:?} does not exist"))
                })?;
                state.delete(Space::State, &keys::token(&name));
                state.delete(Space::State, &keys::token_hash(&t.hash));
            }
            // The audit trail of a loss; no state records it.
            Event::WalLossAccepted(_) => {}
            // The epoch history: each epoch's first offset, and the current epoch.
            Event::EpochStarted(e) => {
                put(state, &keys::epoch(e.epoch), &entry.offset);
                put(state, keys::EPOCH_CURRENT, &e.epoch);
            }
            Event::Ext { kind, payload } => {
                let app = ext::app_of(&kind)
                    .ok_or_else(|| ApplyFailure(format!("malformed extension kind {kind:?}")))?;
                let extension = self.extensions.get(app).ok_or_else(|| {
                    ApplyFailure(format!(
                        "unknown event kind {kind:?}: no extension {app:?} is registered"
                    ))
                })?;
                extension
                    .apply(&mut ExtWrite::new(state, app), &kind, &payload)
                    .map_err(|e| ApplyFailure(format!("extension {app:?} failed: {e}")))?;
                let used = keys::ext_app(app);
                if state.get(Space::State, &used)?.is_none() {
                    put(state, &used, &(kind.clone(), entry.offset));
                }
            }
        }
        if let Some(key) = &entry.meta.idempotency_key {
            record_idempotency(state, key, entry.offset)?;
        }
        Ok(())
    }

    fn put_new_change(&self, state: &mut dyn StateWrite, mut c: ChangeRecord, entry: &StoredEntry) {
        c.actor = entry.meta.actor.clone();
        c.spawn_ms = entry.time_ms;
        c.revision = entry.offset;
        state.put(Space::State, &keys::active_change(c.id), b"");
        for p in &c.packages {
            state.put(Space::State, &keys::busy(p), c.id.as_bytes());
        }
        put(state, &keys::change(c.id), &c);
    }

    fn applied_change(
        &self,
        state: &dyn StateRead,
        id: Uuid,
    ) -> Result<ChangeRecord, ApplyFailure> {
        get::<ChangeRecord>(state, &keys::change(id))?
            .ok_or_else(|| ApplyFailure(format!("change {id} does not exist")))
    }

    fn applied_record<T: DeserializeOwned>(
        &self,
        state: &dyn StateRead,
        key: &[u8],
    ) -> Result<T, ApplyFailure> {
        get::<T>(state, key)?.ok_or_else(|| {
            ApplyFailure(format!(
                "record {:?} does not exist",
                String::from_utf8_lossy(key)
            ))
        })
    }

    /// Saves a change; when it has just become ready, releases its packages.
    fn save_change(
        &self,
        state: &mut dyn StateWrite,
        mut c: ChangeRecord,
        entry: &StoredEntry,
    ) -> Result<(), ApplyFailure> {
        c.revision = entry.offset;
        if c.status.is_ready() && c.ready_ms.is_none() {
            c.ready_ms = Some(entry.time_ms);
            state.delete(Space::State, &keys::active_change(c.id));
            for p in &c.packages {
                let k = keys::busy(p);
                if state.get(Space::State, &k)?.as_deref() == Some(c.id.as_bytes().as_slice()) {
                    state.delete(Space::State, &k);
                }
            }
        }
        put(state, &keys::change(c.id), &c);
        Ok(())
    }

    fn update_package(
        &self,
        state: &mut dyn StateWrite,
        name: &str,
        rev: u64,
        f: impl FnOnce(&mut PackageRecord),
    ) -> Result<(), ApplyFailure> {
        // A missing package is an impossible state here (decide checked it): the same failure
        // as a missing feature or change, never a silent skip.
        let mut p = self.applied_record::<PackageRecord>(state, &keys::package(name))?;
        f(&mut p);
        p.revision = rev;
        put_package(state, &p);
        Ok(())
    }

    fn update_feature(
        &self,
        state: &mut dyn StateWrite,
        name: &str,
        rev: u64,
        f: impl FnOnce(&mut FeatureRecord),
    ) -> Result<(), ApplyFailure> {
        let key = keys::feature(name);
        let mut r = self.applied_record::<FeatureRecord>(state, &key)?;
        f(&mut r);
        r.revision = rev;
        put(state, &key, &r);
        Ok(())
    }
}

/// Task `task` of a change an entry applies to; a missing one is an impossible state.
fn applied_task(c: &mut ChangeRecord, task: u32) -> Result<&mut crate::change::Task, ApplyFailure> {
    let id = c.id;
    c.tasks
        .get_mut(task as usize)
        .ok_or_else(|| ApplyFailure(format!("change {id} has no task {task}")))
}

fn check_revision(
    entity: Entity,
    expected: &Option<u64>,
    actual: Option<u64>,
) -> Result<(), Rejection> {
    match (expected, actual) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(0), Some(_)) => Err(Rejection::Exists(entity)),
        (Some(_), None) => Err(Rejection::NotFound(entity)),
        (Some(e), Some(a)) if *e == a => Ok(()),
        (Some(e), Some(a)) => Err(Rejection::RevisionMismatch {
            entity,
            expected: *e,
            actual: a,
        }),
    }
}

fn check_hook_result(r: &HookResult) -> Result<(), Rejection> {
    for (what, s) in [("stdout", &r.stdout_tail), ("stderr", &r.stderr_tail)] {
        if s.len() > HOOK_OUTPUT_BYTES_MAX {
            return Err(Rejection::Invalid(format!(
                "hook {what} tail is {} bytes, over the limit of {HOOK_OUTPUT_BYTES_MAX}",
                s.len()
            )));
        }
    }
    Ok(())
}

/// Records that the command carrying `key` wrote `offset` (extending the range when it is the
/// same command's next event), and forgets the oldest key beyond the retention window.
fn record_idempotency(
    state: &mut dyn StateWrite,
    key: &str,
    offset: u64,
) -> Result<(), ApplyFailure> {
    let k = keys::idem_key(key);
    if let Some(mut r) = get::<IdemRecord>(state, &k)? {
        if r.end == offset {
            r.end += 1;
            put(state, &k, &r);
            return Ok(());
        }
    }
    let seq = state
        .get(Space::State, keys::IDEM_NEXT)?
        .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    put(
        state,
        &k,
        &IdemRecord {
            first: offset,
            end: offset + 1,
            seq,
        },
    );
    state.put(Space::State, &keys::idem_seq(seq), key.as_bytes());
    state.put(Space::State, keys::IDEM_NEXT, &(seq + 1).to_be_bytes());
    if seq >= IDEMPOTENCY_KEYS_RETAINED {
        let old = keys::idem_seq(seq - IDEMPOTENCY_KEYS_RETAINED);
        if let Some(old_key) = state.get(Space::State, &old)? {
            let ok = keys::idem_key(&String::from_utf8_lossy(&old_key));
            if get::<IdemRecord>(state, &ok)?
                .is_some_and(|r| r.seq == seq - IDEMPOTENCY_KEYS_RETAINED)
            {
                state.delete(Space::State, &ok);
            }
            state.delete(Space::State, &old);
        }
    }
    Ok(())
}
