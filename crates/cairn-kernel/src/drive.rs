//! The Drive: a tree of items with versioned JSON data, typed by JSON Schemas that evolve
//! through named migrations, with per-item permissions (`docs/drive.md`).
//!
//! This module holds the Drive's vocabulary (validated paths, data versions, permission
//! levels, commands, events, records, named limits), its keyspace in the `drive` space and its
//! reads. `kernel/drive.rs` decides and applies the commands and events.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cairn_log::{Space, StateError, StateRead};
use serde::{Deserialize, Serialize};

use crate::echo::echo;
use crate::model::Role;

/// Longest path segment, in bytes.
pub const DRIVE_SEGMENT_BYTES_MAX: usize = 64;
/// Deepest path, in segments.
pub const DRIVE_PATH_DEPTH_MAX: usize = 32;
/// Largest data version (JSON text), in bytes.
pub const DRIVE_DATA_BYTES_MAX: usize = 256 * 1024;
/// Largest type schema (JSON text), in bytes.
pub const DRIVE_SCHEMA_BYTES_MAX: usize = 64 * 1024;
/// Most items one move or delete may carry along (the item and everything under it).
pub const DRIVE_SUBTREE_ITEMS_MAX: usize = 100_000;
/// Largest recorded outcome of one type migration (all rewritten data), in bytes; and most
/// stored data one type upgrade reads (its migration's input, or what it re-validates), so
/// that an upgrade cannot hold every other command of the workspace back for long.
pub const DRIVE_MIGRATION_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest part of a migration's outcome recorded in one entry, in bytes (a larger outcome is
/// chunked over several entries of the same commit).
pub const DRIVE_MIGRATION_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Most items one listing returns.
pub const DRIVE_LIST_ITEMS_MAX: usize = 10_000;
/// Compiled schemas the kernel keeps.
pub const DRIVE_SCHEMA_CACHE_MAX: usize = 256;
/// The migration every binary registers: fills properties the new schema adds from their
/// `default` values.
pub const FILL_DEFAULTS: &str = "fill-defaults";

/// What a path segment may be.
pub const DRIVE_SEGMENT_RULE: &str =
    "segments of 1 to 64 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or \
     digit, separated by single '/', with no leading or trailing '/'";

/// A validated drive path: `segment/segment/…` (see [`DRIVE_SEGMENT_RULE`]), at most
/// [`DRIVE_PATH_DEPTH_MAX`] deep. Relative to the drive's root; `.`, `..`, empty segments,
/// upper case and a leading `/` are refused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DrivePath(String);

impl DrivePath {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("a drive path is empty".into());
        }
        if s.starts_with('/') {
            return Err(format!(
                "drive path {} is absolute: paths are relative to the drive's root",
                echo(s)
            ));
        }
        let segments: Vec<&str> = s.split('/').collect();
        if segments.len() > DRIVE_PATH_DEPTH_MAX {
            return Err(format!(
                "drive path {} is {} segments deep, more than {DRIVE_PATH_DEPTH_MAX}",
                echo(s),
                segments.len()
            ));
        }
        for seg in &segments {
            let bad = seg.is_empty()
                || seg.len() > DRIVE_SEGMENT_BYTES_MAX
                || !seg.as_bytes()[0].is_ascii_alphanumeric()
                || !seg.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                || seg.bytes().any(|b| b.is_ascii_uppercase());
            if bad {
                return Err(format!(
                    "drive path {}: segment {} is not valid ({DRIVE_SEGMENT_RULE})",
                    echo(s),
                    echo(seg)
                ));
            }
        }
        Ok(Self(s.to_string()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The item's own name (its last segment).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent item, or `None` at the top level (under the root).
    pub fn parent(&self) -> Option<DrivePath> {
        self.0
            .rsplit_once('/')
            .map(|(p, _)| DrivePath(p.to_string()))
    }

    /// This path and its ancestors, nearest first.
    pub fn self_and_ancestors(&self) -> Vec<DrivePath> {
        let mut out = vec![self.clone()];
        let mut at = self.clone();
        while let Some(p) = at.parent() {
            out.push(p.clone());
            at = p;
        }
        out
    }

    /// Whether `self` is `other` or lies under it.
    pub fn is_within(&self, other: &DrivePath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }

    /// `self` (within `from`) moved under `to`, validated (a move can make a path too deep).
    pub fn rebased(&self, from: &DrivePath, to: &DrivePath) -> Result<DrivePath, String> {
        debug_assert!(self.is_within(from));
        DrivePath::parse(&format!("{}{}", to.0, &self.0[from.0.len()..]))
    }

    /// Joins a child segment (validated).
    pub fn child(&self, name: &str) -> Result<DrivePath, String> {
        DrivePath::parse(&format!("{}/{name}", self.0))
    }
}

impl TryFrom<String> for DrivePath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        DrivePath::parse(&s)
    }
}

impl From<DrivePath> for String {
    fn from(p: DrivePath) -> String {
        p.0
    }
}

impl fmt::Display for DrivePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A data version, `MAJOR.MINOR.PATCH`; versions of one item only move forward.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct DataVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl DataVersion {
    /// The version of an item's first data when none is given.
    pub const FIRST: DataVersion = DataVersion {
        major: 1,
        minor: 0,
        patch: 0,
    };

    /// The largest value of each part (nine digits), so every version prints as one that
    /// parses.
    pub const PART_MAX: u32 = 999_999_999;

    /// Parses `X.Y.Z`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let bad = || {
            format!(
                "data version {} is not MAJOR.MINOR.PATCH (each part at most {})",
                echo(s),
                Self::PART_MAX
            )
        };
        if parts.len() != 3 {
            return Err(bad());
        }
        let n = |p: &str| -> Result<u32, String> {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        Ok(Self {
            major: n(parts[0])?,
            minor: n(parts[1])?,
            patch: n(parts[2])?,
        })
    }

    /// The version after this one when none is given (patch + 1); `None` after the last
    /// patch of a minor version, [`DataVersion::PART_MAX`] (a put must then name its version).
    pub fn next(self) -> Option<DataVersion> {
        (self.patch < Self::PART_MAX).then_some(DataVersion {
            patch: self.patch + 1,
            ..self
        })
    }

    /// The 12-byte big-endian form used in keys (orders as the versions do).
    pub fn key_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.major.to_be_bytes());
        out[4..8].copy_from_slice(&self.minor.to_be_bytes());
        out[8..].copy_from_slice(&self.patch.to_be_bytes());
        out
    }

    fn from_key_bytes(b: &[u8]) -> Option<DataVersion> {
        if b.len() != 12 {
            return None;
        }
        let u = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(DataVersion {
            major: u(0),
            minor: u(4),
            patch: u(8),
        })
    }
}

impl fmt::Display for DataVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A permission level on an item, ordered `deny < read < edit < admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Nothing, not even seeing it.
    Deny,
    /// Read its data, versions and listing.
    Read,
    /// Also add items under it, put and delete data, move and delete it.
    Edit,
    /// Also set permissions on it.
    Admin,
}

impl Level {
    /// Parses `deny`, `read`, `edit` or `admin`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(Level::Deny),
            "read" => Ok(Level::Read),
            "edit" => Ok(Level::Edit),
            "admin" => Ok(Level::Admin),
            other => Err(format!(
                "permission level {} is not deny, read, edit or admin",
                echo(other)
            )),
        }
    }

    /// The level's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Deny => "deny",
            Level::Read => "read",
            Level::Edit => "edit",
            Level::Admin => "admin",
        }
    }

    /// What a token of `role` may do where no permission is set on an item or above it.
    pub fn default_for(role: Role) -> Level {
        match role {
            Role::Admin => Level::Admin,
            Role::Write => Level::Edit,
            Role::Read => Level::Read,
            Role::Mirror => Level::Deny,
        }
    }
}

/// Whom a permission is for: one token (by name) or every token of a role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Who {
    /// The token of this name.
    Token(String),
    /// Every token of this role.
    Role(Role),
}

impl Who {
    /// Parses `token:NAME` or `role:ROLE`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("token", name)) if crate::model::is_item_name(name) => {
                Ok(Who::Token(name.to_string()))
            }
            Some(("role", role)) if Role::parse(role).is_some() => {
                Ok(Who::Role(Role::parse(role).expect("checked just above")))
            }
            _ => Err(format!(
                "{} is not token:NAME or role:read|write|admin|mirror",
                echo(s)
            )),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Token(n) => write!(f, "token:{n}"),
            Who::Role(r) => write!(f, "role:{}", r.as_str()),
        }
    }
}

/// Who issues a drive command or read: a token's name and its role. Workspace admins
/// (role `admin`) have `admin` on every item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveActor {
    /// The token's name (`local` for the local CLI, the embedder's name in process).
    pub token: String,
    /// Its role.
    pub role: Role,
}

impl DriveActor {
    /// A workspace admin (the local CLI, an embedder).
    pub fn admin(name: &str) -> Self {
        Self {
            token: name.to_string(),
            role: Role::Admin,
        }
    }
}

/// A validated type name: `[a-z][a-z0-9_.:-]{0,63}`.
pub fn check_type_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "drive type name {} is not valid ([a-z][a-z0-9_.:-]{{0,63}})",
            echo(name)
        ))
    }
}

/// A drive operation (the actor is beside it in [`crate::Command::Drive`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriveCommand {
    /// Adds an item: a folder (no type) or an item of a type, whose data must validate against
    /// the type's schema. The parent must exist (the root always does).
    Add {
        /// Where.
        path: DrivePath,
        /// Its type, or none for a folder.
        type_name: Option<String>,
    },
    /// Moves or renames an item with everything under it (one event).
    Move {
        /// The item.
        from: DrivePath,
        /// Its new path (must not exist; its parent must).
        to: DrivePath,
    },
    /// Deletes an item with everything under it (one event).
    Delete {
        /// The item.
        path: DrivePath,
    },
    /// Puts a data version: `version`, which must not be below the item's current version
    /// (equal replaces that version's data), or the next one after the current.
    Put {
        /// The item.
        path: DrivePath,
        /// The version, or the next one.
        version: Option<DataVersion>,
        /// The data, JSON text.
        data: String,
    },
    /// Deletes one data version; deleting the current one falls back to the previous one.
    DeleteVersion {
        /// The item.
        path: DrivePath,
        /// The version.
        version: DataVersion,
    },
    /// Sets (or with `None` clears, to inherit again) one permission on an item.
    SetPerm {
        /// The item.
        path: DrivePath,
        /// For whom.
        who: Who,
        /// The level, or `None` to inherit from the parent.
        level: Option<Level>,
    },
    /// Sets a type's schema at `version`. A lower version than the type's is refused, the
    /// same version with the same schema writes nothing, and a higher one rewrites every data
    /// version of every item of the type through `migration` (or keeps them as they are), each
    /// result re-validated against the new schema, all in one commit.
    SetType {
        /// The type.
        name: String,
        /// Its new version.
        version: u32,
        /// Its JSON Schema, as JSON text.
        schema: String,
        /// A registered migration's name.
        migration: Option<String>,
    },
}

/// An item added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemAdded {
    /// Where.
    pub path: DrivePath,
    /// Its type (`None`: a folder).
    pub type_name: Option<String>,
}

/// An item moved, with everything under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemMoved {
    /// Its old path.
    pub from: DrivePath,
    /// Its new path.
    pub to: DrivePath,
}

/// An item deleted, with everything under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemDeleted {
    /// The item.
    pub path: DrivePath,
}

/// A data version put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPut {
    /// The item.
    pub path: DrivePath,
    /// The version (now the item's current one).
    pub version: DataVersion,
    /// The data, JSON text as validated.
    pub data: String,
}

/// A data version deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDeleted {
    /// The item.
    pub path: DrivePath,
    /// The version.
    pub version: DataVersion,
}

/// A permission set or cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermSet {
    /// The item.
    pub path: DrivePath,
    /// For whom.
    pub who: Who,
    /// The level; `None` inherits again.
    pub level: Option<Level>,
}

/// A type's schema set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeSet {
    /// The type.
    pub name: String,
    /// Its version now.
    pub version: u32,
    /// Its JSON Schema text.
    pub schema: String,
    /// The migration that rewrote its items' data, if any.
    pub migration: Option<String>,
}

/// One data version as a migration rewrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewritten {
    /// The item.
    pub path: DrivePath,
    /// The data version.
    pub version: DataVersion,
    /// Its new data, JSON text.
    pub data: String,
}

/// Part of a type migration's outcome (the rewritten data), recorded so that apply only
/// writes it: mirrors and replay reproduce it without the migration's code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrated {
    /// The type.
    pub type_name: String,
    /// The type's new version.
    pub version: u32,
    /// The rewritten data versions.
    pub rewritten: Vec<Rewritten>,
}

/// The drive's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriveEvent {
    /// `drive.item_added.v1`.
    ItemAdded(ItemAdded),
    /// `drive.item_moved.v1`.
    ItemMoved(ItemMoved),
    /// `drive.item_deleted.v1`.
    ItemDeleted(ItemDeleted),
    /// `drive.data_put.v1`.
    DataPut(DataPut),
    /// `drive.version_deleted.v1`.
    VersionDeleted(VersionDeleted),
    /// `drive.perm_set.v1`.
    PermSet(PermSet),
    /// `drive.type_set.v1`.
    TypeSet(TypeSet),
    /// `drive.migrated.v1`.
    Migrated(Migrated),
}

/// An item, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveItem {
    /// Where it is.
    pub path: DrivePath,
    /// Its type (`None`: a folder).
    pub type_name: Option<String>,
    /// Its current data version, if it has data.
    pub current: Option<DataVersion>,
    /// Permissions set on it.
    pub perms: BTreeMap<Who, Level>,
    /// The offset that added it.
    pub created: u64,
    /// The offset that last changed it.
    pub revision: u64,
}

/// A type, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveType {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Its JSON Schema text.
    pub schema: String,
    /// The migration its last upgrade ran, if any.
    pub migration: Option<String>,
    /// The offset that last changed it.
    pub revision: u64,
}

/// What a migration is told about the data it rewrites.
#[derive(Debug)]
pub struct MigrationInput<'a> {
    /// The item.
    pub path: &'a DrivePath,
    /// The data version being rewritten.
    pub version: DataVersion,
    /// The type's version before the upgrade.
    pub from_version: u32,
    /// The type's version after it.
    pub to_version: u32,
    /// The new schema.
    pub schema: &'a serde_json::Value,
}

/// A named type migration: rewrites one data version for a type's new schema. It runs once,
/// on the leader, in decide; the log records its outcome.
pub trait DriveMigration: Send + Sync {
    /// The new data, or why this data cannot be migrated.
    fn migrate(
        &self,
        input: &MigrationInput<'_>,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, String>;
}

impl<F> DriveMigration for F
where
    F: Fn(&MigrationInput<'_>, serde_json::Value) -> Result<serde_json::Value, String>
        + Send
        + Sync,
{
    fn migrate(
        &self,
        input: &MigrationInput<'_>,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self(input, data)
    }
}

/// [`FILL_DEFAULTS`]: every top-level property of the new schema that has a `default` and is
/// missing from an object's data gets that default; anything else is kept as it is.
pub struct FillDefaults;

impl DriveMigration for FillDefaults {
    fn migrate(
        &self,
        input: &MigrationInput<'_>,
        mut data: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let (Some(props), Some(obj)) = (
            input.schema.get("properties").and_then(|p| p.as_object()),
            data.as_object_mut(),
        ) else {
            return Ok(data);
        };
        for (name, prop) in props {
            if let Some(default) = prop.get("default") {
                obj.entry(name.clone()).or_insert_with(|| default.clone());
            }
        }
        Ok(data)
    }
}

/// The migrations every kernel starts with.
pub fn builtin_migrations() -> BTreeMap<String, Arc<dyn DriveMigration>> {
    let mut m: BTreeMap<String, Arc<dyn DriveMigration>> = BTreeMap::new();
    m.insert(FILL_DEFAULTS.into(), Arc::new(FillDefaults));
    m
}

/// The drive's keys, all in the `drive` space.
pub mod keys {
    use super::{DataVersion, DrivePath};

    /// `i/<path>`: an item.
    pub fn item(path: &DrivePath) -> Vec<u8> {
        format!("i/{path}").into_bytes()
    }

    /// `i/<path>/`: every item under `path`.
    pub fn items_under(path: &DrivePath) -> Vec<u8> {
        format!("i/{path}/").into_bytes()
    }

    /// `i/`: every item.
    pub const ITEMS: &[u8] = b"i/";

    /// `v/<path>\0`: an item's data versions.
    pub fn versions(path: &DrivePath) -> Vec<u8> {
        let mut k = format!("v/{path}").into_bytes();
        k.push(0);
        k
    }

    /// `v/<path>\0<version>`: one data version.
    pub fn version(path: &DrivePath, v: DataVersion) -> Vec<u8> {
        let mut k = versions(path);
        k.extend_from_slice(&v.key_bytes());
        k
    }

    /// `x/<type>\0`: the index of a type's items.
    pub fn typed(type_name: &str) -> Vec<u8> {
        let mut k = format!("x/{type_name}").into_bytes();
        k.push(0);
        k
    }

    /// `x/<type>\0<path>`: one item of a type.
    pub fn typed_item(type_name: &str, path: &DrivePath) -> Vec<u8> {
        let mut k = typed(type_name);
        k.extend_from_slice(path.as_str().as_bytes());
        k
    }

    /// `t/<type>`: a type.
    pub fn type_record(name: &str) -> Vec<u8> {
        format!("t/{name}").into_bytes()
    }

    /// `t/`: every type.
    pub const TYPES: &[u8] = b"t/";
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StateError> {
    cairn_log::codec::decode_value(v).map_err(|e| {
        StateError::corrupt(format!(
            "drive record at {:?} does not decode: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

/// The item at `path`.
pub fn item(state: &dyn StateRead, path: &DrivePath) -> Result<Option<DriveItem>, StateError> {
    let k = keys::item(path);
    state
        .get(Space::Drive, &k)?
        .map(|v| decode(&k, &v))
        .transpose()
}

/// The items directly under `parent` (`None`: the root) whose names sort after `after` (all
/// of them when `None`), in path order, at most `limit`. The work is bounded by the items
/// returned, not by what lies under them: a child's subtree is jumped over with a seek.
pub fn children(
    state: &dyn StateRead,
    parent: Option<&DrivePath>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<DriveItem>, StateError> {
    let prefix = parent.map_or_else(|| keys::ITEMS.to_vec(), keys::items_under);
    // Just after `prefix + after` itself: its siblings that extend its name (`a-b` after `a`)
    // sort before its subtree (`a/...`), which is jumped over below.
    let mut from = prefix.clone();
    if let Some(name) = after {
        from.extend_from_slice(name.as_bytes());
        from.push(0);
    }
    let mut out = Vec::new();
    let mut failed = None;
    while out.len() < limit {
        let mut jump = None;
        state.scan_prefix_from(Space::Drive, &prefix, &from, &mut |k, v| {
            if let Some(slash) = k[prefix.len()..].iter().position(|b| *b == b'/') {
                // Under a child: go on at the first key after `child/`'s subtree. Nothing
                // sorts between `/` and the byte after it, so no sibling is skipped.
                let mut next = k[..prefix.len() + slash].to_vec();
                next.push(b'/' + 1);
                jump = Some(next);
                return false;
            }
            match decode(k, v) {
                Ok(i) => out.push(i),
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            }
            out.len() < limit
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        match jump {
            Some(next) => from = next,
            None => break,
        }
    }
    Ok(out)
}

/// `path` and every item under it, in path order, at most `limit` (then `Err` with the limit
/// reached is the caller's to report: a bound, never a silent cut).
pub fn subtree(
    state: &dyn StateRead,
    path: &DrivePath,
    limit: usize,
) -> Result<Option<Vec<DriveItem>>, StateError> {
    let Some(root) = item(state, path)? else {
        return Ok(Some(Vec::new()));
    };
    let mut out = vec![root];
    let prefix = keys::items_under(path);
    let mut failed = None;
    let mut over = false;
    state.scan_prefix(Space::Drive, &prefix, &mut |k, v| {
        if out.len() >= limit {
            over = true;
            return false;
        }
        match decode(k, v) {
            Ok(i) => {
                out.push(i);
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok((!over).then_some(out))
}

/// An item's data versions, ascending.
pub fn versions(state: &dyn StateRead, path: &DrivePath) -> Result<Vec<DataVersion>, StateError> {
    let prefix = keys::versions(path);
    let mut out = Vec::new();
    let mut bad = None;
    state.scan_prefix(Space::Drive, &prefix, &mut |k, _| {
        match DataVersion::from_key_bytes(&k[prefix.len()..]) {
            Some(v) => out.push(v),
            None => {
                bad = Some(String::from_utf8_lossy(k).into_owned());
                return false;
            }
        }
        true
    })?;
    match bad {
        Some(k) => Err(StateError::corrupt(format!(
            "drive version key {k:?} has no version"
        ))),
        None => Ok(out),
    }
}

/// One data version's JSON text.
pub fn data(
    state: &dyn StateRead,
    path: &DrivePath,
    version: DataVersion,
) -> Result<Option<String>, StateError> {
    let k = keys::version(path, version);
    match state.get(Space::Drive, &k)? {
        None => Ok(None),
        Some(v) => String::from_utf8(v).map(Some).map_err(|_| {
            StateError::corrupt(format!(
                "drive data at {:?} is not UTF-8",
                String::from_utf8_lossy(&k)
            ))
        }),
    }
}

/// The type `name`.
pub fn drive_type(state: &dyn StateRead, name: &str) -> Result<Option<DriveType>, StateError> {
    let k = keys::type_record(name);
    state
        .get(Space::Drive, &k)?
        .map(|v| decode(&k, &v))
        .transpose()
}

/// Every type, by name.
pub fn types(state: &dyn StateRead) -> Result<Vec<DriveType>, StateError> {
    let mut out = Vec::new();
    let mut failed = None;
    state.scan_prefix(Space::Drive, keys::TYPES, &mut |k, v| match decode(k, v) {
        Ok(t) => {
            out.push(t);
            true
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The paths of every item of `type_name`, in path order.
pub fn items_of_type(state: &dyn StateRead, type_name: &str) -> Result<Vec<DrivePath>, StateError> {
    let prefix = keys::typed(type_name);
    let mut out = Vec::new();
    let mut bad = None;
    state.scan_prefix(
        Space::Drive,
        &prefix,
        &mut |k, _| match std::str::from_utf8(&k[prefix.len()..])
            .ok()
            .and_then(|p| DrivePath::parse(p).ok())
        {
            Some(p) => {
                out.push(p);
                true
            }
            None => {
                bad = Some(String::from_utf8_lossy(k).into_owned());
                false
            }
        },
    )?;
    match bad {
        Some(k) => Err(StateError::corrupt(format!(
            "drive type index key {k:?} holds no path"
        ))),
        None => Ok(out),
    }
}

/// What `actor` may do on `path`: a workspace admin may do everything; otherwise the nearest
/// permission set on the item or an ancestor (a token's own before its role's at the same
/// item), else its role's default ([`Level::default_for`]). An explicit deny below an allow
/// therefore wins. A missing item or ancestor contributes nothing.
pub fn level(
    state: &dyn StateRead,
    actor: &DriveActor,
    path: &DrivePath,
) -> Result<Level, StateError> {
    if actor.role == Role::Admin {
        return Ok(Level::Admin);
    }
    for p in path.self_and_ancestors() {
        if let Some(l) = item(state, &p)?.and_then(|i| own_level(&i, actor)) {
            return Ok(l);
        }
    }
    Ok(Level::default_for(actor.role))
}

/// What `actor` may do on `item`, given `inherited`, what it may do on the item's parent:
/// the permission set on the item itself for it, else `inherited` (the same rule as
/// [`level`], one item at a time, for walking a tree from the top).
pub fn level_under(item: &DriveItem, actor: &DriveActor, inherited: Level) -> Level {
    if actor.role == Role::Admin {
        return Level::Admin;
    }
    own_level(item, actor).unwrap_or(inherited)
}

/// The permission set on `item` itself for `actor`: its token's, else its role's.
fn own_level(item: &DriveItem, actor: &DriveActor) -> Option<Level> {
    item.perms
        .get(&Who::Token(actor.token.clone()))
        .or_else(|| item.perms.get(&Who::Role(actor.role)))
        .copied()
}

/// What `actor` may do at the root (adding top-level items, types): its role's default.
pub fn root_level(actor: &DriveActor) -> Level {
    Level::default_for(actor.role)
}
