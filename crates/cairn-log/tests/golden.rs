//! Golden files: committed encoded entries and their hashes that every build must decode to the
//! same values. Never edit a golden file to make this pass: a changed encoding is a new format.
//!
//! To create a golden file that does not exist yet (a new format), run with `CAIRN_BLESS=1`;
//! an existing file is never overwritten.

use std::path::PathBuf;

use cairn_log::frame::{split_frames, write_frame};
use cairn_log::{codec, EntryDraft, Hash, Head, Meta, StoredEntry};
use uuid::Uuid;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The entries of `entries-v1.frames`, spelled out field by field. Edge cases on purpose:
/// empty and binary payloads, non-ASCII actor, every option both ways, large integers.
fn v1_drafts() -> Vec<EntryDraft> {
    let meta = |actor: &str, change: Option<u128>, command: u128, key: Option<&str>| Meta {
        actor: actor.to_owned(),
        change: change.map(Uuid::from_u128),
        command: Uuid::from_u128(command),
        idempotency_key: key.map(str::to_owned),
    };
    vec![
        EntryDraft {
            epoch: 1,
            time_ms: 1_763_683_200_000,
            meta: meta(
                "admin",
                None,
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                None,
            ),
            kind: "workspace.initialized.v1".into(),
            payload: vec![],
        },
        EntryDraft {
            epoch: 1,
            time_ms: 1_763_683_200_001,
            meta: meta(
                "operator:ålesund",
                Some(0x7c1e_0000_0000_4000_8000_0000_0000_0001),
                2,
                Some("install-netmon-1"),
            ),
            kind: "package.installed.v1".into(),
            payload: b"netmon 1.2.0".to_vec(),
        },
        EntryDraft {
            epoch: 2,
            time_ms: u64::MAX,
            meta: meta("", None, u128::MAX, Some("")),
            kind: "ext.myapp:thing-1_x.v1".into(),
            payload: (0u8..=255).collect(),
        },
        EntryDraft {
            epoch: u64::MAX,
            time_ms: 0,
            meta: meta("mirror", Some(3), 4, None),
            kind: "epoch.started.v1".into(),
            payload: vec![0xff; 300],
        },
    ]
}

fn v1_entries() -> Vec<StoredEntry> {
    let mut head = Head::EMPTY;
    v1_drafts()
        .into_iter()
        .map(|d| {
            let e = d.seal(head.offset + 1, head.hash).unwrap();
            head = e.head();
            e
        })
        .collect()
}

fn bless(frames: &PathBuf, hashes: &PathBuf, entries: &[StoredEntry]) {
    let mut bytes = Vec::new();
    let mut text = String::new();
    for e in entries {
        write_frame(&codec::encode(e), &mut bytes);
        text.push_str(&format!("{} {}\n", e.offset, e.hash));
    }
    std::fs::write(frames, bytes).unwrap();
    std::fs::write(hashes, text).unwrap();
}

#[test]
fn format_v1_golden_file_decodes_to_the_same_values() {
    let frames_path = golden_dir().join("entries-v1.frames");
    let hashes_path = golden_dir().join("entries-v1.hashes");
    let expected = v1_entries();
    if !frames_path.exists() {
        assert!(
            std::env::var_os("CAIRN_BLESS").is_some(),
            "golden file {} is missing (CAIRN_BLESS=1 creates a new one)",
            frames_path.display()
        );
        bless(&frames_path, &hashes_path, &expected);
    }
    let bytes = std::fs::read(&frames_path).unwrap();
    let frames = split_frames(&bytes).unwrap();
    let decoded: Vec<StoredEntry> = frames
        .iter()
        .map(|f| codec::decode(f).expect("golden entry decodes"))
        .collect();
    assert_eq!(
        decoded, expected,
        "golden entries decode to the spelled-out values"
    );

    let hashes = std::fs::read_to_string(&hashes_path).unwrap();
    let recorded: Vec<(u64, Hash)> = hashes
        .lines()
        .map(|l| {
            let (offset, hash) = l.split_once(' ').unwrap();
            (offset.parse().unwrap(), Hash::from_hex(hash).unwrap())
        })
        .collect();
    assert_eq!(recorded.len(), decoded.len());
    for ((offset, hash), entry) in recorded.iter().zip(&decoded) {
        assert_eq!(*offset, entry.offset);
        assert_eq!(
            *hash, entry.hash,
            "stored hash of entry {offset} is the golden one"
        );
        assert_eq!(
            *hash,
            entry.compute_hash(),
            "hash of entry {offset} recomputes the same"
        );
    }
    for (frame, entry) in frames.iter().zip(&expected) {
        assert_eq!(
            *frame,
            codec::encode(entry),
            "encoding of entry {} is stable",
            entry.offset
        );
    }
}
