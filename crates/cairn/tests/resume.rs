//! Resume after a crash: a process running an uninstall is SIGKILLed while each hook of the
//! change runs; reopening resumes the change to completion, rerunning the interrupted hook
//! (`doing` → run again) and nothing that had finished.
//!
//! This file is its own harness (`harness = false`, tests run by `libtest-mimic`): the same
//! binary is the child, started with `CAIRN_RESUME_CHILD` set (see [`child`]), so the child
//! is not a test that passes without checking anything.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn::kernel::model::ResourceKind;
use cairn::kernel::{query, ChangeStatus};
use common::*;

/// Hook body: trace the hook; if it is the one to crash at (and has not crashed yet), write
/// its pid to the marker and sleep until killed.
fn hook(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "[hooks.{name}]\nrun = \"echo {name} keep=$CAIRN_KEEP >> '{d}/trace'; if [ \\\"$(cat '{d}/crash_at')\\\" = {name} ] && [ ! -e '{d}/crashed' ]; then touch '{d}/crashed'; echo $$ > '{d}/marker'; exec sleep 60; fi\"\n"
    )
}

fn manifests(dir: &Path) -> (String, String) {
    let prov = format!(
        "name = \"prov\"\nversion = \"1\"\n[[slots]]\nname = \"metrics\"\ninterface = \"metrics\"\n{}{}",
        hook(dir, "disconnect-slot-metrics"),
        hook(dir, "unprepare-slot-metrics"),
    );
    let cons = format!(
        "name = \"cons\"\nversion = \"1\"\n[vars]\nk = \"v\"\n[[queues]]\nname = \"q\"\n[[features]]\nname = \"cons\"\n[[plugs]]\nname = \"m\"\ninterface = \"metrics\"\nauto_connect = true\n{}{}{}",
        hook(dir, "onuninstall"),
        hook(dir, "disconnect-plug-m"),
        hook(dir, "unprepare-plug-m"),
    );
    (prov, cons)
}

const UNINSTALL_HOOKS: [&str; 5] = [
    "onuninstall",
    "disconnect-plug-m",
    "disconnect-slot-metrics",
    "unprepare-slot-metrics",
    "unprepare-plug-m",
];

/// Environment variable that makes this binary the child: the data directory to drive.
const CHILD_DATA_ENV: &str = "CAIRN_RESUME_CHILD";

fn main() -> std::process::ExitCode {
    if let Ok(data) = std::env::var(CHILD_DATA_ENV) {
        child(&data);
        return std::process::ExitCode::SUCCESS;
    }
    let args = libtest_mimic::Arguments::from_args();
    let tests = vec![libtest_mimic::Trial::test(
        "uninstall_killed_during_each_hook_resumes_to_completion",
        || {
            uninstall_killed_during_each_hook_resumes_to_completion();
            Ok(())
        },
    )];
    libtest_mimic::run(&args, tests).exit_code()
}

/// The child: opens the workspace at `data`, starts the uninstall and waits to be killed.
fn child(data: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ws = cairn::Workspace::open(Path::new(&data), Default::default())
            .await
            .unwrap();
        ws.uninstall("cons", &[ResourceKind::Vars], false, &opts())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

fn uninstall_killed_during_each_hook_resumes_to_completion() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(killed_during_each_hook());
}

async fn killed_during_each_hook() {
    for crash_at in UNINSTALL_HOOKS {
        let s = Scratch::new();
        let dir = s.dir.path();
        let (prov, cons) = manifests(dir);
        {
            let ws = s.open().await;
            install(&ws, &prov).await;
            install(&ws, &cons).await;
            assert_eq!(query::connections(&ws.view().unwrap()).unwrap().len(), 1);
            ws.close().await;
        }
        std::fs::remove_file(dir.join("trace")).ok();
        // Hooks get a clean environment: the crash point reaches them through a file.
        std::fs::write(dir.join("crash_at"), crash_at).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_DATA_ENV, s.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let marker = dir.join("marker");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !marker.exists() || std::fs::read_to_string(&marker).unwrap().trim().is_empty() {
            assert!(Instant::now() < deadline, "child never reached {crash_at}");
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hook_pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL the process and the hook's own process group (it outlives its parent).
        child.kill().unwrap();
        child.wait().unwrap();
        unsafe { libc::kill(-hook_pid, libc::SIGKILL) };

        let ws = s.open().await;
        let active = query::active_changes(&ws.view().unwrap()).unwrap();
        assert_eq!(
            active.len(),
            1,
            "the uninstall is still in progress at reopen"
        );
        let c = finish(&ws, active[0].id).await;
        assert_eq!(c.status, ChangeStatus::Done, "crash at {crash_at}: {c:#?}");
        assert_eq!(package_status(&ws, "cons"), None);
        let v = ws.view().unwrap();
        assert!(query::features(&v).unwrap().is_empty());
        assert!(query::connections(&v).unwrap().is_empty());
        let left: Vec<_> = query::all_resources(&v)
            .unwrap()
            .into_iter()
            .filter(|r| r.owner == "cons")
            .map(|r| (r.kind, r.kept_from))
            .collect();
        assert_eq!(left, [(ResourceKind::Vars, Some("cons".into()))]);
        drop(v);
        // Every hook ran once, the interrupted one twice (rerun after the crash), in order.
        let mut expected = Vec::new();
        for h in UNINSTALL_HOOKS {
            expected.push(h.to_string());
            if h == crash_at {
                expected.push(h.to_string());
            }
        }
        assert_eq!(s.hooks_run(), expected, "crash at {crash_at}");
        assert!(s.trace_lines()[0].ends_with("keep=vars"));
        assert_replay_matches(&ws);
        ws.close().await;
    }
}
