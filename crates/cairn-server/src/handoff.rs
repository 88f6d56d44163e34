//! `cairn handoff`: the planned switch of leaders, with nothing lost. The leader checks the
//! mirror it hands off to, stops taking writes (503 `handing_off`), steps down (its change
//! engine stops; every command accepted before is committed), waits until that mirror has
//! applied its head, has it promote with that exact head as the condition, and follows it.
//!
//! Until the mirror is asked to promote, any failure makes this node lead again. Once asked,
//! only a definite "not promoted" (`not_at_head`) does. The promotion carries a handoff id and
//! is idempotent on the mirror, so an answer that never came is asked for again with the same
//! id until a definite one comes; if none comes in time, this node stays stepped down (two
//! leaders would fork the log): `status` says so, and the error says what to do.
//!
//! The caller's admin token is sent to the mirror (tokens replicate, so it is valid there),
//! but only to a bare `scheme://host[:port]` whose unauthenticated `/v1/health` says it holds
//! this workspace: a mistyped URL does not get the secret.

use std::time::{Duration, Instant};

use cairn::kernel::model::Role;
use cairn::CommandOptions;
use serde_json::{json, Value};

use crate::api::{codes, ApiError};
use crate::service::{Replication, Service};

/// How long a handoff waits for the mirror to apply the leader's head by default.
pub const HANDOFF_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The longest wait a handoff may ask for.
pub const HANDOFF_TIMEOUT_MS_MAX: u64 = 600_000;
/// How often the mirror's status is read while waiting.
const HANDOFF_POLL_MS: u64 = 20;
/// How long one call to the mirror may take.
const HANDOFF_CALL_TIMEOUT_MS: u64 = 10_000;
/// How long a promotion whose answer did not come is asked for again (same handoff id).
pub const HANDOFF_PROMOTE_RETRY_MS_MAX: u64 = 60_000;
/// The wait between two askings of an unanswered promotion.
const HANDOFF_PROMOTE_RETRY_WAIT_MS: u64 = 250;
/// The longest mirror URL a handoff takes.
pub const HANDOFF_URL_BYTES_MAX: usize = 2048;
/// The file (in the data directory, mode 0600) that keeps the `mirror` token this node
/// follows the new leader with, for `cairn mirror --leader-token` after a restart.
pub const HANDOFF_TOKEN_FILE: &str = "leader.token";
/// The name this node takes in the new leader's mirrors table unless one is given.
pub const FORMER_LEADER_NAME: &str = "former-leader";

/// What a handoff is asked to do.
pub struct HandoffPlan {
    /// The mirror's base URL.
    pub to: String,
    /// This node's name as a mirror of it.
    pub name: String,
    /// How long the mirror may take to apply the head.
    pub timeout: Duration,
}

impl HandoffPlan {
    /// Checks the arguments of `POST /v1/handoff`.
    pub fn parse(
        to: &str,
        name: Option<String>,
        timeout_ms: Option<u64>,
    ) -> Result<HandoffPlan, ApiError> {
        let to = base_url(to).map_err(ApiError::bad)?;
        let name = name.unwrap_or_else(|| FORMER_LEADER_NAME.to_string());
        let max = cairn_mirror::protocol::MIRROR_NAME_BYTES_MAX;
        if name.is_empty()
            || name.len() > max
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(ApiError::bad(format!(
                "the mirror name must be 1..={max} of [A-Za-z0-9-_.:]"
            )));
        }
        let timeout_ms = timeout_ms.unwrap_or(HANDOFF_TIMEOUT_MS_DEFAULT);
        if timeout_ms == 0 || timeout_ms > HANDOFF_TIMEOUT_MS_MAX {
            return Err(ApiError::bad(format!(
                "the handoff timeout must be 1..={HANDOFF_TIMEOUT_MS_MAX} ms"
            )));
        }
        Ok(HandoffPlan {
            to,
            name,
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

/// Checks that `to` is a bare base URL, `http(s)://host[:port]` (no user, path, query or
/// fragment: the admin token goes there), and returns it without a trailing `/`.
fn base_url(to: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "the mirror to hand off to must be http://HOST[:PORT] or https://HOST[:PORT], not {}",
            cairn::kernel::echo::echo(to)
        )
    };
    let trimmed = to.trim().trim_end_matches('/');
    if trimmed.len() > HANDOFF_URL_BYTES_MAX {
        return Err(bad());
    }
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let (host, port) = if rest.starts_with('[') {
        let close = rest.find(']').ok_or_else(bad)?;
        match &rest[close + 1..] {
            "" => (&rest[..=close], None),
            tail => (
                &rest[..=close],
                Some(tail.strip_prefix(':').ok_or_else(bad)?),
            ),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(bad());
    }
    Ok(trimmed.to_string())
}

/// The part of a node's `status` a handoff reads.
struct Remote {
    role: String,
    applied: u64,
    follow: String,
}

/// How a call to the mirror failed.
enum Failure {
    /// It answered with an error code: it did not do it.
    Refused {
        /// The error's code.
        code: String,
        /// What it said.
        message: String,
    },
    /// No answer, or one that does not say (a proxy's 502, an internal error): it may or may
    /// not have done it.
    NoAnswer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { code, message } => write!(f, "{code}: {message}"),
            Failure::NoAnswer(m) => f.write_str(m),
        }
    }
}

/// Calls the mirror; with the caller's token once the mirror showed it holds this workspace.
struct Peer {
    base: String,
    bearer: Option<String>,
    agent: ureq::Agent,
}

impl Peer {
    fn new(base: &str) -> Peer {
        Peer {
            base: base.to_string(),
            bearer: None,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_millis(HANDOFF_CALL_TIMEOUT_MS))
                .build(),
        }
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut request = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(bearer) = &self.bearer {
            request = request.set("authorization", bearer);
        }
        tokio::task::spawn_blocking(move || call(request, body))
            .await
            .unwrap_or_else(|e| Err(Failure::NoAnswer(format!("call task failed: {e}"))))
    }

    /// The workspace the node at the URL holds, asked without a token.
    async fn workspace_id(&self) -> Result<String, Failure> {
        let v = self.call("GET", "/v1/health", None).await?;
        Ok(v["workspace_id"].as_str().unwrap_or("").to_string())
    }

    async fn status(&self) -> Result<Remote, Failure> {
        let v = self.call("GET", "/v1/status", None).await?;
        Ok(Remote {
            role: v["role"].as_str().unwrap_or("").to_string(),
            applied: v["applied_offset"].as_u64().unwrap_or(0),
            follow: v["follow"]["state"].as_str().unwrap_or("").to_string(),
        })
    }
}

fn call(request: ureq::Request, body: Option<Value>) -> Result<Value, Failure> {
    let answer = match body {
        Some(b) => request.send_json(b),
        None => request.call(),
    };
    match answer {
        Ok(r) => r
            .into_json()
            .map_err(|e| Failure::NoAnswer(format!("unreadable answer: {e}"))),
        Err(ureq::Error::Status(status, r)) => {
            let v: Value = r.into_json().unwrap_or(Value::Null);
            match v["error"]["code"].as_str() {
                // A cairn error with a code says what was (not) done; anything else does not.
                Some(code) if status < 500 => Err(Failure::Refused {
                    code: code.to_string(),
                    message: v["error"]["message"].as_str().unwrap_or("").to_string(),
                }),
                _ => Err(Failure::NoAnswer(format!("HTTP {status}: {v}"))),
            }
        }
        Err(e) => Err(Failure::NoAnswer(e.to_string())),
    }
}

fn failed(message: String) -> ApiError {
    ApiError::new(codes::HANDOFF_FAILED, message)
}

impl Service {
    /// Hands leadership to the mirror `plan.to` (see the module doc). `secret` is the caller's
    /// admin token, used for the calls to the mirror; `actor` its name. Runs to its end on
    /// its own task: a client that goes away mid-handoff does not leave it half done.
    pub async fn handoff(
        &self,
        plan: HandoffPlan,
        secret: String,
        actor: String,
    ) -> Result<Value, ApiError> {
        let svc = self.clone();
        tokio::spawn(async move { svc.handoff_here(plan, &secret, &actor).await })
            .await
            .unwrap_or_else(|e| Err(failed(format!("the handoff task failed: {e}"))))
    }

    async fn handoff_here(
        &self,
        plan: HandoffPlan,
        secret: &str,
        actor: &str,
    ) -> Result<Value, ApiError> {
        if !matches!(self.replication(), Replication::Leader(_))
            || self.workspace().role() != cairn::NodeRole::Leader
        {
            return Err(ApiError::new(
                codes::INVALID_STATE,
                "this node is not the leader; only the leader hands off",
            ));
        }
        let _slot = self.claim_handoff(&plan.to)?;
        let ws = self.workspace().clone();
        let mut peer = Peer::new(&plan.to);
        let unchanged = |what: String| failed(format!("{what}; nothing changed"));
        let id = peer.workspace_id().await.map_err(|e| {
            unchanged(format!(
                "{} cannot be asked which workspace it holds ({e})",
                plan.to
            ))
        })?;
        if id != ws.id().to_string() {
            return Err(unchanged(format!(
                "{} holds workspace {}, not this workspace {}",
                plan.to,
                cairn::kernel::echo::echo(&id),
                ws.id()
            )));
        }
        peer.bearer = Some(format!("Bearer {secret}"));
        let before = peer
            .status()
            .await
            .map_err(|e| unchanged(format!("the mirror at {} cannot be asked ({e})", plan.to)))?;
        if before.role != "mirror" || !matches!(before.follow.as_str(), "following" | "catching_up")
        {
            return Err(unchanged(format!(
                "{} is not a mirror following this leader (role {}, {})",
                plan.to,
                cairn::kernel::echo::echo(&before.role),
                cairn::kernel::echo::echo(&before.follow)
            )));
        }
        // The token this node will follow the new leader with: created while this node
        // leads, so it replicates to the mirror before it promotes.
        let token_name = format!("handoff-{}", uuid::Uuid::new_v4().simple());
        let opts = CommandOptions {
            actor: Some(actor.to_string()),
            idempotency_key: None,
        };
        let (_, follow_secret) = ws.token_create(&token_name, Role::Mirror, &opts).await?;
        let token_file = ws.data_dir().join(HANDOFF_TOKEN_FILE);
        // Drops the token made for following (no one will use it).
        let drop_token = || {
            let (ws, opts, token_name, token_file) = (
                ws.clone(),
                opts.clone(),
                token_name.clone(),
                token_file.clone(),
            );
            async move {
                let _ = std::fs::remove_file(&token_file);
                if let Err(e) = ws.token_revoke(&token_name, &opts).await {
                    tracing::warn!(token = %token_name, error = %e, "could not revoke the handoff's token");
                }
            }
        };
        if let Err(e) = write_secret(&token_file, &follow_secret) {
            drop_token().await;
            return Err(unchanged(format!("write {}: {e}", token_file.display())));
        }
        let head = match ws.step_down().await {
            Ok(head) => head,
            Err(e) => {
                // `step_down` leads again by itself when it fails.
                drop_token().await;
                return Err(unchanged(format!("stepping down failed: {e}")));
            }
        };
        tracing::warn!(to = %plan.to, offset = head.offset, "handing off");
        let lead_again = |why: String| {
            let ws = ws.clone();
            async move {
                if let Err(e) = ws.resume_leading().await {
                    return failed(format!("{why}; and leading again failed: {e}"));
                }
                drop_token().await;
                failed(format!("{why}; this node leads again, nothing was lost"))
            }
        };
        if let Err(why) = self.wait_applied_by(&peer, &plan, head.offset).await {
            return Err(lead_again(why).await);
        }
        // The mirror has everything: end its stream, so that its follower stops at once when
        // the promotion stops it (it would otherwise notice only at the next heartbeat).
        self.end_streams();
        let epoch = match self.promote_peer(&peer, &plan, &head).await {
            Promotion::Promoted { epoch } => epoch,
            Promotion::NotPromoted(why) => return Err(lead_again(why).await),
            Promotion::Unknown(why) => {
                self.step_aside(&plan.to);
                return Err(failed(format!(
                    "{why}: it may lead or not. This node stays stepped down and takes no \
                     writes. If {to} leads, restart this node as its mirror (`cairn mirror \
                     --leader {to} --leader-token {file}`); if it does not, `cairn promote` \
                     this node's stopped data directory",
                    to = plan.to,
                    file = token_file.display()
                )));
            }
        };
        let follower = cairn_mirror::start(
            ws.clone(),
            tokio::runtime::Handle::current(),
            cairn_mirror::FollowerOptions {
                leader: plan.to.clone(),
                token: follow_secret,
                name: plan.name.clone(),
            },
        );
        let follower = match follower {
            Ok(f) => f,
            Err(e) => {
                self.step_aside(&plan.to);
                return Err(failed(format!(
                    "{to} leads now, but following it failed to start ({e}); restart this \
                     node as its mirror (`cairn mirror --leader {to} --leader-token {file}`)",
                    to = plan.to,
                    file = token_file.display()
                )));
            }
        };
        self.become_mirror(follower);
        tracing::warn!(leader = %plan.to, "handed off: following the new leader");
        Ok(json!({
            "role": "mirror",
            "leader": plan.to,
            "handed_off_at": head.offset,
            "epoch": epoch,
            "name": plan.name,
            "token_file": token_file.display().to_string(),
        }))
    }

    /// Waits until the mirror has applied `offset`, up to the plan's timeout.
    async fn wait_applied_by(
        &self,
        peer: &Peer,
        plan: &HandoffPlan,
        offset: u64,
    ) -> Result<(), String> {
        let deadline = Instant::now() + plan.timeout;
        loop {
            let asked = peer.status().await;
            match asked {
                Ok(s) if s.applied >= offset => return Ok(()),
                // Asking again would get the same answer (a token revoked meanwhile, ...).
                Err(Failure::Refused { code, message }) => {
                    return Err(format!("the mirror at {} refused the status ({code}: {message})", plan.to))
                }
                Ok(s) if Instant::now() >= deadline => {
                    return Err(format!(
                        "the mirror at {} applied offset {} of this leader's head {offset} within {} ms",
                        plan.to,
                        s.applied,
                        plan.timeout.as_millis()
                    ))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "the mirror at {} could not be asked within {} ms ({e})",
                        plan.to,
                        plan.timeout.as_millis()
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(HANDOFF_POLL_MS)).await,
            }
        }
    }

    /// Asks the mirror to promote on exactly `head`, again with the same handoff id while no
    /// definite answer comes.
    async fn promote_peer(
        &self,
        peer: &Peer,
        plan: &HandoffPlan,
        head: &cairn_log::Head,
    ) -> Promotion {
        let body = json!({
            "name": leader_name(&plan.to),
            "expect_offset": head.offset,
            "expect_hash": head.hash.to_string(),
            "handoff": uuid::Uuid::new_v4().to_string(),
        });
        let deadline = Instant::now() + Duration::from_millis(HANDOFF_PROMOTE_RETRY_MS_MAX);
        loop {
            match peer.call("POST", "/v1/promote", Some(body.clone())).await {
                Ok(v) => {
                    return Promotion::Promoted {
                        epoch: v["epoch"].as_u64(),
                    }
                }
                // Leading already (it was promoted, and forgot the id in a restart; or someone
                // promoted it by hand): this node must not lead; it follows, and its follower
                // checks that its log is a prefix of that leader's.
                Err(Failure::Refused { code, .. }) if code == codes::ALREADY_LEADER => {
                    return Promotion::Promoted { epoch: None }
                }
                Err(Failure::Refused { code, message })
                    if code == codes::NOT_AT_HEAD
                        || code == codes::BAD_REQUEST
                        || code == codes::UNAUTHORIZED
                        || code == codes::FORBIDDEN =>
                {
                    return Promotion::NotPromoted(format!(
                        "the mirror at {} did not promote ({code}: {message})",
                        plan.to
                    ))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Promotion::Unknown(format!(
                        "the mirror at {} gave no definite answer to the promotion within {} ms \
                         (last: {e})",
                        plan.to, HANDOFF_PROMOTE_RETRY_MS_MAX
                    ))
                }
                Err(e) => {
                    tracing::warn!(to = %plan.to, error = %e, "no definite answer to the promotion; asking again");
                    tokio::time::sleep(Duration::from_millis(HANDOFF_PROMOTE_RETRY_WAIT_MS)).await;
                }
            }
        }
    }
}

/// What a handoff's promotion came to.
enum Promotion {
    /// The mirror leads (its new epoch, when it said).
    Promoted { epoch: Option<u64> },
    /// It did not promote, and will not for this handoff.
    NotPromoted(String),
    /// No definite answer.
    Unknown(String),
}

/// The name the new epoch records for its leader: the URL it was handed off to.
fn leader_name(to: &str) -> String {
    if to.len() <= cairn_mirror::protocol::MIRROR_NAME_BYTES_MAX {
        to.to_string()
    } else {
        "handoff".to_string()
    }
}

/// Writes a secret to a new file of mode 0600, durably.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_checked() {
        let p = HandoffPlan::parse("http://127.0.0.1:1/", None, None).unwrap();
        assert_eq!(p.to, "http://127.0.0.1:1");
        assert_eq!(p.name, FORMER_LEADER_NAME);
        assert_eq!(p.timeout, Duration::from_millis(HANDOFF_TIMEOUT_MS_DEFAULT));
        for bad in ["127.0.0.1:1", "", "ftp://x"] {
            let e = HandoffPlan::parse(bad, None, None).err().unwrap();
            assert!(e.message.contains("http://"), "{bad}: {}", e.message);
        }
        let e = HandoffPlan::parse("http://x", Some("a b".into()), None)
            .err()
            .unwrap();
        assert!(e.message.contains("mirror name"), "{}", e.message);
        for t in [0, HANDOFF_TIMEOUT_MS_MAX + 1] {
            let e = HandoffPlan::parse("http://x", None, Some(t)).err().unwrap();
            assert!(e.message.contains("timeout"), "{}", e.message);
        }
    }
}
