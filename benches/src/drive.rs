//! The Drive's figures, through the kernel on a real workspace (`sync`):
//! - [`drive`]: putting 10 000 small items (an add and a data put each, from 64 writers), then
//!   one type migration rewriting all of them (`fill-defaults`, one command: decided on the
//!   writer thread, its outcome chunked into entries of one commit);
//! - [`lifecycle_under_load`]: the latency of paced lifecycle commands (the kernel sink's mix
//!   of var and feature sets) on a workspace without, then with, a drive bulk load running
//!   (many writers adding items and putting data as fast as they are answered).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::kernel::drive::{DriveActor, DriveCommand, DrivePath, FILL_DEFAULTS};
use cairn::kernel::Command;
use cairn::{CommandOptions, Options, Workspace};
use cairn_store::Durability;

use crate::lifecycle::{sink_command, KernelSink};
use crate::{meta, GroupStats};

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

/// The workspace at `dir`, opened under `sync`, with the runtime that holds it.
fn open_sync(dir: &Path) -> (tokio::runtime::Runtime, Workspace) {
    let rt = crate::runtime();
    let mut opts = Options::default();
    opts.store.durability = Durability::Sync;
    let ws = rt
        .block_on(Workspace::open(dir, opts))
        .expect("open the drive bench workspace");
    (rt, ws)
}

/// Defines drive type `name` at version 1 of the bench's schema.
fn define_type(store: &cairn_store::Store<cairn::KernelMachine>, name: &str) {
    let op = DriveCommand::SetType {
        name: name.into(),
        version: 1,
        schema: schema(1),
        migration: None,
    };
    run_as_admin(store, 0, op);
}

/// Runs one drive command as a workspace admin, waiting for its commit.
fn run_as_admin(store: &cairn_store::Store<cairn::KernelMachine>, i: u64, op: DriveCommand) {
    let command = Command::Drive {
        actor: DriveActor::admin("bench"),
        op,
    };
    store
        .execute(meta(i), command)
        .expect("a drive bench command");
}

/// `items` small typed items put from `threads` writers in a fresh workspace at `dir`, then
/// a type migration over all of them.
pub fn drive(dir: &Path, items: u64, threads: u64) -> DriveRun {
    Workspace::init(dir).expect("init the drive bench workspace");
    let (rt, ws) = open_sync(dir);
    let store = ws.store();
    let run = |i: u64, op: DriveCommand| run_as_admin(store, i, op);
    let path = |s: String| DrivePath::parse(&s).expect("a bench path");
    define_type(store, "item");
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

/// How [`lifecycle_under_load`] runs.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    /// Lifecycle commands per second, each submitted on its own at its time.
    pub rate: u64,
    /// Length of each measured phase (without, then with the load).
    pub phase: Duration,
    /// Unmeasured time before each phase (paced commands, and the load already running).
    pub warmup: Duration,
    /// Drive writers of the bulk load.
    pub load_writers: u64,
    /// Size of each data version the load puts (JSON text, about).
    pub data_bytes: usize,
}

/// Latencies of paced commands in one phase.
#[derive(Clone, Debug)]
pub struct Paced {
    /// Seconds the phase's commands took to be sent and answered.
    pub secs: f64,
    /// Each command's latency, from its submission to its answer, sorted ascending, in
    /// seconds.
    pub latencies: Vec<f64>,
    /// The writer's group commits during the phase (every command in them, the load's too).
    pub commits: GroupStats,
}

impl Paced {
    /// The `p`-th percentile (0..=100) of the latencies, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        crate::percentile_ms(&self.latencies, p)
    }
}

/// What [`lifecycle_under_load`] measured.
#[derive(Clone, Debug)]
pub struct LoadRun {
    /// The lifecycle commands without the load.
    pub quiet: Paced,
    /// The same with the drive bulk load running.
    pub loaded: Paced,
    /// Items the load added (with one data version each) during the loaded phase.
    pub load_items: u64,
}

impl LoadRun {
    /// Lifecycle p99 with the load ÷ without it.
    pub fn p99_ratio(&self) -> f64 {
        self.loaded.percentile_ms(99.0) / self.quiet.percentile_ms(99.0)
    }

    /// Drive items per second the load put during the loaded phase.
    pub fn load_items_per_s(&self) -> f64 {
        self.load_items as f64 / self.loaded.secs
    }
}

fn since(after: GroupStats, before: GroupStats) -> GroupStats {
    GroupStats {
        groups: after.groups - before.groups,
        entries: after.entries - before.entries,
        write_ns: after.write_ns - before.write_ns,
    }
}

/// The kernel sink's commands `first..` paced at `rate` per second for `duration`, each
/// submitted on its own at its time (not waiting for the ones before, so a slow answer does
/// not delay the next submission); each one's latency from its submission to its answer.
fn paced(
    rt: &tokio::runtime::Runtime,
    ws: &Workspace,
    first: u64,
    rate: u64,
    duration: Duration,
) -> Paced {
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let before: GroupStats = ws.store().stats().into();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let start = Instant::now();
    rt.block_on({
        let latencies = Arc::clone(&latencies);
        let ws = ws.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut sent = Vec::with_capacity(total as usize);
            for n in first..first + total {
                tick.tick().await;
                let (ws, latencies) = (ws.clone(), Arc::clone(&latencies));
                sent.push(tokio::spawn(async move {
                    let opts = CommandOptions {
                        actor: Some(meta(n).actor),
                        idempotency_key: None,
                    };
                    let submitted = Instant::now();
                    ws.execute(sink_command(n), &opts)
                        .await
                        .expect("a paced lifecycle command");
                    let latency = submitted.elapsed().as_secs_f64();
                    latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(latency);
                }));
            }
            for s in sent {
                s.await.expect("a paced command task");
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_by(|a, b| a.total_cmp(b));
    Paced {
        secs,
        latencies,
        commits: since(ws.store().stats().into(), before),
    }
}

/// A fresh workspace in `dir` (`sync`) with the kernel sink's packages installed; paced
/// lifecycle commands on it (after an unmeasured warm-up), then the same while `load_writers`
/// threads add drive items of a type and put a data version into each, as fast as they are
/// answered (the load starts a warm-up before the measured phase and stops after it).
pub fn lifecycle_under_load(dir: &Path, spec: LoadSpec) -> LoadRun {
    drop(KernelSink::open(dir, Durability::Sync));
    let (rt, ws) = open_sync(dir);
    let store = ws.store();
    let run = |i: u64, op: DriveCommand| run_as_admin(store, i, op);
    let path = |s: String| DrivePath::parse(&s).expect("a bench path");
    define_type(store, "doc");
    run(
        1,
        DriveCommand::Add {
            path: path("load".into()),
            type_name: None,
        },
    );
    let body = "x".repeat(spec.data_bytes.saturating_sub(40));
    let per_phase = (spec.rate as f64 * (spec.warmup + spec.phase).as_secs_f64()) as u64 + 1;
    paced(&rt, &ws, 0, spec.rate, spec.warmup);
    let quiet = paced(&rt, &ws, per_phase, spec.rate, spec.phase);
    let (stop, items) = (AtomicBool::new(false), AtomicU64::new(0));
    let (loaded, load_items) = std::thread::scope(|s| {
        for w in 0..spec.load_writers {
            let (stop, items, run, path, body) = (&stop, &items, &run, &path, &body);
            s.spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = (w + 1) << 40 | k;
                    let p = path(format!("load/w{w}-{k}"));
                    run(
                        2 * id,
                        DriveCommand::Add {
                            path: p.clone(),
                            type_name: Some("doc".into()),
                        },
                    );
                    run(
                        2 * id + 1,
                        DriveCommand::Put {
                            path: p,
                            version: None,
                            data: format!(r#"{{"n": {k}, "name": "{body}"}}"#),
                        },
                    );
                    items.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            });
        }
        paced(&rt, &ws, 2 * per_phase, spec.rate, spec.warmup);
        let before = items.load(Ordering::Relaxed);
        let loaded = paced(&rt, &ws, 3 * per_phase, spec.rate, spec.phase);
        let load_items = items.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        (loaded, load_items)
    });
    rt.block_on(ws.close());
    LoadRun {
        quiet,
        loaded,
        load_items,
    }
}
