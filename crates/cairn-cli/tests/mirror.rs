//! Mirrors as an operator runs them: `cairn serve` and `cairn mirror` processes on 127.0.0.1
//! (ports read back), a leader under mixed lifecycle commands, mirrors killed in a loop, and a
//! TCP proxy between leader and mirror that damages the stream. Every test is bounded in time.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bin, http, poll, spawn_listening, wait_daemon_running, wait_until, Server, Ws};
use serde_json::Value;

/// How long a mirror may take to converge before a test fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `cairn mirror`; killed on drop.
struct Mirror {
    child: Child,
    url: String,
    data: PathBuf,
}

impl Mirror {
    /// Starts `cairn mirror` on `data` (provisioned from `backup` when given), logging at info
    /// into `log`.
    fn start(
        data: &Path,
        leader: &str,
        token: &Path,
        backup: Option<&Path>,
        name: &str,
        log: &Path,
    ) -> Mirror {
        let mut cmd = Command::new(bin());
        cmd.args([
            "--data",
            data.to_str().unwrap(),
            "mirror",
            "--leader",
            leader,
        ])
        .arg("--leader-token")
        .arg(token)
        .args(["--listen", "127.0.0.1:0", "--name", name]);
        if let Some(b) = backup {
            cmd.arg("--from-backup").arg(b);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        cmd.env("CAIRN_LOG", "info").stderr(Stdio::from(log));
        let (child, url) = spawn_listening(&mut cmd, "mirror");
        Mirror {
            child,
            url,
            data: data.to_path_buf(),
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn get_json(url: &str, token: &str) -> Value {
    let (status, body) = http("GET", url, Some(token), None);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `(applied_offset, digest)` of a node.
fn digest(base: &str, token: &str) -> (u64, String) {
    let v = get_json(&format!("{base}/v1/state/digest"), token);
    (
        v["applied_offset"].as_u64().unwrap(),
        v["digest"].as_str().unwrap().to_string(),
    )
}

/// Waits until the mirror has applied the leader's head and returns both digests there.
fn converge(leader: &str, mirror: &str, token: &str) -> ((u64, String), (u64, String)) {
    poll(CONVERGE_TIMEOUT, || {
        let l = digest(leader, token);
        let m = digest(mirror, token);
        if m.0 >= l.0 {
            return Ok((l, m));
        }
        Err(format!(
            "the mirror at {} did not reach the leader's offset {}: {}",
            m.0,
            l.0,
            get_json(&format!("{mirror}/v1/status"), token)
        ))
    })
}

/// A leader workspace with an admin token and a mirror token, backed up for provisioning.
struct Setup {
    ws: Ws,
    mirror_token: PathBuf,
    backup: PathBuf,
}

impl Setup {
    /// Starts the mirror `m` on `<tmp>/mirror`, provisioned from the backup, logging into
    /// `<tmp>/mirror.log`.
    fn first_mirror(&self, leader: &str) -> Mirror {
        Mirror::start(
            &self.ws.path("mirror"),
            leader,
            &self.mirror_token,
            Some(&self.backup),
            "m",
            &self.ws.path("mirror.log"),
        )
    }
}

fn setup() -> Setup {
    let ws = Ws::init();
    let mirror_token = ws.path("mirror.token");
    ws.local(&[
        "token",
        "create",
        "m",
        "--role",
        "mirror",
        "--out",
        mirror_token.to_str().unwrap(),
    ])
    .ok();
    // A package `p` whose vars the tests write.
    let p = ws.file(
        "p.toml",
        "name = \"p\"\nversion = \"1.0.0\"\n\n[vars]\nk0 = \"0\"\n",
    );
    ws.local(&["pkg", "install", &p]).ok();
    let backup = ws.path("backup");
    ws.local(&["backup", backup.to_str().unwrap()]).ok();
    Setup {
        ws,
        mirror_token,
        backup,
    }
}

/// A package whose hooks append the workspace that ran them to `trace`.
fn traced_manifest(name: &str, trace: &Path, plug: bool) -> String {
    let t = trace.display();
    let end = if plug { "plug" } else { "slot" };
    let mut m = format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\n\n\
         [hooks.onload]\nrun = \"echo onload $CAIRN_WORKSPACE >> {t}\"\n\
         [hooks.onuninstall]\nrun = \"echo onuninstall $CAIRN_WORKSPACE >> {t}\"\n\
         [hooks.connect-{end}-net]\nrun = \"echo connect $CAIRN_WORKSPACE >> {t}\"\n\
         [hooks.disconnect-{end}-net]\nrun = \"echo disconnect $CAIRN_WORKSPACE >> {t}\"\n\n\
         [vars]\nlevel = \"1\"\n"
    );
    if plug {
        m.push_str("\n[[plugs]]\nname = \"net\"\ninterface = \"network\"\n");
    } else {
        m.push_str("\n[[slots]]\nname = \"net\"\ninterface = \"network\"\n");
    }
    m
}

/// Mixed lifecycle work on the leader: installs with hooks, connects, var writes, an
/// uninstall with keep, feature flips; `rounds` var writes over HTTP in between.
fn workload(s: &Setup, leader: &Server, trace: &Path, rounds: usize) {
    let admin = s.ws.admin_token();
    let token = token_of(&admin);
    let hub = s.ws.file("hub.toml", &traced_manifest("hub", trace, false));
    leader.remote(&admin, &["pkg", "install", &hub]).ok();
    for round in 0..3 {
        let name = format!("app{round}");
        let m = s.ws.file(
            &format!("{name}.toml"),
            &traced_manifest(&name, trace, true),
        );
        leader.remote(&admin, &["pkg", "install", &m]).ok();
        leader
            .remote(
                &admin,
                &["iface", "connect", &format!("{name}:net"), "hub:net"],
            )
            .ok();
        for i in 0..rounds {
            let (status, body) = http(
                "PUT",
                &format!("{}/v1/vars/{name}/k{}", leader.url, i % 50),
                Some(&token),
                Some(&format!("{{\"value\": \"v{i}\"}}")),
            );
            assert_eq!(status, 200, "{body}");
        }
        if round < 2 {
            leader
                .remote(&admin, &["pkg", "uninstall", &name, "--keep", "vars"])
                .ok();
        }
    }
}

#[test]
fn two_mirrors_hold_the_leader_s_log_and_digest_and_never_run_a_hook() {
    let s = setup();
    let leader = s.ws.serve();
    let trace = s.ws.path("hooks.trace");
    let mirrors: Vec<Mirror> = (1..=2)
        .map(|i| {
            Mirror::start(
                &s.ws.path(&format!("mirror{i}")),
                &leader.url,
                &s.mirror_token,
                Some(&s.backup),
                &format!("m{i}"),
                &s.ws.path(&format!("mirror{i}.log")),
            )
        })
        .collect();
    workload(&s, &leader, &trace, 400);
    let token = token_of(&s.ws.admin_token());
    for m in &mirrors {
        let (l, got) = converge(&leader.url, &m.url, &token);
        assert_eq!(
            got, l,
            "mirror {} has the leader's digest at the same offset",
            m.url
        );
    }
    // Hooks ran, all on the leader: every trace line names the leader's workspace.
    let lines = std::fs::read_to_string(&trace).unwrap();
    assert!(lines.lines().count() >= 6, "the hooks ran: {lines}");
    let leader_dir = s.ws.data.display().to_string();
    for line in lines.lines() {
        assert!(
            line.ends_with(&leader_dir),
            "a hook ran outside the leader: {line}"
        );
    }
    // The leader shows both mirrors, caught up; each mirror shows its leader.
    let status = get_json(&format!("{}/v1/status", leader.url), &token);
    let listed = status["mirrors"].as_array().unwrap();
    let names: Vec<&str> = listed.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["m1", "m2"], "{status}");
    poll(CONVERGE_TIMEOUT, || {
        let status = get_json(&format!("{}/v1/status", leader.url), &token);
        let acknowledged = status["mirrors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["lag_entries"] == 0 && m["connected"] == true);
        acknowledged
            .then_some(())
            .ok_or(format!("mirrors never acknowledged the head: {status}"))
    });
    let m1 = get_json(&format!("{}/v1/status", mirrors[0].url), &token);
    assert_eq!(m1["role"], "mirror", "{m1}");
    assert_eq!(m1["leader"], leader.url.as_str(), "{m1}");
    assert_eq!(m1["follow"]["state"], "following", "{m1}");
    assert_eq!(m1["lag"], 0, "{m1}");
    let metrics = http(
        "GET",
        &format!("{}/metrics", leader.url),
        Some(&token),
        None,
    )
    .1;
    assert!(
        metrics.contains("cairn_mirror_lag_entries{mirror=\"m1\"} 0"),
        "{metrics}"
    );
    // A write to a mirror goes to the leader and is read back on the mirror at once.
    let (status, body) = http(
        "PUT",
        &format!("{}/v1/vars/app2/k1", mirrors[0].url),
        Some(&token),
        Some("{\"value\": \"x\"}"),
    );
    assert_eq!(status, 200, "{body}");
    let var = get_json(&format!("{}/v1/vars/app2/k1", mirrors[0].url), &token);
    assert_eq!(var["value"], "x", "{var}");
}

#[test]
fn only_mirror_tokens_stream_and_a_mirror_token_does_nothing_else() {
    let s = setup();
    let leader = s.ws.serve();
    let admin = token_of(&s.ws.admin_token());
    let mirror = token_of(&s.mirror_token);
    let read = s.ws.path("read.token");
    let _ = leader.remote(
        &s.ws.admin_token(),
        &[
            "token",
            "create",
            "r",
            "--role",
            "read",
            "--out",
            read.to_str().unwrap(),
        ],
    );
    let read = token_of(&read);
    let id = get_json(&format!("{}/v1/status", leader.url), &admin)["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stream = format!(
        "{}/v1/replication/stream?workspace={id}&from=1&prev={}&protocol=1&schema=3&projection=3&name=t",
        leader.url,
        "0".repeat(64)
    );
    for token in [&admin, &read] {
        let (status, body) = http("GET", &stream, Some(token), None);
        assert_eq!(status, 403, "{body}");
    }
    for path in ["/v1/packages", "/v1/status", "/v1/log", "/metrics"] {
        let (status, body) = http("GET", &format!("{}{path}", leader.url), Some(&mirror), None);
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = http(
        "PUT",
        &format!("{}/v1/vars/p/k", leader.url),
        Some(&mirror),
        Some("{\"value\": \"x\"}"),
    );
    assert_eq!(status, 403, "{body}");
    // A leader whose writes do not wait for mirrors asks for coalesced acknowledgements.
    assert_eq!(
        ack_interval_asked(&leader.url, &id, &mirror),
        cairn_mirror::protocol::ACK_INTERVAL_MS.to_string()
    );
    // It marks its head, so its followers apply whole commands only.
    assert_eq!(
        stream_header(
            &leader.url,
            &id,
            &mirror,
            cairn_mirror::protocol::HEAD_MARKS_HEADER
        )
        .as_deref(),
        Some("1")
    );
    // A stream of another workspace is refused, naming both ids.
    let other = stream.replace(&id, "6e1f6e1f-0000-4000-8000-000000000000");
    let (status, body) = http("GET", &other, Some(&mirror), None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("wrong_workspace") && body.contains(&id),
        "{body}"
    );
}

/// Opens a stream of workspace `id` from offset 1 (named `probe`) and says how often the
/// leader asks the follower to acknowledge (`Cairn-Ack-Interval-Ms`), then drops it.
fn ack_interval_asked(leader: &str, id: &str, mirror_token: &str) -> String {
    stream_header(
        leader,
        id,
        mirror_token,
        cairn_mirror::protocol::ACK_INTERVAL_HEADER,
    )
    .expect("the stream's answer says how often to acknowledge")
}

/// Opens a stream of workspace `id` from offset 1 (named `probe`) and returns the header
/// `name` of the leader's answer, then drops it.
fn stream_header(leader: &str, id: &str, mirror_token: &str, name: &str) -> Option<String> {
    let hello = cairn_mirror::FollowerHello {
        workspace_id: id.parse().unwrap(),
        from: 1,
        prev: cairn_log::Hash::ZERO,
        protocol: cairn_mirror::PROTOCOL_VERSION,
        schema: cairn::kernel::SCHEMA_VERSION,
        projection: cairn::kernel::PROJECTION_VERSION,
        name: "probe".into(),
    };
    let mut request = ureq::get(&format!("{leader}/v1/replication/stream"))
        .set("authorization", &format!("Bearer {mirror_token}"));
    for (k, v) in hello.to_query() {
        request = request.query(k, &v);
    }
    let answer = request.call().expect("the leader admits the stream");
    answer.header(name).map(str::to_string)
}

#[test]
fn a_mirror_refuses_a_leader_of_another_workspace_with_both_ids() {
    let s = setup();
    let other = Ws::init();
    let token = other.path("mirror.token");
    other
        .local(&[
            "token",
            "create",
            "m",
            "--role",
            "mirror",
            "--out",
            token.to_str().unwrap(),
        ])
        .ok();
    let leader = other.serve();
    let m = Mirror::start(
        &s.ws.path("mirror"),
        &leader.url,
        &token,
        Some(&s.backup),
        "m",
        &s.ws.path("mirror.log"),
    );
    let admin = token_of(&s.ws.admin_token());
    let status = wait_follow_state(&m.url, &admin, "refused");
    assert_eq!(status["follow"]["code"], "wrong_workspace", "{status}");
    let message = status["follow"]["message"].as_str().unwrap();
    let mine = status["workspace_id"].as_str().unwrap();
    let theirs = get_json(
        &format!("{}/v1/status", leader.url),
        &token_of(&other.admin_token()),
    )["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(mine) && message.contains(&theirs),
        "{message}"
    );
    // A mirror that does not follow its leader forwards nothing: it could never show the write.
    let (status, body) = http(
        "PUT",
        &format!("{}/v1/vars/p/k1", m.url),
        Some(&admin),
        Some("{\"value\": \"x\"}"),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("is not following it") && body.contains("wrong_workspace"),
        "{body}"
    );
}

#[test]
fn a_mirror_killed_in_a_loop_mid_stream_restarts_and_converges() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let data = s.ws.path("mirror");
    let log = s.ws.path("mirror.log");
    let cycles = if std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1") {
        20
    } else {
        3
    };
    let writing = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = std::thread::spawn({
        let url = leader.url.clone();
        let token = token.clone();
        let writing = Arc::clone(&writing);
        let written = Arc::clone(&written);
        move || {
            let mut i = 0;
            while writing.load(Ordering::Relaxed) {
                let (status, body) = http(
                    "PUT",
                    &format!("{url}/v1/vars/p/k{}", i % 100),
                    Some(&token),
                    Some(&format!("{{\"value\": \"{i}\"}}")),
                );
                assert_eq!(status, 200, "{body}");
                i += 1;
                written.store(i, Ordering::Relaxed);
            }
        }
    });
    let mut backup = Some(s.backup.as_path());
    let mut rng_state = 0x9e37_79b9_u64;
    for cycle in 0..cycles {
        let m = Mirror::start(
            &data,
            &leader.url,
            &s.mirror_token,
            backup.take(),
            "m",
            &log,
        );
        // Kill it after it applied something new, at a varying moment.
        let before = written.load(Ordering::Relaxed);
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
        let wait_ms = 50 + (rng_state >> 33) % 400;
        wait_until(
            CONVERGE_TIMEOUT,
            &format!("cycle {cycle}: the leader stopped taking writes"),
            || written.load(Ordering::Relaxed) >= before + 20,
        );
        // The kill lands at a varying point of the stream: this wait is the fault's timing.
        std::thread::sleep(Duration::from_millis(wait_ms));
        m.kill();
    }
    writing.store(false, Ordering::Relaxed);
    writer.join().unwrap();
    let m = Mirror::start(&data, &leader.url, &s.mirror_token, None, "m", &log);
    let (l, got) = converge(&leader.url, &m.url, &token);
    assert_eq!(
        got, l,
        "after {cycles} kills the mirror has the leader's digest"
    );
    // It also verifies on its own: its log replays to its digest.
    let audit = get_json(&format!("{}/v1/audit/verify", m.url), &token);
    assert_eq!(audit["digest"].as_str(), Some(l.1.as_str()), "{audit}");
}

#[test]
fn a_killed_leader_leaves_reads_on_the_mirror_and_streaming_resumes() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let m = s.first_mirror(&leader.url);
    let port = leader.url.rsplit(':').next().unwrap().to_string();
    for i in 0..50 {
        http(
            "PUT",
            &format!("{}/v1/vars/p/k{i}", leader.url),
            Some(&token),
            Some("{\"value\": \"a\"}"),
        );
    }
    converge(&leader.url, &m.url, &token);
    drop(leader); // SIGKILL
    let var = get_json(&format!("{}/v1/vars/p/k7", m.url), &token);
    assert_eq!(var["value"], "a", "{var}");
    let (status, body) = http(
        "PUT",
        &format!("{}/v1/vars/p/k7", m.url),
        Some(&token),
        Some("{\"value\": \"b\"}"),
    );
    assert_eq!(status, 503, "{body}");
    // The leader comes back on the same port; the mirror reconnects by itself.
    let leader = serve_on(&s.ws.data, &format!("127.0.0.1:{port}"));
    for i in 0..50 {
        http(
            "PUT",
            &format!("{}/v1/vars/p/k{i}", leader.url),
            Some(&token),
            Some("{\"value\": \"c\"}"),
        );
    }
    let (l, got) = converge(&leader.url, &m.url, &token);
    assert_eq!(got, l);
}

/// `cairn serve` on a given address (retried while the old socket's port is still taken).
fn serve_on(data: &Path, listen: &str) -> Server {
    poll(Duration::from_secs(20), || {
        try_serve(data, listen, &[]).ok_or(format!("could not listen on {listen} again"))
    })
}

/// `cairn serve --listen LISTEN EXTRA...`; `None` when it exits without listening.
fn try_serve(data: &Path, listen: &str, extra: &[&str]) -> Option<Server> {
    let mut child = Command::new(bin())
        .args([
            "--data",
            data.to_str().unwrap(),
            "serve",
            "--listen",
            listen,
        ])
        .args(extra)
        .env_remove("CAIRN_DATA")
        .env("CAIRN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().strip_prefix("listening on ") {
        Some(url) => Some(Server {
            child,
            url: url.to_string(),
        }),
        None => {
            let _ = child.wait();
            None
        }
    }
}

/// What the proxy does to one leader→mirror connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Clean,
    /// Flip one bit of the byte at this position of the response.
    Flip(usize),
    /// Close the connection after this many bytes.
    Cut(usize),
    /// Send this many bytes, then stall (longer than the follower's silence limit).
    Stall(usize),
    /// Send the chunk that crosses this position twice.
    Duplicate(usize),
}

/// Listens on a free port of 127.0.0.1 and, for every connection, connects to `target` and
/// hands both ends to `relay` on a thread of their own. Runs until the test process ends;
/// returns the proxy's URL.
fn relay_proxy(
    target: String,
    relay: impl Fn(TcpStream, TcpStream) + Send + Sync + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let relay = Arc::new(relay);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let (Ok(client), Ok(server)) = (client, TcpStream::connect(&target)) else {
                continue;
            };
            let relay = Arc::clone(&relay);
            std::thread::spawn(move || relay(client, server));
        }
    });
    url
}

/// A TCP proxy to `target` that applies `faults` to the first connections, in order, then
/// stays clean.
fn proxy(target: String, faults: Vec<Fault>) -> String {
    let next = Arc::new(AtomicUsize::new(0));
    // Acks and hash lookups go through too; only streams get the faults.
    relay_proxy(target, move |client, server| {
        pump(client, server, &faults, &next)
    })
}

fn pump(client: TcpStream, server: TcpStream, faults: &[Fault], next: &AtomicUsize) {
    let mut upstream = client.try_clone().unwrap();
    let mut to_server = server.try_clone().unwrap();
    // Reads the request first, to apply faults to streams only.
    let mut head = [0u8; 4096];
    let n = match upstream.read(&mut head) {
        Ok(n) if n > 0 => n,
        _ => return,
    };
    let is_stream = String::from_utf8_lossy(&head[..n]).contains("/v1/replication/stream");
    let _ = to_server.write_all(&head[..n]);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut upstream, &mut to_server);
    });
    let fault = if is_stream {
        faults
            .get(next.fetch_add(1, Ordering::Relaxed))
            .copied()
            .unwrap_or(Fault::Clean)
    } else {
        Fault::Clean
    };
    let mut from_server = server;
    let mut to_client = client;
    let mut sent = 0usize;
    let mut buf = vec![0u8; 1024];
    loop {
        let n = match from_server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let range = sent..sent + n;
        match fault {
            Fault::Clean => {}
            Fault::Flip(at) if range.contains(&at) => chunk[at - sent] ^= 0x10,
            Fault::Flip(_) => {}
            Fault::Cut(at) if range.contains(&at) => {
                let _ = to_client.write_all(&chunk[..at - sent]);
                return;
            }
            Fault::Cut(_) => {}
            Fault::Stall(at) if range.contains(&at) => {
                let _ = to_client.write_all(&chunk[..at - sent]);
                std::thread::sleep(Duration::from_secs(6));
                return;
            }
            Fault::Stall(_) => {}
            Fault::Duplicate(at) if range.contains(&at) => {
                let _ = to_client.write_all(chunk);
            }
            Fault::Duplicate(_) => {}
        }
        if to_client.write_all(chunk).is_err() {
            break;
        }
        sent += n;
    }
    let _ = to_client.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_damaging_proxy_never_gets_a_bad_frame_applied_and_the_mirror_converges() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    // A backlog, so that the damage lands inside entries.
    for i in 0..600 {
        let (status, body) = http(
            "PUT",
            &format!("{}/v1/vars/p/k{}", leader.url, i % 60),
            Some(&token),
            Some(&format!("{{\"value\": \"value number {i}\"}}")),
        );
        assert_eq!(status, 200, "{body}");
    }
    let target = leader.url.trim_start_matches("http://").to_string();
    let faults = vec![
        Fault::Flip(3_000),
        Fault::Flip(9_000),
        Fault::Duplicate(2_000),
        Fault::Cut(5_000),
        Fault::Flip(20_000),
        Fault::Stall(4_000),
        Fault::Duplicate(30_000),
    ];
    let proxied = proxy(target, faults);
    let log = s.ws.path("mirror.log");
    let m = s.first_mirror(&proxied);
    let (l, got) = converge(&leader.url, &m.url, &token);
    assert_eq!(got, l, "the mirror converged through the damage");
    let status = get_json(&format!("{}/v1/status", m.url), &token);
    assert!(
        status["follow"]["refused_frames"].as_u64().unwrap() >= 2,
        "flipped bytes inside entries were refused: {status}"
    );
    assert!(
        status["follow"]["connects"].as_u64().unwrap() >= 5,
        "{status}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refused a frame from the leader"))
        .collect();
    assert!(
        !refused.is_empty(),
        "the mirror logs what it refused: {text}"
    );
    assert!(
        refused.iter().all(|l| l.contains("offset=")),
        "each refusal names its offset: {refused:?}"
    );
    // Nothing bad was applied: the mirror's own chain and replay verify.
    let audit = get_json(&format!("{}/v1/audit/verify", m.url), &token);
    assert_eq!(audit["digest"].as_str(), Some(l.1.as_str()), "{audit}");
}

#[test]
fn an_entry_damaged_on_the_leader_s_disk_is_refused_by_the_mirror_naming_its_offset() {
    // The leader streams its log as stored, without decoding it again: the mirror's checks
    // are what catch damage on the leader's own disk, and they must name the entry.
    let s = setup();
    let token = token_of(&s.ws.admin_token());
    let (bad, head) = {
        let leader = s.ws.serve();
        for i in 0..20 {
            put_var(&leader.url, &token, &format!("k{i}"), "v", None);
        }
        let head = digest(&leader.url, &token).0;
        (head - 10, head)
    };
    {
        use cairn_store::layout::{self, CF_LOG};
        let db = cairn_store::open_raw_db(&s.ws.data).unwrap();
        let cf = db.cf_handle(CF_LOG).unwrap();
        let mut bytes = db.get_cf(cf, layout::log_key(bad)).unwrap().unwrap();
        let at = bytes.len() - 2;
        bytes[at] ^= 0x04;
        db.put_cf(cf, layout::log_key(bad), &bytes).unwrap();
    }
    let leader = s.ws.serve();
    let m = s.first_mirror(&leader.url);
    let status = poll(Duration::from_secs(30), || {
        let st = get_json(&format!("{}/v1/status", m.url), &token);
        if st["follow"]["refused_frames"].as_u64().unwrap_or(0) >= 2 {
            Ok(st)
        } else {
            Err(format!("the mirror refused no frame twice yet: {st}"))
        }
    });
    let message = status["follow"]["last_error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("offset {bad}")),
        "the refusal names the damaged entry: {status}"
    );
    // Every command before it applied; nothing from it on, however often the mirror retries.
    // The entry just before it is a command of its own (a var set), but nothing the mirror
    // received says so (the damaged entry might have continued it, and no head mark came
    // between them: the backlog is sent without pause), so a mirror, which applies whole
    // commands only, holds it too.
    assert_eq!(status["applied_offset"].as_u64(), Some(bad - 2), "{status}");
    assert!(bad - 1 < head);
    let audit = get_json(&format!("{}/v1/audit/verify", m.url), &token);
    assert!(
        audit["digest"].is_string(),
        "the mirror's own log verifies: {audit}"
    );
}

/// An HTTP call returning `(status, Cairn-Offset header, body)`.
fn call(
    method: &str,
    url: &str,
    token: &str,
    headers: &[(&str, String)],
    body: Option<&str>,
) -> (u16, Option<u64>, String) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut req = agent
        .request(method, url)
        .set("authorization", &format!("Bearer {token}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match body {
        Some(b) => req.set("content-type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let offset = resp.header("cairn-offset").and_then(|v| v.parse().ok());
    (status, offset, resp.into_string().unwrap_or_default())
}

fn put_var(
    base: &str,
    token: &str,
    key: &str,
    value: &str,
    idem: Option<&str>,
) -> (u16, Option<u64>, String) {
    let headers: Vec<(&str, String)> = idem
        .map(|k| ("idempotency-key", k.to_string()))
        .into_iter()
        .collect();
    call(
        "PUT",
        &format!("{base}/v1/vars/p/{key}"),
        token,
        &headers,
        Some(&format!("{{\"value\": \"{value}\"}}")),
    )
}

#[test]
fn a_write_to_a_mirror_is_forwarded_and_read_back_there_and_min_offset_waits() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let m = s.first_mirror(&leader.url);
    // Forwarded with the caller's token; answered once the mirror applied it.
    let (status, offset, body) = put_var(&m.url, &token, "k1", "via-mirror", Some("w-1"));
    assert_eq!(status, 200, "{body}");
    let offset = offset.expect("a write answer carries Cairn-Offset");
    let var = get_json(&format!("{}/v1/vars/p/k1", m.url), &token);
    assert_eq!(
        var["value"], "via-mirror",
        "read-your-writes on the mirror: {var}"
    );
    assert!(digest(&m.url, &token).0 >= offset);
    // The log names the caller, not the mirror.
    let entries = get_json(
        &format!("{}/v1/log?from={offset}&limit=1", leader.url),
        &token,
    );
    assert_eq!(entries[0]["meta"]["actor"], "token:admin", "{entries}");
    // A retry with the same key through the mirror writes nothing.
    let (status, _, body) = put_var(&m.url, &token, "k1", "via-mirror", Some("w-1"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"replayed\":true"), "{body}");
    // Across nodes: a write on the leader, read on the mirror at that offset.
    let (status, offset, body) = put_var(&leader.url, &token, "k2", "on-leader", None);
    assert_eq!(status, 200, "{body}");
    let offset = offset.unwrap();
    let (status, _, body) = call(
        "GET",
        &format!("{}/v1/vars/p/k2", m.url),
        &token,
        &[("cairn-min-offset", offset.to_string())],
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("on-leader"), "{body}");
    let got = common::run(&[
        "--server",
        &m.url,
        "--token-file",
        s.ws.admin_token().to_str().unwrap(),
        "--min-offset",
        &offset.to_string(),
        "var",
        "get",
        "p",
        "k2",
    ])
    .ok();
    assert!(got.contains("on-leader"), "{got}");
    // An offset the node will not reach in time: a clear timeout, not a stale answer.
    let (status, _, body) = call(
        "GET",
        &format!("{}/v1/vars/p/k2", m.url),
        &token,
        &[("cairn-min-offset", (offset + 1_000_000).to_string())],
        None,
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("lagging") && body.contains("not yet"),
        "{body}"
    );
    // A command that a mirror forwarded already is not forwarded again (no loops).
    let (status, _, body) = call(
        "PUT",
        &format!("{}/v1/vars/p/k9", m.url),
        &token,
        &[("cairn-forwarded", "1".into())],
        Some("{\"value\": \"loop\"}"),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("is itself a mirror"), "{body}");
    // The leader gone: writes to the mirror say so, reads go on.
    let leader_url = leader.url.clone();
    drop(leader);
    let (status, _, body) = put_var(&m.url, &token, "k3", "x", None);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not_leader") && body.contains(&leader_url),
        "{body}"
    );
    let var = get_json(&format!("{}/v1/vars/p/k2", m.url), &token);
    assert_eq!(var["value"], "on-leader");
}

/// `cairn serve` with extra arguments, on a free port.
fn serve_with(data: &Path, extra: &[&str]) -> Server {
    try_serve(data, "127.0.0.1:0", extra).expect("cairn serve listens")
}

#[test]
fn with_sync_mirrors_a_write_is_answered_only_once_a_mirror_applied_it() {
    let s = setup();
    let leader = serve_with(
        &s.ws.data,
        &["--sync-mirrors", "1", "--sync-timeout-ms", "1500"],
    );
    let token = token_of(&s.ws.admin_token());
    // Its writes wait for acknowledgements, so it asks for one after every commit.
    let id = get_json(&format!("{}/v1/status", leader.url), &token)["workspace_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ack_interval_asked(&leader.url, &id, &token_of(&s.mirror_token)),
        "0"
    );
    // No mirror yet: committed on the leader, answered 503 not_replicated with its offset.
    let (status, _, body) = put_var(&leader.url, &token, "k0", "alone", Some("s-0"));
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not_replicated") && body.contains("committed on the leader at offset"),
        "{body}"
    );
    let var = get_json(&format!("{}/v1/vars/p/k0", leader.url), &token);
    assert_eq!(var["value"], "alone");
    let data = s.ws.path("mirror");
    let log = s.ws.path("mirror.log");
    let m = Mirror::start(
        &data,
        &leader.url,
        &s.mirror_token,
        Some(&s.backup),
        "m",
        &log,
    );
    // The retry of that write returns it once the mirror has it.
    let (status, _, body) = put_var(&leader.url, &token, "k0", "alone", Some("s-0"));
    assert_eq!(status, 200, "{body}");
    for i in 1..=20 {
        let (status, offset, body) = put_var(&leader.url, &token, &format!("k{i}"), "sync", None);
        assert_eq!(status, 200, "{body}");
        // At acknowledgement the mirror has already applied the offset.
        let (applied, _) = digest(&m.url, &token);
        assert!(
            applied >= offset.unwrap(),
            "acknowledged {offset:?} before the mirror had it ({applied})"
        );
    }
    // The only mirror killed: writes wait for the timeout and say so.
    m.kill();
    let (status, _, body) = put_var(&leader.url, &token, "k99", "late", Some("s-99"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("0 of the 1 mirrors"), "{body}");
    let m = Mirror::start(&data, &leader.url, &s.mirror_token, None, "m", &log);
    let (status, offset, body) = put_var(&leader.url, &token, "k99", "late", Some("s-99"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"replayed\":true"), "{body}");
    assert!(digest(&m.url, &token).0 >= offset.unwrap());
}

#[test]
fn a_mirror_s_data_directory_is_never_opened_to_write_as_a_leader() {
    let s = setup();
    let leader = s.ws.serve();
    let m = s.first_mirror(&leader.url);
    let token = token_of(&s.ws.admin_token());
    converge(&leader.url, &m.url, &token);
    let data = m.data.clone();
    m.kill();
    let dir = data.to_str().unwrap();
    // Writes and a leader are refused; reads work.
    for args in [
        vec!["--data", dir, "token", "create", "x", "--role", "read"],
        vec!["--data", dir, "serve", "--listen", "127.0.0.1:0"],
    ] {
        let out = common::run(&args).expect(1);
        assert!(
            out.stderr.contains("is a mirror's data directory"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let listed = common::run(&["--data", dir, "pkg", "list"]).ok();
    assert!(listed.contains("p "), "{listed}");
    // A mirror acknowledges durable commits only.
    let out = common::run(&[
        "--data",
        dir,
        "--durability",
        "buffered",
        "mirror",
        "--leader",
        &leader.url,
        "--leader-token",
        s.mirror_token.to_str().unwrap(),
    ])
    .expect(2);
    assert!(
        out.stderr.contains("--durability sync only"),
        "{}",
        out.stderr
    );
    // An acknowledgement with a hash that is not the leader's entry is not counted.
    let mirror = token_of(&s.mirror_token);
    let (status, body) = http(
        "POST",
        &format!(
            "{}/v1/replication/ack?name=m&applied=1&hash={}",
            leader.url,
            "ab".repeat(32)
        ),
        Some(&mirror),
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("diverged"), "{body}");
}

#[test]
fn an_empty_mirror_provisions_itself_from_the_leader() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    for i in 0..30 {
        put_var(&leader.url, &token, &format!("k{i}"), "before", None);
    }
    // Only a mirror token gets the bundle.
    let (status, body) = http(
        "GET",
        &format!("{}/v1/replication/bundle", leader.url),
        Some(&token),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let data = s.ws.path("fresh-mirror");
    let m = Mirror::start(
        &data,
        &leader.url,
        &s.mirror_token,
        None,
        "fresh",
        &s.ws.path("fresh.log"),
    );
    put_var(&leader.url, &token, "k99", "after", None);
    let (l, got) = converge(&leader.url, &m.url, &token);
    assert_eq!(got, l, "provisioned, then followed");
    let ids: Vec<Value> = [&leader.url, &m.url]
        .iter()
        .map(|u| get_json(&format!("{u}/v1/status"), &token)["workspace_id"].clone())
        .collect();
    assert_eq!(ids[0], ids[1], "the mirror keeps the leader's workspace id");
    assert!(
        data.join(cairn_marker()).exists(),
        "the directory is marked as a mirror's"
    );
}

fn cairn_marker() -> &'static str {
    "mirror"
}

#[test]
fn a_leader_restored_from_an_older_backup_is_refused_by_its_mirror_naming_both_positions() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let m = s.first_mirror(&leader.url);
    for i in 0..40 {
        put_var(&leader.url, &token, &format!("k{i}"), "lost", None);
    }
    let ((head, _), _) = converge(&leader.url, &m.url, &token);
    let port = leader.url.rsplit(':').next().unwrap().to_string();
    drop(leader);
    // The operator restores the leader from the backup taken before those writes.
    let restored = s.ws.path("restored");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&s.backup)
        .arg(&restored)
        .status()
        .unwrap();
    assert!(copied.success());
    let old_head = common::run(&["--data", restored.to_str().unwrap(), "state", "digest"]).ok();
    let old_head: u64 = old_head.split(' ').next().unwrap().parse().unwrap();
    assert!(old_head < head);
    let _restored = serve_on(&restored, &format!("127.0.0.1:{port}"));
    let status = wait_follow_state(&m.url, &token, "refused");
    assert_eq!(status["follow"]["code"], "follower_ahead", "{status}");
    let message = status["follow"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("offset {head}"))
            && message.contains(&format!("head is {old_head}")),
        "both positions: {message}"
    );
    // The witness keeps what it has.
    assert_eq!(digest(&m.url, &token).0, head);
}

/// `cairn --server URL --token-file admin.token ARGS`.
fn remote(url: &str, s: &Setup, args: &[&str]) -> common::Out {
    let token_file = s.ws.admin_token();
    let mut all = vec![
        "--server",
        url,
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    common::run(&all)
}

/// Waits until `url`'s follower is in `state`; returns the status.
fn wait_follow_state(url: &str, token: &str, state: &str) -> Value {
    poll(CONVERGE_TIMEOUT, || {
        let status = get_json(&format!("{url}/v1/status"), token);
        if status["follow"]["state"] == state {
            return Ok(status);
        }
        Err(format!("never {state}: {status}"))
    })
}

#[test]
fn a_forced_promote_makes_a_new_epoch_and_the_old_leader_rejoins_as_its_mirror() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let m = s.first_mirror(&leader.url);
    for i in 0..30 {
        put_var(&leader.url, &token, &format!("k{i}"), "epoch1", None);
    }
    let ((head, _), _) = converge(&leader.url, &m.url, &token);
    drop(leader); // the leader is gone
    let out = remote(&m.url, &s, &["promote", "--name", "m"]).ok();
    assert!(
        out.contains("epoch   2") || out.contains("epoch  2"),
        "{out}"
    );
    // It leads: commands are decided here, in epoch 2, right after the old head.
    let status = get_json(&format!("{}/v1/status", m.url), &token);
    assert_eq!(status["role"], "leader", "{status}");
    assert_eq!(status["epoch"], 2, "{status}");
    let entry = get_json(
        &format!("{}/v1/log?from={}&limit=1", m.url, head + 1),
        &token,
    );
    assert_eq!(entry[0]["kind"], "epoch.started.v1", "{entry}");
    assert_eq!(entry[0]["epoch"], 2, "{entry}");
    let (status, _, body) = put_var(&m.url, &token, "k0", "epoch2", None);
    assert_eq!(status, 200, "{body}");
    // The old leader's directory starts again as a mirror of the new leader: its log is a
    // prefix of the new one, so it follows.
    let old = Mirror::start(
        &s.ws.data,
        &m.url,
        &s.mirror_token,
        None,
        "old-leader",
        &s.ws.path("old.log"),
    );
    let (l, got) = converge(&m.url, &old.url, &token);
    assert_eq!(got, l, "the old leader follows the new one");
    let var = get_json(&format!("{}/v1/vars/p/k0", old.url), &token);
    assert_eq!(var["value"], "epoch2");
    // Promoting twice is refused.
    let again = remote(&m.url, &s, &["promote"]).expect(1);
    assert!(again.stderr.contains("leader already"), "{}", again.stderr);
}

#[test]
fn an_old_leader_that_wrote_past_the_fork_is_refused_as_diverged_at_the_fork() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let m = s.first_mirror(&leader.url);
    for i in 0..20 {
        put_var(&leader.url, &token, &format!("k{i}"), "shared", None);
    }
    let ((fork, _), _) = converge(&leader.url, &m.url, &token);
    let mirror_data = m.data.clone();
    m.kill();
    // The old leader goes on alone for a while, then dies.
    for i in 0..5 {
        put_var(&leader.url, &token, &format!("k{i}"), "lost", None);
    }
    drop(leader);
    // The stopped mirror is promoted in place and serves as the new leader.
    let out = common::run(&[
        "--data",
        mirror_data.to_str().unwrap(),
        "promote",
        "--name",
        "m",
    ])
    .ok();
    assert!(out.contains("leader"), "{out}");
    let new = try_serve(&mirror_data, "127.0.0.1:0", &[]).expect("the promoted mirror serves");
    for i in 0..20 {
        let (status, _, body) = put_var(&new.url, &token, &format!("k{i}"), "new", None);
        assert_eq!(status, 200, "{body}");
    }
    // The old leader, started as a mirror of the new one, is refused: it diverged right after
    // the fork, and it keeps every entry it had.
    let old = Mirror::start(
        &s.ws.data,
        &new.url,
        &s.mirror_token,
        None,
        "old-leader",
        &s.ws.path("old.log"),
    );
    let status = wait_follow_state(&old.url, &token, "diverged");
    assert_eq!(status["follow"]["offset"], fork + 1, "{status}");
    assert!(
        status["follow"]["message"]
            .as_str()
            .unwrap()
            .contains("re-provision"),
        "{status}"
    );
    assert_eq!(digest(&old.url, &token).0, fork + 5, "nothing was undone");
}

/// What the writers of the handoff test saw.
#[derive(Default)]
struct Writes {
    /// `(key, value, offset)` of every acknowledged write.
    acked: Vec<(String, String, u64)>,
    /// 503 answers (retried with the same idempotency key), by code.
    retried: std::collections::BTreeMap<String, u64>,
}

#[test]
fn a_handoff_under_16_concurrent_writers_loses_no_acknowledged_write() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let m = s.first_mirror(&leader.url);
    let m2 = Mirror::start(
        &s.ws.path("mirror2"),
        &leader.url,
        &s.mirror_token,
        Some(&s.backup),
        "m2",
        &s.ws.path("mirror2.log"),
    );
    wait_follow_state(&m.url, &token, "following");
    wait_follow_state(&m2.url, &token, "following");
    let writes = Arc::new(std::sync::Mutex::new(Writes::default()));
    let handed_off = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicUsize::new(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            // Half write to the leader, half to the mirror that takes over (forwarded there
            // until it leads).
            let base = if w % 2 == 0 { &leader.url } else { &m.url }.clone();
            let (token, writes, handed_off, after) = (
                token.clone(),
                Arc::clone(&writes),
                Arc::clone(&handed_off),
                Arc::clone(&after),
            );
            std::thread::spawn(move || {
                let mut n = 0;
                // Until 20 writes of each writer were acknowledged after the handoff.
                while after.load(Ordering::SeqCst) < 16 * 20 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "writers ran out of time"
                    );
                    let (key, value) = (format!("w{w}-{n}"), format!("v{n}"));
                    let idem = format!("handoff-{w}-{n}");
                    loop {
                        let was_handed_off = handed_off.load(Ordering::SeqCst);
                        let (status, offset, body) =
                            put_var(&base, &token, &key, &value, Some(&idem));
                        if status == 200 {
                            let offset = offset.expect("an acknowledged write carries its offset");
                            writes
                                .lock()
                                .unwrap()
                                .acked
                                .push((key.clone(), value.clone(), offset));
                            if was_handed_off {
                                after.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                        assert_eq!(status, 503, "{key} via {base}: {body}");
                        let code = serde_json::from_str::<Value>(&body).unwrap()["error"]["code"]
                            .as_str()
                            .unwrap_or("?")
                            .to_string();
                        *writes.lock().unwrap().retried.entry(code).or_default() += 1;
                        assert!(
                            std::time::Instant::now() < deadline,
                            "{key} never acknowledged: {body}"
                        );
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // Let the writers get going, then hand off.
    wait_until(Duration::from_secs(30), "200 writes acknowledged", || {
        writes.lock().unwrap().acked.len() >= 200
    });
    let before = writes.lock().unwrap().acked.len();
    let out = remote(
        &leader.url,
        &s,
        &["handoff", "--to", &m.url, "--name", "old-leader"],
    )
    .ok();
    handed_off.store(true, Ordering::SeqCst);
    assert!(out.contains("mirror"), "{out}");
    for w in writers {
        w.join().unwrap();
    }
    let writes = writes.lock().unwrap();
    assert!(writes.acked.len() >= before + 16 * 20);
    // The new leader leads in epoch 2; the old one follows it, and so does the other mirror,
    // which learnt of the new leader from the old one.
    let status = get_json(&format!("{}/v1/status", m.url), &token);
    assert_eq!(status["role"], "leader", "{status}");
    assert_eq!(status["epoch"], 2, "{status}");
    let old = wait_follow_state(&leader.url, &token, "following");
    assert_eq!(old["role"], "mirror", "{old}");
    assert_eq!(old["leader"], m.url.as_str(), "{old}");
    poll(CONVERGE_TIMEOUT, || {
        let other = get_json(&format!("{}/v1/status", m2.url), &token);
        if other["leader"] == m.url.as_str() && other["follow"]["state"] == "following" {
            return Ok(());
        }
        Err(format!(
            "the other mirror does not follow the new leader: {other}"
        ))
    });
    // Every acknowledged write is on the new leader, at or below its head.
    let vars = get_json(&format!("{}/v1/vars/p", m.url), &token);
    let held: std::collections::BTreeMap<String, String> = vars
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let head = digest(&m.url, &token).0;
    for (key, value, offset) in &writes.acked {
        assert_eq!(
            held.get(key),
            Some(value),
            "acknowledged {key}={value} at {offset} is lost"
        );
        assert!(*offset <= head);
    }
    // All three hold the same log.
    let (l, old_digest) = converge(&m.url, &leader.url, &token);
    assert_eq!(old_digest, l, "the old leader converges on the new one");
    let (l, other) = converge(&m.url, &m2.url, &token);
    assert_eq!(other, l, "the other mirror converges on the new leader");
    eprintln!(
        "handoff: {} acknowledged writes, retried: {:?}",
        writes.acked.len(),
        writes.retried
    );
    // The token the old leader follows with was kept for a restart.
    assert!(s.ws.data.join("leader.token").exists());
}

/// A TCP proxy to `target` that passes the leader's bytes only while `open` is set (it holds
/// them meanwhile): a mirror behind it falls behind on demand.
fn gated_proxy(target: String, open: Arc<AtomicBool>) -> String {
    relay_proxy(target, move |client, server| {
        let (mut up_from, mut up_to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut up_from, &mut up_to);
        });
        let (mut from, mut to) = (server, client);
        let mut buf = vec![0u8; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            while !open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    })
}

#[test]
fn a_handoff_to_a_mirror_that_cannot_catch_up_leaves_the_leader_leading() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let open = Arc::new(AtomicBool::new(true));
    let gate = gated_proxy(
        leader.url.trim_start_matches("http://").to_string(),
        Arc::clone(&open),
    );
    let m = s.first_mirror(&gate);
    wait_follow_state(&m.url, &token, "following");
    // Not a mirror: refused before anything changes.
    let not_mirror = remote(&leader.url, &s, &["handoff", "--to", &leader.url]).expect(1);
    assert!(
        not_mirror.stderr.contains("is not a mirror"),
        "{}",
        not_mirror.stderr
    );
    // The mirror falls behind; the handoff waits for it, gives up, and the leader leads again.
    open.store(false, Ordering::SeqCst);
    for i in 0..5 {
        let (status, _, body) = put_var(&leader.url, &token, &format!("k{i}"), "behind", None);
        assert_eq!(status, 200, "{body}");
    }
    // The handoff's first entry is the token the leader would follow with.
    let head = digest(&leader.url, &token).0 + 1;
    let failed = remote(
        &leader.url,
        &s,
        &["handoff", "--to", &m.url, "--timeout-ms", "300"],
    )
    .expect(1);
    assert!(
        failed
            .stderr
            .contains(&format!("of this leader's head {head}"))
            && failed.stderr.contains("leads again"),
        "{}",
        failed.stderr
    );
    let status = get_json(&format!("{}/v1/status", leader.url), &token);
    assert_eq!(status["role"], "leader", "{status}");
    let (code, _, body) = put_var(&leader.url, &token, "k0", "still-leading", None);
    assert_eq!(code, 200, "the leader takes writes again: {body}");
    assert!(!s.ws.data.join(cairn_marker()).exists());
    assert!(!s.ws.data.join("leader.token").exists());
    let tokens = get_json(&format!("{}/v1/tokens", leader.url), &token);
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .all(|t| !t["name"].as_str().unwrap().starts_with("handoff-")),
        "the unused token is revoked: {tokens}"
    );
    // Once the mirror can catch up, the same handoff goes through.
    open.store(true, Ordering::SeqCst);
    let ((head, _), _) = converge(&leader.url, &m.url, &token);
    wait_follow_state(&m.url, &token, "following");
    // A promotion on a condition the mirror does not meet changes nothing: it follows on.
    let (code, _, body) = call(
        "POST",
        &format!("{}/v1/promote", m.url),
        &token,
        &[],
        Some(&format!("{{\"expect_offset\": {}}}", head + 5)),
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("not_at_head") && body.contains("not promoted"),
        "{body}"
    );
    let status = get_json(&format!("{}/v1/status", m.url), &token);
    assert_eq!(status["role"], "mirror", "{status}");
    assert_eq!(status["follow"]["state"], "following", "{status}");
    remote(&leader.url, &s, &["handoff", "--to", &m.url]).ok();
    let status = get_json(&format!("{}/v1/status", m.url), &token);
    assert_eq!(status["role"], "leader", "{status}");
    let var = get_json(&format!("{}/v1/vars/p/k0", m.url), &token);
    assert_eq!(var["value"], "still-leading");
}

#[test]
fn a_change_whose_hook_runs_at_a_handoff_finishes_on_the_new_leader() {
    let s = setup();
    let leader = s.ws.serve();
    let admin = s.ws.admin_token();
    let token = token_of(&admin);
    let trace = s.ws.path("trace");
    let t = trace.display();
    // The hook runs until this file exists: its first attempt is still running at the
    // handoff, whatever the machine's speed; the second one ends once the test says so.
    let go_file = s.ws.path("go");
    let go = go_file.display();
    let hub = s.ws.file(
        "hub.toml",
        "name = \"hub\"\nversion = \"1.0.0\"\n\n[[slots]]\nname = \"net\"\ninterface = \"network\"\n",
    );
    let app = s.ws.file(
        "app.toml",
        &format!(
            "name = \"app\"\nversion = \"1.0.0\"\n\n[hooks.connect-plug-net]\n\
             run = \"echo start >> {t}; while [ ! -e {go} ]; do sleep 0.02; done; echo end >> {t}\"\n\n\
             [[plugs]]\nname = \"net\"\ninterface = \"network\"\n"
        ),
    );
    leader.remote(&admin, &["pkg", "install", &hub]).ok();
    leader.remote(&admin, &["pkg", "install", &app]).ok();
    let m = s.first_mirror(&leader.url);
    let id = leader
        .remote(
            &admin,
            &["iface", "connect", "app:net", "hub:net", "--no-wait"],
        )
        .ok();
    let id = id.trim().to_string();
    wait_until(Duration::from_secs(30), "the connect hook starts", || {
        std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("start"))
    });
    wait_follow_state(&m.url, &token, "following");
    remote(&leader.url, &s, &["handoff", "--to", &m.url]).ok();
    // The old leader stopped the first attempt: now let the new leader's attempt finish.
    std::fs::write(&go_file, b"").unwrap();
    // The old leader stopped the hook without an outcome; the new leader runs it again and
    // finishes the change.
    let change = poll(CONVERGE_TIMEOUT, || {
        let c = get_json(&format!("{}/v1/changes/{id}", m.url), &token);
        if c["status"] == "done" {
            return Ok(c);
        }
        Err(format!("the change is not done on the new leader: {c}"))
    });
    let task = change["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"].as_str().unwrap().contains("connect-plug"))
        .unwrap_or_else(|| panic!("{change}"));
    assert_eq!(task["attempts"], 2, "{change}");
    let lines = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(
        lines, "start\nstart\nend\n",
        "one attempt stopped, one whole"
    );
    // The old leader has it too.
    let (l, old) = converge(&m.url, &leader.url, &token);
    assert_eq!(old, l);
}

/// A TCP proxy to `target` that swallows the answer to the first `POST /v1/promote` (it reaches
/// the mirror, its answer never comes back) and passes everything else.
fn promote_answer_losing_proxy(target: String) -> String {
    let lost = Arc::new(AtomicBool::new(false));
    relay_proxy(target, move |client, server| {
        let swallow = Arc::new(AtomicBool::new(false));
        let (mut from_client, mut to_server) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (lost, swallow2) = (Arc::clone(&lost), Arc::clone(&swallow));
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from_client.read(&mut buf) {
                let promote = String::from_utf8_lossy(&buf[..n]).contains("POST /v1/promote");
                if promote && !lost.swap(true, Ordering::SeqCst) {
                    swallow2.store(true, Ordering::SeqCst);
                    let _ = to_server.write_all(&buf[..n]);
                    // The caller's line drops at once, while the mirror is promoting (it
                    // finishes on its own task whatever happens to this connection).
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                    return;
                }
                if to_server.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            let _ = s2.shutdown(std::net::Shutdown::Write);
        });
        let (mut from, mut to) = (server, client);
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if swallow.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    })
}

#[test]
fn a_promotion_whose_answer_is_lost_is_asked_again_and_happens_once() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let m = s.first_mirror(&leader.url);
    for i in 0..10 {
        put_var(&leader.url, &token, &format!("k{i}"), "before", None);
    }
    wait_follow_state(&m.url, &token, "following");
    let lossy = promote_answer_losing_proxy(m.url.trim_start_matches("http://").to_string());
    let out = remote(&leader.url, &s, &["handoff", "--to", &lossy]).ok();
    assert!(out.contains("mirror"), "{out}");
    // One new epoch, not two, and the old leader follows the new one.
    let epochs = get_json(
        &format!("{}/v1/log?kind=epoch.started&limit=100", m.url),
        &token,
    );
    assert_eq!(epochs.as_array().unwrap().len(), 1, "{epochs}");
    assert_eq!(epochs[0]["epoch"], 2, "{epochs}");
    let (status, _, body) = put_var(&m.url, &token, "k0", "after", None);
    assert_eq!(status, 200, "{body}");
    let (l, old) = converge(&m.url, &leader.url, &token);
    assert_eq!(old, l);
    let status = get_json(&format!("{}/v1/status", leader.url), &token);
    assert_eq!(status["role"], "mirror", "{status}");
}

/// A bare HTTP server that answers every request with `body` and keeps each request it got.
fn recording_server(body: String) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = vec![0u8; 16 * 1024];
            let n = conn.read(&mut buf).unwrap_or(0);
            kept.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).to_string());
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn a_handoff_sends_the_token_only_to_a_node_of_this_workspace() {
    let s = setup();
    let leader = s.ws.serve();
    let token = token_of(&s.ws.admin_token());
    let (stranger, seen) = recording_server(
        r#"{"ok": true, "workspace_id": "00000000-0000-4000-8000-000000000000"}"#.to_string(),
    );
    let refused = remote(&leader.url, &s, &["handoff", "--to", &stranger]).expect(1);
    assert!(
        refused
            .stderr
            .contains("holds workspace \"00000000-0000-4000-8000-000000000000\"")
            && refused.stderr.contains("nothing changed"),
        "{}",
        refused.stderr
    );
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| !r.to_ascii_lowercase().contains("authorization")),
        "no token went to the stranger: {requests:?}"
    );
    // URLs with more than a scheme, host and port are refused before anything is sent.
    for bad in [
        format!("{stranger}/v1/promote"),
        format!("http://user:pw@{}", stranger.trim_start_matches("http://")),
        format!("{stranger}?x=1"),
    ] {
        let e = remote(&leader.url, &s, &["handoff", "--to", &bad]).expect(1);
        assert!(e.stderr.contains("HOST[:PORT]"), "{bad}: {}", e.stderr);
    }
    assert_eq!(seen.lock().unwrap().len(), requests.len());
    // Still leading, writes taken.
    let (status, _, body) = put_var(&leader.url, &token, "k0", "x", None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_mirror_started_with_sync_mirrors_keeps_them_once_a_handoff_makes_it_lead() {
    let s = setup();
    let leader = serve_with(
        &s.ws.data,
        &["--sync-mirrors", "1", "--sync-timeout-ms", "1500"],
    );
    let token = token_of(&s.ws.admin_token());
    let mut cmd = Command::new(bin());
    cmd.args([
        "--data",
        s.ws.path("mirror").to_str().unwrap(),
        "mirror",
        "--leader",
        &leader.url,
    ])
    .arg("--leader-token")
    .arg(&s.mirror_token)
    .arg("--from-backup")
    .arg(&s.backup)
    .args(["--listen", "127.0.0.1:0", "--name", "m"])
    .args(["--sync-mirrors", "1", "--sync-timeout-ms", "1500"]);
    let mut child = cmd
        .env_remove("CAIRN_DATA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let m_url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let m = Mirror {
        child,
        url: m_url,
        data: s.ws.path("mirror"),
    };
    wait_follow_state(&m.url, &token, "following");
    let (status, _, body) = put_var(&leader.url, &token, "k1", "one", None);
    assert_eq!(status, 200, "{body}");
    remote(&leader.url, &s, &["handoff", "--to", &m.url]).ok();
    wait_follow_state(&leader.url, &token, "following");
    // The new leader answers once its one mirror (the old leader) has the write.
    for i in 0..10 {
        let (status, offset, body) = put_var(&m.url, &token, &format!("k{i}"), "sync", None);
        assert_eq!(status, 200, "{body}");
        let (applied, _) = digest(&leader.url, &token);
        assert!(
            applied >= offset.unwrap(),
            "acknowledged {offset:?} before its mirror had it ({applied})"
        );
    }
    drop(leader);
    let (status, _, body) = put_var(&m.url, &token, "k0", "alone", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_replicated"), "{body}");
}

/// A daemon that appends `start <CAIRN_WORKSPACE> <ns>` and, at SIGTERM, `stop <CAIRN_WORKSPACE>
/// <ns>` to `trace`, and writes its pid to `<trace>.pid.<pid>`.
fn host_daemon_manifest(trace: &Path) -> String {
    let t = trace.display();
    format!(
        "name = \"hostd\"\nversion = \"1.0.0\"\n\n[[daemons]]\nname = \"d\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo start $CAIRN_WORKSPACE $(date +%s%N) >> {t}; \
         touch {t}.pid.$$; trap 'echo stop $CAIRN_WORKSPACE $(date +%s%N) >> {t}; exit 0' TERM; \
         while true; do sleep 0.05; done\"]\nrestart = \"always\"\n"
    )
}

fn trace_lines(trace: &Path) -> Vec<(String, String, u128)> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            let what = f.next().unwrap().to_string();
            let ws = f.next().unwrap().to_string();
            let at = f.next().unwrap().parse().unwrap();
            (what, ws, at)
        })
        .collect()
}

/// Pids the daemon wrote that are still alive (not zombies).
fn live_daemon_pids(trace: &Path) -> Vec<i32> {
    let dir = trace.parent().unwrap();
    let prefix = format!("{}.pid.", trace.file_name().unwrap().to_str().unwrap());
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix(&prefix).and_then(|p| p.parse().ok())
        })
        .filter(|pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
        })
        .collect()
}

#[test]
fn a_daemon_runs_only_on_the_leader_and_a_handoff_never_runs_it_on_both() {
    let s = setup();
    let leader = s.ws.serve();
    let admin = s.ws.admin_token();
    let token = token_of(&admin);
    let trace = s.ws.path("daemon-trace");
    let m = s.first_mirror(&leader.url);
    let manifest = s.ws.file("hostd.toml", &host_daemon_manifest(&trace));
    leader.remote(&admin, &["pkg", "install", &manifest]).ok();
    wait_until(
        Duration::from_secs(30),
        "the daemon starts on the leader",
        || !trace_lines(&trace).is_empty(),
    );
    wait_follow_state(&m.url, &token, "following");
    converge(&leader.url, &m.url, &token);
    let leader_ws = trace_lines(&trace)[0].1.clone();
    assert!(trace_lines(&trace)
        .iter()
        .all(|(_, ws, _)| *ws == leader_ws));
    // The mirror lists the daemon (from the log) but runs nothing.
    let list = get_json(&format!("{}/v1/daemons", m.url), &token);
    assert_eq!(list["supervised"], false, "{list}");
    assert_eq!(list["daemons"][0]["observed"], "running", "{list}");
    assert_eq!(live_daemon_pids(&trace).len(), 1);
    // `daemon restart` sent to the mirror is a command: forwarded, the leader runs it again.
    // `daemon logs` is answered where the daemon runs: the mirror has none.
    let before = live_daemon_pids(&trace)[0];
    let out = remote(&m.url, &s, &["daemon", "restart", "hostd:d"]).ok();
    assert_eq!(out, "restarted hostd:d\n");
    wait_until(Duration::from_secs(30), "the leader runs it again", || {
        let live = live_daemon_pids(&trace);
        live.len() == 1 && live[0] != before
    });
    let logs = remote(&m.url, &s, &["daemon", "logs", "hostd:d"]).expect(1);
    assert!(logs.stderr.contains("not supervised"), "{logs:#?}");
    assert!(trace_lines(&trace)
        .iter()
        .all(|(_, ws, _)| *ws == leader_ws));

    remote(&leader.url, &s, &["handoff", "--to", &m.url]).ok();
    wait_until(
        Duration::from_secs(30),
        "the daemon starts on the new leader",
        || {
            trace_lines(&trace)
                .iter()
                .any(|(w, ws, _)| w == "start" && *ws != leader_ws)
        },
    );
    let lines = trace_lines(&trace);
    // Its last run on the old leader (the one after the restart) was stopped by the handoff.
    let stopped = lines
        .iter()
        .rfind(|(w, ws, _)| w == "stop" && *ws == leader_ws)
        .unwrap_or_else(|| panic!("the old leader never stopped it: {lines:?}"));
    let started = lines
        .iter()
        .find(|(w, ws, _)| w == "start" && *ws != leader_ws)
        .unwrap();
    assert!(stopped.2 < started.2, "both ran at once: {lines:?}");
    let on_old = |what: &str| {
        lines
            .iter()
            .filter(|(w, ws, _)| w == what && *ws == leader_ws)
            .count()
    };
    assert_eq!((on_old("start"), on_old("stop")), (2, 2), "{lines:?}");
    wait_until(Duration::from_secs(30), "one daemon process", || {
        live_daemon_pids(&trace).len() == 1
    });
    let list = get_json(&format!("{}/v1/daemons", m.url), &token);
    assert_eq!(list["supervised"], true, "{list}");
    assert!(list["daemons"][0]["pid"].is_number(), "{list}");
}

#[test]
fn a_sigkilled_leader_leaves_no_daemon_and_its_restart_runs_each_once() {
    let ws = common::Ws::init();
    let trace = ws.path("daemon-trace");
    let manifest = ws.file("hostd.toml", &host_daemon_manifest(&trace));
    let mut leader = ws.serve();
    let admin = ws.admin_token();
    leader.remote(&admin, &["pkg", "install", &manifest]).ok();
    wait_until(Duration::from_secs(30), "the daemon runs", || {
        live_daemon_pids(&trace).len() == 1
    });
    let first = live_daemon_pids(&trace)[0];
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    wait_until(
        Duration::from_secs(10),
        "the daemon dies with its leader",
        || live_daemon_pids(&trace).is_empty(),
    );
    let leader = ws.serve();
    wait_until(Duration::from_secs(30), "the daemon runs again", || {
        live_daemon_pids(&trace).iter().any(|p| *p != first)
    });
    let list = leader.remote(&admin, &["daemon", "list", "--json"]).json();
    assert_eq!(list["daemons"][0]["restarts"], 0, "{list}");
    assert_eq!(live_daemon_pids(&trace).len(), 1, "exactly one runs");
}

/// Nanoseconds since the Unix epoch, the clock of the daemon's `date +%s%N`.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn after_a_forced_promote_the_daemon_runs_only_on_the_new_leader() {
    let s = setup();
    let mut leader = s.ws.serve();
    let admin = s.ws.admin_token();
    let token = token_of(&admin);
    let trace = s.ws.path("daemon-trace");
    let m = s.first_mirror(&leader.url);
    let manifest = s.ws.file("hostd.toml", &host_daemon_manifest(&trace));
    leader.remote(&admin, &["pkg", "install", &manifest]).ok();
    wait_until(
        Duration::from_secs(30),
        "the daemon runs on the leader",
        || live_daemon_pids(&trace).len() == 1,
    );
    wait_follow_state(&m.url, &token, "following");
    converge(&leader.url, &m.url, &token);
    let leader_ws = trace_lines(&trace)[0].1.clone();
    let list = get_json(&format!("{}/v1/daemons", m.url), &token);
    assert_eq!(list["supervised"], false, "{list}");

    // SIGKILL: the leader cannot stop its daemon, the parent-death rule does.
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    wait_until(
        Duration::from_secs(10),
        "the daemon dies with its leader",
        || live_daemon_pids(&trace).is_empty(),
    );
    let dead_ns = now_ns();
    // The mirror still runs nothing.
    assert!(live_daemon_pids(&trace).is_empty());
    assert!(trace_lines(&trace)
        .iter()
        .all(|(_, ws, _)| *ws == leader_ws));

    remote(&m.url, &s, &["promote", "--name", "m"]).ok();
    let row = wait_daemon_running(&m.url, &token, "hostd", "d");
    wait_until(Duration::from_secs(30), "one daemon process", || {
        live_daemon_pids(&trace).len() == 1
    });
    let live = live_daemon_pids(&trace);
    assert_eq!(
        row["pid"], live[0],
        "the new leader runs the live one: {row}"
    );
    assert_eq!(row["restarts"], 0, "{row}");
    let lines = trace_lines(&trace);
    let starts: Vec<_> = lines
        .iter()
        .filter(|(w, ws, _)| w == "start" && *ws != leader_ws)
        .collect();
    assert_eq!(starts.len(), 1, "started once on the new leader: {lines:?}");
    assert!(
        starts[0].2 > dead_ns,
        "it started on the new leader before the old one's died: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .filter(|(_, ws, _)| *ws == leader_ws)
            .all(|(_, _, at)| *at < dead_ns),
        "{lines:?}"
    );
}
