//! The Drive at the kernel level, over an in-memory state: random item, data and type
//! operations with schema upgrades and migrations (replay without the migrations' code
//! reproduces the state; every stored version validates against its type's current schema;
//! versions never move backwards; deleting the newest falls back), the permission matrix, and
//! bad input (path tricks, oversized or invalid data), which changes nothing.

use std::sync::Arc;

use cairn_kernel::drive::{
    self, DataVersion, DriveActor, DriveCommand, DrivePath, Level, MigrationInput, Who,
    DRIVE_DATA_BYTES_MAX, DRIVE_MIGRATION_BYTES_MAX, DRIVE_MIGRATION_CHUNK_BYTES_MAX,
    FILL_DEFAULTS,
};
use cairn_kernel::model::Role;
use cairn_kernel::{Command, DecideError, Event, Kernel};
use cairn_log::testing::MemState;
use cairn_log::{EntryDraft, Hash, Meta, StoredEntry};
use proptest::prelude::*;
use uuid::Uuid;

/// A kernel, its state and its log.
struct Drive {
    kernel: Kernel,
    state: MemState,
    entries: Vec<StoredEntry>,
    head: (u64, Hash),
}

/// `clamp`: a migration only the leader has (replay runs without it).
fn clamp(
    input: &MigrationInput<'_>,
    mut data: serde_json::Value,
) -> Result<serde_json::Value, String> {
    if input.from_version >= input.to_version {
        return Err("clamp runs on upgrades only".into());
    }
    if let Some(n) = data.get("n").and_then(|n| n.as_i64()) {
        if n < -100 {
            return Err(format!("n = {n} is too far below 0 to clamp"));
        }
        data["n"] = serde_json::json!(n.max(0));
    }
    Ok(data)
}

fn leader_kernel() -> Kernel {
    Kernel::new()
        .with_drive_migration("clamp", Arc::new(clamp))
        .unwrap()
}

fn admin() -> DriveActor {
    DriveActor::admin("test")
}

fn path(p: &str) -> DrivePath {
    DrivePath::parse(p).unwrap()
}

impl Drive {
    fn new() -> Self {
        Drive {
            kernel: leader_kernel(),
            state: MemState::default(),
            entries: Vec::new(),
            head: (0, Hash::ZERO),
        }
    }

    /// Decides and applies; a rejection must leave the state as it was.
    fn run(&mut self, actor: &DriveActor, op: DriveCommand) -> Result<usize, String> {
        let command = Command::Drive {
            actor: actor.clone(),
            op,
        };
        let before = self.state.clone();
        let events = match self.kernel.decide(&self.state, &command) {
            Ok(e) => e,
            Err(DecideError::Rejected(r)) => {
                assert_eq!(self.state, before, "a rejection changed nothing");
                return Err(r.to_string());
            }
            Err(DecideError::State(e)) => panic!("{command:?}: a read failed: {e}"),
        };
        let n = events.len();
        for event in events {
            self.append(event);
        }
        Ok(n)
    }

    fn append(&mut self, event: Event) {
        let entry = EntryDraft {
            epoch: 1,
            time_ms: 7,
            meta: Meta {
                actor: "test".into(),
                change: None,
                command: Uuid::from_u128(self.head.0 as u128 + 1),
                idempotency_key: None,
            },
            kind: event.kind().to_owned(),
            payload: event.encode(),
        }
        .seal(self.head.0 + 1, self.head.1)
        .expect("a drive event seals");
        self.kernel
            .apply(&mut self.state, &entry)
            .unwrap_or_else(|e| panic!("{}: {e}", entry.kind));
        self.head = (entry.offset, entry.hash);
        self.entries.push(entry);
    }

    fn ok(&mut self, op: DriveCommand) -> usize {
        let what = format!("{op:?}");
        self.run(&admin(), op)
            .unwrap_or_else(|e| panic!("{what} was rejected: {e}"))
    }

    /// The state a binary without the leader's migrations folds from the log.
    fn replayed(&self) -> MemState {
        let kernel = Kernel::new();
        let mut state = MemState::default();
        for e in &self.entries {
            kernel.apply(&mut state, e).unwrap();
        }
        state
    }
}

fn add(p: &str, t: Option<&str>) -> DriveCommand {
    DriveCommand::Add {
        path: path(p),
        type_name: t.map(str::to_string),
    }
}

fn put(p: &str, v: Option<&str>, data: &str) -> DriveCommand {
    DriveCommand::Put {
        path: path(p),
        version: v.map(|v| DataVersion::parse(v).unwrap()),
        data: data.into(),
    }
}

/// The test type's schema at version `v`: `n` (an integer) always; from 2 on also `tag`
/// (default "x"); from 3 on `n` ≥ 0.
fn schema(v: u32) -> String {
    let n = if v >= 3 {
        serde_json::json!({"type": "integer", "minimum": 0})
    } else {
        serde_json::json!({"type": "integer"})
    };
    let mut s = serde_json::json!({
        "type": "object",
        "properties": {"n": n},
        "required": ["n"],
    });
    if v >= 2 {
        s["properties"]["tag"] = serde_json::json!({"type": "string", "default": "x"});
        s["required"] = serde_json::json!(["n", "tag"]);
    }
    s.to_string()
}

fn set_type(v: u32, migration: Option<&str>) -> DriveCommand {
    DriveCommand::SetType {
        name: "t".into(),
        version: v,
        schema: schema(v),
        migration: migration.map(str::to_string),
    }
}

/// Every invariant of the drive that holds after any step.
fn check(d: &Drive) {
    let types = drive::types(&d.state).unwrap();
    for t in &types {
        let schema: serde_json::Value = serde_json::from_str(&t.schema).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        for p in drive::items_of_type(&d.state, &t.name).unwrap() {
            for v in drive::versions(&d.state, &p).unwrap() {
                let data: serde_json::Value =
                    serde_json::from_str(&drive::data(&d.state, &p, v).unwrap().unwrap()).unwrap();
                assert!(
                    validator.is_valid(&data),
                    "{p} {v} = {data} does not match type {} version {}",
                    t.name,
                    t.version
                );
            }
        }
    }
    // Every item's current version is its newest stored one.
    let mut stack = vec![None];
    while let Some(parent) = stack.pop() {
        for item in drive::children(&d.state, parent.as_ref(), None, usize::MAX).unwrap() {
            let versions = drive::versions(&d.state, &item.path).unwrap();
            assert_eq!(item.current, versions.last().copied(), "{}", item.path);
            stack.push(Some(item.path.clone()));
        }
    }
}

const PATHS: [&str; 6] = ["a", "a/b", "a/b/c", "d", "d/e", "a/f"];
const DATA: [&str; 7] = [
    r#"{"n": 1}"#,
    r#"{"n": -2}"#,
    r#"{"n": 3, "tag": "y"}"#,
    r#"{"n": -500}"#,
    r#"{"bad": true}"#,
    "5",
    "not json",
];

#[derive(Clone, Debug)]
enum Op {
    Add(usize, bool),
    Put(usize, Option<(u32, u32)>, usize),
    DeleteVersion(usize, (u32, u32)),
    Move(usize, usize),
    Delete(usize),
    SetType(u32, Option<&'static str>),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    let ver = (1u32..3, 0u32..3);
    prop_oneof![
        3 => (p.clone(), any::<bool>()).prop_map(|(p, t)| Op::Add(p, t)),
        4 => (p.clone(), proptest::option::of(ver.clone()), 0..DATA.len())
            .prop_map(|(p, v, d)| Op::Put(p, v, d)),
        1 => (p.clone(), ver).prop_map(|(p, v)| Op::DeleteVersion(p, v)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Move(a, b)),
        1 => p.prop_map(Op::Delete),
        2 => (1u32..5, prop_oneof![Just(None), Just(Some(FILL_DEFAULTS)), Just(Some("clamp"))])
            .prop_map(|(v, m)| Op::SetType(v, m)),
    ]
}

fn version(v: (u32, u32)) -> DataVersion {
    DataVersion {
        major: v.0,
        minor: v.1,
        patch: 0,
    }
}

// Tests read the slow-test switch; the kernel itself reads no environment.
#[allow(clippy::disallowed_methods)]
fn cases() -> u32 {
    if std::env::var("CAIRN_SLOW_TESTS").is_ok() {
        2_000
    } else {
        300
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_drive_operations_replay_to_the_same_state_and_keep_every_invariant(
        ops in proptest::collection::vec(arb_op(), 1..40)
    ) {
        let mut d = Drive::new();
        d.ok(set_type(1, None));
        for op in ops {
            let before = d.state.clone();
            match op {
                Op::Add(p, typed) => {
                    let _ = d.run(&admin(), add(PATHS[p], typed.then_some("t")));
                }
                Op::Put(p, v, data) => {
                    let item = drive::item(&d.state, &path(PATHS[p])).unwrap();
                    let cur = item.as_ref().and_then(|i| i.current);
                    let v = v.map(version);
                    let cmd = DriveCommand::Put { path: path(PATHS[p]), version: v, data: DATA[data].into() };
                    if d.run(&admin(), cmd).is_ok() {
                        let now = drive::item(&d.state, &path(PATHS[p])).unwrap().unwrap().current;
                        prop_assert!(now >= cur, "versions never go backwards: {cur:?} -> {now:?}");
                        if let Some(v) = v { prop_assert_eq!(now, Some(v.max(cur.unwrap_or(v)))); }
                    }
                }
                Op::DeleteVersion(p, v) => {
                    let v = version(v);
                    let before_versions = drive::versions(&d.state, &path(PATHS[p])).unwrap_or_default();
                    let cmd = DriveCommand::DeleteVersion { path: path(PATHS[p]), version: v };
                    if d.run(&admin(), cmd).is_ok() {
                        let expect = before_versions.iter().copied().filter(|x| *x != v).max();
                        let now = drive::item(&d.state, &path(PATHS[p])).unwrap().unwrap().current;
                        prop_assert_eq!(now, expect, "deleting a version falls back to the newest left");
                    } else {
                        prop_assert!(!before_versions.contains(&v) || drive::item(&before, &path(PATHS[p])).unwrap().is_none());
                    }
                }
                Op::Move(a, b) => {
                    let _ = d.run(&admin(), DriveCommand::Move { from: path(PATHS[a]), to: path(PATHS[b]) });
                }
                Op::Delete(p) => {
                    if d.run(&admin(), DriveCommand::Delete { path: path(PATHS[p]) }).is_ok() {
                        prop_assert!(drive::item(&d.state, &path(PATHS[p])).unwrap().is_none());
                        prop_assert!(drive::versions(&d.state, &path(PATHS[p])).unwrap().is_empty());
                    }
                }
                Op::SetType(v, m) => {
                    let _ = d.run(&admin(), set_type(v, m));
                }
            }
            check(&d);
        }
        prop_assert_eq!(&d.replayed(), &d.state, "replay without the migrations' code reproduces the state");
    }
}

#[test]
fn a_migration_rewrites_every_version_records_its_outcome_and_a_failure_rejects_it_all() {
    let mut d = Drive::new();
    d.ok(set_type(1, None));
    d.ok(add("f", None));
    for i in 0..3 {
        d.ok(add(&format!("f/i{i}"), Some("t")));
        d.ok(put(
            &format!("f/i{i}"),
            None,
            &format!(r#"{{"n": {}}}"#, i as i64 - 1),
        ));
        d.ok(put(&format!("f/i{i}"), None, r#"{"n": 5}"#));
    }
    // Version 2 needs `tag`: without a migration the old data does not match, naming the item.
    let err = d.run(&admin(), set_type(2, None)).unwrap_err();
    assert!(err.contains("f/i0") && err.contains("tag"), "{err}");
    let err = d.run(&admin(), set_type(2, Some("nope"))).unwrap_err();
    assert!(
        err.contains("not registered") && err.contains(FILL_DEFAULTS),
        "{err}"
    );
    assert_eq!(
        d.ok(set_type(2, Some(FILL_DEFAULTS))),
        2,
        "the type and one chunk"
    );
    let v = DataVersion::FIRST;
    let data = drive::data(&d.state, &path("f/i0"), v).unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&data).unwrap(),
        serde_json::json!({"n": -1, "tag": "x"}),
        "every version was rewritten, not only the current one"
    );
    // Version 3 needs n >= 0: clamp fixes the negative one.
    d.ok(set_type(3, Some("clamp")));
    let data = drive::data(&d.state, &path("f/i0"), v).unwrap().unwrap();
    assert!(data.contains(r#""n":0"#), "{data}");
    // Lower and equal versions.
    let err = d.run(&admin(), set_type(2, None)).unwrap_err();
    assert!(err.contains("backwards"), "{err}");
    assert_eq!(
        d.ok(set_type(3, None)),
        0,
        "the same version and schema is a no-op"
    );
    let err = d
        .run(
            &admin(),
            DriveCommand::SetType {
                name: "t".into(),
                version: 3,
                schema: schema(1),
                migration: None,
            },
        )
        .unwrap_err();
    assert!(err.contains("another schema"), "{err}");
    // A migration failing on one item rejects the whole upgrade, naming the item.
    d.ok(set_type(4, None));
    let mut e = Drive::new();
    e.ok(set_type(1, None));
    e.ok(add("ok", Some("t")));
    e.ok(put("ok", None, r#"{"n": 1}"#));
    e.ok(add("far", Some("t")));
    e.ok(put("far", None, r#"{"n": -500}"#));
    let err = e.run(&admin(), set_type(2, Some("clamp"))).unwrap_err();
    assert!(err.contains("far") && err.contains("too far"), "{err}");
    assert_eq!(
        drive::drive_type(&e.state, "t").unwrap().unwrap().version,
        1
    );
    check(&d);
    assert_eq!(d.replayed(), d.state);
}

#[test]
fn a_large_migration_is_chunked_over_entries_of_one_command() {
    let mut d = Drive::new();
    d.ok(set_type(1, None));
    let pad = "p".repeat(900);
    let items = 2_500;
    for i in 0..items {
        d.ok(add(&format!("i{i}"), Some("t")));
        d.ok(put(
            &format!("i{i}"),
            None,
            &format!(r#"{{"n": 1, "pad": "{pad}"}}"#),
        ));
    }
    let events = d.ok(set_type(2, Some(FILL_DEFAULTS)));
    let expect_min = (items * 900) / DRIVE_MIGRATION_CHUNK_BYTES_MAX + 1;
    assert!(
        events > expect_min,
        "{events} entries for {items} rewritten items (chunks of {DRIVE_MIGRATION_CHUNK_BYTES_MAX} bytes)"
    );
    check(&d);
    assert_eq!(d.replayed(), d.state);
}

#[test]
fn the_permission_matrix_with_inheritance_and_a_deny_below_an_allow() {
    let mut d = Drive::new();
    d.ok(add("team", None));
    d.ok(add("team/docs", None));
    d.ok(add("team/docs/secret", None));
    d.ok(put("team/docs/secret", None, "{}"));
    let reader = DriveActor {
        token: "ann".into(),
        role: Role::Read,
    };
    let writer = DriveActor {
        token: "bob".into(),
        role: Role::Write,
    };
    let lv = |d: &Drive, a: &DriveActor, p: &str| drive::level(&d.state, a, &path(p)).unwrap();
    // Role defaults, with nothing set.
    assert_eq!(lv(&d, &reader, "team/docs"), Level::Read);
    assert_eq!(lv(&d, &writer, "team/docs"), Level::Edit);
    assert_eq!(lv(&d, &admin(), "team/docs"), Level::Admin);
    // A reader cannot write; a writer can, but cannot set permissions.
    let err = d.run(&reader, add("team/docs/x", None)).unwrap_err();
    assert!(err.contains("ann") && err.contains("edit"), "{err}");
    d.run(&writer, add("team/docs/x", None)).unwrap();
    let perm = |p: &str, who: Who, level: Option<Level>| DriveCommand::SetPerm {
        path: path(p),
        who,
        level,
    };
    let err = d
        .run(
            &writer,
            perm("team", Who::Role(Role::Read), Some(Level::Edit)),
        )
        .unwrap_err();
    assert!(err.contains("admin"), "{err}");
    // Granted on `team`, inherited below; a deny lower down wins over it.
    d.ok(perm("team", Who::Token("ann".into()), Some(Level::Edit)));
    assert_eq!(lv(&d, &reader, "team/docs/secret"), Level::Edit);
    d.run(&reader, put("team/docs/secret", None, r#"{"by": "ann"}"#))
        .unwrap();
    d.ok(perm(
        "team/docs/secret",
        Who::Role(Role::Read),
        Some(Level::Deny),
    ));
    assert_eq!(
        lv(&d, &reader, "team/docs/secret"),
        Level::Deny,
        "the nearer deny wins over the token's inherited edit"
    );
    // Denied even read: it is not told the item exists, exactly as for a missing one.
    let hidden = d
        .run(&reader, put("team/docs/secret", None, "{}"))
        .unwrap_err();
    let missing = d
        .run(&reader, put("team/docs/none", None, "{}"))
        .unwrap_err();
    assert_eq!(
        hidden.replace("secret", "X"),
        missing.replace("none", "X"),
        "a hidden item and a missing one are refused alike"
    );
    let hidden = d.run(&reader, add("team/docs/secret", None)).unwrap_err();
    assert!(!hidden.contains("exists"), "{hidden}");
    // A subtree with a denied item cannot be deleted or moved by whoever is denied there.
    let err = d
        .run(
            &reader,
            DriveCommand::Delete {
                path: path("team/docs"),
            },
        )
        .unwrap_err();
    assert!(
        err.contains("team/docs") && !err.contains("secret"),
        "refused without naming what the reader may not see: {err}"
    );
    // The token's own permission at the same item beats its role's.
    d.ok(perm(
        "team/docs/secret",
        Who::Token("ann".into()),
        Some(Level::Admin),
    ));
    assert_eq!(lv(&d, &reader, "team/docs/secret"), Level::Admin);
    d.run(
        &reader,
        perm(
            "team/docs/secret",
            Who::Token("cy".into()),
            Some(Level::Read),
        ),
    )
    .unwrap();
    // Clearing inherits again.
    d.ok(perm("team/docs/secret", Who::Token("ann".into()), None));
    assert_eq!(lv(&d, &reader, "team/docs/secret"), Level::Deny);
    // Every level, at an item under an explicit grant, for a read token.
    for level in [Level::Deny, Level::Read, Level::Edit, Level::Admin] {
        d.ok(perm("team/docs/x", Who::Token("ann".into()), Some(level)));
        assert_eq!(lv(&d, &reader, "team/docs/x"), level);
        let can_put = d.run(&reader, put("team/docs/x", None, "{}")).is_ok();
        assert_eq!(can_put, level >= Level::Edit, "put at {level:?}");
        let can_perm = d
            .run(
                &reader,
                perm("team/docs/x", Who::Token("zed".into()), Some(Level::Read)),
            )
            .is_ok();
        assert_eq!(
            can_perm,
            level >= Level::Admin,
            "set a permission at {level:?}"
        );
        d.ok(perm("team/docs/x", Who::Token("zed".into()), None));
    }
    // Resolving levels from the top, one item at a time, agrees with walking each item's
    // ancestors.
    for actor in [&reader, &writer] {
        let mut stack = vec![(None, drive::root_level(actor))];
        while let Some((parent, inherited)) = stack.pop() {
            for item in drive::children(&d.state, parent.as_ref(), None, usize::MAX).unwrap() {
                let top_down = drive::level_under(&item, actor, inherited);
                assert_eq!(top_down, lv(&d, actor, item.path.as_str()), "{}", item.path);
                stack.push((Some(item.path.clone()), top_down));
            }
        }
    }
    // Types are the workspace admin's.
    let err = d.run(&writer, set_type(1, None)).unwrap_err();
    assert!(err.contains("admin"), "{err}");
    assert_eq!(d.replayed(), d.state);
}

#[test]
fn a_move_that_would_make_a_path_too_deep_is_refused() {
    let mut d = Drive::new();
    let mut at = String::from("a");
    d.ok(add(&at, None));
    for i in 1..32 {
        at = format!("{at}/s{i}");
        d.ok(add(&at, None));
    }
    d.ok(add("p", None));
    let before = d.state.clone();
    let err = d
        .run(
            &admin(),
            DriveCommand::Move {
                from: path("a"),
                to: path("p/a"),
            },
        )
        .unwrap_err();
    assert!(err.contains("33 segments"), "{err}");
    assert_eq!(d.state, before);
    d.ok(DriveCommand::Move {
        from: path("a/s1"),
        to: path("p/s1"),
    });
    check(&d);
    assert_eq!(d.replayed(), d.state);
}

#[test]
fn sibling_names_that_share_a_prefix_stay_apart_through_moves_and_deletes() {
    let mut d = Drive::new();
    for p in ["a", "a/x", "a-b", "a-b/y", "a0", "ab"] {
        d.ok(add(p, None));
        d.ok(put(p, None, &format!(r#"{{"at": "{p}"}}"#)));
    }
    d.ok(DriveCommand::Move {
        from: path("a"),
        to: path("z"),
    });
    for p in ["a-b", "a-b/y", "a0", "ab", "z", "z/x"] {
        assert!(drive::item(&d.state, &path(p)).unwrap().is_some(), "{p}");
    }
    d.ok(DriveCommand::Delete { path: path("a-b") });
    assert!(drive::item(&d.state, &path("a0")).unwrap().is_some());
    assert!(drive::item(&d.state, &path("z/x")).unwrap().is_some());
    let names: Vec<String> = drive::children(&d.state, None, None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|i| i.path.to_string())
        .collect();
    assert_eq!(names, ["a0", "ab", "z"]);
    check(&d);
    assert_eq!(d.replayed(), d.state);
}

#[test]
fn a_type_upgrade_over_more_data_than_the_named_limit_is_refused_naming_it() {
    let mut d = Drive::new();
    d.ok(DriveCommand::SetType {
        name: "big".into(),
        version: 1,
        schema: r#"{"type": "object"}"#.into(),
        migration: None,
    });
    d.ok(add("b", None));
    // Just over the limit in all, each item well under the data limit.
    let body = "x".repeat(DRIVE_DATA_BYTES_MAX - 1024);
    let stored = format!(r#"{{"body":"{body}"}}"#).len();
    let items = DRIVE_MIGRATION_BYTES_MAX / stored + 1;
    for i in 0..items {
        d.ok(add(&format!("b/i{i}"), Some("big")));
        d.ok(put(
            &format!("b/i{i}"),
            None,
            &format!(r#"{{"body": "{body}"}}"#),
        ));
    }
    let before = d.state.clone();
    let upgrade = |migration: Option<&str>| DriveCommand::SetType {
        name: "big".into(),
        version: 2,
        schema: r#"{"type": "object", "properties": {"tag": {"type": "string", "default": "t"}}}"#
            .into(),
        migration: migration.map(str::to_string),
    };
    for migration in [Some(FILL_DEFAULTS), None] {
        let err = d.run(&admin(), upgrade(migration)).unwrap_err();
        assert!(
            err.contains("DRIVE_MIGRATION_BYTES_MAX") && err.contains("type big"),
            "{migration:?}: {err}"
        );
        assert_eq!(
            d.state, before,
            "{migration:?}: a refused upgrade wrote nothing"
        );
    }
    // With fewer items (their rewritten data, its paths and versions within the limit too),
    // the same upgrade goes through, in chunks of one commit.
    let fit = DRIVE_MIGRATION_BYTES_MAX / (stored + 64);
    for i in fit..items {
        d.ok(DriveCommand::Delete {
            path: path(&format!("b/i{i}")),
        });
    }
    let entries = d.ok(upgrade(Some(FILL_DEFAULTS)));
    assert!(entries > 2, "{entries} entries");
    check(&d);
}

#[test]
fn after_the_last_patch_a_put_must_name_its_version() {
    let mut d = Drive::new();
    d.ok(add("a", None));
    d.ok(put(
        "a",
        Some(&format!("1.0.{}", DataVersion::PART_MAX)),
        "{}",
    ));
    let before = d.state.clone();
    let err = d.run(&admin(), put("a", None, r#"{"n": 1}"#)).unwrap_err();
    assert!(err.contains("name the next version"), "{err}");
    assert_eq!(d.state, before, "nothing replaced the last version");
    d.ok(put("a", Some("1.1.0"), r#"{"n": 1}"#));
    assert_eq!(
        drive::versions(&d.state, &path("a"))
            .unwrap()
            .last()
            .map(|v| v.to_string()),
        Some("1.1.0".to_string())
    );
}

/// A state that counts the keys its scans visit.
struct Counting<'a>(&'a MemState, std::cell::Cell<usize>);

impl cairn_log::StateRead for Counting<'_> {
    fn get(
        &self,
        space: cairn_log::Space,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, cairn_log::StateError> {
        self.0.get(space, key)
    }

    fn scan_prefix(
        &self,
        space: cairn_log::Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), cairn_log::StateError> {
        self.scan_prefix_from(space, prefix, prefix, visit)
    }

    fn scan_prefix_from(
        &self,
        space: cairn_log::Space,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), cairn_log::StateError> {
        self.0.scan_prefix_from(space, prefix, from, &mut |k, v| {
            self.1.set(self.1.get() + 1);
            visit(k, v)
        })
    }
}

#[test]
fn a_listing_pages_by_name_and_jumps_over_what_lies_under_each_child() {
    let mut d = Drive::new();
    // Names that sort around each other's subtrees: `a-b` and `a.c` before `a/...`, `a0`
    // right after it.
    let tops = ["a", "a-b", "a.c", "a0", "ab", "b"];
    for t in tops {
        d.ok(add(t, None));
    }
    for t in ["a", "a-b", "ab"] {
        for i in 0..40 {
            d.ok(add(&format!("{t}/k{i:02}"), None));
        }
        d.ok(add(&format!("{t}/k00/deeper"), None));
    }
    let names = |parent: Option<&str>, after: Option<&str>, limit: usize| -> Vec<String> {
        let parent = parent.map(path);
        drive::children(&d.state, parent.as_ref(), after, limit)
            .unwrap()
            .into_iter()
            .map(|i| i.path.name().to_string())
            .collect()
    };
    // Against the naive answer: every item whose parent is `parent`, names after `after`.
    for parent in [None, Some("a"), Some("a-b"), Some("a/k00"), Some("b")] {
        let mut all: Vec<String> = Vec::new();
        let mut stack = vec![None];
        while let Some(p) = stack.pop() {
            for i in drive::children(&d.state, p.as_ref(), None, usize::MAX).unwrap() {
                if i.path.parent().as_ref().map(|p| p.to_string()).as_deref() == parent {
                    all.push(i.path.name().to_string());
                }
                stack.push(Some(i.path.clone()));
            }
        }
        all.sort();
        let mut afters: Vec<Option<String>> = vec![None];
        for n in &all {
            afters.push(Some(n.clone()));
            afters.push(Some(format!("{n}-")));
        }
        afters.push(Some("zzz".into()));
        for after in &afters {
            let want: Vec<String> = all
                .iter()
                .filter(|n| after.as_ref().is_none_or(|a| n.as_str() > a.as_str()))
                .cloned()
                .collect();
            for limit in [1, 2, 3, usize::MAX] {
                let got = names(parent, after.as_deref(), limit);
                assert_eq!(
                    got,
                    want[..want.len().min(limit)],
                    "children of {parent:?} after {after:?}, at most {limit}"
                );
            }
        }
    }
    // Paging through the root visits each top-level item once, never the 123 items under them.
    let counting = Counting(&d.state, std::cell::Cell::new(0));
    let mut after: Option<String> = None;
    let mut paged = Vec::new();
    loop {
        let page = drive::children(&counting, None, after.as_deref(), 2).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.path.name().to_string());
        paged.extend(page.into_iter().map(|i| i.path.to_string()));
    }
    assert_eq!(paged, tops);
    assert!(
        counting.1.get() <= 2 * tops.len() + 4,
        "{} keys visited to list {} items",
        counting.1.get(),
        tops.len()
    );
}

#[test]
fn path_tricks_bad_and_oversized_data_are_refused_naming_the_reason() {
    for bad in [
        "", "/etc", "a//b", "a/", "../x", "a/../b", "a/./b", ".", "..", "A", "a/B", "a b", "a%2Fb",
        "a\\b", "-a",
    ] {
        let err = DrivePath::parse(bad).unwrap_err();
        assert!(!err.is_empty(), "{bad:?}");
    }
    assert!(DrivePath::parse(&"s".repeat(65))
        .unwrap_err()
        .contains("segment"));
    let deep = vec!["a"; 33].join("/");
    assert!(DrivePath::parse(&deep).unwrap_err().contains("33 segments"));
    assert!(DrivePath::parse("a/b-c/d.e_f/0").is_ok());

    let mut d = Drive::new();
    d.ok(set_type(1, None));
    d.ok(add("x", Some("t")));
    let before = d.state.clone();
    let cases = [
        (put("x", None, "not json"), "not JSON"),
        (put("x", None, r#"{"n": "one"}"#), "does not match type t"),
        (
            put(
                "x",
                None,
                &format!(r#"{{"n": 1, "s": "{}"}}"#, "z".repeat(DRIVE_DATA_BYTES_MAX)),
            ),
            "DRIVE_DATA_BYTES_MAX",
        ),
        (add("x", None), "already exists"),
        (add("nope/y", None), "does not exist"),
        (add("y", Some("ghost")), "drive type"),
        (put("ghost", None, "{}"), "does not exist"),
        (
            DriveCommand::Move {
                from: path("x"),
                to: path("x/inside"),
            },
            "under itself",
        ),
        (
            DriveCommand::SetType {
                name: "Bad".into(),
                version: 1,
                schema: "{}".into(),
                migration: None,
            },
            "not valid",
        ),
        (
            DriveCommand::SetType {
                name: "u".into(),
                version: 1,
                schema: r#"{"type": 12}"#.into(),
                migration: None,
            },
            "JSON Schema",
        ),
    ];
    for (op, why) in cases {
        let what = format!("{op:?}");
        let err = d.run(&admin(), op).unwrap_err();
        assert!(err.contains(why), "{what}: {err}");
    }
    assert_eq!(d.state, before, "nothing was written");
    // Going backwards, and a version that is not there.
    d.ok(put("x", Some("2.0.0"), r#"{"n": 1}"#));
    let err = d
        .run(&admin(), put("x", Some("1.9.9"), r#"{"n": 1}"#))
        .unwrap_err();
    assert!(err.contains("backwards"), "{err}");
    let err = d
        .run(
            &admin(),
            DriveCommand::DeleteVersion {
                path: path("x"),
                version: DataVersion::FIRST,
            },
        )
        .unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
}
