//! Model-based property test of the lifecycle runtime: random command sequences (installs,
//! uninstalls with random keep sets, feature/var/queue/vault/daemon commands, connects and
//! disconnects, aborts, injected hook failures and slow hooks, close/reopen) run against a real
//! workspace and a small model of what should be true.
//!
//! While no change is in flight the model is *exact*: it predicts whether each command is
//! accepted, how each change ends (given which hooks were set to fail) and the whole visible
//! state (packages, resources with their `kept_from`, features, connections, undesired pairs),
//! and a rejection must leave the digest unchanged. A change started without waiting makes the
//! model *stale*: commands are then only checked to be accepted or rejected (never another
//! error), and once the workspace is quiet again the model is resynchronised from it, after
//! checking that every package no change or command touched meanwhile is exactly as predicted.
//!
//! Invariants after every step: no resource belongs to a missing package unless its
//! `kept_from` says so, no feature or connection refers to a missing package, queue items
//! match their queue record; once idle, no change is left unfinished, no package busy, every
//! installed package has its features. The log is replayed into a fresh store (from a backup)
//! after reopens and at the end of each case, and must give the same digest.
//!
//! The exact model runs far more cases at the kernel level (`crates/cairn-kernel/tests/model.rs`:
//! the same universe and predictions over an in-memory state, in milliseconds); this test keeps
//! what only a workspace shows: changes left running while commands go on, closes and reopens
//! mid-change (the engine resumes them), slow hooks cancelled by aborts and closes, the hook
//! runner, the vault's sealing, and the digest of a rebuild through the store. So it runs fewer
//! cases. `CAIRN_SLOW_TESTS=1` runs more cases. The SIGKILL variant (a child process killed mid-change,
//! then reopened) is the last test of this file.
//!
//! This file is its own harness (`harness = false`, tests run by `libtest-mimic`): the same
//! binary is the SIGKILL test's child when [`CHILD_DATA_ENV`] is set (see [`sigkill_child`]),
//! so the child is not a test that passes without checking anything.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::kernel::model::{DaemonState, FeatureState, ResourceKind, Scope};
use cairn::kernel::records::{OnloadState, PackageStatus};
use cairn::kernel::{query, ChangeStatus};
use cairn::store::{Digest, Durability, ReadView, Store};
use cairn::{CommandOptions, Error, HookContext, HookHandler, KernelMachine, Options, Workspace};
use cairn_log::{Space, StateRead};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
/// How long a slow hook takes (it stops early when cancelled).
const SLOW_HOOK_MS: u64 = 10;
/// Bound on every wait: a change or onload still running after this is stuck.
const WAIT_S: u64 = 30;

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

/// What an in-process hook handler does when a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail,
    /// Succeeds after [`SLOW_HOOK_MS`], or stops when cancelled.
    Slow,
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
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// Waits for the change (and the onloads it starts).
    Yes,
    /// Goes on at once.
    No,
    /// Closes the workspace this many ms later, mid-change, and opens it again (the change
    /// resumes).
    Reopen(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Install {
        pkg: Pkg,
        variant: usize,
        wait: Wait,
    },
    Uninstall {
        pkg: Pkg,
        keep: Vec<ResourceKind>,
        strict: bool,
        wait: Wait,
    },
    /// Connects the `pick`-th possible pair (installed ends with matching interfaces, not yet
    /// connected) if there is one, else `plug`/`slot`.
    Connect {
        pick: Option<u8>,
        plug: EndIx,
        slot: EndIx,
        wait: Wait,
    },
    /// Disconnects the `pick`-th existing connection if there is one, else `plug`/`slot`.
    Disconnect {
        pick: Option<u8>,
        plug: EndIx,
        slot: EndIx,
        wait: Wait,
    },
    /// Aborts the change the test started last.
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
    /// Sets what the in-process handler of hook `hook` (by index in [`hook_names`]) does.
    Hook {
        hook: usize,
        mode: Mode,
    },
    Reopen,
    WaitIdle,
}

fn op() -> impl Strategy<Value = Op> {
    let end_ix = || (0..PACKAGES.len(), 0..2usize);
    let wait = || {
        prop_oneof![
            14 => Just(Wait::Yes),
            3 => Just(Wait::No),
            3 => (0..8u8).prop_map(Wait::Reopen),
        ]
    };
    let mode = prop_oneof![4 => Just(Mode::Fail), 4 => Just(Mode::Ok), 2 => Just(Mode::Slow)];
    let state = || prop::sample::select(FeatureState::ALL.to_vec());
    prop_oneof![
        5 => (pkg(), 0..VARIANTS, wait())
            .prop_map(|(pkg, variant, wait)| Op::Install { pkg, variant, wait }),
        4 => (
            pkg(),
            prop::sample::subsequence(ResourceKind::ALL.to_vec(), 0..=ResourceKind::ALL.len()),
            prop::bool::weighted(0.3),
            wait(),
        )
            .prop_map(|(pkg, keep, strict, wait)| Op::Uninstall { pkg, keep, strict, wait }),
        4 => (
            prop::option::weighted(0.7, any::<u8>()),
            end_ix(),
            end_ix(),
            wait(),
        )
            .prop_map(|(pick, plug, slot, wait)| Op::Connect { pick, plug, slot, wait }),
        3 => (
            prop::option::weighted(0.8, any::<u8>()),
            end_ix(),
            end_ix(),
            wait(),
        )
            .prop_map(|(pick, plug, slot, wait)| Op::Disconnect { pick, plug, slot, wait }),
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
        2 => Just(Op::Reopen),
        1 => Just(Op::WaitIdle),
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
    fn read(view: &ReadView) -> Snap {
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

    /// This model with every entry that involves a `dirty` package taken from `actual`.
    fn overlay(&self, actual: &Snap, dirty: &BTreeSet<String>) -> Snap {
        let d = |p: &String| dirty.contains(p);
        let mut s = self.clone();
        s.packages.retain(|k, _| !d(k));
        s.packages.extend(
            actual
                .packages
                .iter()
                .filter(|(k, _)| d(k))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        s.resources.retain(|k, _| !d(&k.1));
        s.resources.extend(
            actual
                .resources
                .iter()
                .filter(|(k, _)| d(&k.1))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        s.features.retain(|_, f| !d(&f.owner));
        s.features.extend(
            actual
                .features
                .iter()
                .filter(|(_, f)| d(&f.owner))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let pair = |(p, s): &(End, End)| d(&p.0) || d(&s.0);
        s.conns.retain(|k, _| !pair(k));
        s.conns.extend(
            actual
                .conns
                .iter()
                .filter(|(k, _)| pair(k))
                .map(|(k, v)| (k.clone(), *v)),
        );
        s.undesired.retain(|k| !pair(k));
        s.undesired
            .extend(actual.undesired.iter().filter(|k| pair(k)).cloned());
        s
    }
}

/// Keys (after `prefix`) of the state space under `prefix`.
fn keys_under(view: &ReadView, prefix: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    view.scan_prefix(Space::State, prefix, &mut |k, _| {
        out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        true
    })
    .unwrap();
    out
}

/// Every (plug, slot) pair of installed packages with matching interfaces, not connected.
fn connectable(view: &ReadView) -> Vec<(End, End)> {
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

/// No change in progress and no onload waiting to start or running.
fn quiet(view: &ReadView) -> bool {
    query::active_changes(view).unwrap().is_empty()
        && query::packages(view).unwrap().iter().all(|p| {
            !(p.status == PackageStatus::Installed
                && matches!(p.onload, OnloadState::Pending | OnloadState::Running { .. }))
        })
}

// --- the harness -------------------------------------------------------------------------

/// What the model predicts for a command: `None` = rejected, `Some(state after)`.
type Expect = Option<Snap>;
/// What the model predicts for a change-starting command.
type ExpectChange = Option<(ChangeStatus, Snap)>;

struct Harness {
    scratch: common::Scratch,
    opts: Options,
    ws: Option<Workspace>,
    /// `specs[pkg][variant]`
    specs: Vec<Vec<Spec>>,
    modes: Arc<Mutex<BTreeMap<String, Mode>>>,
    /// The predicted state (exact mode) or the last synchronised one (stale mode).
    model: Snap,
    /// Whether the model predicts everything (no change of ours is in flight).
    exact: bool,
    /// Changes the model has accounted for.
    settled: BTreeSet<Uuid>,
    /// Packages that commands touched while the model was stale.
    dirty: BTreeSet<String>,
    last_change: Option<Uuid>,
    /// Set by a change started with [`Wait::Reopen`].
    reopen_after: Option<u8>,
    step: usize,
    log: Vec<String>,
}

fn handler(modes: Arc<Mutex<BTreeMap<String, Mode>>>) -> HookHandler {
    Arc::new(move |ctx: HookContext, token: CancellationToken| {
        let mode = modes
            .lock()
            .unwrap()
            .get(&ctx.hook)
            .copied()
            .unwrap_or(Mode::Ok);
        Box::pin(async move {
            match mode {
                Mode::Ok => Ok(String::new()),
                Mode::Fail => Err(format!(
                    "injected failure of {} of {}",
                    ctx.hook, ctx.package
                )),
                Mode::Slow => tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(SLOW_HOOK_MS)) => Ok(String::new()),
                    _ = token.cancelled() => Err("cancelled".to_string()),
                },
            }
        })
    })
}

fn options(modes: &Arc<Mutex<BTreeMap<String, Mode>>>, durability: Durability) -> Options {
    let mut opts = Options::default();
    opts.store.durability = durability;
    // The model predicts what commands do; a supervisor's observations (its daemon is
    // `/bin/true`) would be writes the model does not make. Supervision has its own tests
    // (`daemons.rs`).
    opts.daemons = cairn::Daemons::Off;
    for h in hook_names() {
        opts.hook_handlers
            .insert(("*".to_string(), h), handler(Arc::clone(modes)));
    }
    opts
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(WAIT_S), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT_S} s"))
}

fn opts() -> CommandOptions {
    CommandOptions::default()
}

/// The backup of `ws`, replayed into a fresh projection, gives the digest the backup's own
/// projection has; returns it.
fn replay_digest(ws: &Workspace) -> Digest {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy");
    ws.store().backup(&copy).unwrap();
    let machine = KernelMachine::default();
    let stored = Store::open(&copy, machine.clone(), Default::default())
        .unwrap()
        .read()
        .unwrap()
        .digest()
        .unwrap();
    Store::rebuild(&copy, &machine, &mut |_| {}).unwrap();
    let rebuilt = Store::open(&copy, machine, Default::default())
        .unwrap()
        .read()
        .unwrap()
        .digest()
        .unwrap();
    assert_eq!(stored, rebuilt, "replaying the log gives a different state");
    stored
}

/// Checks the invariants that hold at every commit, and with `idle` those that hold once no
/// change is in progress.
fn check_invariants(view: &ReadView, idle: bool) -> Result<(), String> {
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

impl Harness {
    fn ws(&self) -> &Workspace {
        self.ws.as_ref().expect("workspace is open")
    }

    fn view(&self) -> ReadView {
        self.ws().view().unwrap()
    }

    fn digest(&self) -> Digest {
        self.view().digest().unwrap()
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "step {}: {what}\n--- steps so far:\n{}",
            self.step,
            self.log.join("\n")
        )
    }

    fn mode(&self, hook: &str) -> Mode {
        self.modes
            .lock()
            .unwrap()
            .get(hook)
            .copied()
            .unwrap_or(Mode::Ok)
    }

    /// The package index `p` stands for: picked among the packages with a record (`present`)
    /// or without one.
    fn resolve(&self, p: Pkg, present: bool) -> usize {
        let view = self.view();
        let fits: Vec<usize> = (0..PACKAGES.len())
            .filter(|i| query::package(&view, PACKAGES[*i]).unwrap().is_some() == present)
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

    /// Settles a command's outcome: `Ok(v)` accepted, `Err(reason)` rejected; any other error
    /// fails the test.
    fn classify<T>(&self, what: &str, r: Result<T, Error>) -> Result<T, String> {
        match r {
            Ok(v) => Ok(v),
            Err(Error::Rejected(why)) => Err(why.to_string()),
            Err(e) => self.fail(format!(
                "{what}: failed with something other than a rejection: {e:?}"
            )),
        }
    }

    /// Checks a plain command against the model: predicted acceptance, unchanged digest on a
    /// rejection, the predicted state after. In stale mode, marks `package` dirty.
    fn settle<T>(
        &mut self,
        what: &str,
        package: Option<&str>,
        before: Option<Digest>,
        expect: Option<Expect>,
        r: Result<T, Error>,
    ) -> Option<T> {
        let r = self.classify(what, r);
        let Some(expect) = expect else {
            self.dirty.extend(package.map(str::to_string));
            return r.ok();
        };
        match (&r, expect) {
            (Ok(_), Some(snap)) => self.model = snap,
            (Err(why), None) => {
                self.log.push(format!("    rejected: {why}"));
                let after = self.digest();
                if Some(after) != before {
                    self.fail(format!("{what}: rejected ({why}) but the digest moved"));
                }
            }
            (Ok(_), None) => self.fail(format!(
                "{what}: accepted, but the model expected a rejection"
            )),
            (Err(why), Some(_)) => self.fail(format!(
                "{what}: rejected ({why}), but the model expected it to be accepted"
            )),
        }
        r.ok()
    }

    /// Runs a change-starting command: checks acceptance against the model; with
    /// [`Wait::Yes`], waits for the change and checks its status and the state after.
    async fn change(
        &mut self,
        what: &str,
        before: Option<Digest>,
        expect: Option<ExpectChange>,
        wait: Wait,
        r: Result<Uuid, Error>,
    ) {
        let r = self.classify(what, r);
        let exact = expect.is_some();
        if let Some(expect) = &expect {
            match (&r, expect) {
                (Ok(_), Some(_)) => {}
                (Err(why), None) => {
                    self.log.push(format!("    rejected: {why}"));
                    if Some(self.digest()) != before {
                        self.fail(format!("{what}: rejected ({why}) but the digest moved"));
                    }
                }
                (Ok(_), None) => self.fail(format!(
                    "{what}: accepted, but the model expected a rejection"
                )),
                (Err(why), Some(_)) => self.fail(format!(
                    "{what}: rejected ({why}), but the model expected it to be accepted"
                )),
            }
        }
        let Ok(id) = r else {
            return;
        };
        self.last_change = Some(id);
        match wait {
            Wait::Yes => {}
            Wait::No => {
                self.log.push("    (not waiting)".into());
                self.exact = false;
                return;
            }
            Wait::Reopen(ms) => {
                self.log.push(format!("    (reopening {ms} ms later)"));
                self.exact = false;
                self.reopen_after = Some(ms);
                return;
            }
        }
        let c = bounded(what, self.ws().wait_change(id)).await.unwrap();
        self.log.push(format!("    change {}", c.status));
        if !c.status.is_ready() {
            self.fail(format!("{what}: change not ready after waiting: {c:#?}"));
        }
        if exact {
            let (status, snap) = expect.flatten().expect("accepted as predicted");
            self.wait_onloads().await;
            if c.status != status {
                self.fail(format!(
                    "{what}: change ended {}, the model expected {status}: {c:#?}",
                    c.status
                ));
            }
            self.model = snap;
            self.settled.insert(id);
        }
    }

    /// Waits until no onload is pending or running on an installed package.
    async fn wait_onloads(&self) {
        let started = Instant::now();
        loop {
            let view = self.view();
            let busy: Vec<_> = query::packages(&view)
                .unwrap()
                .into_iter()
                .filter(|p| {
                    p.status == PackageStatus::Installed
                        && matches!(p.onload, OnloadState::Pending | OnloadState::Running { .. })
                })
                .collect();
            if busy.is_empty() {
                return;
            }
            if started.elapsed() > Duration::from_secs(WAIT_S) {
                self.fail(format!("onload never finished: {busy:#?}"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn wait_idle(&mut self) {
        let ws = self.ws().clone();
        match tokio::time::timeout(Duration::from_secs(WAIT_S), ws.wait_idle()).await {
            Ok(r) => r.unwrap(),
            Err(_) => {
                let active = query::active_changes(&self.view()).unwrap();
                self.fail(format!(
                    "changes stuck although the engine should be idle: {active:#?}"
                ));
            }
        }
        drop(ws);
        self.wait_onloads().await;
        if !self.exact {
            self.resync();
        }
    }

    /// Takes the model from the (quiet) workspace, after checking that every package no
    /// change or command touched since the model went stale is as the model says.
    fn resync(&mut self) {
        let view = self.view();
        let actual = Snap::read(&view);
        let changes = query::changes(&view).unwrap();
        let mut dirty = std::mem::take(&mut self.dirty);
        for c in &changes {
            if !self.settled.contains(&c.id) {
                dirty.extend(c.packages.iter().cloned());
            }
        }
        let expected = self.model.overlay(&actual, &dirty);
        if expected != actual {
            self.fail(format!(
                "packages untouched while changes ran (touched: {dirty:?}) moved (- expected, + actual):\n{}",
                expected.diff(&actual)
            ));
        }
        self.log
            .push(format!("    (resynchronised; touched {dirty:?})"));
        self.model = actual;
        self.settled = changes.into_iter().map(|c| c.id).collect();
        self.exact = true;
    }

    fn check_replay(&self) {
        let stored = replay_digest(self.ws());
        if self.exact {
            let live = self.digest();
            if live != stored {
                self.fail(format!(
                    "the backup's digest {stored} differs from the live {live}"
                ));
            }
        }
    }

    /// Closes and reopens the workspace; with `replay`, checks the replay digest after.
    async fn reopen(&mut self, replay: bool) {
        let before = self.exact.then(|| self.digest());
        let ws = self.ws.take().expect("open");
        bounded("close", ws.close()).await;
        let ws = Workspace::open(&self.scratch.data(), self.opts.clone())
            .await
            .unwrap_or_else(|e| self.fail(format!("reopen failed: {e}")));
        self.ws = Some(ws);
        if let Some(before) = before {
            let after = self.digest();
            if after != before {
                self.fail(format!(
                    "reopening an idle workspace moved its digest {before} → {after}"
                ));
            }
        }
        if replay {
            self.check_replay();
        }
    }

    async fn run_op(&mut self, op: &Op) {
        self.run_command(op).await;
        // No handle clone may be alive here: closing waits for the last one.
        if let Some(ms) = self.reopen_after.take() {
            tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
            self.reopen(false).await;
        }
    }

    async fn run_command(&mut self, op: &Op) {
        match op {
            Op::Reopen => return self.reopen(true).await,
            Op::WaitIdle => return self.wait_idle().await,
            _ => {}
        }
        let exact = self.exact;
        let before = exact.then(|| self.digest());
        let ws = self.ws().clone();
        match op {
            Op::Install { pkg, variant, wait } => {
                let pkg = self.resolve(*pkg, false);
                let expect = exact.then(|| self.predict_install(pkg, *variant));
                let text = self.specs[pkg][*variant].toml(PACKAGES[pkg], *variant);
                let r = ws.install_toml(&text, &opts()).await;
                self.change("install", before, expect, *wait, r).await;
            }
            Op::Uninstall {
                pkg,
                keep,
                strict,
                wait,
            } => {
                let pkg = self.resolve(*pkg, true);
                let expect = exact.then(|| self.predict_uninstall(pkg, keep, *strict));
                let r = ws.uninstall(PACKAGES[pkg], keep, *strict, &opts()).await;
                self.change("uninstall", before, expect, *wait, r).await;
            }
            Op::Connect {
                pick,
                plug,
                slot,
                wait,
            } => {
                let pairs = connectable(&self.view());
                let (plug, slot) = match pick {
                    Some(i) if !pairs.is_empty() => pairs[usize::from(*i) % pairs.len()].clone(),
                    _ => (
                        end(PACKAGES[plug.0], PLUGS[plug.1]),
                        end(PACKAGES[slot.0], SLOTS[slot.1]),
                    ),
                };
                self.log.push(format!("    connect {plug:?} {slot:?}"));
                let expect = exact.then(|| self.predict_connect(&plug, &slot));
                let r = ws
                    .connect((&plug.0, &plug.1), (&slot.0, &slot.1), &opts())
                    .await;
                self.change("connect", before, expect, *wait, r).await;
            }
            Op::Disconnect {
                pick,
                plug,
                slot,
                wait,
            } => {
                let conns = query::connections(&self.view()).unwrap();
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
                let expect = exact.then(|| self.predict_disconnect(&plug, &slot));
                let r = ws
                    .disconnect((&plug.0, &plug.1), (&slot.0, &slot.1), &opts())
                    .await;
                self.change("disconnect", before, expect, *wait, r).await;
            }
            Op::AbortLast => {
                // In exact mode every change is finished: an abort is always refused.
                let target = self.last_change.unwrap_or(Uuid::nil());
                let r = ws.abort(target, &opts()).await;
                self.settle("abort", None, before, exact.then_some(None), r);
            }
            Op::FeatureSet { feature, state } => {
                let name = &self.feature_name(*feature);
                let expect = exact.then(|| {
                    self.predict_feature(name, |f| {
                        if f.state.is_fixed() {
                            return None;
                        }
                        f.state = *state;
                        Some(())
                    })
                });
                let r = ws.feature_set(name, *state, None, &opts()).await;
                self.settle("feature set", Some(&name[2..]), before, expect, r);
            }
            Op::FeatureReport { feature, observed } => {
                let name = &self.feature_name(*feature);
                let expect = exact.then(|| {
                    self.predict_feature(name, |f| {
                        f.observed = Some(*observed);
                        Some(())
                    })
                });
                let r = ws.feature_report(name, *observed, &opts()).await;
                self.settle("feature report", Some(&name[2..]), before, expect, r);
            }
            Op::ScopeSync {
                feature,
                global,
                per_instance,
            } => {
                let name = &self.feature_name(*feature);
                let scope = Scope {
                    global: *global,
                    per_instance: *per_instance,
                };
                let expect = exact.then(|| {
                    self.predict_feature(name, |f| {
                        f.scope = scope;
                        Some(())
                    })
                });
                let r = ws.feature_scope_sync(name, scope, &opts()).await;
                self.settle("scope sync", Some(&name[2..]), before, expect, r);
            }
            Op::VarSet { pkg, key, value } => {
                let (owner, key) = (PACKAGES[self.resolve(*pkg, true)], VAR_KEYS[*key]);
                let text = format!("set-{value}");
                let expect = exact.then(|| {
                    self.model.packages.get(owner)?;
                    let mut s = self.model.clone();
                    s.resources.insert(
                        (ResourceKind::Vars, owner.to_string(), key.to_string()),
                        ResSnap {
                            kept_from: None,
                            value: ResValue::Var(text.clone()),
                        },
                    );
                    Some(s)
                });
                let r = ws.var_set(owner, key, text.as_bytes(), None, &opts()).await;
                if self
                    .settle("var set", Some(owner), before, expect, r)
                    .is_some()
                    && exact
                {
                    let v = query::var(&self.view(), owner, key).unwrap();
                    if v.as_ref().map(|v| v.value.as_slice()) != Some(text.as_bytes()) {
                        self.fail(format!(
                            "var {owner}/{key} reads {v:?} after an accepted set"
                        ));
                    }
                }
            }
            Op::VarDelete { pkg, key } => {
                let (owner, key) = (PACKAGES[self.resolve(*pkg, true)], VAR_KEYS[*key]);
                let expect = exact.then(|| {
                    self.model.packages.get(owner)?;
                    let mut s = self.model.clone();
                    s.resources.remove(&(
                        ResourceKind::Vars,
                        owner.to_string(),
                        key.to_string(),
                    ))?;
                    Some(s)
                });
                let r = ws.var_delete(owner, &[key], &opts()).await;
                self.settle("var delete", Some(owner), before, expect, r);
            }
            Op::QueuePut { pkg, items } => {
                let owner = PACKAGES[self.resolve(*pkg, true)];
                let n = u64::from(*items);
                let expect = exact.then(|| {
                    self.predict_resource(ResourceKind::Queues, owner, QUEUE, |v| {
                        let ResValue::Queue {
                            next_seq, items, ..
                        } = v
                        else {
                            return None;
                        };
                        *next_seq += n;
                        *items += n;
                        Some(())
                    })
                });
                let batch = (0..n).map(|i| format!("item-{i}").into_bytes()).collect();
                let r = ws.queue_put(owner, QUEUE, batch, &opts()).await;
                self.settle("queue put", Some(owner), before, expect, r);
            }
            Op::QueueAck { pkg, upto } => {
                let owner = PACKAGES[self.resolve(*pkg, true)];
                let upto = *upto;
                let expect = exact.then(|| {
                    self.predict_resource(ResourceKind::Queues, owner, QUEUE, |v| {
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
                    })
                });
                let r = ws.queue_ack(owner, QUEUE, upto, &opts()).await;
                self.settle("queue ack", Some(owner), before, expect, r);
            }
            Op::VaultSet { pkg, secret } => {
                let owner = PACKAGES[self.resolve(*pkg, true)];
                let secret = format!("secret-{secret}");
                let expect = exact.then(|| {
                    self.predict_resource(ResourceKind::Vaults, owner, VAULT, |v| {
                        *v = ResValue::Vault { sealed: true };
                        Some(())
                    })
                });
                let r = ws.vault_set(owner, VAULT, secret.as_bytes(), &opts()).await;
                if self
                    .settle("vault set", Some(owner), before, expect, r)
                    .is_some()
                    && exact
                {
                    let got = ws.vault_get(owner, VAULT).unwrap();
                    if got.as_deref() != Some(secret.as_bytes()) {
                        self.fail(format!(
                            "vault {owner}/{VAULT} opens to {got:?} after a set"
                        ));
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
                let expect = exact.then(|| {
                    self.predict_resource(ResourceKind::Daemons, owner, DAEMON, |v| {
                        *v = ResValue::Daemon(desired);
                        Some(())
                    })
                });
                let r = ws.daemon_set(owner, DAEMON, desired, &opts()).await;
                self.settle("daemon set", Some(owner), before, expect, r);
            }
            Op::Hook { hook, mode } => {
                let name = hook_names()[*hook].clone();
                self.log.push(format!("    {name} → {mode:?}"));
                self.modes.lock().unwrap().insert(name, *mode);
            }
            Op::Reopen | Op::WaitIdle => unreachable!("handled above"),
        }
    }

    /// After every step: the invariants; in exact mode the whole predicted state; in stale
    /// mode, a resynchronisation as soon as the workspace is quiet.
    fn after_step(&mut self) {
        let view = self.view();
        if let Err(e) = check_invariants(&view, self.exact) {
            self.fail(format!("invariant violated: {e}"));
        }
        if self.exact {
            let actual = Snap::read(&view);
            if actual != self.model {
                self.fail(format!(
                    "state differs from the model (- expected, + actual):\n{}",
                    self.model.diff(&actual)
                ));
            }
        } else if quiet(&view) {
            self.resync();
            if let Err(e) = check_invariants(&self.view(), true) {
                self.fail(format!("invariant violated once quiet: {e}"));
            }
        }
    }

    async fn run(mut self, ops: &[Op]) {
        let modes: Vec<String> = self
            .modes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| **m != Mode::Ok)
            .map(|(h, m)| format!("{h}={m:?}"))
            .collect();
        self.log
            .push(format!("hooks at start: {}", modes.join(" ")));
        for (i, op) in ops.iter().enumerate() {
            self.step = i;
            self.log.push(format!(
                "{i}: {op:?}{}",
                if self.exact { "" } else { " [stale]" }
            ));
            self.run_op(op).await;
            self.after_step();
        }
        self.step = ops.len();
        self.log.push("end: wait idle".into());
        self.wait_idle().await;
        self.after_step();
        self.check_replay();
        let ws = self.ws.take().expect("open");
        bounded("close", ws.close()).await;
    }
}

/// Up to three installs (so most commands meet packages), then up to 40 random commands.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let install = (pkg(), 0..VARIANTS).prop_map(|(pkg, variant)| Op::Install {
        pkg,
        variant,
        wait: Wait::Yes,
    });
    (
        prop::collection::vec(install, 0..=3),
        prop::collection::vec(op(), 1..40),
    )
        .prop_map(|(mut first, rest)| {
            first.extend(rest);
            first
        })
}

fn initial_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![6 => Just(Mode::Ok), 3 => Just(Mode::Fail), 2 => Just(Mode::Slow)]
}

fn run_case(specs: Vec<Spec>, modes: Vec<Mode>, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let modes = Arc::new(Mutex::new(hook_names().into_iter().zip(modes).collect()));
        let opts = options(&modes, Durability::None);
        let scratch = common::Scratch::new();
        let ws = Workspace::open(&scratch.data(), opts.clone())
            .await
            .unwrap();
        let specs = specs.chunks(VARIANTS).map(<[Spec]>::to_vec).collect();
        let h = Harness {
            scratch,
            opts,
            ws: Some(ws),
            specs,
            modes,
            model: Snap::default(),
            exact: true,
            settled: BTreeSet::new(),
            dirty: BTreeSet::new(),
            last_change: None,
            reopen_after: None,
            step: 0,
            log: Vec::new(),
        };
        h.run(&ops).await;
    });
}

fn config() -> ProptestConfig {
    let slow = std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1");
    ProptestConfig {
        cases: if slow { 32 } else { 8 },
        // Only `model.rs` belongs to this test; a failure prints its minimal case instead.
        failure_persistence: None,
        max_shrink_iters: if slow { 1024 } else { 256 },
        ..ProptestConfig::default()
    }
}

/// Every test of this file, run by `libtest-mimic` unless this process is the SIGKILL child.
fn main() -> std::process::ExitCode {
    if let Ok(data) = std::env::var(CHILD_DATA_ENV) {
        sigkill_child(&data);
        return std::process::ExitCode::SUCCESS;
    }
    let args = libtest_mimic::Arguments::from_args();
    let test = |name: &str, run: fn()| {
        libtest_mimic::Trial::test(name, move || {
            run();
            Ok(())
        })
    };
    let tests = vec![
        test(
            "random_command_sequences_keep_the_model_and_the_invariants",
            random_command_sequences_keep_the_model_and_the_invariants,
        ),
        test(
            "undone_disconnect_of_an_auto_connection_leaves_it_desired",
            undone_disconnect_of_an_auto_connection_leaves_it_desired,
        ),
        test(
            "undone_connect_of_an_undesired_pair_leaves_it_undesired",
            undone_connect_of_an_undesired_pair_leaves_it_undesired,
        ),
        test(
            "sigkill_mid_change_then_reopen_resumes_and_keeps_the_invariants",
            sigkill_mid_change_then_reopen_resumes_and_keeps_the_invariants,
        ),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}

proptest! {
    #![proptest_config(config())]

    fn random_command_sequences_keep_the_model_and_the_invariants(
        specs in prop::collection::vec(spec(), PACKAGES.len() * VARIANTS),
        modes in prop::collection::vec(initial_mode(), hook_names().len()),
        ops in ops(),
    ) {
        run_case(specs, modes, ops);
    }
}

// --- cases the model found ---------------------------------------------------------------

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

fn first_conn() -> Op {
    Op::Disconnect {
        pick: Some(0),
        plug: (0, 0),
        slot: (0, 0),
        wait: Wait::Yes,
    }
}

/// A disconnect of an auto connection that fails after the connection was removed is undone:
/// the connection comes back, and so must its "desired" standing (it was never disconnected).
fn undone_disconnect_of_an_auto_connection_leaves_it_desired() {
    run_case(
        self_connecting(&["unprepare-plug-p1"]),
        modes_failing(&["unprepare-plug-p1"]),
        vec![
            Op::Install {
                pkg: FIRST,
                variant: 0,
                wait: Wait::Yes,
            },
            first_conn(),
        ],
    );
}

/// A manual connect of an undesired pair that fails after the connection was established is
/// undone: the pair must stay undesired (the connect never happened).
fn undone_connect_of_an_undesired_pair_leaves_it_undesired() {
    run_case(
        self_connecting(&["connect-plug-p1"]),
        modes_failing(&[]),
        vec![
            Op::Install {
                pkg: FIRST,
                variant: 0,
                wait: Wait::Yes,
            },
            first_conn(),
            Op::Hook {
                hook: hook_names()
                    .iter()
                    .position(|h| h == "connect-plug-p1")
                    .unwrap(),
                mode: Mode::Fail,
            },
            Op::Connect {
                pick: Some(0),
                plug: (0, 0),
                slot: (0, 0),
                wait: Wait::Yes,
            },
        ],
    );
}

// --- SIGKILL -----------------------------------------------------------------------------

/// Environment variable that turns [`sigkill_child`] into the child of [`sigkill_mid_change`]:
/// the data directory to drive.
const CHILD_DATA_ENV: &str = "CAIRN_MODEL_CHILD_DATA";
/// The child's random seed.
const CHILD_SEED_ENV: &str = "CAIRN_MODEL_CHILD_SEED";
/// How long a child runs at most if nobody kills it.
const CHILD_RUN_S_MAX: u64 = 30;

/// A manifest variant declaring one of everything, with every hook.
fn full_spec(plug_iface: usize, slot_iface: usize) -> Spec {
    let plugs = BTreeMap::from([(0, (plug_iface, true))]);
    let slots = BTreeMap::from([(0, slot_iface)]);
    let hooks = hook_names()
        .into_iter()
        .filter(|h| hook_allowed(h, &plugs, &slots))
        .collect();
    Spec {
        vars: BTreeMap::from([(0, 1)]),
        queue: true,
        vault: true,
        daemon: Some(true),
        model: true,
        feature: FeatureState::Enabled,
        scope: Scope::default(),
        plugs,
        slots,
        hooks,
    }
}

/// A small deterministic generator (xorshift64*), so a child's run follows from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The child: with [`CHILD_DATA_ENV`] set, opens that workspace (`Durability::Sync`) with slow
/// and sometimes failing hooks and starts changes without waiting for them, printing
/// `started <change id>` once each is acknowledged, until it is killed.
fn sigkill_child(data: &str) {
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let mut rng = Rng(seed | 1);
    let modes: BTreeMap<String, Mode> = hook_names()
        .into_iter()
        .map(|h| {
            let mode = if rng.below(8) == 0 {
                Mode::Fail
            } else {
                Mode::Slow
            };
            (h, mode)
        })
        .collect();
    let modes = Arc::new(Mutex::new(modes));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ws = Workspace::open(Path::new(&data), options(&modes, Durability::Sync))
            .await
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(CHILD_RUN_S_MAX) {
            let pkg = PACKAGES[rng.below(PACKAGES.len())];
            let r = match rng.below(6) {
                0 | 1 => {
                    let spec = full_spec(rng.below(2), rng.below(2));
                    ws.install_toml(&spec.toml(pkg, rng.below(VARIANTS)), &opts())
                        .await
                }
                2 => {
                    let keep: Vec<ResourceKind> = ResourceKind::ALL
                        .into_iter()
                        .filter(|_| rng.below(2) == 0)
                        .collect();
                    ws.uninstall(pkg, &keep, rng.below(3) == 0, &opts()).await
                }
                3 => {
                    let pairs = connectable(&ws.view().unwrap());
                    if pairs.is_empty() {
                        continue;
                    }
                    let (p, s) = &pairs[rng.below(pairs.len())];
                    ws.connect((&p.0, &p.1), (&s.0, &s.1), &opts()).await
                }
                4 => {
                    let conns = query::connections(&ws.view().unwrap()).unwrap();
                    if conns.is_empty() {
                        continue;
                    }
                    let c = &conns[rng.below(conns.len())];
                    ws.disconnect((&c.plug.0, &c.plug.1), (&c.slot.0, &c.slot.1), &opts())
                        .await
                }
                _ => {
                    let value = format!("v{}", rng.below(100));
                    match ws.var_set(pkg, "a", value.as_bytes(), None, &opts()).await {
                        Ok(c) => {
                            println!("acked {}", c.applied);
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match r {
                Ok(id) => println!("started {id}"),
                Err(Error::Rejected(_)) => {}
                Err(e) => panic!("child: not a rejection: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(rng.below(4) as u64)).await;
        }
    });
}

/// SIGKILLs a child process (see [`sigkill_child`]) while it has changes in flight, then
/// opens the workspace: every change the child was told about is there, every change
/// resumes and finishes, the invariants hold, the chain verifies and replaying the log gives
/// the live digest. 3 kill cycles, 20 with `CAIRN_SLOW_TESTS=1`.
fn sigkill_mid_change_then_reopen_resumes_and_keeps_the_invariants() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let slow = std::env::var("CAIRN_SLOW_TESTS").is_ok_and(|v| v == "1");
    let cycles = if slow { 20 } else { 3 };
    let scratch = common::Scratch::new();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let modes = Arc::new(Mutex::new(BTreeMap::new()));
    let mut rng = Rng(0x5eed);
    let mut acked: Vec<Uuid> = Vec::new();
    let mut applied_acked = 0u64;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .env(CHILD_DATA_ENV, scratch.data())
            .env(CHILD_SEED_ENV, (cycle as u64 + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let target = 1 + rng.below(8);
        let mut seen = 0;
        let mut line = String::new();
        let mut record = |line: &str| {
            if let Some(id) = line.strip_prefix("started ") {
                acked.push(Uuid::parse_str(id.trim()).unwrap());
                true
            } else if let Some(offset) = line.strip_prefix("acked ") {
                applied_acked = applied_acked.max(offset.trim().parse().unwrap());
                false
            } else {
                false
            }
        };
        // Kill once the child has started `target` changes: with slow hooks, some are
        // mid-task.
        while seen < target {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("cycle {cycle}: child exited early: {:?}", child.wait());
            }
            if record(&line) {
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if line.ends_with('\n') {
                record(&line);
            }
        }
        rt.block_on(async {
            let ws = Workspace::open(&scratch.data(), options(&modes, Durability::Sync))
                .await
                .unwrap_or_else(|e| panic!("cycle {cycle}: reopen: {e}"));
            let view = ws.view().unwrap();
            assert!(
                view.applied() >= applied_acked,
                "cycle {cycle}: acknowledged offset {applied_acked} lost (applied {})",
                view.applied()
            );
            for id in &acked {
                assert!(
                    query::change(&view, *id).unwrap().is_some(),
                    "cycle {cycle}: acknowledged change {id} lost"
                );
            }
            bounded("resumed changes", ws.wait_idle()).await.unwrap();
            let started = Instant::now();
            while !quiet(&ws.view().unwrap()) {
                assert!(
                    started.elapsed() < Duration::from_secs(WAIT_S),
                    "onloads stuck"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let view = ws.view().unwrap();
            if let Err(e) = check_invariants(&view, true) {
                panic!("cycle {cycle}: invariant violated after resuming: {e}");
            }
            view.verify(&mut |_| {}).unwrap();
            assert_eq!(
                replay_digest(&ws),
                view.digest().unwrap(),
                "cycle {cycle}: replaying the log gives a different state"
            );
            bounded("close", ws.close()).await;
        });
    }
}
