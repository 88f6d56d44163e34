//! Crash test: a child process appends with `Durability::Sync` from several threads and prints
//! every acknowledged offset; the parent SIGKILLs it at a random moment, reopens, and checks
//! that every acknowledged entry is there with its state, the chain verifies, and the digest
//! equals a fresh rebuild. 50 kill cycles with `CAIRN_SLOW_TESTS=1`, 4 otherwise.
//!
//! This is its own harness (`harness = false`): the same binary is the child when run with
//! `--child DIR`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use cairn_log::{codec, StateRead};
use cairn_store::testing::{crash_value, crash_writer, kill_after_acks, kv_location, KvMachine};
use cairn_store::{Options, Store};
use rand::Rng;

const CHILD_THREADS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let dir = Path::new(&args[i + 1]);
        if let Err(e) = crash_writer(dir, CHILD_THREADS, 10_000_000) {
            eprintln!("crash writer: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("crash_loop: test");
        return;
    }
    let slow = std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1");
    let cycles = if slow { 50 } else { 4 };
    println!("running 1 test");
    crash_loop(cycles);
    println!("test crash_loop ({cycles} kill cycles) ... ok");
    println!();
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn crash_loop(cycles: usize) {
    let dir = tempfile::tempdir().unwrap();
    Store::<KvMachine>::init(dir.path()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut rng = rand::rng();
    for cycle in 0..cycles {
        let target = rng.random_range(1..400usize);
        let mut child = Command::new(&exe)
            .arg("--child")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        kill_after_acks(&mut child, target, &mut |line| record(&mut acked, line))
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        check(dir.path(), &acked, cycle);
    }
    println!(
        "crash_loop: {cycles} cycles, {} acknowledged entries checked",
        acked.len()
    );
}

fn record(acked: &mut BTreeMap<u64, String>, line: &str) {
    let (offset, key) = line.trim_end().split_once(' ').expect("`<offset> <key>`");
    let previous = acked.insert(offset.parse().unwrap(), key.to_owned());
    assert!(previous.is_none(), "offset {offset} acknowledged twice");
}

fn check(dir: &Path, acked: &BTreeMap<u64, String>, cycle: usize) {
    let digest = {
        let store = Store::open(dir, KvMachine::default(), Options::default())
            .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        let view = store.read().unwrap();
        let max_acked = acked.keys().next_back().copied().unwrap_or(0);
        assert!(
            view.applied() >= max_acked,
            "cycle {cycle}: applied {} < acknowledged {max_acked}",
            view.applied()
        );
        let report = view.verify(&mut |_| {}).unwrap();
        assert_eq!(report.entries, view.applied(), "cycle {cycle}: no gap");
        let log = view.read_log(1, usize::MAX).unwrap();
        for (offset, key) in acked {
            let entry = &log[*offset as usize - 1];
            let (k, _): (String, Vec<u8>) = codec::decode_value(&entry.payload).unwrap();
            assert_eq!(
                &k, key,
                "cycle {cycle}: entry {offset} holds its acknowledged key"
            );
            let (space, state_key) = kv_location(key);
            assert_eq!(
                view.get(space, &state_key).unwrap(),
                Some(crash_value(key)),
                "cycle {cycle}: state of acknowledged key {key}"
            );
        }
        view.digest().unwrap()
    };
    Store::rebuild(dir, &KvMachine::default(), &mut |_| {}).unwrap();
    let store = Store::open(dir, KvMachine::default(), Options::default()).unwrap();
    assert_eq!(
        store.read().unwrap().digest().unwrap(),
        digest,
        "cycle {cycle}: digest equals a fresh rebuild"
    );
}
