//! Helpers for the end-to-end tests: run the built `cairn` binary in local or remote mode,
//! and start/stop a real `cairn serve` on 127.0.0.1 (port 0, read back from its first line).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `attempt` every 20 ms until it gives a value; after `limit` the test fails with the
/// last reason it gave. Tests wait on conditions this way, never on time alone.
pub fn poll<T>(limit: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "{why} (waited {limit:?})"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `what` until it holds (see [`poll`]).
pub fn wait_until(limit: Duration, description: &str, mut what: impl FnMut() -> bool) {
    poll(limit, || {
        what().then_some(()).ok_or_else(|| description.to_string())
    })
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// Runs `cairn ARGS` with `input` on stdin.
pub fn run_with_stdin(args: &[&str], input: &str) -> Out {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("CAIRN_DATA")
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cairn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a run printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Panics with the whole output unless the exit code is `code`.
    #[track_caller]
    pub fn expect(self, code: i32) -> Out {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Exit 0, stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        self.expect(0).stdout
    }

    /// stdout as JSON.
    #[track_caller]
    pub fn json(self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

/// Runs `cairn ARGS` with a scrubbed environment (no CAIRN_* from the caller).
pub fn run(args: &[&str]) -> Out {
    run_in(args, None)
}

/// Runs `cairn ARGS`, optionally with stdin from a string.
pub fn run_in(args: &[&str], cwd: Option<&Path>) -> Out {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("CAIRN_DATA")
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN_FILE")
        .stdin(Stdio::null());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run cairn");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A workspace directory and the two ways to reach it.
pub struct Ws {
    pub _tmp: tempfile::TempDir,
    pub data: PathBuf,
}

impl Ws {
    /// A fresh, initialized workspace.
    pub fn init() -> Ws {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("ws");
        let id = run(&["--data", data.to_str().unwrap(), "init"]).ok();
        assert!(
            uuid::Uuid::try_parse(id.trim()).is_ok(),
            "init prints the id: {id}"
        );
        Ws { _tmp: tmp, data }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self._tmp.path().join(name)
    }

    pub fn admin_token(&self) -> PathBuf {
        self.data.join("admin.token")
    }

    /// `cairn --data DIR ARGS`.
    pub fn local(&self, args: &[&str]) -> Out {
        let mut all = vec!["--data", self.data.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Writes a sample manifest from docs/examples next to the workspace; returns its path.
    pub fn example(&self, name: &str) -> String {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/examples")
            .join(name);
        let dst = self.path(name);
        std::fs::copy(&src, &dst).unwrap();
        dst.to_str().unwrap().to_string()
    }

    /// Writes a file next to the workspace; returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// Creates a token `name` with `role` locally; returns the file holding its secret
    /// (`NAME.token` next to the workspace).
    pub fn token(&self, name: &str, role: &str) -> PathBuf {
        let file = self.path(&format!("{name}.token"));
        self.local(&[
            "token",
            "create",
            name,
            "--role",
            role,
            "--out",
            file.to_str().unwrap(),
        ])
        .ok();
        file
    }

    /// Starts `cairn serve` on this workspace.
    pub fn serve(&self) -> Server {
        Server::start(&self.data)
    }

    /// `(applied, digest)` read locally.
    pub fn digest(&self) -> String {
        self.local(&["state", "digest"]).ok()
    }
}

/// Spawns `cmd` (a `cairn serve` or `cairn mirror` listening on port 0, without `CAIRN_DATA`
/// from the environment, stdin closed) and reads back the URL its first line names.
pub fn spawn_listening(cmd: &mut Command, what: &str) -> (Child, String) {
    let mut child = cmd
        .env_remove("CAIRN_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start cairn {what}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{what} printed {line:?}"))
        .to_string();
    (child, url)
}

/// A running `cairn serve`; killed on drop if still running.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Self::start_with(data, "warn", Stdio::inherit())
    }

    /// A server logging at `level` into `stderr`.
    pub fn start_with(data: &Path, level: &str, stderr: Stdio) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args([
            "--data",
            data.to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("CAIRN_LOG", level)
        .stderr(stderr);
        let (child, url) = spawn_listening(&mut cmd, "serve");
        Server { child, url }
    }

    /// `cairn --server URL --token-file F ARGS`.
    pub fn remote(&self, token_file: &Path, args: &[&str]) -> Out {
        let mut all = vec![
            "--server",
            &self.url,
            "--token-file",
            token_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Sends SIGTERM and waits (at most 30 s) for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP call with a bearer token: `(status, body)`.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut req = agent.request(method, url);
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    let resp = match body {
        Some(b) => req.set("content-type", "application/json").send_string(b),
        None => req.call(),
    };
    match resp {
        Ok(r) => {
            let status = r.status();
            let mut bytes = Vec::new();
            let _ = std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes);
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// `"<applied_offset> <digest>\n"` (what `state digest` prints) from a JSON report.
pub fn digest_line(v: &serde_json::Value) -> String {
    format!(
        "{} {}\n",
        v["applied_offset"],
        v["digest"].as_str().expect("a digest")
    )
}

/// `PUT /v1/vars/netmon/KEY` with `value`: `(status, body)`.
pub fn put_var(server: &Server, token: &str, key: &str, value: &str) -> (u16, String) {
    http(
        "PUT",
        &format!("{}/v1/vars/netmon/{key}", server.url),
        Some(token),
        Some(&format!("{{\"value\": \"{value}\"}}")),
    )
}

/// The value of metric `name` in `/metrics`.
pub fn metric(server: &Server, token: &str, name: &str) -> String {
    let (status, text) = http("GET", &format!("{}/metrics", server.url), Some(token), None);
    assert_eq!(status, 200);
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Waits (at most 30 s) until the server at `url` runs daemon `pkg:name`: its `GET
/// /v1/daemons` row says `running`, with a pid. Returns the row. A served workspace starts its
/// daemons and records `daemon.observed` once they run, so a test that compares states before
/// and after waits for this first.
pub fn wait_daemon_running(url: &str, token: &str, pkg: &str, name: &str) -> serde_json::Value {
    poll(Duration::from_secs(30), || {
        let (status, body) = http("GET", &format!("{url}/v1/daemons"), Some(token), None);
        if status != 200 {
            return Err(format!("GET /v1/daemons: {status} {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let row = v["daemons"]
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|d| d["package"] == pkg && d["name"] == name)
            })
            .cloned()
            .ok_or_else(|| format!("no daemon {pkg}:{name}: {v}"))?;
        if row["state"] == "running" && row["pid"].is_number() {
            Ok(row)
        } else {
            Err(format!("daemon {pkg}:{name} does not run yet: {row}"))
        }
    })
}

/// The token in `file`, trimmed.
pub fn read_token(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// An HTTP/1.1 request sent byte for byte over a new connection, with `path` exactly as
/// given (an HTTP library would normalize `..` and may re-encode): `(status, body)`.
pub fn raw_http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").expect("an http:// URL");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head:?}"));
    // A chunked body (axum answers JSON with a length; an error body may be chunked).
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}
