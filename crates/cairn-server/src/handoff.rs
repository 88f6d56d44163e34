//! `cairn handoff`: the planned switch of leaders, with nothing lost. The leader checks the
//! mirror it hands off to, stops taking writes (503 `handing_off`), steps down (its change
//! engine stops; every command accepted before is committed), waits until that mirror has
//! applied its head, has it promote with that exact head as the condition, and follows it.
//!
//! Until the mirror is asked to promote, any failure makes this node lead again. Once asked,
//! a clear refusal does too; an answer that never came is checked with the mirror's status,
//! and when even that cannot tell, this node stays a mirror (two leaders would fork the log),
//! and the error says what to do.

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
        let to = to.trim().trim_end_matches('/');
        if !(to.starts_with("http://") || to.starts_with("https://")) || to.len() > 2048 {
            return Err(ApiError::bad(format!(
                "the mirror to hand off to must be an http:// or https:// URL, not {}",
                cairn::kernel::echo::echo(to)
            )));
        }
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
            to: to.to_string(),
            name,
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

/// The part of a node's `status` a handoff reads.
struct Remote {
    role: String,
    workspace_id: String,
    applied: u64,
    follow: String,
}

/// Calls the mirror with the caller's own token (tokens replicate, so it is valid there).
struct Peer {
    base: String,
    bearer: String,
    agent: ureq::Agent,
}

impl Peer {
    fn new(base: &str, secret: &str) -> Peer {
        Peer {
            base: base.to_string(),
            bearer: format!("Bearer {secret}"),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_millis(HANDOFF_CALL_TIMEOUT_MS))
                .build(),
        }
    }

    async fn status(&self) -> Result<Remote, String> {
        let (url, bearer, agent) = (
            format!("{}/v1/status", self.base),
            self.bearer.clone(),
            self.agent.clone(),
        );
        let v = blocking(move || call(agent.get(&url).set("authorization", &bearer), None))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Remote {
            role: v["role"].as_str().unwrap_or("").to_string(),
            workspace_id: v["workspace_id"].as_str().unwrap_or("").to_string(),
            applied: v["applied_offset"].as_u64().unwrap_or(0),
            follow: v["follow"]["state"].as_str().unwrap_or("").to_string(),
        })
    }

    async fn promote(&self, body: Value) -> Result<Value, Failure> {
        let (url, bearer, agent) = (
            format!("{}/v1/promote", self.base),
            self.bearer.clone(),
            self.agent.clone(),
        );
        blocking(move || call(agent.post(&url).set("authorization", &bearer), Some(body))).await
    }
}

/// How a call to the mirror failed.
enum Failure {
    /// It answered with an error: it did not do it.
    Refused(String),
    /// No answer: it may or may not have done it.
    NoAnswer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(m) | Failure::NoAnswer(m) => f.write_str(m),
        }
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
            Err(Failure::Refused(format!(
                "HTTP {status} {}: {}",
                v["error"]["code"].as_str().unwrap_or("?"),
                v["error"]["message"].as_str().unwrap_or("")
            )))
        }
        Err(e) => Err(Failure::NoAnswer(e.to_string())),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Failure::NoAnswer(format!("call task failed: {e}"))))
}

fn failed(message: String) -> ApiError {
    ApiError::new(codes::HANDOFF_FAILED, message)
}

impl Service {
    /// Hands leadership to the mirror `plan.to` (see the module doc). `secret` is the caller's
    /// admin token, used for the calls to the mirror; `actor` its name.
    pub async fn handoff(
        &self,
        plan: HandoffPlan,
        secret: &str,
        actor: &str,
    ) -> Result<Value, ApiError> {
        if !matches!(self.replication(), Replication::Leader(_))
            || self.workspace().role() != cairn::NodeRole::Leader
        {
            return Err(ApiError::new(
                "invalid_state",
                "this node is a mirror; only the leader hands off",
            ));
        }
        let _slot = self.claim_handoff(&plan.to)?;
        let peer = Peer::new(&plan.to, secret);
        let ws = self.workspace().clone();
        let before = peer
            .status()
            .await
            .map_err(|e| failed(format!("the mirror at {} cannot be asked: {e}", plan.to)))?;
        if before.workspace_id != ws.id().to_string() {
            return Err(failed(format!(
                "{} holds workspace {}, not this workspace {}",
                plan.to,
                cairn::kernel::echo::echo(&before.workspace_id),
                ws.id()
            )));
        }
        if before.role != "mirror" || !matches!(before.follow.as_str(), "following" | "catching_up")
        {
            return Err(failed(format!(
                "{} is not a mirror following this leader (role {}, {}); nothing changed",
                plan.to,
                cairn::kernel::echo::echo(&before.role),
                cairn::kernel::echo::echo(&before.follow)
            )));
        }
        // The token this node will follow the new leader with: created while this node
        // leads, so it replicates to the mirror before it promotes.
        let token_name = format!(
            "handoff-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let opts = CommandOptions {
            actor: Some(actor.to_string()),
            idempotency_key: None,
        };
        let (_, follow_secret) = ws.token_create(&token_name, Role::Mirror, &opts).await?;
        let token_file = ws.data_dir().join(HANDOFF_TOKEN_FILE);
        write_secret(&token_file, &follow_secret).map_err(|e| {
            failed(format!(
                "write {}: {e}; nothing changed",
                token_file.display()
            ))
        })?;

        let head = ws.step_down().await?;
        tracing::warn!(to = %plan.to, offset = head.offset, "handing off");
        // Leads again, and drops the token made for following (no one will use it).
        let lead_again = |why: String| {
            let (ws, opts, token_name, token_file) = (
                ws.clone(),
                opts.clone(),
                token_name.clone(),
                token_file.clone(),
            );
            async move {
                if let Err(e) = ws.resume_leading().await {
                    return failed(format!("{why}; and leading again failed: {e}"));
                }
                let _ = std::fs::remove_file(&token_file);
                if let Err(e) = ws.token_revoke(&token_name, &opts).await {
                    tracing::warn!(token = %token_name, error = %e, "could not revoke the handoff's token");
                }
                failed(format!("{why}; this node leads again, nothing was lost"))
            }
        };
        // Wait until the mirror has every entry of this leader.
        let started = Instant::now();
        loop {
            match peer.status().await {
                Ok(s) if s.applied >= head.offset => break,
                Ok(s) if started.elapsed() >= plan.timeout => {
                    return Err(lead_again(format!(
                        "the mirror at {} applied offset {} of this leader's head {} within {} ms",
                        plan.to,
                        s.applied,
                        head.offset,
                        plan.timeout.as_millis()
                    ))
                    .await)
                }
                Err(e) if started.elapsed() >= plan.timeout => {
                    return Err(lead_again(format!(
                        "the mirror at {} could not be asked within {} ms ({e})",
                        plan.to,
                        plan.timeout.as_millis()
                    ))
                    .await)
                }
                _ => tokio::time::sleep(Duration::from_millis(HANDOFF_POLL_MS)).await,
            }
        }
        let leader_name = if plan.to.len() <= cairn_mirror::protocol::MIRROR_NAME_BYTES_MAX {
            plan.to.clone()
        } else {
            "handoff".to_string()
        };
        // The mirror has everything: end its stream, so that its follower stops at once when
        // the promotion stops it (it would otherwise notice only at the next heartbeat).
        self.end_streams();
        let promoted = peer
            .promote(json!({
                "name": leader_name,
                "expect_offset": head.offset,
                "expect_hash": head.hash.to_string(),
            }))
            .await;
        let epoch = match promoted {
            Ok(v) => v["epoch"].as_u64().unwrap_or(0),
            Err(Failure::Refused(why)) => {
                return Err(lead_again(format!(
                    "the mirror at {} refused to promote ({why})",
                    plan.to
                ))
                .await)
            }
            Err(Failure::NoAnswer(why)) => match peer.status().await {
                Ok(s) if s.role == "leader" => 0,
                Ok(_) => {
                    return Err(lead_again(format!(
                    "the mirror at {} did not answer the promotion ({why}) and is still a mirror",
                    plan.to
                ))
                    .await)
                }
                Err(e) => {
                    return Err(failed(format!(
                        "the mirror at {to} did not answer the promotion ({why}) and cannot be \
                         asked now ({e}): it may lead or not. This node stays a mirror and takes \
                         no writes. If {to} leads, restart this node as its mirror (`cairn mirror \
                         --leader {to} --leader-token {file}`); if not, `cairn promote` this node",
                        to = plan.to,
                        file = token_file.display()
                    )))
                }
            },
        };
        let follower = cairn_mirror::start(
            self.workspace().clone(),
            tokio::runtime::Handle::current(),
            cairn_mirror::FollowerOptions {
                leader: plan.to.clone(),
                token: follow_secret,
                name: plan.name.clone(),
            },
        )
        .map_err(|e| {
            failed(format!(
                "{} leads now, but following it failed to start ({e}); restart this node as \
                 its mirror (`cairn mirror --leader {} --leader-token {}`)",
                plan.to,
                plan.to,
                token_file.display()
            ))
        })?;
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
