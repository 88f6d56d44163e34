//! `cairn audit verify` against tampered workspaces, in both modes: a flipped byte in a stored
//! entry exits 3 naming its offset; a projection that differs from a replay of the log exits 3
//! naming both digests. And `replay --until N` reproduces the digest the workspace had at N.

mod common;

use cairn_log::Space;
use cairn_store::layout::{self, CF_LOG};
use cairn_store::open_raw_db;
use common::*;

fn workspace() -> Ws {
    let ws = Ws::init();
    let router = ws.example("router.toml");
    let netmon = ws.example("netmon.toml");
    ws.local(&["pkg", "install", &router]).ok();
    ws.local(&["pkg", "install", &netmon]).ok();
    for i in 0..20 {
        ws.local(&["var", "set", "netmon", "threshold", &i.to_string()])
            .ok();
    }
    ws
}

#[test]
fn a_flipped_byte_in_a_stored_entry_fails_the_audit_with_its_offset() {
    let ws = workspace();
    ws.local(&["audit", "verify"]).ok();
    let bad = 7u64;
    {
        let db = open_raw_db(&ws.data).unwrap();
        let cf = db.cf_handle(CF_LOG).unwrap();
        let mut bytes = db.get_cf(cf, layout::log_key(bad)).unwrap().unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x01;
        db.put_cf(cf, layout::log_key(bad), &bytes).unwrap();
    }
    let out = ws.local(&["audit", "verify"]).expect(3);
    assert!(
        out.stderr.contains(&format!("offset {bad}")),
        "names the offset: {}",
        out.stderr
    );
    // The same through a server.
    let server = ws.serve();
    let out = server
        .remote(&ws.admin_token(), &["audit", "verify"])
        .expect(3);
    assert!(
        out.stderr.contains(&format!("offset {bad}")),
        "{}",
        out.stderr
    );
    assert!(server.stop().success());
}

#[test]
fn a_projection_that_differs_from_the_replay_fails_the_audit() {
    let ws = workspace();
    {
        let db = open_raw_db(&ws.data).unwrap();
        let cf = db.cf_handle(Space::State.name()).unwrap();
        db.put_cf(
            cf,
            b"var/netmon/threshold-ghost",
            b"written behind the log's back",
        )
        .unwrap();
    }
    // The chain itself is fine; only the digest comparison catches this.
    let out = ws.local(&["audit", "verify"]).expect(3);
    assert!(
        out.stderr.contains("replaying the log gives"),
        "{}",
        out.stderr
    );
    // rebuild repairs it from the log.
    ws.local(&["rebuild"]).ok();
    ws.local(&["audit", "verify"]).ok();
}

#[test]
fn a_replayed_workspace_at_n_has_the_digest_the_original_had_at_n() {
    let ws = Ws::init();
    let router = ws.example("router.toml");
    let netmon = ws.example("netmon.toml");
    ws.local(&["pkg", "install", &router]).ok();
    let mut at = Vec::new();
    at.push(ws.digest());
    ws.local(&["pkg", "install", &netmon]).ok();
    at.push(ws.digest());
    ws.local(&["feature", "set", "netmon", "disabled"]).ok();
    ws.local(&["iface", "connect", "netmon:net", "router:net"])
        .ok();
    at.push(ws.digest());
    ws.local(&["pkg", "uninstall", "netmon", "--keep", "vars"])
        .ok();
    at.push(ws.digest());
    for (i, digest) in at.iter().enumerate() {
        let n = digest.split_whitespace().next().unwrap();
        let into = ws.path(&format!("at-{i}"));
        let out = ws
            .local(&[
                "replay",
                "--until",
                n,
                "--into",
                into.to_str().unwrap(),
                "--json",
            ])
            .json();
        assert_eq!(out["applied_offset"].to_string(), n);
        assert_eq!(
            run(&["--data", into.to_str().unwrap(), "state", "digest"]).ok(),
            *digest,
            "replay to {n}"
        );
        // The replayed workspace is a full workspace: its own audit passes.
        run(&["--data", into.to_str().unwrap(), "audit", "verify"]).ok();
    }
}

#[test]
fn replay_never_deletes_a_partial_it_did_not_make_and_accepts_a_trailing_slash() {
    let ws = workspace();
    let into = ws.path("replayed");
    let partial = ws.path("replayed.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("mine"), b"user data").unwrap();
    let out = ws
        .local(&["replay", "--until", "5", "--into", into.to_str().unwrap()])
        .expect(1);
    assert!(out.stderr.contains("remove it first"), "{}", out.stderr);
    assert_eq!(std::fs::read(partial.join("mine")).unwrap(), b"user data");
    assert!(!into.exists());
    std::fs::remove_dir_all(&partial).unwrap();
    // `--into DIR/` builds DIR.partial beside DIR, not inside it.
    let with_slash = format!("{}/", into.display());
    ws.local(&["replay", "--until", "5", "--into", &with_slash])
        .ok();
    assert!(into.join("db").is_dir());
    assert!(!partial.exists());
}
