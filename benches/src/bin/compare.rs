//! Side-by-side comparison: the same write workload (256-byte payloads, same concurrency, same
//! durability) against cairn's store, raw RocksDB and an SQLite events table, in one run.
//!
//! `cargo run --release -p cairn-benches --bin compare -- [--quick]`
//!
//! Each cell is the median of several rounds; rounds interleave the systems so machine noise
//! hits them alike. The last line gives cairn ÷ peer throughput ratios; the raw RocksDB peer is
//! the faster of its two shapes (writers calling RocksDB directly, or one group-commit thread).
//!
//! Then the lifecycle figures, through the kernel (`cairn::KernelMachine`):
//! - `kernel_sync64`: var and feature sets from 64 writers under `sync`, ÷ the store-only
//!   `sync64` (same rounds, interleaved);
//! - `rebuild`: `Store::rebuild` of a 1M-entry mixed lifecycle log (quick: 50k) ÷ merely
//!   iterating it through a read view and decoding every event;
//! - `open_1m_vs_1k`: median `Workspace::open` + `close` of that workspace ÷ that of a
//!   1k-entry one (lower is better).
//!
//! Then the replication figures (`cairn_benches::replication`: a leader served by an
//! in-process `cairn_server` on 127.0.0.1, mirrors following it with `cairn_mirror::start`,
//! durability `sync` everywhere):
//! - `catchup`: a mirror provisioned at offset 0 catching up that 1M-entry log, entries/s, ÷
//!   the `rebuild` rate of the same log;
//! - `lag_p50_ms`, `lag_p99_ms`: 1 000 paced writes/s for 10 s (quick: 2 s) with two mirrors;
//!   per write and mirror, from the leader's commit answer until the mirror has applied it;
//! - `leader_with_mirrors`: the kernel sync64 workload on a served leader with two mirrors ÷
//!   the same without (rounds alternate);
//! - `forwarded`: HTTP writes (the server sync64 mix, 64 clients) sent to a mirror, which
//!   forwards them and answers once it has applied them, ÷ the same sent to the leader.
//!
//!
//! Then the Drive (`cairn_benches::drive`): 10 000 small typed items put from 64 writers
//! (items/s), a `fill-defaults` type migration over them (items/s), and
//! `drive_migrate_vs_put`, the migration's rate ÷ the put rate; and
//! `drive_load_lifecycle_p99`: the p99 latency of paced lifecycle commands (the kernel sink's
//! mix, 500/s, each submitted on its own) while 32 writers add drive items and put 1 KiB data
//! versions as fast as they are answered, ÷ the same without the load, on one workspace
//! (`sync`), 5 s each, without first; the median over 3 rounds, each in a fresh workspace
//! (quick: one round of 3 s).
//!
//! `CAIRN_BENCH_MIRROR_DURABILITY=buffered` (or `none`) opens the mirrors with that durability
//! instead, to see what their fsyncs cost (a diagnosis, not a figure).
//!
//! `--only WORKLOAD` runs one cairn workload alone, for profiling: `sync64`, `sync1`,
//! `buffered64`, `none64` (store only), `kernel64`, `server64`, `rebuild`, `open`, `catchup`,
//! `lag`, `leader_with_mirrors`, `forwarded`, `drive`, `drive_load` (sized by `--quick`; the
//! replication and drive ones print their ratio), or a peer alone: `sqlite64`, `grouped64`
//! (raw RocksDB, one group-commit thread).

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_benches::lifecycle::{self, KernelSink, MixSpec};
use cairn_benches::replication::{self, Placement, Target};
use cairn_benches::server::HttpSink;
use cairn_benches::{throughput, CairnSink, Grouped, RawDirect, Sink};
use cairn_store::Durability;

struct Case {
    name: &'static str,
    threads: usize,
    sync: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(replication::MIRROR_CHILD_ARG) {
        return replication::mirror_child(&args[2..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let scratch = tempfile::tempdir_in(std::env::var("CAIRN_BENCH_DIR").unwrap_or("/tmp".into()))
        .expect("scratch dir");
    let sizes = if quick {
        LogSizes {
            big: 50_000,
            small: 1_000,
            rounds: 1,
            opens: 9,
            lag: Duration::from_secs(2),
            replication_rounds: 1,
            replication_run: Duration::from_secs(2),
            drive_load: Duration::from_secs(3),
            drive_load_rounds: 1,
        }
    } else {
        LogSizes {
            big: 1_000_000,
            small: 1_000,
            rounds: 2,
            opens: 15,
            lag: Duration::from_secs(10),
            replication_rounds: 3,
            replication_run: Duration::from_secs(5),
            drive_load: Duration::from_secs(5),
            drive_load_rounds: 3,
        }
    };
    if let Some(d) = replication::mirror_durability_override() {
        println!("mirrors open with durability {d:?} (CAIRN_BENCH_MIRROR_DURABILITY)");
    }
    // `--only WORKLOAD` runs one workload's cairn cell alone (for profiling); no ratios.
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let name = args.get(i + 1).map(String::as_str).unwrap_or("sync64");
        match name {
            "rebuild" | "open" => {
                let big = build(scratch.path(), "big", sizes.big, None);
                if name == "rebuild" {
                    rebuild_rates(&big, sizes.rounds);
                } else {
                    let small = build(scratch.path(), "small", sizes.small, None);
                    open_times(&big, &small, sizes.opens);
                }
            }
            "catchup" => {
                let seed = scratch.path().join("seed");
                let big = build(scratch.path(), "big", sizes.big, Some(&seed));
                let (_, rebuild) = rebuild_rates(&big, sizes.rounds);
                catchup_figure(&big, &seed, rebuild);
            }
            "lag" => {
                lag_figure(scratch.path(), sizes.lag);
            }
            "drive" => {
                drive_figure(scratch.path());
            }
            "drive_load" => {
                drive_load_figure(scratch.path(), sizes.drive_load, sizes.drive_load_rounds);
            }
            "leader_with_mirrors" => {
                mirrors_figure(scratch.path(), &sizes);
            }
            "forwarded" => {
                forwarded_figure(scratch.path(), &sizes);
            }
            "server64" => {
                let sink = HttpSink::open(&scratch.path().join("only"), Durability::Sync);
                let ops = throughput(&sink, 64, Duration::from_secs(5));
                let shape = cairn_benches::Sink::groups(&sink)
                    .unwrap_or_default()
                    .describe();
                println!("cairn server64: {ops:.0} commands/s over HTTP; {shape}");
            }
            "sqlite64" | "grouped64" => {
                let dir = scratch.path().join("only");
                std::fs::create_dir_all(&dir).expect("scratch dir");
                let sink = if name == "sqlite64" {
                    Grouped::sqlite(&dir)
                } else {
                    Grouped::rocksdb(&dir, true)
                };
                let ops = throughput(&sink, 64, Duration::from_secs(5));
                let shape = cairn_benches::Sink::groups(&sink)
                    .unwrap_or_default()
                    .describe();
                println!("{name}: {ops:.0} ops/s; {shape}");
            }
            "kernel64" => {
                let sink = KernelSink::open(&scratch.path().join("only"), Durability::Sync);
                let ops = throughput(&sink, 64, Duration::from_secs(5));
                let shape = cairn_benches::Sink::groups(&sink)
                    .unwrap_or_default()
                    .describe();
                println!("cairn kernel64: {ops:.0} commands/s; {shape}");
            }
            _ => {
                let (threads, durability) = match name {
                    "sync1" => (1, Durability::Sync),
                    "buffered64" => (64, Durability::Buffered),
                    "none64" => (64, Durability::None),
                    _ => (64, Durability::Sync),
                };
                let sink = CairnSink::open(&scratch.path().join("only"), durability);
                let ops = throughput(&sink, threads, Duration::from_secs(5));
                let stats = sink.store.stats();
                println!(
                    "cairn {name}: {ops:.0} ops/s; {} groups, {:.1} entries per group, \
                     {:.0} µs per group write",
                    stats.groups,
                    stats.entries as f64 / stats.groups.max(1) as f64,
                    stats.write_ns as f64 / 1e3 / stats.groups.max(1) as f64
                );
            }
        }
        return;
    }
    let (rounds, secs) = if quick { (1, 2.0) } else { (5, 6.0) };
    let duration = Duration::from_secs_f64(secs);
    println!(
        "compare: {} mode, {rounds} round(s) of {secs} s per cell, 256-byte payloads, scratch {}",
        if quick { "quick" } else { "full" },
        scratch.path().display()
    );
    let cases = [
        Case {
            name: "sync64",
            threads: 64,
            sync: true,
        },
        Case {
            name: "sync1",
            threads: 1,
            sync: true,
        },
        Case {
            name: "buffered64",
            threads: 64,
            sync: false,
        },
    ];
    let mut n = 0;
    let mut dir = || {
        n += 1;
        scratch.path().join(format!("run{n}"))
    };
    let mut results = Vec::new();
    let mut kernel = Vec::new();
    let mut server = Vec::new();
    println!(
        "{:<12} {:>14} {:>16} {:>16} {:>14} {:>8}",
        "workload", "cairn ops/s", "rocksdb-direct", "rocksdb-grouped", "sqlite ops/s", "ratio"
    );
    for case in &cases {
        let (mut cairn, mut direct, mut grouped, mut sqlite) = (vec![], vec![], vec![], vec![]);
        // How each grouping system's commits went in the last round (entries per group, write
        // time per group): the shape behind the throughput.
        let mut shapes: Vec<(&str, String)> = Vec::new();
        for _ in 0..rounds {
            let durability = if case.sync {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            let mut run = |name: &'static str, sink: &dyn Sink| {
                let ops = throughput(sink, case.threads, duration);
                if let Some(g) = sink.groups() {
                    shapes.retain(|(n, _)| *n != name);
                    shapes.push((name, g.describe()));
                }
                ops
            };
            cairn.push(run("cairn", &CairnSink::open(&dir(), durability)));
            direct.push(run("rocksdb-direct", &RawDirect::open(&dir(), case.sync)));
            grouped.push(run("rocksdb-grouped", &Grouped::rocksdb(&dir(), case.sync)));
            if case.name == "sync64" {
                kernel.push(run("kernel", &KernelSink::open(&dir(), durability)));
                server.push(run("server", &HttpSink::open(&dir(), durability)));
                sqlite.push(run(
                    "sqlite",
                    &Grouped::sqlite(&{
                        let d = dir();
                        std::fs::create_dir_all(&d).unwrap();
                        d
                    }),
                ));
            }
        }
        let cairn = median(cairn);
        let raw = median(direct.clone()).max(median(grouped.clone()));
        let sqlite = (!sqlite.is_empty()).then(|| median(sqlite));
        println!(
            "{:<12} {:>14.0} {:>16.0} {:>16.0} {:>14} {:>8.2}",
            case.name,
            cairn,
            median(direct),
            median(grouped),
            sqlite
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "-".into()),
            cairn / raw
        );
        for (name, shape) in &shapes {
            println!("  {name:<16} {shape}");
        }
        results.push((case.name, cairn, raw, sqlite));
    }
    let ratio = |name: &str| {
        let (_, cairn, raw, _) = results.iter().find(|r| r.0 == name).unwrap();
        cairn / raw
    };
    let (_, cairn64, _, sqlite64) = results.iter().find(|r| r.0 == "sync64").unwrap();
    let kernel = median(kernel);
    println!(
        "kernel sync64: {kernel:.0} commands/s (3/4 var sets of 256 bytes, 1/4 feature toggles) \
         vs store-only sync64 {cairn64:.0} ops/s: {:.2} (target ≥ 0.7)",
        kernel / cairn64
    );
    let server = median(server);
    println!(
        "server sync64: {server:.0} commands/s over HTTP (the same mix, 64 client threads with \
         keep-alive, JSON, bearer token) vs in-process {kernel:.0}: {:.2}",
        server / kernel
    );
    let seed = scratch.path().join("seed");
    let big = build(scratch.path(), "big", sizes.big, Some(&seed));
    let (iterate, rebuild) = rebuild_rates(&big, sizes.rounds);
    let small = build(scratch.path(), "small", sizes.small, None);
    let (open_big, open_small) = open_times(&big, &small, sizes.opens);
    // After the open figure: serving the big log as a leader adds its tokens to it.
    let catchup = catchup_figure(&big, &seed, rebuild);
    let lag = lag_figure(scratch.path(), sizes.lag);
    let with_mirrors = mirrors_figure(scratch.path(), &sizes);
    let forwarded = forwarded_figure(scratch.path(), &sizes);
    let drive = drive_figure(scratch.path());
    let drive_load = drive_load_figure(scratch.path(), sizes.drive_load, sizes.drive_load_rounds);
    println!(
        "ratios: sync64={:.2} sync1={:.2} buffered64={:.2} sqlite_sync64={:.2} \
         kernel_sync64={:.2} rebuild={:.2} open_1m_vs_1k={:.2} catchup={catchup:.2} \
         lag_p50_ms={:.1} lag_p99_ms={:.1} leader_with_mirrors={with_mirrors:.2} \
         forwarded={forwarded:.2} drive_migrate_vs_put={drive:.2} \
         drive_load_lifecycle_p99={drive_load:.2}",
        ratio("sync64"),
        ratio("sync1"),
        ratio("buffered64"),
        cairn64 / sqlite64.expect("sqlite ran in sync64"),
        kernel / cairn64,
        rebuild / iterate,
        open_big / open_small,
        lag.percentile_ms(50.0),
        lag.percentile_ms(99.0),
    );
}

/// Sizes of the lifecycle logs and repetitions of their measurements.
struct LogSizes {
    /// Entries of the big log (rebuild, and the big side of the open comparison).
    big: u64,
    /// Entries of the small log (the small side of the open comparison).
    small: u64,
    /// Rounds of iterate + rebuild (best of each is reported).
    rounds: usize,
    /// Opens of each workspace (median is reported), after one untimed open each.
    opens: usize,
    /// Length of the paced-writes run of the lag figure.
    lag: Duration,
    /// Rounds of each side of `leader_with_mirrors` and `forwarded` (median is reported).
    replication_rounds: usize,
    /// Length of each of those rounds.
    replication_run: Duration,
    /// Length of each phase of the drive load figure (without, then with the load).
    drive_load: Duration,
    /// Rounds of the drive load figure, each in a fresh workspace.
    drive_load_rounds: usize,
}

/// Builds a mixed lifecycle log of about `entries` entries in `scratch/name`; with `seed`, a
/// backup of it at offset 0 there (for the catch-up figure).
fn build(scratch: &Path, name: &str, entries: u64, seed: Option<&Path>) -> std::path::PathBuf {
    let dir = scratch.join(name);
    let start = Instant::now();
    let written = lifecycle::build_mixed_log_seeded(&dir, MixSpec::sized(entries), seed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "built a mixed lifecycle log of {written} entries in {secs:.1} s ({:.0} entries/s, \
         durability none)",
        written as f64 / secs
    );
    dir
}

/// Iterate + decode and rebuild rates (entries/s) of the workspace at `dir`, best of `rounds`.
fn rebuild_rates(dir: &Path, rounds: usize) -> (f64, f64) {
    let (mut iterate, mut rebuild) = (0f64, 0f64);
    let mut entries = 0;
    for _ in 0..rounds {
        let (n, secs) = lifecycle::iterate_and_decode(dir);
        iterate = iterate.max(n as f64 / secs);
        let (m, secs) = lifecycle::rebuild(dir);
        assert_eq!(n, m, "rebuild replays the whole log");
        rebuild = rebuild.max(m as f64 / secs);
        entries = n;
    }
    println!(
        "lifecycle log of {entries} entries: iterate + decode {iterate:.0} entries/s, \
         rebuild {rebuild:.0} entries/s: {:.2} (target ≥ 0.5)",
        rebuild / iterate
    );
    (iterate, rebuild)
}

/// Median open + close times (seconds) of the workspaces at `big` and `small`, interleaved:
/// `Workspace::open` + `close` (the ratio's figure) and `Store::open` + drop.
fn open_times(big: &Path, small: &Path, opens: usize) -> (f64, f64) {
    let rt = cairn_benches::runtime();
    // The first open replays the WAL left by the build (and flushes it): not what is measured.
    for dir in [big, small] {
        lifecycle::workspace_open_close(&rt, dir);
    }
    let (mut ws_big, mut ws_small, mut st_big, mut st_small) = (vec![], vec![], vec![], vec![]);
    for _ in 0..opens {
        ws_big.push(lifecycle::workspace_open_close(&rt, big).as_secs_f64());
        ws_small.push(lifecycle::workspace_open_close(&rt, small).as_secs_f64());
        st_big.push(lifecycle::store_open_close(big).as_secs_f64());
        st_small.push(lifecycle::store_open_close(small).as_secs_f64());
    }
    let entries = |dir: &Path| lifecycle::open(dir, Durability::None).applied();
    let (n_big, n_small) = (entries(big), entries(small));
    let (ws_big, ws_small) = (median(ws_big), median(ws_small));
    let (st_big, st_small) = (median(st_big), median(st_small));
    println!(
        "open + close, median of {opens}: workspace of {n_big} entries {:.1} ms, of {n_small} \
         entries {:.1} ms: {:.2} (lower is better, target ≤ 2); Store::open + drop alone: \
         {:.1} ms vs {:.1} ms",
        ws_big * 1e3,
        ws_small * 1e3,
        ws_big / ws_small,
        st_big * 1e3,
        st_small * 1e3
    );
    (ws_big, ws_small)
}

/// A mirror provisioned at offset 0 (`seed`) catching up the workspace at `big` from an
/// in-process leader over loopback; returns its rate ÷ `rebuild` (entries/s).
fn catchup_figure(big: &Path, seed: &Path, rebuild: f64) -> f64 {
    let c = replication::catchup(big, seed, Durability::Sync);
    let rate = c.entries as f64 / c.secs;
    println!(
        "catchup: a mirror applied {} entries from offset 0 in {:.1} s ({rate:.0} entries/s) vs \
         rebuild {rebuild:.0} entries/s: {:.2} (target ≥ 0.5); mirror commits: {}",
        c.entries,
        c.secs,
        rate / rebuild,
        c.commits.describe()
    );
    rate / rebuild
}

/// Paced writes on a leader with two mirrors; prints the lag percentiles.
fn lag_figure(scratch: &Path, duration: Duration) -> replication::Lag {
    const RATE: u64 = 1_000;
    let lag = replication::lag(&scratch.join("lag"), 2, RATE, duration);
    println!(
        "lag: {} writes in {:.1} s ({:.0}/s paced at {RATE}/s), 2 mirrors: commit answer to \
         applied on the mirror p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms (target ≤ 10), max \
         {:.2} ms; {} of {} already applied when the writer had its answer",
        lag.writes,
        lag.secs,
        lag.writes as f64 / lag.secs,
        lag.percentile_ms(50.0),
        lag.percentile_ms(90.0),
        lag.percentile_ms(99.0),
        lag.percentile_ms(100.0),
        lag.ahead,
        lag.lags.len()
    );
    println!("  leader commits   {}", lag.leader_commits.describe());
    for (i, m) in lag.mirror_commits.iter().enumerate() {
        println!("  mirror {} commits {}", i + 1, m.describe());
    }
    lag
}

/// The kernel sync64 workload on a served leader with two mirrors ÷ without, rounds
/// alternating; returns the ratio of the medians.
fn mirrors_figure(scratch: &Path, sizes: &LogSizes) -> f64 {
    let configs = [
        (0, Placement::InProcess),
        (2, Placement::IdleProcess),
        (2, Placement::InProcess),
    ];
    let mut ops: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for r in 0..sizes.replication_rounds {
        for (c, &(mirrors, placement)) in configs.iter().enumerate() {
            let dir = scratch.join(format!("leader-{r}-{c}"));
            let run = replication::leader_with_mirrors(
                &dir,
                mirrors,
                placement,
                64,
                sizes.replication_run,
            );
            let placed = match (mirrors, placement) {
                (0, _) => "0 mirrors".to_string(),
                (n, Placement::InProcess) => format!("{n} mirrors in process"),
                (n, Placement::IdleProcess) => format!("{n} mirrors at idle priority"),
            };
            println!(
                "  round {} with {placed}: {:.0} commands/s; leader {}{}",
                r + 1,
                run.ops,
                run.commits.describe(),
                if mirrors > 0 {
                    format!(
                        "; slowest mirror {} entries behind at the end, caught up {:.2} s \
                         later; {:.0} acknowledgements/s per mirror",
                        run.behind,
                        run.drain_secs,
                        run.acks as f64 / sizes.replication_run.as_secs_f64()
                    )
                } else {
                    String::new()
                }
            );
            println!(
                "    leader process {}",
                run.cpu
                    .describe(run.ops * sizes.replication_run.as_secs_f64())
            );
            ops[c].push(run.ops);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let [without, idle, shared] = [0, 1, 2].map(|c| median(ops[c].clone()));
    println!(
        "leader_with_mirrors: kernel sync64 on a served leader with 2 mirrors streaming \
         {idle:.0} commands/s vs without {without:.0}: {:.2} (target ≥ 0.9; mirrors in child \
         processes at idle CPU priority, standing in for mirrors on other machines); with the 2 \
         mirrors in process, sharing the 2 cores: {shared:.0}, {:.2}",
        idle / without,
        shared / without
    );
    idle / without
}

/// The Drive: 10 000 small items put from 64 writers, then one migration over them; returns
/// the migration's rate ÷ the put rate (items/s).
fn drive_figure(scratch: &Path) -> f64 {
    let run = cairn_benches::drive::drive(&scratch.join("drive"), 10_000, 64);
    let ratio = run.migrate_items_per_s / run.put_items_per_s;
    println!(
        "drive: {} items put at {:.0} items/s (an add and a data put each, 64 writers, sync); \
         a type migration (fill-defaults) over them at {:.0} items/s in {} entries of one \
         commit; drive_migrate_vs_put {ratio:.2}",
        run.items, run.put_items_per_s, run.migrate_items_per_s, run.migration_entries
    );
    let _ = std::fs::remove_dir_all(scratch.join("drive"));
    ratio
}

/// Paced lifecycle commands without, then with a drive bulk load, `phase` each, in `rounds`
/// fresh workspaces (the phase without the load always comes first in its workspace, so no
/// flush or compaction the load left behind falls into it, and each round starts after a
/// `sync`, so no writeback of the one before does either); prints each round's percentiles
/// and returns the median over rounds of the p99 with the load ÷ without. A single round
/// is at the mercy of one fsync stall of the disk in either phase.
fn drive_load_figure(scratch: &Path, phase: Duration, rounds: usize) -> f64 {
    const RATE: u64 = 500;
    const WRITERS: u64 = 32;
    let mut ratios = Vec::with_capacity(rounds);
    for r in 0..rounds {
        // What the cells and rounds before wrote (the workspace the last round removed
        // included) reaches the disk before this round: an fsync commits the file system's
        // journal, which would otherwise wait for that writeback, and the phase without the
        // load, which comes first, would pay for it.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let dir = scratch.join(format!("drive-load-{r}"));
        let run = cairn_benches::drive::lifecycle_under_load(
            &dir,
            cairn_benches::drive::LoadSpec {
                rate: RATE,
                phase,
                warmup: Duration::from_secs(1),
                load_writers: WRITERS,
                data_bytes: 1024,
            },
        );
        for (name, p) in [("without", &run.quiet), ("with", &run.loaded)] {
            println!(
                "  round {} {name} the drive load: {} lifecycle commands in {:.1} s (paced at \
                 {RATE}/s): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; commits {}",
                r + 1,
                p.latencies.len(),
                p.secs,
                p.percentile_ms(50.0),
                p.percentile_ms(90.0),
                p.percentile_ms(99.0),
                p.percentile_ms(100.0),
                p.commits.describe()
            );
        }
        println!(
            "  round {}: lifecycle p99 {:.2} ms while {WRITERS} writers put drive items ({:.0} \
             items/s, an add and a 1 KiB data put each) vs {:.2} ms without: {:.2}",
            r + 1,
            run.loaded.percentile_ms(99.0),
            run.load_items_per_s(),
            run.quiet.percentile_ms(99.0),
            run.p99_ratio()
        );
        ratios.push(run.p99_ratio());
        let _ = std::fs::remove_dir_all(&dir);
    }
    let ratio = median(ratios);
    println!(
        "drive_load_lifecycle_p99: median over {rounds} rounds of the lifecycle p99 with the \
         drive load ÷ without: {ratio:.2} (target ≤ 2)"
    );
    ratio
}

/// HTTP writes sent to a mirror ÷ sent to the leader (64 clients, one mirror), rounds
/// alternating; returns the ratio of the medians.
fn forwarded_figure(scratch: &Path, sizes: &LogSizes) -> f64 {
    let (mut via, mut direct) = (vec![], vec![]);
    for r in 0..sizes.replication_rounds {
        for target in [Target::Leader, Target::Mirror] {
            let dir = scratch.join(format!("forward-{r}-{target:?}"));
            let ops = replication::forwarded(&dir, target, 64, sizes.replication_run);
            println!("  round {} to the {target:?}: {ops:.0} commands/s", r + 1);
            if target == Target::Leader {
                &mut direct
            } else {
                &mut via
            }
            .push(ops);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let (via, direct) = (median(via), median(direct));
    println!(
        "forwarded: HTTP writes from 64 clients through a mirror {via:.0} commands/s vs to the \
         leader {direct:.0}: {:.2}",
        via / direct
    );
    via / direct
}
