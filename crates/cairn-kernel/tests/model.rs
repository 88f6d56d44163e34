//! Model-based property test of the kernel alone: random command sequences (installs,
//! uninstalls with random keep sets, feature/var/queue/vault/daemon commands, connects and
//! disconnects, aborts, injected hook failures) decided and applied over an in-memory state
//! ([`MemState`]), with changes and `onload`s driven to their end the way the runtime's engine
//! drives them, against a small model of what should be true.
//!
//! The model is exact: it predicts whether each command is accepted, how each change ends
//! (given which hooks were set to fail) and the whole visible state (packages, resources with
//! their `kept_from`, features, connections, undesired pairs); a rejection must leave the state
//! unchanged, byte for byte. The invariants of `crates/cairn/tests/model.rs` hold after every
//! step, and replaying (applying) the case's log into a fresh state reproduces the state.
//!
//! It runs in milliseconds per case, so it runs many more cases than the RocksDB-backed model
//! test, which keeps what only a workspace can show (changes left running, reopens mid-change,
//! slow and cancelled hooks, rebuild through the store). `CAIRN_SLOW_TESTS=1` runs more cases.

use std::collections::{BTreeMap, BTreeSet};

use cairn_kernel::change::{Action, ChangeStatus, Step};
use cairn_kernel::model::{DaemonState, FeatureState, ResourceKind, Scope};
use cairn_kernel::records::{OnloadState, PackageStatus};
use cairn_kernel::{manifest, query, Command, DecideError, HookOutcome, HookResult, Kernel};
use cairn_log::testing::MemState;
use cairn_log::{EntryDraft, Hash, Meta, Space, StateRead, StoredEntry};
use proptest::prelude::*;
use uuid::Uuid;

// --- the universe (as in crates/cairn/tests/model.rs) ------------------------------------

// --- the universe ------------------------------------------------------------------------

const PACKAGES: [&str; 3] = ["pa", "pb", "pc"];
/// Manifest variants per package (versions "1" and "2"), so a reinstall may declare different
/// resources, plugs and hooks than what an earlier uninstall kept.
const VARIANTS: usize = 2;
const PLUGS: [&str; 2] = ["p1", "p2"];
const SLOTS: [&str; 2] = ["s1", "s2"];
const INTERFACES: [&str; 2] = ["i1", "i2"];
const VAR_KEYS: [&str; 3] = ["a", "b", "c"];
/// A feature no package declares.
const GHOST_FEATURE: &str = "f-ghost";
const QUEUE: &str = "q";
const VAULT: &str = "v";
const DAEMON: &str = "d";

type End = (String, String);

fn end(package: &str, name: &str) -> End {
    (package.to_string(), name.to_string())
}

fn model_type(package: &str) -> String {
    format!("{package}:t")
}

fn initial_value(v: u8) -> String {
    format!("init-{v}")
}

/// Every hook name a manifest of the universe may declare.
fn hook_names() -> Vec<String> {
    let mut out = vec!["onload".to_string(), "onuninstall".to_string()];
    for step in ["prepare", "unprepare", "connect", "disconnect"] {
        for p in PLUGS {
            out.push(format!("{step}-plug-{p}"));
        }
        for s in SLOTS {
            out.push(format!("{step}-slot-{s}"));
        }
    }
    out
}

/// What a hook does when it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail,
}

/// One manifest variant of one package.
#[derive(Clone, Debug)]
struct Spec {
    vars: BTreeMap<usize, u8>,
    queue: bool,
    vault: bool,
    /// `Some(enabled)` when a daemon is declared.
    daemon: Option<bool>,
    model: bool,
    feature: FeatureState,
    scope: Scope,
    /// plug index → (interface index, auto_connect)
    plugs: BTreeMap<usize, (usize, bool)>,
    /// slot index → interface index
    slots: BTreeMap<usize, usize>,
    hooks: BTreeSet<String>,
}

impl Spec {
    fn plug_interface(&self, plug: &str) -> Option<usize> {
        let i = PLUGS.iter().position(|p| *p == plug)?;
        self.plugs.get(&i).map(|(iface, _)| *iface)
    }

    fn slot_interface(&self, slot: &str) -> Option<usize> {
        let i = SLOTS.iter().position(|s| *s == slot)?;
        self.slots.get(&i).copied()
    }

    fn toml(&self, package: &str, variant: usize) -> String {
        let mut t = format!("name = \"{package}\"\nversion = \"{}\"\n", variant + 1);
        if !self.vars.is_empty() {
            t += "[vars]\n";
            for (k, v) in &self.vars {
                t += &format!("{} = \"{}\"\n", VAR_KEYS[*k], initial_value(*v));
            }
        }
        if self.queue {
            t += &format!("[[queues]]\nname = \"{QUEUE}\"\n");
        }
        if self.vault {
            t += &format!("[[vaults]]\nname = \"{VAULT}\"\n");
        }
        if let Some(enabled) = self.daemon {
            t += &format!(
                "[[daemons]]\nname = \"{DAEMON}\"\ncommand = [\"/bin/true\"]\nenabled = {enabled}\n"
            );
        }
        t += &format!(
            "[[features]]\nname = \"f-{package}\"\nstate = \"{}\"\nscope = {{ global = {}, per_instance = {} }}\n",
            self.feature, self.scope.global, self.scope.per_instance
        );
        for (p, (iface, auto)) in &self.plugs {
            t += &format!(
                "[[plugs]]\nname = \"{}\"\ninterface = \"{}\"\nauto_connect = {auto}\n",
                PLUGS[*p], INTERFACES[*iface]
            );
        }
        for (s, iface) in &self.slots {
            t += &format!(
                "[[slots]]\nname = \"{}\"\ninterface = \"{}\"\n",
                SLOTS[*s], INTERFACES[*iface]
            );
        }
        if self.model {
            t += &format!(
                "[model]\ntypes = [{{ name = \"{}\", base = \"str\" }}]\n",
                model_type(package)
            );
        }
        for h in &self.hooks {
            t += &format!("[hooks.{h}]\nrun = \"true\"\n");
        }
        t
    }
}

/// Whether a manifest with these plugs and slots may declare hook `h`.
fn hook_allowed(
    h: &str,
    plugs: &BTreeMap<usize, (usize, bool)>,
    slots: &BTreeMap<usize, usize>,
) -> bool {
    if let Some((_, p)) = h.split_once("-plug-") {
        return PLUGS
            .iter()
            .position(|x| *x == p)
            .is_some_and(|i| plugs.contains_key(&i));
    }
    if let Some((_, s)) = h.split_once("-slot-") {
        return SLOTS
            .iter()
            .position(|x| *x == s)
            .is_some_and(|i| slots.contains_key(&i));
    }
    true
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::btree_map(0..VAR_KEYS.len(), any::<u8>(), 0..=2),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(any::<bool>()),
        any::<bool>(),
        prop_oneof![
            4 => Just(FeatureState::Enabled),
            4 => Just(FeatureState::Disabled),
            1 => Just(FeatureState::AlwaysEnabled),
            1 => Just(FeatureState::AlwaysDisabled),
        ],
        (any::<bool>(), any::<bool>()),
        prop::collection::btree_map(
            0..PLUGS.len(),
            (0..INTERFACES.len(), prop::bool::weighted(0.6)),
            0..=2,
        ),
        prop::collection::btree_map(0..SLOTS.len(), 0..INTERFACES.len(), 0..=2),
        prop::collection::vec(prop::bool::weighted(0.6), hook_names().len()),
    )
        .prop_map(
            |(
                vars,
                queue,
                vault,
                daemon,
                model,
                feature,
                (global, per_instance),
                plugs,
                slots,
                declare,
            )| {
                let hooks = hook_names()
                    .into_iter()
                    .zip(declare)
                    .filter(|(h, d)| *d && hook_allowed(h, &plugs, &slots))
                    .map(|(h, _)| h)
                    .collect();
                Spec {
                    vars,
                    queue,
                    vault,
                    daemon,
                    model,
                    feature,
                    scope: Scope {
                        global,
                        per_instance,
                    },
                    plugs,
                    slots,
                    hooks,
                }
            },
        )
}

// --- operations --------------------------------------------------------------------------

/// A plug or slot by index: (package, plug or slot).
type EndIx = (usize, usize);

/// A package: the `pick`-th (modulo their number) of those that fit the command (absent ones
/// for an install, present ones otherwise) if there is one, else `PACKAGES[fallback]`.
#[derive(Clone, Copy, Debug)]
struct Pkg {
    pick: Option<u8>,
    fallback: usize,
}

fn pkg() -> impl Strategy<Value = Pkg> {
    (prop::option::weighted(0.8, any::<u8>()), 0..PACKAGES.len())
        .prop_map(|(pick, fallback)| Pkg { pick, fallback })
}

/// A feature: its package's (`None`: one no package declares).
fn feature() -> impl Strategy<Value = Option<Pkg>> {
    prop::option::weighted(0.9, pkg())
}

/// What the test does after a change-starting command was accepted.

#[derive(Clone, Debug)]
enum Op {
    Install {
        pkg: Pkg,
        variant: usize,
    },
    Uninstall {
        pkg: Pkg,
        keep: Vec<ResourceKind>,
        strict: bool,
    },
    /// Connects the `pick`-th possible pair (installed ends with matching interfaces, not yet
    /// connected) if there is one, else `plug`/`slot`.
    Connect {
        pick: Option<u8>,
        plug: EndIx,
        slot: EndIx,
    },
    /// Disconnects the `pick`-th existing connection if there is one, else `plug`/`slot`.
    Disconnect {
        pick: Option<u8>,
        plug: EndIx,
        slot: EndIx,
    },
    /// Aborts the change the test started last (always finished here: refused).
    AbortLast,
    FeatureSet {
        feature: Option<Pkg>,
        state: FeatureState,
    },
    FeatureReport {
        feature: Option<Pkg>,
        observed: FeatureState,
    },
    ScopeSync {
        feature: Option<Pkg>,
        global: bool,
        per_instance: bool,
    },
    VarSet {
        pkg: Pkg,
        key: usize,
        value: u8,
    },
    VarDelete {
        pkg: Pkg,
        key: usize,
    },
    QueuePut {
        pkg: Pkg,
        items: u8,
    },
    QueueAck {
        pkg: Pkg,
        upto: u64,
    },
    VaultSet {
        pkg: Pkg,
        secret: u8,
    },
    DaemonSet {
        pkg: Pkg,
        enabled: bool,
    },
    /// Sets what hook `hook` (by index in [`hook_names`]) does from now on.
    Hook {
        hook: usize,
        mode: Mode,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let end_ix = || (0..PACKAGES.len(), 0..2usize);
    let mode = prop_oneof![1 => Just(Mode::Fail), 1 => Just(Mode::Ok)];
    let state = || prop::sample::select(FeatureState::ALL.to_vec());
    prop_oneof![
        5 => (pkg(), 0..VARIANTS).prop_map(|(pkg, variant)| Op::Install { pkg, variant }),
        4 => (
            pkg(),
            prop::sample::subsequence(ResourceKind::ALL.to_vec(), 0..=ResourceKind::ALL.len()),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(pkg, keep, strict)| Op::Uninstall { pkg, keep, strict }),
        4 => (prop::option::weighted(0.7, any::<u8>()), end_ix(), end_ix())
            .prop_map(|(pick, plug, slot)| Op::Connect { pick, plug, slot }),
        3 => (prop::option::weighted(0.8, any::<u8>()), end_ix(), end_ix())
            .prop_map(|(pick, plug, slot)| Op::Disconnect { pick, plug, slot }),
        1 => Just(Op::AbortLast),
        2 => (feature(), state())
            .prop_map(|(feature, state)| Op::FeatureSet { feature, state }),
        1 => (feature(), state())
            .prop_map(|(feature, observed)| Op::FeatureReport { feature, observed }),
        1 => (feature(), any::<bool>(), any::<bool>()).prop_map(
            |(feature, global, per_instance)| Op::ScopeSync { feature, global, per_instance }
        ),
        3 => (pkg(), 0..VAR_KEYS.len(), any::<u8>())
            .prop_map(|(pkg, key, value)| Op::VarSet { pkg, key, value }),
        1 => (pkg(), 0..VAR_KEYS.len()).prop_map(|(pkg, key)| Op::VarDelete { pkg, key }),
        2 => (pkg(), 1..4u8).prop_map(|(pkg, items)| Op::QueuePut { pkg, items }),
        1 => (pkg(), 0..8u64).prop_map(|(pkg, upto)| Op::QueueAck { pkg, upto }),
        1 => (pkg(), any::<u8>()).prop_map(|(pkg, secret)| Op::VaultSet { pkg, secret }),
        1 => (pkg(), any::<bool>()).prop_map(|(pkg, enabled)| Op::DaemonSet { pkg, enabled }),
        5 => (0..hook_names().len(), mode).prop_map(|(hook, mode)| Op::Hook { hook, mode }),
    ]
}

// --- observable state --------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct PkgSnap {
    status: &'static str,
    version: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ResValue {
    Var(String),
    Queue {
        next_seq: u64,
        acked: u64,
        items: u64,
    },
    Vault {
        sealed: bool,
    },
    Daemon(DaemonState),
    Model,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ResSnap {
    kept_from: Option<String>,
    value: ResValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FeatSnap {
    owner: String,
    state: FeatureState,
    observed: Option<FeatureState>,
    scope: Scope,
}

/// Everything the model predicts, read back the same way from a workspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Snap {
    packages: BTreeMap<String, PkgSnap>,
    resources: BTreeMap<(ResourceKind, String, String), ResSnap>,
    features: BTreeMap<String, FeatSnap>,
    /// (plug, slot) → auto
    conns: BTreeMap<(End, End), bool>,
    undesired: BTreeSet<(End, End)>,
}

impl Snap {
    fn read(view: &dyn StateRead) -> Snap {
        let mut s = Snap::default();
        for p in query::packages(view).unwrap() {
            s.packages.insert(
                p.manifest.name.clone(),
                PkgSnap {
                    status: p.status.name(),
                    version: p.manifest.version.clone(),
                },
            );
        }
        for r in query::all_resources(view).unwrap() {
            let (o, n) = (r.owner.as_str(), r.name.as_str());
            let value = match r.kind {
                ResourceKind::Vars => {
                    let v = query::var(view, o, n).unwrap().unwrap();
                    ResValue::Var(String::from_utf8_lossy(&v.value).into_owned())
                }
                ResourceKind::Queues => {
                    let q = query::queue(view, o, n).unwrap().unwrap();
                    let items = query::queue_items(view, o, n, 0, usize::MAX).unwrap().len();
                    ResValue::Queue {
                        next_seq: q.next_seq,
                        acked: q.acked,
                        items: items as u64,
                    }
                }
                ResourceKind::Vaults => ResValue::Vault {
                    sealed: query::vault(view, o, n).unwrap().unwrap().sealed.is_some(),
                },
                ResourceKind::Daemons => {
                    ResValue::Daemon(query::daemon(view, o, n).unwrap().unwrap().desired)
                }
                ResourceKind::Model => ResValue::Model,
            };
            s.resources.insert(
                (r.kind, r.owner.clone(), r.name.clone()),
                ResSnap {
                    kept_from: r.kept_from,
                    value,
                },
            );
        }
        for f in query::features(view).unwrap() {
            s.features.insert(
                f.name.clone(),
                FeatSnap {
                    owner: f.owner,
                    state: f.state,
                    observed: f.observed,
                    scope: f.scope,
                },
            );
        }
        for c in query::connections(view).unwrap() {
            s.conns.insert((c.plug, c.slot), c.auto);
        }
        for key in keys_under(view, b"undesired/") {
            let parts: Vec<&str> = key.split('/').collect();
            assert_eq!(parts.len(), 4, "undesired key {key:?}");
            s.undesired
                .insert((end(parts[0], parts[1]), end(parts[2], parts[3])));
        }
        s
    }

    /// One line per entry, keyed for [`Snap::diff`].
    fn lines(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.packages {
            out.insert(format!("package {k}"), format!("{v:?}"));
        }
        for ((kind, owner, name), v) in &self.resources {
            out.insert(format!("{kind} {owner}/{name}"), format!("{v:?}"));
        }
        for (k, v) in &self.features {
            out.insert(format!("feature {k}"), format!("{v:?}"));
        }
        for ((p, s), auto) in &self.conns {
            out.insert(
                format!("connection {}:{} → {}:{}", p.0, p.1, s.0, s.1),
                format!("auto={auto}"),
            );
        }
        for (p, s) in &self.undesired {
            out.insert(
                format!("undesired {}:{} → {}:{}", p.0, p.1, s.0, s.1),
                String::new(),
            );
        }
        out
    }

    /// The entries that differ: `- ` as in `self`, `+ ` as in `other`.
    fn diff(&self, other: &Snap) -> String {
        let (a, b) = (self.lines(), other.lines());
        let mut out = String::new();
        for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            if a.get(k) != b.get(k) {
                if let Some(v) = a.get(k) {
                    out += &format!("- {k} {v}\n");
                }
                if let Some(v) = b.get(k) {
                    out += &format!("+ {k} {v}\n");
                }
            }
        }
        out
    }
}

/// Keys (after `prefix`) of the state space under `prefix`.
fn keys_under(view: &dyn StateRead, prefix: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    view.scan_prefix(Space::State, prefix, &mut |k, _| {
        out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        true
    })
    .unwrap();
    out
}

/// Every (plug, slot) pair of installed packages with matching interfaces, not connected.
fn connectable(view: &dyn StateRead) -> Vec<(End, End)> {
    let installed: Vec<_> = query::packages(view)
        .unwrap()
        .into_iter()
        .filter(|p| p.status == PackageStatus::Installed)
        .map(|p| p.manifest)
        .collect();
    let conns: BTreeSet<(End, End)> = query::connections(view)
        .unwrap()
        .into_iter()
        .map(|c| (c.plug, c.slot))
        .collect();
    let mut out = Vec::new();
    for pm in &installed {
        for plug in &pm.plugs {
            for sm in &installed {
                for slot in sm.slots.iter().filter(|s| s.interface == plug.interface) {
                    let pair = (end(&pm.name, &plug.name), end(&sm.name, &slot.name));
                    if !conns.contains(&pair) {
                        out.push(pair);
                    }
                }
            }
        }
    }
    out
}

/// Checks the invariants that hold at every commit, and with `idle` those that hold once no
/// change is in progress.
fn check_invariants(view: &dyn StateRead, idle: bool) -> Result<(), String> {
    let packages: BTreeMap<String, _> = query::packages(view)
        .unwrap()
        .into_iter()
        .map(|p| (p.manifest.name.clone(), p))
        .collect();
    for r in query::all_resources(view).unwrap() {
        if let Some(k) = &r.kept_from {
            if k != &r.owner {
                return Err(format!("{r:?} is kept from another package"));
            }
        }
        match (packages.contains_key(&r.owner), &r.kept_from) {
            (false, None) => {
                return Err(format!(
                    "{r:?} belongs to a missing package and is not kept"
                ))
            }
            (true, Some(_)) if idle => {
                return Err(format!("{r:?} is marked kept but its package is installed"))
            }
            _ => {}
        }
        if r.kind == ResourceKind::Queues {
            let q = query::queue(view, &r.owner, &r.name).unwrap().unwrap();
            let items = query::queue_items(view, &r.owner, &r.name, 0, usize::MAX).unwrap();
            if items.len() as u64 + 1 + q.acked != q.next_seq
                || items
                    .iter()
                    .any(|(seq, _)| *seq <= q.acked || *seq >= q.next_seq)
            {
                return Err(format!(
                    "queue {r:?} is {q:?} but holds {} items",
                    items.len()
                ));
            }
        }
    }
    for key in keys_under(view, b"qitem/") {
        let path = &key[..key.len().saturating_sub(8)];
        let (owner, queue) = path
            .trim_end_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        if query::queue(view, owner, queue).unwrap().is_none() {
            return Err(format!("queue item {key:?} of a missing queue"));
        }
    }
    for f in query::features(view).unwrap() {
        let Some(p) = packages.get(&f.owner) else {
            return Err(format!("feature {f:?} belongs to a missing package"));
        };
        if !p.manifest.features.iter().any(|d| d.name == f.name) {
            return Err(format!("feature {f:?} is not declared by its owner"));
        }
    }
    for c in query::connections(view).unwrap() {
        let plug = packages.get(&c.plug.0).map(|p| &p.manifest);
        let slot = packages.get(&c.slot.0).map(|p| &p.manifest);
        if !plug.is_some_and(|m| m.plugs.iter().any(|x| x.name == c.plug.1))
            || !slot.is_some_and(|m| m.slots.iter().any(|x| x.name == c.slot.1))
        {
            return Err(format!("connection {c:?} has an end that does not exist"));
        }
    }
    for c in query::changes(view).unwrap() {
        if c.status != c.derive_status() {
            return Err(format!(
                "change {} is {} but its tasks say {}",
                c.id,
                c.status,
                c.derive_status()
            ));
        }
    }
    if idle {
        let active = query::active_changes(view).unwrap();
        if !active.is_empty() {
            return Err(format!("changes still active when idle: {active:#?}"));
        }
        for c in query::changes(view).unwrap() {
            if !c.status.is_ready() {
                return Err(format!("change not ready when idle: {c:#?}"));
            }
        }
        let busy = keys_under(view, b"busy/");
        if !busy.is_empty() {
            return Err(format!("packages still busy when idle: {busy:?}"));
        }
        for p in packages.values() {
            if matches!(
                p.status,
                PackageStatus::Installing { .. } | PackageStatus::Uninstalling { .. }
            ) {
                return Err(format!(
                    "package {} is {} when idle",
                    p.manifest.name,
                    p.status.name()
                ));
            }
            for d in &p.manifest.features {
                match query::feature(view, &d.name).unwrap() {
                    Some(f) if f.owner == p.manifest.name => {}
                    other => {
                        return Err(format!(
                            "package {} declares feature {} but it is {other:?}",
                            p.manifest.name, d.name
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

// --- the harness -------------------------------------------------------------------------

/// What the model predicts for a command: `None` = rejected, `Some(state after)`.
type Expect = Option<Snap>;
/// What the model predicts for a change-starting command.
type ExpectChange = Option<(ChangeStatus, Snap)>;

/// Most commands the engine emulation sends for one change or `onload` before the test calls
/// it stuck.
const ENGINE_STEPS_MAX: usize = 1000;

/// The kernel over a projection in memory, committing each command's events as entries of a
/// log; the model beside it.
struct Harness {
    kernel: Kernel,
    state: MemState,
    entries: Vec<StoredEntry>,
    head: (u64, Hash),
    /// `specs[pkg][variant]`
    specs: Vec<Vec<Spec>>,
    modes: BTreeMap<String, Mode>,
    /// The predicted state.
    model: Snap,
    /// Change ids handed out so far.
    ids: u128,
    last_change: Option<Uuid>,
    step: usize,
    log: Vec<String>,
}

fn hook_result(mode: Mode) -> HookResult {
    let (outcome, exit, stderr_tail) = match mode {
        Mode::Ok => (HookOutcome::Succeeded, Some(0), String::new()),
        Mode::Fail => (HookOutcome::Failed, Some(1), "injected failure".to_string()),
    };
    HookResult {
        outcome,
        exit,
        signal: None,
        duration_ms: 0,
        stdout_tail: String::new(),
        stderr_tail,
        message: String::new(),
    }
}

impl Harness {
    fn new(specs: Vec<Spec>, modes: Vec<Mode>) -> Self {
        Harness {
            kernel: Kernel::new(),
            state: MemState::default(),
            entries: Vec::new(),
            head: (0, Hash::ZERO),
            specs: specs.chunks(VARIANTS).map(<[Spec]>::to_vec).collect(),
            modes: hook_names().into_iter().zip(modes).collect(),
            model: Snap::default(),
            ids: 0,
            last_change: None,
            step: 0,
            log: Vec::new(),
        }
    }

    fn view(&self) -> &MemState {
        &self.state
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "step {}: {what}\n--- steps so far:\n{}",
            self.step,
            self.log.join("\n")
        )
    }

    fn mode(&self, hook: &str) -> Mode {
        self.modes.get(hook).copied().unwrap_or(Mode::Ok)
    }

    fn new_id(&mut self) -> Uuid {
        self.ids += 1;
        Uuid::from_u128(self.ids)
    }

    /// Decides `command` and applies its events as the next entries; `Err` is the rejection.
    fn submit(&mut self, command: Command) -> Result<(), String> {
        let events = match self.kernel.decide(&self.state, &command) {
            Ok(events) => events,
            Err(DecideError::Rejected(why)) => return Err(why.to_string()),
            Err(DecideError::State(e)) => self.fail(format!("{command:?}: a read failed: {e}")),
        };
        let id = self.new_id();
        for event in events {
            let entry = EntryDraft {
                epoch: 1,
                time_ms: 1_000 + self.head.0,
                meta: Meta {
                    actor: "model".into(),
                    change: None,
                    command: id,
                    idempotency_key: None,
                },
                kind: event.kind().to_owned(),
                payload: event.encode(),
            }
            .seal(self.head.0 + 1, self.head.1)
            .unwrap_or_else(|e| self.fail(format!("{command:?}: an event does not seal: {e}")));
            if let Err(e) = self.kernel.apply(&mut self.state, &entry) {
                self.fail(format!("{command:?}: an event decide produced fails: {e}"));
            }
            self.head = (entry.offset, entry.hash);
            self.entries.push(entry);
        }
        Ok(())
    }

    /// A command the engine sends: the kernel must accept it.
    fn engine(&mut self, command: Command) {
        if let Err(why) = self.submit(command.clone()) {
            self.fail(format!("the engine's {command:?} was rejected: {why}"));
        }
    }

    /// Drives every active change, then every wanted `onload`, to its end, as the runtime's
    /// engine does when nothing else runs: each declared hook ends as its mode says.
    fn run_engine(&mut self) {
        for _ in 0..ENGINE_STEPS_MAX {
            let active = query::active_changes(&self.state).unwrap();
            if let Some(c) = active.first() {
                self.drive(c.id);
                continue;
            }
            let wanted = query::onloads_wanted(&self.state).unwrap();
            let Some(package) = wanted.first() else {
                return;
            };
            self.onload(package.clone());
        }
        self.fail("the engine never became idle");
    }

    fn drive(&mut self, change: Uuid) {
        for _ in 0..ENGINE_STEPS_MAX {
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
                Some(hook) => {
                    self.engine(Command::HookStart { change, task, undo });
                    let result = Some(hook_result(self.mode(&hook)));
                    self.engine(Command::HookFinish {
                        change,
                        task,
                        undo,
                        result,
                    });
                }
                None => self.engine(Command::TaskRun { change, task, undo }),
            }
        }
        self.fail(format!("change {change} never finished"));
    }

    fn onload(&mut self, package: String) {
        self.engine(Command::OnloadStart {
            package: package.clone(),
        });
        let p = query::package(&self.state, &package).unwrap().unwrap();
        let OnloadState::Running { attempt } = p.onload else {
            self.fail(format!("onload of {package} started but is {:?}", p.onload));
        };
        let result = hook_result(self.mode("onload"));
        self.engine(Command::OnloadFinish {
            package,
            attempt,
            result,
        });
    }

    /// The package index `p` stands for: picked among the packages with a record (`present`)
    /// or without one.
    fn resolve(&self, p: Pkg, present: bool) -> usize {
        let view = self.view();
        let fits: Vec<usize> = (0..PACKAGES.len())
            .filter(|i| query::package(view, PACKAGES[*i]).unwrap().is_some() == present)
            .collect();
        match p.pick {
            Some(i) if !fits.is_empty() => fits[usize::from(i) % fits.len()],
            _ => p.fallback,
        }
    }

    fn feature_name(&self, f: Option<Pkg>) -> String {
        match f {
            Some(p) => format!("f-{}", PACKAGES[self.resolve(p, true)]),
            None => GHOST_FEATURE.to_string(),
        }
    }

    /// The spec of an installed package, per the model.
    fn spec_of(&self, package: &str) -> &Spec {
        let pkg = PACKAGES
            .iter()
            .position(|p| *p == package)
            .expect("known package");
        let version = &self.model.packages[package].version;
        let variant: usize = version.parse::<usize>().expect("numeric version") - 1;
        &self.specs[pkg][variant]
    }

    /// Whether running `hook` of a package with `spec` fails now.
    fn fails(&self, spec: &Spec, hook: &str) -> bool {
        spec.hooks.contains(hook) && self.mode(hook) == Mode::Fail
    }

    // --- predictions (exact mode) --------------------------------------------------------

    fn predict_install(&self, pkg: usize, variant: usize) -> ExpectChange {
        let name = PACKAGES[pkg];
        if self.model.packages.contains_key(name) {
            return None;
        }
        let spec = &self.specs[pkg][variant];
        let mut s = self.model.clone();
        for ((_, owner, _), r) in s.resources.iter_mut() {
            if owner == name {
                r.kept_from = None;
            }
        }
        let mut declare = |kind, rname: &str, value| {
            s.resources
                .entry((kind, name.to_string(), rname.to_string()))
                .or_insert(ResSnap {
                    kept_from: None,
                    value,
                });
        };
        for (k, v) in &spec.vars {
            declare(
                ResourceKind::Vars,
                VAR_KEYS[*k],
                ResValue::Var(initial_value(*v)),
            );
        }
        if spec.queue {
            let q = ResValue::Queue {
                next_seq: 1,
                acked: 0,
                items: 0,
            };
            declare(ResourceKind::Queues, QUEUE, q);
        }
        if spec.vault {
            declare(
                ResourceKind::Vaults,
                VAULT,
                ResValue::Vault { sealed: false },
            );
        }
        if let Some(enabled) = spec.daemon {
            let d = if enabled {
                DaemonState::Enabled
            } else {
                DaemonState::Disabled
            };
            declare(ResourceKind::Daemons, DAEMON, ResValue::Daemon(d));
        }
        if spec.model {
            declare(ResourceKind::Model, &model_type(name), ResValue::Model);
        }
        s.features.insert(
            format!("f-{name}"),
            FeatSnap {
                owner: name.to_string(),
                state: spec.feature,
                observed: None,
                scope: spec.scope,
            },
        );
        // Auto-connect: each auto plug to the one eligible slot (own slots first, then
        // installed packages' in name order), as tasks of the install; the first failing hook
        // undoes them all and leaves the package broken.
        let mut conns = Vec::new();
        let mut failed = false;
        for (p, (iface, auto)) in &spec.plugs {
            if !auto {
                continue;
            }
            let plug = end(name, PLUGS[*p]);
            let mut candidates = Vec::new();
            for (sl, si) in &spec.slots {
                if si == iface {
                    candidates.push(end(name, SLOTS[*sl]));
                }
            }
            for (other, ps) in &self.model.packages {
                if ps.status != "installed" {
                    continue;
                }
                for (sl, si) in &self.spec_of(other).slots {
                    if si == iface {
                        candidates.push(end(other, SLOTS[*sl]));
                    }
                }
            }
            candidates.retain(|slot| !self.model.undesired.contains(&(plug.clone(), slot.clone())));
            let [slot] = candidates.as_slice() else {
                continue;
            };
            let slot_spec = if slot.0 == name {
                spec
            } else {
                self.spec_of(&slot.0)
            };
            let (pn, sn) = (&plug.1, &slot.1);
            if self.fails(spec, &format!("prepare-plug-{pn}"))
                || self.fails(slot_spec, &format!("prepare-slot-{sn}"))
                || self.fails(slot_spec, &format!("connect-slot-{sn}"))
                || self.fails(spec, &format!("connect-plug-{pn}"))
            {
                failed = true;
                break;
            }
            conns.push((plug, slot.clone()));
        }
        let version = (variant + 1).to_string();
        if failed {
            s.packages.insert(
                name.to_string(),
                PkgSnap {
                    status: "broken",
                    version,
                },
            );
            return Some((ChangeStatus::Error, s));
        }
        for c in conns {
            s.conns.insert(c, true);
        }
        let status = if self.fails(spec, "onload") {
            "broken"
        } else {
            "installed"
        };
        s.packages
            .insert(name.to_string(), PkgSnap { status, version });
        Some((ChangeStatus::Done, s))
    }

    fn predict_uninstall(&self, pkg: usize, keep: &[ResourceKind], strict: bool) -> ExpectChange {
        let name = PACKAGES[pkg];
        self.model.packages.get(name)?;
        if strict && self.fails(self.spec_of(name), "onuninstall") {
            return Some((ChangeStatus::Error, self.model.clone()));
        }
        let mut s = self.model.clone();
        s.packages.remove(name);
        s.conns.retain(|(p, sl), _| p.0 != name && sl.0 != name);
        s.features.retain(|_, f| f.owner != name);
        s.resources
            .retain(|(kind, owner, _), _| owner != name || keep.contains(kind));
        for ((_, owner, _), r) in s.resources.iter_mut() {
            if owner == name {
                r.kept_from = Some(name.to_string());
            }
        }
        Some((ChangeStatus::Done, s))
    }

    fn installed_spec(&self, package: &str) -> Option<&Spec> {
        (self.model.packages.get(package)?.status == "installed").then(|| self.spec_of(package))
    }

    fn predict_connect(&self, plug: &End, slot: &End) -> ExpectChange {
        let ps = self.installed_spec(&plug.0)?;
        let ss = self.installed_spec(&slot.0)?;
        if ps.plug_interface(&plug.1)? != ss.slot_interface(&slot.1)? {
            return None;
        }
        let key = (plug.clone(), slot.clone());
        if self.model.conns.contains_key(&key) {
            return None;
        }
        let (p, sl) = (&plug.1, &slot.1);
        // A failure anywhere undoes the change completely.
        if self.fails(ps, &format!("prepare-plug-{p}"))
            || self.fails(ss, &format!("prepare-slot-{sl}"))
            || self.fails(ss, &format!("connect-slot-{sl}"))
            || self.fails(ps, &format!("connect-plug-{p}"))
        {
            return Some((ChangeStatus::Error, self.model.clone()));
        }
        let mut s = self.model.clone();
        s.conns.insert(key.clone(), false);
        s.undesired.remove(&key);
        Some((ChangeStatus::Done, s))
    }

    fn predict_disconnect(&self, plug: &End, slot: &End) -> ExpectChange {
        let key = (plug.clone(), slot.clone());
        let auto = *self.model.conns.get(&key)?;
        let (ps, ss) = (self.spec_of(&plug.0), self.spec_of(&slot.0));
        let (p, sl) = (&plug.1, &slot.1);
        // A failure anywhere undoes the change completely.
        if self.fails(ps, &format!("disconnect-plug-{p}"))
            || self.fails(ss, &format!("disconnect-slot-{sl}"))
            || self.fails(ss, &format!("unprepare-slot-{sl}"))
            || self.fails(ps, &format!("unprepare-plug-{p}"))
        {
            return Some((ChangeStatus::Error, self.model.clone()));
        }
        let mut s = self.model.clone();
        s.conns.remove(&key);
        if auto {
            s.undesired.insert(key);
        }
        Some((ChangeStatus::Done, s))
    }

    /// The model after writing resource `(kind, owner, name)` of an existing package, or
    /// `None` (rejected) when the package or the resource does not exist.
    fn predict_resource(
        &self,
        kind: ResourceKind,
        owner: &str,
        name: &str,
        f: impl FnOnce(&mut ResValue) -> Option<()>,
    ) -> Expect {
        self.model.packages.get(owner)?;
        let mut s = self.model.clone();
        let r = s
            .resources
            .get_mut(&(kind, owner.to_string(), name.to_string()))?;
        f(&mut r.value)?;
        Some(s)
    }

    fn predict_feature(
        &self,
        feature: &str,
        f: impl FnOnce(&mut FeatSnap) -> Option<()>,
    ) -> Expect {
        let mut s = self.model.clone();
        f(s.features.get_mut(feature)?)?;
        Some(s)
    }

    // --- running ops ---------------------------------------------------------------------

    /// Checks a rejection: it must write nothing.
    fn rejected(&mut self, what: &str, why: &str, before: &MemState, entries: usize) {
        self.log.push(format!("    rejected: {why}"));
        if &self.state != before || self.entries.len() != entries {
            self.fail(format!("{what}: rejected ({why}) but it wrote something"));
        }
    }

    /// Runs a plain command and checks it against the model: predicted acceptance, nothing
    /// written on a rejection, the predicted state after. Whether it was accepted.
    fn settle(&mut self, what: &str, expect: Expect, command: Command) -> bool {
        let (before, entries) = (self.state.clone(), self.entries.len());
        match (self.submit(command), expect) {
            (Ok(()), Some(snap)) => {
                self.model = snap;
                true
            }
            (Err(why), None) => {
                self.rejected(what, &why, &before, entries);
                false
            }
            (Ok(()), None) => self.fail(format!(
                "{what}: accepted, but the model expected a rejection"
            )),
            (Err(why), Some(_)) => self.fail(format!(
                "{what}: rejected ({why}), but the model expected it to be accepted"
            )),
        }
    }

    /// Runs a change-starting command: checks acceptance against the model, drives the change
    /// (and the onloads it starts) to its end, checks how it ended.
    fn change(&mut self, what: &str, expect: ExpectChange, command: Command, id: Uuid) {
        let (before, entries) = (self.state.clone(), self.entries.len());
        let (status, snap) = match (self.submit(command), expect) {
            (Ok(()), Some(expected)) => expected,
            (Err(why), None) => return self.rejected(what, &why, &before, entries),
            (Ok(()), None) => self.fail(format!(
                "{what}: accepted, but the model expected a rejection"
            )),
            (Err(why), Some(_)) => self.fail(format!(
                "{what}: rejected ({why}), but the model expected it to be accepted"
            )),
        };
        self.last_change = Some(id);
        self.run_engine();
        let c = query::change(&self.state, id).unwrap().unwrap();
        self.log.push(format!("    change {}", c.status));
        if c.status != status {
            self.fail(format!(
                "{what}: change ended {}, the model expected {status}: {c:#?}",
                c.status
            ));
        }
        self.model = snap;
    }

    fn run_change_op(&mut self, op: &Op) {
        match op {
            Op::Install { pkg, variant } => {
                let pkg = self.resolve(*pkg, false);
                let expect = self.predict_install(pkg, *variant);
                let text = self.specs[pkg][*variant].toml(PACKAGES[pkg], *variant);
                let manifest = manifest::parse(&text)
                    .unwrap_or_else(|e| self.fail(format!("manifest of the universe: {e}")));
                let change = self.new_id();
                let command = Command::Install { manifest, change };
                self.change("install", expect, command, change);
            }
            Op::Uninstall { pkg, keep, strict } => {
                let pkg = self.resolve(*pkg, true);
                let expect = self.predict_uninstall(pkg, keep, *strict);
                let change = self.new_id();
                let command = Command::Uninstall {
                    package: PACKAGES[pkg].to_string(),
                    keep: keep.clone(),
                    strict: *strict,
                    change,
                };
                self.change("uninstall", expect, command, change);
            }
            Op::Connect { pick, plug, slot } => {
                let pairs = connectable(self.view());
                let (plug, slot) = match pick {
                    Some(i) if !pairs.is_empty() => pairs[usize::from(*i) % pairs.len()].clone(),
                    _ => (
                        end(PACKAGES[plug.0], PLUGS[plug.1]),
                        end(PACKAGES[slot.0], SLOTS[slot.1]),
                    ),
                };
                self.log.push(format!("    connect {plug:?} {slot:?}"));
                let expect = self.predict_connect(&plug, &slot);
                let change = self.new_id();
                let command = Command::Connect { plug, slot, change };
                self.change("connect", expect, command, change);
            }
            Op::Disconnect { pick, plug, slot } => {
                let conns = query::connections(self.view()).unwrap();
                let (plug, slot) = match pick {
                    Some(i) if !conns.is_empty() => {
                        let c = &conns[usize::from(*i) % conns.len()];
                        (c.plug.clone(), c.slot.clone())
                    }
                    _ => (
                        end(PACKAGES[plug.0], PLUGS[plug.1]),
                        end(PACKAGES[slot.0], SLOTS[slot.1]),
                    ),
                };
                self.log.push(format!("    disconnect {plug:?} {slot:?}"));
                let expect = self.predict_disconnect(&plug, &slot);
                let change = self.new_id();
                let command = Command::Disconnect { plug, slot, change };
                self.change("disconnect", expect, command, change);
            }
            _ => self.run_feature_op(op),
        }
    }

    fn run_feature_op(&mut self, op: &Op) {
        match op {
            Op::AbortLast => {
                // Every change is finished before the next command: an abort is refused.
                let change = self.last_change.unwrap_or(Uuid::nil());
                self.settle("abort", None, Command::Abort { change });
            }
            Op::FeatureSet { feature, state } => {
                let name = self.feature_name(*feature);
                let expect = self.predict_feature(&name, |f| {
                    if f.state.is_fixed() {
                        return None;
                    }
                    f.state = *state;
                    Some(())
                });
                let command = Command::FeatureSet {
                    name,
                    state: *state,
                    expect_revision: None,
                };
                self.settle("feature set", expect, command);
            }
            Op::FeatureReport { feature, observed } => {
                let name = self.feature_name(*feature);
                let expect = self.predict_feature(&name, |f| {
                    f.observed = Some(*observed);
                    Some(())
                });
                let command = Command::FeatureReport {
                    name,
                    observed: *observed,
                };
                self.settle("feature report", expect, command);
            }
            Op::ScopeSync {
                feature,
                global,
                per_instance,
            } => {
                let name = self.feature_name(*feature);
                let scope = Scope {
                    global: *global,
                    per_instance: *per_instance,
                };
                let expect = self.predict_feature(&name, |f| {
                    f.scope = scope;
                    Some(())
                });
                self.settle(
                    "scope sync",
                    expect,
                    Command::FeatureScopeSync { name, scope },
                );
            }
            Op::Hook { hook, mode } => {
                let name = hook_names()[*hook].clone();
                self.log.push(format!("    {name} → {mode:?}"));
                self.modes.insert(name, *mode);
            }
            _ => self.run_resource_op(op),
        }
    }

    fn run_resource_op(&mut self, op: &Op) {
        match op {
            Op::VarSet { pkg, key, value } => {
                let (owner, key) = (PACKAGES[self.resolve(*pkg, true)], VAR_KEYS[*key]);
                let text = format!("set-{value}");
                let expect = self.model.packages.get(owner).map(|_| {
                    let mut s = self.model.clone();
                    s.resources.insert(
                        (ResourceKind::Vars, owner.to_string(), key.to_string()),
                        ResSnap {
                            kept_from: None,
                            value: ResValue::Var(text.clone()),
                        },
                    );
                    s
                });
                let command = Command::VarSet {
                    owner: owner.into(),
                    key: key.into(),
                    value: text.clone().into_bytes(),
                    expect_revision: None,
                };
                if self.settle("var set", expect, command) {
                    let v = query::var(self.view(), owner, key).unwrap();
                    if v.as_ref().map(|v| v.value.as_slice()) != Some(text.as_bytes()) {
                        self.fail(format!(
                            "var {owner}/{key} reads {v:?} after an accepted set"
                        ));
                    }
                }
            }
            Op::VarDelete { pkg, key } => {
                let (owner, key) = (PACKAGES[self.resolve(*pkg, true)], VAR_KEYS[*key]);
                let expect = self.model.packages.get(owner).and_then(|_| {
                    let mut s = self.model.clone();
                    s.resources.remove(&(
                        ResourceKind::Vars,
                        owner.to_string(),
                        key.to_string(),
                    ))?;
                    Some(s)
                });
                let command = Command::VarDelete {
                    owner: owner.into(),
                    keys: vec![key.into()],
                };
                self.settle("var delete", expect, command);
            }
            Op::QueuePut { pkg, items } => {
                let owner = PACKAGES[self.resolve(*pkg, true)];
                let n = u64::from(*items);
                let expect = self.predict_resource(ResourceKind::Queues, owner, QUEUE, |v| {
                    let ResValue::Queue {
                        next_seq, items, ..
                    } = v
                    else {
                        return None;
                    };
                    *next_seq += n;
                    *items += n;
                    Some(())
                });
                let items = (0..n).map(|i| format!("item-{i}").into_bytes()).collect();
                let command = Command::QueuePut {
                    owner: owner.into(),
                    queue: QUEUE.into(),
                    items,
                };
                self.settle("queue put", expect, command);
            }
            _ => self.run_other_resource_op(op),
        }
    }

    fn run_other_resource_op(&mut self, op: &Op) {
        match op {
            Op::QueueAck { pkg, upto } => {
                let owner = PACKAGES[self.resolve(*pkg, true)];
                let upto = *upto;
                let expect = self.predict_resource(ResourceKind::Queues, owner, QUEUE, |v| {
                    let ResValue::Queue {
                        next_seq,
                        acked,
                        items,
                    } = v
                    else {
                        return None;
                    };
                    if upto >= *next_seq {
                        return None;
                    }
                    if upto > *acked {
                        *items -= upto - *acked;
                        *acked = upto;
                    }
                    Some(())
                });
                let command = Command::QueueAck {
                    owner: owner.into(),
                    queue: QUEUE.into(),
                    upto,
                };
                self.settle("queue ack", expect, command);
            }
            Op::VaultSet { pkg, secret } => {
                let owner = PACKAGES[self.resolve(*pkg, true)];
                // The kernel stores what it is given; sealing is the runtime's.
                let sealed = format!("sealed-{secret}").into_bytes();
                let expect = self.predict_resource(ResourceKind::Vaults, owner, VAULT, |v| {
                    *v = ResValue::Vault { sealed: true };
                    Some(())
                });
                let command = Command::VaultSet {
                    owner: owner.into(),
                    vault: VAULT.into(),
                    sealed: sealed.clone(),
                };
                if self.settle("vault set", expect, command) {
                    let got = query::vault(self.view(), owner, VAULT).unwrap();
                    if got.and_then(|v| v.sealed).map(|b| b.into_vec()) != Some(sealed) {
                        self.fail(format!("vault {owner}/{VAULT} does not hold what was set"));
                    }
                }
            }
            Op::DaemonSet { pkg, enabled } => {
                let owner = PACKAGES[self.resolve(*pkg, true)];
                let desired = if *enabled {
                    DaemonState::Enabled
                } else {
                    DaemonState::Disabled
                };
                let expect = self.predict_resource(ResourceKind::Daemons, owner, DAEMON, |v| {
                    *v = ResValue::Daemon(desired);
                    Some(())
                });
                let command = Command::DaemonSet {
                    owner: owner.into(),
                    daemon: DAEMON.into(),
                    desired,
                    expect_revision: None,
                };
                self.settle("daemon set", expect, command);
            }
            other => unreachable!("{other:?} is run by run_change_op or run_feature_op"),
        }
    }

    /// After every step: the invariants and the whole predicted state.
    fn after_step(&self) {
        if let Err(e) = check_invariants(self.view(), true) {
            self.fail(format!("invariant violated: {e}"));
        }
        let actual = Snap::read(self.view());
        if actual != self.model {
            self.fail(format!(
                "state differs from the model (- expected, + actual):\n{}",
                self.model.diff(&actual)
            ));
        }
    }

    /// Replaying (applying) the log into a fresh state reproduces the state, and every entry
    /// links to the one before.
    fn check_replay(&self) {
        let kernel = Kernel::new();
        let mut replayed = MemState::default();
        let mut cursor = cairn_log::ChainCursor::new(cairn_log::Head::EMPTY);
        for entry in &self.entries {
            cursor
                .advance(entry)
                .unwrap_or_else(|e| self.fail(format!("the log does not chain: {e}")));
            kernel
                .apply(&mut replayed, entry)
                .unwrap_or_else(|e| self.fail(format!("replay of {}: {e}", entry.offset)));
        }
        if replayed != self.state {
            let diff = Snap::read(&self.state).diff(&Snap::read(&replayed));
            self.fail(format!(
                "replaying the log gives another state ({} keys, live {}):\n{diff}",
                replayed.len(),
                self.state.len()
            ));
        }
    }

    fn run(mut self, ops: &[Op]) {
        let failing: Vec<&String> = (self.modes.iter())
            .filter(|(_, m)| **m != Mode::Ok)
            .map(|(h, _)| h)
            .collect();
        self.log
            .push(format!("hooks failing at start: {failing:?}"));
        for (i, op) in ops.iter().enumerate() {
            self.step = i;
            self.log.push(format!("{i}: {op:?}"));
            self.run_change_op(op);
            self.after_step();
        }
        self.step = ops.len();
        self.check_replay();
    }
}

/// Up to three installs (so most commands meet packages), then up to 60 random commands.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let install = (pkg(), 0..VARIANTS).prop_map(|(pkg, variant)| Op::Install { pkg, variant });
    (
        prop::collection::vec(install, 0..=3),
        prop::collection::vec(op(), 1..60),
    )
        .prop_map(|(mut first, rest)| {
            first.extend(rest);
            first
        })
}

fn initial_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![2 => Just(Mode::Ok), 1 => Just(Mode::Fail)]
}

// Tests read the slow-test switch; the kernel itself reads no environment.
#[allow(clippy::disallowed_methods)]
fn config() -> ProptestConfig {
    let slow = std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1");
    ProptestConfig {
        cases: if slow { 4096 } else { 256 },
        // A failure prints its minimal case instead.
        failure_persistence: None,
        max_shrink_iters: if slow { 4096 } else { 1024 },
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_command_sequences_keep_the_model_the_invariants_and_replay(
        specs in prop::collection::vec(spec(), PACKAGES.len() * VARIANTS),
        modes in prop::collection::vec(initial_mode(), hook_names().len()),
        ops in ops(),
    ) {
        Harness::new(specs, modes).run(&ops);
    }
}

// --- cases the model found (also in crates/cairn/tests/model.rs) -------------------------

/// A package with one auto-connecting plug `p1` and a matching slot `s1` (so it connects to
/// itself at install), declaring `hooks`.
fn self_connecting(hooks: &[&str]) -> Vec<Spec> {
    let empty = Spec {
        vars: BTreeMap::new(),
        queue: false,
        vault: false,
        daemon: None,
        model: false,
        feature: FeatureState::Enabled,
        scope: Scope::default(),
        plugs: BTreeMap::new(),
        slots: BTreeMap::new(),
        hooks: BTreeSet::new(),
    };
    let mut specs = vec![empty; PACKAGES.len() * VARIANTS];
    specs[0].plugs.insert(0, (0, true));
    specs[0].slots.insert(0, 0);
    specs[0].hooks = hooks.iter().map(|h| h.to_string()).collect();
    specs
}

fn modes_failing(hooks: &[&str]) -> Vec<Mode> {
    hook_names()
        .iter()
        .map(|h| {
            if hooks.contains(&h.as_str()) {
                Mode::Fail
            } else {
                Mode::Ok
            }
        })
        .collect()
}

const FIRST: Pkg = Pkg {
    pick: None,
    fallback: 0,
};

const INSTALL_FIRST: Op = Op::Install {
    pkg: FIRST,
    variant: 0,
};

const FIRST_CONN: Op = Op::Disconnect {
    pick: Some(0),
    plug: (0, 0),
    slot: (0, 0),
};

/// A disconnect of an auto connection that fails after the connection was removed is undone:
/// the connection comes back, and so must its "desired" standing (it was never disconnected).
#[test]
fn undone_disconnect_of_an_auto_connection_leaves_it_desired() {
    let hooks = ["unprepare-plug-p1"];
    Harness::new(self_connecting(&hooks), modes_failing(&hooks)).run(&[INSTALL_FIRST, FIRST_CONN]);
}

/// A manual connect of an undesired pair that fails after the connection was established is
/// undone: the pair must stay undesired (the connect never happened).
#[test]
fn undone_connect_of_an_undesired_pair_leaves_it_undesired() {
    let hook = hook_names()
        .iter()
        .position(|h| h == "connect-plug-p1")
        .unwrap();
    Harness::new(self_connecting(&["connect-plug-p1"]), modes_failing(&[])).run(&[
        INSTALL_FIRST,
        FIRST_CONN,
        Op::Hook {
            hook,
            mode: Mode::Fail,
        },
        Op::Connect {
            pick: Some(0),
            plug: (0, 0),
            slot: (0, 0),
        },
    ]);
}
