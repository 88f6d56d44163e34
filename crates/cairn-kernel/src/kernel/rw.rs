//! Typed reads and writes of kernel records over `StateRead`/`StateWrite`, and the small checks
//! every subsystem's `decide` shares (names, expected revisions).

use cairn_log::{Space, StateError, StateRead, StateWrite};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ApplyFailure;
use crate::command::{Entity, Rejection};
use crate::echo::echo;
use crate::model::{is_item_name, ITEM_NAME_RULE};

/// The record at `key`, if any.
pub(super) fn get<T: DeserializeOwned>(
    state: &dyn StateRead,
    key: &[u8],
) -> Result<Option<T>, StateError> {
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

/// Writes `value` at `key`.
pub(super) fn put<T: Serialize>(state: &mut dyn StateWrite, key: &[u8], value: &T) {
    let bytes = cairn_log::codec::encode_value(value)
        .expect("kernel records are plain serde types that the codec always encodes");
    state.put(Space::State, key, &bytes);
}

pub(super) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Every `(key, value)` under `prefix`, in key order.
pub(super) fn scan(state: &dyn StateRead, prefix: &[u8]) -> Result<Pairs, StateError> {
    let mut out = Vec::new();
    state.scan_prefix(Space::State, prefix, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

/// Writes the record `make` builds at `key` unless something is there already.
pub(super) fn put_new<T: Serialize>(
    state: &mut dyn StateWrite,
    key: &[u8],
    make: impl FnOnce() -> T,
) -> Result<(), StateError> {
    if state.get(Space::State, key)?.is_none() {
        put(state, key, &make());
    }
    Ok(())
}

/// Every record under `prefix`, in key order.
pub(super) fn scan_records<T: DeserializeOwned>(
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
pub(super) fn names_under(state: &dyn StateRead, prefix: &[u8]) -> Result<Vec<String>, StateError> {
    Ok(scan(state, prefix)?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect())
}

/// The record an entry applies to; a missing one is an impossible state (decide checked it).
pub(super) fn applied_record<T: DeserializeOwned>(
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

pub(super) fn check_name(what: &str, name: &str) -> Result<(), Rejection> {
    if is_item_name(name) {
        Ok(())
    } else {
        Err(Rejection::Invalid(format!(
            "{what} {} is not a valid name ({ITEM_NAME_RULE})",
            echo(name)
        )))
    }
}

pub(super) fn check_revision(
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
