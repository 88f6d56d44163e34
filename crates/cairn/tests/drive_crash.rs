//! SIGKILL during a large type migration (issue 13): after reopen, either all of it or none of
//! it is there.
//!
//! A template workspace holds `ITEMS` items of type `doc`, each with `VERSIONS` data versions
//! of about `BODY_BYTES` bytes, so that the `fill-defaults` migration to version 2 rewrites
//! several times [`DRIVE_MIGRATION_CHUNK_BYTES_MAX`] and is recorded in several
//! `drive.migrated` entries. Each cycle backs the template up into a fresh directory, starts a
//! child process (this test binary again, chosen by [`CHILD_ENV`]) that opens it under
//! `Durability::Sync`, says `ready` on stderr and submits the type's `SetType` to version 2
//! with `fill-defaults`, then says `acked` when the commit is answered. The parent SIGKILLs
//! it: in the first cycle after its answer (which times the command and its commit's write),
//! in the second the moment it is ready, then in turn after a random delay up to 1.5 times the
//! command's time, the moment the commit's first bytes show in the WAL, or a random delay up
//! to the commit's write time after that; so kills land before, during (mid-write: a torn WAL
//! tail; mid-fsync; before the answer) and after the commit (`--nocapture` prints each cycle).
//! After reopening it checks that either the type is at version 2 and every data version of
//! every item has the default (and the log grew by the type and its chunks, at least two), or
//! the type is at version 1, no data version has it and the log did not grow; that an
//! answered migration is there; that the chain verifies; and that the state digest equals a
//! fresh rebuild's. A migration committed in two commits would show, in some cycle, as a state
//! that is neither (some data versions migrated, others not).
//!
//! Over the run, both outcomes must have been seen, so the test cannot pass by killing always
//! too early or always too late. 6 cycles, 20 with `CAIRN_SLOW_TESTS=1`.
//!
//! The file keeps libtest's harness: its one test is also the child (run again, filtered to
//! itself, with [`CHILD_ENV`] set), so no test passes without checking anything.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn::kernel::drive::{
    self, DataVersion, DriveActor, DrivePath, DRIVE_MIGRATION_CHUNK_BYTES_MAX, FILL_DEFAULTS,
};
use cairn::kernel::event::kinds;
use cairn::store::Durability;
use cairn::{Options, Workspace};
use common::*;
use rand::Rng;
use serde_json::json;

/// The environment variable that makes this binary the child: the workspace to migrate.
const CHILD_ENV: &str = "CAIRN_DRIVE_CRASH_CHILD";
/// The one test of this file (the child runs it again, filtered to it).
const TEST_NAME: &str = "sigkill_during_a_large_migration_leaves_all_of_it_or_none";
/// What the child's protocol lines on stderr start with.
const SAY: &str = "drive-crash-child:";

const TYPE: &str = "doc";
const ITEMS: usize = 400;
const VERSIONS: u32 = 2;
const BODY_BYTES: usize = 4_000;
/// The property version 2 adds, and its default.
const TAG: &str = "tag";
const TAG_DEFAULT: &str = "filled";

fn schema(version: u32) -> serde_json::Value {
    if version == 1 {
        json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}, "body": {"type": "string"}},
            "required": ["n", "body"],
        })
    } else {
        json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "body": {"type": "string"},
                TAG: {"type": "string", "default": TAG_DEFAULT},
            },
            "required": ["n", "body", TAG],
        })
    }
}

fn item_path(i: usize) -> DrivePath {
    DrivePath::parse(&format!("docs/d{i:04}")).unwrap()
}

fn version(v: u32) -> DataVersion {
    DataVersion {
        major: 1,
        minor: 0,
        patch: v,
    }
}

/// The data of item `i` at data version `v` before the migration.
fn data(i: usize, v: u32) -> serde_json::Value {
    let letter = (b'a' + ((i + v as usize) % 26) as u8) as char;
    json!({"n": i * 10 + v as usize, "body": letter.to_string().repeat(BODY_BYTES)})
}

fn admin() -> DriveActor {
    DriveActor::admin("drive-crash")
}

#[test]
fn sigkill_during_a_large_migration_leaves_all_of_it_or_none() {
    if let Ok(data) = std::env::var(CHILD_ENV) {
        child(Path::new(&data));
    }
    let slow = std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1");
    let cycles = if slow { 20 } else { 6 };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(crash_loop(cycles));
}

/// The child: opens the workspace, says `ready`, migrates, says `acked`, waits to be killed.
fn child(data: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = Options::default();
        opts.store.durability = Durability::Sync;
        let ws = Workspace::open(data, opts).await.expect("child: open");
        eprintln!("{SAY} ready");
        let c = ws
            .drive_set_type(&admin(), TYPE, 2, &schema(2), Some(FILL_DEFAULTS))
            .await
            .expect("child: the migration");
        // The time the writer spent writing (and fsyncing) the commit: the only one.
        let write_us = ws.store().stats().write_ns / 1_000;
        eprintln!(
            "{SAY} acked {} {} {write_us}",
            c.offsets.start, c.offsets.end
        );
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
    // Never reached in a passing run: the parent kills the child long before.
    std::process::exit(3)
}

/// The child's `acked`: the migration's offsets (start, end), and how long the writer took
/// to write its commit.
#[derive(Clone, Copy, Debug)]
struct Acked {
    offsets: (u64, u64),
    write: Duration,
}

/// What the child says on stderr, as heard by the parent.
struct Talk {
    lines: mpsc::Receiver<String>,
    /// What it said with `acked`, once it did.
    acked: Option<Acked>,
    /// Lines that were not the protocol's (a panic's message, say).
    other: Vec<String>,
}

impl Talk {
    /// Takes one line; the protocol word it was, if any.
    fn hear(&mut self, line: String) -> Option<&'static str> {
        let Some(rest) = line.strip_prefix(SAY) else {
            self.other.push(line);
            return None;
        };
        match rest.trim().split(' ').collect::<Vec<_>>()[..] {
            ["ready"] => Some("ready"),
            ["acked", start, end, write_us] => {
                self.acked = Some(Acked {
                    offsets: (start.parse().unwrap(), end.parse().unwrap()),
                    write: Duration::from_micros(write_us.parse().unwrap()),
                });
                Some("acked")
            }
            _ => panic!("the child said {line:?}"),
        }
    }

    /// Waits (bounded) until the child says `word`; when it did.
    fn wait_for(&mut self, word: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if self.hear(line) == Some(word) {
                        return Instant::now();
                    }
                }
                Err(e) => panic!(
                    "the child never said {word} ({e:?}); it said:\n{}",
                    self.other.join("\n")
                ),
            }
        }
    }
}

/// A child process that is killed if the parent gives up on it (a failed assertion).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When a cycle kills its child.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// Once the child has said `acked`.
    Answered,
    /// This long after it said `ready` (zero: at once).
    AfterReady(Duration),
    /// This long after the commit's first bytes are seen in the WAL (zero: at once): while
    /// it is written, fsynced or applied.
    AfterWal(Duration),
}

/// How a cycle ended, as found after reopening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The type at version 1, nothing migrated. `torn`: part of the commit was in the WAL (the
    /// kill landed while it was being written).
    None { torn: bool },
    /// The type at version 2, everything migrated. `answered`: the child had its answer.
    All { answered: bool },
}

async fn crash_loop(cycles: usize) {
    let scratch = Scratch::new();
    let template = build_template(&scratch).await;
    let head = template.applied();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    // From the first cycle: from `ready` to `acked`, and the commit's write (at its end).
    let mut timing = None::<(Duration, Duration)>;
    let mut outcomes = Vec::new();
    for cycle in 0..cycles {
        let dir = scratch.dir.path().join(format!("cycle{cycle}"));
        template.store().backup(&dir).unwrap();
        let kill_at = match (cycle, timing) {
            (0, _) | (_, None) => KillAt::Answered,
            (1, _) => KillAt::AfterReady(Duration::ZERO),
            // Anywhere in the command, or in its commit: at its first bytes in the WAL, or
            // up to the time its write took in the first cycle after them.
            (c, Some((all, _))) if c % 4 == 2 => {
                KillAt::AfterReady(all.mul_f64(rng.random_range(0.0..1.5)))
            }
            (c, _) if c % 4 == 3 => KillAt::AfterWal(Duration::ZERO),
            (_, Some((_, write))) => KillAt::AfterWal(write.mul_f64(rng.random_range(0.0..1.0))),
        };
        let (acked, took) = tokio::task::block_in_place(|| run_child(&exe, &dir, kill_at));
        if let (KillAt::Answered, Some(t), Some(a)) = (kill_at, took, acked) {
            timing = Some((t, a.write));
        }
        let torn = wal_bytes(&dir) > 0;
        let outcome = check(&dir, head, acked, torn, cycle).await;
        println!("cycle {cycle}: killed {kill_at:?}: {outcome:?}");
        outcomes.push(outcome);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    template.close().await;
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    let (before, torn) = (
        count(Outcome::None { torn: false }),
        count(Outcome::None { torn: true }),
    );
    let (unanswered, answered) = (
        count(Outcome::All { answered: false }),
        count(Outcome::All { answered: true }),
    );
    let (all, write) = timing.unwrap_or_default();
    println!(
        "{cycles} cycles (first cycle: ready to answer {all:?}, commit write {write:?}): none \
         of it {}: {before} killed before the commit was written, {torn} while it was; all of \
         it {}: {unanswered} killed after the commit but before its answer, {answered} after \
         its answer",
        before + torn,
        unanswered + answered,
    );
    assert!(
        before + torn > 0 && unanswered + answered > 0,
        "over the run, kills must land both before and after the commit"
    );
}

/// Bytes in the WAL files of the workspace at `dir` (a backup starts with none, and the child
/// writes only the migration's commit): with some there and no commit found after reopening,
/// the kill landed while the commit was being written.
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("db"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The template: `ITEMS` items of the type at version 1 with `VERSIONS` data versions each,
/// held open to be backed up for each cycle.
async fn build_template(scratch: &Scratch) -> Workspace {
    let mut opts = Options::default();
    // The setup is not what is tested: the children migrate under `Sync`.
    opts.store.durability = Durability::None;
    let ws = scratch.open_with(opts).await;
    ws.drive_set_type(&admin(), TYPE, 1, &schema(1), None)
        .await
        .unwrap();
    ws.drive_add(&admin(), &DrivePath::parse("docs").unwrap(), None)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    const WRITERS: usize = 8;
    for w in 0..WRITERS {
        let ws = ws.clone();
        tasks.spawn(async move {
            for i in (w..ITEMS).step_by(WRITERS) {
                let p = item_path(i);
                ws.drive_add(&admin(), &p, Some(TYPE)).await.unwrap();
                for v in 0..VERSIONS {
                    ws.drive_put(&admin(), &p, Some(version(v)), &data(i, v))
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let rewritten = ITEMS * VERSIONS as usize * (BODY_BYTES + 40);
    assert!(
        rewritten > 2 * DRIVE_MIGRATION_CHUNK_BYTES_MAX,
        "the migration spans several chunks: {rewritten} bytes"
    );
    ws
}

/// Runs one child on `dir` and kills it at `kill_at`; what it said (`acked`, if it was
/// answered before it died) and the time from its `ready` to its `acked` when it was killed
/// after both.
fn run_child(exe: &Path, dir: &Path, kill_at: KillAt) -> (Option<Acked>, Option<Duration>) {
    let mut child = Killed(
        Command::new(exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = mpsc::channel::<String>();
    let stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut talk = Talk {
        lines,
        acked: None,
        other: Vec::new(),
    };
    let ready = talk.wait_for("ready");
    let took = match kill_at {
        KillAt::Answered => Some(talk.wait_for("acked") - ready),
        KillAt::AfterReady(delay) => {
            std::thread::sleep(delay);
            None
        }
        KillAt::AfterWal(delay) => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while wal_bytes(dir) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the child never wrote its commit"
                );
                std::thread::sleep(Duration::from_micros(50));
            }
            std::thread::sleep(delay);
            None
        }
    };
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    reader.join().unwrap();
    // What it said before it died (an `acked` written just before the kill counts).
    while let Ok(line) = talk.lines.try_recv() {
        talk.hear(line);
    }
    assert!(
        !talk.other.iter().any(|l| l.contains("panicked")),
        "the child failed:\n{}",
        talk.other.join("\n")
    );
    (talk.acked, took)
}

/// Reopens the workspace at `dir` (`head`: the template's) and checks that the migration is
/// all there or not at all (`acked`: what the child was answered; `torn`: whether the WAL held
/// anything at the kill, to tell the outcome).
async fn check(dir: &Path, head: u64, acked: Option<Acked>, torn: bool, cycle: usize) -> Outcome {
    let ws = Workspace::open(dir, Options::default())
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen: {e}"));
    let view = ws.view().unwrap();
    let ty = drive::drive_type(&view, TYPE).unwrap().expect("the type");
    assert_eq!(
        drive::items_of_type(&view, TYPE).unwrap(),
        (0..ITEMS).map(item_path).collect::<Vec<_>>(),
        "cycle {cycle}: the type's items"
    );
    let (mut migrated, mut kept) = (Vec::new(), Vec::new());
    for i in 0..ITEMS {
        let p = item_path(i);
        let versions = drive::versions(&view, &p).unwrap();
        assert_eq!(
            versions,
            (0..VERSIONS).map(version).collect::<Vec<_>>(),
            "cycle {cycle}: data versions of {p}"
        );
        for v in 0..VERSIONS {
            let text = drive::data(&view, &p, version(v)).unwrap().unwrap();
            let got: serde_json::Value = serde_json::from_str(&text).unwrap();
            let before = data(i, v);
            let mut after = before.clone();
            after[TAG] = json!(TAG_DEFAULT);
            if got == after {
                migrated.push((i, v));
            } else if got == before {
                kept.push((i, v));
            } else {
                panic!("cycle {cycle}: {p} {} holds {got}", version(v));
            }
        }
    }
    let total = ITEMS * VERSIONS as usize;
    assert!(
        view.applied() >= head,
        "cycle {cycle}: the template's entries"
    );
    let log = if view.applied() > head {
        view.read_log(head + 1, usize::MAX).unwrap()
    } else {
        Vec::new()
    };
    let outcome = match (ty.version, migrated.len(), kept.len()) {
        (1, 0, n) if n == total => {
            assert_eq!(ty.schema, schema(1).to_string(), "cycle {cycle}");
            assert!(
                log.is_empty(),
                "cycle {cycle}: nothing was written: {:?}",
                log.iter().map(|e| &e.kind).collect::<Vec<_>>()
            );
            Outcome::None { torn }
        }
        (2, n, 0) if n == total => {
            assert_eq!(
                ty.migration.as_deref(),
                Some(FILL_DEFAULTS),
                "cycle {cycle}"
            );
            let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
            assert!(
                kinds.len() >= 3
                    && kinds[0] == kinds::DRIVE_TYPE_SET
                    && kinds[1..].iter().all(|k| *k == kinds::DRIVE_MIGRATED),
                "cycle {cycle}: the log grew by the type and at least two chunks: {kinds:?}"
            );
            if let Some(a) = acked {
                assert_eq!(
                    a.offsets,
                    (head + 1, head + 1 + log.len() as u64),
                    "cycle {cycle}: the answered offsets are the ones found"
                );
            }
            Outcome::All {
                answered: acked.is_some(),
            }
        }
        (v, m, k) => panic!(
            "cycle {cycle}: a partial migration: the type at version {v}, {m} of {total} data \
             versions migrated, {k} not (first migrated {:?}, first not {:?}); the log grew by \
             {:?}",
            migrated.first(),
            kept.first(),
            log.iter().map(|e| &e.kind).collect::<Vec<_>>()
        ),
    };
    assert!(
        acked.is_none() || matches!(outcome, Outcome::All { .. }),
        "cycle {cycle}: an acknowledged migration is lost"
    );
    let report = view.verify(&mut |_| {}).unwrap();
    assert_eq!(report.entries, view.applied(), "cycle {cycle}: the chain");
    drop(view);
    assert_replay_matches(&ws);
    ws.close().await;
    outcome
}
