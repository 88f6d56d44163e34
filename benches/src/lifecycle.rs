//! Lifecycle workloads through the kernel ([`KernelMachine`] as the store's state machine): a
//! [`Sink`] of var and feature sets, and a builder of mixed lifecycle logs (installs, var sets,
//! queue puts and acks, feature sets and reports, uninstalls with keep) for the rebuild and
//! open comparisons.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use cairn::KernelMachine;
use cairn_kernel::manifest::Validated;
use cairn_kernel::model::{FeatureState, ResourceKind};
use cairn_kernel::{manifest, query, Command};
use cairn_store::{Durability, Options, Progress, Store};
use uuid::Uuid;

use crate::{meta, payload, Sink};

/// The store with the lifecycle kernel.
pub type KernelStore = Store<KernelMachine>;

type KernelTicket = cairn_store::CommandTicket<KernelMachine>;

/// Initializes a workspace in `dir` and opens it with the kernel.
pub fn open_new(dir: &Path, durability: Durability) -> KernelStore {
    KernelStore::init(dir).expect("init bench workspace");
    open(dir, durability)
}

/// Opens the existing workspace in `dir` with the kernel.
pub fn open(dir: &Path, durability: Durability) -> KernelStore {
    let opts = Options {
        durability,
        ..Options::default()
    };
    KernelStore::open(dir, KernelMachine::default(), opts).expect("open bench workspace")
}

/// A manifest named `name` declaring `vars` vars, `queues` queues, `features` features, a
/// daemon, a vault, a plug and a slot. Features are named `<name>-f<i>`.
pub fn manifest(name: &str, vars: usize, queues: usize, features: usize) -> Validated {
    let mut text = format!("name = \"{name}\"\nversion = \"1.0.0\"\n[vars]\n");
    for i in 0..vars {
        text += &format!("k{i} = \"initial value of var {i}\"\n");
    }
    for i in 0..queues {
        text += &format!("[[queues]]\nname = \"q{i}\"\n");
    }
    for i in 0..features {
        text += &format!("[[features]]\nname = \"{name}-f{i}\"\nauto_restart = true\n");
    }
    text += "[[vaults]]\nname = \"token\"\n\
             [[daemons]]\nname = \"worker\"\ncommand = [\"/usr/bin/worker\", \"--serve\"]\n\
             [[plugs]]\nname = \"net\"\ninterface = \"network\"\n\
             [[slots]]\nname = \"metrics\"\ninterface = \"metrics\"\n";
    manifest::parse(&text).expect("bench manifest is valid")
}

/// An `Install` and the engine command that finishes it. An install of a manifest without
/// auto-connecting plugs has two tasks, `create` (done when the change is created) and
/// `mark-installed` (task 1), which the engine runs with a `TaskRun`.
pub fn install(manifest: Validated, change: Uuid) -> [Command; 2] {
    [
        Command::Install { manifest, change },
        Command::TaskRun {
            change,
            task: 1,
            undo: false,
        },
    ]
}

/// An `Uninstall` and the engine commands that finish it: tasks 1 (`cancel-onload`), 2
/// (`onuninstall`, a no-op when the hook is not declared), 3 (`stop-daemons`: every bench
/// package declares a daemon; nothing runs it here), 4 (`delete-resources`) and 5
/// (`remove-package`); task 0 (`mark-uninstalling`) is done when the change is created. This
/// holds for a package without connections.
pub fn uninstall(package: &str, keep: Vec<ResourceKind>, change: Uuid) -> Vec<Command> {
    let mut commands = vec![Command::Uninstall {
        package: package.to_string(),
        keep,
        strict: false,
        change,
    }];
    commands.extend((1..=5).map(|task| Command::TaskRun {
        change,
        task,
        undo: false,
    }));
    commands
}

/// Submits `commands` in order without waiting, then waits for all; panics on a rejection.
/// Commands from one caller reach the writer in order, so each is decided after the ones
/// before it.
pub fn run_all(store: &KernelStore, first_id: u64, commands: Vec<Command>) {
    let tickets: Vec<KernelTicket> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| store.submit(meta(first_id + i as u64), c))
        .collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        if let Err(e) = ticket.wait() {
            panic!("bench command {i} of its batch failed: {e:?}");
        }
    }
}

/// Packages a [`KernelSink`] installs.
const SINK_PACKAGES: u64 = 4;
/// Features each of them declares: one per writer thread, up to 64 threads.
const SINK_FEATURES_PER_PACKAGE: u64 = 16;
/// Var keys each of them gets written.
const SINK_KEYS: u64 = 64;

/// The kernel's store as a sink of lifecycle commands: three of four writes are a `VarSet` of
/// a 256-byte value (keys spread over four packages), one is a `FeatureSet` that toggles the
/// writer thread's own feature (each one yields an event: setting the state a feature already
/// has would yield none).
pub struct KernelSink {
    /// The store.
    pub store: KernelStore,
}

impl KernelSink {
    /// A fresh workspace in `dir` with the sink's packages installed.
    pub fn open(dir: &Path, durability: Durability) -> Self {
        let store = open_new(dir, durability);
        let mut commands = Vec::new();
        for p in 0..SINK_PACKAGES {
            let m = manifest(
                &format!("bench{p}"),
                4,
                1,
                SINK_FEATURES_PER_PACKAGE as usize,
            );
            commands.extend(install(m, Uuid::from_u128(0xb0 << 64 | p as u128)));
        }
        run_all(&store, 1 << 62, commands);
        Self { store }
    }

    fn command(i: u64) -> Command {
        sink_command(i)
    }
}

/// The `i`-th command of the kernel sink's mix (`i`: writer thread << 40 | sequence).
pub fn sink_command(i: u64) -> Command {
    let (thread, n) = (i >> 40, i & ((1 << 40) - 1));
    if n % 4 == 3 {
        // Thread t owns feature f<t / 4> of package bench<t % 4>, and starts it enabled.
        let t = thread % (SINK_PACKAGES * SINK_FEATURES_PER_PACKAGE);
        let name = format!("bench{}-f{}", t % SINK_PACKAGES, t / SINK_PACKAGES);
        let state = if (n / 4) % 2 == 0 {
            FeatureState::Disabled
        } else {
            FeatureState::Enabled
        };
        Command::FeatureSet {
            name,
            state,
            expect_revision: None,
        }
    } else {
        Command::VarSet {
            owner: format!("bench{}", (thread + n) % SINK_PACKAGES),
            key: format!("key{}", (thread * 7 + n) % SINK_KEYS),
            value: payload(i),
            expect_revision: None,
        }
    }
}

impl Sink for KernelSink {
    fn write(&self, i: u64) {
        self.store
            .execute(meta(i), Self::command(i))
            .expect("kernel command");
    }

    fn groups(&self) -> Option<crate::GroupStats> {
        Some(self.store.stats().into())
    }
}

/// Shape of a mixed lifecycle log.
#[derive(Clone, Copy, Debug)]
pub struct MixSpec {
    /// Stop once the log holds at least this many entries.
    pub entries: u64,
    /// Long-lived packages installed first (16 vars, 2 queues, 2 features each).
    pub base_packages: u64,
    /// Threads submitting cycles.
    pub threads: u64,
    /// Package names each thread cycles through (install, use, uninstall, reinstall...).
    pub names_per_thread: u64,
    /// Data commands per cycle.
    pub ops_per_cycle: u64,
}

impl MixSpec {
    /// The mix used by `compare`, sized to `entries`.
    pub fn sized(entries: u64) -> Self {
        Self {
            entries,
            base_packages: 32,
            threads: 4,
            names_per_thread: 16,
            ops_per_cycle: 90,
        }
    }
}

/// Builds a mixed lifecycle log of at least `spec.entries` entries in a fresh workspace at
/// `dir` (durability `None`: the builder calls the store directly and pipelines its commands).
///
/// First the base packages are installed. Then each thread repeats a cycle on one of its
/// package names: install (8 vars, 1 queue, 1 feature) and finish the install; then
/// `ops_per_cycle` commands: 256-byte var sets on its package and on base packages, queue puts
/// of four 128-byte items and acks, feature sets toggling its feature, feature reports on base
/// features; then uninstall, keeping vars every other cycle (the next install of that name
/// adopts them), and finish the uninstall. Every change is finished, so the workspace opens
/// with nothing to resume. Returns the number of entries written.
pub fn build_mixed_log(dir: &Path, spec: MixSpec) -> u64 {
    build_mixed_log_seeded(dir, spec, None)
}

/// [`build_mixed_log`], and with `seed` a backup of the new workspace taken before anything
/// is written to it (offset 0, the built workspace's id): a mirror provisioned from it catches
/// up the whole log from its leader.
pub fn build_mixed_log_seeded(dir: &Path, spec: MixSpec, seed: Option<&Path>) -> u64 {
    let store = open_new(dir, Durability::None);
    if let Some(seed) = seed {
        let head = store.backup(seed).expect("back up the empty workspace");
        assert_eq!(head.offset, 0, "the seed is taken before the first entry");
    }
    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    // Record the kernel's schema first, as `Workspace::open` does on a new workspace.
    let migrations = {
        let view = store.read().expect("read view");
        store
            .machine()
            .0
            .pending_migrations(&view)
            .expect("pending migrations")
    };
    run_all(&store, 1 << 61, migrations);
    let mut commands = Vec::new();
    for b in 0..spec.base_packages {
        let change = Uuid::from_u128(0xba5e << 64 | b as u128);
        commands.extend(install(manifest(&format!("base{b}"), 16, 2, 2), change));
    }
    run_all(&store, 1 << 62, commands);
    std::thread::scope(|s| {
        for t in 0..spec.threads {
            let store = &store;
            s.spawn(move || {
                let manifests: Vec<Validated> = (0..spec.names_per_thread)
                    .map(|n| manifest(&format!("c{t}-{n}"), 8, 1, 1))
                    .collect();
                let mut cycle = 0u64;
                while store.applied() < spec.entries {
                    let commands = mix_cycle(&spec, t, cycle, &manifests);
                    run_all(store, (t << 48) | (cycle << 16), commands);
                    cycle += 1;
                    if progress && t == 0 && cycle.is_multiple_of(16) {
                        let done = store.applied();
                        eprint!(
                            "\r  building mixed log: {done} / {} entries ({:.0} entries/s)   ",
                            spec.entries,
                            done as f64 / start.elapsed().as_secs_f64()
                        );
                        let _ = std::io::stderr().flush();
                    }
                }
            });
        }
    });
    if progress {
        eprint!("\r{:78}\r", "");
    }
    let view = store.read().expect("read view");
    let active = query::active_changes(&view).expect("active changes");
    assert!(
        active.is_empty(),
        "the builder finishes every change; {} are still active",
        active.len()
    );
    view.applied()
}

/// The commands of thread `t`'s cycle number `cycle`.
fn mix_cycle(spec: &MixSpec, t: u64, cycle: u64, manifests: &[Validated]) -> Vec<Command> {
    let slot = cycle % spec.names_per_thread;
    let m = &manifests[slot as usize];
    let name = m.name.clone();
    let feature = m.features[0].name.clone();
    let id = |k: u64| {
        Uuid::from_u128(0xc1c1e_u128 << 96 | (t as u128) << 64 | ((cycle << 8 | k) as u128))
    };
    let mut commands = Vec::with_capacity(spec.ops_per_cycle as usize + 8);
    commands.extend(install(m.clone(), id(0)));
    // The queue starts empty each cycle (queues are never kept), the feature enabled.
    let (mut next_seq, mut acked, mut sets) = (1u64, 0u64, 0u64);
    for k in 0..spec.ops_per_cycle {
        let i = (t << 48) | (cycle << 16) | k;
        let base = format!("base{}", (cycle * 7 + k) % spec.base_packages);
        commands.push(match k % 9 {
            0..=4 => Command::VarSet {
                owner: if k % 2 == 0 { name.clone() } else { base },
                key: format!("k{}", (cycle + k) % 24),
                value: payload(i),
                expect_revision: None,
            },
            5 => {
                next_seq += 4;
                Command::QueuePut {
                    owner: name.clone(),
                    queue: "q0".into(),
                    items: (0..4).map(|j| payload(i + j)[..128].to_vec()).collect(),
                }
            }
            6 => {
                sets += 1;
                Command::FeatureSet {
                    name: feature.clone(),
                    state: if sets % 2 == 1 {
                        FeatureState::Disabled
                    } else {
                        FeatureState::Enabled
                    },
                    expect_revision: None,
                }
            }
            7 => Command::FeatureReport {
                name: format!("{base}-f{}", k % 2),
                observed: FeatureState::Enabled,
            },
            _ if next_seq - 1 > acked + 2 => {
                acked = next_seq - 3;
                Command::QueueAck {
                    owner: name.clone(),
                    queue: "q0".into(),
                    upto: acked,
                }
            }
            _ => Command::FeatureReport {
                name: feature.clone(),
                observed: FeatureState::Disabled,
            },
        });
    }
    let keep = if cycle.is_multiple_of(2) {
        vec![ResourceKind::Vars]
    } else {
        vec![]
    };
    commands.extend(uninstall(&name, keep, id(1)));
    commands
}

/// Reads the whole log of the (closed) workspace at `dir` through a read view and decodes
/// every entry's event; returns (entries, seconds). Opening the store is not timed.
pub fn iterate_and_decode(dir: &Path) -> (u64, f64) {
    let store = open(dir, Durability::None);
    let view = store.read().expect("read view");
    let start = Instant::now();
    let mut n = 0u64;
    view.visit_log(view.first_retained(), |entry| {
        let event =
            cairn_kernel::Event::decode(&entry.kind, &entry.payload).expect("event decodes");
        std::hint::black_box(event);
        n += 1;
        true
    })
    .expect("read log");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(n, view.applied(), "the whole log was read");
    (n, secs)
}

/// Rebuilds the projection of the (closed) workspace at `dir` from its log; returns (entries,
/// seconds), the whole `Store::rebuild` call timed.
pub fn rebuild(dir: &Path) -> (u64, f64) {
    let show = std::io::stderr().is_terminal();
    let start = Instant::now();
    let report = KernelStore::rebuild(dir, &KernelMachine::default(), &mut |p: Progress| {
        if show {
            eprint!("\r  rebuild: {} / {} entries   ", p.done, p.total);
            let _ = std::io::stderr().flush();
        }
    })
    .expect("rebuild");
    let secs = start.elapsed().as_secs_f64();
    if show {
        eprint!("\r{:78}\r", "");
    }
    (report.entries, secs)
}

/// Time to open the workspace at `dir` with `Store::open` and close it again (drop).
pub fn store_open_close(dir: &Path) -> Duration {
    let start = Instant::now();
    drop(open(dir, Durability::Sync));
    start.elapsed()
}

/// Time to open the workspace at `dir` with `cairn::Workspace::open` (which also starts the
/// change engine) and `close` it, inside `rt`.
pub fn workspace_open_close(rt: &tokio::runtime::Runtime, dir: &Path) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let ws = cairn::Workspace::open(dir, cairn::Options::default())
            .await
            .expect("open workspace");
        ws.close().await;
        start.elapsed()
    })
}
