//! The task engine's commands and events: `Abort`, `TaskRun` (a kernel step, routed to the
//! subsystem it changes), `HookStart` / `HookFinish`, and `change.*`, `task.*` and `hook.*`
//! (an `onload`'s hook events go to the lifecycle subsystem). The rules of a change's tasks
//! are [`crate::change`]'s; this module applies them to stored changes and keeps each
//! package's `busy` mark while a change on it is in progress.

use std::collections::BTreeSet;

use cairn_log::{Space, StateError, StateRead, StateWrite, StoredEntry};
use uuid::Uuid;

use super::rw::{get, put};
use super::{interfaces, lifecycle, resources};
use super::{misrouted_command, misrouted_event, ApplyFailure, DecideError, Decided};
use crate::change::{
    Action, ChangeKind, ChangeRecord, ChangeStatus, Step, Task, TaskNote, TaskOutcome, TaskStatus,
};
use crate::command::{Command, Entity, Rejection};
use crate::event::{Event, HookOutcome, HookRef, HookResult, HOOK_OUTPUT_BYTES_MAX};
use crate::keys;
use crate::records::{PackageRecord, PackageStatus};
use crate::Subsystem;

pub(super) fn decide(state: &dyn StateRead, command: &Command) -> Decided {
    match command {
        Command::Abort { change } => decide_abort(state, *change),
        Command::TaskRun { change, task, undo } => decide_task_run(state, *change, *task, *undo),
        Command::HookStart { change, task, undo } => {
            decide_hook_start(state, *change, *task, *undo)
        }
        Command::HookFinish {
            change,
            task,
            undo,
            result,
        } => decide_hook_finish(state, *change, *task, *undo, result.as_ref()),
        other => misrouted_command(Subsystem::Changes, other),
    }
}

fn decide_abort(state: &dyn StateRead, change: Uuid) -> Decided {
    let c = self::change(state, change)?;
    if c.status.is_ready() {
        return Err(Rejection::state(
            Entity::Change(c.id),
            format!("has already finished (status {})", c.status),
        )
        .into());
    }
    if c.aborted {
        return Err(Rejection::state(Entity::Change(c.id), "is already aborting").into());
    }
    if let Some(task) = c.point_of_no_return() {
        return Err(Rejection::state(
            Entity::Change(c.id),
            format!("is past the point of no return (task {task} is done)"),
        )
        .into());
    }
    Ok(vec![Event::AbortRequested { change: c.id }])
}

fn decide_hook_start(state: &dyn StateRead, change: Uuid, task: u32, undo: bool) -> Decided {
    let (c, step) = next_task(state, change, task, undo)?;
    let (package, hook) = declared_hook(state, &step)?.ok_or_else(|| {
        Rejection::state(
            Entity::Change(c.id),
            format!("task {task} runs no declared hook; use TaskRun"),
        )
    })?;
    let attempt = c.tasks[task as usize].attempts + 1;
    Ok(vec![
        Event::TaskStarted {
            change: c.id,
            task,
            undo,
        },
        Event::HookStarted(HookRef {
            change: c.id,
            task: Some(task),
            package,
            hook,
            attempt,
        }),
    ])
}

fn decide_task_run(state: &dyn StateRead, change: Uuid, task: u32, undo: bool) -> Decided {
    let (c, step) = next_task(state, change, task, undo)?;
    if declared_hook(state, &step)?.is_some() {
        return Err(Rejection::state(
            Entity::Change(change),
            format!("task {task} runs a declared hook; use HookStart"),
        )
        .into());
    }
    let done = |events: Vec<Event>| (events, TaskOutcome::Succeeded);
    let (mut events, outcome) = match step {
        Step::Hook { .. } | Step::Nothing => done(Vec::new()),
        Step::Establish {
            plug,
            slot,
            interface,
            auto,
            undesired,
        } => interfaces::establish(state, plug, slot, interface, auto, undesired)?,
        Step::RemoveConnection {
            plug,
            slot,
            undesired,
        } => done(interfaces::remove(state, plug, slot, undesired)?),
        Step::MarkInstalled { package } => done(vec![Event::PackageStatusChanged {
            package,
            status: PackageStatus::Installed,
        }]),
        Step::MarkBroken { package } => done(lifecycle::mark_broken(state, package, c.id)?),
        Step::MarkUninstalling { package, keep } => done(vec![Event::PackageStatusChanged {
            package,
            status: PackageStatus::Uninstalling { keep, change: c.id },
        }]),
        Step::RestoreStatus { package, status } => {
            done(vec![Event::PackageStatusChanged { package, status }])
        }
        Step::CancelOnload { package } => done(lifecycle::cancel_onload(state, package)?),
        Step::DeleteResources { package, keep } => {
            done(vec![resources::delete_step(state, package, keep)?])
        }
        Step::RemovePackage { package } => done(vec![Event::PackageRemoved { package }]),
        Step::StopDaemons { package } => done(resources::stop_daemons_step(state, &package)?),
    };
    events.push(Event::TaskFinished {
        change,
        task,
        undo,
        outcome,
    });
    Ok(events)
}

fn decide_hook_finish(
    state: &dyn StateRead,
    change: Uuid,
    task: u32,
    undo: bool,
    result: Option<&HookResult>,
) -> Decided {
    let (c, step) = next_task(state, change, task, undo)?;
    let t = &c.tasks[task as usize];
    let running = if undo {
        TaskStatus::Undoing
    } else {
        TaskStatus::Doing
    };
    if t.status != running {
        return Err(Rejection::state(
            Entity::Change(change),
            format!("task {task} ({}) is {}, not running", t.name, t.status),
        )
        .into());
    }
    let Some((package, hook)) = declared_hook(state, &step)? else {
        return Err(Rejection::state(
            Entity::Change(change),
            format!("task {task} runs no declared hook"),
        )
        .into());
    };
    let hook_ref = HookRef {
        change,
        task: Some(task),
        package,
        hook,
        attempt: t.attempts,
    };
    let (event, outcome) = match result {
        None => (Event::HookCancelled(hook_ref), TaskOutcome::Cancelled),
        Some(r) => {
            check_hook_result(r)?;
            let outcome = match r.outcome {
                HookOutcome::Succeeded => TaskOutcome::Succeeded,
                HookOutcome::Failed | HookOutcome::TimedOut | HookOutcome::SpawnFailed => {
                    TaskOutcome::Failed(format!("hook {} {}", hook_ref.hook, r.describe()))
                }
            };
            (Event::HookFinished(hook_ref, r.clone()), outcome)
        }
    };
    Ok(vec![
        event,
        Event::TaskFinished {
            change,
            task,
            undo,
            outcome,
        },
    ])
}

/// The change, or a rejection naming it.
fn change(state: &dyn StateRead, id: Uuid) -> Result<ChangeRecord, DecideError> {
    get::<ChangeRecord>(state, &keys::change(id))?
        .ok_or_else(|| Rejection::NotFound(Entity::Change(id)).into())
}

/// The change and the step of task `task` if it is the next one to run.
fn next_task(
    state: &dyn StateRead,
    change: Uuid,
    task: u32,
    undo: bool,
) -> Result<(ChangeRecord, Step), DecideError> {
    let c = self::change(state, change)?;
    let i = task as usize;
    let action = if undo { Action::Undo(i) } else { Action::Do(i) };
    if c.next_action() != Some(action) {
        return Err(Rejection::state(
            Entity::Change(change),
            format!(
                "task {task} ({}) is not the next to {} (next: {:?})",
                c.tasks.get(i).map_or("no such task", |t| t.name.as_str()),
                if undo { "undo" } else { "do" },
                c.next_action()
            ),
        )
        .into());
    }
    let t = &c.tasks[i];
    let step = if undo { t.undo.clone() } else { t.step.clone() };
    Ok((c, step))
}

/// For a hook step whose package declares the hook: (package, hook).
fn declared_hook(
    state: &dyn StateRead,
    step: &Step,
) -> Result<Option<(String, String)>, DecideError> {
    let Step::Hook { package, hook, .. } = step else {
        return Ok(None);
    };
    let Some(p) = get::<PackageRecord>(state, &keys::package(package))? else {
        return Ok(None);
    };
    Ok(p.manifest
        .hooks
        .contains_key(hook)
        .then(|| (package.clone(), hook.clone())))
}

fn change_kind_article(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Install => "an install",
        ChangeKind::Uninstall => "an uninstall",
        ChangeKind::Connect => "a connect",
        ChangeKind::Disconnect => "a disconnect",
    }
}

/// Rejects if a change is in progress on any of `packages`.
pub(super) fn check_not_busy<'a>(
    state: &dyn StateRead,
    packages: impl IntoIterator<Item = &'a String>,
) -> Result<(), DecideError> {
    for p in packages {
        if let Some(id) = state.get(Space::State, &keys::busy(p))? {
            let id = Uuid::from_slice(&id)
                .map_err(|_| StateError::corrupt(format!("busy/{p} does not hold a change id")))?;
            let kind = get::<ChangeRecord>(state, &keys::change(id))?
                .map_or("a", |c| change_kind_article(c.kind));
            return Err(Rejection::Busy {
                entity: Entity::Package(p.clone()),
                kind: kind.to_string(),
                change: id,
            }
            .into());
        }
    }
    Ok(())
}

/// Rejects a change id that is already used.
pub(super) fn check_new_change(state: &dyn StateRead, id: Uuid) -> Result<(), DecideError> {
    if state.get(Space::State, &keys::change(id))?.is_some() {
        return Err(Rejection::Exists(Entity::Change(id)).into());
    }
    Ok(())
}

/// Rejects hook output tails over [`HOOK_OUTPUT_BYTES_MAX`].
pub(super) fn check_hook_result(r: &HookResult) -> Result<(), Rejection> {
    for (what, s) in [("stdout", &r.stdout_tail), ("stderr", &r.stderr_tail)] {
        if s.len() > HOOK_OUTPUT_BYTES_MAX {
            return Err(Rejection::Invalid(format!(
                "hook {what} tail is {} bytes, over the limit of {HOOK_OUTPUT_BYTES_MAX}",
                s.len()
            )));
        }
    }
    Ok(())
}

/// A new change record (its actor, times and revision are set when it is applied).
pub(super) fn new_change(
    id: Uuid,
    kind: ChangeKind,
    summary: String,
    packages: BTreeSet<String>,
    tasks: Vec<Task>,
) -> ChangeRecord {
    let mut c = ChangeRecord {
        id,
        kind,
        summary,
        packages: packages.into_iter().collect(),
        tasks,
        status: ChangeStatus::Doing,
        aborted: false,
        actor: String::new(),
        spawn_ms: 0,
        ready_ms: None,
        revision: 0,
    };
    c.status = c.derive_status();
    c
}

pub(super) fn apply(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    match event {
        Event::ChangeCreated(c) => put_new_change(state, c, entry),
        Event::AbortRequested { change } => {
            let mut c = applied_change(state, change)?;
            c.abort();
            save_change(state, c, entry)?;
        }
        Event::TaskStarted { change, task, undo } => {
            let mut c = applied_change(state, change)?;
            let i = task as usize;
            let action = if undo { Action::Undo(i) } else { Action::Do(i) };
            if !c.start_task(action) {
                return Err(ApplyFailure(format!(
                    "change {change}: task {task} cannot start from its current status"
                )));
            }
            save_change(state, c, entry)?;
        }
        Event::TaskFinished {
            change,
            task,
            undo,
            outcome,
        } => {
            let mut c = applied_change(state, change)?;
            let i = task as usize;
            if i >= c.tasks.len() {
                return Err(ApplyFailure(format!("change {change} has no task {task}")));
            }
            c.finish_task(if undo { Action::Undo(i) } else { Action::Do(i) }, &outcome);
            save_change(state, c, entry)?;
        }
        Event::HookStarted(_) | Event::HookFinished(..) | Event::HookCancelled(_) => {
            apply_hook_event(state, event, entry)?
        }
        other => return Err(misrouted_event(Subsystem::Changes, &other)),
    }
    Ok(())
}

/// `hook.*`: an `onload`'s go to its package, a task hook's are noted on its task.
fn apply_hook_event(
    state: &mut dyn StateWrite,
    event: Event,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    let rev = entry.offset;
    match event {
        Event::HookStarted(h) => {
            if h.task.is_none() {
                lifecycle::onload_started(state, &h, rev)?;
            }
        }
        Event::HookFinished(h, result) => match h.task {
            None => lifecycle::onload_finished(state, &h, &result, rev)?,
            Some(task) => {
                let mut c = applied_change(state, h.change)?;
                let t = applied_task(&mut c, task)?;
                t.log.push(TaskNote::HookFinished {
                    hook: h.hook,
                    attempt: h.attempt,
                    result: result.summary(),
                });
                save_change(state, c, entry)?;
            }
        },
        Event::HookCancelled(h) => match h.task {
            None => lifecycle::onload_cancelled(state, &h, rev)?,
            Some(task) => {
                let mut c = applied_change(state, h.change)?;
                applied_task(&mut c, task)?
                    .log
                    .push(TaskNote::HookCancelled {
                        hook: h.hook,
                        attempt: h.attempt,
                    });
                save_change(state, c, entry)?;
            }
        },
        other => return Err(misrouted_event(Subsystem::Changes, &other)),
    }
    Ok(())
}

/// Stores a new change and marks its packages busy with it.
pub(super) fn put_new_change(state: &mut dyn StateWrite, mut c: ChangeRecord, entry: &StoredEntry) {
    c.actor = entry.meta.actor.clone();
    c.spawn_ms = entry.time_ms;
    c.revision = entry.offset;
    state.put(Space::State, &keys::active_change(c.id), b"");
    for p in &c.packages {
        state.put(Space::State, &keys::busy(p), c.id.as_bytes());
    }
    put(state, &keys::change(c.id), &c);
}

fn applied_change(state: &dyn StateRead, id: Uuid) -> Result<ChangeRecord, ApplyFailure> {
    get::<ChangeRecord>(state, &keys::change(id))?
        .ok_or_else(|| ApplyFailure(format!("change {id} does not exist")))
}

/// Saves a change; when it has just become ready, releases its packages.
fn save_change(
    state: &mut dyn StateWrite,
    mut c: ChangeRecord,
    entry: &StoredEntry,
) -> Result<(), ApplyFailure> {
    c.revision = entry.offset;
    if c.status.is_ready() && c.ready_ms.is_none() {
        c.ready_ms = Some(entry.time_ms);
        state.delete(Space::State, &keys::active_change(c.id));
        for p in &c.packages {
            let k = keys::busy(p);
            if state.get(Space::State, &k)?.as_deref() == Some(c.id.as_bytes().as_slice()) {
                state.delete(Space::State, &k);
            }
        }
    }
    put(state, &keys::change(c.id), &c);
    Ok(())
}

/// Task `task` of a change an entry applies to; a missing one is an impossible state.
fn applied_task(c: &mut ChangeRecord, task: u32) -> Result<&mut Task, ApplyFailure> {
    let id = c.id;
    c.tasks
        .get_mut(task as usize)
        .ok_or_else(|| ApplyFailure(format!("change {id} has no task {task}")))
}
