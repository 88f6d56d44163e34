//! Everyday sharp edges of the `cairn` binary, each checked through the binary itself.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// Echoed user input is cut to this many characters in messages
/// (`cairn_kernel::echo::ERROR_ECHO_CHARS_MAX`); a message that repeats a long name must stay
/// well under this many bytes.
const LONG_MESSAGE_BYTES_MAX: usize = 1000;

fn partial_of(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", dir.display()))
}

fn spawn(args: &[&str], stdout: Stdio) -> Child {
    Command::new(bin())
        .args(args)
        .env_remove("CAIRN_DATA")
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cairn")
}

/// `cairn --server URL --token-file TOKEN ARGS` as a vector.
fn remote_args<'a>(server: &'a Server, token: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--server", server.url.as_str(), "--token-file", token];
    all.extend_from_slice(args);
    all
}

#[test]
fn logs_written_to_a_file_have_no_colour_codes() {
    let ws = Ws::init();
    let log = ws.path("server.log");
    let file = std::fs::File::create(&log).unwrap();
    let server = Server::start_with(&ws.data, "info", Stdio::from(file));
    assert!(server.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("serving"),
        "the server logged at info: {text:?}"
    );
    assert!(
        !text.contains('\x1b'),
        "ANSI escape codes in a log file: {text:?}"
    );
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly_with_exit_0() {
    let ws = Ws::init();
    let data = ws.data.to_str().unwrap().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["log", "show"],
        vec!["log", "show", "--json"],
        vec!["log", "tail", "--from", "1"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["pkg", "list"],
        vec!["state", "digest"],
        vec!["token", "list"],
        vec!["audit", "verify"],
        vec!["completions", "bash"],
        vec!["--help"],
    ];
    let check = |mode: &str, args: &[&str], all: &[&str]| {
        // The reading end is closed before the command can have written anything.
        let mut child = spawn(all, Stdio::piped());
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mode} {args:?} with stdout closed: {stderr}"
        );
        assert!(stderr.is_empty(), "{mode} {args:?} said: {stderr}");
    };
    for args in &commands {
        let local: Vec<&str> = ["--data", data.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        check("local", args, &local);
    }
    // Remote mode once local mode is done with the workspace (the server holds its lock).
    let server = ws.serve();
    let token = ws.admin_token().to_str().unwrap().to_string();
    for args in &commands {
        check("remote", args, &remote_args(&server, &token, args));
    }
    assert!(server.stop().success());
}

#[test]
fn replay_until_0_is_refused_in_both_modes_before_anything_is_written() {
    let ws = Ws::init();
    let into = ws.path("at-0");
    let into_s = into.to_str().unwrap();
    let out = ws
        .local(&["replay", "--until", "0", "--into", into_s])
        .expect(2);
    assert!(out.stderr.contains("offsets start at 1"), "{}", out.stderr);
    assert!(!into.exists() && !partial_of(&into).exists());

    let server = ws.serve();
    let out = server
        .remote(
            &ws.admin_token(),
            &["replay", "--until", "0", "--into", into_s],
        )
        .expect(2);
    assert!(out.stderr.contains("offsets start at 1"), "{}", out.stderr);
    assert!(!into.exists() && !partial_of(&into).exists());
    // The HTTP API refuses it too, for clients other than the CLI.
    let token = std::fs::read_to_string(ws.admin_token()).unwrap();
    let (status, body) = http(
        "POST",
        &format!("{}/v1/replay", server.url),
        Some(token.trim()),
        Some(r#"{"until": 0}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("offsets start at 1"), "{body}");
    assert!(server.stop().success());
}

/// Runs `args` (a backup into `dir`) and SIGKILLs it as soon as `dir` or `dir.partial`
/// appears. Returns whether it was killed (false: it had already exited).
fn kill_when_the_backup_appears(args: &[&str], dir: &Path) -> bool {
    let mut child = spawn(args, Stdio::null());
    let partial = partial_of(dir);
    loop {
        if dir.exists() || partial.exists() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::yield_now();
    }
}

#[test]
fn a_killed_local_backup_leaves_nothing_under_the_final_name_and_its_leftover_is_removed() {
    let ws = Ws::init();
    let data = ws.data.to_str().unwrap().to_string();
    let digest = ws.digest();
    let slow = std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1");
    let mut leftovers = 0;
    for cycle in 0..if slow { 20 } else { 5 } {
        let dir = ws.path(&format!("backup-{cycle}"));
        let dir_s = dir.to_str().unwrap();
        kill_when_the_backup_appears(&["--data", &data, "backup", dir_s], &dir);
        if dir.exists() {
            // Under its final name only when complete.
            let out = run(&["--data", dir_s, "state", "digest"]);
            assert_eq!(
                out.clone().expect(0).stdout,
                digest,
                "cycle {cycle}: an incomplete backup under its final name: {out:#?}"
            );
            continue;
        }
        if partial_of(&dir).exists() {
            leftovers += 1;
        }
        // Whatever the kill left, the next backup into the same directory succeeds.
        let out = ws.local(&["backup", dir_s]).expect(0);
        assert!(out.stdout.contains("backup written to"), "{out:#?}");
        assert_eq!(run(&["--data", dir_s, "state", "digest"]).ok(), digest);
        assert!(
            !partial_of(&dir).exists(),
            "cycle {cycle}: the leftover is gone"
        );
    }
    eprintln!("{leftovers} kills left a partial backup behind");
}

#[test]
fn a_remote_backup_after_an_interrupted_one_removes_the_leftover_and_says_so() {
    let ws = Ws::init();
    let digest = ws.digest();
    let server = ws.serve();
    let token = ws.admin_token().to_str().unwrap().to_string();
    // A leftover is what a client killed mid-transfer leaves; kill until one is caught.
    let mut caught = None;
    for attempt in 0..20 {
        let dir = ws.path(&format!("remote-{attempt}"));
        let dir_s = dir.to_str().unwrap().to_string();
        kill_when_the_backup_appears(&remote_args(&server, &token, &["backup", &dir_s]), &dir);
        assert!(
            !dir.exists() || run(&["--data", &dir_s, "state", "digest"]).ok() == digest,
            "an incomplete backup under its final name"
        );
        if partial_of(&dir).exists() {
            caught = Some(dir);
            break;
        }
    }
    let dir = caught.expect("one of 20 remote backups killed as its transfer began left a partial");
    let dir_s = dir.to_str().unwrap();
    let out = server
        .remote(&ws.admin_token(), &["backup", dir_s])
        .expect(0);
    assert!(
        out.stderr
            .contains("left by an interrupted backup or replay"),
        "the removal is reported: {out:#?}"
    );
    assert!(!partial_of(&dir).exists());
    assert_eq!(run(&["--data", dir_s, "state", "digest"]).ok(), digest);

    // A partial directory that cairn did not make is never removed.
    let other = ws.path("other");
    std::fs::create_dir(partial_of(&other)).unwrap();
    std::fs::write(partial_of(&other).join("mine"), b"user data").unwrap();
    let out = server
        .remote(&ws.admin_token(), &["backup", other.to_str().unwrap()])
        .expect(1);
    assert!(out.stderr.contains("remove it first"), "{out:#?}");
    assert_eq!(
        std::fs::read(partial_of(&other).join("mine")).unwrap(),
        b"user data"
    );
    assert!(server.stop().success());
}

#[test]
fn a_server_url_without_a_scheme_says_to_add_http() {
    let ws = Ws::init();
    let token = ws.admin_token();
    let out = run(&[
        "--server",
        "127.0.0.1:7878",
        "--token-file",
        token.to_str().unwrap(),
        "status",
    ])
    .expect(2);
    assert!(
        out.stderr.contains("\"127.0.0.1:7878\"") && out.stderr.contains("http://127.0.0.1:7878"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("RelativeUrlWithoutBase"),
        "{}",
        out.stderr
    );
}

#[test]
fn errors_cut_long_names_and_values_and_say_so() {
    let ws = Ws::init();
    let long = "x".repeat(10_000);
    let long_end = format!("{long}:{long}");
    let cases: Vec<Vec<&str>> = vec![
        vec!["var", "get", "nosuch", &long],
        vec!["pkg", "show", &long],
        vec!["pkg", "uninstall", &long],
        vec!["feature", "set", "nosuch", &long],
        vec!["feature", "set", &long, "enabled"],
        vec!["queue", "read", &long],
        vec!["queue", "put", &long_end, "item"],
        vec!["iface", "connect", &long_end, "a:b"],
        vec!["change", "show", &long],
        vec!["token", "create", &long, "--role", "read"],
        vec!["token", "revoke", &long],
    ];
    let check = |mode: &str, args: &[&str], out: Out| {
        if out.code == 0 {
            return;
        }
        assert!(
            out.stderr.len() < LONG_MESSAGE_BYTES_MAX,
            "{mode} {:?}: {} bytes of error: {}...",
            &args[..2],
            out.stderr.len(),
            &out.stderr[..200.min(out.stderr.len())]
        );
        assert!(
            out.stderr.contains("... (10000 bytes)"),
            "{mode} {:?}: the cut is marked: {}",
            &args[..2],
            out.stderr
        );
    };
    for args in &cases {
        check("local", args, ws.local(args));
    }
    let server = ws.serve();
    for args in &cases {
        check("remote", args, server.remote(&ws.admin_token(), args));
    }
    // clap's usage errors quote a bad value whole: it is cut too.
    let out = ws
        .local(&["token", "create", "a", "--role", &long])
        .expect(2);
    assert!(
        out.stderr.len() < LONG_MESSAGE_BYTES_MAX,
        "{}",
        out.stderr.len()
    );
    assert!(
        out.stderr.contains("... (10002 bytes) for '--role <ROLE>'"),
        "{}",
        out.stderr
    );
    // A long --server value is cut too.
    let out = run(&[
        "--server",
        &long,
        "--token-file",
        ws.admin_token().to_str().unwrap(),
        "status",
    ]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.len() < LONG_MESSAGE_BYTES_MAX,
        "{}",
        out.stderr.len()
    );
    assert!(server.stop().success());
}

#[test]
fn a_token_file_others_can_read_is_used_with_a_warning() {
    let ws = Ws::init();
    let server = ws.serve();
    let open = ws.path("open.token");
    std::fs::copy(ws.admin_token(), &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = server.remote(&open, &["status"]).expect(0);
    assert!(
        out.stderr.contains(open.to_str().unwrap()) && out.stderr.contains("0644"),
        "a warning names the file and its mode: {:?}",
        out.stderr
    );
    // A private one (as `init` writes it) is used silently.
    let out = server.remote(&ws.admin_token(), &["status"]).expect(0);
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);
    assert!(server.stop().success());
}

#[test]
fn token_create_out_writes_a_private_file_and_never_overwrites_one() {
    let ws = Ws::init();
    let names = |out: Out| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&out.ok()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Local mode first: the server, once started, holds the workspace.
    let mut server: Option<Server> = None;
    for mode in ["local", "remote"] {
        if mode == "remote" {
            server = Some(ws.serve());
        }
        let call = |args: &[&str]| match &server {
            None => ws.local(args),
            Some(s) => s.remote(&ws.admin_token(), args),
        };
        let file = ws.path(&format!("{mode}.token"));
        let file_s = file.to_str().unwrap();
        let name = format!("ops-{mode}");
        let out = call(&["token", "create", &name, "--role", "read", "--out", file_s]).expect(0);
        assert!(
            !out.stdout.contains("cairn_"),
            "no secret on stdout: {out:#?}"
        );
        assert!(out.stderr.contains(file_s), "{out:#?}");
        let secret = std::fs::read_to_string(&file).unwrap();
        assert!(
            secret.starts_with("cairn_") && secret.ends_with('\n'),
            "{secret:?}"
        );
        let mode_bits = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_bits, 0o600, "{mode}: the token file is private");
        // An existing file is never overwritten, and no token is created then.
        let second = format!("second-{mode}");
        let out = call(&[
            "token", "create", &second, "--role", "read", "--out", file_s,
        ])
        .expect(1);
        assert!(out.stderr.contains("already exists"), "{out:#?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);
        let listed = names(call(&["token", "list", "--json"]));
        assert!(
            listed.contains(&name) && !listed.contains(&second),
            "{listed:?}"
        );
        // With --json the answer names the file and holds no secret.
        let json_file = ws.path(&format!("{mode}-json.token"));
        let out = call(&[
            "token",
            "create",
            &format!("json-{mode}"),
            "--role",
            "read",
            "--out",
            json_file.to_str().unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out.ok()).unwrap();
        assert_eq!(v["token_file"], json_file.to_str().unwrap());
        assert!(v.get("token").is_none(), "{v}");
    }
    // Both tokens work, silently (their files are private).
    let server = server.expect("started for the remote round");
    for mode in ["local", "remote"] {
        let out = server
            .remote(&ws.path(&format!("{mode}.token")), &["status"])
            .expect(0);
        assert!(out.stderr.is_empty(), "{mode}: {:?}", out.stderr);
    }
    assert!(server.stop().success());
}
