//! Counters for `/metrics` (Prometheus text format): commands and their latency, rejections
//! by reason, HTTP responses by status; the store's commit counters and the workspace's
//! hook runs are read when rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::api::ApiError;

/// Upper bounds (seconds) of the command latency histogram's buckets.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Request and command counters.
#[derive(Default)]
pub struct Metrics {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
    rejections: Mutex<BTreeMap<String, u64>>,
    http: Mutex<BTreeMap<u16, u64>>,
    integrity: AtomicU64,
}

impl Metrics {
    /// Records one command (write or admin request): its latency, and, when it was refused
    /// (a 4xx: rejected or bad input), the reason.
    pub fn command(&self, took: Duration, error: Option<&ApiError>) {
        let s = took.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if let Some(e) = error.filter(|e| (400..500).contains(&e.status)) {
            let mut r = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
            *r.entry(e.code.clone()).or_default() += 1;
        }
    }

    /// Records an integrity failure answered to a request (corruption, a damaged WAL).
    pub fn integrity_failure(&self) {
        self.integrity.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an error response: its status, and an integrity failure as one.
    pub fn error(&self, e: &ApiError) {
        if e.is_integrity() {
            self.integrity_failure();
        }
        self.http(e.status);
    }

    /// Records one HTTP response status.
    pub fn http(&self, status: u16) {
        let mut h = self.http.lock().unwrap_or_else(|p| p.into_inner());
        *h.entry(status).or_default() += 1;
    }

    /// Renders every metric in Prometheus text format.
    pub fn render(
        &self,
        ws: &cairn::Workspace,
        replication: &crate::service::Replication,
    ) -> String {
        let mut out = String::new();
        let stats = ws.store().stats();
        let hooks = ws.hook_runs();
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let daemons = ws.daemon_stats();
        gauge(
            "cairn_daemon_starts_total",
            "Daemon processes started since open.",
            "counter",
            daemons.starts.to_string(),
        );
        gauge(
            "cairn_daemon_exits_total",
            "Daemon runs that ended on their own (not stopped by cairn) since open.",
            "counter",
            daemons.exits.to_string(),
        );
        gauge(
            "cairn_daemon_restarts_total",
            "Daemon restarts by their policy since open.",
            "counter",
            daemons.restarts.to_string(),
        );
        gauge(
            "cairn_daemons_failed",
            "Daemons marked failed (a crash loop) and left stopped, now.",
            "gauge",
            daemons.failed.to_string(),
        );
        gauge(
            "cairn_applied_offset",
            "Offset of the last committed log entry.",
            "gauge",
            ws.applied().to_string(),
        );
        gauge(
            "cairn_commit_groups_total",
            "Group commits (one RocksDB write batch each) since open.",
            "counter",
            stats.groups.to_string(),
        );
        gauge(
            "cairn_committed_entries_total",
            "Log entries committed since open.",
            "counter",
            stats.entries.to_string(),
        );
        gauge(
            "cairn_writer_up",
            "1 while the writer can commit; 0 while it is degraded (failed writes are retried), stopped or read-only.",
            "gauge",
            u8::from(ws.health() == cairn::store::WriterHealth::Ok).to_string(),
        );
        gauge(
            "cairn_failed_commit_writes_total",
            "Group commit writes that failed (full disk, IO error) since open.",
            "counter",
            stats.failed_writes.to_string(),
        );
        gauge(
            "cairn_integrity_failures_total",
            "Requests answered with an integrity failure (corruption detected) since start.",
            "counter",
            self.integrity.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "cairn_commit_write_seconds_total",
            "Time spent writing (and syncing) group commits since open.",
            "counter",
            format!("{}", stats.write_ns as f64 / 1e9),
        );
        let _ = writeln!(
            out,
            "# HELP cairn_command_duration_seconds Latency of commands (write and admin requests), from receipt to answer.\n# TYPE cairn_command_duration_seconds histogram"
        );
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                out,
                "cairn_command_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "cairn_command_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "cairn_command_duration_seconds_sum {}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "cairn_command_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP cairn_rejections_total Commands refused (rejected or bad input), by reason (error code).\n# TYPE cairn_rejections_total counter"
        );
        for (code, n) in self
            .rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "cairn_rejections_total{{reason=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP cairn_hook_runs_total Hook runs since open, by outcome.\n# TYPE cairn_hook_runs_total counter"
        );
        for (outcome, n) in [
            ("succeeded", hooks.succeeded),
            ("failed", hooks.failed),
            ("timed_out", hooks.timed_out),
            ("spawn_failed", hooks.spawn_failed),
            ("cancelled", hooks.cancelled),
        ] {
            let _ = writeln!(out, "cairn_hook_runs_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP cairn_http_responses_total HTTP responses, by status.\n# TYPE cairn_http_responses_total counter"
        );
        for (status, n) in self.http.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "cairn_http_responses_total{{status=\"{status}\"}} {n}");
        }
        render_replication(&mut out, ws.applied(), replication);
        out
    }
}

/// The replication metrics: per mirror on a leader, the follower's on a mirror. Mirror names
/// are `[A-Za-z0-9-_.:]` (checked at hello), so they need no escaping as label values.
fn render_replication(out: &mut String, applied: u64, replication: &crate::service::Replication) {
    use crate::service::Replication;
    let mut family = |name: &str, help: &str, kind: &str, rows: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    match replication {
        // Neither leads nor follows: nothing to report.
        Replication::SteppedDown { .. } => {}
        Replication::Leader(mirrors) => {
            let list = mirrors.list();
            let rows = |f: &dyn Fn(&cairn_mirror::MirrorRecord) -> u64| -> Vec<(String, u64)> {
                list.iter()
                    .map(|m| (format!("{{mirror=\"{}\"}}", m.name), f(m)))
                    .collect()
            };
            family(
                "cairn_mirror_applied_offset",
                "The offset each mirror last acknowledged as durably applied.",
                "gauge",
                &rows(&|m| m.applied_offset),
            );
            family(
                "cairn_mirror_lag_entries",
                "Entries each mirror is behind this leader's head.",
                "gauge",
                &rows(&|m| applied.saturating_sub(m.applied_offset)),
            );
            family(
                "cairn_mirror_connected",
                "1 while a mirror has a stream open.",
                "gauge",
                &rows(&|m| u64::from(m.streams > 0)),
            );
        }
        Replication::Mirror(follower) => {
            let f = follower.get();
            let one = |v: u64| vec![(String::new(), v)];
            family(
                "cairn_follower_leader_head",
                "The leader's head offset as last heard.",
                "gauge",
                &one(f.leader_head),
            );
            family(
                "cairn_follower_lag_entries",
                "Entries this mirror is behind its leader's head as last heard.",
                "gauge",
                &one(f.leader_head.saturating_sub(applied)),
            );
            family(
                "cairn_follower_following",
                "1 while connected and caught up with the leader.",
                "gauge",
                &one(u64::from(f.state == cairn_mirror::FollowState::Following)),
            );
            family(
                "cairn_follower_refused_frames_total",
                "Frames from the leader refused (never applied) since start.",
                "counter",
                &one(f.refused_frames),
            );
            family(
                "cairn_follower_connects_total",
                "Streams opened to the leader since start.",
                "counter",
                &one(f.connects),
            );
        }
    }
}
