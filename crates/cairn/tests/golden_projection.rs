//! The golden projection: a committed log covering every event kind, across several package
//! lifecycles, folded through the real store and kernel, must give the committed state digest.
//! A mirror may run a newer binary than its leader, so `apply` must fold the same log to the
//! same projection in every version; a deliberate change of the projection bumps
//! `PROJECTION_VERSION` (stored workspaces then rebuild at open) and regenerates the digest.
//!
//! - `tests/golden/projection-log-v1.frames`: the log, one frame per `StoredEntry` as stored
//!   (`cairn_log::codec`). Generated once by [`generate`] (the kernel's `decide` and `apply`
//!   over a state in memory, with fixed ids, times and hook results) and never edited: a later
//!   `decide` may write other events, but this log must fold the same forever.
//! - `tests/golden/projection-log-v1.digest`: the projection version and the state digest.
//!
//! `CAIRN_REGENERATE_GOLDEN=1` writes the log if it is missing and rewrites the digest, then
//! fails the test, so a regeneration is never silently green. It refuses to record a
//! different digest under an unchanged `PROJECTION_VERSION`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn::kernel::event::{kinds, HookOutcome, HookResult, WalLossAccepted};
use cairn::kernel::model::{DaemonState, FeatureState, ResourceKind, Role, Scope};
use cairn::kernel::{
    manifest, query, Action, Command, Event, ExtWrite, Extension, Kernel, Migration, Schema, Step,
    PROJECTION_VERSION,
};
use cairn::store::{Durability, Options, Store};
use cairn::KernelMachine;
use cairn_log::frame::{split_frames, write_frame};
use cairn_log::testing::MemState;
use cairn_log::{codec, EntryDraft, Hash, Meta, Space, StoredEntry};
use uuid::Uuid;

const REGENERATE: &str = "CAIRN_REGENERATE_GOLDEN";
const REGENERATE_COMMAND: &str =
    "CAIRN_REGENERATE_GOLDEN=1 cargo test --release -p cairn --test golden_projection";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn log_path() -> PathBuf {
    golden_dir().join("projection-log-v1.frames")
}

fn digest_path() -> PathBuf {
    golden_dir().join("projection-log-v1.digest")
}

// ---------------------------------------------------------------------------------------------
// The kernel as the golden log needs it: an embedder's extension and schema registered.
// ---------------------------------------------------------------------------------------------

/// An extension that stores each note's payload under its sequence number.
struct Notes;

impl Extension for Notes {
    fn app(&self) -> &str {
        "golden"
    }

    fn apply(&self, state: &mut ExtWrite<'_>, kind: &str, payload: &[u8]) -> Result<(), String> {
        if kind != "ext.golden.note.v1" {
            return Err(format!("unknown kind {kind:?}"));
        }
        let n = state
            .get(b"next")
            .map_err(|e| e.to_string())?
            .map_or(0, |v| v.len());
        state.put(format!("note/{n}").as_bytes(), payload);
        state.put(b"next", &vec![0u8; n + 1]);
        Ok(())
    }
}

fn kernel() -> Kernel {
    Kernel::new()
        .with_schema(Schema {
            name: "golden".into(),
            version: 1,
            migrations: vec![Migration {
                to: 1,
                compat: 1,
                name: "create-notes".into(),
                apply: |s| {
                    s.put(Space::State, b"ext/golden/migrated", b"1");
                    Ok(())
                },
            }],
        })
        .unwrap()
        .with_extension(Arc::new(Notes))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The generator (run once, when the golden log is missing).
// ---------------------------------------------------------------------------------------------

/// How each hook run ends in the generated log.
type Hooks = fn(package: &str, hook: &str) -> HookResult;

/// The leader, sans-IO: decides commands, seals their events with fixed times and ids, applies
/// them, and keeps the entries.
struct Leader {
    kernel: Kernel,
    state: MemState,
    entries: Vec<StoredEntry>,
    commands: u128,
}

impl Leader {
    fn head(&self) -> (u64, Hash) {
        self.entries
            .last()
            .map_or((0, Hash::ZERO), |e| (e.offset, e.hash))
    }

    fn run(&mut self, command: Command) {
        self.run_keyed(command, None);
    }

    fn run_keyed(&mut self, command: Command, key: Option<&str>) {
        self.commands += 1;
        let events = self
            .kernel
            .decide(&self.state, &command)
            .unwrap_or_else(|e| panic!("{command:?} is accepted: {e:?}"));
        for event in events {
            let (offset, prev) = self.head();
            let entry = EntryDraft {
                epoch: 1,
                time_ms: 1_764_000_000_000 + 250 * (offset + 1),
                meta: Meta {
                    actor: "operator".into(),
                    change: None,
                    command: Uuid::from_u128(0xc0de_0000 + self.commands),
                    idempotency_key: key.map(str::to_owned),
                },
                kind: event.kind().to_owned(),
                payload: event.encode(),
            }
            .seal(offset + 1, prev)
            .unwrap();
            self.kernel.apply(&mut self.state, &entry).unwrap();
            self.entries.push(entry);
        }
    }

    fn install(&mut self, toml: &str, change: Uuid, hooks: Hooks) {
        self.run(Command::Install {
            manifest: manifest::parse(toml).unwrap(),
            change,
        });
        self.drive(change, hooks);
    }

    fn uninstall(&mut self, package: &str, keep: &[ResourceKind], strict: bool, change: Uuid) {
        self.run(Command::Uninstall {
            package: package.into(),
            keep: keep.to_vec(),
            strict,
            change,
        });
    }

    /// The declared hook of the change's next action, if it runs one, with that action.
    fn next(&self, change: Uuid) -> Option<(Action, Option<(String, String)>)> {
        let c = query::change(&self.state, change).unwrap().unwrap();
        let action = c.next_action()?;
        let (i, undo) = match action {
            Action::Do(i) => (i, false),
            Action::Undo(i) => (i, true),
        };
        let step = if undo {
            &c.tasks[i].undo
        } else {
            &c.tasks[i].step
        };
        let hook = match step {
            Step::Hook { package, hook, .. } => query::package(&self.state, package)
                .unwrap()
                .filter(|p| p.manifest.hooks.contains_key(hook))
                .map(|_| (package.clone(), hook.clone())),
            Step::Establish { .. }
            | Step::RemoveConnection { .. }
            | Step::MarkInstalled { .. }
            | Step::MarkBroken { .. }
            | Step::MarkUninstalling { .. }
            | Step::RestoreStatus { .. }
            | Step::CancelOnload { .. }
            | Step::DeleteResources { .. }
            | Step::RemovePackage { .. }
            | Step::StopDaemons { .. }
            | Step::Nothing => None,
        };
        Some((action, hook))
    }

    /// Runs the change's next action; returns false when the change is ready.
    fn step(&mut self, change: Uuid, hooks: Hooks) -> bool {
        let Some((action, hook)) = self.next(change) else {
            return false;
        };
        let (task, undo) = match action {
            Action::Do(i) => (i as u32, false),
            Action::Undo(i) => (i as u32, true),
        };
        match hook {
            Some((package, hook)) => {
                self.run(Command::HookStart { change, task, undo });
                self.run(Command::HookFinish {
                    change,
                    task,
                    undo,
                    result: Some(hooks(&package, &hook)),
                });
            }
            None => self.run(Command::TaskRun { change, task, undo }),
        }
        true
    }

    fn drive(&mut self, change: Uuid, hooks: Hooks) {
        while self.step(change, hooks) {}
    }

    /// Runs the change until its next action would run the hook `name`.
    fn drive_until_hook(&mut self, change: Uuid, name: &str, hooks: Hooks) {
        loop {
            match self.next(change) {
                Some((_, Some((_, hook)))) if hook == name => return,
                Some(_) => {
                    self.step(change, hooks);
                }
                None => panic!("change {change} ended before hook {name}"),
            }
        }
    }

    fn onload(&mut self, package: &str, result: Option<HookResult>) {
        self.run(Command::OnloadStart {
            package: package.into(),
        });
        if let Some(result) = result {
            self.run(Command::OnloadFinish {
                package: package.into(),
                attempt: 1,
                result,
            });
        }
    }
}

fn ran(outcome: HookOutcome, exit: Option<i32>, duration_ms: u64) -> HookResult {
    HookResult {
        outcome,
        exit,
        signal: None,
        duration_ms,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        message: String::new(),
    }
}

/// Every hook succeeds, except the ones that tell a failure apart.
fn hooks(package: &str, hook: &str) -> HookResult {
    match (package, hook) {
        ("flaky", "connect-plug-net") => HookResult {
            stderr_tail: "flaky: cannot reach the router\n".into(),
            ..ran(HookOutcome::Failed, Some(3), 14)
        },
        ("sensor", "connect-plug-net") => HookResult {
            message: "No such file or directory (os error 2)".into(),
            ..ran(HookOutcome::SpawnFailed, None, 1)
        },
        ("netmon" | "sensor", "onuninstall") => HookResult {
            signal: Some(15),
            ..ran(HookOutcome::Failed, None, 30)
        },
        _ => HookResult {
            stdout_tail: format!("{package}: {hook} ok\n"),
            ..ran(HookOutcome::Succeeded, Some(0), 5)
        },
    }
}

const ROUTER: &str = r#"
name = "router"
version = "2.0.1"
[hooks.connect-slot-net]
run = "echo accepting"
[hooks.disconnect-slot-net]
run = "echo releasing"
[[slots]]
name = "net"
interface = "network"
[[features]]
name = "routing"
state = "always_enabled"
auto_restart = true
scope = { global = true, per_instance = false }
"#;

const NETMON: &str = r#"
name = "netmon"
version = "1.2.0"
[hooks.onload]
run = "echo loading"
timeout_s = 30
[hooks.onuninstall]
run = "echo uninstalling"
[hooks.connect-plug-net]
run = "echo plugged"
[hooks.disconnect-plug-net]
run = "echo unplugged"
[hooks.unprepare-plug-net]
run = "echo unprepared"
[vars]
threshold = "10"
interval = "30s"
[[queues]]
name = "events"
[[vaults]]
name = "api-token"
[[daemons]]
name = "collector"
command = ["/usr/bin/netmon-collector", "--interval", "30"]
restart = "on-failure"
enabled = true
[[features]]
name = "netmon"
state = "enabled"
auto_restart = true
scope = { global = true, per_instance = false }
[[plugs]]
name = "net"
interface = "network"
auto_connect = true
[model]
types = [{ name = "netmon:ip", base = "str", doc = "an address seen by netmon" }]
"#;

/// Its auto-connect fails at install: the install change is undone, the package is broken.
const FLAKY: &str = r#"
name = "flaky"
version = "0.1.0"
[hooks.prepare-plug-net]
run = "echo preparing"
[hooks.unprepare-plug-net]
run = "echo unpreparing"
[hooks.connect-plug-net]
run = "exit 3"
[[plugs]]
name = "net"
interface = "network"
auto_connect = true
"#;

/// Installs fine; its connect cannot start, its `onload` times out, its `onuninstall` fails.
const SENSOR: &str = r#"
name = "sensor"
version = "3.1.4"
[hooks.onload]
run = "sleep 1000"
timeout_s = 1
[hooks.onuninstall]
run = "kill $$"
[hooks.prepare-plug-net]
run = "echo preparing"
[hooks.connect-plug-net]
command = ["/missing/sensor-connect"]
[vars]
rate = "5"
[[queues]]
name = "samples"
[[plugs]]
name = "net"
interface = "network"
"#;

/// Its `onload` is still running when it is uninstalled.
const SLOW: &str = r#"
name = "slow"
version = "1.0.0"
[hooks.onload]
run = "sleep 600"
"#;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x9000_0000_0000_4000_8000_0000_0000_0000 + n)
}

fn end(p: &str, n: &str) -> (String, String) {
    (p.into(), n.into())
}

/// The golden log: every event kind, several lifecycles, successes and failures.
fn generate() -> Vec<StoredEntry> {
    let mut l = Leader {
        kernel: kernel(),
        state: MemState::default(),
        entries: Vec::new(),
        commands: 0,
    };
    // Schemas, as the runtime records them at the first open.
    for (schema, to) in [("cairn", 1), ("cairn", 2), ("cairn", 3), ("golden", 1)] {
        l.run(Command::MigrateSchema {
            schema: schema.into(),
            from: to - 1,
            to,
        });
    }
    // A slot provider, then a package that auto-connects to it (hooks on both ends).
    l.install(ROUTER, id(1), hooks);
    l.install(NETMON, id(2), hooks);
    l.onload("netmon", Some(hooks("netmon", "onload")));

    // Resources, features, daemons.
    l.run_keyed(
        Command::VarSet {
            owner: "netmon".into(),
            key: "threshold".into(),
            value: b"20".to_vec(),
            expect_revision: None,
        },
        Some("set-threshold-1"),
    );
    l.run(Command::VarDelete {
        owner: "netmon".into(),
        keys: vec!["interval".into()],
    });
    l.run(Command::QueuePut {
        owner: "netmon".into(),
        queue: "events".into(),
        items: vec![b"link up".to_vec(), vec![0xff, 0x00], b"link down".to_vec()],
    });
    l.run(Command::QueueAck {
        owner: "netmon".into(),
        queue: "events".into(),
        upto: 1,
    });
    l.run(Command::VaultSet {
        owner: "netmon".into(),
        vault: "api-token".into(),
        sealed: (0u8..56).collect(),
    });
    l.run(Command::DaemonSet {
        owner: "netmon".into(),
        daemon: "collector".into(),
        desired: DaemonState::Disabled,
        expect_revision: None,
    });
    l.run(Command::DaemonReport {
        owner: "netmon".into(),
        daemon: "collector".into(),
        observed: DaemonState::Enabled,
    });
    l.run(Command::FeatureSet {
        name: "netmon".into(),
        state: FeatureState::Disabled,
        expect_revision: None,
    });
    l.run(Command::FeatureReport {
        name: "netmon".into(),
        observed: FeatureState::Disabled,
    });
    l.run(Command::FeatureScopeSync {
        name: "routing".into(),
        scope: Scope {
            global: true,
            per_instance: true,
        },
    });
    l.run(Command::Ext {
        kind: "ext.golden.note.v1".into(),
        payload: b"first note".to_vec(),
    });
    l.run(Command::Ext {
        kind: "ext.golden.note.v1".into(),
        payload: vec![0, 1, 2, 255],
    });

    // Tokens.
    l.run(Command::TokenCreate {
        name: "ops-read".into(),
        role: Role::Read,
        hash: [7; 32],
    });
    l.run(Command::TokenCreate {
        name: "m1".into(),
        role: Role::Mirror,
        hash: [9; 32],
    });
    l.run(Command::TokenRevoke {
        name: "ops-read".into(),
    });

    // A disconnect aborted while a hook runs: the hook is cancelled, everything done is
    // undone, the connection comes back (an auto connection: its undesired mark is cleared).
    let (plug, slot) = (end("netmon", "net"), end("router", "net"));
    l.run(Command::Disconnect {
        plug: plug.clone(),
        slot: slot.clone(),
        change: id(3),
    });
    l.drive_until_hook(id(3), "unprepare-plug-net", hooks);
    let Some((Action::Do(task), _)) = l.next(id(3)) else {
        panic!("the disconnect is doing its tasks");
    };
    let task = task as u32;
    l.run(Command::HookStart {
        change: id(3),
        task,
        undo: false,
    });
    l.run(Command::Abort { change: id(3) });
    l.run(Command::HookFinish {
        change: id(3),
        task,
        undo: false,
        result: None,
    });
    l.drive(id(3), hooks);
    // The same disconnect, to the end (the pair is marked undesired), and a connect by hand.
    l.run(Command::Disconnect {
        plug: plug.clone(),
        slot: slot.clone(),
        change: id(4),
    });
    l.drive(id(4), hooks);
    l.run(Command::Connect {
        plug: plug.clone(),
        slot: slot.clone(),
        change: id(5),
    });
    l.drive(id(5), hooks);

    // An install whose auto-connect fails: undone, the package broken.
    l.install(FLAKY, id(6), hooks);
    // A connect that fails (its hook cannot start) and is undone; then an `onload` that
    // times out: broken.
    l.install(SENSOR, id(7), hooks);
    l.run(Command::Connect {
        plug: end("sensor", "net"),
        slot: slot.clone(),
        change: id(8),
    });
    l.drive(id(8), hooks);
    l.onload(
        "sensor",
        Some(HookResult {
            signal: Some(9),
            message: "timed out after 1 s".into(),
            ..ran(HookOutcome::TimedOut, None, 1_000)
        }),
    );
    // A strict uninstall whose `onuninstall` fails: the package returns to broken.
    l.uninstall("sensor", &[], true, id(9));
    l.drive(id(9), hooks);
    // Then without strict, keeping its queues.
    l.uninstall("sensor", &[ResourceKind::Queues], false, id(10));
    l.drive(id(10), hooks);
    l.uninstall("flaky", &[], false, id(11));
    l.drive(id(11), hooks);

    // An uninstall that cancels a running `onload`.
    l.install(SLOW, id(12), hooks);
    l.onload("slow", None);
    l.uninstall("slow", &[], false, id(13));
    l.drive(id(13), hooks);

    // Uninstall keeping vars and the model (its failing `onuninstall` is ignored), and a
    // reinstall that adopts them.
    l.uninstall(
        "netmon",
        &[ResourceKind::Vars, ResourceKind::Model],
        false,
        id(14),
    );
    l.drive(id(14), hooks);
    l.install(NETMON, id(15), hooks);

    // An operator accepted a WAL loss.
    l.run(Command::AcceptWalLoss(WalLossAccepted {
        detected_ms: 1_764_000_100_000,
        recovered_offset: l.head().0,
        file: "000012.log".into(),
        byte: 4096,
        reason: "checksum mismatch".into(),
        lost_commits: 2,
        lost_through_offset: Some(l.head().0 + 3),
    }));
    l.entries
}

// ---------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------

fn regenerating() -> bool {
    std::env::var(REGENERATE).as_deref() == Ok("1")
}

fn read_log(path: &Path) -> Vec<StoredEntry> {
    let bytes = std::fs::read(path).unwrap();
    split_frames(&bytes)
        .expect("the golden log is well framed")
        .into_iter()
        .map(|frame| codec::decode(frame).expect("every golden entry decodes"))
        .collect()
}

fn write_log(path: &Path, entries: &[StoredEntry]) {
    let mut out = Vec::new();
    for e in entries {
        write_frame(&codec::encode(e), &mut out);
    }
    std::fs::write(path, out).unwrap();
}

/// The projection version and digest recorded in the digest file.
struct Golden {
    projection_version: u64,
    applied: u64,
    digest: String,
}

fn read_digest(path: &Path) -> Golden {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with {REGENERATE_COMMAND}",
            path.display()
        )
    });
    let mut fields = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (k, v) = line.split_once(' ').expect("`name value` lines");
        fields.insert(k.to_owned(), v.to_owned());
    }
    let field = |k: &str| {
        fields
            .get(k)
            .unwrap_or_else(|| panic!("{} has no {k}", path.display()))
            .clone()
    };
    Golden {
        projection_version: field("projection_version").parse().unwrap(),
        applied: field("applied").parse().unwrap(),
        digest: field("digest"),
    }
}

fn write_digest(path: &Path, log: &Path, applied: u64, digest: &Hash) {
    let log = log.file_name().unwrap().to_string_lossy();
    let text = format!(
        "# The state digest of {log} folded by the kernel at this\n\
         # PROJECTION_VERSION. Regenerate (after bumping PROJECTION_VERSION) with\n\
         # {REGENERATE_COMMAND}\n\
         projection_version {PROJECTION_VERSION}\n\
         applied {applied}\n\
         digest {digest}\n"
    );
    std::fs::write(path, text).unwrap();
}

/// Folds the entries through the store (as a mirror does, in batches), and returns the digest
/// of the projection, and that of a full rebuild of it.
fn fold(entries: Vec<StoredEntry>) -> ((u64, Hash), (u64, Hash)) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ws");
    Store::<KernelMachine>::init(&data).unwrap();
    let opts = || Options {
        durability: Durability::None,
        ..Default::default()
    };
    let store = Store::open(&data, KernelMachine(kernel()), opts()).unwrap();
    for batch in entries.chunks(64) {
        store.submit_entries(batch.to_vec()).wait().unwrap();
    }
    let folded = store.read().unwrap().digest().unwrap();
    drop(store);
    Store::rebuild(&data, &KernelMachine(kernel()), &mut |_| {}).unwrap();
    let store = Store::open(&data, KernelMachine(kernel()), opts()).unwrap();
    let rebuilt = store.read().unwrap().digest().unwrap();
    (
        (folded.applied, folded.hash),
        (rebuilt.applied, rebuilt.hash),
    )
}

/// Every built-in kind (and an extension's) is in the golden log.
fn check_coverage(entries: &[StoredEntry]) {
    // Kinds added after this golden log was made are pinned by their own event golden files
    // (`crates/cairn-kernel/tests/golden/`); the log is never edited to add them.
    let newer = [
        kinds::EPOCH_STARTED,
        kinds::INSTALL_STARTED_2,
        kinds::UNINSTALL_STARTED_2,
        kinds::DAEMON_RAN,
        // The Drive's kinds are in their own golden log (`projection-drive-v1.frames`).
        kinds::DRIVE_ITEM_ADDED,
        kinds::DRIVE_ITEM_MOVED,
        kinds::DRIVE_ITEM_DELETED,
        kinds::DRIVE_DATA_PUT,
        kinds::DRIVE_VERSION_DELETED,
        kinds::DRIVE_PERM_SET,
        kinds::DRIVE_TYPE_SET,
        kinds::DRIVE_MIGRATED,
    ];
    let all = kinds::ALL
        .iter()
        .copied()
        .filter(|k| !newer.contains(k))
        .chain(["ext.golden.note.v1"]);
    let present: std::collections::BTreeSet<&str> =
        entries.iter().map(|e| e.kind.as_str()).collect();
    for kind in all {
        assert!(present.contains(kind), "the golden log has no {kind} entry");
    }
    for e in entries {
        Event::decode(&e.kind, &e.payload)
            .unwrap_or_else(|err| panic!("entry {} does not decode: {err}", e.offset));
    }
}

#[test]
fn the_golden_log_folds_to_the_golden_projection_digest() {
    check_golden_log(&log_path(), &digest_path(), generate, check_coverage);
}

#[test]
fn the_golden_drive_log_folds_to_its_golden_digest() {
    check_golden_log(
        &golden_dir().join("projection-drive-v1.frames"),
        &golden_dir().join("projection-drive-v1.digest"),
        generate_drive,
        |entries| {
            let present: std::collections::BTreeSet<&str> =
                entries.iter().map(|e| e.kind.as_str()).collect();
            for kind in kinds::ALL.iter().filter(|k| k.starts_with("drive.")) {
                assert!(present.contains(kind), "the drive log has no {kind} entry");
            }
        },
    );
}

/// The drive's golden log: decided by a kernel with a migration (`golden-bump`) that the
/// folding kernel does not have, so the fold reads the recorded outcome.
fn generate_drive() -> Vec<StoredEntry> {
    use cairn::kernel::drive::{
        DataVersion, DriveActor, DriveCommand, DrivePath, Level, MigrationInput, Who,
    };
    let bump = |_: &MigrationInput<'_>, mut d: serde_json::Value| -> Result<_, String> {
        d["n"] = serde_json::json!(d["n"].as_i64().unwrap_or(0) + 1);
        d["tag"] = serde_json::json!("bumped");
        Ok(d)
    };
    let kernel = kernel()
        .with_drive_migration("golden-bump", Arc::new(bump))
        .unwrap();
    let p = |s: &str| DrivePath::parse(s).unwrap();
    let admin = DriveActor::admin("golden");
    let writer = DriveActor {
        token: "ann".into(),
        role: Role::Write,
    };
    let schema = |v: u32| {
        let mut s = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        });
        if v >= 2 {
            s["properties"]["tag"] = serde_json::json!({"type": "string", "default": "x"});
            s["required"] = serde_json::json!(["n", "tag"]);
        }
        s.to_string()
    };
    let ty = |v: u32, m: Option<&str>| DriveCommand::SetType {
        name: "note".into(),
        version: v,
        schema: schema(v),
        migration: m.map(str::to_string),
    };
    let add = |path: &str, t: Option<&str>| DriveCommand::Add {
        path: p(path),
        type_name: t.map(str::to_string),
    };
    let put = |path: &str, v: Option<(u32, u32, u32)>, data: &str| DriveCommand::Put {
        path: p(path),
        version: v.map(|(major, minor, patch)| DataVersion {
            major,
            minor,
            patch,
        }),
        data: data.into(),
    };
    let ops: Vec<(&DriveActor, DriveCommand)> = vec![
        (&admin, ty(1, None)),
        (&admin, add("team", None)),
        (&admin, add("team/notes", None)),
        (&writer, add("team/notes/a", Some("note"))),
        (&writer, put("team/notes/a", None, r#"{"n": 1}"#)),
        (&writer, put("team/notes/a", Some((2, 0, 0)), r#"{"n": 2}"#)),
        (&writer, add("team/notes/b", Some("note"))),
        (
            &writer,
            put("team/notes/b", None, r#"{"n": 10, "extra": [1, "é"]}"#),
        ),
        (&admin, add("team/tmp", None)),
        (&admin, add("team/tmp/x", Some("note"))),
        (&admin, put("team/tmp/x", None, r#"{"n": 5}"#)),
        (
            &admin,
            DriveCommand::SetPerm {
                path: p("team"),
                who: Who::Role(Role::Read),
                level: Some(Level::Edit),
            },
        ),
        (
            &admin,
            DriveCommand::SetPerm {
                path: p("team/notes/b"),
                who: Who::Token("ann".into()),
                level: Some(Level::Deny),
            },
        ),
        (&admin, ty(2, Some("golden-bump"))),
        (&admin, ty(3, None)),
        (
            &writer,
            DriveCommand::DeleteVersion {
                path: p("team/notes/a"),
                version: DataVersion {
                    major: 2,
                    minor: 0,
                    patch: 0,
                },
            },
        ),
        (
            &admin,
            DriveCommand::Move {
                from: p("team/notes"),
                to: p("team/archive"),
            },
        ),
        (
            &admin,
            DriveCommand::Delete {
                path: p("team/tmp"),
            },
        ),
    ];
    let mut state = MemState::default();
    let mut entries: Vec<StoredEntry> = Vec::new();
    let mut head = (0u64, Hash::ZERO);
    for (n, (actor, op)) in ops.into_iter().enumerate() {
        let command = Command::Drive {
            actor: actor.clone(),
            op,
        };
        let events = kernel
            .decide(&state, &command)
            .unwrap_or_else(|e| panic!("golden drive step {n} was rejected: {e:?}"));
        assert!(!events.is_empty(), "golden drive step {n} wrote nothing");
        for event in events {
            let entry = EntryDraft {
                epoch: 1,
                time_ms: 1_700_000_000_000 + head.0,
                meta: Meta {
                    actor: actor.token.clone(),
                    change: None,
                    command: id(10_000 + n as u128),
                    idempotency_key: None,
                },
                kind: event.kind().to_owned(),
                payload: event.encode(),
            }
            .seal(head.0 + 1, head.1)
            .unwrap();
            kernel.apply(&mut state, &entry).unwrap();
            head = (entry.offset, entry.hash);
            entries.push(entry);
        }
    }
    entries
}

/// Folds the golden log at `log` (generating it once with `generate` when regenerating)
/// through the store and a rebuild, and compares the digest with the one recorded at
/// `digest_file`.
fn check_golden_log(
    log: &Path,
    digest_file: &Path,
    generate: fn() -> Vec<StoredEntry>,
    coverage: fn(&[StoredEntry]),
) {
    let log = log.to_path_buf();
    if !log.exists() {
        assert!(
            regenerating(),
            "{} is missing; generate it (once) with {REGENERATE_COMMAND}",
            log.display()
        );
        std::fs::create_dir_all(golden_dir()).unwrap();
        write_log(&log, &generate());
    }
    let entries = read_log(&log);
    coverage(&entries);
    let head = entries.last().expect("the golden log is not empty").offset;
    let ((applied, digest), (rebuilt_applied, rebuilt)) = fold(entries);
    assert_eq!(applied, head, "every golden entry was applied");
    assert_eq!(
        (rebuilt_applied, rebuilt),
        (applied, digest),
        "a rebuild of the same log gives another projection: apply is not a pure fold"
    );

    let path = digest_file.to_path_buf();
    if regenerating() {
        if path.exists() {
            let old = read_digest(&path);
            assert!(
                old.digest == digest.to_string() || old.projection_version != PROJECTION_VERSION,
                "the same log now folds to a different projection under the same \
                 PROJECTION_VERSION ({PROJECTION_VERSION}); bump PROJECTION_VERSION first, then \
                 regenerate the golden digest with {REGENERATE_COMMAND}"
            );
        }
        write_digest(&path, &log, applied, &digest);
        panic!(
            "regenerated {} (projection version {PROJECTION_VERSION}, digest {digest}); review \
             and commit it, then run again without {REGENERATE}",
            path.display()
        );
    }
    let golden = read_digest(&path);
    assert_eq!(
        golden.applied, applied,
        "the golden digest is for another log"
    );
    assert!(
        golden.digest == digest.to_string(),
        "the same log now folds to a different projection: if this is deliberate, bump \
         PROJECTION_VERSION and regenerate the golden digest with {REGENERATE_COMMAND}\n\
         golden: projection version {}, digest {}\n\
         now:    projection version {PROJECTION_VERSION}, digest {digest}",
        golden.projection_version,
        golden.digest,
    );
    assert_eq!(
        golden.projection_version, PROJECTION_VERSION,
        "PROJECTION_VERSION changed but the fold of the golden log did not; record the new \
         version in the golden digest with {REGENERATE_COMMAND}"
    );
}
