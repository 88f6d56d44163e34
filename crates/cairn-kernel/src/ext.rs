//! Extension events and schemas registered by embedders: their own event kinds
//! (`ext.<app>.<name>.v<N>`) applied to their own `ext/<app>/` keyspace, and their own named
//! schemas with ordered migrations. Both replicate and replay like built-in events, so every
//! replica must register the same extensions.

use cairn_log::{Space, StateError, StateRead, StateWrite};

use crate::keys;

/// An embedder's event handler for one app.
pub trait Extension: Send + Sync + 'static {
    /// The app name: `[a-z0-9][a-z0-9_-]*`; kinds of this extension start with `ext.<app>.`.
    fn app(&self) -> &str;

    /// Validates an event before it is appended (on the leader only). The default accepts all.
    fn validate(&self, state: &ExtRead<'_>, kind: &str, payload: &[u8]) -> Result<(), String> {
        let _ = (state, kind, payload);
        Ok(())
    }

    /// Applies an event. Must be a pure function of `state`, `kind` and `payload`. An error
    /// stops the writer (the entry cannot be skipped).
    fn apply(&self, state: &mut ExtWrite<'_>, kind: &str, payload: &[u8]) -> Result<(), String>;
}

/// Read access to an extension's own keyspace (`ext/<app>/` in `state`).
pub struct ExtRead<'a> {
    pub(crate) state: &'a dyn StateRead,
    pub(crate) prefix: Vec<u8>,
}

impl<'a> ExtRead<'a> {
    pub(crate) fn new(state: &'a dyn StateRead, app: &str) -> Self {
        Self {
            state,
            prefix: keys::ext_prefix(app),
        }
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }

    /// The value at `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.state.get(Space::State, &self.full(key))
    }

    /// Visits keys starting with `prefix` (relative to the app's keyspace) in order.
    pub fn scan(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let n = self.prefix.len();
        self.state
            .scan_prefix(Space::State, &self.full(prefix), &mut |k, v| {
                visit(&k[n..], v)
            })
    }
}

/// Write access to an extension's own keyspace.
pub struct ExtWrite<'a> {
    pub(crate) state: &'a mut dyn StateWrite,
    pub(crate) prefix: Vec<u8>,
}

impl<'a> ExtWrite<'a> {
    pub(crate) fn new(state: &'a mut dyn StateWrite, app: &str) -> Self {
        Self {
            state,
            prefix: keys::ext_prefix(app),
        }
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }

    /// The value at `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.state.get(Space::State, &self.full(key))
    }

    /// Sets `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let k = self.full(key);
        self.state.put(Space::State, &k, value);
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        let k = self.full(key);
        self.state.delete(Space::State, &k);
    }
}

/// A named schema with its ordered migrations. The kernel registers `cairn`; embedders may
/// register their own.
#[derive(Clone, Debug)]
pub struct Schema {
    /// Schema name.
    pub name: String,
    /// The version this binary writes (the last migration's `to`).
    pub version: u32,
    /// Migrations from version 0, in order: `migrations[i].to == i + 1`.
    pub migrations: Vec<Migration>,
}

/// One schema migration.
#[derive(Clone, Debug)]
pub struct Migration {
    /// Version after it.
    pub to: u32,
    /// Oldest binary schema version that can open data after it.
    pub compat: u32,
    /// Name, recorded in the log.
    pub name: String,
    /// Its effect on state, applied exactly once, at the migration's offset, on every replica.
    pub apply: fn(&mut dyn StateWrite) -> Result<(), String>,
}

impl Schema {
    /// Checks the migration list: dense from 1, compat never above the version it is for.
    pub fn check(&self) -> Result<(), String> {
        for (i, m) in self.migrations.iter().enumerate() {
            let want = i as u32 + 1;
            if m.to != want {
                return Err(format!(
                    "schema {:?}: migration {:?} goes to version {}, expected {want}",
                    self.name, m.name, m.to
                ));
            }
            if m.compat > m.to || m.compat == 0 {
                return Err(format!(
                    "schema {:?}: migration {:?} has compat {} (must be 1..={})",
                    self.name, m.name, m.compat, m.to
                ));
            }
        }
        if self.migrations.len() as u32 != self.version {
            return Err(format!(
                "schema {:?}: version {} needs {} migrations, has {}",
                self.name,
                self.version,
                self.version,
                self.migrations.len()
            ));
        }
        Ok(())
    }
}

/// Whether `app` is a valid extension app name.
pub fn is_app_name(app: &str) -> bool {
    let b = app.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(*c, b'-' | b'_'))
}

/// The app of an extension kind `ext.<app>.<rest>`, if it has that form.
pub fn app_of(kind: &str) -> Option<&str> {
    let rest = kind.strip_prefix("ext.")?;
    let (app, tail) = rest.split_once('.')?;
    (is_app_name(app) && !tail.is_empty()).then_some(app)
}
