//! The Drive's figures, through the kernel on a real workspace (`sync`): putting 10 000 small
//! items (an add and a data put each, from 64 writers), then one type migration rewriting all
//! of them (`fill-defaults`, one command: decided on the writer thread, its outcome chunked
//! into entries of one commit).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cairn::kernel::drive::{DriveActor, DriveCommand, DrivePath, FILL_DEFAULTS};
use cairn::kernel::Command;
use cairn::{Options, Workspace};
use cairn_store::Durability;

use crate::meta;

/// What [`drive`] measured.
#[derive(Clone, Copy, Debug)]
pub struct DriveRun {
    /// Items put.
    pub items: u64,
    /// Items per second put (add + first data version each).
    pub put_items_per_s: f64,
    /// Items per second the migration rewrote.
    pub migrate_items_per_s: f64,
    /// Entries the migration wrote.
    pub migration_entries: u64,
}

fn schema(v: u32) -> String {
    let mut s = serde_json::json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "name": {"type": "string"}},
        "required": ["n", "name"],
    });
    if v >= 2 {
        s["properties"]["tag"] = serde_json::json!({"type": "string", "default": "new"});
        s["required"] = serde_json::json!(["n", "name", "tag"]);
    }
    s.to_string()
}

/// `items` small typed items put from `threads` writers in a fresh workspace at `dir`, then
/// a type migration over all of them.
pub fn drive(dir: &Path, items: u64, threads: u64) -> DriveRun {
    Workspace::init(dir).expect("init the drive bench workspace");
    let rt = crate::runtime();
    let mut opts = Options::default();
    opts.store.durability = Durability::Sync;
    let ws = rt
        .block_on(Workspace::open(dir, opts))
        .expect("open the drive bench workspace");
    let store = ws.store();
    let admin = DriveActor::admin("bench");
    let run = |i: u64, op: DriveCommand| {
        store
            .execute(
                meta(i),
                Command::Drive {
                    actor: admin.clone(),
                    op,
                },
            )
            .expect("a drive bench command");
    };
    let path = |s: String| DrivePath::parse(&s).expect("a bench path");
    run(
        0,
        DriveCommand::SetType {
            name: "item".into(),
            version: 1,
            schema: schema(1),
            migration: None,
        },
    );
    run(
        1,
        DriveCommand::Add {
            path: path("items".into()),
            type_name: None,
        },
    );
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    break;
                }
                let p = path(format!("items/i{i}"));
                run(
                    2 + 2 * i,
                    DriveCommand::Add {
                        path: p.clone(),
                        type_name: Some("item".into()),
                    },
                );
                run(
                    3 + 2 * i,
                    DriveCommand::Put {
                        path: p,
                        version: None,
                        data: format!(r#"{{"n": {i}, "name": "item number {i}"}}"#),
                    },
                );
            });
        }
    });
    let put_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let before = ws.applied();
    run(
        u64::MAX,
        DriveCommand::SetType {
            name: "item".into(),
            version: 2,
            schema: schema(2),
            migration: Some(FILL_DEFAULTS.into()),
        },
    );
    let migrate_secs = start.elapsed().as_secs_f64();
    let migration_entries = ws.applied() - before;
    rt.block_on(ws.close());
    DriveRun {
        items,
        put_items_per_s: items as f64 / put_secs,
        migrate_items_per_s: items as f64 / migrate_secs,
        migration_entries,
    }
}
