//! Reading the projection: typed lookups and listings for the runtime, the CLI and the server.
//! All reads go through `StateRead`, so they work on a snapshot at one applied offset.

use cairn_log::{Space, StateError, StateRead};
use uuid::Uuid;

use crate::change::ChangeRecord;
use crate::keys;
use crate::model::ResourceKind;
use crate::records::*;

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StateError> {
    cairn_log::codec::decode_value(bytes).map_err(|e| {
        StateError::corrupt(format!(
            "record at {:?} does not decode: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

fn get<T: serde::de::DeserializeOwned>(
    state: &dyn StateRead,
    key: &[u8],
) -> Result<Option<T>, StateError> {
    state
        .get(Space::State, key)?
        .map(|b| decode(key, &b))
        .transpose()
}

/// `(name after prefix, record)` for every record under `prefix`, in key order.
fn list<T: serde::de::DeserializeOwned>(
    state: &dyn StateRead,
    prefix: &[u8],
) -> Result<Vec<(String, T)>, StateError> {
    let mut raw = Vec::new();
    state.scan_prefix(Space::State, prefix, &mut |k, v| {
        raw.push((k.to_vec(), v.to_vec()));
        true
    })?;
    raw.into_iter()
        .map(|(k, v)| {
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            decode(&k, &v).map(|r| (name, r))
        })
        .collect()
}

/// A package record.
pub fn package(state: &dyn StateRead, name: &str) -> Result<Option<PackageRecord>, StateError> {
    get(state, &keys::package(name))
}

/// Every package, by name.
pub fn packages(state: &dyn StateRead) -> Result<Vec<PackageRecord>, StateError> {
    Ok(list(state, keys::PACKAGES)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// A feature record.
pub fn feature(state: &dyn StateRead, name: &str) -> Result<Option<FeatureRecord>, StateError> {
    get(state, &keys::feature(name))
}

/// Every feature, by name.
pub fn features(state: &dyn StateRead) -> Result<Vec<FeatureRecord>, StateError> {
    Ok(list(state, keys::FEATURES)?
        .into_iter()
        .map(|(_, f)| f)
        .collect())
}

/// A variable.
pub fn var(state: &dyn StateRead, owner: &str, key: &str) -> Result<Option<VarRecord>, StateError> {
    get(state, &keys::resource("var", owner, key))
}

/// Every variable of `owner`, by key.
pub fn vars(state: &dyn StateRead, owner: &str) -> Result<Vec<(String, VarRecord)>, StateError> {
    list(state, &keys::resources_of("var", owner))
}

/// A queue.
pub fn queue(
    state: &dyn StateRead,
    owner: &str,
    name: &str,
) -> Result<Option<QueueRecord>, StateError> {
    get(state, &keys::resource("queue", owner, name))
}

/// Up to `limit` unacknowledged items of a queue from sequence number `from`: `(seq, item)`.
pub fn queue_items(
    state: &dyn StateRead,
    owner: &str,
    name: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
    queue_items_bounded(state, owner, name, from, limit, usize::MAX)
}

/// Like [`queue_items`], stopping once the items returned hold more than `bytes_max` bytes (at
/// least one item is returned when there is one).
pub fn queue_items_bounded(
    state: &dyn StateRead,
    owner: &str,
    name: &str,
    from: u64,
    limit: usize,
    bytes_max: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
    let prefix = keys::queue_items(owner, name);
    let mut out = Vec::new();
    let mut bytes: usize = 0;
    if limit == 0 {
        return Ok(out);
    }
    state.scan_prefix(Space::State, &prefix, &mut |k, v| {
        let seq = k[prefix.len()..]
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if seq >= from {
            if !out.is_empty() && bytes.saturating_add(v.len()) > bytes_max {
                return false;
            }
            bytes += v.len();
            out.push((seq, v.to_vec()));
        }
        out.len() < limit
    })?;
    Ok(out)
}

/// A vault record (sealed value only).
pub fn vault(
    state: &dyn StateRead,
    owner: &str,
    name: &str,
) -> Result<Option<VaultRecord>, StateError> {
    get(state, &keys::resource("vault", owner, name))
}

/// A daemon record.
pub fn daemon(
    state: &dyn StateRead,
    owner: &str,
    name: &str,
) -> Result<Option<DaemonRecord>, StateError> {
    get(state, &keys::resource("daemon", owner, name))
}

/// Names of every resource of `kind` owned by `owner` (including kept ones).
pub fn resource_names(
    state: &dyn StateRead,
    kind: ResourceKind,
    owner: &str,
) -> Result<Vec<String>, StateError> {
    let prefix = keys::resources_of(table(kind), owner);
    let mut out = Vec::new();
    state.scan_prefix(Space::State, &prefix, &mut |k, _| {
        out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        true
    })?;
    Ok(out)
}

/// A resource's identity and its kept-from marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRef {
    /// Kind.
    pub kind: ResourceKind,
    /// Owner package.
    pub owner: String,
    /// Name.
    pub name: String,
    /// Set when kept by an uninstall.
    pub kept_from: Option<String>,
}

/// Every resource in the workspace.
pub fn all_resources(state: &dyn StateRead) -> Result<Vec<ResourceRef>, StateError> {
    let mut out = Vec::new();
    for kind in ResourceKind::ALL {
        let prefix = format!("{}/", table(kind)).into_bytes();
        let kept: Vec<(String, Option<String>)> = match kind {
            ResourceKind::Vars => list::<VarRecord>(state, &prefix)?
                .into_iter()
                .map(|(n, r)| (n, r.kept_from))
                .collect(),
            ResourceKind::Queues => list::<QueueRecord>(state, &prefix)?
                .into_iter()
                .map(|(n, r)| (n, r.kept_from))
                .collect(),
            ResourceKind::Vaults => list::<VaultRecord>(state, &prefix)?
                .into_iter()
                .map(|(n, r)| (n, r.kept_from))
                .collect(),
            ResourceKind::Daemons => list::<DaemonRecord>(state, &prefix)?
                .into_iter()
                .map(|(n, r)| (n, r.kept_from))
                .collect(),
            ResourceKind::Model => list::<ModelRecord>(state, &prefix)?
                .into_iter()
                .map(|(n, r)| (n, r.kept_from))
                .collect(),
        };
        for (path, kept_from) in kept {
            let (owner, name) = path.split_once('/').unwrap_or((&path, ""));
            out.push(ResourceRef {
                kind,
                owner: owner.to_string(),
                name: name.to_string(),
                kept_from,
            });
        }
    }
    Ok(out)
}

/// Every connection.
pub fn connections(state: &dyn StateRead) -> Result<Vec<ConnRecord>, StateError> {
    Ok(list(state, keys::CONNECTIONS)?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// A change.
pub fn change(state: &dyn StateRead, id: Uuid) -> Result<Option<ChangeRecord>, StateError> {
    get(state, &keys::change(id))
}

/// Every change (oldest first by spawn time, then id).
pub fn changes(state: &dyn StateRead) -> Result<Vec<ChangeRecord>, StateError> {
    let mut all: Vec<ChangeRecord> = list(state, keys::CHANGES)?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    all.sort_by_key(|c| (c.spawn_ms, c.revision));
    Ok(all)
}

/// Changes that are not ready.
pub fn active_changes(state: &dyn StateRead) -> Result<Vec<ChangeRecord>, StateError> {
    let mut ids = Vec::new();
    state.scan_prefix(Space::State, keys::ACTIVE_CHANGES, &mut |k, _| {
        if let Ok(id) = Uuid::try_parse_ascii(&k[keys::ACTIVE_CHANGES.len()..]) {
            ids.push(id);
        }
        true
    })?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(c) = change(state, id)? {
            out.push(c);
        }
    }
    out.sort_by_key(|c| c.revision);
    Ok(out)
}

/// A schema's stored record.
pub fn schema(state: &dyn StateRead, name: &str) -> Result<Option<SchemaRecord>, StateError> {
    get(state, &keys::schema(name))
}

/// Installed packages whose `onload` is pending or running, by name.
pub fn onloads_wanted(state: &dyn StateRead) -> Result<Vec<String>, StateError> {
    let mut out = Vec::new();
    state.scan_prefix(Space::State, keys::ONLOADS_WANTED, &mut |k, _| {
        out.push(String::from_utf8_lossy(&k[keys::ONLOADS_WANTED.len()..]).into_owned());
        true
    })?;
    Ok(out)
}

/// A token record by name.
pub fn token(state: &dyn StateRead, name: &str) -> Result<Option<TokenRecord>, StateError> {
    get(state, &keys::token(name))
}

/// Every token, by name.
pub fn tokens(state: &dyn StateRead) -> Result<Vec<TokenRecord>, StateError> {
    Ok(list(state, keys::TOKENS)?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// The live token whose secret hashes to `hash`, if any (authentication).
pub fn token_by_hash(
    state: &dyn StateRead,
    hash: &[u8; 32],
) -> Result<Option<TokenRecord>, StateError> {
    let Some(name) = state.get(Space::State, &keys::token_hash(hash))? else {
        return Ok(None);
    };
    token(state, &String::from_utf8_lossy(&name))
}
