//! Integrity failures are reported as integrity failures everywhere (exit 3, HTTP 500 with
//! code `integrity`, counted in `/metrics`): a damaged WAL that would silently drop acknowledged
//! writes refuses every command until the loss is accepted, and a corrupt table block fails the
//! audit naming its file. (A full disk: `diskfull.rs`.)

mod common;

use std::path::{Path, PathBuf};

use cairn_store::layout;
use common::*;

/// The files of the workspace's RocksDB directory with `extension`, largest first.
fn db_files(data: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(layout::db_dir(data))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    files
}

#[test]
fn a_damaged_wal_refuses_every_command_with_exit_3_until_the_loss_is_accepted() {
    let ws = Ws::init();
    let netmon = ws.example("netmon.toml");
    ws.local(&["pkg", "install", &netmon]).ok();
    let token = std::fs::read_to_string(ws.admin_token()).unwrap();
    let token = token.trim();
    let mut server = ws.serve();
    for i in 0..100 {
        let (status, body) = put_var(&server, token, &format!("w{i}"), "x");
        assert_eq!(status, 200, "{body}");
    }
    // SIGKILL: the 100 acknowledged writes are in the live WAL, not yet in table files.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    let wal = db_files(&ws.data, "log").remove(0);
    let mut bytes = std::fs::read(&wal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&wal, bytes).unwrap();
    let name = wal.file_name().unwrap().to_string_lossy().into_owned();

    for args in [
        vec!["status"],
        vec!["var", "get", "netmon", "w99"],
        vec!["audit", "verify"],
        vec!["pkg", "list"],
    ] {
        let out = ws.local(&args).expect(3);
        assert!(
            out.stderr.contains(&name) && out.stderr.contains("recover --accept-wal-loss"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // A server refuses to start on it too.
    let out = ws.local(&["serve", "--listen", "127.0.0.1:0"]).expect(3);
    assert!(out.stderr.contains(&name), "{}", out.stderr);

    let out = ws.local(&["recover", "--accept-wal-loss", "--json"]).json();
    let recovered = out["recovered_offset"].as_u64().unwrap();
    assert!(out["lost_commits"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(out["file"], name.as_str());
    assert!(out["recorded_at"].as_u64().unwrap() > recovered);
    // Once accepted, the workspace opens, the acceptance is in the log (by whom), and the
    // audit passes.
    ws.local(&["status"]).ok();
    let entries = ws
        .local(&["log", "show", "--kind", "store.", "--json"])
        .ok();
    let lines: Vec<serde_json::Value> = entries
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{entries}");
    assert_eq!(lines[0]["kind"], "store.wal_loss_accepted.v1");
    assert_eq!(lines[0]["meta"]["actor"], "cli");
    assert_eq!(
        lines[0]["event"]["recovered_offset"].as_u64(),
        Some(recovered)
    );
    ws.local(&["audit", "verify"]).ok();
    // Nothing is left to accept.
    ws.local(&["recover", "--accept-wal-loss"]).expect(1);
}

#[test]
fn a_corrupt_table_block_fails_the_audit_as_an_integrity_failure_in_both_modes() {
    let ws = Ws::init();
    let netmon = ws.example("netmon.toml");
    ws.local(&["pkg", "install", &netmon]).ok();
    for i in 0..300 {
        ws.local(&["var", "set", "netmon", &format!("k{i}"), &"v".repeat(200)])
            .ok();
    }
    let sst = {
        // Everything into table files; then the log's table file.
        let db = cairn_store::open_raw_db(&ws.data).unwrap();
        let cfs: Vec<_> = layout::CFS
            .iter()
            .map(|n| db.cf_handle(n).unwrap())
            .collect();
        db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .unwrap();
        let live = db.live_files().unwrap();
        let log = live
            .iter()
            .filter(|f| f.column_family_name == layout::CF_LOG)
            .max_by_key(|f| f.size)
            .expect("the log has a table file");
        layout::db_dir(&ws.data).join(log.name.trim_start_matches('/'))
    };
    let mut bytes = std::fs::read(&sst).unwrap();
    // A byte of the first data block: the head entry (the last block) still reads.
    bytes[100] ^= 0x01;
    std::fs::write(&sst, bytes).unwrap();
    let name = sst.file_name().unwrap().to_string_lossy().into_owned();

    let out = ws.local(&["audit", "verify"]).expect(3);
    assert!(out.stderr.contains(&name), "names the file: {}", out.stderr);

    let server = ws.serve();
    let token = ws.admin_token();
    let out = server.remote(&token, &["audit", "verify"]).expect(3);
    assert!(out.stderr.contains(&name), "{}", out.stderr);
    let secret = std::fs::read_to_string(&token).unwrap();
    let (status, body) = http(
        "GET",
        &format!("{}/v1/audit/verify", server.url),
        Some(secret.trim()),
        None,
    );
    assert_eq!(status, 500, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "integrity", "{body}");
    assert_eq!(
        metric(&server, secret.trim(), "cairn_integrity_failures_total"),
        "2"
    );
    assert!(server.stop().success());
}
