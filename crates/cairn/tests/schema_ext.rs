//! Schema versions and migrations; extension events.

mod common;

use std::sync::Arc;

use cairn::kernel::{query, ExtRead, ExtWrite, Extension, Kernel, Migration, Schema};
use cairn::{Options, Workspace};
use cairn_log::StateWrite;
use common::*;

fn mark(state: &mut dyn StateWrite, key: &[u8]) -> Result<(), String> {
    state.put(cairn_log::Space::State, key, b"1");
    Ok(())
}

fn app_schema(version: u32, compat_of_last: u32) -> Schema {
    let all = [
        Migration {
            to: 1,
            compat: 1,
            name: "create-things".into(),
            apply: |s| mark(s, b"ext/app/migrated/1"),
        },
        Migration {
            to: 2,
            compat: 1,
            name: "split-things".into(),
            apply: |s| mark(s, b"ext/app/migrated/2"),
        },
        Migration {
            to: 3,
            compat: 3,
            name: "drop-old-things".into(),
            apply: |s| mark(s, b"ext/app/migrated/3"),
        },
    ];
    let mut migrations: Vec<Migration> = all.into_iter().take(version as usize).collect();
    if let Some(last) = migrations.last_mut() {
        last.compat = compat_of_last.min(last.to);
    }
    Schema {
        name: "app".into(),
        version,
        migrations,
    }
}

fn with_schema(schema: Schema) -> Options {
    Options {
        kernel: Kernel::new().with_schema(schema).unwrap(),
        ..Default::default()
    }
}

async fn migrations_in_log(ws: &Workspace) -> Vec<String> {
    ws.read_log(1, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "schema.migrated.v1")
        .map(
            |e| match cairn::kernel::Event::decode(&e.kind, &e.payload).unwrap() {
                cairn::kernel::Event::SchemaMigrated {
                    schema, to, name, ..
                } => {
                    format!("{schema}:{to}:{name}")
                }
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_in_order_and_are_recorded() {
    let s = Scratch::new();
    let ws = s.open_with(with_schema(app_schema(2, 1))).await;
    assert_eq!(
        migrations_in_log(&ws).await,
        [
            "app:1:create-things",
            "app:2:split-things",
            "cairn:1:initial",
            "cairn:2:api-tokens",
            "cairn:3:wal-loss-record"
        ]
    );
    let v = ws.view().unwrap();
    assert_eq!(query::schema(&v, "app").unwrap().unwrap().version, 2);
    assert!(ExtProbe::get(&v, b"ext/app/migrated/2"));
    drop(v); // a live snapshot keeps the database open
    ws.close().await;

    // Reopen with the same binary: nothing new.
    let ws = s.open_with(with_schema(app_schema(2, 1))).await;
    assert_eq!(migrations_in_log(&ws).await.len(), 5);
    ws.close().await;

    // A newer binary records only the new migration.
    let ws = s.open_with(with_schema(app_schema(3, 3))).await;
    assert_eq!(
        migrations_in_log(&ws).await,
        [
            "app:1:create-things",
            "app:2:split-things",
            "cairn:1:initial",
            "cairn:2:api-tokens",
            "cairn:3:wal-loss-record",
            "app:3:drop-old-things"
        ]
    );
    assert_replay_matches_with(&ws, with_schema(app_schema(3, 3)).kernel);
    ws.close().await;

    // The old binary (schema 2) is refused: the data needs schema 3.
    let e = Workspace::open(&s.data(), with_schema(app_schema(2, 1)))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.to_string(),
        "schema \"app\" of this workspace is at version 3 and needs a binary with schema \
         version 3 or newer; this binary has schema version 2"
    );
}

struct ExtProbe;
impl ExtProbe {
    fn get(v: &cairn::store::ReadView, key: &[u8]) -> bool {
        cairn_log::StateRead::get(v, cairn_log::Space::State, key)
            .unwrap()
            .is_some()
    }
}

fn assert_replay_matches_with(ws: &Workspace, kernel: Kernel) {
    let live = ws.view().unwrap().digest().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy");
    ws.store().backup(&copy).unwrap();
    let machine = cairn::KernelMachine(kernel);
    cairn::store::Store::rebuild(&copy, &machine, &mut |_| {}).unwrap();
    let store = cairn::store::Store::open(&copy, machine, Default::default()).unwrap();
    assert_eq!(store.read().unwrap().digest().unwrap(), live);
}

/// Counts `add` events: `ext.counter.add.v1` with a 1-byte payload.
struct Counter;

impl Extension for Counter {
    fn app(&self) -> &str {
        "counter"
    }

    fn validate(&self, _state: &ExtRead<'_>, kind: &str, payload: &[u8]) -> Result<(), String> {
        if kind != "ext.counter.add.v1" {
            return Err(format!("unknown kind {kind}"));
        }
        if payload.len() != 1 {
            return Err("payload must be one byte".into());
        }
        Ok(())
    }

    fn apply(&self, state: &mut ExtWrite<'_>, _kind: &str, payload: &[u8]) -> Result<(), String> {
        let now = state
            .get(b"total")
            .map_err(|e| e.to_string())?
            .map_or(0u64, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
        state.put(b"total", &(now + u64::from(payload[0])).to_be_bytes());
        Ok(())
    }
}

fn with_counter() -> Options {
    Options {
        kernel: Kernel::new().with_extension(Arc::new(Counter)).unwrap(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_events_round_trip_and_an_unknown_kind_is_named_at_open() {
    let s = Scratch::new();
    let ws = s.open_with(with_counter()).await;
    let mut first = None;
    for n in [3u8, 4, 5] {
        let c = ws
            .ext("ext.counter.add.v1", vec![n], &opts())
            .await
            .unwrap();
        first.get_or_insert(c.offsets.start);
    }
    let e = ws
        .ext("ext.counter.add.v1", vec![1, 2], &opts())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("payload must be one byte"), "{e}");
    let e = ws
        .ext("ext.other.add.v1", vec![1], &opts())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "extension \"other\" does not exist");
    let total = cairn_log::StateRead::get(
        &ws.view().unwrap(),
        cairn_log::Space::State,
        b"ext/counter/total",
    )
    .unwrap()
    .unwrap();
    assert_eq!(total, 12u64.to_be_bytes());
    assert_replay_matches_with(&ws, with_counter().kernel);
    ws.close().await;

    // Without the extension registered, open refuses, naming the kind and offset.
    let first = first.unwrap();
    let e = Workspace::open(&s.data(), Options::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "unknown event kind \"ext.counter.add.v1\" at offset {first}: no extension \
             \"counter\" is registered (register it before opening this workspace)"
        )
    );
    // Replay without it stops at the same entry, naming kind and offset.
    let e = cairn::store::Store::rebuild(&s.data(), &cairn::KernelMachine::default(), &mut |_| {})
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "cannot apply entry {first} of kind \"ext.counter.add.v1\""
        )),
        "{msg}"
    );
}
