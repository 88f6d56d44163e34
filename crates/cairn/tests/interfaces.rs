//! Interfaces: connect/disconnect task order, undo on a failing hook, auto-connect, undesired.

mod common;

use cairn::kernel::{query, ChangeStatus};
use common::*;

fn provider(s: &Scratch) -> String {
    format!(
        "name = \"prov\"\nversion = \"1\"\n[[slots]]\nname = \"metrics\"\ninterface = \"metrics\"\n{}{}{}{}{}{}",
        tracing_hook(&s.trace(), "prepare-slot-metrics", 0),
        tracing_hook(&s.trace(), "connect-slot-metrics", 0),
        tracing_hook(&s.trace(), "disconnect-slot-metrics", 0),
        tracing_hook(&s.trace(), "unprepare-slot-metrics", 0),
        "",
        "",
    )
}

fn consumer(s: &Scratch, connect_plug_exit: i32, auto: bool) -> String {
    format!(
        "name = \"cons\"\nversion = \"1\"\n[[plugs]]\nname = \"m\"\ninterface = \"metrics\"\nauto_connect = {auto}\n{}{}{}{}",
        tracing_hook(&s.trace(), "prepare-plug-m", 0),
        tracing_hook(&s.trace(), "connect-plug-m", connect_plug_exit),
        tracing_hook(&s.trace(), "disconnect-plug-m", 0),
        tracing_hook(&s.trace(), "unprepare-plug-m", 0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_connect_plug_undoes_exactly_what_was_done_in_reverse() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, &provider(&s)).await;
    install(&ws, &consumer(&s, 3, false)).await;
    let id = ws
        .connect(("cons", "m"), ("prov", "metrics"), &opts())
        .await
        .unwrap();
    let c = finish(&ws, id).await;
    assert_eq!(c.status, ChangeStatus::Error);
    assert_eq!(
        s.hooks_run(),
        [
            "prepare-plug-m",
            "prepare-slot-metrics",
            "connect-slot-metrics",
            "connect-plug-m",
            "disconnect-slot-metrics",
            "unprepare-slot-metrics",
            "unprepare-plug-m",
        ]
    );
    assert!(query::connections(&ws.view().unwrap()).unwrap().is_empty());
    assert_replay_matches(&ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_disconnect_runs_the_mirror_image() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, &provider(&s)).await;
    install(&ws, &consumer(&s, 0, false)).await;
    let id = ws
        .connect(("cons", "m"), ("prov", "metrics"), &opts())
        .await
        .unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    let conns = query::connections(&ws.view().unwrap()).unwrap();
    assert_eq!(conns.len(), 1);
    assert!(!conns[0].auto);
    let lines = s.trace_lines();
    assert!(
        lines[0].contains("plug=cons:m slot=prov:metrics"),
        "{lines:?}"
    );
    let id = ws
        .disconnect(("cons", "m"), ("prov", "metrics"), &opts())
        .await
        .unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    assert_eq!(
        s.hooks_run()[4..],
        [
            "disconnect-plug-m",
            "disconnect-slot-metrics",
            "unprepare-slot-metrics",
            "unprepare-plug-m",
        ]
    );
    assert!(query::connections(&ws.view().unwrap()).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_connect_at_install_and_undesired_after_manual_disconnect() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, &provider(&s)).await;
    install(&ws, &consumer(&s, 0, true)).await;
    let conns = query::connections(&ws.view().unwrap()).unwrap();
    assert_eq!(conns.len(), 1, "auto-connected at install");
    assert!(conns[0].auto);
    assert_eq!(
        s.hooks_run().len(),
        4,
        "connect hooks ran as tasks of the install"
    );
    let id = ws
        .disconnect(("cons", "m"), ("prov", "metrics"), &opts())
        .await
        .unwrap();
    finish(&ws, id).await;
    // Reinstalling the consumer does not auto-connect the undesired pair again.
    let id = ws.uninstall("cons", &[], false, &opts()).await.unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    install(&ws, &consumer(&s, 0, true)).await;
    assert!(query::connections(&ws.view().unwrap()).unwrap().is_empty());
    // A manual connect clears the mark.
    let id = ws
        .connect(("cons", "m"), ("prov", "metrics"), &opts())
        .await
        .unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    assert_replay_matches(&ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rejects_mismatched_interfaces_and_missing_ends() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, &provider(&s)).await;
    install(
        &ws,
        "name = \"other\"\nversion = \"1\"\n[[plugs]]\nname = \"x\"\ninterface = \"net\"\n",
    )
    .await;
    let before = ws.view().unwrap().digest().unwrap();
    let e = ws
        .connect(("other", "x"), ("prov", "metrics"), &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("interface \"net\""), "{e}");
    let e = ws
        .connect(("other", "nope"), ("prov", "metrics"), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "plug other:nope does not exist");
    let e = ws
        .connect(("ghost", "x"), ("prov", "metrics"), &opts())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "package \"ghost\" does not exist");
    assert_eq!(ws.view().unwrap().digest().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cancels_the_running_hook_and_undoes_backwards() {
    let s = Scratch::new();
    let ws = s.open().await;
    let pid_file = s.dir.path().join("hook.pid");
    let slow_slot = format!(
        "name = \"prov\"\nversion = \"1\"\n[[slots]]\nname = \"metrics\"\ninterface = \"metrics\"\n{}{}{}[hooks.connect-slot-metrics]\nrun = \"echo connect-slot-metrics >> '{}'; echo $$ > '{}'; exec sleep 600\"\n",
        tracing_hook(&s.trace(), "prepare-slot-metrics", 0),
        tracing_hook(&s.trace(), "disconnect-slot-metrics", 0),
        tracing_hook(&s.trace(), "unprepare-slot-metrics", 0),
        s.trace().display(),
        pid_file.display(),
    );
    install(&ws, &slow_slot).await;
    install(&ws, &consumer(&s, 0, false)).await;
    let id = ws
        .connect(("cons", "m"), ("prov", "metrics"), &opts())
        .await
        .unwrap();
    // A waiter that gives up does not cancel the change.
    let gave_up =
        tokio::time::timeout(std::time::Duration::from_millis(100), ws.wait_change(id)).await;
    assert!(gave_up.is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !pid_file.exists() {
        assert!(std::time::Instant::now() < deadline, "hook never started");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let c = query::change(&ws.view().unwrap(), id).unwrap().unwrap();
    assert_eq!(
        c.status,
        ChangeStatus::Doing,
        "still running after the waiter left"
    );
    let hook_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    ws.abort(id, &opts()).await.unwrap();
    // The hook sleeps for 600 s: a change that is ready well before that had its hook
    // cancelled rather than waited for. (A bound, not a timing measurement.)
    let c = tokio::time::timeout(std::time::Duration::from_secs(120), ws.wait_change(id))
        .await
        .expect("the abort waited for the running hook instead of cancelling it")
        .unwrap();
    assert_eq!(c.status, ChangeStatus::Undone, "{c:#?}");
    assert!(!alive(hook_pid), "the cancelled hook {hook_pid} is gone");
    assert_eq!(
        s.hooks_run(),
        [
            "prepare-plug-m",
            "prepare-slot-metrics",
            "connect-slot-metrics",
            "disconnect-slot-metrics",
            "unprepare-slot-metrics",
            "unprepare-plug-m",
        ]
    );
    assert!(query::connections(&ws.view().unwrap()).unwrap().is_empty());
    let log = ws.read_log(1, 10_000).await.unwrap();
    assert_eq!(
        log.iter().filter(|e| e.kind == "hook.cancelled.v1").count(),
        1
    );
    let e = ws.abort(id, &opts()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("has already finished (status undone)"),
        "{e}"
    );
}
