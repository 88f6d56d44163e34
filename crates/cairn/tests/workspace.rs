//! The workspace handle: exclusive open, subscriptions (catch-up then live, never dropping
//! entries), `wait_for`, and rejection of bad manifests with nothing written.

mod common;

use std::time::Duration;

use cairn::{Error, Workspace};
use common::*;

const PKG: &str = "name = \"p\"\nversion = \"1\"\n[vars]\nk = \"v\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_opener_is_told_who_holds_the_workspace() {
    let s = Scratch::new();
    let _ws = s.open().await;
    let e = Workspace::open(&s.data(), Default::default())
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!("workspace is locked by pid {}", std::process::id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_catch_up_then_follow_live_without_gaps() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, PKG).await;
    for i in 0..300u32 {
        ws.var_set("p", "k", &i.to_be_bytes(), None, &opts())
            .await
            .unwrap();
    }
    let mut slow = ws.subscribe(1).unwrap();
    let mut live = ws.subscribe(ws.applied() + 1).unwrap();
    let writer = {
        let ws = ws.clone();
        tokio::spawn(async move {
            for i in 0..200u32 {
                ws.var_set("p", "k", &i.to_le_bytes(), None, &opts())
                    .await
                    .unwrap();
            }
            ws.applied()
        })
    };
    let end = writer.await.unwrap();
    let start_live = live.position();
    for expected in start_live..=end {
        let e = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("live entry arrives")
            .unwrap();
        assert_eq!(e.offset, expected);
    }
    // The slow one never read until now: it still gets everything, in order.
    for expected in 1..=end {
        let e = slow.next().await.unwrap();
        assert_eq!(e.offset, expected);
    }
    // A waiting subscriber wakes up for the next commit.
    let waiter = tokio::spawn(async move { live.next().await.map(|e| e.offset) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = ws.var_set("p", "k", b"x", None, &opts()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, c.offsets.start);
    tokio::time::timeout(Duration::from_secs(5), ws.wait_for(c.offsets.start))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_rejected_with_the_field_and_nothing_is_written() {
    let s = Scratch::new();
    let ws = s.open().await;
    let before = ws.view().unwrap().digest().unwrap();
    for (text, expect) in [
        ("name = \"Bad Name\"\nversion = \"1\"\n", "manifest name:"),
        ("name = \"p\"\nversion = \"1\"\ncolour = 1\n", "colour"),
        (
            "name = \"p\"\nversion = \"1\"\n[[features]]\nname = \"f\"\nstate = \"sideways\"\n",
            "features[0].state",
        ),
        (
            "name = \"p\"\nversion = \"1\"\n[hooks.onfire]\nrun = \"true\"\n",
            "hooks.onfire",
        ),
        ("name = \"p\"\n", "version"),
    ] {
        let e = ws.install_toml(text, &opts()).await.unwrap_err();
        assert!(matches!(e, Error::Rejected(_)), "{e}");
        assert!(
            e.to_string().contains(expect),
            "{e} should mention {expect}"
        );
    }
    // A feature another package owns.
    install(
        &ws,
        "name = \"a\"\nversion = \"1\"\n[[features]]\nname = \"shared\"\n",
    )
    .await;
    let mid = ws.view().unwrap().digest().unwrap();
    let e = ws
        .install_toml(
            "name = \"b\"\nversion = \"1\"\n[[features]]\nname = \"shared\"\n",
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "feature \"shared\": is already owned by package \"a\""
    );
    assert_eq!(ws.view().unwrap().digest().unwrap(), mid);
    assert_ne!(before, mid);
}

/// A handoff's step-down races commands from 16 tasks: every command answered `Ok` is at or
/// below the head `step_down` returns, nothing commits after it, and the others are refused
/// with `NotLeader`. Then `resume_leading` takes commands again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_down_returns_a_head_that_no_accepted_command_is_past() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, PKG).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refusals = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writers: Vec<_> = (0..16u32)
        .map(|w| {
            let (ws, stop, refusals) = (
                ws.clone(),
                std::sync::Arc::clone(&stop),
                std::sync::Arc::clone(&refusals),
            );
            tokio::spawn(async move {
                let (mut acked, mut refused) = (Vec::new(), 0u32);
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let key = format!("w{w}-{i}");
                    match ws.var_set("p", &key, b"x", None, &opts()).await {
                        Ok(c) => acked.push(c.offsets.end - 1),
                        Err(Error::NotLeader) => {
                            refused += 1;
                            refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(e) => panic!("{key}: {e}"),
                    }
                    i += 1;
                    if refused > 0 {
                        tokio::task::yield_now().await;
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), ws.wait_for(500))
        .await
        .expect("the writers commit")
        .unwrap();
    let head = ws.step_down().await.unwrap();
    assert_eq!(ws.role(), cairn::NodeRole::Mirror);
    assert!(s.data().join(cairn::MIRROR_MARKER_FILE).exists());
    // Commands keep coming; none is taken (until every writer was refused a few times).
    tokio::time::timeout(Duration::from_secs(30), async {
        while refusals.load(std::sync::atomic::Ordering::SeqCst) < 16 * 4 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the writers go on and are refused");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refused = 0;
    for w in writers {
        let (acked, r) = w.await.unwrap();
        refused += r;
        for offset in acked {
            assert!(
                offset <= head.offset,
                "a command committed at {offset}, past the head {} step_down returned",
                head.offset
            );
        }
    }
    assert!(refused > 0, "the writers were refused after the step-down");
    assert_eq!(
        ws.applied(),
        head.offset,
        "nothing committed after the step-down"
    );
    assert_eq!(ws.head().unwrap(), head);
    // Leading again: the marker goes and commands are taken.
    ws.resume_leading().await.unwrap();
    assert!(!s.data().join(cairn::MIRROR_MARKER_FILE).exists());
    ws.var_set("p", "after", b"x", None, &opts()).await.unwrap();
    assert_eq!(ws.applied(), head.offset + 1);
}
