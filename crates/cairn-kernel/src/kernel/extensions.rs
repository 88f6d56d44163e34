//! Embedders' extension events (`ext.<app>.<name>.v<N>`): validated by the registered
//! extension in decide, applied by it to its own `ext/<app>/` keyspace, and the record of which
//! apps the log uses, so a binary without one refuses the workspace at open.

use cairn_log::{Space, StateError, StateRead, StateWrite, StoredEntry};

use super::rw::put;
use super::{misrouted_command, misrouted_event, ApplyFailure, Decided, Kernel, OpenError};
use crate::command::{Command, Entity, Rejection, EXT_PAYLOAD_BYTES_MAX};
use crate::echo::echo;
use crate::event::Event;
use crate::ext::{self, ExtRead, ExtWrite};
use crate::keys;
use crate::Subsystem;

pub(super) fn decide(kernel: &Kernel, state: &dyn StateRead, command: &Command) -> Decided {
    let Command::Ext { kind, payload } = command else {
        misrouted_command(Subsystem::Extensions, command)
    };
    let app = ext::app_of(kind).ok_or_else(|| {
        Rejection::Invalid(format!(
            "extension event kind {} is not of the form ext.<app>.<name>.v<N>",
            echo(kind)
        ))
    })?;
    let extension = kernel
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

pub(super) fn apply(
    kernel: &Kernel,
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let Event::Ext { kind, payload } = event else {
        return Err(misrouted_event(Subsystem::Extensions, &event));
    };
    let app = ext::app_of(&kind)
        .ok_or_else(|| ApplyFailure(format!("malformed extension kind {kind:?}")))?;
    let extension = kernel.extensions.get(app).ok_or_else(|| {
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
    Ok(())
}

/// An extension's event can be folded only where its extension is registered.
pub(super) fn understands(kernel: &Kernel, event: &Event) -> Result<(), String> {
    if let Event::Ext { kind, .. } = event {
        let app = ext::app_of(kind).ok_or_else(|| format!("malformed extension kind {kind:?}"))?;
        if !kernel.extensions.contains_key(app) {
            return Err(format!(
                "event kind {kind:?} needs extension {app:?}, which is not registered"
            ));
        }
    }
    Ok(())
}

/// Refuses a workspace whose log holds events of an extension this kernel does not register.
pub(super) fn check_open(kernel: &Kernel, state: &dyn StateRead) -> Result<(), OpenError> {
    let mut unknown = None;
    state.scan_prefix(Space::State, keys::EXT_APPS, &mut |k, v| {
        let app = String::from_utf8_lossy(&k[keys::EXT_APPS.len()..]).into_owned();
        if !kernel.extensions.contains_key(&app) {
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
