//! Supervised daemons on an embedder's leader `Workspace`, with real child processes: started
//! after `onload`, restarted by policy with growing delays, a crash loop marked failed, `never`
//! and `always`, a new leader starting an exited daemon but not a failed one, feature-linked
//! daemons, uninstall (with and without `--keep daemons`, and the kind it is recorded as), and
//! a crash-looping daemon uninstalled without an entry after the delete. Every wait is bounded
//! and waits for a condition; the only fixed waits check that something does *not* happen.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn::daemons::DaemonRuntime;
use cairn::kernel::event::kinds;
use cairn::kernel::model::{DaemonRun, FeatureState, ResourceKind};
use cairn::kernel::{query, ChangeStatus, Event};
use cairn::supervise::{DAEMON_BACKOFF_MIN_MS, DAEMON_CRASH_LOOP_MAX};
use cairn::Workspace;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every `daemon.observed.v2` of `netmon:collector` in the log, with its offset.
async fn observed(ws: &Workspace) -> Vec<(u64, DaemonRun, u32)> {
    entries(ws)
        .await
        .into_iter()
        .filter_map(|(offset, e)| match e {
            Event::DaemonRan {
                owner,
                daemon,
                observation,
            } if owner == "netmon" && daemon == "collector" => {
                Some((offset, observation.state, observation.restarts))
            }
            _ => None,
        })
        .collect()
}

async fn entries(ws: &Workspace) -> Vec<(u64, Event)> {
    ws.read_log(1, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.offset, Event::decode(&e.kind, &e.payload).unwrap()))
        .collect()
}

fn kind_offset(entries: &[(u64, Event)], kind: &str) -> Option<u64> {
    entries
        .iter()
        .find(|(_, e)| e.kind() == kind)
        .map(|(o, _)| *o)
}

fn runtime(ws: &Workspace) -> Option<DaemonRuntime> {
    ws.daemons()
        .unwrap()
        .into_iter()
        .find(|(p, n, _, _)| p == "netmon" && n == "collector")
        .and_then(|(_, _, _, rt)| rt)
}

fn pid(ws: &Workspace) -> Option<i32> {
    runtime(ws).and_then(|r| r.pid)
}

fn last_state(ws: &Workspace) -> Option<DaemonRun> {
    query::daemon(&ws.view().unwrap(), "netmon", "collector")
        .unwrap()
        .and_then(|d| d.run)
        .map(|r| r.state)
}

fn feature_observed(ws: &Workspace) -> Option<FeatureState> {
    query::feature(&ws.view().unwrap(), "mon")
        .unwrap()
        .and_then(|f| f.observed)
}

/// A manifest with one daemon `collector` running `script` (with `sh -c`).
fn manifest(script: &str, restart: &str, extra: &str) -> String {
    format!(
        "name = \"netmon\"\nversion = \"1\"\n[[daemons]]\nname = \"collector\"\n\
         command = [\"/bin/sh\", \"-c\", {script:?}]\nrestart = \"{restart}\"\n{extra}\n"
    )
}

/// A daemon that writes `start <pid> $CAIRN_DAEMON` and sleeps until stopped (writing `term`
/// when it gets SIGTERM).
fn sleeper(trace: &Path) -> String {
    format!(
        "echo start $$ $CAIRN_DAEMON >> '{t}'; trap 'echo term >> \"{t}\"; exit 0' TERM; \
         while true; do sleep 0.05; done",
        t = trace.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_starts_once_its_onload_has_finished() {
    let s = Scratch::new();
    let ws = s.open().await;
    let t = s.trace();
    let hooks = format!(
        "[hooks.onload]\nrun = \"sleep 0.5; echo onload >> '{}'\"\n",
        t.display()
    );
    install(&ws, &manifest(&sleeper(&t), "on-failure", &hooks)).await;
    wait_until("the daemon to start", || lines(&t).len() >= 2).await;
    let l = lines(&t);
    assert_eq!(l[0], "onload");
    assert!(
        l[1].starts_with("start ") && l[1].ends_with(" collector"),
        "{l:?}"
    );
    let started_pid: i32 = l[1].split(' ').nth(1).unwrap().parse().unwrap();
    wait_until("its pid in the runtime facts", || {
        pid(&ws) == Some(started_pid)
    })
    .await;
    assert!(alive(started_pid));
    assert!(runtime(&ws).unwrap().since_ms.is_some());
    wait_until("running in the log", || {
        last_state(&ws) == Some(DaemonRun::Running)
    })
    .await;
    let e = entries(&ws).await;
    let onload_done = e
        .iter()
        .find(|(_, e)| matches!(e, Event::HookFinished(h, _) if h.hook == "onload"))
        .unwrap()
        .0;
    let running = observed(&ws).await[0].0;
    assert!(onload_done < running, "started before onload finished");
    // Its output is kept as a tail.
    ws.close().await;
    assert!(!alive(started_pid), "the daemon outlived its workspace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_with_growing_delays_until_a_crash_loop_fails_it() {
    let s = Scratch::new();
    let ws = s.open().await;
    let t = s.trace();
    let script = format!("date +%s%N >> '{}'; echo oops >&2; exit 3", t.display());
    install(&ws, &manifest(&script, "on-failure", "")).await;
    wait_until("the crash loop to mark it failed", || {
        matches!(last_state(&ws), Some(DaemonRun::Failed { .. }))
    })
    .await;
    let starts: Vec<u128> = lines(&t).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(starts.len(), DAEMON_CRASH_LOOP_MAX, "{starts:?}");
    let gaps_ms: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    for (i, gap) in gaps_ms.iter().enumerate() {
        let backoff = u128::from(DAEMON_BACKOFF_MIN_MS) << i;
        assert!(
            *gap >= backoff,
            "restart {i} after {gap} ms, before its backoff {backoff} ms: {gaps_ms:?}"
        );
    }
    let obs = observed(&ws).await;
    let states: Vec<&str> = obs.iter().map(|(_, s, _)| s.name()).collect();
    let mut expected = Vec::new();
    for _ in 0..DAEMON_CRASH_LOOP_MAX - 1 {
        expected.extend(["running", "exited"]);
    }
    expected.extend(["running", "failed"]);
    assert_eq!(states, expected);
    assert_eq!(obs.last().unwrap().2, DAEMON_CRASH_LOOP_MAX as u32 - 1);
    assert_eq!(
        obs[1].1,
        DaemonRun::Exited {
            code: Some(3),
            signal: None
        }
    );
    let stats = ws.daemon_stats();
    assert_eq!(
        (stats.starts, stats.failed),
        (DAEMON_CRASH_LOOP_MAX as u64, 1)
    );
    assert!(ws
        .daemon_logs("netmon", "collector")
        .unwrap()
        .contains("oops"));
    // Left stopped until asked again: a restart runs it with a fresh history.
    ws.daemon_restart("netmon", "collector").await.unwrap();
    wait_until("a run after the restart", || {
        lines(&t).len() > DAEMON_CRASH_LOOP_MAX
    })
    .await;
    assert_eq!(ws.daemon_stats().failed, 0);
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_leaves_an_exited_daemon_stopped_and_always_restarts_a_clean_exit() {
    for (policy, code) in [("never", 3), ("always", 0)] {
        let s = Scratch::new();
        let ws = s.open().await;
        let t = s.trace();
        let script = format!("echo run >> '{}'; exit {code}", t.display());
        install(&ws, &manifest(&script, policy, "")).await;
        match policy {
            "never" => {
                wait_until("the exit in the log", || {
                    last_state(&ws)
                        == Some(DaemonRun::Exited {
                            code: Some(3),
                            signal: None,
                        })
                })
                .await;
                // Three first backoffs: a restart would have come by now.
                tokio::time::sleep(Duration::from_millis(DAEMON_BACKOFF_MIN_MS * 4)).await;
                assert_eq!(lines(&t).len(), 1, "never restarted it");
                assert_eq!(ws.daemon_stats().starts, 1);
            }
            _ => {
                wait_until("a restart after the clean exit", || lines(&t).len() >= 3).await;
                let obs = observed(&ws).await;
                assert_eq!(
                    obs[1].1,
                    DaemonRun::Exited {
                        code: Some(0),
                        signal: None
                    }
                );
                assert_eq!(obs[2].1, DaemonRun::Running);
            }
        }
        ws.close().await;
    }
}

/// A new leader is like a boot: it starts a daemon the log says exited (here a `never` one
/// that ended), but not one the log says failed, which waits until it is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_starts_an_exited_daemon_but_not_a_failed_one() {
    let s = Scratch::new();
    let t = s.trace();
    let ws = s.open().await;
    let script = format!("echo run >> '{}'", t.display());
    install(&ws, &manifest(&script, "never", "")).await;
    wait_until("it ran and exited", || {
        matches!(last_state(&ws), Some(DaemonRun::Exited { .. }))
    })
    .await;
    ws.close().await;
    let ws = s.open().await;
    wait_until("the new leader ran it again", || lines(&t).len() == 2).await;
    ws.close().await;

    let s = Scratch::new();
    let t = s.trace();
    let ws = s.open().await;
    let script = format!("echo run >> '{}'; exit 3", t.display());
    install(&ws, &manifest(&script, "on-failure", "")).await;
    wait_until("the crash loop to mark it failed", || {
        matches!(last_state(&ws), Some(DaemonRun::Failed { .. }))
    })
    .await;
    ws.close().await;
    let ws = s.open().await;
    // Longer than the first backoffs: a start would have come by now.
    tokio::time::sleep(Duration::from_millis(DAEMON_BACKOFF_MIN_MS * 4)).await;
    assert_eq!(
        lines(&t).len(),
        DAEMON_CRASH_LOOP_MAX,
        "a failed daemon ran"
    );
    let stats = ws.daemon_stats();
    assert_eq!((stats.starts, stats.failed), (0, 1));
    ws.daemon_restart("netmon", "collector").await.unwrap();
    wait_until("a run after the restart", || {
        lines(&t).len() > DAEMON_CRASH_LOOP_MAX
    })
    .await;
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_linked_daemon_follows_its_feature() {
    let s = Scratch::new();
    let ws = s.open().await;
    let t = s.trace();
    let extra = "feature = \"mon\"\n[[features]]\nname = \"mon\"\nstate = \"enabled\"\n";
    install(&ws, &manifest(&sleeper(&t), "on-failure", extra)).await;
    wait_until("running, the feature observed enabled", || {
        pid(&ws).is_some() && feature_observed(&ws) == Some(FeatureState::Enabled)
    })
    .await;
    let first = pid(&ws).unwrap();
    ws.feature_set("mon", FeatureState::Disabled, None, &opts())
        .await
        .unwrap();
    wait_until("stopped, the feature observed disabled", || {
        !alive(first)
            && last_state(&ws) == Some(DaemonRun::Stopped)
            && feature_observed(&ws) == Some(FeatureState::Disabled)
    })
    .await;
    assert!(lines(&t).contains(&"term".to_string()), "SIGTERM first");
    ws.feature_set("mon", FeatureState::Enabled, None, &opts())
        .await
        .unwrap();
    wait_until("running again", || {
        pid(&ws).is_some_and(|p| p != first) && feature_observed(&ws) == Some(FeatureState::Enabled)
    })
    .await;
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_stops_the_daemon_after_onuninstall_and_before_deleting() {
    let s = Scratch::new();
    let ws = s.open().await;
    let t = s.trace();
    let hooks = format!(
        "[hooks.onuninstall]\nrun = \"echo onuninstall >> '{}'\"\n",
        t.display()
    );
    install(&ws, &manifest(&sleeper(&t), "always", &hooks)).await;
    wait_until("running", || pid(&ws).is_some()).await;
    let p = pid(&ws).unwrap();
    let id = ws.uninstall("netmon", &[], false, &opts()).await.unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    assert!(!alive(p));
    let l = lines(&t);
    assert_eq!(&l[1..], ["onuninstall", "term"], "{l:?}");
    let e = entries(&ws).await;
    let stopped = observed(&ws).await.last().cloned().unwrap();
    assert_eq!(stopped.1, DaemonRun::Stopped);
    let deleted = kind_offset(&e, kinds::RESOURCES_DELETED).unwrap();
    assert!(stopped.0 < deleted);
    assert!(query::daemon(&ws.view().unwrap(), "netmon", "collector")
        .unwrap()
        .is_none());
    // Its change has the `stop-daemons` task, so it is written as the kind that holds it; a
    // package without daemons is uninstalled as before, as v1 (older binaries read it).
    assert!(kind_offset(&e, kinds::UNINSTALL_STARTED_2).is_some());
    assert!(kind_offset(&e, kinds::UNINSTALL_STARTED).is_none());
    install(&ws, "name = \"plain\"\nversion = \"1\"\n").await;
    let id = ws.uninstall("plain", &[], false, &opts()).await.unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    let e = entries(&ws).await;
    let plain = e
        .iter()
        .filter(|(_, e)| matches!(e, Event::UninstallStarted(u) if u.package == "plain"))
        .map(|(_, e)| e.kind().to_string())
        .collect::<Vec<_>>();
    assert_eq!(plain, [kinds::UNINSTALL_STARTED]);
    assert_replay_matches(&ws);
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_daemon_stays_stopped_and_runs_again_when_a_reinstall_adopts_it() {
    let s = Scratch::new();
    let ws = s.open().await;
    let t = s.trace();
    let m = manifest(&sleeper(&t), "on-failure", "");
    install(&ws, &m).await;
    wait_until("running", || pid(&ws).is_some()).await;
    let first = pid(&ws).unwrap();
    let id = ws
        .uninstall("netmon", &[ResourceKind::Daemons], false, &opts())
        .await
        .unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    assert!(!alive(first));
    let kept = query::daemon(&ws.view().unwrap(), "netmon", "collector")
        .unwrap()
        .unwrap();
    assert_eq!(kept.kept_from.as_deref(), Some("netmon"));
    assert_eq!(pid(&ws), None);
    install(&ws, &m).await;
    wait_until("running again after the reinstall", || {
        pid(&ws).is_some_and(|p| p != first) && last_state(&ws) == Some(DaemonRun::Running)
    })
    .await;
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_daemon_uninstalled_writes_nothing_after_the_delete() {
    for keep in [vec![], vec![ResourceKind::Daemons]] {
        let s = Scratch::new();
        let ws = s.open().await;
        let t = s.trace();
        let script = format!("echo run >> '{}'; exit 1", t.display());
        install(&ws, &manifest(&script, "always", "")).await;
        wait_until("a restart", || lines(&t).len() >= 2).await;
        let id = ws.uninstall("netmon", &keep, false, &opts()).await.unwrap();
        assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
        let runs = lines(&t).len();
        // Longer than every backoff it could be in (the crash loop's last is 1.6 s).
        tokio::time::sleep(Duration::from_millis(DAEMON_BACKOFF_MIN_MS * 10)).await;
        assert_eq!(
            lines(&t).len(),
            runs,
            "it ran after its uninstall (keep {keep:?})"
        );
        let e = entries(&ws).await;
        let deleted = kind_offset(&e, kinds::RESOURCES_DELETED).unwrap();
        let late: Vec<_> = e
            .iter()
            .filter(|(o, e)| *o > deleted && e.kind() == kinds::DAEMON_RAN)
            .collect();
        assert!(late.is_empty(), "entries after the delete: {late:?}");
        // A report for a kept daemon is rejected, not upserted.
        if !keep.is_empty() {
            let r = ws
                .execute(
                    cairn::kernel::Command::DaemonObserve {
                        owner: "netmon".into(),
                        daemon: "collector".into(),
                        state: DaemonRun::Running,
                        restarts: 0,
                    },
                    &opts(),
                )
                .await;
            assert!(r.is_err(), "{r:?}");
        }
        ws.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_without_supervision_runs_no_daemon() {
    let s = Scratch::new();
    let ws = s
        .open_with(cairn::Options {
            daemons: cairn::Daemons::Off,
            ..Default::default()
        })
        .await;
    let t = s.trace();
    install(&ws, &manifest(&sleeper(&t), "always", "")).await;
    tokio::time::sleep(Duration::from_millis(DAEMON_BACKOFF_MIN_MS * 3)).await;
    assert!(lines(&t).is_empty());
    assert!(matches!(
        ws.daemon_restart("netmon", "collector").await,
        Err(cairn::Error::NotSupervised)
    ));
    ws.close().await;
}
