//! `cairn demo`: the whole lifecycle on a scratch workspace, narrated. It installs the sample
//! packages from `docs/examples/` (embedded in the binary), flips a feature, connects
//! interfaces (one connect fails in a hook, to show undo), uninstalls with keep while a second
//! process is SIGKILLed mid-hook, shows the resume, audits the log, and prints an excerpt.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_server::api::Request;
use serde_json::Value;

use crate::backend::{open_local, Backend, Open};
use crate::{output, Failure};

/// The sample packages, as kept under `docs/examples/`.
pub const EXAMPLES: [(&str, &str); 3] = [
    (
        "router.toml",
        include_str!("../../../docs/examples/router.toml"),
    ),
    (
        "netmon.toml",
        include_str!("../../../docs/examples/netmon.toml"),
    ),
    (
        "flaky.toml",
        include_str!("../../../docs/examples/flaky.toml"),
    ),
];

fn step(n: u32, what: &str) {
    println!("\n── {n}. {what}");
}

fn call(b: &Backend, req: Request) -> Result<Value, Failure> {
    b.call(req).map_err(Failure::from)
}

/// Runs the demo in `into` (or a temporary directory, removed afterwards).
pub fn run(into: Option<PathBuf>) -> Result<(), Failure> {
    let started = Instant::now();
    let scratch;
    let scratch_kept = into.is_some();
    let root = match into {
        Some(dir) => dir,
        None => {
            scratch = tempfile::Builder::new()
                .prefix("cairn-demo-")
                .tempdir()
                .map_err(|e| Failure::Other(format!("cannot create a scratch directory: {e}")))?;
            scratch.path().to_path_buf()
        }
    };
    let data = root.join("workspace");
    println!("cairn demo: a workspace at {}", data.display());

    step(
        1,
        "init: a new workspace (one RocksDB database and a vault key)",
    );
    let id = cairn::Workspace::init(&data).map_err(|e| Failure::Other(e.to_string()))?;
    println!("workspace id {id}");
    for (name, text) in EXAMPLES {
        std::fs::write(root.join(name), text)
            .map_err(|e| Failure::Other(format!("cannot write {name}: {e}")))?;
    }

    let b = open_local(&data, Open::Drive, cairn_store::Durability::Sync)?;
    step(
        2,
        "install three packages (each install is a change; hooks run as child processes)",
    );
    for (name, text) in EXAMPLES {
        let v = call(
            &b,
            Request::PkgInstall {
                manifest: text.to_string(),
                wait: true,
            },
        )?;
        println!(
            "{name}: install change {} → {}",
            v["id"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?")
        );
    }
    output::packages(&call(&b, Request::PkgList)?);

    step(
        3,
        "features: flip netmon off, report what the service side sees, try a ghost write",
    );
    call(
        &b,
        Request::FeatureSet {
            name: "netmon".into(),
            state: "disabled".into(),
            expect_revision: None,
        },
    )?;
    call(
        &b,
        Request::FeatureReport {
            name: "netmon".into(),
            state: "disabled".into(),
        },
    )?;
    let refused = b.call(Request::FeatureSet {
        name: "routing".into(),
        state: "disabled".into(),
        expect_revision: None,
    });
    println!(
        "feature set routing disabled → refused: {}",
        refused
            .err()
            .map(|e| e.message)
            .unwrap_or_else(|| "(accepted?!)".into())
    );
    let ghost = b.call(Request::FeatureReport {
        name: "bgp".into(),
        state: "enabled".into(),
    });
    println!(
        "feature report bgp enabled → refused: {}",
        ghost
            .err()
            .map(|e| e.message)
            .unwrap_or_else(|| "(accepted?!)".into())
    );
    output::features(&call(&b, Request::FeatureList)?);

    step(4, "resources: set a variable, queue two events");
    call(
        &b,
        Request::VarSet {
            pkg: "netmon".into(),
            key: "threshold".into(),
            value: "25".into(),
            expect_revision: None,
        },
    )?;
    call(
        &b,
        Request::QueuePut {
            pkg: "netmon".into(),
            queue: "events".into(),
            items: vec!["link-up eth0".into(), "link-down eth1".into()],
        },
    )?;
    output::vars(&call(
        &b,
        Request::VarList {
            pkg: "netmon".into(),
        },
    )?);

    step(
        5,
        "interfaces: connect netmon:net → router:net (hooks on both sides)",
    );
    let ok = call(
        &b,
        Request::IfaceConnect {
            plug: "netmon:net".into(),
            slot: "router:net".into(),
            wait: true,
        },
    )?;
    output::change(&ok);

    step(
        6,
        "interfaces: connect flaky:net → router:net; flaky's connect hook exits 3",
    );
    let failed = call(
        &b,
        Request::IfaceConnect {
            plug: "flaky:net".into(),
            slot: "router:net".into(),
            wait: true,
        },
    )?;
    output::change(&failed);
    println!("(undo ran backwards through every task that was done; the failed task itself gets no undo)");
    b.close();

    step(
        7,
        "uninstall netmon keeping its vars, and SIGKILL the process during onuninstall",
    );
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Other(format!("cannot find this binary: {e}")))?;
    let mut child = Command::new(exe)
        .arg("--data")
        .arg(&data)
        .arg("demo-victim")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Failure::Other(format!("cannot start the writer process: {e}")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| Failure::Other(format!("the writer process failed: {e}")))?;
    if !line.starts_with("started ") {
        let _ = child.kill();
        return Err(Failure::Other(format!(
            "the writer process did not start the uninstall ({line:?})"
        )));
    }
    println!(
        "writer pid {} started uninstall change {} and is inside the onuninstall hook",
        child.id(),
        line.trim_start_matches("started ").trim()
    );
    // SAFETY: kill(2) with a pid this process spawned and has not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let status = child
        .wait()
        .map_err(|e| Failure::Other(format!("cannot reap the writer: {e}")))?;
    println!("killed it: {status}");

    step(
        8,
        "reopen: the interrupted uninstall resumes where it stopped",
    );
    let b = open_local(&data, Open::Write, cairn_store::Durability::Sync)?;
    let changes = call(&b, Request::ChangeList)?;
    if let Some(last) = changes.as_array().and_then(|a| a.last()) {
        output::change(last);
    }
    println!("packages now:");
    output::packages(&call(&b, Request::PkgList)?);
    println!("netmon's vars were kept (kept_from = netmon); its queue, vault, daemon and feature are gone:");
    output::vars(&call(
        &b,
        Request::VarList {
            pkg: "netmon".into(),
        },
    )?);

    step(
        9,
        "audit verify: hash chain, full replay into a scratch store, digest comparison",
    );
    let audit = cairn::tools::audit_verify(
        match &b {
            Backend::Local { svc, .. } => svc.workspace(),
            Backend::Remote(_) => unreachable!("the demo runs locally"),
        },
        &mut |_| {},
    )
    .map_err(|e| Failure::from(cairn_server::ApiError::from(e)))?;
    println!(
        "ok: {} entries verified, head {}, digest {}",
        audit.entries,
        audit.head_offset,
        cairn_log::Hash(audit.digest)
    );

    step(10, "the log (last 12 entries: offset, kind, actor, event)");
    let head = audit.head_offset;
    let entries = call(
        &b,
        Request::LogShow {
            from: head.saturating_sub(11).max(1),
            limit: 12,
            kind: None,
        },
    )?;
    for e in entries.as_array().into_iter().flatten() {
        let mut line = output::entry_line(e);
        if line.chars().count() > 150 {
            line = line.chars().take(147).collect::<String>() + "...";
        }
        println!("{line}");
    }
    b.close();

    println!(
        "\nSummary: {head} log entries; 3 installs, a feature flip, a rejected ghost write, one \
         connect done and one undone by a failing hook, an uninstall that survived SIGKILL and \
         resumed, and an audit that replayed everything to the same digest. ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if scratch_kept {
        println!("Explore it: cairn --data {} log show", data.display());
    } else {
        println!("(the scratch workspace is removed now; `cairn demo --into DIR` keeps it)");
    }
    Ok(())
}

/// The demo's second process: starts `uninstall netmon --keep vars`, prints `started <change>`
/// once the `onuninstall` hook is running, and waits to be killed.
pub fn victim(data: &Path) -> Result<(), Failure> {
    let b = open_local(data, Open::Drive, cairn_store::Durability::Sync)?;
    let Backend::Local { rt, svc } = &b else {
        return Err(Failure::Other("the victim runs locally".into()));
    };
    let ws = svc.workspace().clone();
    rt.block_on(async {
        let mut sub = ws
            .subscribe(ws.applied() + 1)
            .map_err(|e| Failure::Other(e.to_string()))?;
        let change = ws
            .uninstall(
                "netmon",
                &[cairn::kernel::model::ResourceKind::Vars],
                false,
                &Default::default(),
            )
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let e = tokio::time::timeout_at(deadline, sub.next())
                .await
                .map_err(|_| Failure::Other("onuninstall never started".into()))?
                .map_err(|e| Failure::Other(e.to_string()))?;
            if e.kind == cairn::kernel::event::kinds::HOOK_STARTED {
                if let Ok(cairn::kernel::Event::HookStarted(h)) =
                    cairn::kernel::Event::decode(&e.kind, &e.payload)
                {
                    if h.hook == "onuninstall" {
                        break;
                    }
                }
            }
        }
        println!("started {change}");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Failure>(())
    })?;
    b.close();
    Ok(())
}
