//! Golden file for the kernel's event payloads: one event of every built-in kind, encoded and
//! committed. Every build must decode the stored bytes to the same events and encode the same
//! events to the same bytes. Never edit the golden file to make this pass: a changed layout is
//! a new kind version (`.v2`), decoded alongside the old one forever.
//!
//! To create a golden file that does not exist yet, run with `CAIRN_BLESS=1`; an existing file
//! is never overwritten.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_kernel::change::{
    ChangeKind, ChangeRecord, ChangeStatus, Step, Task, TaskNote, TaskOutcome,
};
use cairn_kernel::event::{
    kinds, Event, HookOutcome, HookRef, HookResult, InstallStarted, ResourcesDeleted,
    UninstallStarted,
};
use cairn_kernel::manifest::{
    DaemonDecl, FeatureDecl, HookExec, HookSpec, Manifest, ModelType, PlugDecl, SlotDecl,
};
use cairn_kernel::model::{DaemonState, FeatureState, ResourceKind, Restart, Role, Scope};
use cairn_kernel::records::{BrokenReason, PackageStatus};
use cairn_log::frame::{split_frames, write_frame};
use uuid::Uuid;

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-v1.frames")
}

fn end(p: &str, n: &str) -> (String, String) {
    (p.into(), n.into())
}

fn manifest() -> Manifest {
    Manifest {
        name: "netmon".into(),
        version: "1.2.0".into(),
        hooks: BTreeMap::from([
            (
                "onload".to_string(),
                HookSpec {
                    exec: HookExec::Shell("echo loading".into()),
                    timeout_s: 30,
                },
            ),
            (
                "connect-plug-net".to_string(),
                HookSpec {
                    exec: HookExec::Argv(vec!["/usr/bin/netmon".into(), "--init".into()]),
                    timeout_s: 600,
                },
            ),
        ]),
        vars: BTreeMap::from([("threshold".to_string(), "10".to_string())]),
        queues: vec!["events".into()],
        vaults: vec!["api-token".into()],
        daemons: vec![DaemonDecl {
            name: "collector".into(),
            command: vec!["/usr/bin/netmon-collector".into()],
            restart: Restart::OnFailure,
            enabled: true,
            feature: None,
        }],
        features: vec![FeatureDecl {
            name: "netmon".into(),
            state: FeatureState::AlwaysEnabled,
            auto_restart: true,
            scope: Scope {
                global: true,
                per_instance: false,
            },
        }],
        plugs: vec![PlugDecl {
            name: "net".into(),
            interface: "network".into(),
            auto_connect: true,
        }],
        slots: vec![SlotDecl {
            name: "metrics".into(),
            interface: "metrics".into(),
        }],
        model: vec![ModelType {
            name: "netmon:ip".into(),
            base: "str".into(),
            doc: "an address seen by netmon".into(),
        }],
    }
}

fn change(kind: ChangeKind) -> ChangeRecord {
    let mut hold = Task::new("held", Step::Nothing, Step::Nothing);
    hold.status = cairn_kernel::TaskStatus::Hold;
    hold.attempts = 3;
    // A v1 change states its tasks' notes as text: they decode as stated notes.
    hold.log = vec![TaskNote::Stated {
        text: "failed: exit 1".into(),
    }];
    ChangeRecord {
        id: Uuid::from_u128(0x7c1e_0000_0000_4000_8000_0000_0000_0001),
        kind,
        summary: "uninstall \"netmon\" keeping vars".into(),
        packages: vec!["netmon".into(), "prov".into()],
        tasks: vec![
            Task::new(
                "mark-uninstalling",
                Step::MarkUninstalling {
                    package: "netmon".into(),
                    keep: vec![ResourceKind::Vars],
                },
                Step::RestoreStatus {
                    package: "netmon".into(),
                    status: PackageStatus::Broken {
                        reason: BrokenReason::Stated {
                            why: "onload hook exit 3 after 5 ms".into(),
                        },
                    },
                },
            )
            .done(),
            Task::new(
                "cancel-onload",
                Step::CancelOnload {
                    package: "netmon".into(),
                },
                Step::Nothing,
            ),
            Task::new(
                "disconnect-plug-net",
                Step::Hook {
                    package: "netmon".into(),
                    hook: "disconnect-plug-net".into(),
                    plug: Some(end("netmon", "net")),
                    slot: Some(end("prov", "net")),
                },
                Step::Hook {
                    package: "netmon".into(),
                    hook: "connect-plug-net".into(),
                    plug: None,
                    slot: None,
                },
            )
            .ignoring_errors(),
            Task::new(
                "remove",
                Step::RemoveConnection {
                    plug: end("netmon", "net"),
                    slot: end("prov", "net"),
                    undesired: true,
                },
                Step::Establish {
                    plug: end("netmon", "net"),
                    slot: end("prov", "net"),
                    interface: "network".into(),
                    auto: true,
                    undesired: false,
                },
            ),
            Task::new(
                "delete-resources",
                Step::DeleteResources {
                    package: "netmon".into(),
                    keep: vec![ResourceKind::Vars, ResourceKind::Model],
                },
                Step::Nothing,
            )
            .irreversible(),
            Task::new(
                "remove-package",
                Step::RemovePackage {
                    package: "netmon".into(),
                },
                Step::MarkBroken {
                    package: "netmon".into(),
                },
            ),
            Task::new(
                "mark-installed",
                Step::MarkInstalled {
                    package: "netmon".into(),
                },
                Step::Nothing,
            ),
            hold,
        ],
        status: ChangeStatus::Undoing,
        aborted: true,
        actor: "operator".into(),
        spawn_ms: 1_763_683_200_000,
        ready_ms: Some(u64::MAX),
        revision: 42,
    }
}

fn hook_ref(task: Option<u32>) -> HookRef {
    HookRef {
        change: Uuid::from_u128(7),
        task,
        package: "netmon".into(),
        hook: "onuninstall".into(),
        attempt: 2,
    }
}

/// One event of every built-in kind (and an extension event), edge cases on purpose.
fn events() -> Vec<Event> {
    vec![
        Event::InstallStarted(InstallStarted {
            manifest: manifest(),
            change: change(ChangeKind::Install),
        }),
        Event::UninstallStarted(UninstallStarted {
            package: "netmon".into(),
            keep: vec![
                ResourceKind::Queues,
                ResourceKind::Vaults,
                ResourceKind::Daemons,
            ],
            change: change(ChangeKind::Uninstall),
        }),
        Event::PackageStatusChanged {
            package: "netmon".into(),
            status: PackageStatus::Uninstalling {
                keep: vec![ResourceKind::Vars],
                change: Uuid::from_u128(9),
            },
        },
        Event::PackageRemoved {
            package: "netmon".into(),
        },
        Event::ResourcesDeleted(ResourcesDeleted {
            package: "netmon".into(),
            keep: vec![ResourceKind::Vars],
            deleted: vec![
                (ResourceKind::Queues, vec!["events".into()]),
                (
                    ResourceKind::Model,
                    vec!["netmon:ip".into(), "netmon:mac".into()],
                ),
            ],
            features: vec!["netmon".into()],
        }),
        Event::ChangeCreated(change(ChangeKind::Connect)),
        Event::AbortRequested {
            change: Uuid::from_u128(u128::MAX),
        },
        Event::TaskStarted {
            change: Uuid::from_u128(1),
            task: 4,
            undo: true,
        },
        Event::TaskFinished {
            change: Uuid::from_u128(1),
            task: u32::MAX,
            undo: false,
            outcome: TaskOutcome::Failed("hook connect-plug-net exit 3 after 12 ms".into()),
        },
        Event::TaskFinished {
            change: Uuid::from_u128(1),
            task: 0,
            undo: true,
            outcome: TaskOutcome::Cancelled,
        },
        Event::HookStarted(hook_ref(None)),
        Event::HookFinished(
            hook_ref(Some(3)),
            HookResult {
                outcome: HookOutcome::TimedOut,
                exit: None,
                signal: Some(9),
                duration_ms: 30_000,
                stdout_tail: "line 1\nline 2 ✓\n".into(),
                stderr_tail: String::new(),
                message: "timed out".into(),
            },
        ),
        Event::HookCancelled(hook_ref(Some(0))),
        Event::ConnectionEstablished {
            plug: end("netmon", "net"),
            slot: end("prov", "net"),
            interface: "network".into(),
            auto: true,
        },
        Event::ConnectionRemoved {
            plug: end("netmon", "net"),
            slot: end("prov", "net"),
            undesired: true,
        },
        Event::ConnectionMarked {
            plug: end("netmon", "net"),
            slot: end("prov", "net"),
            undesired: false,
        },
        Event::VarSet {
            owner: "netmon".into(),
            key: "threshold".into(),
            value: serde_bytes::ByteBuf::from((0u8..=255).collect::<Vec<u8>>()),
        },
        Event::VarsDeleted {
            owner: "netmon".into(),
            keys: vec!["a".into(), "b".into()],
        },
        Event::QueuePut {
            owner: "netmon".into(),
            queue: "events".into(),
            items: vec![
                serde_bytes::ByteBuf::from(b"one".to_vec()),
                serde_bytes::ByteBuf::new(),
            ],
        },
        Event::QueueAcked {
            owner: "netmon".into(),
            queue: "events".into(),
            upto: u64::MAX - 1,
        },
        Event::VaultSet {
            owner: "netmon".into(),
            vault: "api-token".into(),
            sealed: serde_bytes::ByteBuf::from(vec![1u8; 41]),
        },
        Event::DaemonDesired {
            owner: "netmon".into(),
            daemon: "collector".into(),
            desired: DaemonState::Disabled,
        },
        Event::DaemonObserved {
            owner: "netmon".into(),
            daemon: "collector".into(),
            observed: DaemonState::Enabled,
        },
        Event::FeatureStateChanged {
            name: "bgp".into(),
            state: FeatureState::AlwaysDisabled,
        },
        Event::FeatureObserved {
            name: "bgp".into(),
            observed: FeatureState::Enabled,
        },
        Event::FeatureScopeSynced {
            name: "bgp".into(),
            scope: Scope {
                global: false,
                per_instance: true,
            },
        },
        Event::SchemaMigrated {
            schema: "cairn".into(),
            from: 0,
            to: 1,
            compat: 1,
            name: "initial".into(),
        },
        Event::Ext {
            kind: "ext.myapp.thing.v1".into(),
            payload: vec![0, 1, 2, 255],
        },
    ]
}

/// Events of kinds added after `events-v1.frames` was committed, in their own golden file (the
/// first one is never edited).
fn token_events() -> Vec<Event> {
    vec![
        Event::TokenCreated {
            name: "ops-read".into(),
            role: Role::Read,
            hash: *blake3_like(),
        },
        Event::TokenCreated {
            name: "m1".into(),
            role: Role::Mirror,
            hash: [0xff; 32],
        },
        Event::TokenRevoked {
            name: "ops-read".into(),
        },
    ]
}

/// Events of kinds added with schema 3, in their own golden file.
fn wal_loss_events() -> Vec<Event> {
    vec![
        Event::WalLossAccepted(cairn_kernel::event::WalLossAccepted {
            detected_ms: 1_764_576_000_000,
            recovered_offset: 10,
            file: "000012.log".into(),
            byte: 4096,
            reason: "checksum mismatch".into(),
            lost_commits: 90,
            lost_through_offset: Some(100),
        }),
        Event::WalLossAccepted(cairn_kernel::event::WalLossAccepted {
            detected_ms: 1,
            recovered_offset: 0,
            file: "000004.log".into(),
            byte: 0,
            reason: String::new(),
            lost_commits: 1,
            lost_through_offset: None,
        }),
    ]
}

/// `epoch.started.v1` (promotion), in its own golden file.
fn epoch_events() -> Vec<Event> {
    vec![
        Event::EpochStarted(cairn_kernel::event::EpochStarted {
            epoch: 2,
            leader: "mirror-1".into(),
            prev_head: 1234,
        }),
        Event::EpochStarted(cairn_kernel::event::EpochStarted {
            epoch: u64::MAX,
            leader: String::new(),
            prev_head: 0,
        }),
    ]
}

/// The drive's events, in their own golden file.
fn drive_events() -> Vec<Event> {
    use cairn_kernel::drive::*;
    let p = |s: &str| DrivePath::parse(s).unwrap();
    let v = DataVersion {
        major: 1,
        minor: 2,
        patch: 3,
    };
    vec![
        Event::Drive(DriveEvent::ItemAdded(ItemAdded {
            path: p("docs"),
            type_name: None,
        })),
        Event::Drive(DriveEvent::ItemAdded(ItemAdded {
            path: p("docs/a.b_c-1"),
            type_name: Some("app:note".into()),
        })),
        Event::Drive(DriveEvent::ItemMoved(ItemMoved {
            from: p("docs/a.b_c-1"),
            to: p("docs/renamed"),
        })),
        Event::Drive(DriveEvent::ItemDeleted(ItemDeleted { path: p("docs") })),
        Event::Drive(DriveEvent::DataPut(DataPut {
            path: p("docs/renamed"),
            version: v,
            data: r#"{"n":1,"s":"é"}"#.into(),
        })),
        Event::Drive(DriveEvent::VersionDeleted(VersionDeleted {
            path: p("docs/renamed"),
            version: DataVersion::FIRST,
        })),
        Event::Drive(DriveEvent::PermSet(PermSet {
            path: p("docs"),
            who: Who::Token("ann".into()),
            level: Some(Level::Edit),
        })),
        Event::Drive(DriveEvent::PermSet(PermSet {
            path: p("docs"),
            who: Who::Role(cairn_kernel::model::Role::Read),
            level: None,
        })),
        Event::Drive(DriveEvent::TypeSet(TypeSet {
            name: "app:note".into(),
            version: 2,
            schema: r#"{"type":"object"}"#.into(),
            migration: Some(FILL_DEFAULTS.into()),
        })),
        Event::Drive(DriveEvent::Migrated(Migrated {
            type_name: "app:note".into(),
            version: 2,
            rewritten: vec![Rewritten {
                path: p("docs/renamed"),
                version: v,
                data: r#"{"n":1,"tag":"x"}"#.into(),
            }],
        })),
    ]
}

/// Kinds added with supervised daemons (`daemon.observed.v2`, and `package.install_started.v2`
/// for a manifest whose daemon names its feature), in their own golden file.
fn daemon_events() -> Vec<Event> {
    use cairn_kernel::model::{DaemonFailure, DaemonObservation, DaemonRun};
    let mut linked = manifest();
    linked.daemons[0].feature = Some("netmon".into());
    let mut install = change(ChangeKind::Install);
    install.tasks.truncate(1);
    let ran = |state: DaemonRun, restarts: u32| Event::DaemonRan {
        owner: "netmon".into(),
        daemon: "collector".into(),
        observation: DaemonObservation { state, restarts },
    };
    vec![
        Event::InstallStarted(InstallStarted {
            manifest: linked,
            change: install,
        }),
        ran(DaemonRun::Running, 0),
        ran(
            DaemonRun::Exited {
                code: Some(3),
                signal: None,
            },
            1,
        ),
        ran(
            DaemonRun::Exited {
                code: None,
                signal: Some(9),
            },
            u32::MAX,
        ),
        ran(
            DaemonRun::Failed {
                reason: DaemonFailure::CrashLoop {
                    ends: 5,
                    window_ms: 60_000,
                },
            },
            4,
        ),
        ran(
            DaemonRun::Failed {
                reason: DaemonFailure::SpawnFailed {
                    error: "No such file or directory (os error 2)".into(),
                },
            },
            0,
        ),
        ran(DaemonRun::Stopped, 2),
    ]
}

/// `package.uninstall_started.v2`: an uninstall whose change stops the package's daemons (the
/// `stop-daemons` step, appended to the v1 step layout), in its own golden file.
fn uninstall_v2_events() -> Vec<Event> {
    let mut uninstall = change(ChangeKind::Uninstall);
    uninstall.tasks.push(Task::new(
        "stop-daemons",
        Step::StopDaemons {
            package: "netmon".into(),
        },
        Step::Nothing,
    ));
    vec![Event::UninstallStarted(UninstallStarted {
        package: "netmon".into(),
        keep: vec![ResourceKind::Daemons],
        change: uninstall,
    })]
}

fn blake3_like() -> &'static [u8; 32] {
    &[
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31,
    ]
}

fn encode_all(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        write_frame(e.kind().as_bytes(), &mut out);
        write_frame(&e.encode(), &mut out);
    }
    out
}

#[test]
fn every_built_in_kind_is_in_the_golden_file() {
    let all = kinds::ALL;
    let mut events = events();
    events.extend(token_events());
    events.extend(wal_loss_events());
    events.extend(epoch_events());
    events.extend(drive_events());
    events.extend(daemon_events());
    events.extend(uninstall_v2_events());
    let covered: std::collections::BTreeSet<&str> = events.iter().map(|e| e.kind()).collect();
    for kind in all {
        assert!(covered.contains(kind), "{kind} has no golden event");
    }
}

#[test]
fn golden_events_decode_to_the_same_values_and_encode_to_the_same_bytes() {
    check_golden(&golden(), &events());
}

#[test]
fn golden_token_events_decode_to_the_same_values_and_encode_to_the_same_bytes() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-tokens-v1.frames");
    check_golden(&path, &token_events());
}

#[test]
fn golden_wal_loss_events_decode_to_the_same_values_and_encode_to_the_same_bytes() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-wal-loss-v1.frames");
    check_golden(&path, &wal_loss_events());
}

#[test]
fn golden_epoch_events_decode_to_the_same_values_and_encode_to_the_same_bytes() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-epoch-v1.frames");
    check_golden(&path, &epoch_events());
}

#[test]
fn golden_drive_events_decode_to_the_same_values_and_encode_to_the_same_bytes() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-drive-v1.frames");
    check_golden(&path, &drive_events());
}

#[test]
fn golden_daemon_events_decode_to_the_same_values_and_encode_to_the_same_bytes() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-daemons-v1.frames");
    let events = daemon_events();
    assert_eq!(events[0].kind(), kinds::INSTALL_STARTED_2);
    check_golden(&path, &events);
}

#[test]
fn golden_uninstall_v2_events_decode_to_the_same_values_and_encode_to_the_same_bytes() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/events-uninstall-v2.frames");
    let events = uninstall_v2_events();
    assert_eq!(events[0].kind(), kinds::UNINSTALL_STARTED_2);
    check_golden(&path, &events);
}

/// The `stop-daemons` step picks the kind: an uninstall without it is written as
/// `package.uninstall_started.v1` with the bytes it always had (pinned by `events-v1.frames`),
/// and a v1-layout kind whose change holds one is refused, as the binaries that wrote v1 refuse
/// it; v2 is the same layout under a kind those binaries refuse by name.
#[test]
fn only_an_uninstall_that_stops_daemons_is_written_as_v2() {
    let v1 = events()
        .into_iter()
        .find(|e| matches!(e, Event::UninstallStarted(_)))
        .expect("events-v1 has an uninstall");
    assert_eq!(v1.kind(), kinds::UNINSTALL_STARTED);
    let v2 = uninstall_v2_events().remove(0);
    assert_eq!(v2.kind(), kinds::UNINSTALL_STARTED_2);
    for kind in [kinds::UNINSTALL_STARTED, kinds::UNINSTALL_STARTED_2] {
        assert_eq!(Event::decode(kind, &v1.encode()).unwrap(), v1, "{kind}");
    }
    let err = Event::decode(kinds::UNINSTALL_STARTED, &v2.encode()).unwrap_err();
    assert!(err.to_string().contains("stop-daemons"), "{err}");
    assert_eq!(
        Event::decode(kinds::UNINSTALL_STARTED_2, &v2.encode()).unwrap(),
        v2
    );
    // No other kind that holds a change is ever written with one: encoding refuses.
    let Event::UninstallStarted(u) = v2 else {
        unreachable!("uninstall_v2_events holds an uninstall")
    };
    let created = Event::ChangeCreated(u.change.clone());
    assert!(std::panic::catch_unwind(|| created.encode()).is_err());
}

// The determinism bans are for the kernel's code; a test may read its environment.
#[allow(clippy::disallowed_methods)]
fn check_golden(path: &std::path::Path, expected: &[Event]) {
    let path = path.to_path_buf();
    if !path.exists() {
        assert!(
            std::env::var("CAIRN_BLESS").as_deref() == Ok("1"),
            "{} is missing; create it with CAIRN_BLESS=1",
            path.display()
        );
        std::fs::write(&path, encode_all(expected)).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let frames = split_frames(&bytes).expect("golden file is well framed");
    assert_eq!(
        frames.len(),
        expected.len() * 2,
        "one kind and one payload frame per event"
    );
    for (pair, want) in frames.chunks(2).zip(expected) {
        let kind = std::str::from_utf8(pair[0]).unwrap();
        let got = Event::decode(kind, pair[1]).unwrap();
        assert_eq!(&got, want, "{kind} decodes differently");
    }
    assert_eq!(
        encode_all(expected),
        bytes,
        "the encoding of an event changed"
    );
}
