//! Uninstall: keep kinds and adoption, `CAIRN_KEEP`, hook failure with and without `strict`,
//! re-install refused while uninstalling, a long-running `onload` cancelled and recorded.

mod common;

use std::time::{Duration, Instant};

use cairn::kernel::model::ResourceKind;
use cairn::kernel::records::OnloadState;
use cairn::kernel::{query, ChangeStatus, Rejection, TaskNote};
use common::*;

/// A package owning one resource of every kind and a feature.
fn full(s: &Scratch, onuninstall_exit: i32) -> String {
    format!(
        r#"name = "netmon"
version = "1.2.0"
[vars]
threshold = "10"
[[queues]]
name = "events"
[[vaults]]
name = "api-token"
[[daemons]]
name = "collector"
command = ["/bin/true"]
[[features]]
name = "netmon"
[model]
types = [{{ name = "netmon:ip", base = "str", doc = "an address" }}]
{}"#,
        tracing_hook(&s.trace(), "onuninstall", onuninstall_exit)
    )
}

fn kinds_left(ws: &cairn::Workspace) -> Vec<(ResourceKind, Option<String>)> {
    query::all_resources(&ws.view().unwrap())
        .unwrap()
        .into_iter()
        .filter(|r| r.owner == "netmon")
        .map(|r| (r.kind, r.kept_from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keep_kind_survives_alone_and_is_adopted_by_a_reinstall() {
    for kind in ResourceKind::ALL {
        let s = Scratch::new();
        // Its daemon (`/bin/true`) is not supervised: the replay check below compares the
        // live state with a backup taken a moment later, and a supervisor's observations in
        // between would differ (supervised daemons and keep: `daemons.rs`).
        let ws = s
            .open_with(cairn::Options {
                daemons: cairn::Daemons::Off,
                ..Default::default()
            })
            .await;
        install(&ws, &full(&s, 0)).await;
        ws.var_set("netmon", "threshold", b"99", None, &opts())
            .await
            .unwrap();
        ws.queue_put("netmon", "events", vec![b"a".to_vec()], &opts())
            .await
            .unwrap();
        let id = ws
            .uninstall("netmon", &[kind], false, &opts())
            .await
            .unwrap();
        assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
        assert_eq!(package_status(&ws, "netmon"), None);
        assert!(query::features(&ws.view().unwrap()).unwrap().is_empty());
        assert_eq!(
            kinds_left(&ws),
            [(kind, Some("netmon".to_string()))],
            "keeping {kind}"
        );
        assert_eq!(
            s.trace_lines(),
            [format!("onuninstall keep={kind} plug= slot= pkg=netmon")]
        );
        // A new install of the same name adopts what was kept, as it was.
        install(&ws, &full(&s, 0)).await;
        assert!(kinds_left(&ws).iter().all(|(_, kept)| kept.is_none()));
        let v = ws.view().unwrap();
        let threshold = query::var(&v, "netmon", "threshold").unwrap().unwrap();
        let expected: &[u8] = if kind == ResourceKind::Vars {
            b"99"
        } else {
            b"10"
        };
        assert_eq!(threshold.value, expected);
        let items = query::queue_items(&v, "netmon", "events", 1, 10).unwrap();
        assert_eq!(items.len(), usize::from(kind == ResourceKind::Queues));
        assert_replay_matches(&ws);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_several_kinds_is_visible_to_the_hook() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, &full(&s, 0)).await;
    let keep = [ResourceKind::Queues, ResourceKind::Vars];
    let id = ws.uninstall("netmon", &keep, false, &opts()).await.unwrap();
    finish(&ws, id).await;
    assert_eq!(
        s.trace_lines(),
        ["onuninstall keep=vars,queues plug= slot= pkg=netmon"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_onuninstall_continues_by_default_and_aborts_with_strict() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, &full(&s, 4)).await;
    let before = ws.view().unwrap().digest().unwrap();

    let id = ws.uninstall("netmon", &[], true, &opts()).await.unwrap();
    let c = finish(&ws, id).await;
    assert_eq!(c.status, ChangeStatus::Error);
    assert_eq!(package_status(&ws, "netmon").as_deref(), Some("installed"));
    assert_eq!(kinds_left(&ws).len(), 5, "nothing deleted under strict");
    assert_eq!(query::features(&ws.view().unwrap()).unwrap().len(), 1);
    assert!(c
        .tasks
        .iter()
        .any(|t| t.log.iter().any(|l| l.to_string().contains("exit 4"))));
    assert_ne!(
        ws.view().unwrap().digest().unwrap(),
        before,
        "the attempt is recorded"
    );

    let id = ws.uninstall("netmon", &[], false, &opts()).await.unwrap();
    let c = finish(&ws, id).await;
    assert_eq!(c.status, ChangeStatus::Done);
    let hook_task = c.tasks.iter().find(|t| t.name == "onuninstall").unwrap();
    assert!(
        hook_task
            .log
            .iter()
            .any(|l| matches!(l, TaskNote::IgnoredError { .. })
                && l.to_string()
                    .starts_with("ignored error: hook onuninstall exit 4")),
        "{hook_task:?}"
    );
    assert_eq!(package_status(&ws, "netmon"), None);
    assert!(kinds_left(&ws).is_empty());
    assert_eq!(s.hooks_run(), ["onuninstall", "onuninstall"]);
    assert_replay_matches(&ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinstall_and_writes_are_refused_while_uninstalling() {
    let s = Scratch::new();
    let gate = s.dir.path().join("gate");
    let manifest = format!(
        "name = \"slow\"\nversion = \"1\"\n[vars]\nk = \"v\"\n[hooks.onuninstall]\nrun = \"while [ ! -e '{}' ]; do sleep 0.05; done\"\n",
        gate.display()
    );
    let ws = s.open().await;
    install(&ws, &manifest).await;
    let id = ws.uninstall("slow", &[], false, &opts()).await.unwrap();
    let e = ws.install_toml(&manifest, &opts()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("package \"slow\" has an uninstall change in progress (change {id})")
    );
    let e = ws
        .var_set("slow", "k", b"x", None, &opts())
        .await
        .unwrap_err();
    assert!(matches!(e.rejection(), Some(Rejection::Busy { .. })), "{e}");
    let e = ws.uninstall("slow", &[], false, &opts()).await.unwrap_err();
    assert!(
        e.to_string().contains("uninstall change in progress"),
        "{e}"
    );
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    install(&ws, &manifest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_running_onload_is_cancelled_and_recorded() {
    let s = Scratch::new();
    let pid_file = s.dir.path().join("onload.pid");
    let manifest = format!(
        "name = \"loader\"\nversion = \"1\"\n[hooks.onload]\nrun = \"echo $$ > '{}'; exec sleep 600\"\n",
        pid_file.display()
    );
    let ws = s.open().await;
    install(&ws, &manifest).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid_file.exists()
        || query::package(&ws.view().unwrap(), "loader")
            .unwrap()
            .unwrap()
            .onload
            != (OnloadState::Running { attempt: 1 })
    {
        assert!(Instant::now() < deadline, "onload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let id = ws.uninstall("loader", &[], false, &opts()).await.unwrap();
    // The onload sleeps for 600 s: an uninstall that is done well before that cancelled it
    // rather than waited for it. (A bound, not a timing measurement.)
    let c = tokio::time::timeout(Duration::from_secs(120), ws.wait_change(id))
        .await
        .expect("the uninstall waited for the onload instead of cancelling it")
        .unwrap();
    assert_eq!(c.status, ChangeStatus::Done);
    assert!(!alive(pid), "onload process {pid} survived the cancel");
    let log = ws.read_log(1, 1000).await.unwrap();
    let cancelled: Vec<_> = log
        .iter()
        .filter(|e| e.kind == "hook.cancelled.v1")
        .collect();
    assert_eq!(cancelled.len(), 1, "one hook.cancelled recorded");
    let started_at = log
        .iter()
        .position(|e| e.kind == "hook.started.v1")
        .unwrap();
    assert!(log[started_at].offset < cancelled[0].offset);
    assert!(!log.iter().any(|e| e.kind == "hook.finished.v1"));
}
