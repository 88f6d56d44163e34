//! The benchmarks' workload builders, run small: a change in the kernel that the bench's
//! hand-driven changes do not follow (a new uninstall task, say) fails here, in `just test`,
//! instead of in the next `just bench`.

use std::time::Duration;

use cairn_benches::lifecycle::{build_mixed_log, MixSpec};

#[test]
fn the_mixed_lifecycle_log_builds_and_the_drive_workloads_run() {
    let dir = tempfile::tempdir().unwrap();
    let entries = build_mixed_log(&dir.path().join("mixed"), MixSpec::sized(3_000));
    assert!(entries >= 3_000, "{entries} entries");
    let run = cairn_benches::drive::drive(&dir.path().join("drive"), 300, 4);
    assert_eq!(run.items, 300);
    assert_eq!(
        run.migration_entries, 2,
        "the type and one chunk of rewritten data"
    );
    let load = cairn_benches::drive::lifecycle_under_load(
        &dir.path().join("drive-load"),
        cairn_benches::drive::LoadSpec {
            rate: 200,
            phase: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            load_writers: 4,
            data_bytes: 1024,
        },
    );
    assert_eq!(
        load.quiet.latencies.len(),
        100,
        "every paced command answered"
    );
    assert_eq!(
        load.loaded.latencies.len(),
        100,
        "every paced command answered"
    );
    assert!(
        load.load_items > 0,
        "the drive load ran during the loaded phase"
    );
}
