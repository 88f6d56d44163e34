//! The change engine (leader only): drives every change that is not ready, one task at a time,
//! and runs installed packages' `onload` hooks.
//!
//! The kernel decides everything; the engine only asks `next_action`, runs the hook (a child
//! process in its own process group, or a registered in-process handler) and reports the
//! outcome as a command. Every step is a commit, so a restart resumes where the log says:
//! a task found `doing` is run again, `undoing` is undone again. Shutting down stops running
//! hooks without recording anything for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_kernel::records::{OnloadState, PackageRecord, PackageStatus};
use cairn_kernel::{query, Action, ChangeRecord, Command, Step};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Error;
use crate::hooks::{run_hook, HookRun};
use crate::workspace::{execute, hook_result, CommandOptions, HookContext, Inner};

/// Consecutive rejections of a change's engine commands before the engine stops driving it
/// (and logs why): the change's state moved under it that many times in a row.
const DRIVER_REJECTIONS_MAX: u32 = 16;

/// What the engine is driving right now.
#[derive(Default)]
pub(crate) struct EngineState {
    /// Changes being driven, with the token of the task running now (if a hook runs).
    changes: BTreeMap<Uuid, Option<CancellationToken>>,
    /// Packages whose `onload` runs, with its token and a flag that turns true when done.
    onloads: BTreeMap<String, (CancellationToken, watch::Receiver<bool>)>,
    /// Driver tasks, awaited at close (a finished task has dropped its handle on the
    /// workspace, so the store can close after them).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Changes and onloads whose driver failed: not restarted until the next open, so a
    /// persistent failure is logged once instead of spinning.
    stuck_changes: std::collections::BTreeSet<Uuid>,
    stuck_onloads: std::collections::BTreeSet<String>,
}

impl EngineState {
    fn track(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(task);
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, EngineState> {
    inner.engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stuck changes and onloads (their drivers stopped on an error).
pub(crate) fn stuck(inner: &Inner) -> (Vec<Uuid>, Vec<String>) {
    let engine = lock(inner);
    (
        engine.stuck_changes.iter().copied().collect(),
        engine.stuck_onloads.iter().cloned().collect(),
    )
}

/// The engine loop: after every commit (and at start), start drivers for changes and onloads
/// that need one.
/// `leading` is cancelled when this node stops leading (at close, or when it hands off): every
/// driver started here stops with it, and a hook it runs is stopped without an outcome (the
/// task stays `doing` and reruns wherever the workspace leads next).
pub(crate) async fn run(inner: Arc<Inner>, leading: CancellationToken) {
    loop {
        if let Err(e) = start_drivers(&inner, &leading) {
            tracing::error!(error = %e, "change engine cannot read state");
        }
        tokio::select! {
            _ = inner.kick.notified() => {}
            _ = leading.cancelled() => return,
        }
    }
}

fn start_drivers(inner: &Arc<Inner>, leading: &CancellationToken) -> Result<(), Error> {
    let view = inner.store.read()?;
    for change in query::active_changes(&view)? {
        let mut engine = lock(inner);
        if engine.changes.contains_key(&change.id) || engine.stuck_changes.contains(&change.id) {
            continue;
        }
        engine.changes.insert(change.id, None);
        let inner2 = Arc::clone(inner);
        let leading2 = leading.clone();
        let task = tokio::spawn(async move {
            let inner = inner2;
            let id = change.id;
            let failed = match drive_change(&inner, id, &leading2).await {
                Ok(()) | Err(Error::Closed) => false,
                Err(e) => {
                    tracing::error!(change = %id, error = %e, "change driver stopped; the change resumes at the next open");
                    true
                }
            };
            let mut engine = lock(&inner);
            engine.changes.remove(&id);
            if failed {
                engine.stuck_changes.insert(id);
            }
            drop(engine);
            if failed {
                inner.stuck.send_modify(|n| *n += 1);
            }
            inner.kick.notify_one();
        });
        engine.track(task);
    }
    for name in query::onloads_wanted(&view)? {
        let allowed = match &*inner.onloads.lock().unwrap_or_else(|p| p.into_inner()) {
            crate::workspace::Onloads::All => true,
            crate::workspace::Onloads::Only(packages) => packages.contains(&name),
        };
        if !allowed {
            continue;
        }
        let mut engine = lock(inner);
        if engine.onloads.contains_key(&name) || engine.stuck_onloads.contains(&name) {
            continue;
        }
        let token = leading.child_token();
        let (done_tx, done_rx) = watch::channel(false);
        engine
            .onloads
            .insert(name.clone(), (token.clone(), done_rx));
        let inner2 = Arc::clone(inner);
        let task = tokio::spawn(async move {
            let inner = inner2;
            let failed = match drive_onload(&inner, &name, &token).await {
                Ok(()) | Err(Error::Closed) => false,
                Err(e) => {
                    tracing::error!(package = %name, error = %e, "onload driver stopped; it resumes at the next open");
                    true
                }
            };
            let mut engine = lock(&inner);
            engine.onloads.remove(&name);
            if failed {
                engine.stuck_onloads.insert(name.clone());
            }
            drop(engine);
            if failed {
                inner.stuck.send_modify(|n| *n += 1);
            }
            let _ = done_tx.send(true);
            inner.kick.notify_one();
        });
        engine.track(task);
    }
    Ok(())
}

/// Waits until every driver task has ended (after shutdown was requested).
pub(crate) async fn wait_drivers(inner: &Arc<Inner>) {
    loop {
        let tasks = std::mem::take(&mut lock(inner).tasks);
        if tasks.is_empty() {
            return;
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Lets a change whose driver stopped be driven again (after an abort), and wakes the engine.
pub(crate) fn unstick(inner: &Inner, change: Uuid) {
    if lock(inner).stuck_changes.remove(&change) {
        inner.kick.notify_one();
    }
}

/// Cancels the hook a change is running now, if any (used by abort).
pub(crate) fn cancel_running(inner: &Inner, change: Uuid) {
    if let Some(Some(token)) = lock(inner).changes.get(&change) {
        token.cancel();
    }
}

/// Outcome of an engine command: rejected ones are retried after re-reading the change.
enum Step2 {
    Done,
    Rejected(String),
}

/// Submits an engine command on behalf of `actor`, the actor of the command that started the
/// change (so the audit trail names who acted, not the process that drove it).
async fn submit(inner: &Arc<Inner>, command: Command, actor: &str) -> Result<Step2, Error> {
    let opts = CommandOptions {
        actor: (!actor.is_empty()).then(|| actor.to_owned()),
        idempotency_key: None,
    };
    match execute(inner, command, &opts).await {
        Ok(_) => Ok(Step2::Done),
        Err(Error::Rejected(r)) => Ok(Step2::Rejected(r.to_string())),
        Err(e) => Err(e),
    }
}

async fn drive_change(
    inner: &Arc<Inner>,
    id: Uuid,
    leading: &CancellationToken,
) -> Result<(), Error> {
    let mut rejections = 0u32;
    loop {
        if leading.is_cancelled() {
            return Err(Error::Closed);
        }
        let view = inner.store.read()?;
        let Some(change) = query::change(&view, id)? else {
            return Ok(());
        };
        let Some(action) = change.next_action() else {
            return Ok(());
        };
        let (i, undo) = match action {
            Action::Do(i) => (i, false),
            Action::Undo(i) => (i, true),
        };
        let task = &change.tasks[i];
        let step = if undo { &task.undo } else { &task.step };
        let hook = declared_hook(&view, step)?;
        drop(view);
        let outcome = match hook {
            Some((package, spec)) => {
                run_task_hook(
                    inner, leading, &change, i as u32, undo, &package, step, spec,
                )
                .await?
            }
            None => {
                if let Step::CancelOnload { package } = step {
                    cancel_onload(inner, package).await;
                }
                if let Step::StopDaemons { package } = step {
                    crate::daemons::stop_package(inner, package).await;
                }
                submit(
                    inner,
                    Command::TaskRun {
                        change: id,
                        task: i as u32,
                        undo,
                    },
                    &change.actor,
                )
                .await?
            }
        };
        match outcome {
            Step2::Done => rejections = 0,
            Step2::Rejected(why) => {
                rejections += 1;
                if rejections >= DRIVER_REJECTIONS_MAX {
                    return Err(Error::Internal(format!(
                        "change {id}: engine command rejected {rejections} times in a row: {why}"
                    )));
                }
                tracing::debug!(change = %id, reason = %why, "engine command rejected; re-reading");
            }
        }
    }
}

/// The package record and hook spec of a hook step whose package declares the hook.
fn declared_hook(
    view: &cairn_store::ReadView,
    step: &Step,
) -> Result<Option<(PackageRecord, cairn_kernel::manifest::HookSpec)>, Error> {
    let Step::Hook { package, hook, .. } = step else {
        return Ok(None);
    };
    let Some(p) = query::package(view, package)? else {
        return Ok(None);
    };
    let spec = p.manifest.hooks.get(hook).cloned();
    Ok(spec.map(|s| (p, s)))
}

/// The `CAIRN_HOOK_RUN` value of a task's hooks (or a package's `onload`, `task` = `None`):
/// every attempt of the same task carries it (see `hooks::kill_leftovers`).
fn hook_run_id(inner: &Inner, change: Uuid, task: Option<u32>) -> String {
    let task = task.map_or_else(|| "onload".to_owned(), |t| t.to_string());
    format!("{}/{change}/{task}", inner.store.workspace_id())
}

/// Before a later attempt of a hook starts: kills what an earlier attempt left running (its
/// runner died), so that no hook of a task runs twice at the same time.
async fn kill_earlier_attempt(run: &str) -> Result<(), Error> {
    crate::hooks::kill_leftovers(run)
        .await
        .map(|_| ())
        .map_err(Error::Internal)
}

fn hook_env(
    inner: &Inner,
    package: &PackageRecord,
    hook: &str,
    change: Uuid,
    step: &Step,
    run: &str,
) -> Vec<(String, String)> {
    let keep = match &package.status {
        PackageStatus::Uninstalling { keep, .. } => keep
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    };
    let mut env = vec![
        (
            "CAIRN_WORKSPACE".to_string(),
            inner.data.display().to_string(),
        ),
        ("CAIRN_PACKAGE".to_string(), package.manifest.name.clone()),
        ("CAIRN_HOOK".to_string(), hook.to_string()),
        ("CAIRN_CHANGE".to_string(), change.to_string()),
        ("CAIRN_KEEP".to_string(), keep),
        (crate::hooks::HOOK_RUN_ENV.to_string(), run.to_string()),
    ];
    if let Step::Hook { plug, slot, .. } = step {
        if let Some((p, n)) = plug {
            env.push(("CAIRN_PLUG".into(), format!("{p}:{n}")));
        }
        if let Some((p, n)) = slot {
            env.push(("CAIRN_SLOT".into(), format!("{p}:{n}")));
        }
    }
    env
}

/// Runs a hook (handler or child process) under `token`; `None` when it was cancelled. Counts
/// the run by outcome (`Workspace::hook_runs`).
async fn run_hook_once(
    inner: &Inner,
    package: &PackageRecord,
    hook: &str,
    spec: &cairn_kernel::manifest::HookSpec,
    env: Vec<(String, String)>,
    change: Uuid,
    token: &CancellationToken,
) -> Option<cairn_kernel::HookResult> {
    let result = run_hook_counted(inner, package, hook, spec, env, change, token).await;
    inner.hook_runs.count(result.as_ref().map(|r| r.outcome));
    result
}

async fn run_hook_counted(
    inner: &Inner,
    package: &PackageRecord,
    hook: &str,
    spec: &cairn_kernel::manifest::HookSpec,
    env: Vec<(String, String)>,
    change: Uuid,
    token: &CancellationToken,
) -> Option<cairn_kernel::HookResult> {
    let name = &package.manifest.name;
    let handler = inner
        .handlers
        .get(&(name.clone(), hook.to_string()))
        .or_else(|| inner.handlers.get(&("*".to_string(), hook.to_string())));
    if let Some(handler) = handler {
        let started = Instant::now();
        let ctx = HookContext {
            package: name.clone(),
            hook: hook.to_string(),
            change,
            env,
        };
        let timeout = Duration::from_secs(spec.timeout_s);
        let result = tokio::select! {
            r = handler(ctx, token.clone()) => Some(r),
            _ = tokio::time::sleep(timeout) => None,
        };
        if token.is_cancelled() {
            return None;
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        use cairn_kernel::HookOutcome as K;
        let (outcome, exit, out, err) = match result {
            Some(Ok(out)) => (K::Succeeded, Some(0), out, String::new()),
            Some(Err(msg)) => (K::Failed, Some(1), String::new(), msg),
            None => (K::TimedOut, None, String::new(), String::new()),
        };
        return Some(cairn_kernel::HookResult {
            outcome,
            exit,
            signal: None,
            duration_ms,
            stdout_tail: tail(out),
            stderr_tail: tail(err),
            message: String::new(),
        });
    }
    let mut run = HookRun::from_spec(spec);
    run.env = env;
    let report = run_hook(&run, token).await;
    hook_result(&report)
}

fn tail(mut s: String) -> String {
    let max = cairn_kernel::event::HOOK_OUTPUT_BYTES_MAX;
    if s.len() > max {
        let mut cut = s.len() - max;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
    s
}

#[allow(clippy::too_many_arguments)]
async fn run_task_hook(
    inner: &Arc<Inner>,
    leading: &CancellationToken,
    change: &ChangeRecord,
    task: u32,
    undo: bool,
    package: &PackageRecord,
    step: &Step,
    spec: cairn_kernel::manifest::HookSpec,
) -> Result<Step2, Error> {
    let Step::Hook { hook, .. } = step else {
        return Err(Error::Internal("run_task_hook on a non-hook step".into()));
    };
    let token = leading.child_token();
    if let Some(slot) = lock(inner).changes.get_mut(&change.id) {
        *slot = Some(token.clone());
    }
    let run = hook_run_id(inner, change.id, Some(task));
    if change.tasks[task as usize].attempts > 0 {
        kill_earlier_attempt(&run).await?;
    }
    if let Step2::Rejected(why) = submit(
        inner,
        Command::HookStart {
            change: change.id,
            task,
            undo,
        },
        &change.actor,
    )
    .await?
    {
        return Ok(Step2::Rejected(why));
    }
    let env = hook_env(inner, package, hook, change.id, step, &run);
    let result = run_hook_once(inner, package, hook, &spec, env, change.id, &token).await;
    if let Some(slot) = lock(inner).changes.get_mut(&change.id) {
        *slot = None;
    }
    if result.is_none() && leading.is_cancelled() {
        // No longer leading (closing, or handed off): nothing is recorded; the task is still
        // `doing` and reruns wherever the workspace leads next.
        return Err(Error::Closed);
    }
    submit(
        inner,
        Command::HookFinish {
            change: change.id,
            task,
            undo,
            result,
        },
        &change.actor,
    )
    .await
}

async fn drive_onload(
    inner: &Arc<Inner>,
    package: &str,
    token: &CancellationToken,
) -> Result<(), Error> {
    // The onload belongs to the package's install: its entries name the installer.
    let actor = {
        let view = inner.store.read()?;
        query::package(&view, package)?
            .map(|p| query::change(&view, p.install_change))
            .transpose()?
            .flatten()
            .map(|c| c.actor)
            .unwrap_or_default()
    };
    if let Step2::Rejected(why) = submit(
        inner,
        Command::OnloadStart {
            package: package.to_string(),
        },
        &actor,
    )
    .await?
    {
        // State moved on (e.g. an uninstall started): the index no longer wants it.
        tracing::debug!(package, reason = %why, "onload not started");
        return Ok(());
    }
    let view = inner.store.read()?;
    let Some(p) = query::package(&view, package)? else {
        return Ok(());
    };
    drop(view);
    let OnloadState::Running { attempt } = p.onload else {
        return Ok(());
    };
    let Some(spec) = p.manifest.hooks.get("onload").cloned() else {
        return Ok(());
    };
    let run = hook_run_id(inner, p.install_change, None);
    if attempt > 1 {
        kill_earlier_attempt(&run).await?;
    }
    let env = hook_env(inner, &p, "onload", p.install_change, &Step::Nothing, &run);
    let result = run_hook_once(inner, &p, "onload", &spec, env, p.install_change, token).await;
    let Some(result) = result else {
        // Cancelled: by the end of leading (rerun where it leads next) or by an uninstall
        // (which records it).
        return Ok(());
    };
    if let Step2::Rejected(why) = submit(
        inner,
        Command::OnloadFinish {
            package: package.to_string(),
            attempt,
            result,
        },
        &actor,
    )
    .await?
    {
        // Only an uninstall moves a running onload on (it records the cancellation).
        tracing::warn!(package, reason = %why, "onload result not recorded");
    }
    Ok(())
}

/// Cancels a package's running `onload` and waits until its driver has stopped.
async fn cancel_onload(inner: &Inner, package: &str) {
    let slot = lock(inner).onloads.get(package).cloned();
    if let Some((token, mut done)) = slot {
        token.cancel();
        let _ = done.wait_for(|d| *d).await;
    }
}
