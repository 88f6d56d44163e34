//! Features and commands: the "no ghost rows" rule under concurrency, `always_*`,
//! `expect_revision`, idempotency keys, vault secrets never stored in plaintext.

mod common;

use std::sync::Arc;

use cairn::kernel::model::{FeatureState, Scope};
use cairn::kernel::{query, ChangeStatus, Rejection};
use cairn::{CommandOptions, Error};
use common::*;

const NETMON: &str = r#"name = "netmon"
version = "1"
[[features]]
name = "bgp"
state = "enabled"
[[features]]
name = "lldp"
state = "always_enabled"
[[vaults]]
name = "api-token"
[[queues]]
name = "events"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_scope_syncs_racing_an_uninstall_never_leave_a_ghost_row() {
    for round in 0..5 {
        let s = Scratch::new();
        let ws = s.open().await;
        install(&ws, NETMON).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let ws = ws.clone();
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut missing) = (0u32, 0u32);
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 400 {
                    i += 1;
                    let r = if (t + i).is_multiple_of(2) {
                        ws.feature_report("bgp", FeatureState::Disabled, &opts())
                            .await
                    } else {
                        let scope = Scope {
                            global: i.is_multiple_of(3),
                            per_instance: true,
                        };
                        ws.feature_scope_sync("bgp", scope, &opts()).await
                    };
                    match r {
                        Ok(_) => ok += 1,
                        Err(Error::Rejected(Rejection::NotFound(_))) => missing += 1,
                        // A scope sync while the uninstall runs: the feature is frozen.
                        Err(Error::Rejected(Rejection::Busy { .. }))
                            if !(t + i).is_multiple_of(2) => {}
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                    if missing > 20 {
                        break;
                    }
                }
                (ok, missing)
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5 * round)).await;
        let id = ws.uninstall("netmon", &[], false, &opts()).await.unwrap();
        assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut missing_total = 0;
        for t in tasks {
            missing_total += t.await.unwrap().1;
        }
        let v = ws.view().unwrap();
        assert!(
            query::feature(&v, "bgp").unwrap().is_none(),
            "ghost feature row"
        );
        assert!(query::features(&v).unwrap().is_empty());
        assert!(
            missing_total > 0 || round > 0,
            "writers never saw the deletion"
        );
        assert_replay_matches(&ws);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feature_is_frozen_while_its_package_uninstalls_but_still_reports() {
    let s = Scratch::new();
    let ws = s.open().await;
    let go = s.data().with_file_name("go");
    let manifest = format!(
        "name = \"netmon\"\nversion = \"1\"\n[hooks.onuninstall]\nrun = \"while [ ! -e '{}' ]; do sleep 0.02; done\"\n[[features]]\nname = \"bgp\"\nstate = \"enabled\"\n",
        go.display()
    );
    install(&ws, &manifest).await;
    let id = ws.uninstall("netmon", &[], false, &opts()).await.unwrap();
    // The onuninstall hook waits for `go`: the package is uninstalling meanwhile.
    assert_eq!(
        package_status(&ws, "netmon").as_deref(),
        Some("uninstalling")
    );
    let busy = |r: Result<cairn::store::Committed, Error>| match r {
        Err(Error::Rejected(Rejection::Busy { change, .. })) => assert_eq!(change, id),
        other => panic!("expected a rejection naming the uninstall, got {other:?}"),
    };
    let feature = || query::feature(&ws.view().unwrap(), "bgp").unwrap().unwrap();
    let before = feature();
    busy(
        ws.feature_set("bgp", FeatureState::Disabled, None, &opts())
            .await,
    );
    let scope = Scope {
        global: false,
        per_instance: true,
    };
    busy(ws.feature_scope_sync("bgp", scope, &opts()).await);
    busy(ws.var_set("netmon", "k", b"v", None, &opts()).await);
    // (The uninstall change itself writes on meanwhile; the feature is untouched.)
    assert_eq!(feature(), before, "nothing written to the feature");
    // The service side still says what it observes (that is how it reports it stopped).
    ws.feature_report("bgp", FeatureState::Disabled, &opts())
        .await
        .unwrap();
    std::fs::write(&go, b"").unwrap();
    assert_eq!(finish(&ws, id).await.status, ChangeStatus::Done);
    assert!(query::feature(&ws.view().unwrap(), "bgp")
        .unwrap()
        .is_none());
    assert_replay_matches(&ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_rules_revisions_and_missing_entities() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, NETMON).await;
    let before = ws.view().unwrap().digest().unwrap();
    let e = ws
        .feature_set("nope", FeatureState::Disabled, None, &opts())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "feature \"nope\" does not exist");
    let e = ws
        .feature_report("nope", FeatureState::Disabled, &opts())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "feature \"nope\" does not exist");
    let e = ws
        .feature_set("lldp", FeatureState::Disabled, None, &opts())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "feature \"lldp\": is always_enabled and cannot be changed"
    );
    let rev = query::feature(&ws.view().unwrap(), "bgp")
        .unwrap()
        .unwrap()
        .revision;
    let e = ws
        .feature_set("bgp", FeatureState::Disabled, Some(rev + 100), &opts())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "feature \"bgp\" is at revision {rev}, not the expected {}",
            rev + 100
        )
    );
    assert_eq!(
        ws.view().unwrap().digest().unwrap(),
        before,
        "rejections wrote nothing"
    );
    let c = ws
        .feature_set("bgp", FeatureState::Disabled, Some(rev), &opts())
        .await
        .unwrap();
    let f = query::feature(&ws.view().unwrap(), "bgp").unwrap().unwrap();
    assert_eq!(f.state, FeatureState::Disabled);
    assert_eq!(
        f.revision, c.offsets.start,
        "revision is the offset that changed it"
    );
    let e = ws
        .var_set("ghost", "k", b"v", None, &opts())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "package \"ghost\" does not exist");
    let e = ws
        .queue_put("netmon", "nope", vec![b"x".to_vec()], &opts())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "queue \"nope\" of package \"netmon\" does not exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_return_the_original_result_and_write_nothing() {
    let s = Scratch::new();
    let ws = s.open().await;
    install(&ws, NETMON).await;
    let keyed = CommandOptions {
        idempotency_key: Some("req-1".into()),
        ..Default::default()
    };
    let first = ws
        .var_set("netmon", "k", b"v1", None, &keyed)
        .await
        .unwrap();
    assert!(!first.replayed);
    let applied = ws.applied();
    let again = ws
        .var_set("netmon", "k", b"v2", None, &keyed)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.offsets, first.offsets);
    assert_eq!(ws.applied(), applied, "nothing written");
    let v = query::var(&ws.view().unwrap(), "netmon", "k")
        .unwrap()
        .unwrap();
    assert_eq!(v.value, b"v1");
    // A change-starting command returns the original change id.
    let keyed = CommandOptions {
        idempotency_key: Some("uninstall-1".into()),
        ..Default::default()
    };
    let a = ws.uninstall("netmon", &[], false, &keyed).await.unwrap();
    let b = ws.uninstall("netmon", &[], false, &keyed).await.unwrap();
    assert_eq!(a, b);
    finish(&ws, a).await;
    // The key index replicates: a rebuild reproduces it.
    assert_replay_matches(&ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_secrets_never_reach_the_disk_in_plaintext() {
    let s = Scratch::new();
    let secret = b"plaintext-secret-7f3a9c1e-do-not-leak";
    {
        let ws = s.open().await;
        install(&ws, NETMON).await;
        ws.vault_set("netmon", "api-token", secret, &opts())
            .await
            .unwrap();
        assert_eq!(
            ws.vault_get("netmon", "api-token").unwrap().unwrap(),
            secret
        );
        let sealed = query::vault(&ws.view().unwrap(), "netmon", "api-token")
            .unwrap()
            .unwrap()
            .sealed
            .unwrap();
        assert!(!contains(&sealed, secret));
        // Backups hold only ciphertext too.
        ws.store().backup(&s.dir.path().join("backup")).unwrap();
        ws.close().await;
    }
    let mut scanned = 0;
    for dir in [s.data(), s.dir.path().join("backup")] {
        for path in walk(&dir) {
            let bytes = std::fs::read(&path).unwrap();
            scanned += bytes.len();
            assert!(
                !contains(&bytes, secret),
                "plaintext found in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 0);
    // And it reads back after a reopen (the key file persists).
    let ws = s.open().await;
    assert_eq!(
        ws.vault_get("netmon", "api-token").unwrap().unwrap(),
        secret
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
