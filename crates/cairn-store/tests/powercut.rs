//! Power-cut test: the crash test's writer on a file system that loses what was not fsynced.
//!
//! SIGKILL keeps the page cache, so `crash.rs` passes even with `Durability::None`. Here the
//! workspace lives on `cairn-faultfs`, which keeps every unfsynced byte in memory: a child
//! process appends under `Durability::Sync` from several threads and prints every acknowledged
//! offset; the parent SIGKILLs it, cuts power (every unfsynced byte is dropped, or on odd
//! cycles a random prefix of each file's unfsynced writes is kept: a torn tail), unmounts,
//! remounts, reopens, and checks that every acknowledged entry is there with its key and state,
//! the chain verifies, and the digest equals a fresh rebuild.
//!
//! The negative control runs the same loop under `Durability::None` and requires the checker
//! to find lost acknowledged entries: the test can fail, and would catch a missing fsync.
//!
//! Metadata (file creation, rename, unlink) is durable at once on this file system, so a
//! missing directory fsync is not caught here.
//!
//! This is its own harness (`harness = false`): the same binary is the child when run with
//! `--child DIR sync|none`. Without FUSE the tests are reported as ignored (failed under
//! `CI=true`); see `cairn_faultfs::harness`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_faultfs::harness::{self, Test};
use cairn_faultfs::{Cut, FaultFs};
use cairn_log::{codec, StateRead};
use cairn_store::testing::{
    crash_value, crash_writer_with, kill_after_acks, kv_location, KvMachine,
};
use cairn_store::{Durability, Options, Store};
use rand::Rng;

const CHILD_THREADS: usize = 4;
/// The child is killed after a random number of acknowledgements up to this.
const ACKS_PER_CYCLE_MAX: usize = 400;
/// Cycles on one workspace before the loop starts a fresh one: each check reads the whole log
/// and rebuilds it, so this keeps a cycle's cost from growing with the run.
const CYCLES_PER_WORKSPACE_MAX: usize = 25;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let dir = Path::new(&args[i + 1]);
        let durability = match args.get(i + 2).map(String::as_str) {
            Some("none") => Durability::None,
            _ => Durability::Sync,
        };
        if let Err(e) = crash_writer_with(dir, CHILD_THREADS, 10_000_000, durability) {
            eprintln!("powercut writer: {e}");
            std::process::exit(1);
        }
        return;
    }
    harness::main(
        "powercut",
        &[
            Test {
                name: "powercut_sync_loses_nothing_acknowledged",
                run: sync_loses_nothing_acknowledged,
            },
            Test {
                name: "powercut_control_none_loses_acknowledged",
                run: control_none_loses_acknowledged,
            },
        ],
    );
}

fn slow() -> bool {
    std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1")
}

/// How many cycles a loop runs: `cycles`, or fewer once `time` has passed.
#[derive(Clone, Copy, Debug)]
struct Budget {
    cycles: usize,
    time: Duration,
}

fn sync_loses_nothing_acknowledged() {
    let budget = if slow() {
        Budget {
            cycles: 200,
            time: Duration::from_secs(90),
        }
    } else {
        Budget {
            cycles: 12,
            time: Duration::from_secs(30),
        }
    };
    let cycles = power_cut_loop(Durability::Sync, budget);
    let mut acked = 0;
    for c in &cycles {
        assert!(
            c.problems.is_empty(),
            "cycle {} ({:?}): acknowledged under Sync yet not intact after the cut:\n{}",
            c.index,
            c.cut,
            list(&c.problems)
        );
        acked += c.acked;
    }
    let torn_kept: u64 = cycles.iter().map(|c| c.bytes_kept).sum();
    println!(
        "powercut: Sync: {} cycles, {acked} acknowledged entries, all intact after every cut \
         (torn cuts kept {torn_kept} unsynced bytes)",
        cycles.len()
    );
}

fn control_none_loses_acknowledged() {
    let budget = if slow() {
        Budget {
            cycles: 20,
            time: Duration::from_secs(20),
        }
    } else {
        Budget {
            cycles: 4,
            time: Duration::from_secs(15),
        }
    };
    let cycles = power_cut_loop(Durability::None, budget);
    let mut lost_total = 0;
    for c in &cycles {
        let lost = c.lost();
        let other: Vec<&Problem> = c
            .problems
            .iter()
            .filter(|p| !matches!(p, Problem::Lost { .. }))
            .collect();
        println!(
            "powercut: control cycle {} ({:?}): {lost} of {} acknowledged entries lost, {} other problems",
            c.index,
            c.cut,
            c.acked,
            other.len()
        );
        if c.cut == Cut::DropAll {
            assert!(
                lost > 0,
                "cycle {}: Durability::None lost nothing at a power cut, so the test cannot \
                 tell a missing fsync",
                c.index
            );
        }
        lost_total += lost;
    }
    assert!(lost_total > 0);
    println!(
        "powercut: control: Durability::None lost {lost_total} acknowledged entries in {} cycles",
        cycles.len()
    );
}

/// What one kill + power cut + reopen found.
#[derive(Debug)]
struct CycleResult {
    index: usize,
    cut: Cut,
    /// Entries acknowledged in this cycle.
    acked: usize,
    bytes_kept: u64,
    problems: Vec<Problem>,
}

impl CycleResult {
    fn lost(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| matches!(p, Problem::Lost { .. }))
            .count()
    }
}

/// Runs kill + power-cut cycles on a workspace on a fault file system (a fresh one every
/// `CYCLES_PER_WORKSPACE_MAX` cycles). Under `Sync` every cycle checks every entry acknowledged
/// on the workspace so far; otherwise each cycle checks its own (lost offsets are handed out
/// again).
fn power_cut_loop(durability: Durability, budget: Budget) -> Vec<CycleResult> {
    let backing = tempfile::tempdir().unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    let mut mounted = Some(FaultFs::mount(backing.path(), mountpoint.path()).unwrap());
    let mut ws = mountpoint.path().join("ws");
    let exe = std::env::current_exe().unwrap();
    let mode = match durability {
        Durability::None => "none",
        _ => "sync",
    };
    let cumulative = durability == Durability::Sync;
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut results = Vec::new();
    let mut rng = rand::rng();
    let started = Instant::now();
    for index in 0..budget.cycles {
        if index > 0 && started.elapsed() > budget.time {
            println!(
                "powercut: time budget of {:?} reached after {index} cycles",
                budget.time
            );
            break;
        }
        if index % CYCLES_PER_WORKSPACE_MAX == 0 {
            ws = mountpoint
                .path()
                .join(format!("ws{}", index / CYCLES_PER_WORKSPACE_MAX));
            Store::<KvMachine>::init(&ws).unwrap();
            acked.clear();
        } else if !cumulative {
            acked.clear();
        }
        let target = rng.random_range(1..=ACKS_PER_CYCLE_MAX);
        let mut child = KillOnDrop(
            Command::new(&exe)
                .arg("--child")
                .arg(&ws)
                .arg(mode)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let child = &mut child.0;
        let seen = kill_after_acks(child, target, &mut |line| record(&mut acked, line))
            .unwrap_or_else(|e| panic!("cycle {index}: {e}"));
        let cut = if index % 2 == 1 {
            Cut::Torn { seed: rng.random() }
        } else {
            Cut::DropAll
        };
        let fs = mounted.take().unwrap();
        let stats = fs.stats();
        let pending = fs.pending();
        let report = fs.power_cut(cut).unwrap();
        mounted = Some(fs.remount().unwrap());
        let problems = check(&ws, &acked);
        let unsynced: Vec<String> = pending
            .iter()
            .map(|p| {
                let name = p.path.as_ref().map_or("(unlinked)".into(), |p| {
                    p.file_name().unwrap_or_default().to_string_lossy()
                });
                format!("{name} {}", p.bytes)
            })
            .collect();
        println!(
            "powercut: {mode} cycle {index}: {seen} acknowledged, {} fsyncs; {cut:?} dropped \
             {} bytes, kept {} (unsynced: {}); {} problems",
            stats.fsyncs,
            report.bytes_dropped,
            report.bytes_kept,
            unsynced.join(", "),
            problems.len()
        );
        results.push(CycleResult {
            index,
            cut,
            acked: seen,
            bytes_kept: report.bytes_kept,
            problems,
        });
    }
    if let Some(fs) = mounted.take() {
        fs.unmount().unwrap();
    }
    println!(
        "powercut: {mode}: {} cycles in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    results
}

/// A child process that is killed if the test panics before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn record(acked: &mut BTreeMap<u64, String>, line: &str) {
    let (offset, key) = line.trim_end().split_once(' ').expect("`<offset> <key>`");
    let previous = acked.insert(offset.parse().unwrap(), key.to_owned());
    assert!(previous.is_none(), "offset {offset} acknowledged twice");
}

/// Something wrong with the reopened workspace.
#[derive(Debug)]
enum Problem {
    /// The workspace did not open.
    Reopen(String),
    /// An acknowledged entry is not in the log.
    Lost { offset: u64, key: String },
    /// The entry at an acknowledged offset is another one.
    WrongEntry {
        offset: u64,
        acked: String,
        found: String,
    },
    /// An acknowledged key's state is missing or wrong.
    WrongState { key: String },
    /// The log does not verify, or cannot be read.
    Chain(String),
    /// The digest differs from a fresh rebuild's, or the rebuild failed.
    Digest(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Reopen(e) => write!(f, "reopen failed: {e}"),
            Problem::Lost { offset, key } => {
                write!(f, "acknowledged entry {offset} ({key}) is lost")
            }
            Problem::WrongEntry {
                offset,
                acked,
                found,
            } => write!(f, "entry {offset} holds {found}, acknowledged {acked}"),
            Problem::WrongState { key } => write!(f, "state of acknowledged key {key} is wrong"),
            Problem::Chain(e) => write!(f, "chain: {e}"),
            Problem::Digest(e) => write!(f, "digest: {e}"),
        }
    }
}

fn list(problems: &[Problem]) -> String {
    let shown: Vec<String> = problems.iter().take(20).map(|p| format!("  {p}")).collect();
    let more = problems.len().saturating_sub(shown.len());
    let tail = if more > 0 {
        format!("\n  ... and {more} more")
    } else {
        String::new()
    };
    format!("{}{tail}", shown.join("\n"))
}

/// Reopens the workspace and lists what is wrong: acknowledged entries missing or different,
/// their state, the chain, and the digest against a fresh rebuild.
fn check(ws: &Path, acked: &BTreeMap<u64, String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let digest = {
        let store = match Store::open(ws, KvMachine::default(), Options::default()) {
            Ok(store) => store,
            Err(e) => return vec![Problem::Reopen(e.to_string())],
        };
        let view = match store.read() {
            Ok(view) => view,
            Err(e) => return vec![Problem::Reopen(format!("read view: {e}"))],
        };
        let applied = view.applied();
        match view.verify(&mut |_| {}) {
            Ok(report) if report.entries == applied => {}
            Ok(report) => problems.push(Problem::Chain(format!(
                "verified {} entries, applied {applied}",
                report.entries
            ))),
            Err(e) => problems.push(Problem::Chain(e.to_string())),
        }
        let log = view.read_log(1, usize::MAX).unwrap_or_else(|e| {
            problems.push(Problem::Chain(format!("read log: {e}")));
            Vec::new()
        });
        for (&offset, key) in acked {
            let Some(entry) = log.get(offset as usize - 1) else {
                problems.push(Problem::Lost {
                    offset,
                    key: key.clone(),
                });
                continue;
            };
            let found = codec::decode_value::<(String, Vec<u8>)>(&entry.payload)
                .map_or_else(|e| format!("undecodable payload ({e})"), |(k, _)| k);
            if &found != key {
                problems.push(Problem::WrongEntry {
                    offset,
                    acked: key.clone(),
                    found,
                });
                continue;
            }
            let (space, state_key) = kv_location(key);
            if view.get(space, &state_key).ok().flatten() != Some(crash_value(key)) {
                problems.push(Problem::WrongState { key: key.clone() });
            }
        }
        match view.digest() {
            Ok(digest) => digest,
            Err(e) => {
                problems.push(Problem::Digest(e.to_string()));
                return problems;
            }
        }
    };
    if let Err(e) = Store::rebuild(ws, &KvMachine::default(), &mut |_| {}) {
        problems.push(Problem::Digest(format!("rebuild failed: {e}")));
        return problems;
    }
    let rebuilt = Store::open(ws, KvMachine::default(), Options::default())
        .map_err(|e| e.to_string())
        .and_then(|s| s.read().and_then(|v| v.digest()).map_err(|e| e.to_string()));
    match rebuilt {
        Ok(d) if d == digest => {}
        Ok(_) => problems.push(Problem::Digest("differs from a fresh rebuild".into())),
        Err(e) => problems.push(Problem::Digest(format!("after rebuild: {e}"))),
    }
    problems
}
