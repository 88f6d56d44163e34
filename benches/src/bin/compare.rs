//! Side-by-side comparison: the same write workload (256-byte payloads, same concurrency, same
//! durability) against cairn's store, raw RocksDB and an SQLite events table, in one run.
//!
//! `cargo run --release -p cairn-benches --bin compare -- [--quick]`
//!
//! Each cell is the median of several rounds; rounds interleave the systems so machine noise
//! hits them alike. The last line gives cairn ÷ peer throughput ratios; the raw RocksDB peer is
//! the faster of its two shapes (writers calling RocksDB directly, or one group-commit thread).

use std::time::Duration;

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
    let quick = args.iter().any(|a| a == "--quick");
    // `--only WORKLOAD` runs one workload's cairn cell alone (for profiling); no ratios.
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let name = args.get(i + 1).map(String::as_str).unwrap_or("sync64");
        let (threads, durability) = match name {
            "sync1" => (1, Durability::Sync),
            "buffered64" => (64, Durability::Buffered),
            "none64" => (64, Durability::None),
            _ => (64, Durability::Sync),
        };
        let scratch = tempfile::tempdir().expect("scratch dir");
        let sink = CairnSink::open(&scratch.path().join("only"), durability);
        let ops = throughput(&sink, threads, Duration::from_secs(5));
        println!("cairn {name}: {ops:.0} ops/s");
        return;
    }
    let (rounds, secs) = if quick { (1, 2.0) } else { (5, 6.0) };
    let duration = Duration::from_secs_f64(secs);
    let scratch = tempfile::tempdir_in(std::env::var("CAIRN_BENCH_DIR").unwrap_or("/tmp".into()))
        .expect("scratch dir");
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
    println!(
        "{:<12} {:>14} {:>16} {:>16} {:>14} {:>8}",
        "workload", "cairn ops/s", "rocksdb-direct", "rocksdb-grouped", "sqlite ops/s", "ratio"
    );
    for case in &cases {
        let (mut cairn, mut direct, mut grouped, mut sqlite) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let durability = if case.sync {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            let run = |sink: &dyn Sink| throughput(sink, case.threads, duration);
            cairn.push(run(&CairnSink::open(&dir(), durability)));
            direct.push(run(&RawDirect::open(&dir(), case.sync)));
            grouped.push(run(&Grouped::rocksdb(&dir(), case.sync)));
            if case.name == "sync64" {
                sqlite.push(run(&Grouped::sqlite(&{
                    let d = dir();
                    std::fs::create_dir_all(&d).unwrap();
                    d
                })));
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
        results.push((case.name, cairn, raw, sqlite));
    }
    let ratio = |name: &str| {
        let (_, cairn, raw, _) = results.iter().find(|r| r.0 == name).unwrap();
        cairn / raw
    };
    let (_, cairn64, _, sqlite64) = results.iter().find(|r| r.0 == "sync64").unwrap();
    println!(
        "ratios: sync64={:.2} sync1={:.2} buffered64={:.2} sqlite_sync64={:.2}",
        ratio("sync64"),
        ratio("sync1"),
        ratio("buffered64"),
        cairn64 / sqlite64.expect("sqlite ran in sync64")
    );
}
