//! The README's worked example, run as written (with the `cairn` under test first on `PATH`
//! and a free port instead of 7878): a new user following it must get through every step.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_worked_example_runs_as_written() {
    let (stdout, stderr) = run_block("worked-example");
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
    // Local mode lists the daemon and runs none; the server runs it: its row says running
    // with a pid, and its output is the collector's.
    assert!(
        stderr.contains("note: this process does not run daemons"),
        "{stderr}"
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("netmon:collector "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "local and served `daemon list`: {stdout}");
    assert_eq!(rows[0], ["netmon:collector", "enabled", "-", "0", "-", "-"]);
    assert_eq!(
        rows[1][..4],
        ["netmon:collector", "enabled", "running", "0"]
    );
    let pid: i32 = rows[1][4]
        .parse()
        .unwrap_or_else(|_| panic!("a pid: {:?}", rows[1]));
    assert!(rows[1][5].parse::<u64>().is_ok(), "since_ms: {:?}", rows[1]);
    assert!(
        stdout.contains("netmon: collecting every 30 s"),
        "the collector's output: {stdout}"
    );
    // The server has exited: its daemon did not outlive it (bounded wait for the reaping).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the collector (pid {pid}) outlived its server"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether `pid` is a zombie (exited, not yet reaped by its parent).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn the_readme_mirror_section_runs_as_written() {
    let (stdout, stderr) = run_block("run-a-mirror");
    let lines: Vec<&str> = stdout.lines().collect();
    // `var get` on the mirror prints the value written on the leader.
    assert!(stdout.contains("25"), "{stdout}");
    // The two `state digest` lines are equal: the same offset and digest on both nodes.
    let digests: Vec<&&str> = lines
        .iter()
        .filter(|l| l.split(' ').count() == 2 && l.split(' ').nth(1).is_some_and(|d| d.len() == 64))
        .collect();
    assert_eq!(digests.len(), 2, "{stdout}");
    assert_eq!(digests[0], digests[1], "{stdout}");
    assert!(
        stdout.contains("mirror-1"),
        "the leader lists its mirror: {stdout}"
    );
    assert!(stdout.contains("following"), "{stdout}");
    // The write sent to the mirror reached the leader.
    assert!(lines.iter().any(|l| l.trim() == "30"), "{stdout}\n{stderr}");
    // After the handoff the mirror's own status says it leads, in epoch 2 (the lines after
    // the handoff's `token_file`, which is its last field).
    let status_after = stdout
        .split_once("token_file")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split_once('\n'))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("the handoff printed its result: {stdout}\n{stderr}"));
    let field = |name: &str| {
        status_after
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .unwrap_or_else(|| panic!("no {name} in the status after the handoff: {stdout}"))
    };
    assert_eq!(field("role"), "leader", "{stdout}");
    assert_eq!(field("epoch"), "2", "{stdout}");
    assert_eq!(
        lines.last().map(|l| l.trim()),
        Some("35"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn the_drive_worked_example_runs_as_written() {
    let (stdout, stderr) = run_block_in("docs/drive.md", "drive-example");
    assert!(
        stdout.contains("refused: text must be a string"),
        "{stdout}"
    );
    assert!(stderr.contains("does not match type note"), "{stderr}");
    assert!(stdout.contains("1.0.0\n1.0.1 *\n"), "{stdout}");
    let got: Vec<&str> = stdout.lines().collect();
    // The first version, then after the migration the current one with the default filled.
    let data = |from: &str| -> serde_json::Value {
        let start = stdout
            .find(from)
            .unwrap_or_else(|| panic!("{from} in {stdout}"));
        let text = &stdout[start..];
        let end = text.find("\n}").unwrap() + 2;
        serde_json::from_str(&text[..end]).unwrap()
    };
    assert_eq!(
        data("{\n  \"text\": \"hello\"\n}"),
        serde_json::json!({"text": "hello"})
    );
    assert_eq!(
        data("{\n  \"tags\": []"),
        serde_json::json!({"tags": [], "text": "hello again"})
    );
    assert!(
        got.iter().any(|l| l.contains("drive.migrated.v1")),
        "{stdout}"
    );
    // Ann's listing has the item she may read, not the one denied to her.
    assert!(stdout.contains("notes/welcome  note"), "{stdout}");
    assert!(!stdout.contains("notes/private  "), "{stdout}");
    assert!(
        stdout.contains("refused: as if it did not exist"),
        "{stdout}"
    );
    assert!(
        stderr.contains("drive item \"notes/private\" does not exist"),
        "{stderr}"
    );
    assert!(
        stdout.contains("refused: ann may not edit the root"),
        "{stdout}"
    );
    assert!(
        stderr.contains("ann may not do this on the drive's root: it needs edit"),
        "{stderr}"
    );
}

/// Runs the `sh` block between `<!-- NAME: begin` and `<!-- NAME: end` of the README, with
/// free ports for 7878 and 7879; returns its stdout and stderr (it must succeed).
fn run_block(name: &str) -> (String, String) {
    run_block_in("README.md", name)
}

/// [`run_block`] in another file of the repository.
fn run_block_in(file: &str, name: &str) -> (String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join(file)).unwrap();
    let begin = readme
        .find(&format!("<!-- {name}: begin"))
        .unwrap_or_else(|| panic!("{file} has the {name} marker"));
    let end = readme[begin..]
        .find(&format!("<!-- {name}: end"))
        .unwrap_or_else(|| panic!("{file} closes the {name} block"))
        + begin;
    let block = &readme[begin..end];
    let script = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a sh block inside the markers")
        .0;
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let script = script
        .replace("127.0.0.1:7878", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:7879", &format!("127.0.0.1:{}", free_port()));
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
    (stdout.into_owned(), stderr.into_owned())
}
