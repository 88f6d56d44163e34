//! The kernel: `decide` (validate a command against state, produce events or a rejection) and
//! `apply` (fold one entry into state, purely). Both work on the `StateRead`/`StateWrite`
//! keyspace, so the same code runs on the leader, on mirrors, in rebuild and in replay.
//!
//! The kernel is made of subsystems, one module each, owning their commands' `decide` and
//! their events' `apply`: a command goes to its subsystem by [`Command::subsystem`], an event
//! by the kind table of [`crate::event`] ([`Event::subsystem`]). This file holds only the
//! routing and what is common to every command (idempotency) or to the open.

mod changes;
mod drive;
mod epoch;
mod extensions;
mod features;
mod interfaces;
mod lifecycle;
mod resources;
mod rw;
mod schema;
mod store;
mod tokens;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use cairn_log::{Space, StateError, StateRead, StateWrite, StoredEntry};

use crate::command::{Command, Rejection, IDEMPOTENCY_KEYS_RETAINED};
use crate::event::{Event, EventError};
use crate::ext::{self, Extension, Schema};
use crate::keys;
use crate::records::IdemRecord;
use rw::{get, put};

pub use schema::{builtin_schema, SCHEMA_COMPAT_VERSION, SCHEMA_NAME, SCHEMA_VERSION};

/// Version of the projection's layout. Bump it when keys or records change, or when `apply`
/// folds the same log differently: the store then rebuilds the projection from the log at
/// open. The golden projection digest (`crates/cairn/tests/golden_projection.rs`) pins it.
/// 3: a broken package's reason and a task's notes are typed facts, rendered when read.
/// 4: a daemon record keeps the supervisor's last observation (`run`), and a package's
/// manifest may link a daemon to a feature.
pub const PROJECTION_VERSION: u64 = 4;

/// The kernel's subsystems: each owns its commands' `decide` and its events' `apply`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subsystem {
    /// Packages: install, uninstall, status, `onload`.
    Lifecycle,
    /// Vars, queues, vaults, daemons and model types, and their bulk deletion.
    Resources,
    /// Features: desired state, observed state, scope.
    Features,
    /// Plugs, slots and connections.
    Interfaces,
    /// The task engine: changes, tasks and their hooks.
    Changes,
    /// Schema versions and migrations.
    Schema,
    /// API tokens.
    Tokens,
    /// Embedders' extension events.
    Extensions,
    /// Leader epochs (`epoch.started.v1`).
    Epoch,
    /// Store-level records (`store.wal_loss_accepted.v1`).
    Store,
    /// The Drive: items, data versions, permissions, types and their migrations.
    Drive,
}

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

/// A command routed to a subsystem that does not decide it: the routing table
/// ([`Command::subsystem`]) and the subsystem disagree, a bug, never an input error.
fn misrouted_command(subsystem: Subsystem, command: &Command) -> ! {
    panic!("Command::subsystem routes {command:?} to {subsystem:?}, which does not decide it")
}

/// An event routed to a subsystem that does not apply it (the kind table and the subsystem
/// disagree): the writer stops rather than skip it.
fn misrouted_event(subsystem: Subsystem, event: &Event) -> ApplyFailure {
    ApplyFailure(format!(
        "the kind table routes {:?} to {subsystem:?}, which does not apply it",
        event.kind()
    ))
}

/// The lifecycle kernel with its registered schemas and extensions.
#[derive(Clone)]
pub struct Kernel {
    schemas: BTreeMap<String, Schema>,
    extensions: BTreeMap<String, Arc<dyn Extension>>,
    migrations: BTreeMap<String, Arc<dyn crate::drive::DriveMigration>>,
    validators: Arc<drive::Validators>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("schemas", &self.schemas.keys().collect::<Vec<_>>())
            .field("extensions", &self.extensions.keys().collect::<Vec<_>>())
            .field("migrations", &self.migrations.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Kernel {
    fn default() -> Self {
        Self::new()
    }
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
            migrations: crate::drive::builtin_migrations(),
            validators: Arc::default(),
        }
    }

    /// Registers a named drive type migration. It runs only on a leader, when a type's schema
    /// is upgraded with it; mirrors and replay read its recorded outcome instead.
    pub fn with_drive_migration(
        mut self,
        name: &str,
        migration: Arc<dyn crate::drive::DriveMigration>,
    ) -> Result<Self, String> {
        if !crate::model::is_item_name(name) {
            return Err(format!("drive migration name {name:?} is not valid"));
        }
        if self.migrations.contains_key(name) {
            return Err(format!("drive migration {name:?} is registered twice"));
        }
        self.migrations.insert(name.to_string(), migration);
        Ok(self)
    }

    /// The registered drive migrations' names.
    pub fn drive_migrations(&self) -> impl Iterator<Item = &str> {
        self.migrations.keys().map(String::as_str)
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

    /// Whether this kernel can fold an entry of `kind` with `payload`: a built-in kind (kind
    /// strings carry their version) it knows, an extension registered here, and no schema migration to a
    /// compatibility version newer than this binary's. A mirror asks this of every entry from
    /// its leader before applying it, so an older binary stops before what it cannot fold
    /// instead of failing in the middle of a commit. The error says what is missing.
    pub fn understands(&self, kind: &str, payload: &[u8]) -> Result<(), String> {
        let Some(subsystem) = Event::subsystem_of(kind) else {
            return Err(EventError::UnknownKind(kind.to_string()).to_string());
        };
        // Only the subsystems whose events name something this binary must know (a schema
        // version, an extension) or whose decoding validates content (drive paths) are decoded
        // here; any other known kind is decoded once, when it is applied.
        let decode = || Event::decode(kind, payload).map_err(|e| e.to_string());
        match subsystem {
            Subsystem::Extensions => extensions::understands(self, &decode()?),
            Subsystem::Schema => schema::understands(self, &decode()?),
            Subsystem::Lifecycle
            | Subsystem::Resources
            | Subsystem::Features
            | Subsystem::Interfaces
            | Subsystem::Changes
            | Subsystem::Tokens
            | Subsystem::Epoch
            | Subsystem::Store => Ok(()),
            // Decoding a drive event validates its paths: a leader whose rules are looser
            // than this binary's must stop the mirror before the entry, not in its commit.
            Subsystem::Drive => decode().map(|_| ()),
        }
    }

    /// Refuses a workspace whose stored compat version of any registered schema is newer than
    /// this binary's version of it, or whose log holds events of an unregistered extension.
    pub fn check_open(&self, state: &dyn StateRead) -> Result<(), OpenError> {
        schema::check_open(self, state)?;
        extensions::check_open(self, state)
    }

    /// The migrations the leader must still record, in order.
    pub fn pending_migrations(&self, state: &dyn StateRead) -> Result<Vec<Command>, StateError> {
        schema::pending_migrations(self, state)
    }

    /// The offsets a command with this idempotency key committed, if it is remembered.
    pub fn idempotent(
        &self,
        state: &dyn StateRead,
        key: &str,
    ) -> Result<Option<Range<u64>>, StateError> {
        Ok(get::<IdemRecord>(state, &keys::idem_key(key))?.map(|r| r.first..r.end))
    }

    /// Validates `command` against `state` and yields its events, or a rejection.
    pub fn decide(&self, state: &dyn StateRead, command: &Command) -> Decided {
        match command.subsystem() {
            Subsystem::Lifecycle => lifecycle::decide(state, command),
            Subsystem::Resources => resources::decide(state, command),
            Subsystem::Features => features::decide(state, command),
            Subsystem::Interfaces => interfaces::decide(state, command),
            Subsystem::Changes => changes::decide(state, command),
            Subsystem::Schema => schema::decide(self, state, command),
            Subsystem::Tokens => tokens::decide(state, command),
            Subsystem::Extensions => extensions::decide(self, state, command),
            Subsystem::Epoch => epoch::decide(state, command),
            Subsystem::Store => store::decide(command),
            Subsystem::Drive => match command {
                Command::Drive { actor, op } => drive::decide(self, state, actor, op),
                other => misrouted_command(Subsystem::Drive, other),
            },
        }
    }

    /// Applies one entry to state. Pure: reads only `state` and `entry`.
    pub fn apply(
        &self,
        state: &mut dyn StateWrite,
        entry: &StoredEntry,
    ) -> Result<(), ApplyFailure> {
        let event =
            Event::decode(&entry.kind, &entry.payload).map_err(|e| ApplyFailure(e.to_string()))?;
        match event.subsystem() {
            Subsystem::Lifecycle => lifecycle::apply(state, event, entry)?,
            Subsystem::Resources => resources::apply(state, event, entry)?,
            Subsystem::Features => features::apply(state, event, entry)?,
            Subsystem::Interfaces => interfaces::apply(state, event, entry)?,
            Subsystem::Changes => changes::apply(state, event, entry)?,
            Subsystem::Schema => schema::apply(self, state, event)?,
            Subsystem::Tokens => tokens::apply(state, event, entry)?,
            Subsystem::Extensions => extensions::apply(self, state, event, entry)?,
            Subsystem::Epoch => epoch::apply(state, event, entry)?,
            Subsystem::Store => store::apply(event)?,
            Subsystem::Drive => drive::apply(state, event, entry)?,
        }
        if let Some(key) = &entry.meta.idempotency_key {
            record_idempotency(state, key, entry.offset)?;
        }
        Ok(())
    }
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
