//! Criterion benches of the store: append with 1/8/64 writers under `sync` and `buffered`,
//! range reads of the log, and the state digest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_benches::{event, meta, CairnSink};
use cairn_store::testing::{KvCommand, KvMachine};
use cairn_store::{Durability, Options, Store};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for durability in [Durability::Sync, Durability::Buffered] {
        for writers in [1usize, 8, 64] {
            let dir = tempfile::tempdir().unwrap();
            let sink = Arc::new(CairnSink::open(&dir.path().join("ws"), durability));
            group.throughput(Throughput::Elements(writers as u64));
            let id = BenchmarkId::new(format!("{durability:?}").to_lowercase(), writers);
            // One iteration = one append by each of `writers` concurrent threads.
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..writers {
                            let sink = Arc::clone(&sink);
                            s.spawn(move || {
                                for i in 0..iters {
                                    let n = (t as u64) << 40 | i;
                                    sink.store.execute(meta(n), event(n)).unwrap();
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

fn kv_store(entries: u64) -> (tempfile::TempDir, Store<KvMachine>) {
    let dir = tempfile::tempdir().unwrap();
    Store::<KvMachine>::init(dir.path()).unwrap();
    let opts = Options {
        durability: Durability::None,
        ..Options::default()
    };
    let store = Store::open(dir.path(), KvMachine::default(), opts).unwrap();
    let tickets: Vec<_> = (0..entries)
        .map(|i| {
            let key = format!("key-{:06}", i % 10_000);
            store.submit(
                meta(i),
                KvCommand::Set {
                    key,
                    value: vec![i as u8; 200],
                },
            )
        })
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
    (dir, store)
}

fn reads(c: &mut Criterion) {
    let (_dir, store) = kv_store(100_000);
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("log_range_1000", |b| {
        let view = store.read().unwrap();
        let mut from = 1;
        b.iter(|| {
            let entries = view.read_log(from, 1000).unwrap();
            from = if from > 98_000 { 1 } else { from + 1000 };
            entries.len()
        })
    });
    group.throughput(Throughput::Elements(10_000));
    group.sample_size(10);
    group.bench_function("digest_10k_keys", |b| {
        let view = store.read().unwrap();
        b.iter(|| view.digest().unwrap())
    });
    group.finish();
}

criterion_group!(benches, append, reads);
criterion_main!(benches);
