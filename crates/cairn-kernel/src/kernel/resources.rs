//! Resources a package owns: vars, queues, vaults, daemons and model types. Their commands and
//! events (`var.*`, `queue.*`, `vault.set`, `daemon.*`), their creation at install (adopting
//! what an earlier uninstall kept), and `resources.deleted.v1`, the one event of an
//! uninstall's cleanup that deletes every resource not kept and the package's features.

use std::collections::BTreeSet;

use cairn_log::{Space, StateError, StateRead, StateWrite, StoredEntry};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::lifecycle::writable_package;
use super::rw::{applied_record, check_name, check_revision, get, names_under, put, put_new, scan};
use super::{misrouted_command, misrouted_event, ApplyFailure, DecideError, Decided};
use crate::command::*;
use crate::echo::echo;
use crate::event::{Event, ResourcesDeleted};
use crate::keys;
use crate::manifest::Manifest;
use crate::model::{DaemonObservation, DaemonRun, DaemonState, FeatureState, ResourceKind};
use crate::records::*;
use crate::Subsystem;

pub(super) fn decide(state: &dyn StateRead, command: &Command) -> Decided {
    match command {
        Command::VarSet {
            owner,
            key,
            value,
            expect_revision,
        } => decide_var_set(state, owner, key, value, expect_revision),
        Command::VarDelete { owner, keys: names } => decide_var_delete(state, owner, names),
        Command::QueuePut {
            owner,
            queue,
            items,
        } => decide_queue_put(state, owner, queue, items),
        Command::QueueAck { owner, queue, upto } => decide_queue_ack(state, owner, queue, *upto),
        Command::VaultSet {
            owner,
            vault,
            sealed,
        } => decide_vault_set(state, owner, vault, sealed),
        Command::DaemonSet {
            owner,
            daemon,
            desired,
            expect_revision,
        } => decide_daemon_set(state, owner, daemon, *desired, expect_revision),
        Command::DaemonReport {
            owner,
            daemon,
            observed,
        } => {
            resource::<DaemonRecord>(state, ResourceKind::Daemons, owner, daemon)?;
            Ok(vec![Event::DaemonObserved {
                owner: owner.to_string(),
                daemon: daemon.clone(),
                observed: *observed,
            }])
        }
        Command::DaemonObserve {
            owner,
            daemon,
            state: run,
            restarts,
        } => decide_daemon_observe(state, owner, daemon, run, *restarts),
        other => misrouted_command(Subsystem::Resources, other),
    }
}

/// `daemon.observed.v2`, and for a daemon linked to a feature, the feature's observed state
/// that follows from it (running: enabled; otherwise disabled) when it changes.
fn decide_daemon_observe(
    state: &dyn StateRead,
    owner: &str,
    daemon: &str,
    run: &DaemonRun,
    restarts: u32,
) -> Decided {
    let d = resource::<DaemonRecord>(state, ResourceKind::Daemons, owner, daemon)?;
    if let Some(from) = &d.kept_from {
        return Err(Rejection::state(
            Entity::Resource(ResourceKind::Daemons, owner.to_string(), daemon.to_string()),
            format!("is kept from uninstalled package {}", echo(from)),
        )
        .into());
    }
    let observation = DaemonObservation {
        state: run.clone(),
        restarts,
    };
    if d.run.as_ref() == Some(&observation) {
        return Ok(vec![]);
    }
    let mut events = vec![Event::DaemonRan {
        owner: owner.to_string(),
        daemon: daemon.to_string(),
        observation,
    }];
    events.extend(linked_feature_observed(state, owner, daemon, run)?);
    Ok(events)
}

/// The feature a daemon is linked to (`feature = "..."` in its package's manifest).
pub(crate) fn linked_feature(
    state: &dyn StateRead,
    owner: &str,
    daemon: &str,
) -> Result<Option<String>, DecideError> {
    let Some(p) = get::<PackageRecord>(state, &keys::package(owner))? else {
        return Ok(None);
    };
    Ok(p.manifest
        .daemons
        .iter()
        .find(|d| d.name == daemon)
        .and_then(|d| d.feature.clone()))
}

/// `feature.observed.v1` for the feature linked to `daemon`, when its observed state changes.
fn linked_feature_observed(
    state: &dyn StateRead,
    owner: &str,
    daemon: &str,
    run: &DaemonRun,
) -> Result<Option<Event>, DecideError> {
    let Some(name) = linked_feature(state, owner, daemon)? else {
        return Ok(None);
    };
    let Some(f) = get::<FeatureRecord>(state, &keys::feature(&name))? else {
        return Ok(None);
    };
    let observed = match run {
        DaemonRun::Running => FeatureState::Enabled,
        DaemonRun::Exited { .. } | DaemonRun::Failed { .. } | DaemonRun::Stopped => {
            FeatureState::Disabled
        }
    };
    if f.observed == Some(observed) {
        return Ok(None);
    }
    Ok(Some(Event::FeatureObserved { name, observed }))
}

/// The kernel side of an uninstall's `stop-daemons` task (the runtime has stopped their
/// processes): every daemon of `package` whose last observation is not `stopped` is recorded
/// stopped, with its linked feature.
pub(super) fn stop_daemons_step(
    state: &dyn StateRead,
    package: &str,
) -> Result<Vec<Event>, DecideError> {
    let mut events = Vec::new();
    for name in names_under(state, &keys::resources_of("daemon", package))? {
        let d = resource::<DaemonRecord>(state, ResourceKind::Daemons, package, &name)?;
        let Some(run) = &d.run else { continue };
        if run.state == DaemonRun::Stopped || d.kept_from.is_some() {
            continue;
        }
        events.push(Event::DaemonRan {
            owner: package.to_string(),
            daemon: name.clone(),
            observation: DaemonObservation {
                state: DaemonRun::Stopped,
                restarts: run.restarts,
            },
        });
        events.extend(linked_feature_observed(
            state,
            package,
            &name,
            &DaemonRun::Stopped,
        )?);
    }
    Ok(events)
}

fn decide_queue_ack(state: &dyn StateRead, owner: &str, queue: &str, upto: u64) -> Decided {
    writable_package(state, owner)?;
    let q = resource::<QueueRecord>(state, ResourceKind::Queues, owner, queue)?;
    if upto >= q.next_seq {
        return Err(Rejection::Invalid(format!(
            "cannot ack queue {} up to {upto}: its last item is {}",
            echo(queue),
            q.next_seq - 1
        ))
        .into());
    }
    if upto <= q.acked {
        return Ok(vec![]);
    }
    Ok(vec![Event::QueueAcked {
        owner: owner.to_string(),
        queue: queue.to_string(),
        upto,
    }])
}

fn decide_vault_set(state: &dyn StateRead, owner: &str, vault: &str, sealed: &[u8]) -> Decided {
    writable_package(state, owner)?;
    resource::<VaultRecord>(state, ResourceKind::Vaults, owner, vault)?;
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
        owner: owner.to_string(),
        vault: vault.to_string(),
        sealed: serde_bytes::ByteBuf::from(sealed.to_vec()),
    }])
}

fn decide_daemon_set(
    state: &dyn StateRead,
    owner: &str,
    daemon: &str,
    desired: DaemonState,
    expect_revision: &Option<u64>,
) -> Decided {
    writable_package(state, owner)?;
    let d = resource::<DaemonRecord>(state, ResourceKind::Daemons, owner, daemon)?;
    check_revision(
        Entity::Resource(ResourceKind::Daemons, owner.to_string(), daemon.to_string()),
        expect_revision,
        Some(d.revision),
    )?;
    if d.desired == desired {
        return Ok(vec![]);
    }
    Ok(vec![Event::DaemonDesired {
        owner: owner.to_string(),
        daemon: daemon.to_string(),
        desired,
    }])
}

fn decide_var_set(
    state: &dyn StateRead,
    owner: &str,
    key: &str,
    value: &[u8],
    expect_revision: &Option<u64>,
) -> Decided {
    writable_package(state, owner)?;
    check_name("var", key)?;
    if value.len() > VAR_VALUE_BYTES_MAX {
        return Err(Rejection::Invalid(format!(
            "value of var {} is {} bytes, over the limit of {VAR_VALUE_BYTES_MAX}",
            echo(key),
            value.len()
        ))
        .into());
    }
    let entity = Entity::Resource(ResourceKind::Vars, owner.to_string(), key.to_string());
    if expect_revision.is_some() {
        let current = get::<VarRecord>(state, &keys::resource("var", owner, key))?;
        check_revision(
            entity,
            expect_revision,
            current.as_ref().map(|r| r.revision),
        )?;
    }
    Ok(vec![Event::VarSet {
        owner: owner.to_string(),
        key: key.to_string(),
        value: serde_bytes::ByteBuf::from(value.to_vec()),
    }])
}

fn decide_var_delete(state: &dyn StateRead, owner: &str, names: &[String]) -> Decided {
    writable_package(state, owner)?;
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
                owner.to_string(),
                (*key).clone(),
            ))
            .into());
        }
    }
    Ok(vec![Event::VarsDeleted {
        owner: owner.to_string(),
        keys: unique.into_iter().cloned().collect(),
    }])
}

fn decide_queue_put(state: &dyn StateRead, owner: &str, queue: &str, items: &[Vec<u8>]) -> Decided {
    writable_package(state, owner)?;
    resource::<QueueRecord>(state, ResourceKind::Queues, owner, queue)?;
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
        owner: owner.to_string(),
        queue: queue.to_string(),
        items: items
            .iter()
            .map(|i| serde_bytes::ByteBuf::from(i.clone()))
            .collect(),
    }])
}

/// The resource, or a rejection naming it.
fn resource<T: DeserializeOwned>(
    state: &dyn StateRead,
    kind: ResourceKind,
    owner: &str,
    name: &str,
) -> Result<T, DecideError> {
    get::<T>(state, &keys::resource(table(kind), owner, name))?.ok_or_else(|| {
        Rejection::NotFound(Entity::Resource(kind, owner.to_string(), name.to_string())).into()
    })
}

/// The event of an uninstall's `delete-resources` step: every resource of `package` whose
/// kind is not kept, and every feature it declared and still owns.
pub(super) fn delete_step(
    state: &dyn StateRead,
    package: String,
    keep: Vec<ResourceKind>,
) -> Result<Event, DecideError> {
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
    Ok(Event::ResourcesDeleted(ResourcesDeleted {
        package,
        keep,
        deleted,
        features,
    }))
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let rev = entry.offset;
    match event {
        Event::ResourcesDeleted(e) => apply_deleted(state, e, rev)?,
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
        } => apply_queue_put(state, &owner, &queue, items, rev)?,
        Event::QueueAcked { owner, queue, upto } => {
            apply_queue_acked(state, &owner, &queue, upto, rev)?
        }
        Event::VaultSet {
            owner,
            vault,
            sealed,
        } => update_owned::<VaultRecord>(
            state,
            &keys::resource("vault", &owner, &vault),
            rev,
            |v| v.sealed = Some(sealed),
        )?,
        Event::DaemonDesired {
            owner,
            daemon,
            desired,
        } => update_owned::<DaemonRecord>(
            state,
            &keys::resource("daemon", &owner, &daemon),
            rev,
            |d| d.desired = desired,
        )?,
        Event::DaemonObserved {
            owner,
            daemon,
            observed,
        } => update_owned::<DaemonRecord>(
            state,
            &keys::resource("daemon", &owner, &daemon),
            rev,
            |d| d.observed = Some(observed),
        )?,
        Event::DaemonRan {
            owner,
            daemon,
            observation,
        } => update_owned::<DaemonRecord>(
            state,
            &keys::resource("daemon", &owner, &daemon),
            rev,
            |d| d.run = Some(observation),
        )?,
        other => return Err(misrouted_event(Subsystem::Resources, &other)),
    }
    Ok(())
}

fn apply_queue_put(
    state: &mut dyn StateWrite,
    owner: &str,
    queue: &str,
    items: Vec<serde_bytes::ByteBuf>,
    rev: u64,
) -> Result<(), ApplyFailure> {
    let key = keys::resource("queue", owner, queue);
    let mut q = applied_record::<QueueRecord>(state, &key)?;
    for item in items {
        state.put(
            Space::State,
            &keys::queue_item(owner, queue, q.next_seq),
            &item,
        );
        q.next_seq += 1;
    }
    q.revision = rev;
    put(state, &key, &q);
    Ok(())
}

fn apply_queue_acked(
    state: &mut dyn StateWrite,
    owner: &str,
    queue: &str,
    upto: u64,
    rev: u64,
) -> Result<(), ApplyFailure> {
    let key = keys::resource("queue", owner, queue);
    let mut q = applied_record::<QueueRecord>(state, &key)?;
    for seq in q.acked + 1..=upto.min(q.next_seq.saturating_sub(1)) {
        state.delete(Space::State, &keys::queue_item(owner, queue, seq));
    }
    q.acked = q.acked.max(upto);
    q.revision = rev;
    put(state, &key, &q);
    Ok(())
}

fn apply_deleted(
    state: &mut dyn StateWrite,
    e: ResourcesDeleted,
    rev: u64,
) -> Result<(), ApplyFailure> {
    for (kind, names) in &e.deleted {
        for n in names {
            let key = keys::resource(table(*kind), &e.package, n);
            if *kind == ResourceKind::Queues {
                // A queue's live items are exactly `acked + 1 .. next_seq` (puts append at
                // `next_seq`, acks delete up to `acked`), so they are deleted by key: no scan
                // over the prefix's tombstones.
                if let Some(q) = get::<QueueRecord>(state, &key)? {
                    for seq in q.acked + 1..q.next_seq {
                        state.delete(Space::State, &keys::queue_item(&e.package, n, seq));
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
    Ok(())
}

/// At install: adopts whatever an earlier uninstall kept under this name, then creates every
/// resource the manifest declares that does not exist yet.
pub(super) fn declare(
    state: &mut dyn StateWrite,
    m: &Manifest,
    rev: u64,
) -> Result<(), StateError> {
    let name = &m.name;
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
                run: None,
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
    Ok(())
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
    let mut r: T = applied_record(state, key)?;
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
