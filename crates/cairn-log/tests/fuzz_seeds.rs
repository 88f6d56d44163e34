//! Runs every fuzz target over its committed seed corpus (`fuzz/corpus/<target>/`), as a plain
//! test: the fuzzer and this test call the same target bodies in `cairn_log::testing`.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {} is missing: {e}", dir.display()))
        .map(|f| {
            let path = f.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 5,
        "seed corpus {} has too few seeds",
        dir.display()
    );
    out
}

#[test]
fn decode_entry_seeds() {
    for (_path, bytes) in corpus("decode_entry") {
        cairn_log::testing::fuzz_decode(&bytes);
    }
}

#[test]
fn verify_chain_seeds() {
    for (_path, bytes) in corpus("verify_chain") {
        cairn_log::testing::fuzz_chain(&bytes);
    }
}
