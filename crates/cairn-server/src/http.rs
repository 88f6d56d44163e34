//! The HTTP API (axum): every route turns its path, query and body back into the
//! [`Request`] the client built (`Request::http`), checks the bearer token's role, and runs it
//! through the [`Service`]. Streams: `GET /v1/log/tail` (JSON lines), `POST /v1/backup` and
//! `POST /v1/replay` (a [`crate::bundle`]). Errors are `{"error": {"code", "message"}}`.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::Router;
use cairn::kernel::echo::{echo, echo_bare};
use cairn::kernel::model::Role;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::api::{codes, ApiError, ErrorBody, Request};
use crate::service::{entry_json, Caller, Service};

/// Largest request body (a manifest is at most 256 KiB of TOML; JSON escaping can double it).
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Chunks a stream buffers ahead of a slow client.
pub const STREAM_CHUNKS_AHEAD_MAX: usize = 16;
/// The header a command's answer carries: the applied offset its effects are visible at.
pub const OFFSET_HEADER: &str = "cairn-offset";
/// The header a read may carry: answer only once this offset is applied here.
pub const MIN_OFFSET_HEADER: &str = "cairn-min-offset";
/// How long a read waits for `Cairn-Min-Offset` (and a forwarded command for its offset)
/// before it answers 503 `lagging`.
pub const MIN_OFFSET_WAIT_MS_MAX: u64 = 10_000;
/// How long a mirror waits for the leader's answer to a forwarded command (a command waiting
/// for its change can take as long as its hooks).
pub const FORWARD_TIMEOUT_MS: u64 = 15 * 60 * 1000;

/// Idle connections a mirror keeps to its leader for forwarding.
pub const FORWARD_IDLE_CONNECTIONS_MAX: usize = 128;

/// The agent a mirror forwards commands with (kept-alive connections to the leader).
fn forward_agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        // Kept-alive connections for as many commands as clients send at once (the default
        // keeps one per host, so concurrent forwards would each open a new connection).
        ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_millis(FORWARD_TIMEOUT_MS))
            .max_idle_connections(FORWARD_IDLE_CONNECTIONS_MAX)
            .max_idle_connections_per_host(FORWARD_IDLE_CONNECTIONS_MAX)
            .build()
    })
}

/// Set on a command a mirror forwards, so that another mirror refuses it (no loops).
pub const FORWARDED_HEADER: &str = "cairn-forwarded";

/// How forwarding a command failed.
enum ForwardFailure {
    /// Nothing was sent: the leader could not be connected to.
    Unreachable,
    /// Sent, but no whole answer came back: the outcome is unknown.
    NoAnswer,
}

/// A follower state in words, for messages.
fn follow_state_words(state: &cairn_mirror::FollowState) -> String {
    use cairn_mirror::FollowState as S;
    match state {
        S::Connecting => "it is connecting".into(),
        S::CatchingUp => "it is catching up".into(),
        S::Following => "it is following".into(),
        S::Refused { code, message } => format!("the leader refused it: {code}: {message}"),
        S::Diverged { offset, .. } => {
            format!("its log diverged from the leader's at offset {offset}")
        }
        S::Stopped { message } => format!("it stopped: {message}"),
    }
}

/// After a shutdown signal, how long in-flight requests and streams may take before their
/// connections are dropped.
pub const SHUTDOWN_GRACE_MS: u64 = 30_000;

#[derive(Clone)]
struct App {
    svc: Service,
    shutdown: CancellationToken,
}

/// Serves the API on `listener` until `shutdown` resolves; then stops accepting, lets
/// in-flight requests finish (streams end), and returns. The caller closes the workspace.
pub async fn serve(
    svc: Service,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = svc.shutdown_token();
    let app = router(svc, stop.clone());
    let signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            // Requests waiting for a change stop waiting (the change goes on at the next
            // start); commits in flight finish.
            stop.cancel();
        }
    };
    let serving = axum::serve(listener, app).with_graceful_shutdown(signal);
    tokio::select! {
        r = serving => r,
        // A client that stops reading a stream must not hold the shutdown forever.
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(std::time::Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
        } => {
            tracing::warn!("connections still open {SHUTDOWN_GRACE_MS} ms after the shutdown signal; not waiting for them (they end when the runtime stops)");
            Ok(())
        }
    }
}

/// The router (exposed for tests that drive it without a socket).
fn router(svc: Service, shutdown: CancellationToken) -> Router {
    let app = App { svc, shutdown };
    Router::new()
        .route("/v1/health", get(health))
        .merge(crate::console::router())
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/packages", post(pkg_install).get(pkg_list))
        .route("/v1/packages/{name}", get(pkg_show))
        .route("/v1/packages/{name}/uninstall", post(pkg_uninstall))
        .route("/v1/vars/{pkg}", get(var_list))
        .route(
            "/v1/vars/{pkg}/{key}",
            get(var_get).put(var_set).delete(var_del),
        )
        .route(
            "/v1/queues/{pkg}/{queue}/items",
            get(queue_read).post(queue_put),
        )
        .route("/v1/queues/{pkg}/{queue}/ack", post(queue_ack))
        .route("/v1/vaults/{pkg}/{vault}", get(vault_get).put(vault_set))
        .route("/v1/daemons", get(daemon_list))
        .route("/v1/daemons/{pkg}/{name}/state", put(daemon_set))
        .route("/v1/daemons/{pkg}/{name}/restart", post(daemon_restart))
        .route("/v1/daemons/{pkg}/{name}/logs", get(daemon_logs))
        .route("/v1/features", get(feature_list))
        .route("/v1/features/{name}/state", put(feature_set))
        .route("/v1/features/{name}/observed", put(feature_report))
        .route("/v1/connections", get(iface_list).post(iface_connect))
        .route("/v1/connections/disconnect", post(iface_disconnect))
        .route("/v1/changes", get(change_list))
        .route("/v1/changes/{id}", get(change_show))
        .route("/v1/changes/{id}/abort", post(change_abort))
        .route("/v1/log", get(log_show))
        .route("/v1/log/tail", get(log_tail))
        .route("/v1/state/digest", get(state_digest))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/backup", post(backup))
        .route("/v1/replay", post(replay))
        .route("/v1/rebuild", post(rebuild))
        .route("/v1/tokens", get(token_list).post(token_create))
        .route("/v1/tokens/{name}", axum::routing::delete(token_revoke))
        .route("/v1/promote", post(promote))
        .route("/v1/handoff", post(handoff))
        .route("/v1/drive/{*rest}", any(drive))
        .route("/v1/replication/stream", get(replication_stream))
        .route("/v1/replication/ack", post(replication_ack))
        .route("/v1/replication/hash", get(replication_hash))
        .route("/v1/replication/bundle", get(replication_bundle))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(app)
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&ErrorBody { error: e.clone() }).unwrap_or_default();
    (status, [("content-type", "application/json")], body).into_response()
}

impl App {
    /// Authenticates, checks the role, runs the request, and records the response status. On a
    /// mirror a command is forwarded to the leader; a read waits for `Cairn-Min-Offset` first.
    /// A command's answer carries `Cairn-Offset`: the applied offset it is visible at.
    async fn run(&self, headers: &HeaderMap, req: Result<Request, ApiError>) -> Response {
        let is_command = req.as_ref().is_ok_and(|r| !r.is_read());
        if let Ok(Request::Handoff {
            to,
            name,
            timeout_ms,
        }) = &req
        {
            let result = match self.auth(headers, Some(Role::Admin)) {
                Ok(caller) => {
                    let secret = bearer_secret(headers).unwrap_or_default();
                    match crate::handoff::HandoffPlan::parse(to, name.clone(), *timeout_ms) {
                        Ok(plan) => {
                            self.svc
                                .handoff(plan, secret, caller.actor().to_string())
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            return self.reply(result);
        }
        if let (true, Some(to)) = (is_command, self.svc.handing_off()) {
            if let Err(e) = self.auth(headers, req.as_ref().map(|r| r.role()).ok()) {
                return self.reply(Err(e));
            }
            return self.reply(Err(ApiError::new(
                codes::HANDING_OFF,
                format!(
                    "this leader is handing off to {}; nothing was written: send the command \
                     again in a moment (here it is then forwarded to the new leader)",
                    echo(&to)
                ),
            )));
        }
        if let (Ok(r), crate::service::Replication::Mirror(follower)) =
            (&req, self.svc.replication())
        {
            // `promote` is the one command a mirror runs itself.
            if is_command && !matches!(r, Request::Promote { .. }) {
                if let Err(e) = self.auth(headers, Some(r.role())) {
                    return self.reply(Err(e));
                }
                return self.forward(r, headers, &follower.get()).await;
            }
        }
        if let (Ok(r), Some(_)) = (&req, headers.get(MIN_OFFSET_HEADER)) {
            // Authenticated before waiting: no one without a token is held or told offsets.
            let waited = match self.auth(headers, Some(r.role())) {
                Ok(_) => self.wait_min_offset(headers).await,
                Err(e) => Err(e),
            };
            if let Err(e) = waited {
                return self.reply(Err(e));
            }
        }
        let key_given = headers.contains_key("idempotency-key");
        // A promotion is not waited for by mirrors: the new leader has none yet (in a handoff,
        // the old leader starts following only once it has the answer).
        let replicated = is_command && !matches!(req, Ok(Request::Promote { .. }));
        let mut response = self.run_here(headers, req).await;
        if is_command && response.status().is_success() {
            let offset = self.svc.workspace().applied();
            if replicated {
                if let Err(e) = self.wait_sync_mirrors(offset, key_given).await {
                    return self.reply(Err(e));
                }
            }
            if let Ok(v) = offset.to_string().parse() {
                response.headers_mut().insert(OFFSET_HEADER, v);
            }
        }
        response
    }

    /// With `--sync-mirrors K`: waits until K mirrors have durably applied `offset`, or
    /// answers 503 `not_replicated` after the timeout (the command is committed here).
    async fn wait_sync_mirrors(&self, offset: u64, key_given: bool) -> Result<(), ApiError> {
        let sync = self.svc.sync_mirrors();
        let crate::service::Replication::Leader(mirrors) = &self.svc.replication() else {
            return Ok(());
        };
        if sync.count == 0 {
            return Ok(());
        }
        let have = mirrors
            .wait_acked(
                offset,
                sync.count,
                std::time::Duration::from_millis(sync.timeout_ms),
            )
            .await;
        if have >= sync.count {
            return Ok(());
        }
        let retry = if key_given {
            "a retry with the same Idempotency-Key writes nothing and answers once they have"
        } else {
            "it was sent without an Idempotency-Key, so a retry would write it again"
        };
        Err(ApiError::new(
            codes::NOT_REPLICATED,
            format!(
                "committed on the leader at offset {offset} or before, but {have} of the {} \
                 mirrors required applied it within {} ms; {retry}",
                sync.count, sync.timeout_ms
            ),
        ))
    }

    /// Waits, bounded by `MIN_OFFSET_WAIT_MS_MAX`, until this node has applied the offset the
    /// `Cairn-Min-Offset` header asks for (read-your-writes across nodes).
    async fn wait_min_offset(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(MIN_OFFSET_HEADER) else {
            return Ok(());
        };
        let wanted: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::bad("the Cairn-Min-Offset header is not a non-negative integer")
            })?;
        self.wait_applied(wanted).await
    }

    async fn wait_applied(&self, wanted: u64) -> Result<(), ApiError> {
        let ws = self.svc.workspace();
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(MIN_OFFSET_WAIT_MS_MAX),
            ws.wait_for(wanted),
        )
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ApiError::new(
                codes::LAGGING,
                format!(
                    "this node has applied offset {}, not yet {wanted}; waited \
                     {MIN_OFFSET_WAIT_MS_MAX} ms",
                    ws.applied()
                ),
            )),
        }
    }

    /// Sends a command received by a mirror to its leader, with the caller's token and an
    /// idempotency key (the caller's, or a new one, returned in the answer's `Idempotency-Key`
    /// header), and answers with the leader's answer once this mirror has applied the offset
    /// the leader answered at. Not when the follower was refused, diverged or stopped: this
    /// mirror would never show the write, and the caller is told why. A command that was forwarded
    /// already (mirrors pointing at each other) is refused.
    async fn forward(
        &self,
        req: &Request,
        headers: &HeaderMap,
        follower: &cairn_mirror::FollowStatus,
    ) -> Response {
        let leader = follower.leader.clone();
        if headers.contains_key(FORWARDED_HEADER) {
            return self.reply(Err(ApiError::new(
                codes::NOT_LEADER,
                format!(
                    "a forwarded command reached a mirror: {} is itself a mirror (of {}); point \
                     mirrors at the leader",
                    "this node",
                    echo(&leader)
                ),
            )));
        }
        match &follower.state {
            // Connecting too: a mirror just started or between streams will have the write
            // shortly, and if not, the wait below answers `lagging`.
            cairn_mirror::FollowState::Connecting
            | cairn_mirror::FollowState::CatchingUp
            | cairn_mirror::FollowState::Following => {}
            other => {
                return self.reply(Err(ApiError::new(
                    codes::NOT_LEADER,
                    format!(
                        "this node is a mirror of {} and is not following it ({}); commands go \
                         to the leader",
                        echo(&leader),
                        follow_state_words(other)
                    ),
                )))
            }
        }
        let http = req.http();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let auth = header("authorization").unwrap_or_default();
        let key = header("idempotency-key")
            .unwrap_or_else(|| format!("forwarded-{}", uuid::Uuid::new_v4()));
        let url = format!("{leader}{}", http.path);
        let sent_key = key.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let mut r = forward_agent()
                .request(http.method, &url)
                .set("authorization", &auth)
                .set("idempotency-key", &sent_key)
                .set(FORWARDED_HEADER, "1");
            for (k, v) in &http.query {
                r = r.query(k, v);
            }
            let answer = match http.body {
                Some(b) => r.send_json(b),
                None => r.call(),
            };
            match answer {
                Ok(resp) | Err(ureq::Error::Status(_, resp)) => {
                    let status = resp.status();
                    let offset = resp
                        .header(OFFSET_HEADER)
                        .and_then(|v| v.parse::<u64>().ok());
                    let body = resp
                        .into_string()
                        .map_err(|e| (ForwardFailure::NoAnswer, e.to_string()))?;
                    Ok((status, offset, body))
                }
                Err(ureq::Error::Transport(t)) => {
                    let kind = match t.kind() {
                        ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => {
                            ForwardFailure::Unreachable
                        }
                        _ => ForwardFailure::NoAnswer,
                    };
                    Err((kind, t.to_string()))
                }
            }
        })
        .await;
        let keyed = |mut response: Response| {
            if let Ok(v) = key.parse() {
                response.headers_mut().insert("idempotency-key", v);
            }
            response
        };
        let (status, offset, body) = match sent {
            Ok(Ok(answer)) => answer,
            Ok(Err((ForwardFailure::Unreachable, e))) => {
                return self.reply(Err(ApiError::new(
                    codes::NOT_LEADER,
                    format!(
                        "this node is a mirror; its leader {} cannot be reached to forward the \
                         command (nothing was sent): {e}",
                        echo(&leader)
                    ),
                )))
            }
            Ok(Err((ForwardFailure::NoAnswer, e))) => {
                return keyed(self.reply(Err(ApiError::new(
                    codes::NOT_LEADER,
                    format!(
                        "the command was sent to the leader {} but no answer came back ({e}): it \
                         may or may not be committed; a retry with Idempotency-Key {key} is safe",
                        echo(&leader)
                    ),
                ))))
            }
            Err(e) => {
                return self.reply(Err(ApiError::new(
                    codes::INTERNAL,
                    format!("forwarding task failed: {e}"),
                )))
            }
        };
        if let Some(offset) = offset {
            if let Err(e) = self.wait_applied(offset).await {
                return keyed(self.reply(Err(ApiError::new(
                    codes::LAGGING,
                    format!(
                        "the leader committed the command (answered at offset {offset}), but {}; \
                         a retry with Idempotency-Key {key} writes nothing and returns it",
                        e.message
                    ),
                ))));
            }
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        self.svc.metrics().http(status.as_u16());
        let mut response = (status, [("content-type", "application/json")], body).into_response();
        if let Some(v) = offset.and_then(|o| o.to_string().parse().ok()) {
            response.headers_mut().insert(OFFSET_HEADER, v);
        }
        keyed(response)
    }

    /// Authenticates, checks the role, runs the request here, and records the response status.
    async fn run_here(&self, headers: &HeaderMap, req: Result<Request, ApiError>) -> Response {
        let result = match self.auth(headers, req.as_ref().map(|r| r.role()).ok()) {
            Err(e) => Err(e),
            Ok(caller) => match req {
                Err(e) => Err(e),
                Ok(req) => {
                    let actor = caller.actor();
                    // Formatted only when it will be logged (this is per request).
                    let what = if tracing::enabled!(tracing::Level::INFO) {
                        format!("{req:?}")
                    } else {
                        String::new()
                    };
                    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
                        None => Ok(None),
                        Some(Ok(k)) => Ok(Some(k.to_string())),
                        Some(Err(_)) => Err(ApiError::bad(
                            "the Idempotency-Key header is not visible ASCII",
                        )),
                    };
                    let r = match key {
                        Ok(key) => self.svc.handle_keyed(req, &caller, key).await,
                        Err(e) => Err(e),
                    };
                    match &r {
                        Ok(_) => tracing::debug!(actor, request = %short(&what), "ok"),
                        Err(e) => {
                            tracing::info!(actor, request = %short(&what), code = %e.code, "{}", e.message)
                        }
                    }
                    r
                }
            },
        };
        self.reply(result)
    }

    /// `Ok` when the bearer token may do what `role` allows; else the error response
    /// (counted), for the handlers outside the common path (metrics, streams).
    fn allow(&self, headers: &HeaderMap, role: Role) -> Result<(), Response> {
        self.auth(headers, Some(role)).map(|_| ()).map_err(|e| {
            self.svc.metrics().error(&e);
            error_response(&e)
        })
    }

    fn reply(&self, result: Result<Value, ApiError>) -> Response {
        match result {
            Ok(v) => {
                self.svc.metrics().http(200);
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    serde_json::to_vec(&v).unwrap_or_default(),
                )
                    .into_response()
            }
            Err(e) => {
                self.svc.metrics().error(&e);
                error_response(&e)
            }
        }
    }

    /// The caller (`token:<name>`, with the token's role) of a bearer token allowed `needed`
    /// (checked only when the request itself parsed, so a bad request by a valid token is a
    /// 400, not a 403).
    fn auth(&self, headers: &HeaderMap, needed: Option<Role>) -> Result<Caller, ApiError> {
        let header = headers
            .get("authorization")
            .ok_or_else(|| ApiError::new(codes::UNAUTHORIZED, "missing bearer token"))?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    codes::UNAUTHORIZED,
                    "the authorization header is not `Bearer <token>`",
                )
            })?;
        let token = self
            .svc
            .workspace()
            .authenticate(secret)?
            .ok_or_else(|| ApiError::new(codes::UNAUTHORIZED, "unknown or revoked token"))?;
        if let Some(needed) = needed {
            if !token.role.allows(needed) {
                return Err(ApiError::new(
                    codes::FORBIDDEN,
                    format!(
                        "token {} has role {}; this needs {}",
                        echo(&token.name),
                        token.role,
                        needed
                    ),
                ));
            }
        }
        Ok(Caller::token(&token.name, token.role))
    }
}

/// The secret of a `Bearer <token>` authorization header.
fn bearer_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses a JSON body, naming what is wrong.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                codes::TOO_LARGE,
                format!("request body is over the limit of {REQUEST_BODY_BYTES_MAX} bytes"),
            )
        } else {
            ApiError::bad(format!("request body could not be read: {r}"))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("request body is not the expected JSON: {e}")))
}

type Q = Query<HashMap<String, String>>;

fn q_u64(q: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad(format!(
                "query parameter {name}={} is not a non-negative integer",
                echo(v)
            ))
        }),
    }
}

/// `{"ok": true, "writer": "ok"}`, or 503 with `ok: false` and why the writer cannot commit
/// (degraded by failing writes, e.g. a full disk, or stopped): reads still work then.
async fn health(State(app): State<App>) -> Response {
    let health = app.svc.workspace().health();
    let ok = health == cairn::store::WriterHealth::Ok;
    let mut body = crate::service::writer_json(&health);
    body["ok"] = serde_json::Value::Bool(ok);
    // Not a secret (it is in every backup and hello); a handoff checks it before it sends a
    // token to a URL.
    body["workspace_id"] = serde_json::Value::String(app.svc.workspace().id().to_string());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Read) {
        return denied;
    }
    app.svc.metrics().http(200);
    let text = app
        .svc
        .metrics()
        .render(app.svc.workspace(), &app.svc.replication());
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn status(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::Status)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallBody {
    manifest: String,
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

async fn pkg_install(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<InstallBody>(body).map(|b| Request::PkgInstall {
        manifest: b.manifest,
        wait: b.wait,
    });
    app.run(&headers, req).await
}

async fn pkg_list(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::PkgList)).await
}

async fn pkg_show(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    app.run(&headers, Ok(Request::PkgShow { name })).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UninstallBody {
    #[serde(default)]
    keep: Vec<String>,
    #[serde(default)]
    strict: bool,
    #[serde(default = "yes")]
    wait: bool,
}

async fn pkg_uninstall(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<UninstallBody>(body).map(|b| Request::PkgUninstall {
        name,
        keep: b.keep,
        strict: b.strict,
        wait: b.wait,
    });
    app.run(&headers, req).await
}

async fn var_list(State(app): State<App>, headers: HeaderMap, Path(pkg): Path<String>) -> Response {
    app.run(&headers, Ok(Request::VarList { pkg })).await
}

/// Every route under `/v1/drive/`: the drive path is read from the raw URI, segment by
/// segment (`crate::drive::from_http`).
async fn drive(
    State(app): State<App>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Query(q): Q,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = crate::drive::from_http(&method, uri.path(), &q, || json_body::<Value>(body))
        .map(Request::Drive);
    app.run(&headers, req).await
}

async fn var_get(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, key)): Path<(String, String)>,
) -> Response {
    app.run(&headers, Ok(Request::VarGet { pkg, key })).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VarSetBody {
    value: String,
    #[serde(default)]
    expect_revision: Option<u64>,
}

async fn var_set(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, key)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<VarSetBody>(body).map(|b| Request::VarSet {
        pkg,
        key,
        value: b.value,
        expect_revision: b.expect_revision,
    });
    app.run(&headers, req).await
}

async fn var_del(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, key)): Path<(String, String)>,
) -> Response {
    app.run(&headers, Ok(Request::VarDel { pkg, key })).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsBody {
    items: Vec<String>,
}

async fn queue_put(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, queue)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<ItemsBody>(body).map(|b| Request::QueuePut {
        pkg,
        queue,
        items: b.items,
    });
    app.run(&headers, req).await
}

async fn queue_read(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, queue)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    let req = (|| {
        Ok(Request::QueueRead {
            pkg,
            queue,
            from: q_u64(&q, "from", 1)?,
            limit: q_u64(&q, "limit", 1000)?,
        })
    })();
    app.run(&headers, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    upto: u64,
}

async fn queue_ack(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, queue)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<AckBody>(body).map(|b| Request::QueueAck {
        pkg,
        queue,
        upto: b.upto,
    });
    app.run(&headers, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultBody {
    secret: String,
}

async fn vault_set(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, vault)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<VaultBody>(body).map(|b| Request::VaultSet {
        pkg,
        vault,
        secret: b.secret,
    });
    app.run(&headers, req).await
}

async fn vault_get(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, vault)): Path<(String, String)>,
) -> Response {
    app.run(&headers, Ok(Request::VaultGet { pkg, vault }))
        .await
}

async fn daemon_list(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::DaemonList)).await
}

async fn daemon_set(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<ObservedBody>(body).map(|b| Request::DaemonSet {
        pkg,
        name,
        state: b.state,
    });
    app.run(&headers, req).await
}

async fn daemon_restart(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, name)): Path<(String, String)>,
) -> Response {
    app.run(&headers, Ok(Request::DaemonRestart { pkg, name }))
        .await
}

async fn daemon_logs(
    State(app): State<App>,
    headers: HeaderMap,
    Path((pkg, name)): Path<(String, String)>,
) -> Response {
    app.run(&headers, Ok(Request::DaemonLogs { pkg, name }))
        .await
}

async fn feature_list(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::FeatureList)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureBody {
    state: String,
    #[serde(default)]
    expect_revision: Option<u64>,
}

async fn feature_set(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<FeatureBody>(body).map(|b| Request::FeatureSet {
        name,
        state: b.state,
        expect_revision: b.expect_revision,
    });
    app.run(&headers, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservedBody {
    state: String,
}

async fn feature_report(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<ObservedBody>(body).map(|b| Request::FeatureReport {
        name,
        state: b.state,
    });
    app.run(&headers, req).await
}

async fn iface_list(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::IfaceList)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnBody {
    plug: String,
    slot: String,
    #[serde(default = "yes")]
    wait: bool,
}

async fn iface_connect(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<ConnBody>(body).map(|b| Request::IfaceConnect {
        plug: b.plug,
        slot: b.slot,
        wait: b.wait,
    });
    app.run(&headers, req).await
}

async fn iface_disconnect(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<ConnBody>(body).map(|b| Request::IfaceDisconnect {
        plug: b.plug,
        slot: b.slot,
        wait: b.wait,
    });
    app.run(&headers, req).await
}

async fn change_list(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::ChangeList)).await
}

async fn change_show(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    app.run(&headers, Ok(Request::ChangeShow { id })).await
}

/// The body (`{}`) is read, unused, for the reason given at [`backup`].
async fn change_abort(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    _body: Result<Bytes, BytesRejection>,
) -> Response {
    app.run(&headers, Ok(Request::ChangeAbort { id })).await
}

async fn log_show(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    let req = (|| {
        Ok(Request::LogShow {
            from: q_u64(&q, "from", 1)?,
            limit: q_u64(&q, "limit", 100)?,
            kind: q.get("kind").cloned(),
        })
    })();
    app.run(&headers, req).await
}

/// `GET /v1/log/tail?from=N`: JSON lines, one entry each, live until the client goes away or
/// the server shuts down.
async fn log_tail(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Read) {
        return denied;
    }
    let ws = app.svc.workspace();
    let from = match q_u64(&q, "from", ws.applied() + 1) {
        Ok(f) => f.max(1),
        Err(e) => return app.reply(Err(e)),
    };
    let mut sub = match ws.subscribe(from) {
        Ok(s) => s,
        Err(e) => return app.reply(Err(e.into())),
    };
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_CHUNKS_AHEAD_MAX);
    let stop = app.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                e = sub.next() => e,
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            let line = match entry {
                Ok(e) => {
                    let mut line = serde_json::to_vec(&entry_json(&e)).unwrap_or_default();
                    line.push(b'\n');
                    line
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            tokio::select! {
                sent = tx.send(Ok(Bytes::from(line))) => if sent.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    });
    app.svc.metrics().http(200);
    (
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn state_digest(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::StateDigest)).await
}

async fn audit_verify(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::AuditVerify)).await
}

/// Writes into a channel of chunks from a blocking thread.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

/// Bytes per streamed chunk.
const CHUNK_BYTES: usize = 256 * 1024;

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// Streams a directory made by `make` (in a scratch directory, on a blocking thread) as a
/// bundle; a failure before the first byte is a JSON error. The caller checks the token.
async fn stream_dir(
    app: &App,
    make: impl FnOnce(&std::path::Path) -> Result<(), ApiError> + Send + 'static,
) -> Response {
    let data = app.svc.workspace().data_dir().to_path_buf();
    let made = tokio::task::spawn_blocking(move || {
        // In the data directory: a checkpoint there is hard links, not a copy.
        let scratch = cairn::tools::scratch_dir(&data, "stream")?;
        let dir = scratch.path().join("out");
        make(&dir)?;
        Ok::<_, ApiError>((scratch, dir))
    })
    .await
    .map_err(|e| ApiError::new(codes::INTERNAL, format!("task failed: {e}")))
    .and_then(|r| r);
    let (scratch, dir) = match made {
        Ok(x) => x,
        Err(e) => return app.reply(Err(e)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS_AHEAD_MAX);
    tokio::task::spawn_blocking(move || {
        let _keep = scratch;
        let mut w = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        if let Err(e) = crate::bundle::write_bundle(&dir, &mut w) {
            tracing::warn!("streaming a bundle failed: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    app.svc.metrics().http(200);
    (
        StatusCode::OK,
        [("content-type", "application/octet-stream")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// The request body (`{}` from the CLI) is read before the stream starts: a connection closed
/// with request bytes still unread is reset by the kernel, and the reset can overtake the end
/// of the stream at the client (seen as `Connection reset by peer` near the end of a backup).
async fn backup(
    State(app): State<App>,
    headers: HeaderMap,
    _body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Admin) {
        return denied;
    }
    let ws = app.svc.workspace().clone();
    stream_dir(&app, move |dir| {
        ws.store().backup(dir)?;
        Ok(())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    until: u64,
}

async fn replay(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Admin) {
        return denied;
    }
    let until = match json_body::<ReplayBody>(body) {
        Ok(b) => b.until,
        Err(e) => return app.reply(Err(e)),
    };
    let ws = app.svc.workspace().clone();
    stream_dir(&app, move |dir| {
        let view = ws.view()?;
        let kernel = ws.store().machine().0.clone();
        cairn::tools::replay(&view, ws.data_dir(), kernel, until, dir, &mut |_| {})?;
        // The vault key stays on the server: a replay, like a backup, carries ciphertext only.
        let _ = std::fs::remove_file(dir.join(cairn::VAULT_KEY_FILE));
        Ok(())
    })
    .await
}

/// The body (`{}`) is read, unused, for the reason given at [`backup`].
async fn rebuild(
    State(app): State<App>,
    headers: HeaderMap,
    _body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = app.auth(&headers, Some(Role::Admin)).and_then(|_| {
        Err(ApiError::new(
            codes::OFFLINE_ONLY,
            "rebuild needs the workspace closed: stop the server, run `cairn rebuild --data DIR`, \
             and start it again",
        ))
    });
    app.reply(result)
}

async fn token_list(State(app): State<App>, headers: HeaderMap) -> Response {
    app.run(&headers, Ok(Request::TokenList)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expect_offset: Option<u64>,
    #[serde(default)]
    expect_hash: Option<String>,
    #[serde(default)]
    handoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffBody {
    to: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /v1/promote` (admin, on a mirror): this node becomes the leader of a new epoch.
async fn promote(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<PromoteBody>(body).map(|b| Request::Promote {
        name: b.name,
        expect_offset: b.expect_offset,
        expect_hash: b.expect_hash,
        handoff: b.handoff,
    });
    app.run(&headers, req).await
}

/// `POST /v1/handoff` (admin, on the leader): the planned switch to the mirror at `to`.
async fn handoff(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<HandoffBody>(body).map(|b| Request::Handoff {
        to: b.to,
        name: b.name,
        timeout_ms: b.timeout_ms,
    });
    app.run(&headers, req).await
}

async fn token_create(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = json_body::<TokenBody>(body).map(|b| Request::TokenCreate {
        name: b.name,
        role: b.role,
    });
    app.run(&headers, req).await
}

async fn token_revoke(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    app.run(&headers, Ok(Request::TokenRevoke { name })).await
}

async fn fallback(State(app): State<App>, method: Method, uri: Uri) -> Response {
    app.reply(Err(ApiError::new(
        codes::NOT_FOUND,
        format!("no endpoint {method} {}", echo_bare(uri.path())),
    )))
}

/// The mirrors table of a leader, or the 503 `not_leader` a mirror answers replication
/// requests with (mirrors do not cascade).
fn leader_mirrors(app: &App) -> Result<std::sync::Arc<cairn_mirror::Mirrors>, ApiError> {
    match app.svc.replication() {
        crate::service::Replication::Leader(m) => Ok(m),
        crate::service::Replication::SteppedDown { to } => Err(ApiError::new(
            codes::NOT_LEADER,
            format!("this node stepped down in a handoff to {to}; mirrors follow the leader"),
        )),
        crate::service::Replication::Mirror(f) => Err(ApiError::new(
            codes::NOT_LEADER,
            format!(
                "this node is a mirror of {}; mirrors follow the leader",
                f.get().leader
            ),
        )),
    }
}

/// `GET /v1/replication/stream?workspace&from&prev&protocol&schema&projection&name` (role
/// `mirror`): the follower's hello is admitted or refused (409 with the refusal's code), then
/// frames follow (`cairn_mirror::protocol`).
async fn replication_stream(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Mirror) {
        return denied;
    }
    let mirrors = match leader_mirrors(&app) {
        Ok(m) => m,
        Err(e) => {
            let mut response = app.reply(Err(e));
            // A node that handed off tells its former mirrors whom it follows now (or whom it
            // handed off to).
            let leader = match app.svc.replication() {
                crate::service::Replication::Mirror(f) => Some(f.get().leader),
                crate::service::Replication::SteppedDown { to } => Some(to),
                crate::service::Replication::Leader(_) => None,
            };
            if let Some(Ok(v)) = leader.map(|l| l.parse()) {
                response
                    .headers_mut()
                    .insert(cairn_mirror::follower::LEADER_HEADER, v);
            }
            return response;
        }
    };
    let hello = match cairn_mirror::FollowerHello::from_query(|k| q.get(k).cloned()) {
        Ok(h) => h,
        Err(e) => return app.reply(Err(ApiError::bad(e))),
    };
    let opened = cairn_mirror::open_stream(
        app.svc.workspace().clone(),
        hello,
        mirrors,
        app.svc.stream_stop(),
    )
    .await;
    let rx = match opened {
        Ok(rx) => rx,
        Err(cairn_mirror::StreamError::Refused(r)) => {
            return app.reply(Err(ApiError::new(r.code(), r.to_string())))
        }
        Err(cairn_mirror::StreamError::Failed(e)) => return app.reply(Err(e.into())),
    };
    app.svc.metrics().http(200);
    let chunks = tokio_stream::wrappers::ReceiverStream::new(rx);
    // How often this leader wants the mirror's acknowledgements: every commit when writes
    // wait for them (`--sync-mirrors`), otherwise coalesced.
    let ack_interval_ms = cairn_mirror::protocol::ack_interval_ms(app.svc.sync_mirrors().count);
    (
        StatusCode::OK,
        [
            (
                "content-type",
                "application/vnd.cairn.replication".to_string(),
            ),
            (
                cairn_mirror::protocol::ACK_INTERVAL_HEADER,
                ack_interval_ms.to_string(),
            ),
            // Its streams mark the head whenever they have sent everything committed.
            (cairn_mirror::protocol::HEAD_MARKS_HEADER, "1".to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// `POST /v1/replication/ack?name&applied&hash` (role `mirror`): a mirror's durably applied
/// offset and the hash of its entry there (checked against this leader's).
async fn replication_ack(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Mirror) {
        return denied;
    }
    let checked = async {
        let mirrors = leader_mirrors(&app)?;
        let name = q
            .get("name")
            .filter(|n| !n.is_empty() && n.len() <= cairn_mirror::protocol::MIRROR_NAME_BYTES_MAX)
            .ok_or_else(|| ApiError::bad("query parameter name is missing or too long"))?;
        let applied = q_u64(&q, "applied", 0)?;
        let hash = q
            .get("hash")
            .and_then(|h| cairn_mirror::protocol::parse_hash(h))
            .ok_or_else(|| ApiError::bad("query parameter hash is missing or not 64 hex digits"))?;
        let ws = app.svc.workspace();
        let head = ws.applied();
        if applied > head {
            return Err(ApiError::new(
                "follower_ahead",
                format!(
                    "mirror {} acknowledges offset {applied}; this leader's head is {head}",
                    echo(name)
                ),
            ));
        }
        // Counted only if it is this leader's entry: an acknowledgement from a log that
        // forked is not a copy of this one.
        if cairn_mirror::leader::hash_at(ws, applied).await? != Some(hash) {
            return Err(ApiError::new(
                "diverged",
                format!(
                    "mirror {} acknowledges offset {applied} with a hash that is not this \
                     leader's entry there",
                    echo(name)
                ),
            ));
        }
        mirrors.ack(name, applied, cairn_mirror::leader::now_ms());
        Ok(serde_json::json!({ "applied_offset": applied }))
    };
    let result = checked.await;
    app.reply(result)
}

/// `GET /v1/replication/hash?offset=N` (role `mirror`): `{offset, hash}` of the leader's
/// entry N (`hash` null past the head), for a follower finding where its log diverged.
async fn replication_hash(State(app): State<App>, headers: HeaderMap, Query(q): Q) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Mirror) {
        return denied;
    }
    let offset = match q_u64(&q, "offset", 0) {
        Ok(o) => o,
        Err(e) => return app.reply(Err(e)),
    };
    let result = cairn_mirror::leader::hash_at(app.svc.workspace(), offset)
        .await
        .map(|h| serde_json::json!({ "offset": offset, "hash": h.map(|h| h.to_string()) }))
        .map_err(ApiError::from);
    app.reply(result)
}

/// `GET /v1/replication/bundle` (role `mirror`): a consistent backup of the leader as a bundle
/// (`crate::bundle`), to provision an empty mirror. The vault key is not in it.
async fn replication_bundle(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(denied) = app.allow(&headers, Role::Mirror) {
        return denied;
    }
    if let Err(e) = leader_mirrors(&app) {
        return app.reply(Err(e));
    }
    let ws = app.svc.workspace().clone();
    stream_dir(&app, move |dir| {
        ws.store().backup(dir)?;
        Ok(())
    })
    .await
}
