//! `Service`: runs a [`Request`] against an open workspace and answers with the JSON value
//! both the CLI and the HTTP API print. Every validation of text arguments (states, roles,
//! keep kinds, `pkg:name` ends, change ids) happens here, once, before anything is submitted.

use std::sync::Arc;
use std::time::Instant;

use cairn::kernel::echo::echo;
use cairn::kernel::model::{DaemonState, FeatureState, ResourceKind, Role};
use cairn::kernel::records::{OnloadState, PackageRecord, PackageStatus};
use cairn::kernel::{query, ChangeRecord, Event};
use cairn::{CommandOptions, Workspace};
use cairn_log::{hex, Hash, StoredEntry};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{codes, ApiError, Request};
use crate::metrics::Metrics;

/// Most entries one `log show` returns.
pub const LOG_SHOW_LIMIT_MAX: u64 = 10_000;
/// Most items one `queue read` returns.
pub const QUEUE_READ_LIMIT_MAX: u64 = 10_000;
/// Payload bytes after which `log show` and `queue read` stop adding entries or items (at
/// least one is always returned), so one request cannot make the server build gigabytes.
pub const READ_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Who sends a request: the actor its entries record, and the token (name and role) the
/// Drive's permissions are checked against.
#[derive(Clone, Debug)]
pub struct Caller {
    actor: String,
    drive: cairn::kernel::drive::DriveActor,
}

impl Caller {
    /// The local CLI (or an embedder's tool): a workspace admin, recorded as `actor`.
    pub fn local(actor: &str) -> Self {
        Self {
            actor: actor.to_string(),
            drive: cairn::kernel::drive::DriveActor::admin(actor),
        }
    }

    /// A bearer token, recorded as `token:NAME`.
    pub fn token(name: &str, role: Role) -> Self {
        Self {
            actor: format!("token:{name}"),
            drive: cairn::kernel::drive::DriveActor {
                token: name.to_string(),
                role,
            },
        }
    }

    /// The actor recorded in the entries its commands write.
    pub fn actor(&self) -> &str {
        &self.actor
    }
}

/// Runs requests against one workspace. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    ws: Workspace,
    metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down: requests waiting for a change stop waiting.
    shutdown: CancellationToken,
    /// One audit at a time (each replays the whole log).
    audit: Arc<tokio::sync::Mutex<()>>,
    /// This node's part in replication (a mirror's becomes a leader's at `promote`).
    replication: Arc<std::sync::RwLock<Replication>>,
    /// A mirror's follower, stopped at `promote`.
    follower: Arc<std::sync::Mutex<Option<cairn_mirror::FollowerHandle>>>,
    /// Synchronous mirrors: a command is answered once this many mirrors applied it.
    sync_mirrors: SyncMirrors,
    /// The mirror a handoff in progress hands off to: commands answer 503 `handing_off`.
    handing_off: Arc<std::sync::Mutex<Option<String>>>,
    /// Ends the replication streams this node serves as leader (cancelled when it hands off,
    /// so that its mirrors reconnect and learn of the new leader). A child of `shutdown`.
    streams: Arc<std::sync::Mutex<CancellationToken>>,
    /// Promotions run one at a time; the last one a handoff asked for is remembered.
    promotion: Arc<tokio::sync::Mutex<Option<Promoted>>>,
}

/// What `promote` is asked to make sure of first (a handoff's conditions).
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// This mirror's head must be this offset.
    pub offset: Option<u64>,
    /// ... with this hash (hex).
    pub hash: Option<String>,
    /// The handoff asking: a repeat of the same id gets the first answer.
    pub handoff: Option<String>,
}

impl Expect {
    /// `not_at_head` unless `head` is what is expected; nothing is changed then.
    fn check(&self, head: &cairn_log::Head) -> Result<(), ApiError> {
        let offset_ok = self.offset.is_none_or(|o| o == head.offset);
        let hash_ok = match self.hash.as_deref() {
            None => true,
            Some(h) => cairn_mirror::protocol::parse_hash(h) == Some(head.hash),
        };
        if offset_ok && hash_ok {
            return Ok(());
        }
        Err(ApiError::new(
            codes::NOT_AT_HEAD,
            format!(
                "this mirror's head is offset {} (hash {}), not the expected offset {} (hash \
                 {}); not promoted",
                head.offset,
                head.hash,
                self.offset.map(|o| o.to_string()).unwrap_or("any".into()),
                self.hash
                    .as_deref()
                    .map(|h| echo(h).to_string())
                    .unwrap_or("any".into()),
            ),
        ))
    }
}

/// A promotion a handoff asked for, and its answer.
pub(crate) struct Promoted {
    handoff: String,
    answer: Value,
}

/// Held while a handoff runs; clears the service's `handing_off` when dropped.
pub(crate) struct HandoffSlot(Arc<std::sync::Mutex<Option<String>>>);

impl Drop for HandoffSlot {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// `cairn serve --sync-mirrors K --sync-timeout-ms T`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncMirrors {
    /// Mirrors that must have durably applied a command before it is answered (0: none).
    pub count: usize,
    /// How long a command waits for them before it answers 503 `not_replicated`.
    pub timeout_ms: u64,
}

/// The default of `--sync-timeout-ms`.
pub const SYNC_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// A node's part in replication, as the service sees it.
#[derive(Clone)]
pub enum Replication {
    /// A leader, with the table of the mirrors it streams to.
    Leader(Arc<cairn_mirror::Mirrors>),
    /// A mirror, with its follower's status.
    Mirror(cairn_mirror::StatusWatch),
    /// A former leader that stepped down in a handoff to `to` and follows no one (the outcome
    /// was unknown, or following failed to start): it takes no writes.
    SteppedDown {
        /// The mirror it handed off to.
        to: String,
    },
}

impl Service {
    /// A service over an open workspace, as its leader.
    pub fn new(ws: Workspace) -> Self {
        Self::with_replication(ws, Replication::Leader(Arc::default()))
    }

    /// A service over a workspace opened as a mirror (`cairn::NodeRole::Mirror`) and its
    /// running follower: reads are served here; the HTTP layer forwards commands to the
    /// leader. `promote` stops the follower and makes this node the leader.
    pub fn mirror(ws: Workspace, follower: cairn_mirror::FollowerHandle) -> Self {
        let svc = Self::with_replication(ws, Replication::Mirror(follower.watch()));
        *svc.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(follower);
        svc
    }

    fn with_replication(ws: Workspace, replication: Replication) -> Self {
        let shutdown = CancellationToken::new();
        Self {
            ws,
            metrics: Arc::new(Metrics::default()),
            streams: Arc::new(std::sync::Mutex::new(shutdown.child_token())),
            shutdown,
            audit: Arc::default(),
            replication: Arc::new(std::sync::RwLock::new(replication)),
            follower: Arc::default(),
            sync_mirrors: SyncMirrors::default(),
            handing_off: Arc::default(),
            promotion: Arc::default(),
        }
    }

    /// The mirror a handoff in progress hands off to (commands are refused meanwhile).
    pub fn handing_off(&self) -> Option<String> {
        self.handing_off
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks a handoff to `to` as running, unless one runs already.
    pub(crate) fn claim_handoff(&self, to: &str) -> Result<HandoffSlot, ApiError> {
        let mut slot = self.handing_off.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = &*slot {
            return Err(ApiError::new(
                "invalid_state",
                format!("a handoff to {} is in progress", echo(other)),
            ));
        }
        *slot = Some(to.to_string());
        Ok(HandoffSlot(Arc::clone(&self.handing_off)))
    }

    /// The token that ends the replication streams this node serves as leader.
    pub fn stream_stop(&self) -> CancellationToken {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a handoff: this node follows with `follower`; the streams it served end.
    pub(crate) fn become_mirror(&self, follower: cairn_mirror::FollowerHandle) {
        *self.replication.write().unwrap_or_else(|p| p.into_inner()) =
            Replication::Mirror(follower.watch());
        *self.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(follower);
        self.end_streams();
    }

    /// After a handoff that could not finish: this node neither leads nor follows.
    pub(crate) fn step_aside(&self, to: &str) {
        *self.replication.write().unwrap_or_else(|p| p.into_inner()) =
            Replication::SteppedDown { to: to.to_string() };
        self.end_streams();
    }

    /// Ends the replication streams this node serves now (their followers reconnect).
    pub(crate) fn end_streams(&self) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.cancel();
        *streams = self.shutdown.child_token();
    }

    /// Stops a mirror's follower (when the server stops); waits for its thread.
    pub async fn stop_follower(&self) {
        let follower = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(f) = follower {
            let _ = tokio::task::spawn_blocking(move || f.stop()).await;
        }
    }

    /// `cairn promote`: stops following, appends `epoch.started` and leads from now on. With
    /// `expect` (a handoff), only if this mirror's head is exactly that offset and hash, and
    /// once per handoff id: a handoff that did not hear the answer asks again with the same id
    /// and gets the same answer (promotions run one at a time, so a repeat waits for the first).
    async fn promote(&self, name: Option<String>, expect: Expect) -> Result<Value, ApiError> {
        // On its own task: a caller that goes away mid-promotion does not cut it short.
        let svc = self.clone();
        tokio::spawn(async move { svc.promote_here(name, expect).await })
            .await
            .unwrap_or_else(|e| {
                Err(ApiError::new(
                    codes::INTERNAL,
                    format!("the promotion task failed: {e}"),
                ))
            })
    }

    async fn promote_here(&self, name: Option<String>, expect: Expect) -> Result<Value, ApiError> {
        let mut last = self.promotion.lock().await;
        if let (Some(id), Some(done)) = (&expect.handoff, &*last) {
            if &done.handoff == id {
                return Ok(done.answer.clone());
            }
        }
        if self.ws.role() != cairn::NodeRole::Mirror {
            return Err(ApiError::new(
                codes::ALREADY_LEADER,
                "this node is the leader already; only a mirror is promoted",
            ));
        }
        let name = match name {
            Some(n) if n.is_empty() || n.len() > cairn_mirror::protocol::MIRROR_NAME_BYTES_MAX => {
                return Err(ApiError::bad(format!(
                    "the leader name must be 1..={} bytes",
                    cairn_mirror::protocol::MIRROR_NAME_BYTES_MAX
                )))
            }
            Some(n) => n,
            None => "promoted".to_string(),
        };
        expect.check(&self.ws.head()?)?;
        let options = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.options().clone());
        self.stop_follower().await;
        // The follower may have applied more before it stopped: then follow on, unpromoted.
        if let Err(e) = expect.check(&self.ws.head()?) {
            if let Some(options) = options {
                match cairn_mirror::start(
                    self.ws.clone(),
                    tokio::runtime::Handle::current(),
                    options,
                ) {
                    Ok(f) => *self.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(f),
                    Err(error) => tracing::error!(%error, "could not follow the leader again"),
                }
            }
            return Err(e);
        }
        let promoted = self.ws.promote(&name).await;
        if self.ws.role() == cairn::NodeRole::Leader {
            // `epoch.started` is committed (even if starting to lead failed after it).
            *self.replication.write().unwrap_or_else(|p| p.into_inner()) =
                Replication::Leader(Arc::default());
        }
        let committed = promoted?;
        let head = self.ws.head()?;
        let answer = json!({
            "role": "leader",
            "epoch": head.epoch,
            "offset": committed.offsets.start,
            "leader": name,
        });
        if let Some(handoff) = expect.handoff {
            *last = Some(Promoted {
                handoff,
                answer: answer.clone(),
            });
        }
        Ok(answer)
    }

    /// Answers commands only once `sync.count` mirrors have applied them (a leader's option).
    pub fn with_sync_mirrors(mut self, sync: SyncMirrors) -> Self {
        self.sync_mirrors = sync;
        self
    }

    /// The synchronous-mirror setting.
    pub fn sync_mirrors(&self) -> SyncMirrors {
        self.sync_mirrors
    }

    /// This node's part in replication, now.
    pub fn replication(&self) -> Replication {
        self.replication
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The token whose cancellation makes waiting requests answer `503 unavailable` at once
    /// (the server cancels it when it starts shutting down).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The request counters `/metrics` reports.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs one request for `caller` (its actor is recorded in the entries it writes).
    pub async fn handle(&self, req: Request, caller: &Caller) -> Result<Value, ApiError> {
        self.handle_keyed(req, caller, None).await
    }

    /// Runs one request with an idempotency key: a command retried with a key seen before
    /// (the last 100 000 are remembered) writes nothing and answers with the original
    /// offsets (`"replayed": true`), or the original change.
    pub async fn handle_keyed(
        &self,
        req: Request,
        caller: &Caller,
        idempotency_key: Option<String>,
    ) -> Result<Value, ApiError> {
        let actor = caller.actor();
        let opts = CommandOptions {
            actor: Some(actor.to_string()),
            // Keys are scoped to the actor (the token), so one client cannot make another's
            // write look like a retry.
            idempotency_key: idempotency_key.map(|k| format!("{actor}/{k}")),
        };
        let is_command = !req.is_read();
        let started = Instant::now();
        let result = if is_command || matches!(req, Request::AuditVerify | Request::LogShow { .. })
        {
            self.run(req, caller, &opts).await
        } else {
            // Reads scan RocksDB (listings, queue items): on the blocking pool, never on the
            // executor's workers.
            let svc = self.clone();
            let caller = caller.clone();
            let rt = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || rt.block_on(svc.run(req, &caller, &opts)))
                .await
                .map_err(|e| ApiError::new(codes::INTERNAL, format!("read task failed: {e}")))?
        };
        let result = match (result, &self.replication()) {
            (Err(e), Replication::Mirror(follower)) if e.code == codes::NOT_LEADER => {
                Err(ApiError::new(
                    codes::NOT_LEADER,
                    format!(
                        "this node is a mirror of {}; send commands to the leader",
                        follower.get().leader
                    ),
                ))
            }
            (Err(e), Replication::SteppedDown { to }) if e.code == codes::NOT_LEADER => {
                Err(ApiError::new(
                    codes::NOT_LEADER,
                    format!(
                        "this node stepped down in a handoff to {to} and takes no writes; send \
                         commands to the leader"
                    ),
                ))
            }
            (result, _) => result,
        };
        if is_command {
            self.metrics
                .command(started.elapsed(), result.as_ref().err());
        }
        result
    }

    /// Each mirror's applied offset and lag: in entries, and in milliseconds since the
    /// oldest entry it does not have was committed (0 when it has them all).
    async fn mirrors_json(
        &self,
        mirrors: &cairn_mirror::Mirrors,
        head: u64,
    ) -> Result<Vec<Value>, ApiError> {
        let now = cairn_mirror::leader::now_ms();
        let mut out = Vec::new();
        for m in mirrors.list() {
            let lag_ms = if m.applied_offset < head {
                let oldest = self.ws.read_log(m.applied_offset + 1, 1).await?;
                oldest
                    .first()
                    .map(|e| now.saturating_sub(e.time_ms))
                    .unwrap_or(0)
            } else {
                0
            };
            out.push(json!({
                "name": m.name,
                "applied_offset": m.applied_offset,
                "lag_entries": head.saturating_sub(m.applied_offset),
                "lag_ms": lag_ms,
                "connected": m.streams > 0,
                "last_contact_ms": m.last_contact_ms,
            }));
        }
        Ok(out)
    }

    async fn run(
        &self,
        req: Request,
        caller: &Caller,
        opts: &CommandOptions,
    ) -> Result<Value, ApiError> {
        let ws = &self.ws;
        match req {
            Request::Drive(d) => crate::drive::run(ws, &caller.drive, d, opts).await,
            Request::Status => {
                let view = ws.view()?;
                let head = view.head();
                let mut status = json!({
                    "role": "leader",
                    "workspace_id": ws.id().to_string(),
                    "applied_offset": view.applied(),
                    "epoch": head.epoch.max(1),
                    "leader": Value::Null,
                    "lag": 0,
                });
                match &self.replication() {
                    Replication::Leader(mirrors) => {
                        status["mirrors"] =
                            Value::Array(self.mirrors_json(mirrors, view.applied()).await?);
                    }
                    Replication::SteppedDown { to } => {
                        status["role"] = json!("stepped_down");
                        status["leader"] = json!(to);
                        status["handoff"] = json!(format!(
                            "stepped down in a handoff to {to} whose end is not known here; \
                             restart this node as a mirror of the leader, or promote it"
                        ));
                    }
                    Replication::Mirror(follower) => {
                        let f = follower.get();
                        status["role"] = json!("mirror");
                        status["leader"] = json!(f.leader);
                        status["lag"] = json!(f.leader_head.saturating_sub(view.applied()));
                        status["follow"] = serde_json::to_value(&f).unwrap_or(Value::Null);
                    }
                }
                if let (Some(status), Value::Object(writer)) =
                    (status.as_object_mut(), writer_json(&ws.health()))
                {
                    status.extend(writer);
                }
                Ok(status)
            }
            Request::PkgInstall { manifest, wait } => {
                let change = ws.install_toml(&manifest, opts).await?;
                self.change_result(change, wait).await
            }
            Request::PkgUninstall {
                name,
                keep,
                strict,
                wait,
            } => {
                let keep = parse_keep(&keep)?;
                let change = ws.uninstall(&name, &keep, strict, opts).await?;
                self.change_result(change, wait).await
            }
            Request::PkgList => {
                let pkgs = query::packages(&ws.view()?)?;
                Ok(Value::Array(
                    pkgs.iter()
                        .map(|p| {
                            json!({
                                "name": p.manifest.name,
                                "version": p.manifest.version,
                                "status": p.status.name(),
                            })
                        })
                        .collect(),
                ))
            }
            Request::PkgShow { name } => {
                let view = ws.view()?;
                let p = query::package(&view, &name)?
                    .ok_or_else(|| not_found(format!("package {} does not exist", echo(&name))))?;
                package_json(&view, &p)
            }
            Request::VarSet {
                pkg,
                key,
                value,
                expect_revision,
            } => committed(
                ws.var_set(&pkg, &key, value.as_bytes(), expect_revision, opts)
                    .await?,
            ),
            Request::VarGet { pkg, key } => {
                let v = query::var(&ws.view()?, &pkg, &key)?.ok_or_else(|| {
                    not_found(format!(
                        "var {} of package {} does not exist",
                        echo(&key),
                        echo(&pkg)
                    ))
                })?;
                Ok(json!({
                    "pkg": pkg,
                    "key": key,
                    "value": bytes_json(&v.value),
                    "revision": v.revision,
                    "kept_from": v.kept_from,
                }))
            }
            Request::VarDel { pkg, key } => committed(ws.var_delete(&pkg, &[&key], opts).await?),
            Request::VarList { pkg } => {
                let view = ws.view()?;
                if query::package(&view, &pkg)?.is_none() && query::vars(&view, &pkg)?.is_empty() {
                    return Err(not_found(format!("package {} does not exist", echo(&pkg))));
                }
                Ok(Value::Array(
                    query::vars(&view, &pkg)?
                        .into_iter()
                        .map(|(key, v)| {
                            json!({
                                "key": key,
                                "value": bytes_json(&v.value),
                                "revision": v.revision,
                                "kept_from": v.kept_from,
                            })
                        })
                        .collect(),
                ))
            }
            Request::QueuePut { pkg, queue, items } => committed(
                ws.queue_put(
                    &pkg,
                    &queue,
                    items.into_iter().map(String::into_bytes).collect(),
                    opts,
                )
                .await?,
            ),
            Request::QueueRead {
                pkg,
                queue,
                from,
                limit,
            } => {
                let view = ws.view()?;
                query::queue(&view, &pkg, &queue)?.ok_or_else(|| {
                    not_found(format!(
                        "queue {} of package {} does not exist",
                        echo(&queue),
                        echo(&pkg)
                    ))
                })?;
                let limit = limit.clamp(1, QUEUE_READ_LIMIT_MAX) as usize;
                let items =
                    query::queue_items_bounded(&view, &pkg, &queue, from, limit, READ_BYTES_MAX)?;
                Ok(Value::Array(
                    items
                        .iter()
                        .map(|(seq, item)| json!({"seq": seq, "item": bytes_json(item)}))
                        .collect(),
                ))
            }
            Request::QueueAck { pkg, queue, upto } => {
                committed(ws.queue_ack(&pkg, &queue, upto, opts).await?)
            }
            Request::VaultSet { pkg, vault, secret } => {
                committed(ws.vault_set(&pkg, &vault, secret.as_bytes(), opts).await?)
            }
            Request::VaultGet { pkg, vault } => {
                let secret = ws.vault_get(&pkg, &vault)?;
                Ok(json!({
                    "pkg": pkg,
                    "vault": vault,
                    "secret": secret.as_deref().map(bytes_json),
                }))
            }
            Request::DaemonList => daemon_list(ws),
            Request::DaemonSet { pkg, name, state } => {
                let desired = match state.as_str() {
                    "enabled" => DaemonState::Enabled,
                    "disabled" => DaemonState::Disabled,
                    other => {
                        return Err(ApiError::new(
                            "invalid",
                            format!(
                                "unknown daemon state {} (one of enabled, disabled)",
                                echo(other)
                            ),
                        ))
                    }
                };
                committed(ws.daemon_set(&pkg, &name, desired, opts).await?)
            }
            Request::DaemonRestart { pkg, name } => {
                ws.daemon_restart(&pkg, &name).await?;
                Ok(json!({"package": pkg, "name": name, "restarted": true}))
            }
            Request::DaemonLogs { pkg, name } => {
                if !ws.daemon_stats().supervising {
                    return Err(cairn::Error::NotSupervised.into());
                }
                if query::daemon(&ws.view()?, &pkg, &name)?.is_none() {
                    return Err(not_found(format!(
                        "daemon {}:{} does not exist",
                        echo(&pkg),
                        echo(&name)
                    )));
                }
                let tail = ws.daemon_logs(&pkg, &name).unwrap_or_default();
                Ok(json!({"package": pkg, "name": name, "tail": tail}))
            }
            Request::FeatureList => {
                let features = query::features(&ws.view()?)?;
                Ok(Value::Array(
                    features
                        .iter()
                        .map(|f| {
                            json!({
                                "name": f.name,
                                "owner": f.owner,
                                "state": f.state.as_str(),
                                "observed": f.observed.map(|o| o.as_str()),
                                "auto_restart": f.auto_restart,
                                "scope": {"global": f.scope.global, "per_instance": f.scope.per_instance},
                                "revision": f.revision,
                            })
                        })
                        .collect(),
                ))
            }
            Request::FeatureSet {
                name,
                state,
                expect_revision,
            } => {
                let state = parse_feature_state(&state)?;
                committed(ws.feature_set(&name, state, expect_revision, opts).await?)
            }
            Request::FeatureReport { name, state } => {
                let state = parse_feature_state(&state)?;
                committed(ws.feature_report(&name, state, opts).await?)
            }
            Request::IfaceConnect { plug, slot, wait } => {
                let (plug, slot) = (parse_end("plug", &plug)?, parse_end("slot", &slot)?);
                let change = ws
                    .connect((&plug.0, &plug.1), (&slot.0, &slot.1), opts)
                    .await?;
                self.change_result(change, wait).await
            }
            Request::IfaceDisconnect { plug, slot, wait } => {
                let (plug, slot) = (parse_end("plug", &plug)?, parse_end("slot", &slot)?);
                let change = ws
                    .disconnect((&plug.0, &plug.1), (&slot.0, &slot.1), opts)
                    .await?;
                self.change_result(change, wait).await
            }
            Request::IfaceList => {
                let conns = query::connections(&ws.view()?)?;
                Ok(Value::Array(
                    conns
                        .iter()
                        .map(|c| {
                            json!({
                                "plug": format!("{}:{}", c.plug.0, c.plug.1),
                                "slot": format!("{}:{}", c.slot.0, c.slot.1),
                                "interface": c.interface,
                                "auto": c.auto,
                                "revision": c.revision,
                            })
                        })
                        .collect(),
                ))
            }
            Request::ChangeList => {
                let changes = query::changes(&ws.view()?)?;
                Ok(Value::Array(changes.iter().map(change_json).collect()))
            }
            Request::ChangeShow { id } => {
                let id = parse_change_id(&id)?;
                let c = query::change(&ws.view()?, id)?
                    .ok_or_else(|| not_found(format!("change {id} does not exist")))?;
                Ok(change_json(&c))
            }
            Request::ChangeAbort { id } => {
                let id = parse_change_id(&id)?;
                let c = ws.abort(id, opts).await?;
                let record = self.wait_change(id).await?;
                let mut out = change_json(&record);
                out["applied"] = json!(c.applied);
                Ok(out)
            }
            Request::LogShow { from, limit, kind } => {
                let limit = limit.clamp(1, LOG_SHOW_LIMIT_MAX);
                self.log_show(from.max(1), limit, kind).await
            }
            Request::StateDigest => {
                let d = ws.view()?.digest()?;
                Ok(json!({"applied_offset": d.applied, "digest": d.hash.to_string()}))
            }
            Request::AuditVerify => {
                // Held by the replay itself, so a client that goes away does not free it.
                let one_at_a_time = Arc::clone(&self.audit).lock_owned().await;
                let ws = ws.clone();
                let report = tokio::task::spawn_blocking(move || {
                    let _held = one_at_a_time;
                    cairn::tools::audit_verify(&ws, &mut |_| {})
                })
                .await
                .map_err(|e| ApiError::new(codes::INTERNAL, format!("audit task failed: {e}")))??;
                Ok(serde_json::to_value(report).map_err(internal)?)
            }
            Request::TokenCreate { name, role } => {
                let role = Role::parse(&role).ok_or_else(|| {
                    ApiError::new(
                        "invalid",
                        format!(
                            "unknown role {} (one of read, write, admin, mirror)",
                            echo(&role)
                        ),
                    )
                })?;
                let (c, secret) = ws.token_create(&name, role, opts).await?;
                Ok(json!({
                    "name": name,
                    "role": role.as_str(),
                    "token": secret,
                    "offset": c.offsets.start,
                }))
            }
            Request::TokenRevoke { name } => committed(ws.token_revoke(&name, opts).await?),
            Request::Promote {
                name,
                expect_offset,
                expect_hash,
                handoff,
            } => {
                let expect = Expect {
                    offset: expect_offset,
                    hash: expect_hash,
                    handoff,
                };
                self.promote(name, expect).await
            }
            Request::Handoff { .. } => Err(ApiError::bad(
                "a handoff runs on a serving leader: give --server URL and --token-file F",
            )),
            Request::TokenList => {
                let tokens = query::tokens(&ws.view()?)?;
                Ok(Value::Array(
                    tokens
                        .iter()
                        .map(|t| {
                            json!({
                                "name": t.name,
                                "role": t.role.as_str(),
                                "created_ms": t.created_ms,
                                "revision": t.revision,
                            })
                        })
                        .collect(),
                ))
            }
        }
    }

    /// The change's id, or (waiting) the finished change.
    async fn change_result(&self, change: Uuid, wait: bool) -> Result<Value, ApiError> {
        if !wait {
            return Ok(json!({"change": change.to_string()}));
        }
        let record = self.wait_change(change).await?;
        Ok(change_json(&record))
    }

    /// Waits for a change to be ready, unless the server shuts down first.
    async fn wait_change(&self, change: Uuid) -> Result<ChangeRecord, ApiError> {
        tokio::select! {
            r = self.ws.wait_change(change) => Ok(r?),
            _ = self.shutdown.cancelled() => Err(ApiError::new(
                codes::UNAVAILABLE,
                format!(
                    "the server is shutting down; change {change} was recorded and continues \
                     when the workspace is next opened"
                ),
            )),
        }
    }

    async fn log_show(
        &self,
        from: u64,
        limit: u64,
        kind: Option<String>,
    ) -> Result<Value, ApiError> {
        let ws = self.ws.clone();
        tokio::task::spawn_blocking(move || {
            let view = ws.view()?;
            let mut out = Vec::new();
            let mut bytes = 0;
            let mut failure = None;
            view.visit_log(from, |e| {
                if kind.as_deref().is_none_or(|k| e.kind.starts_with(k)) {
                    bytes += e.payload.len();
                    out.push(entry_json(&e));
                }
                (out.len() as u64) < limit && bytes <= READ_BYTES_MAX
            })
            .map_err(|err| failure = Some(err))
            .ok();
            if let Some(err) = failure {
                return Err(ApiError::from(err));
            }
            Ok(Value::Array(out))
        })
        .await
        .map_err(|e| ApiError::new(codes::INTERNAL, format!("log task failed: {e}")))?
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(codes::INTERNAL, e.to_string())
}

fn not_found(message: String) -> ApiError {
    ApiError::new(codes::NOT_FOUND, message)
}

/// `daemon list`: every daemon record with the runtime facts of this process (only the
/// leader that supervises them has pid and since).
fn daemon_list(ws: &cairn::Workspace) -> Result<Value, ApiError> {
    let stats = ws.daemon_stats();
    let daemons: Vec<Value> = ws
        .daemons()?
        .into_iter()
        .map(|(pkg, name, d, rt)| {
            let observed = match (&d.run, d.observed) {
                (Some(run), _) => Some(run.state.to_string()),
                (None, Some(o)) => Some(o.as_str().to_string()),
                (None, None) => None,
            };
            json!({
                "package": pkg,
                "name": name,
                "desired": d.desired.as_str(),
                "observed": observed,
                "state": d.run.as_ref().map(|r| r.state.name()),
                "restarts": d.run.as_ref().map_or(0, |r| r.restarts),
                "pid": rt.as_ref().and_then(|r| r.pid),
                "since_ms": rt.as_ref().and_then(|r| r.since_ms),
                "command": d.command,
                "restart": d.restart.as_str(),
                "kept_from": d.kept_from,
                "revision": d.revision,
            })
        })
        .collect();
    Ok(json!({"supervised": stats.supervising, "daemons": daemons}))
}

pub(crate) fn committed(c: cairn_store::Committed) -> Result<Value, ApiError> {
    Ok(json!({
        "offsets": [c.offsets.start, c.offsets.end.saturating_sub(1)],
        "applied": c.applied,
        "replayed": c.replayed,
    }))
}

/// Parses `--keep` kinds, refusing unknown ones by name.
pub fn parse_keep(keep: &[String]) -> Result<Vec<ResourceKind>, ApiError> {
    keep.iter()
        .flat_map(|k| k.split(','))
        .filter(|k| !k.is_empty())
        .map(|k| {
            ResourceKind::parse(k).ok_or_else(|| {
                ApiError::new(
                    "invalid",
                    format!(
                        "unknown keep value {} (one of vars, queues, vaults, daemons, model)",
                        echo(k)
                    ),
                )
            })
        })
        .collect()
}

fn parse_feature_state(s: &str) -> Result<FeatureState, ApiError> {
    FeatureState::parse(s).ok_or_else(|| {
        ApiError::new(
            "invalid",
            format!(
                "unknown feature state {} (one of enabled, disabled, always_enabled, \
                 always_disabled)",
                echo(s)
            ),
        )
    })
}

/// Parses `pkg:name`.
pub fn parse_end(what: &str, s: &str) -> Result<(String, String), ApiError> {
    match s.split_once(':') {
        Some((p, n)) if !p.is_empty() && !n.is_empty() && !n.contains(':') => {
            Ok((p.to_string(), n.to_string()))
        }
        _ => Err(ApiError::new(
            "invalid",
            format!("{what} {} is not of the form PKG:NAME", echo(s)),
        )),
    }
}

fn parse_change_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s)
        .map_err(|_| ApiError::new("invalid", format!("change id {} is not a uuid", echo(s))))
}

/// Bytes as JSON: a string when they are UTF-8, else `{"hex": "..."}`.
pub fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex(b) }),
    }
}

/// The writer's health as JSON fields: `writer` (`ok`, `degraded`, `stopped`, or `none` for a
/// workspace opened read-only, as local-mode reads are),
/// `writer_reason` (why it is not ok, or null), `writer_since_ms` and
/// `writer_failed_writes` (while degraded).
pub fn writer_json(health: &cairn::store::WriterHealth) -> Value {
    use cairn::store::WriterHealth as H;
    match health {
        H::Ok => json!({"writer": "ok", "writer_reason": Value::Null}),
        H::Degraded {
            reason,
            since_ms,
            failed_writes,
        } => json!({
            "writer": "degraded",
            "writer_reason": reason,
            "writer_since_ms": since_ms,
            "writer_failed_writes": failed_writes,
        }),
        H::Stopped { reason } => json!({"writer": "stopped", "writer_reason": reason}),
        // Local mode reads without a writer: there is none to report on.
        H::ReadOnly => json!({"writer": "none", "writer_reason": Value::Null}),
    }
}

/// A change as JSON: `{id, kind, summary, status, aborted, packages, actor, spawn_ms,
/// ready_ms, revision, tasks: [{name, status, attempts, log}]}`.
pub fn change_json(c: &ChangeRecord) -> Value {
    json!({
        "id": c.id.to_string(),
        "kind": c.kind.as_str(),
        "summary": c.summary,
        "status": c.status.as_str(),
        "aborted": c.aborted,
        "packages": c.packages,
        "actor": c.actor,
        "spawn_ms": c.spawn_ms,
        "ready_ms": c.ready_ms,
        "revision": c.revision,
        "tasks": c.tasks.iter().map(|t| json!({
            "name": t.name,
            "status": t.status.as_str(),
            "attempts": t.attempts,
            // Notes are facts in the projection; rendered here, when read.
            "log": t.log.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn package_json(view: &dyn cairn_log::StateRead, p: &PackageRecord) -> Result<Value, ApiError> {
    let m = &p.manifest;
    let name = &m.name;
    let mut resources = serde_json::Map::new();
    for kind in ResourceKind::ALL {
        resources.insert(
            kind.as_str().to_string(),
            json!(query::resource_names(view, kind, name)?),
        );
    }
    let features: Vec<&str> = m.features.iter().map(|f| f.name.as_str()).collect();
    let (change, keep, reason) = match &p.status {
        PackageStatus::Installing { change } => (Some(change.to_string()), None, None),
        PackageStatus::Installed => (None, None, None),
        PackageStatus::Uninstalling { keep, change } => (
            Some(change.to_string()),
            Some(keep.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
            None,
        ),
        PackageStatus::Broken { reason } => (None, None, Some(reason.to_string())),
    };
    Ok(json!({
        "name": name,
        "version": m.version,
        "status": p.status.name(),
        "status_change": change,
        "keep": keep,
        "broken_reason": reason,
        "install_change": p.install_change.to_string(),
        "onload": match &p.onload {
            OnloadState::None => "none".to_string(),
            OnloadState::Pending => "pending".to_string(),
            OnloadState::Running { attempt } => format!("running (attempt {attempt})"),
            OnloadState::Finished { ok: true } => "succeeded".to_string(),
            OnloadState::Finished { ok: false } => "failed".to_string(),
            OnloadState::Cancelled => "cancelled".to_string(),
        },
        "hooks": m.hooks.keys().collect::<Vec<_>>(),
        "resources": resources,
        "features": features,
        "plugs": m.plugs.iter().map(|x| json!({"name": x.name, "interface": x.interface, "auto_connect": x.auto_connect})).collect::<Vec<_>>(),
        "slots": m.slots.iter().map(|x| json!({"name": x.name, "interface": x.interface})).collect::<Vec<_>>(),
        "revision": p.revision,
    }))
}

/// A log entry as JSON: `{offset, epoch, time_ms, kind, hash, prev, meta, event}`, the event
/// decoded (bytes as text or `{"hex"}`, vault values as ciphertext hex, token hashes as hex).
pub fn entry_json(e: &StoredEntry) -> Value {
    json!({
        "offset": e.offset,
        "epoch": e.epoch,
        "time_ms": e.time_ms,
        "kind": e.kind,
        "hash": e.hash.to_string(),
        "prev": e.prev.to_string(),
        "meta": {
            "actor": e.meta.actor,
            "change": e.meta.change.map(|c| c.to_string()),
            "command": e.meta.command.to_string(),
            "idempotency_key": e.meta.idempotency_key,
        },
        "event": event_json(&e.kind, &e.payload),
    })
}

fn event_json(kind: &str, payload: &[u8]) -> Value {
    let event = match Event::decode(kind, payload) {
        Ok(e) => e,
        Err(err) => return json!({ "undecodable": err.to_string(), "payload_hex": hex(payload) }),
    };
    match &event {
        Event::VarSet { owner, key, value } => {
            json!({"owner": owner, "key": key, "value": bytes_json(value)})
        }
        Event::QueuePut {
            owner,
            queue,
            items,
        } => json!({
            "owner": owner,
            "queue": queue,
            "items": items.iter().map(|i| bytes_json(i)).collect::<Vec<_>>(),
        }),
        Event::VaultSet {
            owner,
            vault,
            sealed,
        } => json!({"owner": owner, "vault": vault, "ciphertext_hex": hex(sealed)}),
        Event::TokenCreated { name, role, hash } => {
            json!({"name": name, "role": role.as_str(), "hash": Hash(*hash).to_string()})
        }
        Event::Ext { kind: _, payload } => json!({ "payload": bytes_json(payload) }),
        other => match serde_json::to_value(other) {
            // Externally tagged: `{"variant": body}`; the kind already names the variant.
            Ok(Value::Object(mut map)) if map.len() == 1 => {
                let (_, body) = map.iter_mut().next().expect("one entry");
                body.take()
            }
            Ok(v) => v,
            Err(e) => json!({ "unrenderable": e.to_string() }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_log::{EntryDraft, Meta};

    fn entry(event: &Event) -> StoredEntry {
        EntryDraft {
            epoch: 1,
            time_ms: 7,
            meta: Meta {
                actor: "t".into(),
                change: None,
                command: Uuid::nil(),
                idempotency_key: None,
            },
            kind: event.kind().to_string(),
            payload: event.encode(),
        }
        .seal(1, Hash::ZERO)
        .unwrap()
    }

    #[test]
    fn log_json_shows_vault_values_as_ciphertext_and_bytes_as_text_or_hex() {
        let sealed = vec![0xde, 0xad, 0xbe, 0xef];
        let v = entry_json(&entry(&Event::VaultSet {
            owner: "netmon".into(),
            vault: "api-token".into(),
            sealed: serde_bytes::ByteBuf::from(sealed),
        }));
        assert_eq!(v["kind"], "vault.set.v1");
        assert_eq!(v["event"]["ciphertext_hex"], "deadbeef");
        assert_eq!(v["offset"], 1);
        assert_eq!(v["time_ms"], 7);
        assert_eq!(v["prev"], Hash::ZERO.to_string());
        let v = entry_json(&entry(&Event::QueuePut {
            owner: "netmon".into(),
            queue: "events".into(),
            items: vec![
                serde_bytes::ByteBuf::from(b"up".to_vec()),
                serde_bytes::ByteBuf::from(vec![0xff, 0x00]),
            ],
        }));
        assert_eq!(v["event"]["items"], json!(["up", {"hex": "ff00"}]));
        let v = entry_json(&entry(&Event::FeatureStateChanged {
            name: "bgp".into(),
            state: FeatureState::Disabled,
        }));
        assert_eq!(v["event"], json!({"name": "bgp", "state": "disabled"}));
    }
}
