//! The operations behind every CLI command and HTTP endpoint, as one `Request` enum: its HTTP
//! form (method, path, query, body), the role it needs, and `ApiError`, the JSON error every
//! failure becomes. The CLI's local mode hands a `Request` to [`crate::Service`] directly;
//! remote mode sends its HTTP form to a server, which turns it back into the same `Request`
//! for the same `Service`. Both modes therefore print from the same JSON value.

use cairn_kernel::model::Role;
use serde::{Deserialize, Serialize};

/// One operation. Names, states, roles and keep kinds travel as text and are checked by the
/// service, so both modes reject bad values with the same message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `cairn status`
    Status,
    /// `cairn pkg install MANIFEST.toml` (the manifest's text).
    PkgInstall {
        /// TOML text.
        manifest: String,
        /// Wait for the change to finish.
        wait: bool,
    },
    /// `cairn pkg uninstall NAME`
    PkgUninstall {
        /// Package.
        name: String,
        /// Kinds to keep (`vars`, `queues`, `vaults`, `daemons`, `model`).
        keep: Vec<String>,
        /// Abort and undo if `onuninstall` fails.
        strict: bool,
        /// Wait for the change to finish.
        wait: bool,
    },
    /// `cairn pkg list`
    PkgList,
    /// `cairn pkg show NAME`
    PkgShow {
        /// Package.
        name: String,
    },
    /// `cairn var set PKG KEY VALUE`
    VarSet {
        /// Owning package.
        pkg: String,
        /// Key.
        key: String,
        /// Value (text).
        value: String,
        /// Expected revision (0: must not exist).
        expect_revision: Option<u64>,
    },
    /// `cairn var get PKG KEY`
    VarGet {
        /// Owning package.
        pkg: String,
        /// Key.
        key: String,
    },
    /// `cairn var del PKG KEY`
    VarDel {
        /// Owning package.
        pkg: String,
        /// Key.
        key: String,
    },
    /// `cairn var list PKG`
    VarList {
        /// Owning package.
        pkg: String,
    },
    /// `cairn queue put PKG:QUEUE ITEM...`
    QueuePut {
        /// Owning package.
        pkg: String,
        /// Queue.
        queue: String,
        /// Items (text).
        items: Vec<String>,
    },
    /// `cairn queue read PKG:QUEUE [--from N]`
    QueueRead {
        /// Owning package.
        pkg: String,
        /// Queue.
        queue: String,
        /// First sequence number.
        from: u64,
        /// Most items.
        limit: u64,
    },
    /// `cairn queue ack PKG:QUEUE N`
    QueueAck {
        /// Owning package.
        pkg: String,
        /// Queue.
        queue: String,
        /// Last item acknowledged.
        upto: u64,
    },
    /// `cairn vault set PKG VAULT SECRET` (sealed before it is logged).
    VaultSet {
        /// Owning package.
        pkg: String,
        /// Vault.
        vault: String,
        /// The secret (text).
        secret: String,
    },
    /// `cairn vault get PKG VAULT` (admin: the plaintext).
    VaultGet {
        /// Owning package.
        pkg: String,
        /// Vault.
        vault: String,
    },
    /// `cairn daemon list`: records, with the leader's runtime facts (pid, since).
    DaemonList,
    /// `cairn daemon enable|disable PKG:NAME`
    DaemonSet {
        /// Owning package.
        pkg: String,
        /// Daemon.
        name: String,
        /// `enabled` or `disabled`.
        state: String,
    },
    /// `cairn daemon restart PKG:NAME` (runs on the leader that supervises it).
    DaemonRestart {
        /// Owning package.
        pkg: String,
        /// Daemon.
        name: String,
    },
    /// `cairn daemon logs PKG:NAME`: the tail of its output kept by the leader.
    DaemonLogs {
        /// Owning package.
        pkg: String,
        /// Daemon.
        name: String,
    },
    /// `cairn feature list`
    FeatureList,
    /// `cairn feature set NAME STATE`
    FeatureSet {
        /// Feature.
        name: String,
        /// `enabled` or `disabled` (or `always_*`).
        state: String,
        /// Expected revision.
        expect_revision: Option<u64>,
    },
    /// `cairn feature report NAME STATE`
    FeatureReport {
        /// Feature.
        name: String,
        /// Observed state.
        state: String,
    },
    /// `cairn iface connect PKG:PLUG PKG:SLOT`
    IfaceConnect {
        /// `pkg:plug`.
        plug: String,
        /// `pkg:slot`.
        slot: String,
        /// Wait for the change to finish.
        wait: bool,
    },
    /// `cairn iface disconnect PKG:PLUG PKG:SLOT`
    IfaceDisconnect {
        /// `pkg:plug`.
        plug: String,
        /// `pkg:slot`.
        slot: String,
        /// Wait for the change to finish.
        wait: bool,
    },
    /// `cairn iface list`
    IfaceList,
    /// `cairn change list`
    ChangeList,
    /// `cairn change show ID`
    ChangeShow {
        /// Change id.
        id: String,
    },
    /// `cairn change abort ID`
    ChangeAbort {
        /// Change id.
        id: String,
    },
    /// `cairn log show`
    LogShow {
        /// First offset.
        from: u64,
        /// Most entries.
        limit: u64,
        /// Only kinds starting with this.
        kind: Option<String>,
    },
    /// `cairn state digest`
    StateDigest,
    /// `cairn audit verify`
    AuditVerify,
    /// `cairn token create NAME --role R`
    TokenCreate {
        /// Name.
        name: String,
        /// Role.
        role: String,
    },
    /// `cairn token revoke NAME`
    TokenRevoke {
        /// Name.
        name: String,
    },
    /// `cairn token list`
    TokenList,
    /// `cairn drive ...` (`docs/drive.md`).
    Drive(crate::drive::DriveRequest),
    /// `cairn promote [--name NAME]`: this mirror becomes the leader of a new epoch.
    Promote {
        /// The name the `epoch.started` entry gives the new leader.
        name: Option<String>,
        /// Promote only if this mirror's head is exactly this offset (a handoff's check that
        /// the mirror has every entry the old leader wrote, and no more).
        expect_offset: Option<u64>,
        /// ... and its hash there (hex).
        expect_hash: Option<String>,
        /// The handoff asking (a repeat with the same id gets the first answer).
        handoff: Option<String>,
    },
    /// `cairn handoff --to URL [--name NAME] [--timeout-ms T]` (on the leader): the planned
    /// switch. This leader stops taking writes, waits until the mirror at `to` has applied its
    /// head, has it promote, and follows it.
    Handoff {
        /// The mirror's base URL, as this leader reaches it (and later follows it).
        to: String,
        /// The name this node is shown under in the new leader's mirrors table.
        name: Option<String>,
        /// How long to wait for the mirror to apply the head (default
        /// `HANDOFF_TIMEOUT_MS_DEFAULT`).
        timeout_ms: Option<u64>,
    },
}

/// For logs: every field but a vault secret, which is redacted.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::VaultSet { pkg, vault, .. } => f
                .debug_struct("VaultSet")
                .field("pkg", pkg)
                .field("vault", vault)
                .field("secret", &"<redacted>")
                .finish(),
            other => {
                let v = serde_json::to_value(other).map_err(|_| std::fmt::Error)?;
                write!(f, "{v}")
            }
        }
    }
}

/// How a request travels over HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// Path under the server's base URL, segments percent-encoded.
    pub path: String,
    /// Query parameters.
    pub query: Vec<(&'static str, String)>,
    /// JSON body.
    pub body: Option<serde_json::Value>,
}

impl Request {
    /// Whether the request only reads (it runs on the blocking pool and is not timed as a
    /// command).
    pub fn is_read(&self) -> bool {
        self.class().1
    }

    /// The least role that may run this request.
    pub fn role(&self) -> Role {
        self.class().0
    }

    /// `(least role, reads only)`, in one exhaustive match so that a new request is classified
    /// on both counts.
    fn class(&self) -> (Role, bool) {
        use Request::*;
        match self {
            Status
            | PkgList
            | PkgShow { .. }
            | VarGet { .. }
            | VarList { .. }
            | QueueRead { .. }
            | DaemonList
            | DaemonLogs { .. }
            | FeatureList
            | IfaceList
            | ChangeList
            | ChangeShow { .. }
            | LogShow { .. }
            | StateDigest
            | AuditVerify => (Role::Read, true),
            PkgInstall { .. }
            | PkgUninstall { .. }
            | VarSet { .. }
            | VarDel { .. }
            | QueuePut { .. }
            | QueueAck { .. }
            | VaultSet { .. }
            | DaemonSet { .. }
            | DaemonRestart { .. }
            | FeatureSet { .. }
            | FeatureReport { .. }
            | IfaceConnect { .. }
            | IfaceDisconnect { .. }
            | ChangeAbort { .. } => (Role::Write, false),
            TokenList | VaultGet { .. } => (Role::Admin, true),
            TokenCreate { .. } | TokenRevoke { .. } | Promote { .. } | Handoff { .. } => {
                (Role::Admin, false)
            }
            Drive(d) => d.class(),
        }
    }

    /// The request's HTTP form (what the server's router turns back into this request).
    pub fn http(&self) -> Http {
        use serde_json::json;
        use Request::*;
        let get = |path: String| Http {
            method: "GET",
            path,
            query: vec![],
            body: None,
        };
        let with = |method: &'static str, path: String, body: serde_json::Value| Http {
            method,
            path,
            query: vec![],
            body: Some(body),
        };
        let e = seg;
        match self {
            Status => get("/v1/status".into()),
            PkgInstall { manifest, wait } => with(
                "POST",
                "/v1/packages".into(),
                json!({"manifest": manifest, "wait": wait}),
            ),
            PkgUninstall {
                name,
                keep,
                strict,
                wait,
            } => with(
                "POST",
                format!("/v1/packages/{}/uninstall", e(name)),
                json!({"keep": keep, "strict": strict, "wait": wait}),
            ),
            PkgList => get("/v1/packages".into()),
            PkgShow { name } => get(format!("/v1/packages/{}", e(name))),
            VarSet {
                pkg,
                key,
                value,
                expect_revision,
            } => with(
                "PUT",
                format!("/v1/vars/{}/{}", e(pkg), e(key)),
                json!({"value": value, "expect_revision": expect_revision}),
            ),
            VarGet { pkg, key } => get(format!("/v1/vars/{}/{}", e(pkg), e(key))),
            VarDel { pkg, key } => Http {
                method: "DELETE",
                path: format!("/v1/vars/{}/{}", e(pkg), e(key)),
                query: vec![],
                body: None,
            },
            VarList { pkg } => get(format!("/v1/vars/{}", e(pkg))),
            QueuePut { pkg, queue, items } => with(
                "POST",
                format!("/v1/queues/{}/{}/items", e(pkg), e(queue)),
                json!({ "items": items }),
            ),
            QueueRead {
                pkg,
                queue,
                from,
                limit,
            } => Http {
                query: vec![("from", from.to_string()), ("limit", limit.to_string())],
                ..get(format!("/v1/queues/{}/{}/items", e(pkg), e(queue)))
            },
            QueueAck { pkg, queue, upto } => with(
                "POST",
                format!("/v1/queues/{}/{}/ack", e(pkg), e(queue)),
                json!({ "upto": upto }),
            ),
            VaultSet { pkg, vault, secret } => with(
                "PUT",
                format!("/v1/vaults/{}/{}", e(pkg), e(vault)),
                json!({ "secret": secret }),
            ),
            VaultGet { pkg, vault } => get(format!("/v1/vaults/{}/{}", e(pkg), e(vault))),
            DaemonList => get("/v1/daemons".into()),
            DaemonSet { pkg, name, state } => with(
                "PUT",
                format!("/v1/daemons/{}/{}/state", e(pkg), e(name)),
                json!({ "state": state }),
            ),
            DaemonRestart { pkg, name } => with(
                "POST",
                format!("/v1/daemons/{}/{}/restart", e(pkg), e(name)),
                json!({}),
            ),
            DaemonLogs { pkg, name } => get(format!("/v1/daemons/{}/{}/logs", e(pkg), e(name))),
            FeatureList => get("/v1/features".into()),
            FeatureSet {
                name,
                state,
                expect_revision,
            } => with(
                "PUT",
                format!("/v1/features/{}/state", e(name)),
                json!({"state": state, "expect_revision": expect_revision}),
            ),
            FeatureReport { name, state } => with(
                "PUT",
                format!("/v1/features/{}/observed", e(name)),
                json!({ "state": state }),
            ),
            IfaceConnect { plug, slot, wait } => with(
                "POST",
                "/v1/connections".into(),
                json!({"plug": plug, "slot": slot, "wait": wait}),
            ),
            IfaceDisconnect { plug, slot, wait } => with(
                "POST",
                "/v1/connections/disconnect".into(),
                json!({"plug": plug, "slot": slot, "wait": wait}),
            ),
            IfaceList => get("/v1/connections".into()),
            ChangeList => get("/v1/changes".into()),
            ChangeShow { id } => get(format!("/v1/changes/{}", e(id))),
            ChangeAbort { id } => with("POST", format!("/v1/changes/{}/abort", e(id)), json!({})),
            LogShow { from, limit, kind } => {
                let mut query = vec![("from", from.to_string()), ("limit", limit.to_string())];
                if let Some(k) = kind {
                    query.push(("kind", k.clone()));
                }
                Http {
                    query,
                    ..get("/v1/log".into())
                }
            }
            StateDigest => get("/v1/state/digest".into()),
            AuditVerify => get("/v1/audit/verify".into()),
            TokenCreate { name, role } => with(
                "POST",
                "/v1/tokens".into(),
                json!({"name": name, "role": role}),
            ),
            TokenRevoke { name } => Http {
                method: "DELETE",
                path: format!("/v1/tokens/{}", e(name)),
                query: vec![],
                body: None,
            },
            TokenList => get("/v1/tokens".into()),
            Drive(d) => d.http(),
            Promote {
                name,
                expect_offset,
                expect_hash,
                handoff,
            } => with(
                "POST",
                "/v1/promote".into(),
                json!({
                    "name": name,
                    "expect_offset": expect_offset,
                    "expect_hash": expect_hash,
                    "handoff": handoff,
                }),
            ),
            Handoff {
                to,
                name,
                timeout_ms,
            } => with(
                "POST",
                "/v1/handoff".into(),
                json!({ "to": to, "name": name, "timeout_ms": timeout_ms }),
            ),
        }
    }
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Error codes, each with one HTTP status (`docs/http-api.md` lists them).
pub mod codes {
    #![allow(missing_docs)]
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const TOO_LARGE: &str = "too_large";
    pub const INTEGRITY: &str = "integrity";
    pub const INTERNAL: &str = "internal";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const OFFLINE_ONLY: &str = "offline_only";
    pub const NOT_LEADER: &str = "not_leader";
    pub const LAGGING: &str = "lagging";
    pub const NOT_REPLICATED: &str = "not_replicated";
    pub const HANDING_OFF: &str = "handing_off";
    pub const HANDOFF_FAILED: &str = "handoff_failed";
    pub const NOT_AT_HEAD: &str = "not_at_head";
    pub const INVALID_STATE: &str = "invalid_state";
    pub const ALREADY_LEADER: &str = "already_leader";
    pub const NOT_SUPERVISED: &str = "not_supervised";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
}

/// A failed request, as the JSON body `{"error": {"code", "message"}}` and an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    #[serde(skip)]
    pub status: u16,
    /// Stable machine-readable code (a rejection's code, or one of [`codes`]).
    pub code: String,
    /// What is wrong, naming the entity.
    pub message: String,
}

/// The error envelope on the wire.
#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

impl ApiError {
    /// An error with a code and the status that code maps to.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// A bad argument.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(codes::BAD_REQUEST, message)
    }

    /// Whether this reports an integrity failure (the CLI exits 3).
    pub fn is_integrity(&self) -> bool {
        self.code == codes::INTEGRITY
    }
}

/// The HTTP status of an error code.
pub fn status_of(code: &str) -> u16 {
    match code {
        "not_found" => 404,
        "method_not_allowed" => 405,
        // A drive command the drive's permissions refuse (`Rejection::Denied`).
        "denied" => 403,
        "exists" | "conflict" | "revision_mismatch" | "invalid_state" | "offline_only"
        | "not_at_head" | "already_leader" | "not_supervised" => 409,
        "invalid" | "bad_manifest" | "bad_request" => 400,
        "unauthorized" => 401,
        "forbidden" => 403,
        "too_large" => 413,
        "unavailable" | "not_leader" | "lagging" | "not_replicated" | "handing_off"
        | "handoff_failed" => 503,
        // A follower the leader refuses (`cairn_mirror::Refusal::code`).
        "wrong_workspace" | "upgrade_mirror" | "follower_ahead" | "diverged" => 409,
        "protocol" => 400,
        _ => 500,
    }
}

impl From<cairn::Error> for ApiError {
    fn from(e: cairn::Error) -> Self {
        match &e {
            cairn::Error::Rejected(r) => ApiError::new(r.code(), r.to_string()),
            cairn::Error::Store(s) if s.is_integrity() => {
                ApiError::new(codes::INTEGRITY, e.to_string())
            }
            // Entries the command would write break the log's limits: nothing was written.
            cairn::Error::Store(
                cairn_store::StoreError::BadEntry(_)
                | cairn_store::StoreError::TooManyEvents { .. },
            ) => ApiError::new("invalid", e.to_string()),
            cairn::Error::Store(cairn_store::StoreError::Compacted { .. }) => {
                ApiError::new(codes::BAD_REQUEST, e.to_string())
            }
            cairn::Error::Closed => ApiError::new(codes::UNAVAILABLE, e.to_string()),
            cairn::Error::NotLeader => ApiError::new(codes::NOT_LEADER, e.to_string()),
            cairn::Error::NotSupervised => ApiError::new(codes::NOT_SUPERVISED, e.to_string()),
            // A full disk or an IO error: the writer retries with the next commit.
            cairn::Error::Store(cairn_store::StoreError::WriteFailed { .. }) => {
                ApiError::new(codes::UNAVAILABLE, e.to_string())
            }
            cairn::Error::Compacted { .. } => ApiError::new(codes::BAD_REQUEST, e.to_string()),
            _ => ApiError::new(codes::INTERNAL, e.to_string()),
        }
    }
}

impl From<cairn_store::StoreError> for ApiError {
    fn from(e: cairn_store::StoreError) -> Self {
        cairn::Error::Store(e).into()
    }
}

impl From<cairn_log::StateError> for ApiError {
    fn from(e: cairn_log::StateError) -> Self {
        cairn::Error::from(e).into()
    }
}
