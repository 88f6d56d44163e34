//! The daemon supervisor (leader only): runs every enabled daemon of an installed package once
//! its `onload` has finished, restarts it by its policy ([`crate::supervise`]), stops it when it
//! is disabled, its feature is disabled, its package is uninstalled or this node stops leading,
//! and records what it sees as `daemon.observed.v2` commands.
//!
//! One actor task owns every daemon's state, so nothing runs twice: it wakes on every commit
//! (to compare the projection with what runs), on a process's end, on a backoff's end, and on
//! requests (an uninstall's `stop-daemons` task, `daemon restart`). A daemon's process is run
//! like a hook ([`crate::hooks`]): its own process group led by a guard that kills the group
//! when this process dies, the clean hook environment plus `CAIRN_DAEMON`, its output kept as a
//! bounded tail. Pid, start time and output are runtime facts of this process, not in the log.
//!
//! The state machine of one daemon ([`Phase`]), as the supervisor drives it:
//! - `Off` → `Running` when it is wanted (enabled, package installed and `onload` finished,
//!   feature enabled); a daemon found `failed` in the log by a new supervisor starts `Failed`.
//! - `Running` → (its process ends) `Backoff` / `Exited` / `Failed` as the policy says;
//!   → (not wanted any more) `Stopping`.
//! - `Backoff` → `Running` when the wait is over; `Exited`, `Failed` stay until asked again
//!   (`daemon restart`, or disable then enable: not wanted makes them `Off`).
//! - `Stopping` → `Off` (or `Running` again for a restart) once its process is reaped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_kernel::manifest::HookExec;
use cairn_kernel::model::{DaemonFailure, DaemonRun, DaemonState, FeatureState};
use cairn_kernel::records::{DaemonRecord, OnloadState, PackageStatus};
use cairn_kernel::{query, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::hooks::{run_daemon, HookOutcome, HookReport, HookRun, LiveOutput};
use crate::supervise::{Ended, Next, Supervision};
use crate::workspace::{execute, CommandOptions, Inner};

/// Time between `SIGTERM` and `SIGKILL` to a daemon's process group when cairn stops it.
pub const DAEMON_STOP_GRACE_MS: u64 = 3000;
/// Bytes of a daemon's output kept (stdout and stderr interleaved, the last ones written).
pub const DAEMON_OUTPUT_BYTES_MAX: usize = crate::hooks::HOOK_OUTPUT_BYTES_MAX;
/// Depth of the supervisor's request queue.
const DAEMON_REQUESTS_MAX: usize = 64;
/// The least time between two reconciles that commits (not the supervisor itself) caused:
/// a daemon starts at most this much later after what enables it commits.
pub const DAEMON_RECONCILE_INTERVAL_MS: u64 = 50;
/// A daemon runs until it is stopped: its "timeout" (about a century).
const DAEMON_RUN_S_MAX: u64 = 100 * 365 * 24 * 3600;

/// `(package, daemon)`.
pub type DaemonKey = (String, String);

/// One row of `Workspace::daemons`: package, daemon, its record, and this process's runtime
/// facts about it (`None` where it has not run it).
pub type DaemonListing = (
    String,
    String,
    cairn_kernel::records::DaemonRecord,
    Option<DaemonRuntime>,
);

/// What this process knows about a daemon beyond the log: facts of the leader process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonRuntime {
    /// The pid of its main process while it runs.
    pub pid: Option<i32>,
    /// When its current (or last) run started, ms since the Unix epoch.
    pub since_ms: Option<u64>,
    /// Restarts since it was asked to run.
    pub restarts: u32,
}

/// Counters since the workspace was opened (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Processes started.
    pub starts: u64,
    /// Runs that ended on their own (not stopped by cairn).
    pub exits: u64,
    /// Restarts by policy.
    pub restarts: u64,
    /// Daemons failed now (crash loop, or cannot start).
    pub failed: u64,
    /// Whether this process supervises daemons now (it leads, with daemons on).
    pub supervising: bool,
}

/// The supervisor's shared state in [`Inner`].
#[derive(Default)]
pub(crate) struct DaemonsState {
    /// The running supervisor's request queue, while there is one.
    link: std::sync::Mutex<Option<mpsc::Sender<Request>>>,
    /// Output tails and runtime facts per daemon (kept while this process runs).
    facts: std::sync::Mutex<BTreeMap<DaemonKey, (Arc<LiveOutput>, DaemonRuntime)>>,
    starts: AtomicU64,
    exits: AtomicU64,
    restarts: AtomicU64,
    failed: AtomicU64,
}

impl DaemonsState {
    fn facts(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<DaemonKey, (Arc<LiveOutput>, DaemonRuntime)>> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self) -> Option<mpsc::Sender<Request>> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters and whether a supervisor runs.
pub(crate) fn stats(inner: &Inner) -> DaemonStats {
    let d = &inner.daemons;
    DaemonStats {
        starts: d.starts.load(Ordering::Relaxed),
        exits: d.exits.load(Ordering::Relaxed),
        restarts: d.restarts.load(Ordering::Relaxed),
        failed: d.failed.load(Ordering::Relaxed),
        supervising: d.link().is_some(),
    }
}

/// The runtime facts of every daemon this process has run.
pub(crate) fn runtime(inner: &Inner) -> BTreeMap<DaemonKey, DaemonRuntime> {
    inner
        .daemons
        .facts()
        .iter()
        .map(|(k, (live, facts))| {
            let mut facts = facts.clone();
            let pid = live.pid();
            facts.pid = (pid > 0).then_some(pid);
            (k.clone(), facts)
        })
        .collect()
}

/// A daemon's output tail, if this process has run it.
pub(crate) fn logs(inner: &Inner, key: &DaemonKey) -> Option<String> {
    inner.daemons.facts().get(key).map(|(live, _)| live.text())
}

/// Requests to the supervisor.
enum Request {
    /// Stop every daemon of a package (an uninstall's `stop-daemons` task); answered once
    /// their processes are reaped. Nothing is recorded: the task's commit records them stopped.
    StopPackage {
        package: String,
        done: oneshot::Sender<()>,
    },
    /// Run a daemon again (from any phase), with a fresh restart history.
    Restart {
        key: DaemonKey,
        done: oneshot::Sender<Result<(), Error>>,
    },
}

/// Starts the supervisor for one leading period; it stops every daemon when `leading` is
/// cancelled and ends after their processes are reaped.
pub(crate) fn start(inner: &Arc<Inner>, leading: CancellationToken) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(DAEMON_REQUESTS_MAX);
    *inner.daemons.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    let mut actor = Actor {
        inner: Arc::clone(inner),
        slots: BTreeMap::new(),
        first_look: true,
        generation: 0,
    };
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        actor.run(leading, rx, exits_tx, exits_rx).await;
        *actor
            .inner
            .daemons
            .link
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        actor.inner.daemons.failed.store(0, Ordering::Relaxed);
    })
}

/// Stops the daemons of `package` (the uninstall's `stop-daemons` task): returns once none of
/// its processes runs. Without a supervisor (local mode, a mirror) nothing runs: returns at once.
pub(crate) async fn stop_package(inner: &Inner, package: &str) {
    let Some(link) = inner.daemons.link() else {
        return;
    };
    let (done, answer) = oneshot::channel();
    let request = Request::StopPackage {
        package: package.to_string(),
        done,
    };
    if link.send(request).await.is_ok() {
        // A supervisor that ends first has stopped every daemon anyway.
        let _ = answer.await;
    }
}

/// Asks the supervisor to run a daemon again.
pub(crate) async fn restart(inner: &Inner, key: DaemonKey) -> Result<(), Error> {
    let Some(link) = inner.daemons.link() else {
        return Err(Error::NotSupervised);
    };
    let (done, answer) = oneshot::channel();
    link.send(Request::Restart { key, done })
        .await
        .map_err(|_| Error::NotSupervised)?;
    answer.await.map_err(|_| Error::NotSupervised)?
}

/// Where one daemon is in its state machine (see the module doc).
enum Phase {
    Off,
    Running {
        generation: u64,
        cancel: CancellationToken,
        started: Instant,
    },
    Backoff {
        until: Instant,
    },
    Exited,
    Failed,
    Stopping {
        generation: u64,
        /// Record `stopped` once reaped (not for an uninstall: its task records it).
        record: Record,
        /// Start again once reaped (a restart).
        then: Then,
        waiters: Vec<oneshot::Sender<()>>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Record {
    Yes,
    No,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Off,
    Start,
}

/// What the projection says about a daemon, for the supervisor.
#[derive(Clone, PartialEq, Eq)]
enum Want {
    /// It should run, with this argv and policy.
    Run(DaemonRecord),
    /// Its package is uninstalling: no new run, and a running one runs until `stop-daemons`.
    Hold,
    /// It should not run; `exists` whether its record exists (a stop is then recorded).
    Stop { exists: bool },
}

struct Slot {
    phase: Phase,
    history: Supervision,
}

/// A process end, sent by its run task.
struct Exit {
    key: DaemonKey,
    generation: u64,
    report: HookReport,
}

struct Actor {
    inner: Arc<Inner>,
    slots: BTreeMap<DaemonKey, Slot>,
    /// True until the first reconcile: a daemon the log says failed starts `Failed`.
    first_look: bool,
    generation: u64,
}

impl Actor {
    async fn run(
        &mut self,
        leading: CancellationToken,
        mut requests: mpsc::Receiver<Request>,
        exits_tx: mpsc::UnboundedSender<Exit>,
        mut exits: mpsc::UnboundedReceiver<Exit>,
    ) {
        let mut applied = self.inner.applied.subscribe();
        let interval = Duration::from_millis(DAEMON_RECONCILE_INTERVAL_MS);
        // A commit only marks the projection changed: under a write load (thousands of
        // commits a second) reading every package on each one would cost the leader a core.
        // What the supervisor did itself (a request, an exit, a backoff) is reconciled at once.
        // When the last reconcile ran (`None`: the next one may run at once).
        let (mut changed_since, mut last): (bool, Option<Instant>) = (true, None);
        loop {
            if changed_since && last.is_none_or(|l| l.elapsed() >= interval) {
                changed_since = false;
                last = Some(Instant::now());
                if let Err(e) = self.reconcile(&exits_tx).await {
                    tracing::error!(error = %e, "daemon supervisor cannot read state");
                }
            }
            let throttle = last.filter(|_| changed_since).map(|l| l + interval);
            let deadline = match (self.next_deadline(), throttle) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = leading.cancelled() => break,
                changed = applied.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    changed_since = true;
                }
                Some(request) = requests.recv() => {
                    self.request(request, &exits_tx).await;
                    (changed_since, last) = (true, None);
                }
                Some(exit) = exits.recv() => {
                    self.exited(exit, &exits_tx).await;
                    (changed_since, last) = (true, None);
                }
                () = sleep_until(deadline) => {
                    self.backoffs_over(&exits_tx).await;
                    (changed_since, last) = (true, None);
                }
            }
        }
        self.shutdown(&mut exits).await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| match s.phase {
                Phase::Backoff { until } => Some(until),
                Phase::Off
                | Phase::Running { .. }
                | Phase::Exited
                | Phase::Failed
                | Phase::Stopping { .. } => None,
            })
            .min()
    }

    /// What the projection wants of every daemon record, and of every daemon that runs.
    fn wants(&self) -> Result<BTreeMap<DaemonKey, Want>, Error> {
        let view = self.inner.store.read()?;
        let mut wants = BTreeMap::new();
        for p in query::packages(&view)? {
            let name = p.manifest.name.clone();
            let ready = match (&p.status, &p.onload) {
                (PackageStatus::Installed, OnloadState::None)
                | (PackageStatus::Installed, OnloadState::Finished { ok: true }) => Some(true),
                (PackageStatus::Uninstalling { .. }, _) => None,
                _ => Some(false),
            };
            for daemon in
                query::resource_names(&view, cairn_kernel::model::ResourceKind::Daemons, &name)?
            {
                let Some(d) = query::daemon(&view, &name, &daemon)? else {
                    continue;
                };
                let feature_on = match p
                    .manifest
                    .daemons
                    .iter()
                    .find(|decl| decl.name == daemon)
                    .and_then(|decl| decl.feature.clone())
                {
                    None => true,
                    Some(f) => query::feature(&view, &f)?.is_some_and(|f| {
                        matches!(f.state, FeatureState::Enabled | FeatureState::AlwaysEnabled)
                    }),
                };
                let want = match ready {
                    None => Want::Hold,
                    Some(true)
                        if d.desired == DaemonState::Enabled
                            && d.kept_from.is_none()
                            && feature_on =>
                    {
                        Want::Run(d)
                    }
                    Some(_) => Want::Stop {
                        exists: d.kept_from.is_none(),
                    },
                };
                wants.insert((name.clone(), daemon), want);
            }
        }
        if self.first_look {
            for (key, want) in &wants {
                if let Want::Run(d) = want {
                    if matches!(
                        d.run.as_ref().map(|r| &r.state),
                        Some(DaemonRun::Failed { .. })
                    ) {
                        self.inner.daemons.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(package = %key.0, daemon = %key.1, "daemon failed before: left stopped until asked again");
                    }
                }
            }
        }
        Ok(wants)
    }

    async fn reconcile(&mut self, exits: &mpsc::UnboundedSender<Exit>) -> Result<(), Error> {
        let wants = self.wants()?;
        let first_look = std::mem::replace(&mut self.first_look, false);
        let mut keys: Vec<DaemonKey> = self.slots.keys().cloned().collect();
        keys.extend(
            wants
                .keys()
                .filter(|k| !self.slots.contains_key(*k))
                .cloned(),
        );
        for key in keys {
            let want = wants
                .get(&key)
                .cloned()
                .unwrap_or(Want::Stop { exists: false });
            let slot = self.slots.entry(key.clone()).or_insert_with(|| Slot {
                phase: Phase::Off,
                history: Supervision::new(match &want {
                    Want::Run(d) => d.restart,
                    Want::Hold | Want::Stop { .. } => cairn_kernel::model::Restart::Never,
                }),
            });
            if first_look {
                if let Want::Run(d) = &want {
                    if matches!(
                        d.run.as_ref().map(|r| &r.state),
                        Some(DaemonRun::Failed { .. })
                    ) {
                        slot.phase = Phase::Failed;
                    }
                }
            }
            match (&slot.phase, &want) {
                (Phase::Off, Want::Run(d)) => {
                    slot.history = Supervision::new(d.restart);
                    self.start(&key, d.clone(), exits).await;
                }
                (Phase::Off, Want::Hold | Want::Stop { .. }) => {
                    if want == (Want::Stop { exists: false }) {
                        self.slots.remove(&key);
                    }
                }
                (Phase::Running { .. }, Want::Run(_) | Want::Hold) => {}
                (Phase::Running { .. }, Want::Stop { exists }) => {
                    let record = if *exists { Record::Yes } else { Record::No };
                    self.stop(&key, record, Then::Off, None);
                }
                (Phase::Backoff { .. }, Want::Run(_)) => {}
                (Phase::Backoff { .. }, Want::Hold) => slot.phase = Phase::Exited,
                (Phase::Exited | Phase::Failed, Want::Run(_) | Want::Hold) => {}
                (Phase::Backoff { .. } | Phase::Exited | Phase::Failed, Want::Stop { exists }) => {
                    if matches!(slot.phase, Phase::Failed) {
                        self.inner.daemons.failed.fetch_sub(1, Ordering::Relaxed);
                    }
                    slot.phase = Phase::Off;
                    if *exists {
                        self.observe(&key, DaemonRun::Stopped).await;
                    } else {
                        self.slots.remove(&key);
                    }
                }
                (Phase::Stopping { .. }, _) => {}
            }
        }
        Ok(())
    }

    /// Starts a run of `key` (its restart history as it is).
    async fn start(
        &mut self,
        key: &DaemonKey,
        d: DaemonRecord,
        exits: &mpsc::UnboundedSender<Exit>,
    ) {
        let run_id = format!(
            "{}/daemon/{}/{}",
            self.inner.store.workspace_id(),
            key.0,
            key.1
        );
        // A run left by a process of this workspace that died (its guard should have killed
        // it; this also catches one that left its group): never two at once.
        if let Err(e) = crate::hooks::kill_leftovers(&run_id).await {
            tracing::error!(package = %key.0, daemon = %key.1, error = %e, "cannot start daemon");
            return;
        }
        let mut run = HookRun::new(
            HookExec::Argv(d.command.clone()),
            Duration::from_secs(DAEMON_RUN_S_MAX),
        );
        run.kill_grace = Duration::from_millis(DAEMON_STOP_GRACE_MS);
        run.env = vec![
            (
                "CAIRN_WORKSPACE".to_string(),
                self.inner.data.display().to_string(),
            ),
            ("CAIRN_PACKAGE".to_string(), key.0.clone()),
            ("CAIRN_DAEMON".to_string(), key.1.clone()),
            (crate::hooks::HOOK_RUN_ENV.to_string(), run_id),
        ];
        let live = {
            let mut facts = self.inner.daemons.facts();
            let entry = facts.entry(key.clone()).or_insert_with(|| {
                (
                    Arc::new(LiveOutput::default()),
                    DaemonRuntime {
                        pid: None,
                        since_ms: None,
                        restarts: 0,
                    },
                )
            });
            entry.1.since_ms = Some(now_ms());
            Arc::clone(&entry.0)
        };
        self.generation += 1;
        let generation = self.generation;
        let cancel = CancellationToken::new();
        let exits = exits.clone();
        let token = cancel.clone();
        let key2 = key.clone();
        tokio::spawn(async move {
            let report = run_daemon(&run, &token, &live).await;
            let _ = exits.send(Exit {
                key: key2,
                generation,
                report,
            });
        });
        self.inner.daemons.starts.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.slots.get_mut(key) {
            slot.phase = Phase::Running {
                generation,
                cancel,
                started: Instant::now(),
            };
        }
        tracing::info!(package = %key.0, daemon = %key.1, "daemon started");
        self.observe(key, DaemonRun::Running).await;
    }

    /// Stops a running daemon: `SIGTERM` to its group now, `SIGKILL` after the grace (the run
    /// task does both); the rest happens when its end comes in.
    fn stop(
        &mut self,
        key: &DaemonKey,
        record: Record,
        then: Then,
        waiter: Option<oneshot::Sender<()>>,
    ) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        match std::mem::replace(&mut slot.phase, Phase::Off) {
            Phase::Running {
                generation, cancel, ..
            } => {
                cancel.cancel();
                slot.phase = Phase::Stopping {
                    generation,
                    record,
                    then,
                    waiters: waiter.into_iter().collect(),
                };
            }
            Phase::Stopping {
                generation,
                record: r,
                then: t,
                mut waiters,
            } => {
                waiters.extend(waiter);
                let record = if r == Record::No || record == Record::No {
                    Record::No
                } else {
                    Record::Yes
                };
                let then = if then == Then::Off { Then::Off } else { t };
                slot.phase = Phase::Stopping {
                    generation,
                    record,
                    then,
                    waiters,
                };
            }
            other => {
                slot.phase = other;
                if let Some(w) = waiter {
                    let _ = w.send(());
                }
            }
        }
    }

    async fn exited(&mut self, exit: Exit, exits: &mpsc::UnboundedSender<Exit>) {
        let Some(slot) = self.slots.get_mut(&exit.key) else {
            return;
        };
        let key = exit.key.clone();
        match std::mem::replace(&mut slot.phase, Phase::Off) {
            Phase::Running {
                generation,
                started,
                cancel,
            } if generation == exit.generation => {
                drop(cancel);
                self.inner.daemons.exits.fetch_add(1, Ordering::Relaxed);
                self.ended(&key, started, &exit.report, exits).await;
            }
            Phase::Stopping {
                generation,
                record,
                then,
                waiters,
            } if generation == exit.generation => {
                tracing::info!(package = %key.0, daemon = %key.1, "daemon stopped");
                if record == Record::Yes {
                    self.observe(&key, DaemonRun::Stopped).await;
                }
                for w in waiters {
                    let _ = w.send(());
                }
                if then == Then::Start {
                    self.reconcile_one_start(&key, exits).await;
                }
            }
            other => slot.phase = other,
        }
    }

    /// A run ended on its own: ask the policy.
    async fn ended(
        &mut self,
        key: &DaemonKey,
        started: Instant,
        report: &HookReport,
        _exits: &mpsc::UnboundedSender<Exit>,
    ) {
        let ended = match (&report.outcome, report.exit, report.signal) {
            (HookOutcome::SpawnFailed(m), _, _) => Ended::SpawnFailed(m.clone()),
            (_, Some(code), _) => Ended::Exited(code),
            (_, None, Some(signal)) => Ended::Killed(signal),
            (_, None, None) => Ended::Exited(-1),
        };
        tracing::info!(package = %key.0, daemon = %key.1, ?ended, "daemon ended");
        let exited = match &ended {
            Ended::Exited(code) => DaemonRun::Exited {
                code: Some(*code),
                signal: None,
            },
            Ended::Killed(signal) => DaemonRun::Exited {
                code: None,
                signal: Some(*signal),
            },
            Ended::SpawnFailed(_) => DaemonRun::Exited {
                code: None,
                signal: None,
            },
        };
        let wants = self.wants().unwrap_or_default();
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let hold = !matches!(wants.get(key), Some(Want::Run(_)));
        let now = Instant::now();
        let ran_ms = u64::try_from(now.duration_since(started).as_millis()).unwrap_or(u64::MAX);
        let next = if hold {
            Next::Stay
        } else {
            // The history's clock: ms since this supervisor's epoch is enough, it only
            // compares times.
            let end = now_ms();
            slot.history.ended(&ended, end.saturating_sub(ran_ms), end)
        };
        let restarts = slot.history.restarts();
        let state = match next {
            Next::Restart { after_ms } => {
                slot.phase = Phase::Backoff {
                    until: now + Duration::from_millis(after_ms),
                };
                self.inner.daemons.restarts.fetch_add(1, Ordering::Relaxed);
                exited
            }
            Next::Stay => {
                slot.phase = Phase::Exited;
                match ended {
                    Ended::SpawnFailed(error) if !hold => DaemonRun::Failed {
                        reason: DaemonFailure::SpawnFailed { error },
                    },
                    _ => exited,
                }
            }
            Next::Fail { reason } => {
                slot.phase = Phase::Failed;
                self.inner.daemons.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(package = %key.0, daemon = %key.1, %reason, "daemon failed: left stopped until asked again");
                DaemonRun::Failed { reason }
            }
        };
        if let Some(f) = self.inner.daemons.facts().get_mut(key) {
            f.1.restarts = restarts;
        }
        self.observe(key, state).await;
    }

    async fn backoffs_over(&mut self, exits: &mpsc::UnboundedSender<Exit>) {
        let now = Instant::now();
        let due: Vec<DaemonKey> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Backoff { until } if until <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.phase = Phase::Off;
            }
            match self.wants().ok().and_then(|w| w.get(&key).cloned()) {
                Some(Want::Run(d)) => self.start(&key, d, exits).await,
                Some(Want::Hold | Want::Stop { .. }) | None => {
                    if let Some(slot) = self.slots.get_mut(&key) {
                        slot.phase = Phase::Exited;
                    }
                }
            }
        }
    }

    /// Starts `key` with a fresh history if the projection wants it to run.
    async fn reconcile_one_start(&mut self, key: &DaemonKey, exits: &mpsc::UnboundedSender<Exit>) {
        match self.wants().ok().and_then(|w| w.get(key).cloned()) {
            Some(Want::Run(d)) => {
                if let Some(slot) = self.slots.get_mut(key) {
                    slot.history = Supervision::new(d.restart);
                }
                if let Some(f) = self.inner.daemons.facts().get_mut(key) {
                    f.1.restarts = 0;
                }
                self.start(key, d, exits).await;
            }
            Some(Want::Hold | Want::Stop { .. }) | None => {}
        }
    }

    async fn request(&mut self, request: Request, exits: &mpsc::UnboundedSender<Exit>) {
        match request {
            Request::StopPackage { package, done } => {
                let keys: Vec<DaemonKey> = self
                    .slots
                    .keys()
                    .filter(|k| k.0 == package)
                    .cloned()
                    .collect();
                let mut waiting = Vec::new();
                for key in keys {
                    let (tx, rx) = oneshot::channel();
                    self.stop(&key, Record::No, Then::Off, Some(tx));
                    waiting.push(rx);
                    if let Some(slot) = self.slots.get_mut(&key) {
                        if matches!(slot.phase, Phase::Failed) {
                            self.inner.daemons.failed.fetch_sub(1, Ordering::Relaxed);
                        }
                        if !matches!(slot.phase, Phase::Stopping { .. }) {
                            slot.phase = Phase::Off;
                        }
                    }
                }
                // Answer once every process is reaped, without blocking the actor: the ends
                // come in through `exited`.
                tokio::spawn(async move {
                    for rx in waiting {
                        let _ = rx.await;
                    }
                    let _ = done.send(());
                });
            }
            Request::Restart { key, done } => {
                let wants = match self.wants() {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                };
                let answer = match wants.get(&key) {
                    Some(Want::Run(d)) => {
                        let d = d.clone();
                        let slot = self.slots.entry(key.clone()).or_insert_with(|| Slot {
                            phase: Phase::Off,
                            history: Supervision::new(d.restart),
                        });
                        if matches!(slot.phase, Phase::Failed) {
                            self.inner.daemons.failed.fetch_sub(1, Ordering::Relaxed);
                        }
                        match slot.phase {
                            Phase::Running { .. } | Phase::Stopping { .. } => {
                                self.stop(&key, Record::No, Then::Start, None);
                            }
                            Phase::Off | Phase::Backoff { .. } | Phase::Exited | Phase::Failed => {
                                slot.phase = Phase::Off;
                                self.reconcile_one_start(&key, exits).await;
                            }
                        }
                        Ok(())
                    }
                    Some(Want::Hold | Want::Stop { .. }) | None => {
                        Err(Error::Rejected(cairn_kernel::Rejection::State {
                            entity: cairn_kernel::command::Entity::Resource(
                                cairn_kernel::model::ResourceKind::Daemons,
                                key.0.clone(),
                                key.1.clone(),
                            ),
                            reason: "is not wanted running (disabled, its feature disabled, its \
                                     package not installed or its onload not finished)"
                                .to_string(),
                        }))
                    }
                };
                let _ = done.send(answer);
            }
        }
    }

    /// Stops every daemon (this node stops leading) and waits until their processes are
    /// reaped; each is recorded stopped while the node still leads (a handoff), not at close.
    async fn shutdown(&mut self, exits: &mut mpsc::UnboundedReceiver<Exit>) {
        let keys: Vec<DaemonKey> = self.slots.keys().cloned().collect();
        for key in &keys {
            self.stop(key, Record::Yes, Then::Off, None);
        }
        while self
            .slots
            .values()
            .any(|s| matches!(s.phase, Phase::Stopping { .. }))
        {
            let Some(exit) = exits.recv().await else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&exit.key) else {
                continue;
            };
            if let Phase::Stopping {
                generation,
                record,
                waiters,
                ..
            } = std::mem::replace(&mut slot.phase, Phase::Off)
            {
                if generation != exit.generation {
                    continue;
                }
                if record == Record::Yes {
                    self.observe(&exit.key, DaemonRun::Stopped).await;
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
        }
    }

    /// Records an observation; a rejection (the daemon is gone) is expected and dropped.
    async fn observe(&self, key: &DaemonKey, state: DaemonRun) {
        let restarts = self
            .slots
            .get(key)
            .map(|s| s.history.restarts())
            .unwrap_or(0);
        let command = Command::DaemonObserve {
            owner: key.0.clone(),
            daemon: key.1.clone(),
            state,
            restarts,
        };
        match execute(&self.inner, command, &CommandOptions::default()).await {
            Ok(_) => {}
            Err(Error::Rejected(r)) => {
                tracing::debug!(package = %key.0, daemon = %key.1, reason = %r, "daemon observation rejected")
            }
            Err(Error::Closed) | Err(Error::NotLeader) => {}
            Err(e) => {
                tracing::warn!(package = %key.0, daemon = %key.1, error = %e, "cannot record daemon observation")
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Wall-clock ms since the Unix epoch (a runtime fact: `since`, never in the log).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
