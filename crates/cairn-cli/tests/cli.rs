//! End-to-end: every command of the `cairn` binary, in local mode and in remote mode against a
//! real `cairn serve` on 127.0.0.1. Read commands run in both modes on the same state must
//! print exactly the same bytes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Read commands whose output must be identical in both modes (same workspace, same state).
fn reads(change: &str) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["status"]),
        v(&["status", "--json"]),
        v(&["pkg", "list"]),
        v(&["pkg", "list", "--json"]),
        v(&["pkg", "show", "netmon"]),
        v(&["pkg", "show", "netmon", "--json"]),
        v(&["var", "get", "netmon", "threshold"]),
        v(&["var", "list", "netmon"]),
        v(&["var", "list", "netmon", "--json"]),
        v(&["queue", "read", "netmon:events"]),
        v(&["vault", "get", "netmon", "api-token"]),
        v(&["queue", "read", "netmon:events", "--from", "2", "--json"]),
        v(&["feature", "list"]),
        v(&["feature", "list", "--json"]),
        v(&["iface", "list"]),
        v(&["iface", "list", "--json"]),
        v(&["change", "list"]),
        v(&["change", "list", "--json"]),
        v(&["change", "show", change]),
        v(&["change", "show", change, "--json"]),
        v(&["log", "show"]),
        v(&["log", "show", "--json", "--from", "3", "--limit", "7"]),
        v(&["log", "show", "--json", "--kind", "feature."]),
        v(&["state", "digest"]),
        v(&["audit", "verify"]),
        v(&["audit", "verify", "--json"]),
        v(&["token", "list"]),
        v(&["token", "list", "--json"]),
        // Rejections print the same message too.
        v(&["pkg", "show", "nosuch"]),
        v(&["var", "get", "netmon", "nosuch"]),
    ]
}

#[test]
fn every_command_in_local_and_remote_mode() {
    let ws = Ws::init();
    // init: the admin token file is private.
    let meta = std::fs::metadata(ws.admin_token()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A second init of the same directory is refused.
    ws.local(&["init"]).expect(1);

    // --- local writes ------------------------------------------------------------------
    let router = ws.example("router.toml");
    let netmon = ws.example("netmon.toml");
    let flaky = ws.example("flaky.toml");
    for m in [&router, &netmon] {
        let out = ws.local(&["pkg", "install", m]).ok();
        assert!(out.contains("status   done"), "{out}");
    }
    // --no-wait prints the change id at once; the change still completes.
    let id = ws.local(&["pkg", "install", &flaky, "--no-wait"]).ok();
    assert!(uuid::Uuid::try_parse(id.trim()).is_ok(), "{id}");
    let shown = ws.local(&["change", "show", id.trim(), "--json"]).json();
    assert_eq!(shown["kind"], "install");

    ws.local(&["var", "set", "netmon", "threshold", "42"]).ok();
    ws.local(&["var", "set", "netmon", "extra", "x"]).ok();
    ws.local(&["var", "del", "netmon", "extra"]).ok();
    assert_eq!(
        ws.local(&["var", "get", "netmon", "threshold"]).ok(),
        "42\n"
    );
    ws.local(&["queue", "put", "netmon:events", "a", "b", "c"])
        .ok();
    ws.local(&["queue", "ack", "netmon:events", "1"]).ok();
    let items = ws
        .local(&["queue", "read", "netmon:events", "--json"])
        .json();
    assert_eq!(
        items,
        serde_json::json!([{"seq": 2, "item": "b"}, {"seq": 3, "item": "c"}])
    );

    // Vaults: the secret is sealed before it is logged; only an admin reads it back.
    ws.local(&["vault", "set", "netmon", "api-token", "s3cret-value"])
        .ok();
    assert_eq!(
        ws.local(&["vault", "get", "netmon", "api-token"]).ok(),
        "s3cret-value\n"
    );
    let log = ws.local(&["log", "show", "--json", "--limit", "1000"]).ok();
    assert!(!log.contains("s3cret-value"), "plaintext in the log");
    let sealed = ws
        .local(&["log", "show", "--json", "--kind", "vault.set"])
        .ok();
    let sealed: Value = serde_json::from_str(sealed.lines().next().unwrap()).unwrap();
    assert!(sealed["event"]["ciphertext_hex"].as_str().unwrap().len() > 2 * "s3cret-value".len());

    let features = ws.local(&["feature", "list", "--json"]).json();
    let netmon_rev = features
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "netmon")
        .unwrap()["revision"]
        .as_u64()
        .unwrap();
    // A stale expected revision is a rejection (exit 1) naming both revisions.
    let stale = ws
        .local(&[
            "feature",
            "set",
            "netmon",
            "disabled",
            "--expect-revision",
            "1",
        ])
        .expect(1);
    assert!(
        stale.stderr.contains("not the expected 1"),
        "{}",
        stale.stderr
    );
    ws.local(&[
        "feature",
        "set",
        "netmon",
        "disabled",
        "--expect-revision",
        &netmon_rev.to_string(),
    ])
    .ok();
    ws.local(&["feature", "report", "netmon", "disabled"]).ok();
    let ghost = ws.local(&["feature", "report", "bgp", "enabled"]).expect(1);
    assert!(
        ghost.stderr.contains("feature \"bgp\" does not exist"),
        "{}",
        ghost.stderr
    );

    let conn = ws
        .local(&["iface", "connect", "netmon:net", "router:net", "--json"])
        .json();
    assert_eq!(conn["status"], "done");
    // A failing connect hook: the change ends in error, the command exits 1 and says why.
    let failed = ws
        .local(&["iface", "connect", "flaky:net", "router:net"])
        .expect(1);
    assert!(failed.stderr.contains("ended error"), "{}", failed.stderr);
    assert!(failed.stdout.contains("undone"), "{}", failed.stdout);

    let reader = ws
        .local(&["token", "create", "auditor", "--role", "read"])
        .ok();
    let reader_file = std::path::PathBuf::from(ws.file("auditor.token", &reader));
    ws.local(&["token", "create", "doomed", "--role", "write"])
        .ok();
    ws.local(&["token", "revoke", "doomed"]).ok();

    // A served workspace runs netmon's collector and records `daemon.observed` once it runs;
    // record that before the reads below are taken, so that serving again writes nothing
    // (the collector then runs again as the log already says) and both modes read one state.
    let admin_token = read_token(&ws.admin_token());
    {
        let server = ws.serve();
        wait_daemon_running(&server.url, &admin_token, "netmon", "collector");
        assert!(server.stop().success());
    }

    let change = conn["id"].as_str().unwrap().to_string();
    let local_reads: Vec<Out> = reads(&change)
        .iter()
        .map(|a| ws.local(&a.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    for (args, out) in reads(&change).iter().zip(&local_reads) {
        let rejected = args.contains(&"nosuch".to_string());
        assert_eq!(out.code, if rejected { 1 } else { 0 }, "{args:?}: {out:#?}");
    }

    // --- remote: the same reads print the same bytes ------------------------------------
    let server = ws.serve();
    // Local mode on a served workspace is refused, pointing at --server.
    let held = ws.local(&["pkg", "list"]).expect(1);
    assert!(held.stderr.contains("--server"), "{}", held.stderr);
    assert!(held.stderr.contains(&server.url), "{}", held.stderr);

    let admin = ws.admin_token();
    for (args, local) in reads(&change).iter().zip(&local_reads) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut remote = server.remote(&admin, &args);
        if args[0] == "status" {
            // The one difference: a local read runs no writer; the server's writer is up.
            let writer = |out: &Out, json: bool| -> String {
                if json {
                    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
                    v["writer"].as_str().unwrap().to_owned()
                } else {
                    out.stdout
                        .lines()
                        .find_map(|l| l.strip_prefix("writer "))
                        .unwrap()
                        .trim()
                        .to_owned()
                }
            };
            let json = args.contains(&"--json");
            assert_eq!(writer(local, json), "none");
            assert_eq!(writer(&remote, json), "ok");
            remote.stdout = if json {
                remote
                    .stdout
                    .replace("\"writer\": \"ok\"", "\"writer\": \"none\"")
            } else {
                remote
                    .stdout
                    .replace("writer          ok", "writer          none")
            };
        }
        assert_eq!(
            &remote,
            local,
            "`cairn {}` differs between modes",
            args.join(" ")
        );
    }
    // The read-only token reads, and is refused writes (exit 1, 403 message).
    server.remote(&reader_file, &["pkg", "list"]).ok();
    let denied = server
        .remote(&reader_file, &["var", "set", "netmon", "threshold", "1"])
        .expect(1);
    assert!(denied.stderr.contains("role read"), "{}", denied.stderr);
    let denied = server
        .remote(&reader_file, &["vault", "get", "netmon", "api-token"])
        .expect(1);
    assert!(
        denied.stderr.contains("this needs admin"),
        "{}",
        denied.stderr
    );
    server
        .remote(&admin, &["vault", "set", "netmon", "api-token", "rotated"])
        .ok();
    assert_eq!(
        server
            .remote(&admin, &["vault", "get", "netmon", "api-token"])
            .ok(),
        "rotated\n"
    );

    // --- remote writes -------------------------------------------------------------------
    server
        .remote(&admin, &["var", "set", "netmon", "threshold", "43"])
        .ok();
    server
        .remote(&admin, &["var", "set", "netmon", "tmp", "1"])
        .ok();
    server.remote(&admin, &["var", "del", "netmon", "tmp"]).ok();
    server
        .remote(&admin, &["queue", "put", "netmon:events", "d"])
        .ok();
    server
        .remote(&admin, &["queue", "ack", "netmon:events", "3"])
        .ok();
    assert_eq!(
        server
            .remote(&admin, &["queue", "read", "netmon:events", "--json"])
            .json(),
        serde_json::json!([{"seq": 4, "item": "d"}])
    );
    server
        .remote(&admin, &["feature", "set", "netmon", "enabled"])
        .ok();
    server
        .remote(&admin, &["feature", "report", "netmon", "enabled"])
        .ok();
    let disc = server
        .remote(
            &admin,
            &["iface", "disconnect", "netmon:net", "router:net", "--json"],
        )
        .json();
    assert_eq!(disc["status"], "done");
    server
        .remote(&admin, &["iface", "connect", "netmon:net", "router:net"])
        .ok();
    assert_eq!(
        server
            .remote(&admin, &["iface", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Aborting a finished change is a rejection.
    server
        .remote(&admin, &["change", "abort", &change])
        .expect(1);
    server
        .remote(&admin, &["token", "create", "ci", "--role", "write"])
        .ok();
    server.remote(&admin, &["token", "revoke", "ci"]).ok();
    // Remote rebuild is refused with the way to do it.
    let rebuild = server.remote(&admin, &["rebuild"]).expect(1);
    assert!(
        rebuild.stderr.contains("cairn rebuild --data"),
        "{}",
        rebuild.stderr
    );

    // Digests recorded at two offsets, for the replay below.
    let at_n = server.remote(&admin, &["state", "digest"]).ok();
    let n: u64 = at_n.split_whitespace().next().unwrap().parse().unwrap();

    let uninstall = server
        .remote(
            &admin,
            &["pkg", "uninstall", "netmon", "--keep", "vars", "--json"],
        )
        .json();
    assert_eq!(uninstall["status"], "done");
    let kept = server
        .remote(&admin, &["var", "list", "netmon", "--json"])
        .json();
    assert_eq!(kept[0]["kept_from"], "netmon");
    // Reinstalling adopts the kept vars.
    server.remote(&admin, &["pkg", "install", &netmon]).ok();
    assert_eq!(
        server
            .remote(&admin, &["var", "get", "netmon", "threshold"])
            .ok(),
        "43\n"
    );
    // The server starts the reinstalled collector and records that it runs: before the
    // digest, so that no entry lands between it and the backup.
    wait_daemon_running(&server.url, &admin_token, "netmon", "collector");

    // Remote backup streams a checkpoint that opens as a workspace with the same digest.
    let digest_now = server.remote(&admin, &["state", "digest"]).ok();
    let backup_dir = ws.path("backup");
    let reported = server
        .remote(&admin, &["backup", backup_dir.to_str().unwrap(), "--json"])
        .json();
    assert_eq!(digest_line(&reported), digest_now);
    assert_eq!(
        run(&["--data", backup_dir.to_str().unwrap(), "state", "digest"]).ok(),
        digest_now
    );
    // A second backup into the same directory is refused.
    server
        .remote(&admin, &["backup", backup_dir.to_str().unwrap()])
        .expect(1);

    // Remote replay to N has the digest the workspace had at N.
    let replay_dir = ws.path("replay-remote");
    let replayed = server
        .remote(
            &admin,
            &[
                "replay",
                "--until",
                &n.to_string(),
                "--into",
                replay_dir.to_str().unwrap(),
                "--json",
            ],
        )
        .json();
    assert_eq!(digest_line(&replayed), at_n);

    // log tail follows live entries.
    let mut tail = Command::new(bin())
        .args([
            "--server",
            &server.url,
            "--token-file",
            admin.to_str().unwrap(),
            "log",
            "tail",
            "--from",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["offset"], 1);
    server
        .remote(&admin, &["var", "set", "netmon", "threshold", "44"])
        .ok();
    let head: u64 = server
        .remote(&admin, &["state", "digest"])
        .ok()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut last = 0;
    while last < head {
        let e: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        last = e["offset"].as_u64().unwrap();
    }
    let _ = tail.kill();
    let _ = tail.wait();

    let status = server.stop();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status}");

    // --- local again: offline tools --------------------------------------------------------
    let before = ws.digest();
    let out = ws.local(&["rebuild"]).ok();
    assert!(out.contains("rebuilt the projection"), "{out}");
    assert_eq!(ws.digest(), before, "rebuild reproduces the digest");
    let replay_local = ws.path("replay-local");
    let out = ws
        .local(&[
            "replay",
            "--until",
            &n.to_string(),
            "--into",
            replay_local.to_str().unwrap(),
        ])
        .ok();
    assert!(
        out.contains(at_n.split_whitespace().nth(1).unwrap()),
        "{out}\nvs {at_n}"
    );
    let backup_local = ws.path("backup-local");
    let reported = ws
        .local(&["backup", backup_local.to_str().unwrap(), "--json"])
        .json();
    assert_eq!(digest_line(&reported), before);
    assert_eq!(
        run(&["--data", backup_local.to_str().unwrap(), "state", "digest"]).ok(),
        before
    );
    ws.local(&["audit", "verify"]).ok();
    ws.local(&["pkg", "uninstall", "flaky"]).ok();

    // log tail in local mode.
    let mut tail = Command::new(bin())
        .args([
            "--data",
            ws.data.to_str().unwrap(),
            "log",
            "tail",
            "--from",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(tail.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["offset"], 2);

    // completions and help.
    assert!(run(&["completions", "bash"]).ok().contains("cairn"));
    assert!(run(&["pkg", "uninstall", "--help"])
        .ok()
        .contains("Example"));
}

/// A short-lived local command runs no daemon (it would stop it again when it exits): `daemon
/// list` shows the log's records and says so, `restart` and `logs` are refused with
/// `not_supervised` (exit 1), and `enable`/`disable` are logged commands that work locally.
#[test]
fn local_mode_runs_no_daemons_and_says_so() {
    let ws = Ws::init();
    let netmon = ws.example("netmon.toml");
    ws.local(&["pkg", "install", &netmon]).ok();

    let out = ws.local(&["daemon", "list"]).expect(0);
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("netmon:collector"))
        .unwrap_or_else(|| panic!("no collector row: {out:#?}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["netmon:collector", "enabled", "-", "0", "-", "-"],
        "{out:#?}"
    );
    assert!(
        out.stderr
            .contains("note: this process does not run daemons (local mode or a mirror)"),
        "{out:#?}"
    );
    let list = ws.local(&["daemon", "list", "--json"]).json();
    assert_eq!(list["supervised"], false, "{list}");
    assert_eq!(list["daemons"][0]["desired"], "enabled", "{list}");
    assert!(list["daemons"][0]["pid"].is_null(), "{list}");
    assert!(list["daemons"][0]["state"].is_null(), "never ran: {list}");

    for verb in ["restart", "logs"] {
        let out = ws.local(&["daemon", verb, "netmon:collector"]).expect(1);
        assert!(
            out.stderr
                .contains("daemons are not supervised by this process"),
            "daemon {verb}: {out:#?}"
        );
        assert!(out.stdout.is_empty(), "daemon {verb}: {out:#?}");
    }
    // A malformed name is a usage error, as for every PKG:NAME.
    ws.local(&["daemon", "restart", "collector"]).expect(2);

    ws.local(&["daemon", "disable", "netmon:collector"]).ok();
    let list = ws.local(&["daemon", "list", "--json"]).json();
    assert_eq!(list["daemons"][0]["desired"], "disabled", "{list}");
    ws.local(&["daemon", "enable", "netmon:collector"]).ok();
    let list = ws.local(&["daemon", "list", "--json"]).json();
    assert_eq!(list["daemons"][0]["desired"], "enabled", "{list}");
    assert!(
        ws.local(&["log", "show", "--kind", "daemon.observed"])
            .ok()
            .is_empty(),
        "local mode recorded no observation"
    );
}

#[test]
fn usage_errors_exit_2_and_init_or_serve_have_no_remote_mode() {
    let ws = Ws::init();
    for args in [
        vec!["pkg", "frobnicate"],
        vec!["pkg", "list", "--bogus-flag"],
        vec!["pkg", "uninstall", "x", "--keep", "vars,bogus"],
        vec!["token", "create", "x", "--role", "superuser"],
        vec!["replay", "--until", "notanumber", "--into", "/tmp/x"],
    ] {
        let out = ws.local(&args);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
        assert!(!out.stderr.is_empty());
    }
    let out = run(&[
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        "/dev/null",
        "init",
    ]);
    assert_eq!(out.code, 2, "{out:#?}");
    let out = run(&["--server", "http://127.0.0.1:9", "pkg", "list"]);
    assert_eq!(out.code, 2, "--server without --token-file: {out:#?}");
}

#[test]
fn the_demo_runs_the_whole_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let into = tmp.path().join("demo");
    let out = run(&["demo", "--into", into.to_str().unwrap()]).expect(0);
    assert!(out.stderr.contains("resuming change"), "{}", out.stderr);
    let out = out.stdout;
    for step in [
        "flaky.toml: install change",
        "refused: feature \"bgp\" does not exist",
        "status   error",
        "killed it: signal: 9",
        "hook onuninstall attempt 2",
        "ok: ",
        "package.removed.v1",
    ] {
        assert!(out.contains(step), "the demo should show {step:?}:\n{out}");
    }
    // The kept workspace is a real one: its audit passes, and netmon is gone with its vars kept.
    let data = into.join("workspace");
    run(&["--data", data.to_str().unwrap(), "audit", "verify"]).ok();
    let vars = run(&[
        "--data",
        data.to_str().unwrap(),
        "var",
        "list",
        "netmon",
        "--json",
    ])
    .json();
    assert_eq!(vars[0]["kept_from"], "netmon");
}

#[test]
fn the_binary_is_small_enough_to_copy_around() {
    // RocksDB's C++ built with debug info had made it 468 MB; dependencies now build without.
    let bytes = std::fs::metadata(bin()).unwrap().len();
    assert!(
        bytes < 100 << 20,
        "target/release/cairn is {} MiB; are dependencies built with debug info again?",
        bytes >> 20
    );
}
