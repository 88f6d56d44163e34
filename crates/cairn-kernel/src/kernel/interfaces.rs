//! Interfaces: plugs, slots and connections. `Connect` / `Disconnect` create changes whose
//! five tasks run the interface hooks around establishing or removing the connection (undo
//! counterparts alongside); auto-connect adds a connect's tasks to an install; the kernel
//! steps of those tasks and `connection.*.v1` live here too.

use std::collections::BTreeSet;

use cairn_log::{Space, StateRead, StateWrite, StoredEntry};
use uuid::Uuid;

use super::changes::{check_new_change, check_not_busy, new_change};
use super::lifecycle::package;
use super::rw::{get, put};
use super::{misrouted_command, misrouted_event, ApplyFailure, DecideError, Decided};
use crate::change::{ChangeKind, End, Step, Task, TaskOutcome};
use crate::command::{Command, Entity, Rejection};
use crate::event::Event;
use crate::keys;
use crate::manifest::Manifest;
use crate::records::{ConnRecord, PackageRecord, PackageStatus};
use crate::Subsystem;

pub(super) fn decide(state: &dyn StateRead, command: &Command) -> Decided {
    match command {
        Command::Connect { plug, slot, change } => decide_connect(state, plug, slot, *change),
        Command::Disconnect { plug, slot, change } => decide_disconnect(state, plug, slot, *change),
        other => misrouted_command(Subsystem::Interfaces, other),
    }
}

fn decide_connect(state: &dyn StateRead, plug: &End, slot: &End, change: Uuid) -> Decided {
    check_new_change(state, change)?;
    let pi = installed_end(state, plug, true)?;
    let si = installed_end(state, slot, false)?;
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
    check_not_busy(state, &packages)?;
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

fn decide_disconnect(state: &dyn StateRead, plug: &End, slot: &End, change: Uuid) -> Decided {
    check_new_change(state, change)?;
    let conn = get::<ConnRecord>(state, &keys::connection(plug, slot))?
        .ok_or_else(|| Rejection::NotFound(Entity::Connection(plug.clone(), slot.clone())))?;
    let packages = BTreeSet::from([plug.0.clone(), slot.0.clone()]);
    check_not_busy(state, &packages)?;
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

/// The interface of an installed package's plug (`plug`) or slot.
fn installed_end(state: &dyn StateRead, end: &End, plug: bool) -> Result<String, DecideError> {
    let p = package(state, &end.0)?;
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

/// Auto-connect at install: each auto plug of `m` to the one matching slot, if exactly one
/// exists among installed, idle packages (and this package's own slots), and the pair is not
/// marked undesired. Adds the connect tasks to `tasks` and the slot's package to `packages`.
pub(super) fn auto_connect(
    state: &dyn StateRead,
    m: &Manifest,
    packages: &mut BTreeSet<String>,
    tasks: &mut Vec<Task>,
) -> Result<(), DecideError> {
    let installed: Vec<PackageRecord> = if m.plugs.iter().any(|p| p.auto_connect) {
        super::rw::scan_records(state, keys::PACKAGES)?
    } else {
        Vec::new()
    };
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
    Ok(())
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
pub(super) fn disconnect_tasks(
    conn: &ConnRecord,
    undesired: bool,
    ignore_errors: bool,
) -> Vec<Task> {
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

/// The kernel step `Step::Establish`: its events, or the reason the task fails.
pub(super) fn establish(
    state: &dyn StateRead,
    plug: End,
    slot: End,
    interface: String,
    auto: bool,
    undesired: bool,
) -> Result<(Vec<Event>, TaskOutcome), DecideError> {
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
        let why = format!("package {p:?} no longer exists");
        return Ok((Vec::new(), TaskOutcome::Failed(why)));
    }
    if state
        .get(Space::State, &keys::connection(&plug, &slot))?
        .is_some()
    {
        let why = "the connection already exists".into();
        return Ok((Vec::new(), TaskOutcome::Failed(why)));
    }
    // Establishing by hand clears the mark; then set it as the step says.
    let after = marked && auto;
    let mut events = vec![Event::ConnectionEstablished {
        plug: plug.clone(),
        slot: slot.clone(),
        interface,
        auto,
    }];
    if after != undesired {
        events.push(Event::ConnectionMarked {
            plug,
            slot,
            undesired,
        });
    }
    Ok((events, TaskOutcome::Succeeded))
}

/// The kernel step `Step::RemoveConnection`: its events (the mark set as the step says).
pub(super) fn remove(
    state: &dyn StateRead,
    plug: End,
    slot: End,
    undesired: bool,
) -> Result<Vec<Event>, DecideError> {
    let marked = state
        .get(Space::State, &keys::undesired(&plug, &slot))?
        .is_some();
    let mut after = marked;
    let mut events = Vec::new();
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
    Ok(events)
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    match event {
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
                    revision: entry.offset,
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
        other => return Err(misrouted_event(Subsystem::Interfaces, &other)),
    }
    Ok(())
}
