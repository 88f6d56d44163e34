//! A failed state read is a failure of the decision, never an answer: when reading a package
//! fails while a connection is being established, the decision fails with that error instead of
//! reading it as "the package exists" (or as "it does not").

use cairn_kernel::manifest;
use cairn_kernel::{query, Action, Command, DecideError, Kernel, Step};
use cairn_log::testing::MemState;
use cairn_log::{EntryDraft, Hash, Meta, Space, StateError, StateRead};
use uuid::Uuid;

/// Reads through to a state, except that reading a package record fails.
struct PackageReadsFail<'a>(&'a MemState);

impl StateRead for PackageReadsFail<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if key == cairn_kernel::keys::package("prov").as_slice() {
            return Err(StateError::io("the disk is gone"));
        }
        self.0.get(space, key)
    }

    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.0.scan_prefix(space, prefix, visit)
    }
}

/// Decides `command` and applies its events as the entries after `head`.
fn run(kernel: &Kernel, state: &mut MemState, head: &mut (u64, Hash), command: Command) {
    let events = kernel
        .decide(state, &command)
        .expect("the command is accepted");
    for event in events {
        let entry = EntryDraft {
            epoch: 1,
            time_ms: 0,
            meta: Meta {
                actor: "test".into(),
                change: None,
                command: Uuid::from_u128(head.0 as u128),
                idempotency_key: None,
            },
            kind: event.kind().to_owned(),
            payload: event.encode(),
        }
        .seal(head.0 + 1, head.1)
        .unwrap();
        kernel.apply(state, &entry).unwrap();
        *head = (entry.offset, entry.hash);
    }
}

/// Runs the change's tasks with `TaskRun` (no hooks are declared) until the next one
/// establishes the connection; returns its index.
fn run_until_establish(
    kernel: &Kernel,
    state: &mut MemState,
    head: &mut (u64, Hash),
    change: Uuid,
) -> u32 {
    loop {
        let c = query::change(&*state, change).unwrap().unwrap();
        let Some(Action::Do(i)) = c.next_action() else {
            panic!("the change stopped before establishing: {c:?}");
        };
        if matches!(c.tasks[i].step, Step::Establish { .. }) {
            return i as u32;
        }
        let task = i as u32;
        run(
            kernel,
            state,
            head,
            Command::TaskRun {
                change,
                task,
                undo: false,
            },
        );
    }
}

#[test]
fn a_failed_package_read_fails_the_decision_to_establish_a_connection() {
    let kernel = Kernel::new();
    let mut state = MemState::default();
    let mut head = (0, Hash::ZERO);
    let packages = [
        "name = \"prov\"\nversion = \"1\"\n[[slots]]\nname = \"m\"\ninterface = \"metrics\"\n",
        "name = \"cons\"\nversion = \"1\"\n[[plugs]]\nname = \"m\"\ninterface = \"metrics\"\n",
    ];
    for (n, text) in packages.into_iter().enumerate() {
        let change = Uuid::from_u128(100 + n as u128);
        let manifest = manifest::parse(text).unwrap();
        run(
            &kernel,
            &mut state,
            &mut head,
            Command::Install { manifest, change },
        );
        while let Some(Action::Do(i)) = query::change(&state, change)
            .unwrap()
            .unwrap()
            .next_action()
        {
            let task = i as u32;
            run(
                &kernel,
                &mut state,
                &mut head,
                Command::TaskRun {
                    change,
                    task,
                    undo: false,
                },
            );
        }
    }
    let change = Uuid::from_u128(200);
    let connect = Command::Connect {
        plug: ("cons".into(), "m".into()),
        slot: ("prov".into(), "m".into()),
        change,
    };
    run(&kernel, &mut state, &mut head, connect);
    let task = run_until_establish(&kernel, &mut state, &mut head, change);
    let establish = Command::TaskRun {
        change,
        task,
        undo: false,
    };
    match kernel.decide(&PackageReadsFail(&state), &establish) {
        Err(DecideError::State(e)) => assert!(e.to_string().contains("the disk is gone"), "{e}"),
        other => panic!("a failed read must fail the decision, got {other:?}"),
    }
    // With the read working, the same decision establishes the connection.
    let events = kernel.decide(&state, &establish).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind() == "connection.established.v1"),
        "{events:?}"
    );
}
