//! Shared helpers for the runtime's integration tests: scratch workspaces, manifests whose
//! hooks append their name (and environment) to a trace file, and readers of that trace.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::kernel::{query, ChangeRecord, ChangeStatus};
use cairn::{CommandOptions, Options, Workspace};
use uuid::Uuid;

/// A scratch workspace directory with a trace file for hooks.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Workspace::init(&dir.path().join("ws")).expect("init");
        Self { dir }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    pub fn trace(&self) -> PathBuf {
        self.dir.path().join("trace")
    }

    pub async fn open(&self) -> Workspace {
        self.open_with(Options::default()).await
    }

    pub async fn open_with(&self, opts: Options) -> Workspace {
        Workspace::open(&self.data(), opts).await.expect("open")
    }

    /// Hook names recorded so far, in order.
    pub fn hooks_run(&self) -> Vec<String> {
        std::fs::read_to_string(self.trace())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    }

    /// Full trace lines.
    pub fn trace_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.trace())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A hook table entry that appends `<hook> keep=<CAIRN_KEEP> plug=<CAIRN_PLUG> slot=<CAIRN_SLOT>`
/// to `trace` and exits with `exit`.
pub fn tracing_hook(trace: &Path, hook: &str, exit: i32) -> String {
    format!(
        "[hooks.{hook}]\nrun = \"echo {hook} keep=$CAIRN_KEEP plug=$CAIRN_PLUG slot=$CAIRN_SLOT pkg=$CAIRN_PACKAGE >> '{}'; exit {exit}\"\ntimeout_s = 30\n",
        trace.display()
    )
}

pub fn opts() -> CommandOptions {
    CommandOptions::default()
}

/// Waits for a change, bounded in time.
pub async fn finish(ws: &Workspace, change: Uuid) -> ChangeRecord {
    tokio::time::timeout(Duration::from_secs(60), ws.wait_change(change))
        .await
        .expect("change finished within 60 s")
        .expect("wait_change")
}

pub async fn install(ws: &Workspace, manifest: &str) -> ChangeRecord {
    let id = ws
        .install_toml(manifest, &opts())
        .await
        .expect("install accepted");
    let c = finish(ws, id).await;
    assert_eq!(c.status, ChangeStatus::Done, "install failed: {c:#?}");
    c
}

pub fn package_status(ws: &Workspace, name: &str) -> Option<String> {
    query::package(&ws.view().unwrap(), name)
        .unwrap()
        .map(|p| p.status.name().to_string())
}

/// The state digest of `data` after a fresh rebuild of a backup, compared with the live one.
pub fn assert_replay_matches(ws: &Workspace) {
    let live = ws.view().unwrap().digest().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy");
    ws.store().backup(&copy).unwrap();
    let machine = cairn::KernelMachine::default();
    cairn::store::Store::rebuild(&copy, &machine, &mut |_| {}).unwrap();
    let store = cairn::store::Store::open(&copy, machine, Default::default()).unwrap();
    let rebuilt = store.read().unwrap().digest().unwrap();
    assert_eq!(live, rebuilt, "replaying the log gives a different state");
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}
