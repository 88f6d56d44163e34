//! Packages: `Install` and `Uninstall` (each creates its change with the package's status in
//! one commit), the `onload` hook (`OnloadStart` / `OnloadFinish`), the package-status steps of
//! those changes, and `package.*.v1`. Installing creates what the manifest declares through
//! the resources and features subsystems.

use std::collections::BTreeSet;

use cairn_log::{Space, StateRead, StateWrite, StoredEntry};
use uuid::Uuid;

use super::changes::{
    check_hook_result, check_new_change, check_not_busy, new_change, put_new_change,
};
use super::rw::{applied_record, get, names_under, put, scan_records};
use super::{features, interfaces, resources};
use super::{misrouted_command, misrouted_event, ApplyFailure, DecideError, Decided};
use crate::change::{ChangeKind, Step, Task};
use crate::command::{Command, Entity, Rejection};
use crate::echo::echo;
use crate::event::{Event, HookOutcome, HookRef, HookResult, InstallStarted, UninstallStarted};
use crate::keys;
use crate::manifest::Manifest;
use crate::model::{is_package_name, ResourceKind};
use crate::records::{BrokenReason, ConnRecord, OnloadState, PackageRecord, PackageStatus};
use crate::Subsystem;

pub(super) fn decide(state: &dyn StateRead, command: &Command) -> Decided {
    match command {
        Command::Install { manifest, change } => decide_install(state, manifest, *change),
        Command::Uninstall {
            package,
            keep,
            strict,
            change,
        } => decide_uninstall(state, package, keep, *strict, *change),
        Command::OnloadStart { package } => decide_onload_start(state, package),
        Command::OnloadFinish {
            package,
            attempt,
            result,
        } => decide_onload_finish(state, package, *attempt, result),
        other => misrouted_command(Subsystem::Lifecycle, other),
    }
}

fn decide_install(state: &dyn StateRead, m: &Manifest, change: Uuid) -> Decided {
    if !is_package_name(&m.name) {
        return Err(
            Rejection::Invalid(format!("{} is not a valid package name", echo(&m.name))).into(),
        );
    }
    check_new_change(state, change)?;
    if let Some(p) = get::<PackageRecord>(state, &keys::package(&m.name))? {
        if let PackageStatus::Uninstalling { change, .. } = p.status {
            return Err(Rejection::Busy {
                entity: Entity::Package(m.name.clone()),
                kind: "an uninstall".into(),
                change,
            }
            .into());
        }
        check_not_busy(state, [&m.name])?;
        return Err(Rejection::Exists(Entity::Package(m.name.clone())).into());
    }
    features::check_unowned(state, m)?;
    let mut packages = BTreeSet::from([m.name.clone()]);
    let mut tasks = vec![Task::new(
        "create",
        Step::Nothing,
        Step::MarkBroken {
            package: m.name.clone(),
        },
    )
    .done()];
    interfaces::auto_connect(state, m, &mut packages, &mut tasks)?;
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
    state: &dyn StateRead,
    name: &str,
    keep: &[ResourceKind],
    strict: bool,
    change: Uuid,
) -> Decided {
    check_new_change(state, change)?;
    let p = package(state, name)?;
    let busy = |kind: &str, change: Uuid| Rejection::Busy {
        entity: Entity::Package(name.to_string()),
        kind: kind.into(),
        change,
    };
    match &p.status {
        PackageStatus::Installed | PackageStatus::Broken { .. } => {}
        PackageStatus::Uninstalling { change, .. } => {
            return Err(busy("an uninstall", *change).into())
        }
        PackageStatus::Installing { change } => return Err(busy("an install", *change).into()),
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
    check_not_busy(state, &packages)?;
    let daemons = if names_under(state, &keys::resources_of("daemon", name))?.is_empty() {
        Daemons::None
    } else {
        Daemons::Some
    };
    let tasks = uninstall_tasks(name, &p.status, &keep, strict, &conns, daemons);
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

/// Whether a package owns daemons (its uninstall then stops them).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Daemons {
    None,
    Some,
}

/// The tasks of an uninstall: mark it, cancel `onload`, run `onuninstall`, stop its daemons
/// (if it has any), disconnect every connection, delete the resources not kept, remove the
/// package.
fn uninstall_tasks(
    name: &str,
    status: &PackageStatus,
    keep: &[ResourceKind],
    strict: bool,
    conns: &[ConnRecord],
    daemons: Daemons,
) -> Vec<Task> {
    let mut tasks = vec![
        Task::new(
            "mark-uninstalling",
            Step::MarkUninstalling {
                package: name.to_string(),
                keep: keep.to_vec(),
            },
            Step::RestoreStatus {
                package: name.to_string(),
                status: status.clone(),
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
    if daemons == Daemons::Some {
        tasks.push(Task::new(
            "stop-daemons",
            Step::StopDaemons {
                package: name.to_string(),
            },
            Step::Nothing,
        ));
    }
    for c in conns {
        tasks.extend(interfaces::disconnect_tasks(c, false, true));
    }
    tasks.push(
        Task::new(
            "delete-resources",
            Step::DeleteResources {
                package: name.to_string(),
                keep: keep.to_vec(),
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
    tasks
}

fn decide_onload_start(state: &dyn StateRead, package_name: &str) -> Decided {
    let p = package(state, package_name)?;
    let attempt = match (&p.status, &p.onload) {
        (PackageStatus::Installed, OnloadState::Pending) => 1,
        (PackageStatus::Installed, OnloadState::Running { attempt }) => attempt + 1,
        (status, onload) => {
            return Err(Rejection::state(
                Entity::Package(package_name.to_string()),
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
        package: package_name.to_string(),
        hook: "onload".into(),
        attempt,
    })])
}

fn decide_onload_finish(
    state: &dyn StateRead,
    package_name: &str,
    attempt: u32,
    result: &HookResult,
) -> Decided {
    let p = package(state, package_name)?;
    if p.onload != (OnloadState::Running { attempt }) {
        return Err(Rejection::state(
            Entity::Package(package_name.to_string()),
            format!("onload attempt {attempt} is not running ({:?})", p.onload),
        )
        .into());
    }
    check_hook_result(result)?;
    Ok(vec![Event::HookFinished(
        HookRef {
            change: p.install_change,
            task: None,
            package: package_name.to_string(),
            hook: "onload".into(),
            attempt,
        },
        result.clone(),
    )])
}

/// The package, or a rejection naming it.
pub(super) fn package(state: &dyn StateRead, name: &str) -> Result<PackageRecord, DecideError> {
    get::<PackageRecord>(state, &keys::package(name))?
        .ok_or_else(|| Rejection::NotFound(Entity::Package(name.to_string())).into())
}

/// The package exists and is not being uninstalled: its resources may be written.
pub(super) fn writable_package(state: &dyn StateRead, owner: &str) -> Result<(), DecideError> {
    if state
        .get(Space::State, &keys::package_status(owner))?
        .is_none()
    {
        return Err(Rejection::NotFound(Entity::Package(owner.to_string())).into());
    }
    owner_not_uninstalling(state, owner)
}

/// Rejects a desired-state change of something `owner` owns while `owner` is being
/// uninstalled (as [`writable_package`] does for resource writes).
pub(super) fn owner_not_uninstalling(
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

/// The kernel step `Step::MarkBroken` of a failed install's undo (`change`).
pub(super) fn mark_broken(
    state: &dyn StateRead,
    package: String,
    change: Uuid,
) -> Result<Vec<Event>, DecideError> {
    if state.get(Space::State, &keys::package(&package))?.is_none() {
        return Ok(Vec::new());
    }
    Ok(vec![Event::PackageStatusChanged {
        package,
        status: PackageStatus::Broken {
            reason: BrokenReason::Stated {
                why: format!("install change {change} failed"),
            },
        },
    }])
}

/// The kernel step `Step::CancelOnload`: records the cancellation of a pending or running
/// `onload`.
pub(super) fn cancel_onload(
    state: &dyn StateRead,
    package: String,
) -> Result<Vec<Event>, DecideError> {
    let Some(p) = get::<PackageRecord>(state, &keys::package(&package))? else {
        return Ok(Vec::new());
    };
    let attempt = match p.onload {
        OnloadState::Running { attempt } => attempt,
        OnloadState::Pending => 0,
        OnloadState::None | OnloadState::Finished { .. } | OnloadState::Cancelled => {
            return Ok(Vec::new())
        }
    };
    Ok(vec![Event::HookCancelled(HookRef {
        change: p.install_change,
        task: None,
        package,
        hook: "onload".into(),
        attempt,
    })])
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let rev = entry.offset;
    match event {
        Event::InstallStarted(e) => apply_install_started(state, e, entry)?,
        Event::UninstallStarted(e) => {
            let id = e.change.id;
            put_new_change(state, e.change, entry);
            update_package(state, &e.package, rev, |p| {
                p.status = PackageStatus::Uninstalling {
                    keep: e.keep,
                    change: id,
                };
            })?;
        }
        Event::PackageStatusChanged { package, status } => {
            update_package(state, &package, rev, |p| p.status = status)?;
        }
        Event::PackageRemoved { package } => {
            state.delete(Space::State, &keys::package(&package));
            state.delete(Space::State, &keys::package_status(&package));
            state.delete(Space::State, &keys::onload_wanted(&package));
        }
        other => return Err(misrouted_event(Subsystem::Lifecycle, &other)),
    }
    Ok(())
}

fn apply_install_started(
    state: &mut dyn StateWrite,
    e: InstallStarted,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let m = &e.manifest;
    let rev = entry.offset;
    put_new_change(state, e.change.clone(), entry);
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
    resources::declare(state, m, rev)?;
    features::declare(state, m, rev);
    Ok(())
}

/// `hook.started.v1` of an `onload`.
pub(super) fn onload_started(
    state: &mut dyn StateWrite,
    h: &HookRef,
    rev: u64,
) -> Result<(), ApplyFailure> {
    update_package(state, &h.package, rev, |p| {
        p.onload = OnloadState::Running { attempt: h.attempt }
    })
}

/// `hook.finished.v1` of an `onload`: a failure breaks an installed package.
pub(super) fn onload_finished(
    state: &mut dyn StateWrite,
    h: &HookRef,
    result: &HookResult,
    rev: u64,
) -> Result<(), ApplyFailure> {
    let ok = result.outcome == HookOutcome::Succeeded;
    update_package(state, &h.package, rev, |p| {
        p.onload = OnloadState::Finished { ok };
        if !ok && p.status == PackageStatus::Installed {
            p.status = PackageStatus::Broken {
                reason: BrokenReason::OnloadFailed {
                    attempt: h.attempt,
                    result: result.summary(),
                },
            };
        }
    })
}

/// `hook.cancelled.v1` of an `onload`.
pub(super) fn onload_cancelled(
    state: &mut dyn StateWrite,
    h: &HookRef,
    rev: u64,
) -> Result<(), ApplyFailure> {
    update_package(state, &h.package, rev, |p| {
        p.onload = OnloadState::Cancelled;
    })
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

fn update_package(
    state: &mut dyn StateWrite,
    name: &str,
    rev: u64,
    f: impl FnOnce(&mut PackageRecord),
) -> Result<(), ApplyFailure> {
    // A missing package is an impossible state here (decide checked it): the same failure
    // as a missing feature or change, never a silent skip.
    let mut p = applied_record::<PackageRecord>(state, &keys::package(name))?;
    f(&mut p);
    p.revision = rev;
    put_package(state, &p);
    Ok(())
}
