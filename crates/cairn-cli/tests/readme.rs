//! The README's worked example, run as written (with the `cairn` under test first on `PATH`
//! and a free port instead of 7878): a new user following it must get through every step.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_worked_example_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let begin = readme
        .find("<!-- worked-example: begin")
        .expect("README has the worked-example marker");
    let end = readme[begin..]
        .find("<!-- worked-example: end")
        .expect("README closes the worked example")
        + begin;
    let block = &readme[begin..end];
    let script = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a sh block inside the markers")
        .0;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = script.replace("127.0.0.1:7878", &format!("127.0.0.1:{port}"));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_cairn")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // A failing step must not leave the background server holding the output pipes (the
    // test would wait for it forever): kill whatever the script started, on any exit.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"
        ))
        .current_dir(&root)
        .env("PATH", path)
        .env("TMPDIR", tmp.path())
        .env("CAIRN_LOG", "warn")
        .env_remove("CAIRN_DATA")
        .env_remove("CAIRN_SERVER")
        .env_remove("CAIRN_TOKEN_FILE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the worked example failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What each step promises.
    assert!(stdout.contains("netmon  1.2.0    installed"), "{stdout}");
    assert!(
        stdout.contains("refused: feature bgp does not exist"),
        "{stdout}"
    );
    assert!(
        stdout.contains("threshold  25"),
        "kept var listed: {stdout}"
    );
    assert!(stdout.contains("package.removed.v1"), "{stdout}");
    assert!(stdout.contains("ok: "), "audit passed: {stdout}");
    assert!(
        stdout.contains("refused: the auditor's token has role read"),
        "{stdout}"
    );
    assert!(
        stderr.contains("has role read; this needs write"),
        "{stderr}"
    );
}
