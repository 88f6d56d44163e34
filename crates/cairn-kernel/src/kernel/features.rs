//! Features: `FeatureSet` / `FeatureReport` / `FeatureScopeSync` and `feature.*.v1`. A command
//! on a feature that does not exist is rejected, never an upsert (no ghost rows); the features
//! a package declares are created with it and deleted with its resources.

use cairn_log::{StateRead, StateWrite, StoredEntry};

use super::lifecycle::owner_not_uninstalling;
use super::rw::{applied_record, check_revision, get, put};
use super::{misrouted_command, misrouted_event, ApplyFailure, DecideError, Decided};
use crate::command::{Command, Entity, Rejection};
use crate::event::Event;
use crate::keys;
use crate::manifest::Manifest;
use crate::records::FeatureRecord;
use crate::Subsystem;

pub(super) fn decide(state: &dyn StateRead, command: &Command) -> Decided {
    match command {
        Command::FeatureSet {
            name,
            state: to,
            expect_revision,
        } => {
            let f = feature(state, name)?;
            // The package is being removed: its features' desired state is frozen (the
            // service side may still report what it observes until they are deleted).
            owner_not_uninstalling(state, &f.owner)?;
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
            feature(state, name)?;
            Ok(vec![Event::FeatureObserved {
                name: name.clone(),
                observed: *observed,
            }])
        }
        Command::FeatureScopeSync { name, scope } => {
            let f = feature(state, name)?;
            // The scope is configuration, like the desired state: frozen while uninstalling.
            owner_not_uninstalling(state, &f.owner)?;
            Ok(vec![Event::FeatureScopeSynced {
                name: name.clone(),
                scope: *scope,
            }])
        }
        other => misrouted_command(Subsystem::Features, other),
    }
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let rev = entry.offset;
    match event {
        Event::FeatureStateChanged { name, state: to } => {
            update_feature(state, &name, rev, |f| f.state = to)
        }
        Event::FeatureObserved { name, observed } => {
            update_feature(state, &name, rev, |f| f.observed = Some(observed))
        }
        Event::FeatureScopeSynced { name, scope } => {
            update_feature(state, &name, rev, |f| f.scope = scope)
        }
        other => Err(misrouted_event(Subsystem::Features, &other)),
    }
}

/// The feature, or a rejection naming it.
pub(super) fn feature(state: &dyn StateRead, name: &str) -> Result<FeatureRecord, DecideError> {
    get::<FeatureRecord>(state, &keys::feature(name))?
        .ok_or_else(|| Rejection::NotFound(Entity::Feature(name.to_string())).into())
}

/// Rejects an install that declares a feature another package owns.
pub(super) fn check_unowned(state: &dyn StateRead, m: &Manifest) -> Result<(), DecideError> {
    for f in &m.features {
        if let Some(existing) = get::<FeatureRecord>(state, &keys::feature(&f.name))? {
            return Err(Rejection::state(
                Entity::Feature(f.name.clone()),
                format!("is already owned by package {:?}", existing.owner),
            )
            .into());
        }
    }
    Ok(())
}

/// Creates the features a package declares (at its install).
pub(super) fn declare(state: &mut dyn StateWrite, m: &Manifest, rev: u64) {
    for f in &m.features {
        put(
            state,
            &keys::feature(&f.name),
            &FeatureRecord {
                name: f.name.clone(),
                owner: m.name.clone(),
                state: f.state,
                auto_restart: f.auto_restart,
                scope: f.scope,
                observed: None,
                revision: rev,
            },
        );
    }
}

fn update_feature(
    state: &mut dyn StateWrite,
    name: &str,
    rev: u64,
    f: impl FnOnce(&mut FeatureRecord),
) -> Result<(), ApplyFailure> {
    let key = keys::feature(name);
    let mut r = applied_record::<FeatureRecord>(state, &key)?;
    f(&mut r);
    r.revision = rev;
    put(state, &key, &r);
    Ok(())
}
