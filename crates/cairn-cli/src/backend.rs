//! Where a command runs: `Local` opens the workspace in this process and hands the request to
//! the same `Service` the server uses; `Remote` sends the request's HTTP form to a server. Both
//! answer with the same JSON value, so the output is the same.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::kernel::echo::{echo, echo_bare};
use cairn::{Options, Workspace};
use cairn_server::api::{codes, ApiError, ErrorBody, Request};
use cairn_server::Service;
use serde_json::Value;

use crate::Failure;

/// How a local command opens the workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// Reads only: the store opens read-only (it works on a full disk and never appends to
    /// the log, not even a pending schema migration), and no hook is started.
    Read,
    /// Writes without the change engine (tokens, `init`, `backup`): no hook is started (and
    /// killed a moment later when the command exits).
    Quiet,
    /// A write: the engine resumes changes in progress, and the command waits for them first.
    Write,
    /// The engine runs, without waiting for resumed changes first (`change abort`, the demo).
    Drive,
    /// `cairn serve`: the engine runs every pending `onload` too. Every other local command
    /// runs only the `onload` of a package it installs and waits for (a short-lived process
    /// would stop any other one again when it exits; see `cairn::Onloads`).
    Serve,
    /// `cairn mirror`: opened as a mirror (`cairn::NodeRole::Mirror`): no engine, no hook, no
    /// command; entries come from the leader.
    Mirror,
}

/// A running command's connection to its workspace.
pub enum Backend {
    /// The workspace opened in-process.
    Local {
        /// The runtime the workspace lives on.
        rt: tokio::runtime::Runtime,
        /// The service over it.
        svc: Service,
    },
    /// A server.
    Remote(Remote),
}

/// A server's address and token.
pub struct Remote {
    /// Base URL, without a trailing `/`.
    pub base: String,
    /// The bearer token.
    pub token: String,
    agent: ureq::Agent,
    /// Sent as `Cairn-Min-Offset` with every read.
    min_offset: Option<u64>,
}

/// The actor local-mode commands are recorded as.
pub const LOCAL_ACTOR: &str = "cli";

impl Backend {
    /// Runs one request. In local mode, an install that waits also waits for the package's
    /// `onload` hook: this process is what runs it, and exiting would leave it to the next open.
    pub fn call(&self, req: Request) -> Result<Value, ApiError> {
        match self {
            Backend::Local { rt, svc } => rt.block_on(async {
                let waits_onload = matches!(req, Request::PkgInstall { wait: true, .. });
                if let Request::PkgInstall {
                    manifest,
                    wait: true,
                } = &req
                {
                    // This command runs the package's onload and waits for it.
                    if let Ok(m) = cairn::kernel::manifest::parse(manifest) {
                        svc.workspace().run_onload(&m.name);
                    }
                }
                let work = async {
                    let v = svc
                        .handle(req, &cairn_server::Caller::local(LOCAL_ACTOR))
                        .await?;
                    if waits_onload && v["status"] == "done" {
                        if let Some(pkg) = v["packages"][0].as_str() {
                            wait_onload(svc.workspace(), pkg).await?;
                        }
                    }
                    Ok(v)
                };
                // Ctrl-C: stop waiting; `close` then stops the running hooks (they are run
                // again at the next open), instead of leaving them orphaned.
                tokio::select! {
                    r = work => r,
                    _ = interrupted() => Err(ApiError::new(
                        codes::UNAVAILABLE,
                        "interrupted; what was recorded stays, and a change in progress \
                         continues at the next open",
                    )),
                }
            }),
            Backend::Remote(r) => r.call(&req),
        }
    }

    /// Closes a local workspace (stops its engine, joins its writer).
    pub fn close(self) {
        if let Backend::Local { rt, svc } = self {
            let ws = svc.workspace().clone();
            drop(svc);
            rt.block_on(ws.close());
        }
    }
}

/// Opens the workspace at `data` in-process. A workspace held by another process (a running
/// `cairn serve`) is refused with a message that points at `--server`. With the engine
/// running, resumed changes are announced on stderr, and waited for when `open` is `Write`.
pub fn open_local(
    data: &Path,
    open: Open,
    durability: cairn_store::Durability,
) -> Result<Backend, Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the runtime: {e}")))?;
    let mut opts = Options {
        actor: LOCAL_ACTOR.into(),
        ..Default::default()
    };
    opts.store.durability = durability;
    opts.drive = opts_drive(open);
    if open != Open::Serve {
        opts.onloads = cairn::Onloads::Only(Default::default());
    }
    // Daemons run under a leader that stays up (`cairn serve`, or `cairn mirror` once it is
    // promoted); a short-lived local command would stop them again when it exits.
    if !matches!(open, Open::Serve | Open::Mirror) {
        opts.daemons = cairn::Daemons::Off;
    }
    if open == Open::Read {
        opts.access = cairn::Access::ReadOnly;
    }
    if open == Open::Mirror {
        opts.role = cairn::NodeRole::Mirror;
    }
    let ws = rt
        .block_on(Workspace::open(data, opts))
        .map_err(|e| open_failure(data, e))?;
    let active = ws
        .view()
        .ok()
        .and_then(|v| cairn::kernel::query::active_changes(&v).ok())
        .unwrap_or_default();
    let wait_resumed = open == Open::Write;
    if opts_drive(open) && !active.is_empty() {
        for c in &active {
            eprintln!(
                "resuming change {} ({}): {}",
                c.id,
                c.kind.as_str(),
                c.summary
            );
        }
        if wait_resumed {
            let waited = rt.block_on(async {
                tokio::select! {
                    r = ws.wait_idle() => r.map_err(|e| Failure::Other(e.to_string())),
                    _ = interrupted() => Err(Failure::Other(
                        "interrupted while resumed changes ran; they continue at the next open"
                            .into(),
                    )),
                }
            });
            if let Err(e) = waited {
                // Stops the hooks this process runs (they run again at the next open).
                rt.block_on(ws.close());
                return Err(e);
            }
            eprintln!("resumed changes finished");
        }
    }

    Ok(Backend::Local {
        rt,
        svc: Service::new(ws),
    })
}

/// Whether `open` starts the change engine.
fn opts_drive(open: Open) -> bool {
    matches!(open, Open::Write | Open::Drive | Open::Serve)
}

/// Resolves at the first Ctrl-C; a second one during the clean-up that follows exits at once.
async fn interrupted() {
    let _ = tokio::signal::ctrl_c().await;
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}

/// Waits for `pkg`'s `onload` hook, saying so on stderr if it is still to run.
async fn wait_onload(ws: &Workspace, pkg: &str) -> Result<(), ApiError> {
    if cairn::kernel::query::onloads_wanted(&ws.view()?)?
        .iter()
        .any(|w| w == pkg)
    {
        eprintln!("running the onload hook of {pkg}");
    }
    Ok(ws.wait_onload(pkg).await?)
}

/// `{dir, applied_offset, digest}` of a workspace that is not open anywhere, read through the
/// store alone: no engine starts, so nothing in it is resumed or changed.
pub fn report_closed(dir: &Path) -> Result<Value, Failure> {
    let store = cairn_store::Store::open(
        dir,
        cairn::KernelMachine(cairn::kernel::Kernel::new()),
        cairn_store::Options::default(),
    )
    .map_err(|e| open_failure(dir, cairn::Error::Store(e)))?;
    let digest = store
        .read()
        .and_then(|v| v.digest())
        .map_err(|e| Failure::Other(e.to_string()))?;
    Ok(serde_json::json!({
        "dir": dir.display().to_string(),
        "applied_offset": digest.applied,
        "digest": digest.hash.to_string(),
    }))
}

/// File a running server writes its URL into, inside the data directory.
pub const SERVER_ADDR_FILE: &str = "server.url";

pub fn open_failure(data: &Path, e: cairn::Error) -> Failure {
    if let cairn::Error::Store(cairn_store::StoreError::Locked { pid }) = &e {
        let url = std::fs::read_to_string(data.join(SERVER_ADDR_FILE))
            .map(|u| u.trim().to_string())
            .unwrap_or_else(|_| "URL".into());
        return Failure::Other(format!(
            "the workspace at {} is held by another process (pid {pid}), such as a running \
             `cairn serve`; use remote mode: cairn --server {url} --token-file FILE ...",
            data.display()
        ));
    }
    if let cairn::Error::Store(s) = &e {
        if s.is_integrity() {
            return Failure::Integrity(e.to_string());
        }
    }
    Failure::Other(e.to_string())
}

/// Checks that a `--server` value is an `http://` or `https://` URL, saying what to write
/// instead when it is not (`127.0.0.1:7878` has no scheme).
pub fn check_server_url(base: &str) -> Result<(), Failure> {
    let lower = base.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(());
    }
    Err(Failure::Usage(if base.contains("://") {
        format!("--server {} is not an http:// or https:// URL", echo(base))
    } else {
        format!(
            "--server {} has no scheme: add http:// (--server http://{})",
            echo(base),
            echo_bare(base)
        )
    }))
}

/// Reads a token file, warning on stderr (as ssh does for a private key) when its group or
/// others may read or write it: whoever can read it can act with the token.
pub fn read_token_file(token_file: &Path) -> Result<String, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let cannot = |e: std::io::Error| {
        Failure::Other(format!(
            "cannot read the token file {}: {e}",
            token_file.display()
        ))
    };
    let mut file = std::fs::File::open(token_file).map_err(cannot)?;
    let mode = file.metadata().map_err(cannot)?.permissions().mode();
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: the token file {} is accessible by others (mode {:04o}): anyone who can \
             read it can use the token; restrict it with `chmod 600 {}`",
            token_file.display(),
            mode & 0o7777,
            token_file.display()
        );
    }
    let mut token = String::new();
    file.read_to_string(&mut token).map_err(cannot)?;
    Ok(token)
}

impl Remote {
    /// A client for `base` with the token read from `token_file`.
    pub fn new(base: &str, token_file: &Path) -> Result<Remote, Failure> {
        check_server_url(base)?;
        let token = read_token_file(token_file)?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(Failure::Other(format!(
                "the token file {} is empty",
                token_file.display()
            )));
        }
        Ok(Remote {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .build(),
            min_offset: None,
        })
    }

    /// Reads ask the server to answer only once it has applied `min_offset`.
    pub fn with_min_offset(mut self, min_offset: Option<u64>) -> Remote {
        self.min_offset = min_offset;
        self
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self
            .agent
            .request(method, &format!("{}{}", self.base, path))
            .set("authorization", &format!("Bearer {}", self.token));
        match self.min_offset {
            Some(n) => r.set(cairn_server::MIN_OFFSET_HEADER, &n.to_string()),
            None => r,
        }
    }

    /// Sends a request and decodes the JSON answer (or the JSON error).
    pub fn call(&self, req: &Request) -> Result<Value, ApiError> {
        let http = req.http();
        let mut r = self.request(http.method, &http.path);
        for (k, v) in &http.query {
            r = r.query(k, v);
        }
        let resp = match &http.body {
            Some(body) => r.send_json(body.clone()),
            None => r.call(),
        };
        let resp = self.check(resp)?;
        resp.into_json::<Value>().map_err(|e| {
            ApiError::new(
                codes::INTERNAL,
                format!("the server's answer is not JSON: {e}"),
            )
        })
    }

    /// Sends a request whose answer is a stream; returns the reader.
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Box<dyn Read + Send + Sync>, ApiError> {
        let mut r = self.request(method, path);
        for (k, v) in query {
            r = r.query(k, v);
        }
        let resp = match body {
            Some(b) => r.send_json(b),
            None => r.call(),
        };
        Ok(self.check(resp)?.into_reader())
    }

    fn check(&self, resp: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, ApiError> {
        match resp {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(b) => Err(ApiError { status, ..b.error }),
                    Err(_) => Err(ApiError {
                        status,
                        code: codes::INTERNAL.into(),
                        message: format!("the server answered {status}: {}", text.trim()),
                    }),
                }
            }
            Err(e) => Err(ApiError::new(
                codes::UNAVAILABLE,
                format!("cannot reach the server at {}: {e}", echo_bare(&self.base)),
            )),
        }
    }
}

/// The data directory from `--data` / `CAIRN_DATA`.
pub fn data_dir(data: &Option<PathBuf>) -> PathBuf {
    data.clone()
        .unwrap_or_else(|| PathBuf::from("./cairn-data"))
}
