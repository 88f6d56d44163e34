//! Hooks and a SIGKILLed `cairn serve`: a running hook (and what it started in its process
//! group) dies with the server that ran it, and after a restart no hook of the same task runs
//! while an earlier attempt still does, even one that escaped its group with `setsid`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn pid_in(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is gone (or a zombie waiting for its parent).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

fn kill(pid: i32) {
    // SAFETY: kill(2) on a process this test started (through its hooks).
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn install(ws: &Ws, server: &Server, manifest: &str) {
    let path = ws.file("pkg.toml", manifest);
    server
        .remote(&ws.admin_token(), &["pkg", "install", &path])
        .ok();
}

fn sigkill(mut server: Server) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[test]
fn a_running_hook_dies_with_the_server_that_ran_it() {
    let ws = Ws::init();
    let dir = ws.path("run");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display();
    let server = ws.serve();
    install(
        &ws,
        &server,
        &format!(
            "name = \"guarded\"\nversion = \"1\"\n[hooks.onload]\nrun = \"sleep 100 & echo $! > {d}/bg.pid; echo $$ > {d}/main.pid; wait\"\n"
        ),
    );
    let (main, bg) = (dir.join("main.pid"), dir.join("bg.pid"));
    wait_until(Duration::from_secs(20), "the onload hook started", || {
        pid_in(&main).is_some() && pid_in(&bg).is_some()
    });
    let (main, bg) = (pid_in(&main).unwrap(), pid_in(&bg).unwrap());
    sigkill(server);
    let died = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_secs(10),
            "the hook and its background process die with the server",
            || is_dead(main) && is_dead(bg),
        )
    });
    if let Err(panic) = died {
        kill(main);
        kill(bg);
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_hook_never_runs_while_an_earlier_attempt_still_does() {
    let ws = Ws::init();
    let dir = ws.path("run");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display();
    // Each attempt takes a lock that every process of the attempt inherits (fd 9), and starts a
    // process that leaves the group (setsid) and so escapes the guard. An attempt that cannot
    // take the lock is running beside an earlier one.
    let onload = format!(
        "echo start >> {d}/starts; echo $$ > {d}/main.pid; exec 9> {d}/lock; flock -n 9 || echo overlap >> {d}/overlaps; setsid sh -c 'echo $$ > {d}/escaped.pid; exec sleep 100' & sleep 100"
    );
    let server = ws.serve();
    install(
        &ws,
        &server,
        &format!("name = \"once\"\nversion = \"1\"\n[hooks.onload]\nrun = \"{onload}\"\n"),
    );
    let (starts, escaped) = (dir.join("starts"), dir.join("escaped.pid"));
    let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    wait_until(Duration::from_secs(20), "attempt 1 started", || {
        lines(&starts) == 1 && pid_in(&escaped).is_some()
    });
    let first = pid_in(&escaped).unwrap();
    let main = pid_in(&dir.join("main.pid")).unwrap();
    std::fs::remove_file(&escaped).unwrap();
    sigkill(server);
    // The guard kills the attempt's group; the escaped process outlives it...
    wait_until(
        Duration::from_secs(10),
        "the guard killed attempt 1's group",
        || is_dead(main),
    );
    assert!(!is_dead(first), "the setsid process escaped the group");

    let server = ws.serve();
    wait_until(Duration::from_secs(20), "attempt 2 started", || {
        lines(&starts) == 2 && pid_in(&escaped).is_some()
    });
    // ...until attempt 2 is about to start: it was killed first, so the lock was free.
    let overlapped = dir.join("overlaps").exists();
    let first_dead = is_dead(first);
    let second = pid_in(&escaped).unwrap();
    assert!(server.stop().success());
    kill(first);
    kill(second);
    assert!(first_dead, "the earlier attempt's process was killed");
    assert!(
        !overlapped,
        "attempt 2 ran while attempt 1 still held its lock"
    );
}

#[test]
fn entries_the_change_engine_writes_name_the_actor_who_started_the_change() {
    let ws = Ws::init();
    let ops = ws.path("ops.token");
    let secret = ws
        .local(&["token", "create", "ops", "--role", "write"])
        .ok();
    std::fs::write(&ops, secret.trim()).unwrap();
    let server = ws.serve();
    let manifest = ws.file(
        "pkg.toml",
        "name = \"audited\"\nversion = \"1\"\n[hooks.onload]\nrun = \"true\"\n[hooks.onuninstall]\nrun = \"true\"\n",
    );
    server.remote(&ops, &["pkg", "install", &manifest]).ok();
    server.remote(&ops, &["pkg", "uninstall", "audited"]).ok();
    assert!(server.stop().success());
    let log = ws.local(&["log", "show", "--json"]).ok();
    let mut engine_entries = 0;
    for line in log.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let kind = e["kind"].as_str().unwrap();
        if kind.starts_with("task.") || kind.starts_with("hook.") || kind.starts_with("package.") {
            assert_eq!(e["meta"]["actor"], "token:ops", "{line}");
            engine_entries += 1;
        }
    }
    assert!(engine_entries >= 6, "{log}");
}

#[test]
fn local_commands_leave_a_pending_onload_to_the_server() {
    let ws = Ws::init();
    let dir = ws.path("run");
    std::fs::create_dir(&dir).unwrap();
    let manifest = ws.file(
        "pkg.toml",
        &format!(
            "name = \"slow\"\nversion = \"1\"\n[vars]\nk = \"0\"\n[hooks.onload]\nrun = \"echo run >> {}/runs; exec sleep 100\"\n",
            dir.display()
        ),
    );
    // Installed without waiting: its onload is pending, and the install change may still be
    // finishing (the next command resumes it).
    ws.local(&["pkg", "install", &manifest, "--no-wait"]).ok();
    for i in 0..3 {
        ws.local(&["var", "set", "slow", "k", &i.to_string()]).ok();
    }
    let runs = || std::fs::read_to_string(dir.join("runs")).map_or(0, |t| t.lines().count());
    // No attempt was started (and killed as its command exited): none is in the log.
    let log = ws
        .local(&["log", "show", "--kind", "hook.started", "--json"])
        .ok();
    assert_eq!(log, "", "a local write command started the onload");
    assert_eq!(runs(), 0);
    // A leader that stays up runs it.
    let server = ws.serve();
    wait_until(Duration::from_secs(20), "the server ran the onload", || {
        runs() == 1
    });
    assert!(server.stop().success());
}
