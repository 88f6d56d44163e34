//! `Workspace`: the embedder's handle on one workspace directory. Opens the store with the
//! kernel, records pending schema migrations, starts the change engine (which resumes whatever
//! was in progress), and offers async commands, snapshot reads, subscriptions and waits.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use cairn_kernel::event::HookResult;
use cairn_kernel::manifest;
use cairn_kernel::model::{DaemonState, FeatureState, ResourceKind, Scope};
use cairn_kernel::{query, ChangeRecord, Command, Event, Kernel};
use cairn_log::{Meta, StoredEntry};
use cairn_store::{Committed, ReadView, Store};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Error;
use crate::machine::KernelMachine;
use crate::vault::VaultKey;

/// File name of the vault key inside the data directory.
pub const VAULT_KEY_FILE: &str = "vault.key";

/// Context handed to an in-process hook handler.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// Whose hook.
    pub package: String,
    /// Hook name.
    pub hook: String,
    /// The change it runs for.
    pub change: Uuid,
    /// The environment a child process would get (`CAIRN_*`).
    pub env: Vec<(String, String)>,
}

/// An in-process hook handler: `Ok(output)` is success, `Err(message)` a failure. It must stop
/// promptly when the token is cancelled.
pub type HookHandler = Arc<
    dyn Fn(
            HookContext,
            CancellationToken,
        ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// Workspace options.
#[derive(Clone)]
pub struct Options {
    /// Store options (durability, limits).
    pub store: cairn_store::Options,
    /// The kernel, with the embedder's schemas and extensions registered.
    pub kernel: Kernel,
    /// Actor recorded in entries when a command names none.
    pub actor: String,
    /// In-process handlers that run instead of a declared hook's command, keyed by
    /// `(package, hook)`; package `"*"` matches any package. The hook must still be declared in
    /// the manifest (the declaration is replicated state; the handler is this process's way
    /// of running it).
    pub hook_handlers: BTreeMap<(String, String), HookHandler>,
    /// Start the change engine: resume changes in progress, drive new ones, run `onload`
    /// hooks (default). `false` is for a process that must not start hooks it would kill a
    /// moment later when it exits (a CLI command creating a token).
    pub drive: bool,
    /// Whether the workspace accepts commands ([`Access::ReadWrite`], the default) or only
    /// reads ([`Access::ReadOnly`]).
    pub access: Access,
    /// Which packages' `onload` hooks the change engine runs (with [`Options::drive`]).
    pub onloads: Onloads,
    /// Leader (decides commands, runs the change engine) or mirror (applies its leader's
    /// entries only).
    pub role: NodeRole,
    /// Whether this process supervises package daemons while it leads (with
    /// [`Options::drive`]).
    pub daemons: Daemons,
}

/// Whether a leading process runs its packages' daemons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Daemons {
    /// Run them (a leader that stays up: `cairn serve`, an embedder).
    #[default]
    Supervise,
    /// Never (a short-lived CLI process in local mode: it would stop them again a moment
    /// later when it exits).
    Off,
}

/// The part a workspace plays in replication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeRole {
    /// Decides commands, records migrations, runs the change engine and hooks.
    #[default]
    Leader,
    /// Holds its leader's log bit for bit: it decides nothing, records nothing of its own, runs
    /// no change engine and no hook; entries come in through [`Workspace::apply_replicated`],
    /// and every command fails with [`Error::NotLeader`].
    Mirror,
}

/// Which pending `onload` hooks the change engine runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Onloads {
    /// Every one (a leader that stays up: `cairn serve`, an embedder).
    #[default]
    All,
    /// Only those of these packages, and of packages added with [`Workspace::run_onload`]. A
    /// short-lived process (a CLI command) must not start an `onload` it would stop again a
    /// moment later when it exits: each such restart is one more attempt.
    Only(std::collections::BTreeSet<String>),
}

/// How a workspace is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// Commands are accepted; opening records pending schema migrations and an accepted WAL
    /// loss, and starts the change engine if [`Options::drive`] says so.
    #[default]
    ReadWrite,
    /// Nothing is ever written to the log: the store opens read-only (so this works on a full
    /// disk), commands fail with a read-only error, and the change engine does not start.
    /// Only a projection built by another version of cairn is rebuilt at open (derived state;
    /// see `cairn_store::Store::open_read_only`).
    ReadOnly,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store: cairn_store::Options::default(),
            kernel: Kernel::new(),
            actor: "local".into(),
            hook_handlers: BTreeMap::new(),
            drive: true,
            access: Access::ReadWrite,
            onloads: Onloads::All,
            role: NodeRole::Leader,
            daemons: Daemons::Supervise,
        }
    }
}

/// Per-command options.
#[derive(Clone, Debug, Default)]
pub struct CommandOptions {
    /// Who issues it (defaults to the workspace's actor).
    pub actor: Option<String>,
    /// A retried command with the same key returns the original result and writes nothing.
    pub idempotency_key: Option<String>,
}

pub(crate) struct Inner {
    pub store: Store<KernelMachine>,
    pub data: PathBuf,
    pub vault: Option<VaultKey>,
    pub actor: String,
    pub applied: watch::Sender<u64>,
    pub kick: Notify,
    pub shutdown: CancellationToken,
    pub handlers: BTreeMap<(String, String), HookHandler>,
    pub engine: Mutex<crate::engine::EngineState>,
    /// Which `onload` hooks the engine may start.
    pub onloads: Mutex<Onloads>,
    pub hook_runs: HookRuns,
    /// Bumped whenever a driver stops on an error (it commits nothing, so waiters need this
    /// to notice).
    pub stuck: watch::Sender<u64>,
    /// Leader or mirror (a mirror becomes the leader at `promote`, a leader a mirror at
    /// `step_down`). A command checks it and enters the store's queue under the read lock, so
    /// once `step_down` holds the write lock no command can slip in behind it.
    pub role: std::sync::RwLock<NodeRole>,
    /// Cancelled when this node stops leading (a child of `shutdown`, replaced each time it
    /// starts leading): the change engine and its hooks stop with it.
    pub leading: Mutex<CancellationToken>,
    /// Whether the change engine runs while this node leads ([`Options::drive`]).
    pub drive: bool,
    /// Whether daemons are supervised while this node leads ([`Options::daemons`]).
    pub supervise: Daemons,
    /// The daemon supervisor's queue, runtime facts and counters.
    pub daemons: crate::daemons::DaemonsState,
}

impl Inner {
    /// Leader or mirror, now.
    pub(crate) fn role(&self) -> NodeRole {
        *self.role.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_role(&self, role: NodeRole) {
        *self.role.write().unwrap_or_else(|p| p.into_inner()) = role;
    }
}

/// Hook runs since open, by outcome (for metrics).
#[derive(Debug, Default)]
pub(crate) struct HookRuns([std::sync::atomic::AtomicU64; 5]);

impl HookRuns {
    pub(crate) fn count(&self, outcome: Option<cairn_kernel::HookOutcome>) {
        use cairn_kernel::HookOutcome as K;
        let i = match outcome {
            Some(K::Succeeded) => 0,
            Some(K::Failed) => 1,
            Some(K::TimedOut) => 2,
            Some(K::SpawnFailed) => 3,
            None => 4,
        };
        self.0[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Hook runs since the workspace was opened, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookRunStats {
    /// Exited 0.
    pub succeeded: u64,
    /// Exited non-zero (or the handler failed).
    pub failed: u64,
    /// Killed at their timeout.
    pub timed_out: u64,
    /// Could not be started.
    pub spawn_failed: u64,
    /// Cancelled (abort, uninstall of an `onload`, close).
    pub cancelled: u64,
}

/// Cancels the runtime's tasks when the last user handle goes away.
struct Handle {
    inner: Arc<Inner>,
    engine: Mutex<Option<tokio::task::JoinHandle<()>>>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

/// An open workspace (cheap to clone; every clone is the same workspace).
#[derive(Clone)]
pub struct Workspace {
    handle: Arc<Handle>,
}

impl Workspace {
    /// Creates a workspace at `data`: the store (with a new workspace id) and the vault key
    /// file (`vault.key`, mode 0600). Returns the workspace id.
    pub fn init(data: &Path) -> Result<Uuid, Error> {
        let id = Store::<KernelMachine>::init(data)?;
        VaultKey::create(&data.join(VAULT_KEY_FILE))?;
        Ok(id)
    }

    /// Opens the workspace at `data` as leader: takes the lock ("workspace is locked by pid
    /// N" if another process holds it), refuses a schema newer than this binary, records
    /// pending schema migrations, and starts the change engine, which resumes every change in
    /// progress. Must be called inside a tokio runtime.
    pub async fn open(data: &Path, options: Options) -> Result<Workspace, Error> {
        let data = data.to_path_buf();
        let marker = data.join(MIRROR_MARKER_FILE);
        match (options.role, options.access) {
            (NodeRole::Leader, Access::ReadWrite) if marker.exists() => {
                return Err(Error::IsMirror {
                    dir: data.display().to_string(),
                })
            }
            (NodeRole::Leader, _) | (NodeRole::Mirror, Access::ReadOnly) => {}
            (NodeRole::Mirror, Access::ReadWrite) => {
                if !marker.exists() && data.join("db").is_dir() {
                    mark_mirror(&marker)?;
                }
            }
        }
        let store_opts = options.store.clone();
        let kernel = options.kernel.clone();
        let path = data.clone();
        let access = options.access;
        let store = tokio::task::spawn_blocking(move || match access {
            Access::ReadWrite => Store::open(&path, KernelMachine(kernel), store_opts),
            Access::ReadOnly => Store::open_read_only(&path, KernelMachine(kernel)),
        })
        .await
        .map_err(|e| Error::Internal(format!("open task failed: {e}")))??;
        if access == Access::ReadWrite {
            remove_stale_scratch(&data);
        }
        let key_path = data.join(VAULT_KEY_FILE);
        let vault = if key_path.exists() {
            Some(VaultKey::load(&key_path)?)
        } else {
            None
        };
        let applied = store.applied();
        let inner = Arc::new(Inner {
            store,
            data,
            vault,
            actor: options.actor.clone(),
            applied: watch::channel(applied).0,
            kick: Notify::new(),
            shutdown: CancellationToken::new(),
            handlers: options.hook_handlers.clone(),
            engine: Mutex::new(Default::default()),
            onloads: Mutex::new(options.onloads.clone()),
            hook_runs: HookRuns::default(),
            stuck: watch::channel(0).0,
            role: std::sync::RwLock::new(options.role),
            leading: Mutex::new(CancellationToken::new()),
            drive: options.drive,
            supervise: options.daemons,
            daemons: Default::default(),
        });
        // Every commit moves `applied`, whoever made it (a command here, a leader's entries on
        // a mirror), and that wakes subscribers, streams and waiters.
        let published = inner.applied.clone();
        inner.store.on_applied(move |offset| {
            published.send_if_modified(|a| {
                let moved = offset > *a;
                *a = (*a).max(offset);
                moved
            });
        });
        let ws = Workspace {
            handle: Arc::new(Handle {
                inner: Arc::clone(&inner),
                engine: Mutex::new(None),
                supervisor: Mutex::new(None),
            }),
        };
        if access == Access::ReadOnly {
            return Ok(ws);
        }
        if options.role == NodeRole::Mirror {
            // A mirror records nothing of its own: migrations and an accepted WAL loss are the
            // leader's to log, and it never drives changes.
            if inner.store.pending_wal_loss()?.is_some() {
                tracing::warn!(
                    "this mirror accepted a WAL loss; it is not logged here (only a leader \
                     logs), and the lost entries come again from the leader"
                );
            }
            return Ok(ws);
        }
        ws.start_leading(options.drive).await?;
        Ok(ws)
    }

    /// What a leader does once it leads: records pending migrations and an accepted WAL loss,
    /// and starts the change engine (which resumes every change in progress).
    async fn start_leading(&self, drive: bool) -> Result<(), Error> {
        let inner = self.inner();
        let pending = {
            let view = self.view()?;
            inner.store.machine().0.pending_migrations(&view)?
        };
        for command in pending {
            tracing::info!(?command, "recording schema migration");
            self.execute(command, &CommandOptions::default()).await?;
        }
        self.record_accepted_wal_loss().await?;
        if drive {
            let leading = inner.shutdown.child_token();
            *inner.leading.lock().unwrap_or_else(|p| p.into_inner()) = leading.clone();
            if inner.supervise == Daemons::Supervise {
                let supervisor = crate::daemons::start(inner, leading.clone());
                *self
                    .handle
                    .supervisor
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(supervisor);
            }
            let engine = tokio::spawn(crate::engine::run(Arc::clone(inner), leading));
            *self.handle.engine.lock().unwrap_or_else(|p| p.into_inner()) = Some(engine);
        }
        Ok(())
    }

    /// Stops the change engine and waits for its drivers: a running hook is stopped without an
    /// outcome (its task stays `doing` and reruns wherever the workspace leads next).
    async fn stop_engine(&self) {
        let inner = self.inner();
        inner
            .leading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
        let engine = self
            .handle
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(engine) = engine {
            let _ = engine.await;
        }
        crate::engine::wait_drivers(inner).await;
        // Every daemon is stopped and reaped before this returns: at a handoff, before the
        // next leader is told to promote.
        let supervisor = self
            .handle
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }

    /// Stops leading, for a handoff (`cairn handoff`): stops the change engine (hooks that run
    /// are stopped without an outcome; their tasks rerun on the next leader), refuses every
    /// command from here on with [`Error::NotLeader`], waits until every command accepted
    /// before is committed or rejected, and marks the data directory as a mirror's. Returns
    /// the head then: nothing is written here after it, so the node that takes over must have
    /// applied exactly this head. Entries come in through [`Workspace::apply_replicated`]
    /// afterwards; [`Workspace::resume_leading`] undoes this while no other node leads.
    pub async fn step_down(&self) -> Result<cairn_log::Head, Error> {
        let inner = self.inner();
        if inner.role() != NodeRole::Leader {
            return Err(Error::NotLeader);
        }
        // The engine first: its last outcomes (a hook that just finished) are committed here
        // while this node still leads.
        self.stop_engine().await;
        inner.set_role(NodeRole::Mirror);
        // Every command that passed the role check is in the writer's queue already (they
        // enter it under the role's read lock); the writer takes requests in order, so once
        // an empty request is answered, every one before it has been.
        let fenced = match inner.store.submit_entries(Vec::new()).await {
            Ok(_) => mark_mirror(&inner.data.join(MIRROR_MARKER_FILE)),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = fenced {
            // Not stepped down after all (and without the marker a restart could lead again
            // beside a new leader): lead on.
            self.resume_leading().await?;
            return Err(e);
        }
        let head = self.head()?;
        tracing::warn!(
            offset = head.offset,
            epoch = head.epoch,
            "stepped down: this node no longer leads"
        );
        Ok(head)
    }

    /// Leads again after [`Workspace::step_down`] (a handoff that did not happen): removes the
    /// mirror marker and starts the change engine. Only while no other node was promoted in
    /// its place, or there would be two leaders.
    pub async fn resume_leading(&self) -> Result<(), Error> {
        let inner = self.inner();
        if inner.role() != NodeRole::Mirror {
            return Err(Error::NotMirror);
        }
        inner.set_role(NodeRole::Leader);
        remove_mirror_marker(&inner.data);
        tracing::warn!("leading again");
        self.start_leading(inner.drive).await
    }

    /// Turns this mirror into the leader of a new epoch (`cairn promote`): appends
    /// `epoch.started` (epoch = the log's + 1, naming `leader`) as the first entry written in
    /// it, removes the mirror marker, and starts leading: commands are decided here from now on,
    /// and the change engine resumes every change in progress. The caller must have stopped
    /// following the old leader first. Returns the commit of `epoch.started`.
    pub async fn promote(&self, leader: &str) -> Result<Committed, Error> {
        let inner = self.inner();
        if inner.role() != NodeRole::Mirror {
            return Err(Error::NotMirror);
        }
        let head = self.head()?;
        let epoch = head.epoch.max(1) + 1;
        let meta = Meta {
            actor: inner.actor.clone(),
            change: None,
            command: Uuid::new_v4(),
            idempotency_key: None,
        };
        let command = Command::StartEpoch {
            epoch,
            leader: leader.to_string(),
            prev_head: head.offset,
        };
        let committed = inner.store.submit_in_epoch(meta, command, epoch).await?;
        inner.set_role(NodeRole::Leader);
        remove_mirror_marker(&inner.data);
        tracing::warn!(
            epoch,
            offset = committed.offsets.start,
            "promoted: this node leads now"
        );
        self.start_leading(true).await?;
        Ok(committed)
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// Logs an accepted WAL loss that the store holds (`store.wal_loss_accepted.v1`), once:
    /// the idempotency key makes a retry after a crash write nothing.
    async fn record_accepted_wal_loss(&self) -> Result<(), Error> {
        let Some(damage) = self.inner().store.pending_wal_loss()? else {
            return Ok(());
        };
        let command = Command::AcceptWalLoss(cairn_kernel::event::WalLossAccepted {
            detected_ms: damage.detected_ms,
            recovered_offset: damage.recovered_offset,
            file: damage.file.clone(),
            byte: damage.byte,
            reason: damage.reason.clone(),
            lost_commits: damage.lost_commits,
            lost_through_offset: damage.lost_through_offset,
        });
        let opts = CommandOptions {
            actor: None,
            idempotency_key: Some(format!("wal-loss-accepted/{}", damage.detected_ms)),
        };
        let committed = self.execute(command, &opts).await?;
        self.inner().store.wal_loss_recorded()?;
        tracing::warn!(
            offset = committed.offsets.start,
            recovered_offset = damage.recovered_offset,
            lost_commits = damage.lost_commits,
            "recorded the accepted WAL loss in the log"
        );
        Ok(())
    }

    /// Accepts the WAL damage that keeps the (closed) workspace at `data` from opening: it
    /// continues from the offset its WAL replay recovered, and the lost commits are gone (copies
    /// of the damaged WAL files stay in the quarantine directory the damage names). The
    /// acceptance is logged (`store.wal_loss_accepted.v1`, by `options.actor`) before this
    /// returns; returns the damage and the offset of that entry.
    pub async fn accept_wal_loss(
        data: &Path,
        options: Options,
    ) -> Result<(cairn_store::WalDamage, u64), Error> {
        let path = data.to_path_buf();
        let damage =
            tokio::task::spawn_blocking(move || Store::<KernelMachine>::accept_wal_loss(&path))
                .await
                .map_err(|e| Error::Internal(format!("accept task failed: {e}")))??;
        let options = Options {
            drive: false,
            access: Access::ReadWrite,
            ..options
        };
        let ws = Workspace::open(data, options).await?;
        let recorded = ws.applied();
        ws.close().await;
        Ok((damage, recorded))
    }

    /// Lets the engine run `package`'s `onload` hook (with [`Onloads::Only`]; a no-op with
    /// [`Onloads::All`]).
    pub fn run_onload(&self, package: &str) {
        let mut onloads = self
            .inner()
            .onloads
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Onloads::Only(allowed) = &mut *onloads {
            allowed.insert(package.to_owned());
        }
        drop(onloads);
        self.inner().kick.notify_one();
    }

    /// Whether the store can commit (ok, degraded by failing writes, stopped, read-only).
    pub fn health(&self) -> cairn_store::WriterHealth {
        self.inner().store.health()
    }

    /// Stops the engine (running hooks are stopped and rerun at next open; nothing is
    /// recorded for them), then closes the store once no other clone of this handle and no
    /// subscription holds it.
    pub async fn close(self) {
        self.inner().shutdown.cancel();
        self.stop_engine().await;
        // Dropping the last handle closes the store (joins its writer): off the executor.
        let handle = self.handle;
        let _ = tokio::task::spawn_blocking(move || drop(handle)).await;
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner().data
    }

    /// The workspace id.
    pub fn id(&self) -> Uuid {
        self.inner().store.workspace_id()
    }

    /// The underlying store (for tools: verify, digest, backup).
    pub fn store(&self) -> &Store<KernelMachine> {
        &self.inner().store
    }

    /// Hook runs since open, by outcome.
    pub fn hook_runs(&self) -> HookRunStats {
        let n = |i: usize| self.inner().hook_runs.0[i].load(std::sync::atomic::Ordering::Relaxed);
        HookRunStats {
            succeeded: n(0),
            failed: n(1),
            timed_out: n(2),
            spawn_failed: n(3),
            cancelled: n(4),
        }
    }

    /// The applied offset of the latest commit.
    pub fn applied(&self) -> u64 {
        self.inner().store.applied()
    }

    /// A snapshot of the projection and log at the latest commit.
    pub fn view(&self) -> Result<ReadView, Error> {
        Ok(self.inner().store.read()?)
    }

    /// Waits until `offset` is applied.
    pub async fn wait_for(&self, offset: u64) -> Result<(), Error> {
        let mut rx = self.inner().applied.subscribe();
        tokio::select! {
            r = rx.wait_for(|a| *a >= offset) => r.map(|_| ()).map_err(|_| Error::Closed),
            _ = self.inner().shutdown.cancelled() => Err(Error::Closed),
        }
    }

    /// Submits a command and waits until it is committed (or rejected).
    pub async fn execute(
        &self,
        command: Command,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        execute(self.inner(), command, opts).await
    }

    /// Follows the log from `from` (1 = the beginning): catch-up from the log, then live.
    pub fn subscribe(&self, from: u64) -> Result<crate::subscribe::Subscription, Error> {
        crate::subscribe::Subscription::new(Arc::clone(self.inner()), from)
    }

    // --- changes -------------------------------------------------------------------------

    /// Starts installing a package from a validated manifest ([`manifest::parse`], or
    /// [`manifest::Validated::new`] for one built in code); returns the install change id.
    pub async fn install(
        &self,
        manifest: manifest::Validated,
        opts: &CommandOptions,
    ) -> Result<Uuid, Error> {
        let change = Uuid::new_v4();
        let c = self
            .execute(Command::Install { manifest, change }, opts)
            .await?;
        self.change_of(c, change)
    }

    /// Parses a TOML manifest and starts installing it.
    pub async fn install_toml(&self, text: &str, opts: &CommandOptions) -> Result<Uuid, Error> {
        let m = manifest::parse(text).map_err(|e| Error::Rejected(e.into()))?;
        self.install(m, opts).await
    }

    /// Starts uninstalling a package; returns the uninstall change id.
    pub async fn uninstall(
        &self,
        package: &str,
        keep: &[ResourceKind],
        strict: bool,
        opts: &CommandOptions,
    ) -> Result<Uuid, Error> {
        let change = Uuid::new_v4();
        let c = self
            .execute(
                Command::Uninstall {
                    package: package.to_string(),
                    keep: keep.to_vec(),
                    strict,
                    change,
                },
                opts,
            )
            .await?;
        self.change_of(c, change)
    }

    /// Starts connecting `plug` to `slot` (`(package, name)` each); returns the change id.
    pub async fn connect(
        &self,
        plug: (&str, &str),
        slot: (&str, &str),
        opts: &CommandOptions,
    ) -> Result<Uuid, Error> {
        let change = Uuid::new_v4();
        let command = Command::Connect {
            plug: (plug.0.into(), plug.1.into()),
            slot: (slot.0.into(), slot.1.into()),
            change,
        };
        let c = self.execute(command, opts).await?;
        self.change_of(c, change)
    }

    /// Starts disconnecting `plug` from `slot`; returns the change id.
    pub async fn disconnect(
        &self,
        plug: (&str, &str),
        slot: (&str, &str),
        opts: &CommandOptions,
    ) -> Result<Uuid, Error> {
        let change = Uuid::new_v4();
        let command = Command::Disconnect {
            plug: (plug.0.into(), plug.1.into()),
            slot: (slot.0.into(), slot.1.into()),
            change,
        };
        let c = self.execute(command, opts).await?;
        self.change_of(c, change)
    }

    /// Aborts a change: its running hook is cancelled, then it is undone.
    pub async fn abort(&self, change: Uuid, opts: &CommandOptions) -> Result<Committed, Error> {
        let c = self.execute(Command::Abort { change }, opts).await?;
        // A retried abort (same idempotency key) must not cancel the undo that the first one
        // started.
        if !c.replayed {
            crate::engine::cancel_running(self.inner(), change);
            // A change whose driver had stopped gets a new one to run its undo.
            crate::engine::unstick(self.inner(), change);
        }
        Ok(c)
    }

    /// Waits until the change is ready (done, undone or error) and returns it. Stopping the
    /// wait does not cancel the change; only `abort` does.
    pub async fn wait_change(&self, change: Uuid) -> Result<ChangeRecord, Error> {
        let mut rx = self.watch();
        loop {
            let c = query::change(&self.view()?, change)?.ok_or(Error::Rejected(
                cairn_kernel::Rejection::NotFound(cairn_kernel::Entity::Change(change)),
            ))?;
            if c.status.is_ready() {
                return Ok(c);
            }
            if self.stuck().0.contains(&change) {
                return Err(Error::Internal(format!(
                    "the driver of change {change} stopped on an error (see the log); it \
                     resumes at the next open, or abort it"
                )));
            }
            self.changed(&mut rx).await?;
        }
    }

    /// Waits until no change is in progress and the engine drives nothing (onload hooks
    /// excepted: they may run for as long as the package lives).
    ///
    /// Fails, instead of waiting forever, once every change still in progress has a driver
    /// that stopped on an error (such a change resumes at the next open).
    pub async fn wait_idle(&self) -> Result<(), Error> {
        let mut rx = self.watch();
        loop {
            let active = query::active_changes(&self.view()?)?;
            if active.is_empty() {
                return Ok(());
            }
            let (stuck, _) = self.stuck();
            if active.iter().all(|c| stuck.contains(&c.id)) {
                let ids: Vec<String> = active.iter().map(|c| c.id.to_string()).collect();
                return Err(Error::Internal(format!(
                    "the driver of change {} stopped on an error (see the log); it resumes at \
                     the next open",
                    ids.join(", ")
                )));
            }
            self.changed(&mut rx).await?;
        }
    }

    /// Waits until `package`'s `onload` hook is no longer pending or running (it finished, was
    /// cancelled, or the package is gone). Fails if its driver stopped on an error.
    pub async fn wait_onload(&self, package: &str) -> Result<(), Error> {
        let mut rx = self.watch();
        loop {
            if !query::onloads_wanted(&self.view()?)?
                .iter()
                .any(|w| w == package)
            {
                return Ok(());
            }
            if self.stuck().1.iter().any(|w| w == package) {
                return Err(Error::Internal(format!(
                    "the onload hook of {package} could not be driven (see the log); it runs \
                     again at the next open"
                )));
            }
            self.changed(&mut rx).await?;
        }
    }

    /// Receivers for what the waits above react to: a commit, or a driver stopping.
    fn watch(&self) -> (watch::Receiver<u64>, watch::Receiver<u64>) {
        (
            self.inner().applied.subscribe(),
            self.inner().stuck.subscribe(),
        )
    }

    /// Returns at the next commit or stopped driver after the receivers were last seen.
    async fn changed(
        &self,
        (applied, stuck): &mut (watch::Receiver<u64>, watch::Receiver<u64>),
    ) -> Result<(), Error> {
        tokio::select! {
            r = applied.changed() => r.map_err(|_| Error::Closed),
            r = stuck.changed() => r.map_err(|_| Error::Closed),
            _ = self.inner().shutdown.cancelled() => Err(Error::Closed),
        }
    }

    /// Changes and `onload`s whose driver stopped on an error in this process: they are not
    /// driven again until the workspace is next opened.
    pub fn stuck(&self) -> (Vec<Uuid>, Vec<String>) {
        crate::engine::stuck(self.inner())
    }

    /// The change id a change-starting command committed (the original one on an idempotent
    /// replay).
    fn change_of(&self, c: Committed, fresh: Uuid) -> Result<Uuid, Error> {
        if !c.replayed {
            return Ok(fresh);
        }
        let entries = self.view()?.read_log(c.offsets.start, 1)?;
        let entry = entries
            .first()
            .ok_or_else(|| Error::Internal("replayed command has no entry".into()))?;
        match Event::decode(&entry.kind, &entry.payload) {
            Ok(Event::InstallStarted(e)) => Ok(e.change.id),
            Ok(Event::UninstallStarted(e)) => Ok(e.change.id),
            Ok(Event::ChangeCreated(c)) => Ok(c.id),
            Ok(other) => Err(Error::Rejected(cairn_kernel::Rejection::Invalid(format!(
                "the idempotency key was already used by a different command (one that wrote \
                 {} at offset {}); use a fresh key",
                other.kind(),
                entry.offset
            )))),
            Err(e) => Err(Error::Internal(format!(
                "entry {} of a replayed command does not decode: {e}",
                entry.offset
            ))),
        }
    }

    // --- resources, features ---------------------------------------------------------------

    /// Sets a variable (`expect_revision`: 0 = must not exist, N = must be at revision N).
    pub async fn var_set(
        &self,
        owner: &str,
        key: &str,
        value: &[u8],
        expect_revision: Option<u64>,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::VarSet {
            owner: owner.into(),
            key: key.into(),
            value: value.to_vec(),
            expect_revision,
        };
        self.execute(command, opts).await
    }

    /// Deletes one or many variables in one event.
    pub async fn var_delete(
        &self,
        owner: &str,
        keys: &[&str],
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::VarDelete {
            owner: owner.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        };
        self.execute(command, opts).await
    }

    /// Appends items to a queue in one event.
    pub async fn queue_put(
        &self,
        owner: &str,
        queue: &str,
        items: Vec<Vec<u8>>,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::QueuePut {
            owner: owner.into(),
            queue: queue.into(),
            items,
        };
        self.execute(command, opts).await
    }

    /// Acknowledges (and deletes) queue items up to `upto`.
    pub async fn queue_ack(
        &self,
        owner: &str,
        queue: &str,
        upto: u64,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::QueueAck {
            owner: owner.into(),
            queue: queue.into(),
            upto,
        };
        self.execute(command, opts).await
    }

    /// Stores a secret: sealed with the workspace vault key (bound to `owner/vault`) before
    /// it is logged, so the log, the state and backups hold only ciphertext.
    pub async fn vault_set(
        &self,
        owner: &str,
        vault: &str,
        secret: &[u8],
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        if secret.len() > crate::vault::VAULT_VALUE_BYTES_MAX {
            return Err(Error::Rejected(cairn_kernel::Rejection::Invalid(format!(
                "secret for vault {vault:?} is {} bytes, over the limit of {}",
                secret.len(),
                crate::vault::VAULT_VALUE_BYTES_MAX
            ))));
        }
        let key = self.vault_key()?;
        let sealed = key.seal(secret, vault_aad(owner, vault).as_bytes());
        let command = Command::VaultSet {
            owner: owner.into(),
            vault: vault.into(),
            sealed,
        };
        self.execute(command, opts).await
    }

    /// Reads and opens a secret (`None` if the vault has no value).
    pub fn vault_get(&self, owner: &str, vault: &str) -> Result<Option<Vec<u8>>, Error> {
        let record = query::vault(&self.view()?, owner, vault)?.ok_or_else(|| {
            Error::Rejected(cairn_kernel::Rejection::NotFound(
                cairn_kernel::Entity::Resource(ResourceKind::Vaults, owner.into(), vault.into()),
            ))
        })?;
        let Some(sealed) = record.sealed else {
            return Ok(None);
        };
        Ok(Some(
            self.vault_key()?
                .open(&sealed, vault_aad(owner, vault).as_bytes())?,
        ))
    }

    fn vault_key(&self) -> Result<&VaultKey, Error> {
        self.inner().vault.as_ref().ok_or_else(|| {
            Error::Vault(crate::vault::VaultError::KeyMissing {
                path: self.inner().data.join(VAULT_KEY_FILE),
            })
        })
    }

    /// Every daemon record with this process's runtime facts about it (pid, start time,
    /// restarts; `None` where this process has not run it: a mirror, local mode).
    pub fn daemons(&self) -> Result<Vec<crate::daemons::DaemonListing>, Error> {
        let view = self.view()?;
        let mut runtime = crate::daemons::runtime(self.inner());
        let mut out = Vec::new();
        for r in query::all_resources(&view)? {
            if r.kind != ResourceKind::Daemons {
                continue;
            }
            if let Some(d) = query::daemon(&view, &r.owner, &r.name)? {
                let facts = runtime.remove(&(r.owner.clone(), r.name.clone()));
                out.push((r.owner, r.name, d, facts));
            }
        }
        Ok(out)
    }

    /// Runs a daemon again now, with a fresh restart history (also one marked failed). Only
    /// where daemons are supervised (the leader, with [`Options::daemons`]).
    pub async fn daemon_restart(&self, owner: &str, daemon: &str) -> Result<(), Error> {
        crate::daemons::restart(self.inner(), (owner.to_string(), daemon.to_string())).await
    }

    /// The last output of a daemon this process has run (at most
    /// [`crate::daemons::DAEMON_OUTPUT_BYTES_MAX`] bytes), or `None`.
    pub fn daemon_logs(&self, owner: &str, daemon: &str) -> Option<String> {
        crate::daemons::logs(self.inner(), &(owner.to_string(), daemon.to_string()))
    }

    /// Daemon starts, exits, restarts since open, and the daemons failed now.
    pub fn daemon_stats(&self) -> crate::daemons::DaemonStats {
        crate::daemons::stats(self.inner())
    }

    /// Sets a daemon's desired state.
    pub async fn daemon_set(
        &self,
        owner: &str,
        daemon: &str,
        desired: DaemonState,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::DaemonSet {
            owner: owner.into(),
            daemon: daemon.into(),
            desired,
            expect_revision: None,
        };
        self.execute(command, opts).await
    }

    /// Reports a daemon's observed state.
    pub async fn daemon_report(
        &self,
        owner: &str,
        daemon: &str,
        observed: DaemonState,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::DaemonReport {
            owner: owner.into(),
            daemon: daemon.into(),
            observed,
        };
        self.execute(command, opts).await
    }

    /// Changes a feature's state.
    pub async fn feature_set(
        &self,
        name: &str,
        state: FeatureState,
        expect_revision: Option<u64>,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::FeatureSet {
            name: name.into(),
            state,
            expect_revision,
        };
        self.execute(command, opts).await
    }

    /// Reports a feature's observed state.
    pub async fn feature_report(
        &self,
        name: &str,
        observed: FeatureState,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::FeatureReport {
            name: name.into(),
            observed,
        };
        self.execute(command, opts).await
    }

    /// Syncs a feature's scope.
    pub async fn feature_scope_sync(
        &self,
        name: &str,
        scope: Scope,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::FeatureScopeSync {
            name: name.into(),
            scope,
        };
        self.execute(command, opts).await
    }

    /// Appends an extension event (`ext.<app>.<name>.v<N>`).
    pub async fn ext(
        &self,
        kind: &str,
        payload: Vec<u8>,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        let command = Command::Ext {
            kind: kind.into(),
            payload,
        };
        self.execute(command, opts).await
    }

    // --- tokens ---------------------------------------------------------------------------

    /// Creates an API token and returns its secret (shown once; only its blake3 hash is
    /// logged and stored).
    pub async fn token_create(
        &self,
        name: &str,
        role: cairn_kernel::model::Role,
        opts: &CommandOptions,
    ) -> Result<(Committed, String), Error> {
        if opts.idempotency_key.is_some() {
            // A retry would return the first attempt's offsets but a new secret that matches
            // no stored hash.
            return Err(Error::Rejected(cairn_kernel::Rejection::Invalid(
                "token create cannot carry an idempotency key (its secret is shown only once)"
                    .into(),
            )));
        }
        let secret = crate::tokens::new_secret();
        let command = Command::TokenCreate {
            name: name.into(),
            role,
            hash: crate::tokens::hash_secret(&secret),
        };
        let c = self.execute(command, opts).await?;
        Ok((c, secret))
    }

    /// Revokes an API token.
    pub async fn token_revoke(
        &self,
        name: &str,
        opts: &CommandOptions,
    ) -> Result<Committed, Error> {
        self.execute(Command::TokenRevoke { name: name.into() }, opts)
            .await
    }

    /// The live token whose secret this is, if any.
    pub fn authenticate(
        &self,
        secret: &str,
    ) -> Result<Option<cairn_kernel::records::TokenRecord>, Error> {
        let hash = crate::tokens::hash_secret(secret);
        Ok(query::token_by_hash(&self.view()?, &hash)?)
    }

    /// Whether this workspace is a leader or a mirror.
    pub fn role(&self) -> NodeRole {
        self.inner().role()
    }

    /// Applies entries written by this mirror's leader, in one commit: they must continue this
    /// log's chain (offset, link, hash, epoch), and are folded through the same `apply` as on
    /// the leader. Only a mirror takes them ([`Error::NotMirror`] otherwise). Returns the
    /// commit.
    pub async fn apply_replicated(&self, entries: Vec<StoredEntry>) -> Result<Committed, Error> {
        Ok(self.mirror_store()?.submit_entries(entries).await?)
    }

    /// [`Workspace::apply_replicated`] of entries whose hashes are verified (as a follower
    /// checked them, with the bytes it received, which are stored as they are), without
    /// waiting: the entries are queued for the store's writer, which checks their links, and
    /// the ticket (waited for from a thread, or awaited) answers once they are committed.
    /// Tickets of one caller are answered in the order submitted, and a commit that fails
    /// makes every later submission that continued it fail too: its entries no longer
    /// continue the log.
    pub fn submit_replicated(
        &self,
        entries: Vec<cairn_log::VerifiedEntry>,
    ) -> Result<cairn_store::Ticket<Committed, cairn_store::StoreError>, Error> {
        Ok(self.mirror_store()?.submit_verified(entries))
    }

    /// The store, for entries from this mirror's leader: only a mirror takes them, and only
    /// while open.
    fn mirror_store(&self) -> Result<&Store<KernelMachine>, Error> {
        let inner = self.inner();
        if inner.role() != NodeRole::Mirror {
            return Err(Error::NotMirror);
        }
        if inner.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        Ok(&inner.store)
    }

    /// The head of the log (offset, hash and epoch of its last entry).
    pub fn head(&self) -> Result<cairn_log::Head, Error> {
        Ok(self.inner().store.read()?.head())
    }

    /// Reads log entries `[from, from + limit)`.
    pub async fn read_log(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, Error> {
        let inner = Arc::clone(self.inner());
        tokio::task::spawn_blocking(move || Ok(inner.store.read()?.read_log(from, limit)?))
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }

    /// The stored bytes of entries from `from` on (at least one when `from` is applied, then
    /// up to `bytes_max` of what `write` appends in all), not decoded: what a leader streams to
    /// its mirrors, which verify every entry. Each entry's bytes are handed to `write`, which
    /// appends them (framed, say) to `buf`, so a stream's chunk is built without an allocation
    /// per entry; `buf` comes back in [`LogBytes::bytes`] (what it held before stays in front).
    /// A missing entry is an integrity error with its offset; below the first retained offset
    /// is `Compacted`.
    pub async fn read_log_into(
        &self,
        from: u64,
        bytes_max: usize,
        mut buf: Vec<u8>,
        write: fn(&[u8], &mut Vec<u8>),
    ) -> Result<LogBytes, Error> {
        let inner = Arc::clone(self.inner());
        tokio::task::spawn_blocking(move || {
            let view = inner.store.read()?;
            let mut starts = Vec::new();
            let base = buf.len();
            let mut last = None;
            let visited = view.visit_log_raw(from, |offset, v| {
                starts.push(buf.len());
                write(v, &mut buf);
                last = Some(offset);
                buf.len() - base < bytes_max
            });
            match visited {
                Ok(()) => {}
                Err(cairn_store::StoreError::Compacted { requested, first }) => {
                    return Err(Error::Compacted { requested, first })
                }
                Err(e) => return Err(e.into()),
            }
            let head = view.head();
            Ok(LogBytes {
                bytes: buf,
                starts,
                first: from,
                head: (last == Some(head.offset)).then_some(head),
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }
}

/// Entries read by [`Workspace::read_log_into`], one after the other in one buffer.
#[derive(Debug)]
pub struct LogBytes {
    /// The buffer, with what `write` appended for each entry.
    pub bytes: Vec<u8>,
    /// Where each entry's bytes start in `bytes` (entry `first + i` at `starts[i]`; none when
    /// nothing was committed at `first`).
    pub starts: Vec<usize>,
    /// The offset asked for.
    pub first: u64,
    /// The head of the log as the read saw it, when the read reached it: the last entry read
    /// ends a commit.
    pub head: Option<cairn_log::Head>,
}

/// The file that marks a data directory as a mirror's: a leader-role open that could write
/// refuses it, so a mirror's log never gets an entry of its own by mistake (a later entry
/// from its leader would then not continue it).
pub const MIRROR_MARKER_FILE: &str = "mirror";

/// Creates the mirror marker, durably (the file and its directory entry).
fn mark_mirror(marker: &Path) -> Result<(), Error> {
    let failed = |e: std::io::Error| {
        Error::Store(cairn_store::StoreError::io(
            format!("mark {} as a mirror", marker.display()),
            e,
        ))
    };
    let mut file = std::fs::File::create(marker).map_err(failed)?;
    std::io::Write::write_all(
        &mut file,
        b"this data directory is a mirror: it takes entries from its leader only\n",
    )
    .map_err(failed)?;
    file.sync_all().map_err(failed)?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// Removes the mirror marker (a node that leads now).
fn remove_mirror_marker(data: &Path) {
    let marker = data.join(MIRROR_MARKER_FILE);
    if let Err(e) = std::fs::remove_file(&marker) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %marker.display(), error = %e, "could not remove the mirror marker");
        }
    }
}

/// Removes scratch directories (`.scratch-*`) an interrupted audit, backup stream or replay
/// left in the data directory. Called under the workspace lock, so none is in use.
fn remove_stale_scratch(data: &Path) {
    let Ok(entries) = std::fs::read_dir(data) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".scratch-") {
            tracing::info!(path = %entry.path().display(), "removing a stale scratch directory");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The associated data a vault's sealed value is bound to.
fn vault_aad(owner: &str, vault: &str) -> String {
    format!("vault/{owner}/{vault}")
}

/// Submits a command through the store and publishes the new applied offset.
pub(crate) async fn execute(
    inner: &Arc<Inner>,
    command: Command,
    opts: &CommandOptions,
) -> Result<Committed, Error> {
    if inner.shutdown.is_cancelled() {
        return Err(Error::Closed);
    }
    if let Some(key) = &opts.idempotency_key {
        if key.is_empty() || key.len() > cairn_kernel::command::IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(Error::Rejected(cairn_kernel::Rejection::Invalid(format!(
                "idempotency key must be 1..={} bytes",
                cairn_kernel::command::IDEMPOTENCY_KEY_BYTES_MAX
            ))));
        }
    }
    let meta = Meta {
        actor: opts.actor.clone().unwrap_or_else(|| inner.actor.clone()),
        change: change_in(&command),
        command: Uuid::new_v4(),
        idempotency_key: opts.idempotency_key.clone(),
    };
    let ticket = {
        // Checked and queued under the role's read lock (see `Workspace::step_down`).
        let role = inner.role.read().unwrap_or_else(|p| p.into_inner());
        if *role == NodeRole::Mirror {
            return Err(Error::NotLeader);
        }
        inner.store.submit(meta, command)
    };
    let committed = ticket.await?;
    // The store's listener has published `applied` already (see `Workspace::open`).
    inner.kick.notify_one();
    Ok(committed)
}

/// The change a command belongs to (recorded in the entries' meta).
fn change_in(command: &Command) -> Option<Uuid> {
    match command {
        Command::Install { change, .. }
        | Command::Uninstall { change, .. }
        | Command::Connect { change, .. }
        | Command::Disconnect { change, .. }
        | Command::Abort { change }
        | Command::TaskRun { change, .. }
        | Command::HookStart { change, .. }
        | Command::HookFinish { change, .. } => Some(*change),
        _ => None,
    }
}

/// A recorded hook result from a runtime hook report.
pub(crate) fn hook_result(report: &crate::hooks::HookReport) -> Option<HookResult> {
    use crate::hooks::HookOutcome as R;
    use cairn_kernel::HookOutcome as K;
    let (outcome, message) = match &report.outcome {
        R::Succeeded => (K::Succeeded, String::new()),
        R::Failed => (K::Failed, String::new()),
        R::TimedOut => (K::TimedOut, "timed out".to_string()),
        R::SpawnFailed(m) => (K::SpawnFailed, m.clone()),
        R::Cancelled => return None,
    };
    Some(HookResult {
        outcome,
        exit: report.exit,
        signal: report.signal,
        duration_ms: report.duration_ms,
        stdout_tail: report.stdout_tail.clone(),
        stderr_tail: report.stderr_tail.clone(),
        message,
    })
}
