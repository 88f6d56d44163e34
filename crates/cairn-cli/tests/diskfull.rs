//! A full disk degrades the server, it does not kill it: commits answer 503 with the reason,
//! `/v1/health` is 503 and `status` and `/metrics` say the writer is degraded, reads go on, and
//! commits resume by themselves once space comes back. Needs root (to mount a tmpfs): without
//! it the test is reported ignored, loudly, and fails under `CI=true`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_faultfs::harness::{self, Test};
use common::*;

/// A tmpfs of `mb` MiB, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mb: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut chunk = 1 << 16;
    while chunk > 0 {
        if file.write_all(&vec![0u8; chunk]).is_err() {
            chunk /= 2;
        }
    }
    path
}

fn main() {
    harness::main_gated(
        "diskfull",
        &[Test {
            name: "a_full_disk_makes_health_503_and_status_degraded_while_reads_go_on",
            run: a_full_disk_makes_health_503_and_status_degraded_while_reads_go_on,
        }],
        "a tmpfs mount (root)",
        || Tmpfs::mount(1).map(drop),
    )
}

fn a_full_disk_makes_health_503_and_status_degraded_while_reads_go_on() {
    let fs = Tmpfs::mount(96).expect("the harness's gate mounted one");
    let data = fs.0.path().join("ws");
    let data_arg = data.to_str().unwrap();
    run(&["--data", data_arg, "init"]).ok();
    let examples = Ws::init();
    let netmon = examples.example("netmon.toml");
    run(&["--data", data_arg, "pkg", "install", &netmon]).ok();
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let token = token.trim();
    let server = Server::start(&data);
    let health = || http("GET", &format!("{}/v1/health", server.url), None, None);
    assert_eq!(health().0, 200);

    let filler = fill(fs.0.path());
    let big = "x".repeat(60_000);
    let mut failed = None;
    for i in 0..2000 {
        let (status, body) = put_var(&server, token, &format!("f{i}"), &big);
        if status != 200 {
            failed = Some((status, body));
            break;
        }
    }
    let (status, body) = failed.expect("a write fails on the full disk");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("No space left"), "{body}");
    let (status, body) = health();
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["writer"], "degraded", "{body}");
    let status = server
        .remote(&data.join("admin.token"), &["status", "--json"])
        .json();
    assert_eq!(status["writer"], "degraded", "{status}");
    assert_eq!(metric(&server, token, "cairn_writer_up"), "0");
    // Reads go on.
    server
        .remote(
            &data.join("admin.token"),
            &["var", "get", "netmon", "threshold"],
        )
        .ok();

    std::fs::remove_file(filler).unwrap();
    let started = Instant::now();
    while put_var(&server, token, "after", "1").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writes did not resume within 60 s of freeing space"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(health().0, 200);
    assert_eq!(metric(&server, token, "cairn_writer_up"), "1");
    assert!(server.stop().success());
    run(&["--data", data_arg, "audit", "verify"]).ok();
}
