//! `apply` stores facts, not prose: the records it writes for a failed hook hold the event's
//! data as typed values, and the messages users read appear only when they are rendered. A
//! mirror running a newer binary than its leader then folds the same log to the same bytes,
//! whatever the newer binary's wording.

use cairn_kernel::change::TaskNote;
use cairn_kernel::event::{HookOutcome, HookResult, HookSummary};
use cairn_kernel::records::{BrokenReason, PackageRecord, PackageStatus};
use cairn_kernel::{keys, manifest, query, Action, Command, Kernel, Step};
use cairn_log::testing::MemState;
use cairn_log::{EntryDraft, Hash, Meta, Space, StateRead};
use uuid::Uuid;

/// The kernel over a projection in memory, committing each command's events as entries.
struct Sim {
    kernel: Kernel,
    state: MemState,
    head: (u64, Hash),
}

impl Sim {
    fn new() -> Self {
        Sim {
            kernel: Kernel::new(),
            state: MemState::default(),
            head: (0, Hash::ZERO),
        }
    }

    fn run(&mut self, command: Command) {
        let events = self
            .kernel
            .decide(&self.state, &command)
            .unwrap_or_else(|e| panic!("{command:?} is accepted: {e:?}"));
        for event in events {
            let entry = EntryDraft {
                epoch: 1,
                time_ms: 1_000 + self.head.0,
                meta: Meta {
                    actor: "test".into(),
                    change: None,
                    command: Uuid::from_u128(self.head.0 as u128),
                    idempotency_key: None,
                },
                kind: event.kind().to_owned(),
                payload: event.encode(),
            }
            .seal(self.head.0 + 1, self.head.1)
            .unwrap();
            self.kernel.apply(&mut self.state, &entry).unwrap();
            self.head = (entry.offset, entry.hash);
        }
    }

    /// Runs a change to the end; every declared hook ends as `hook` says.
    fn drive(&mut self, change: Uuid, hook: impl Fn(&str) -> HookResult) {
        loop {
            let c = query::change(&self.state, change).unwrap().unwrap();
            let Some(action) = c.next_action() else {
                return;
            };
            let (i, undo) = match action {
                Action::Do(i) => (i, false),
                Action::Undo(i) => (i, true),
            };
            let task = i as u32;
            let step = if undo {
                &c.tasks[i].undo
            } else {
                &c.tasks[i].step
            };
            let declared = match step {
                Step::Hook { package, hook, .. } => query::package(&self.state, package)
                    .unwrap()
                    .filter(|p| p.manifest.hooks.contains_key(hook))
                    .map(|_| hook.clone()),
                _ => None,
            };
            match declared {
                Some(name) => {
                    self.run(Command::HookStart { change, task, undo });
                    let result = Some(hook(&name));
                    self.run(Command::HookFinish {
                        change,
                        task,
                        undo,
                        result,
                    });
                }
                None => self.run(Command::TaskRun { change, task, undo }),
            }
        }
    }

    fn record(&self, key: &[u8]) -> Vec<u8> {
        self.state.get(Space::State, key).unwrap().expect("record")
    }
}

fn exit(code: i32, duration_ms: u64) -> HookResult {
    HookResult {
        outcome: if code == 0 {
            HookOutcome::Succeeded
        } else {
            HookOutcome::Failed
        },
        exit: Some(code),
        signal: None,
        duration_ms,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        message: String::new(),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

const MANIFEST: &str = "name = \"netmon\"\nversion = \"1\"\n\
    [hooks.onload]\nrun = \"false\"\n\
    [hooks.onuninstall]\nrun = \"false\"\n";

#[test]
fn a_failed_onload_is_stored_as_its_result_and_rendered_only_when_read() {
    let mut sim = Sim::new();
    let change = Uuid::from_u128(1);
    sim.run(Command::Install {
        manifest: manifest::parse(MANIFEST).unwrap(),
        change,
    });
    sim.drive(change, |_| exit(0, 1));
    sim.run(Command::OnloadStart {
        package: "netmon".into(),
    });
    sim.run(Command::OnloadFinish {
        package: "netmon".into(),
        attempt: 1,
        result: exit(3, 12),
    });

    let bytes = sim.record(&keys::package("netmon"));
    for prose in ["onload hook", "exit 3", "after 12 ms"] {
        assert!(
            !contains(&bytes, prose),
            "the package record holds the binary's words {prose:?}"
        );
    }
    let p: PackageRecord = cairn_log::codec::decode_value(&bytes).unwrap();
    let PackageStatus::Broken { reason } = &p.status else {
        panic!("the package is broken: {:?}", p.status);
    };
    assert_eq!(
        reason,
        &BrokenReason::OnloadFailed {
            attempt: 1,
            result: HookSummary {
                outcome: HookOutcome::Failed,
                exit: Some(3),
                signal: None,
                duration_ms: 12,
                message: String::new(),
            },
        }
    );
    assert_eq!(reason.to_string(), "onload hook exit 3 after 12 ms");
    let status = sim.record(&keys::package_status("netmon"));
    assert!(!contains(&status, "onload hook"), "the status key too");
}

#[test]
fn a_failed_task_hook_is_stored_as_typed_notes_and_rendered_only_when_read() {
    let mut sim = Sim::new();
    let install = Uuid::from_u128(1);
    sim.run(Command::Install {
        manifest: manifest::parse(MANIFEST).unwrap(),
        change: install,
    });
    sim.drive(install, |_| exit(0, 1));
    let uninstall = Uuid::from_u128(2);
    sim.run(Command::Uninstall {
        package: "netmon".into(),
        keep: vec![],
        strict: true,
        change: uninstall,
    });
    sim.drive(uninstall, |_| exit(4, 7));

    let bytes = sim.record(&keys::change(uninstall));
    // The failure's `why` is the event's (decide wrote it into `task.finished.v1`); the
    // binary's own wording of a note is never stored.
    for prose in ["attempt 1:", "failed: ", "hook onuninstall attempt"] {
        assert!(
            !contains(&bytes, prose),
            "the change record holds the binary's words {prose:?}"
        );
    }
    let c = query::change(&sim.state, uninstall).unwrap().unwrap();
    let t = c.tasks.iter().find(|t| t.name == "onuninstall").unwrap();
    let why = "hook onuninstall exit 4 after 7 ms".to_string();
    assert_eq!(
        t.log,
        [
            TaskNote::HookFinished {
                hook: "onuninstall".into(),
                attempt: 1,
                result: exit(4, 7).summary(),
            },
            TaskNote::Failed { why: why.clone() },
        ]
    );
    let rendered: Vec<String> = t.log.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        [
            "hook onuninstall attempt 1: exit 4 after 7 ms".to_string(),
            format!("failed: {why}"),
        ]
    );
}
