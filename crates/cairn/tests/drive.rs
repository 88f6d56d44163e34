//! The Drive through a real workspace (RocksDB on disk): a type migration over 10 000 items
//! on the leader, followed by a mirror whose binary registers no migration (it reaches the
//! leader's digest by applying the recorded outcome), rebuilt from the log to the same digest;
//! and reads that check the reader's permission.

use std::sync::Arc;

use cairn::drive::DriveData;
use cairn::kernel::drive::{DataVersion, DriveActor, DrivePath, Level, MigrationInput, Who};
use cairn::kernel::model::Role;
use cairn::kernel::Kernel;
use cairn::{NodeRole, Options, Workspace};
use serde_json::json;

const ITEMS: usize = 10_000;

fn p(s: &str) -> DrivePath {
    DrivePath::parse(s).unwrap()
}

/// `bump`: the leader's own migration: `n` + 1, and the `tag` the new schema requires.
fn bump(_: &MigrationInput<'_>, mut data: serde_json::Value) -> Result<serde_json::Value, String> {
    let n = data["n"].as_i64().ok_or("no n")?;
    data["n"] = json!(n + 1);
    data["tag"] = json!("migrated");
    Ok(data)
}

fn schema(v: u32) -> serde_json::Value {
    if v == 1 {
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    } else {
        json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}, "tag": {"type": "string"}},
            "required": ["n", "tag"],
        })
    }
}

async fn digest(ws: &Workspace) -> (u64, String) {
    let d = ws.view().unwrap().digest().unwrap();
    (d.applied, d.hash.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_without_the_migration_follows_a_migration_over_10_000_items() {
    let dir = tempfile::tempdir().unwrap();
    let (leader_dir, mirror_dir) = (dir.path().join("leader"), dir.path().join("mirror"));
    Workspace::init(&leader_dir).unwrap();
    let kernel = Kernel::new()
        .with_drive_migration("bump", Arc::new(bump))
        .unwrap();
    let leader = Workspace::open(
        &leader_dir,
        Options {
            kernel,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    // A mirror provisioned now, before any drive entry.
    leader.store().backup(&mirror_dir).unwrap();
    let admin = DriveActor::admin("test");
    leader
        .drive_set_type(&admin, "counter", 1, &schema(1), None)
        .await
        .unwrap();
    leader.drive_add(&admin, &p("c"), None).await.unwrap();
    for i in 0..ITEMS {
        let item = p(&format!("c/i{i}"));
        leader
            .drive_add(&admin, &item, Some("counter"))
            .await
            .unwrap();
        leader
            .drive_put(&admin, &item, None, &json!({"n": i}))
            .await
            .unwrap();
    }
    let before = leader.applied();
    let migrated = leader
        .drive_set_type(&admin, "counter", 2, &schema(2), Some("bump"))
        .await
        .unwrap();
    assert!(
        migrated.offsets.end - migrated.offsets.start > 1,
        "the outcome of {ITEMS} rewrites is chunked over several entries: {:?}",
        migrated.offsets
    );
    assert!(migrated.offsets.start > before);
    let got = leader
        .drive_get(&admin, &p("c/i41"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        DriveData {
            version: DataVersion::FIRST,
            data: json!({"n": 42, "tag": "migrated"}),
        }
    );
    let leader_digest = digest(&leader).await;

    // The mirror's binary has no `bump`: it applies what the log recorded.
    let mirror = Workspace::open(
        &mirror_dir,
        Options {
            role: NodeRole::Mirror,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let mut from = mirror.applied() + 1;
    while from <= leader.applied() {
        let batch = leader.read_log(from, 2_000).await.unwrap();
        from = batch.last().unwrap().offset + 1;
        mirror.apply_replicated(batch).await.unwrap();
    }
    assert_eq!(digest(&mirror).await, leader_digest, "the mirror converged");
    let on_mirror = mirror
        .drive_get(&admin, &p("c/i41"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_mirror, got);
    mirror.close().await;

    // A rebuild from the log folds to the same digest.
    leader.close().await;
    cairn::store::Store::rebuild(&leader_dir, &cairn::KernelMachine::default(), &mut |_| {})
        .unwrap();
    let reopened = Workspace::open(&leader_dir, Options::default())
        .await
        .unwrap();
    assert_eq!(digest(&reopened).await, leader_digest, "rebuild");
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_check_the_reader_s_level_and_listings_hide_what_it_may_not_read() {
    let dir = tempfile::tempdir().unwrap();
    Workspace::init(dir.path()).unwrap();
    let ws = Workspace::open(dir.path(), Options::default())
        .await
        .unwrap();
    let admin = DriveActor::admin("test");
    for path in ["docs", "docs/open", "docs/closed"] {
        ws.drive_add(&admin, &p(path), None).await.unwrap();
        ws.drive_put(&admin, &p(path), None, &json!({"at": path}))
            .await
            .unwrap();
    }
    ws.drive_set_perm(
        &admin,
        &p("docs/closed"),
        Who::Role(Role::Read),
        Some(Level::Deny),
    )
    .await
    .unwrap();
    let reader = DriveActor {
        token: "ann".into(),
        role: Role::Read,
    };
    let names: Vec<String> = ws
        .drive_list(&reader, Some(&p("docs")), None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.item.path.to_string())
        .collect();
    assert_eq!(names, ["docs/open"]);
    let all: Vec<String> = ws
        .drive_list(&admin, Some(&p("docs")), None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.item.path.to_string())
        .collect();
    assert_eq!(all, ["docs/closed", "docs/open"]);
    let err = ws
        .drive_get(&reader, &p("docs/closed"), None)
        .await
        .unwrap_err();
    // What the reader may not read is "not found", like what does not exist.
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Permissions are shown to admins of the item only.
    let seen = ws.drive_item(&reader, &p("docs")).await.unwrap();
    assert!(seen.item.perms.is_empty());
    assert_eq!(seen.level, Level::Read);
    let seen = ws.drive_item(&admin, &p("docs/closed")).await.unwrap();
    assert_eq!(seen.item.perms.len(), 1);
    assert_eq!(seen.level, Level::Admin);
    assert!(ws.drive_versions(&reader, &p("docs/closed")).await.is_err());
    assert!(ws
        .drive_get(&reader, &p("docs/open"), None)
        .await
        .unwrap()
        .is_some());
    // A reader cannot write, whatever it may read.
    let err = ws
        .drive_put(&reader, &p("docs/open"), None, &json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("edit"), "{err}");
    let missing = ws.drive_get(&admin, &p("nope"), None).await.unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    // Pages of a listing: in name order, the cursor never an item the reader may not read,
    // and no cursor after the last page.
    for name in ["a", "b", "c", "d", "e"] {
        ws.drive_add(&admin, &p(&format!("docs/open/{name}")), None)
            .await
            .unwrap();
    }
    for hidden in ["b", "d"] {
        ws.drive_set_perm(
            &admin,
            &p(&format!("docs/open/{hidden}")),
            Who::Token("ann".into()),
            Some(Level::Deny),
        )
        .await
        .unwrap();
    }
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = ws
            .drive_list(&reader, Some(&p("docs/open")), after.as_deref(), 1)
            .await
            .unwrap();
        let names: Vec<String> = page.items.iter().map(|i| i.item.path.to_string()).collect();
        pages.push((names, page.next.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let s = |x: &str| x.to_string();
    assert_eq!(
        pages,
        [
            (vec![s("docs/open/a")], Some(s("a"))),
            (vec![s("docs/open/c")], Some(s("c"))),
            (vec![s("docs/open/e")], None),
        ]
    );
    let all = ws
        .drive_list(&admin, Some(&p("docs/open")), None, 10)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 5);
    assert_eq!(all.next, None);
    ws.close().await;
}
