//! The benchmarks' workload builders, run small: a change in the kernel that the bench's
//! hand-driven changes do not follow (a new uninstall task, say) fails here, in `just test`,
//! instead of in the next `just bench`.

use cairn_benches::lifecycle::{build_mixed_log, MixSpec};

#[test]
fn the_mixed_lifecycle_log_builds_and_the_drive_workload_runs() {
    let dir = tempfile::tempdir().unwrap();
    let entries = build_mixed_log(&dir.path().join("mixed"), MixSpec::sized(3_000));
    assert!(entries >= 3_000, "{entries} entries");
    let run = cairn_benches::drive::drive(&dir.path().join("drive"), 300, 4);
    assert_eq!(run.items, 300);
    assert_eq!(
        run.migration_entries, 2,
        "the type and one chunk of rewritten data"
    );
}
