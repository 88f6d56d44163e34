//! The replication figures: a leader (`cairn::Workspace` served by an in-process
//! `cairn_server::serve` on 127.0.0.1) and mirrors (workspaces opened with
//! `NodeRole::Mirror`, provisioned from a `Store::backup` of the leader, each following it with
//! `cairn_mirror::start` over real TCP and serving the API too), all in one process:
//! - [`catchup`]: a mirror catching up a whole log from offset 0;
//! - [`lag`]: paced writes on the leader, the time from each commit's answer until each mirror
//!   has applied its offset;
//! - [`leader_with_mirrors`]: the kernel sink's throughput on a leader with or without mirrors;
//! - [`forwarded`]: HTTP writes sent to a mirror (forwarded to the leader) or to the leader.
//!
//! Everything shares one two-worker runtime and the machine's cores: the mirrors' work (folding,
//! fsyncs, acknowledgements) competes with the leader's for CPU and for the disk, which a
//! deployment with mirrors on other machines would not see.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::kernel::model::Role;
use cairn::{CommandOptions, NodeRole, Options, Workspace};
use cairn_store::Durability;

use crate::lifecycle::{sink_command, KernelSink};
use crate::server::HttpWriter;
use crate::{meta, throughput, GroupStats, Sink};

/// How long a bench waits for its mirrors to reach the leader's head before it gives up.
const CATCH_UP_WAIT_MS_MAX: u64 = 600_000;

/// The mirrors' durability: that of their leader, unless `CAIRN_BENCH_MIRROR_DURABILITY` is
/// `buffered` or `none` (a diagnosis: what the mirrors' fsyncs cost a leader sharing their
/// disk).
pub fn mirror_durability_override() -> Option<Durability> {
    match std::env::var("CAIRN_BENCH_MIRROR_DURABILITY")
        .ok()?
        .as_str()
    {
        "sync" => Some(Durability::Sync),
        "buffered" => Some(Durability::Buffered),
        "none" => Some(Durability::None),
        other => panic!("CAIRN_BENCH_MIRROR_DURABILITY is sync, buffered or none, not {other:?}"),
    }
}

/// A workspace served on 127.0.0.1 (port 0).
struct Node {
    ws: Option<Workspace>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Node {
    fn serve(rt: &tokio::runtime::Runtime, ws: Workspace, svc: cairn_server::Service) -> Self {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = rt.spawn(cairn_server::serve(svc, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            ws: Some(ws),
            url,
            stop: Some(stop),
            served: Some(served),
        }
    }

    fn ws(&self) -> &Workspace {
        self.ws.as_ref().expect("open until shut down")
    }

    fn shut_down(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = rt.block_on(served);
        }
        if let Some(ws) = self.ws.take() {
            rt.block_on(ws.close());
        }
    }
}

/// A mirror: its served workspace, and the service that owns its follower.
struct Mirror {
    node: Node,
    svc: cairn_server::Service,
}

/// A served leader and its mirrors.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    leader: Node,
    leader_svc: cairn_server::Service,
    mirrors: Vec<Mirror>,
    children: Vec<ChildMirror>,
    durability: Durability,
    mirror_token: String,
    write_token: String,
}

impl Cluster {
    /// Opens the (closed) workspace at `dir` as the leader, creates a `mirror` and a `write`
    /// token on it (two entries), and serves it.
    pub fn lead(dir: &Path, durability: Durability) -> Self {
        let rt = crate::runtime();
        let mut opts = Options::default();
        opts.store.durability = durability;
        let ws = rt
            .block_on(Workspace::open(dir, opts))
            .expect("open the leader workspace");
        let token = |name: &str, role: Role| {
            rt.block_on(ws.token_create(name, role, &CommandOptions::default()))
                .expect("create a bench token")
                .1
        };
        let mirror_token = token("bench-mirror", Role::Mirror);
        let write_token = token("bench-write", Role::Write);
        let svc = cairn_server::Service::new(ws.clone());
        let leader = Node::serve(&rt, ws, svc.clone());
        Self {
            rt,
            leader,
            leader_svc: svc,
            mirrors: Vec::new(),
            children: Vec::new(),
            durability,
            mirror_token,
            write_token,
        }
    }

    /// A fresh leader in `dir` with the kernel sink's packages installed.
    pub fn fresh(dir: &Path, durability: Durability) -> Self {
        drop(KernelSink::open(dir, durability));
        Self::lead(dir, durability)
    }

    /// The leader's workspace.
    pub fn leader(&self) -> &Workspace {
        self.leader.ws()
    }

    /// A mirror in `dir` (which must not exist), provisioned from a backup of the leader taken
    /// now, following it.
    pub fn add_mirror(&mut self, dir: &Path) {
        self.leader()
            .store()
            .backup(dir)
            .expect("back up the leader to provision a mirror");
        self.add_mirror_from(dir);
    }

    /// A mirror on `dir`, which already holds a backup of the leader (from any offset up to
    /// the leader's head), following it.
    pub fn add_mirror_from(&mut self, dir: &Path) {
        let mut opts = Options {
            role: NodeRole::Mirror,
            ..Options::default()
        };
        opts.store.durability = mirror_durability_override().unwrap_or(self.durability);
        let ws = self
            .rt
            .block_on(Workspace::open(dir, opts))
            .expect("open the mirror workspace");
        let name = format!("bench-m{}", self.mirrors.len() + 1);
        let follower = cairn_mirror::start(
            ws.clone(),
            self.rt.handle().clone(),
            cairn_mirror::FollowerOptions {
                leader: self.leader.url.clone(),
                token: self.mirror_token.clone(),
                name,
            },
        )
        .expect("start the follower");
        let svc = cairn_server::Service::mirror(ws.clone(), follower);
        let node = Node::serve(&self.rt, ws, svc.clone());
        self.mirrors.push(Mirror { node, svc });
    }

    /// A mirror in `dir` (which must not exist), provisioned from a backup of the leader taken
    /// now, following it from a child process at idle CPU priority (see [`Placement`]).
    pub fn add_child_mirror(&mut self, dir: &Path) {
        self.leader()
            .store()
            .backup(dir)
            .expect("back up the leader to provision a mirror");
        let name = format!("bench-c{}", self.children.len() + 1);
        let mut child =
            std::process::Command::new(std::env::current_exe().expect("the bench binary's path"))
                .arg(MIRROR_CHILD_ARG)
                .arg(dir)
                .arg(&self.leader.url)
                .arg(&self.mirror_token)
                .arg(&name)
                .arg(format!(
                    "{:?}",
                    mirror_durability_override().unwrap_or(self.durability)
                ))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a mirror child process");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("piped stdout")),
            &mut ready,
        )
        .expect("read the mirror child's first line");
        assert_eq!(ready.trim(), "following", "the mirror child did not start");
        self.children.push(ChildMirror(child));
    }

    /// Waits until every child mirror has acknowledged `offset` to the leader.
    fn wait_children(&self, offset: u64) {
        if self.children.is_empty() {
            return;
        }
        let cairn_server::service::Replication::Leader(table) = self.leader_svc.replication()
        else {
            panic!("the bench leader leads");
        };
        let acked = self.rt.block_on(table.wait_acked(
            offset,
            self.children.len(),
            Duration::from_millis(CATCH_UP_WAIT_MS_MAX),
        ));
        assert_eq!(
            acked,
            self.children.len(),
            "child mirrors did not reach offset {offset} in {CATCH_UP_WAIT_MS_MAX} ms"
        );
    }

    /// The lowest offset any mirror (in process or child) has applied (child mirrors: as
    /// acknowledged to the leader).
    fn slowest_mirror(&self) -> Option<u64> {
        let in_process = self.mirrors.iter().map(|m| m.node.ws().applied());
        let children = match self.leader_svc.replication() {
            cairn_server::service::Replication::Leader(table) => table
                .list()
                .into_iter()
                .filter(|m| m.name.starts_with("bench-c"))
                .map(|m| m.applied_offset)
                .collect(),
            _ => Vec::new(),
        };
        in_process.chain(children).min()
    }

    /// Acknowledgements the leader has taken, from every mirror.
    fn acks(&self) -> u64 {
        match self.leader_svc.replication() {
            cairn_server::service::Replication::Leader(table) => {
                table.list().iter().map(|m| m.acks).sum()
            }
            _ => 0,
        }
    }

    /// The mirrors' workspaces, in the order they were added.
    pub fn mirrors(&self) -> Vec<Workspace> {
        self.mirrors.iter().map(|m| m.node.ws().clone()).collect()
    }

    /// Waits until every mirror has applied `offset`.
    pub fn wait_mirrors(&self, offset: u64) {
        self.wait_children(offset);
        self.rt.block_on(async {
            for m in &self.mirrors {
                let ws = m.node.ws();
                let waited = tokio::time::timeout(
                    Duration::from_millis(CATCH_UP_WAIT_MS_MAX),
                    ws.wait_for(offset),
                )
                .await;
                match waited {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("a mirror closed while waited for: {e}"),
                    Err(_) => panic!(
                        "a mirror did not reach offset {offset} in {CATCH_UP_WAIT_MS_MAX} ms \
                         (it is at {})",
                        ws.applied()
                    ),
                }
            }
        });
    }

    /// A client sending the kernel sink's commands to the leader (`Target::Leader`) or to the
    /// first mirror, with the write token.
    pub fn http_writer(&self, target: Target) -> HttpWriter {
        let url = match target {
            Target::Leader => &self.leader.url,
            Target::Mirror => &self.mirrors.first().expect("a mirror was added").node.url,
        };
        HttpWriter::new(url, &self.write_token)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Followers first, or they would reconnect to a leader going away.
        self.children.clear();
        for m in &self.mirrors {
            self.rt.block_on(m.svc.stop_follower());
        }
        for m in &mut self.mirrors {
            m.node.shut_down(&self.rt);
        }
        self.leader.shut_down(&self.rt);
    }
}

/// The argument that makes the bench binary run [`mirror_child`] instead of its figures.
pub const MIRROR_CHILD_ARG: &str = "--mirror-child";

/// A mirror in a child process; dropping it closes the child's stdin, which makes it stop its
/// follower, close its workspace and exit.
struct ChildMirror(std::process::Child);

impl Drop for ChildMirror {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Where the mirrors of [`leader_with_mirrors`] run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the leader's process, on its runtime, competing with it for the machine's cores.
    InProcess,
    /// In child processes under `SCHED_IDLE`: they run only on CPU time the leader leaves
    /// idle, as mirrors on other machines take none of the leader's cores. The leader's own
    /// work for them (reading and sending its log, taking their acknowledgements) is all
    /// counted, and they share its disk.
    IdleProcess,
}

/// The body of a child mirror process (`compare --mirror-child DIR LEADER TOKEN NAME
/// DURABILITY`): lowers its own scheduling to `SCHED_IDLE` before any thread is started (the
/// runtime's, the follower's, RocksDB's inherit it), opens `DIR` (a backup of the leader) as a
/// mirror, follows the leader, prints `following`, and stops when its stdin closes.
pub fn mirror_child(args: &[String]) {
    let [dir, leader, token, name, durability] = args else {
        panic!("--mirror-child DIR LEADER TOKEN NAME DURABILITY, not {args:?}");
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` only during the call; pid 0 is this thread.
    let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    assert_eq!(set, 0, "SCHED_IDLE: {}", std::io::Error::last_os_error());
    let rt = crate::runtime();
    let mut opts = Options {
        role: NodeRole::Mirror,
        ..Options::default()
    };
    opts.store.durability = match durability.as_str() {
        "Sync" => Durability::Sync,
        "Buffered" => Durability::Buffered,
        "None" => Durability::None,
        other => panic!("durability {other:?}"),
    };
    let ws = rt
        .block_on(Workspace::open(Path::new(dir), opts))
        .expect("open the mirror child's workspace");
    let follower = cairn_mirror::start(
        ws.clone(),
        rt.handle().clone(),
        cairn_mirror::FollowerOptions {
            leader: leader.clone(),
            token: token.clone(),
            name: name.clone(),
        },
    )
    .expect("start the child's follower");
    let svc = cairn_server::Service::mirror(ws.clone(), follower);
    println!("following");
    std::io::Write::flush(&mut std::io::stdout()).expect("flush stdout");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    rt.block_on(svc.stop_follower());
    rt.block_on(ws.close());
}

/// Where HTTP writes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The leader.
    Leader,
    /// A mirror (which forwards them to the leader).
    Mirror,
}

/// A mirror catching up a log.
#[derive(Clone, Copy, Debug)]
pub struct Catchup {
    /// Entries it applied.
    pub entries: u64,
    /// From starting the follower to having applied the leader's head.
    pub secs: f64,
    /// The mirror's commits while catching up.
    pub commits: GroupStats,
}

/// Serves the (closed) workspace at `leader_dir` as the leader and starts a mirror on `seed`
/// (a backup of it at a low offset, consumed); times the mirror catching up to the leader's
/// head. Creating the tokens adds two entries to the leader's log.
pub fn catchup(leader_dir: &Path, seed: &Path, durability: Durability) -> Catchup {
    let mut cluster = Cluster::lead(leader_dir, durability);
    let head = cluster.leader().applied();
    let start = Instant::now();
    cluster.add_mirror_from(seed);
    cluster.wait_mirrors(head);
    let secs = start.elapsed().as_secs_f64();
    // The mirror's writer counts the entries it applied (the seed's were there before).
    let commits: GroupStats = cluster.mirrors()[0].store().stats().into();
    Catchup {
        entries: commits.entries,
        secs,
        commits,
    }
}

/// Replication lag under paced writes.
#[derive(Clone, Debug)]
pub struct Lag {
    /// Writes made (each one entry).
    pub writes: u64,
    /// Seconds the writes took (the pace's target is `writes / rate`).
    pub secs: f64,
    /// (write, mirror) lags, sorted ascending, in seconds.
    pub lags: Vec<f64>,
    /// Lags that were 0: the mirror had the offset before the writer had its answer.
    pub ahead: usize,
    /// Each mirror's commits during the run.
    pub mirror_commits: Vec<GroupStats>,
    /// The leader's commits during the run.
    pub leader_commits: GroupStats,
}

impl Lag {
    /// The `p`-th percentile (0..=100) of the lags, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        crate::percentile_ms(&self.lags, p)
    }
}

/// Stats since `before` (the writer's counters only grow).
fn since(after: GroupStats, before: GroupStats) -> GroupStats {
    GroupStats {
        groups: after.groups - before.groups,
        entries: after.entries - before.entries,
        write_ns: after.write_ns - before.write_ns,
    }
}

/// A fresh leader in `scratch` with `mirrors` mirrors, taking `rate` writes per second (each
/// submitted on its own at its time, not waiting for earlier ones) for `duration`; for each
/// write and each mirror, the time from the leader's answer until the mirror has applied the
/// write's offset (`Workspace::wait_for` on the mirror's workspace, in-process).
pub fn lag(scratch: &Path, mirrors: usize, rate: u64, duration: Duration) -> Lag {
    let mut cluster = Cluster::fresh(&scratch.join("lag-leader"), Durability::Sync);
    for m in 0..mirrors {
        cluster.add_mirror(&scratch.join(format!("lag-mirror{m}")));
    }
    cluster.wait_mirrors(cluster.leader().applied());
    let leader = cluster.leader().clone();
    let mirror_ws = cluster.mirrors();
    let leader_before: GroupStats = leader.store().stats().into();
    let mirror_before: Vec<GroupStats> =
        mirror_ws.iter().map(|m| m.store().stats().into()).collect();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Each mirror's applied offset as it moved, with when it was seen to move.
    let watchers: Vec<_> = mirror_ws
        .iter()
        .map(|m| {
            let m = m.clone();
            let mut stopped = stopped.clone();
            cluster.rt.spawn(async move {
                let mut moves = vec![(m.applied(), Instant::now())];
                loop {
                    let seen = moves.last().expect("starts with one").0;
                    // Biased: a move already made is recorded before the stop is noticed.
                    tokio::select! {
                        biased;
                        r = m.wait_for(seen + 1) => if r.is_err() { break },
                        _ = stopped.changed() => break,
                    }
                    moves.push((m.applied(), Instant::now()));
                }
                moves
            })
        })
        .collect();
    let answers = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let start = Instant::now();
    cluster.rt.block_on({
        let answers = Arc::clone(&answers);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut writes = Vec::with_capacity(total as usize);
            for n in 0..total {
                tick.tick().await;
                let (leader, answers) = (leader.clone(), Arc::clone(&answers));
                writes.push(tokio::spawn(async move {
                    let opts = CommandOptions {
                        actor: Some(meta(n).actor),
                        idempotency_key: None,
                    };
                    let c = leader
                        .execute(sink_command(n), &opts)
                        .await
                        .expect("a paced bench write");
                    let answered = Instant::now();
                    if !c.offsets.is_empty() {
                        let mut a = answers.lock().unwrap_or_else(|p| p.into_inner());
                        a.push((c.offsets.end - 1, answered));
                    }
                }));
            }
            for w in writes {
                w.await.expect("a paced write task");
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    cluster.wait_mirrors(cluster.leader().applied());
    let _ = stop.send(true);
    let moves: Vec<Vec<(u64, Instant)>> = watchers
        .into_iter()
        .map(|w| cluster.rt.block_on(w).expect("a watcher task"))
        .collect();
    let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|p| p.into_inner()));
    let mut lags = Vec::with_capacity(answers.len() * moves.len());
    let mut ahead = 0;
    for (offset, answered) in &answers {
        for m in &moves {
            // The first time this mirror was seen at or past the offset.
            let i = m.partition_point(|(a, _)| a < offset);
            let (_, at) = m.get(i).expect("the mirrors reached the leader's head");
            let lag = at.saturating_duration_since(*answered);
            if lag.is_zero() {
                ahead += 1;
            }
            lags.push(lag.as_secs_f64());
        }
    }
    lags.sort_by(|a, b| a.total_cmp(b));
    Lag {
        writes: answers.len() as u64,
        secs,
        lags,
        ahead,
        mirror_commits: mirror_ws
            .iter()
            .zip(mirror_before)
            .map(|(m, b)| since(m.store().stats().into(), b))
            .collect(),
        leader_commits: since(cluster.leader().store().stats().into(), leader_before),
    }
}

/// The kernel sink's commands, in-process, on a served leader's store.
struct LeaderSink<'a>(&'a Cluster);

impl Sink for LeaderSink<'_> {
    fn write(&self, i: u64) {
        self.0
            .leader()
            .store()
            .execute(meta(i), sink_command(i))
            .expect("kernel command");
    }

    fn groups(&self) -> Option<GroupStats> {
        Some(self.0.leader().store().stats().into())
    }
}

/// CPU time this process spent during a run, by kind of thread (from `/proc/self/task`:
/// scheduler ticks, so each figure is good to about 10 ms per thread).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSplit {
    /// The store's writer threads (`cairn-writer`; in-process mirrors' too).
    pub writer_s: f64,
    /// Their repliers (`cairn-replier`).
    pub replier_s: f64,
    /// The runtime's workers and blocking pool (HTTP, streams, acknowledgements, log reads).
    pub tokio_s: f64,
    /// RocksDB's flush and compaction threads.
    pub rocksdb_s: f64,
    /// Everything else: the bench's writer threads (which exit before the end, so this is the
    /// process's total less the threads still there), followers of in-process mirrors.
    pub other_s: f64,
}

impl CpuSplit {
    /// "writer A, replier B, tokio C, rocksdb D, other E ms per 1 000 commands".
    pub fn describe(&self, commands: f64) -> String {
        let per = |s: f64| s * 1e3 * 1e3 / commands.max(1.0);
        format!(
            "CPU per 1 000 commands: writer {:.1} ms, replier {:.1}, tokio {:.1}, rocksdb {:.1}, \
             other {:.1} (total {:.1})",
            per(self.writer_s),
            per(self.replier_s),
            per(self.tokio_s),
            per(self.rocksdb_s),
            per(self.other_s),
            per(self.writer_s + self.replier_s + self.tokio_s + self.rocksdb_s + self.other_s)
        )
    }
}

/// This process's CPU seconds (user + system), and each live thread's (id → name, seconds).
fn cpu_now() -> (f64, std::collections::BTreeMap<u64, (String, f64)>) {
    // SAFETY: getrusage writes only into `usage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let total = secs(usage.ru_utime) + secs(usage.ru_stime);
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut threads = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(id) = task.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15, the 12th and 13th after the name.
        threads.insert(
            id,
            (
                stat[open + 1..close].to_string(),
                (ticks(11) + ticks(12)) / tick,
            ),
        );
    }
    (total, threads)
}

/// The CPU spent between two [`cpu_now`] readings, by kind of thread.
fn cpu_split(
    before: &(f64, std::collections::BTreeMap<u64, (String, f64)>),
    after: &(f64, std::collections::BTreeMap<u64, (String, f64)>),
) -> CpuSplit {
    let mut split = CpuSplit::default();
    let mut counted = 0.0;
    for (id, (name, secs)) in &after.1 {
        let spent = secs - before.1.get(id).map_or(0.0, |(_, s)| *s);
        let slot = if name.starts_with("cairn-writer") {
            &mut split.writer_s
        } else if name.starts_with("cairn-replier") {
            &mut split.replier_s
        } else if name.starts_with("tokio-") {
            &mut split.tokio_s
        } else if name.starts_with("rocksdb") {
            &mut split.rocksdb_s
        } else {
            continue;
        };
        *slot += spent;
        counted += spent;
    }
    split.other_s = (after.0 - before.0 - counted).max(0.0);
    split
}

/// One run of the kernel sink on a served leader.
#[derive(Clone, Copy, Debug)]
pub struct LeaderRun {
    /// Commands per second.
    pub ops: f64,
    /// How far behind the slowest mirror was when the writers stopped (entries).
    pub behind: u64,
    /// How long the mirrors then took to reach the leader's head.
    pub drain_secs: f64,
    /// The leader's commits.
    pub commits: GroupStats,
    /// This process's CPU while the writers ran (with child mirrors: the leader's alone).
    pub cpu: CpuSplit,
    /// Acknowledgements the leader took while the writers ran, per mirror.
    pub acks: u64,
}

/// The kernel sink from `threads` writers for `duration` on a fresh served leader in `dir`
/// (durability `sync`) with `mirrors` mirrors streaming, placed as `placement` says.
pub fn leader_with_mirrors(
    dir: &Path,
    mirrors: usize,
    placement: Placement,
    threads: usize,
    duration: Duration,
) -> LeaderRun {
    let mut cluster = Cluster::fresh(&dir.join("leader"), Durability::Sync);
    for m in 0..mirrors {
        let at = dir.join(format!("mirror{m}"));
        match placement {
            Placement::InProcess => cluster.add_mirror(&at),
            Placement::IdleProcess => cluster.add_child_mirror(&at),
        }
    }
    cluster.wait_mirrors(cluster.leader().applied());
    let sink = LeaderSink(&cluster);
    let groups_before = sink.groups().unwrap_or_default();
    let acks_before = cluster.acks();
    let cpu_before = cpu_now();
    let ops = throughput(&sink, threads, duration);
    let cpu = cpu_split(&cpu_before, &cpu_now());
    let acks = (cluster.acks() - acks_before) / mirrors.max(1) as u64;
    let commits = since(sink.groups().unwrap_or_default(), groups_before);
    let head = cluster.leader().applied();
    let behind = cluster
        .slowest_mirror()
        .map_or(0, |applied| head.saturating_sub(applied));
    let drained = Instant::now();
    cluster.wait_mirrors(head);
    LeaderRun {
        ops,
        behind,
        drain_secs: drained.elapsed().as_secs_f64(),
        commits,
        cpu,
        acks,
    }
}

/// HTTP writes (the server sink's mix, `threads` clients) for `duration` to a fresh leader in
/// `dir` with one mirror, sent to `target`; commands per second.
pub fn forwarded(dir: &Path, target: Target, threads: usize, duration: Duration) -> f64 {
    let mut cluster = Cluster::fresh(&dir.join("leader"), Durability::Sync);
    cluster.add_mirror(&dir.join("mirror"));
    // The mirror must hold the write token before it can check it.
    cluster.wait_mirrors(cluster.leader().applied());
    let client = cluster.http_writer(target);
    throughput(&client, threads, duration)
}
