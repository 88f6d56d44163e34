//! The follower: one thread that connects to the leader's stream, checks every frame with
//! [`crate::protocol::Follower`] before anything is applied, applies entries through
//! [`cairn::Workspace::submit_replicated`] (many per commit while catching up), acknowledges
//! its durably applied offset, and reconnects with backoff and jitter.
//!
//! A refused frame is never applied: the follower logs its offset and reason, drops the
//! connection and reconnects from its own head. A leader that refuses it (another workspace, a
//! binary too old, a leader behind it) is retried slowly and shown in the status. A diverged log
//! or an entry this binary cannot fold stops following for good; reads go on.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cairn::Workspace;
use cairn_log::{Hash, StoredEntry, VerifiedEntry};
use rand::Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::leader::{now_ms, HEARTBEAT_INTERVAL_MS};
use crate::protocol::{
    first_difference, parse_ack_interval, parse_hash, AckPacer, AckStep, Assembler, Follower,
    FollowerHello, Held, Step, ACK_INTERVAL_HEADER, HEAD_MARKS_HEADER, HELD_COMMAND_BYTES_MAX,
    PROTOCOL_VERSION,
};

/// Set by a mirror on its `not_leader` answer to a stream request: the leader it follows. A
/// follower that finds its leader turned mirror (a handoff) follows that one instead.
pub const LEADER_HEADER: &str = "cairn-leader";
/// First wait before reconnecting; doubled after each failed attempt.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// Longest wait before reconnecting (also the pace of retrying a leader that refused).
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 5_000;
/// A stream silent this long (no entry, no heartbeat) is dropped and reconnected.
pub const STREAM_SILENCE_MS_MAX: u64 = 4 * HEARTBEAT_INTERVAL_MS;
/// Connecting to the leader gives up after this long.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// An acknowledgement or a hash lookup gives up after this long.
pub const CALL_TIMEOUT_MS: u64 = 5_000;
/// Entries applied in one commit while catching up.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 2_048;
/// Bytes of entries applied in one commit while catching up.
pub const APPLY_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Batches submitted to the store and not yet committed: the follower reads and checks the
/// next batch while these commit, and waits for the oldest before submitting one more.
pub const APPLY_BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Largest frame body accepted (an entry at its limit plus the tag).
pub const FRAME_BODY_BYTES_MAX: usize = cairn_log::limits::ENTRY_BYTES_MAX + 1;

/// Where and how to follow.
#[derive(Clone, Debug)]
pub struct FollowerOptions {
    /// The leader's base URL (`http://host:port`).
    pub leader: String,
    /// A token of the `mirror` role on the leader.
    pub token: String,
    /// The name this mirror is shown under in the leader's status.
    pub name: String,
}

/// What the follower is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FollowState {
    /// Connecting (or waiting to reconnect).
    Connecting,
    /// Connected, applying the backlog.
    CatchingUp,
    /// Connected and caught up: applying live entries.
    Following,
    /// The leader refused this mirror; retried every `RECONNECT_BACKOFF_MAX_MS`.
    Refused {
        /// The leader's error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// This mirror's log and the leader's differ from `offset` on: it stopped following.
    Diverged {
        /// The first offset whose entries differ.
        offset: u64,
        /// What to do.
        message: String,
    },
    /// An entry from the leader that this binary cannot fold: it stopped following.
    Stopped {
        /// Why, and what to do.
        message: String,
    },
}

/// The follower's status, for `status` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FollowStatus {
    /// The leader's URL.
    pub leader: String,
    /// What it is doing.
    #[serde(flatten)]
    pub state: FollowState,
    /// The leader's head as last heard.
    pub leader_head: u64,
    /// When the leader was last heard from (ms since the Unix epoch; 0 never).
    pub last_contact_ms: u64,
    /// Streams opened since start.
    pub connects: u64,
    /// Frames refused since start (never applied).
    pub refused_frames: u64,
    /// The last error that ended a stream.
    pub last_error: Option<String>,
}

/// A running follower.
pub struct FollowerHandle {
    options: FollowerOptions,
    status: Arc<Mutex<FollowStatus>>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

/// A reader of a follower's status, cheap to clone (the server's `status` holds one).
#[derive(Clone, Debug)]
pub struct StatusWatch(Arc<Mutex<FollowStatus>>);

impl StatusWatch {
    /// What the follower is doing now.
    pub fn get(&self) -> FollowStatus {
        lock(&self.0).clone()
    }
}

impl FollowerHandle {
    /// What it was started with.
    pub fn options(&self) -> &FollowerOptions {
        &self.options
    }

    /// What the follower is doing now.
    pub fn status(&self) -> FollowStatus {
        lock(&self.status).clone()
    }

    /// A reader of the status that outlives no one: it only reads.
    pub fn watch(&self) -> StatusWatch {
        StatusWatch(Arc::clone(&self.status))
    }

    /// Stops following and waits for the thread (it notices within `STREAM_SILENCE_MS_MAX`).
    pub fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FollowerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts following `options.leader` into `ws` (opened with `NodeRole::Mirror`), on its own
/// thread; `rt` is the runtime the workspace lives in.
pub fn start(
    ws: Workspace,
    rt: tokio::runtime::Handle,
    options: FollowerOptions,
) -> std::io::Result<FollowerHandle> {
    let status = Arc::new(Mutex::new(FollowStatus {
        leader: options.leader.clone(),
        state: FollowState::Connecting,
        leader_head: 0,
        last_contact_ms: 0,
        connects: 0,
        refused_frames: 0,
        last_error: None,
    }));
    let stop = CancellationToken::new();
    let thread = std::thread::Builder::new()
        .name("cairn-follower".into())
        .spawn({
            let status = Arc::clone(&status);
            let stop = stop.clone();
            let options = options.clone();
            move || Session::run_all(ws, rt, options, status, stop)
        })?;
    Ok(FollowerHandle {
        options,
        status,
        stop,
        thread: Some(thread),
    })
}

/// How one connection ended.
enum End {
    /// Asked to stop.
    Stopped,
    /// Try again after the backoff.
    Retry(String),
    /// The leader refused this mirror: try again slowly.
    Refused { code: String, message: String },
    /// Stop following for good.
    Halt(FollowState),
    /// The node followed is a mirror now (it handed off) and names its leader: follow that.
    Redirect(String),
}

struct Session {
    ws: Workspace,
    rt: tokio::runtime::Handle,
    options: FollowerOptions,
    status: Arc<Mutex<FollowStatus>>,
    stop: CancellationToken,
    /// For the stream alone: a stream never ends cleanly, so its connection is never reused.
    stream_agent: ureq::Agent,
    /// For the short calls (acknowledgements, hash lookups), on kept-alive connections.
    agent: ureq::Agent,
    /// Sends acknowledgements on its own thread, so that reading and applying never wait for
    /// the leader's answer to one.
    acker: Acker,
}

impl Session {
    fn run_all(
        ws: Workspace,
        rt: tokio::runtime::Handle,
        options: FollowerOptions,
        status: Arc<Mutex<FollowStatus>>,
        stop: CancellationToken,
    ) {
        let stream_agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout_read(Duration::from_millis(STREAM_SILENCE_MS_MAX))
            .build();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .build();
        let mut options = options;
        // Redirects followed since a stream last opened: nodes that name each other must not
        // make a tight loop.
        let mut hops = 0u32;
        let mut connects = 0u64;
        loop {
            let acker = Acker::start(ws.clone(), agent.clone(), options.clone());
            let session = Session {
                ws: ws.clone(),
                rt: rt.clone(),
                options: options.clone(),
                status: Arc::clone(&status),
                stop: stop.clone(),
                stream_agent: stream_agent.clone(),
                agent: agent.clone(),
                acker,
            };
            let Some(leader) = session.follow_leader() else {
                return;
            };
            drop(session);
            let now = lock(&status).connects;
            hops = if now > connects { 1 } else { hops + 1 };
            connects = now;
            tracing::warn!(
                from = %options.leader,
                to = %leader,
                hops,
                "the node followed is a mirror now; following its leader"
            );
            lock(&status).leader = leader.clone();
            options.leader = leader;
            if hops > 1 {
                let wait =
                    (RECONNECT_BACKOFF_MIN_MS << (hops - 1).min(10)).min(RECONNECT_BACKOFF_MAX_MS);
                let wait = rand::rng().random_range(wait / 2..=wait + wait / 2);
                let until = std::time::Instant::now() + Duration::from_millis(wait);
                while std::time::Instant::now() < until {
                    if stop.is_cancelled() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Follows `self.options.leader` until asked to stop or halted (`None`), or until it names
    /// another leader (`Some`: it handed off).
    fn follow_leader(&self) -> Option<String> {
        let session = self;
        let mut backoff = RECONNECT_BACKOFF_MIN_MS;
        loop {
            let connects = lock(&session.status).connects;
            let end = session.follow_once();
            let wait = match end {
                End::Stopped => return None,
                End::Halt(state) => {
                    tracing::error!(state = ?state, "stopped following the leader");
                    lock(&session.status).state = state;
                    return None;
                }
                End::Redirect(leader) => return Some(leader),
                End::Refused { code, message } => {
                    tracing::warn!(code, "the leader refused this mirror: {message}");
                    let mut s = lock(&session.status);
                    s.state = FollowState::Refused { code, message };
                    RECONNECT_BACKOFF_MAX_MS
                }
                End::Retry(error) => {
                    let mut s = lock(&session.status);
                    if s.connects > connects {
                        // That stream had started: begin the backoff again.
                        backoff = RECONNECT_BACKOFF_MIN_MS;
                    }
                    tracing::info!(error, "the stream from the leader ended; reconnecting");
                    s.last_error = Some(error);
                    s.state = FollowState::Connecting;
                    let wait = backoff;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX_MS);
                    wait
                }
            };
            // Jitter of ±50 %, so that mirrors of one leader do not reconnect in step.
            let wait = rand::rng().random_range(wait / 2..=wait + wait / 2);
            if session.sleep(Duration::from_millis(wait)) {
                return None;
            }
        }
    }

    /// Sleeps up to `d`; `true` when asked to stop meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until {
            if self.stop.is_cancelled() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
        self.stop.is_cancelled()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.options.leader.trim_end_matches('/'))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.options.token)
    }

    /// One connection: hello, then frames until it ends; then every commit it submitted has
    /// landed or failed.
    fn follow_once(&self) -> End {
        if self.stop.is_cancelled() {
            return End::Stopped;
        }
        let mut pipeline = Commits::default();
        let end = self.stream(&mut pipeline);
        // The next connection asks from this node's head, so every commit on its way must have
        // landed (or failed) first; a failed one says why the stream really ended.
        match self.drain(&mut pipeline) {
            Ok(()) => end,
            Err(failed) => failed,
        }
    }

    /// Reads, checks and submits the stream's frames until it ends, leaving commits in
    /// `pipeline` for the caller to drain.
    fn stream(&self, pipeline: &mut Commits) -> End {
        let head = match self.ws.head() {
            Ok(h) => h,
            Err(e) => return End::Retry(format!("read this mirror's head: {e}")),
        };
        let hello = FollowerHello {
            workspace_id: self.ws.id(),
            from: head.offset + 1,
            prev: head.hash,
            protocol: PROTOCOL_VERSION,
            schema: cairn::kernel::SCHEMA_VERSION,
            projection: cairn::kernel::PROJECTION_VERSION,
            name: self.options.name.clone(),
        };
        let mut request = self
            .stream_agent
            .get(&self.url("/v1/replication/stream"))
            .set("authorization", &self.bearer());
        for (k, v) in hello.to_query() {
            request = request.query(k, &v);
        }
        let response = match request.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, response)) => {
                let redirect = response
                    .header(LEADER_HEADER)
                    .filter(|l| l.starts_with("https://") || l.starts_with("http://"))
                    // Never from https to http: the mirror token would travel in clear.
                    .filter(|l| {
                        l.starts_with("https://") || !self.options.leader.starts_with("https://")
                    })
                    .map(|l| l.trim_end_matches('/'))
                    .filter(|l| *l != self.options.leader.trim_end_matches('/'))
                    .map(str::to_owned);
                let (code, message) = error_of(response);
                return if let (true, Some(leader)) = (code == "not_leader", redirect) {
                    End::Redirect(leader)
                } else if code == "diverged" {
                    self.diverged(head.offset, &message)
                } else if is_refusal(&code) {
                    End::Refused { code, message }
                } else {
                    End::Retry(format!("the leader answered {code}: {message}"))
                };
            }
            Err(e) => return End::Retry(format!("connect to the leader: {e}")),
        };
        // How often this leader wants to hear this mirror's offset.
        self.acker
            .set_interval(parse_ack_interval(response.header(ACK_INTERVAL_HEADER)));
        // Whether it marks its head, so that a command can be held until it is whole.
        let marks = response
            .header(HEAD_MARKS_HEADER)
            .is_some_and(|v| v.trim() == "1");
        let mut reader = BufReader::with_capacity(256 * 1024, response.into_reader());
        let mut follower = Follower::new(self.ws.id(), head);
        let kernel = self.ws.store().machine().0.clone();
        let understands = |e: &StoredEntry| kernel.understands(&e.kind, &e.payload);
        // Entries are applied whole commands at a time (see `Assembler`): a reader of this
        // mirror never sees part of a command, as a reader of the leader never does. What is
        // held of a command when the stream ends is dropped, and asked for again.
        let mut held = Assembler::default();
        let mut caught_up = false;
        loop {
            if self.stop.is_cancelled() {
                return self
                    .submit(pipeline, held.take_whole())
                    .err()
                    .unwrap_or(End::Stopped);
            }
            let body = match read_frame(&mut reader) {
                Ok(b) => b,
                Err(e) => {
                    if let Err(end) = self.submit(pipeline, held.take_whole()) {
                        return end;
                    }
                    return End::Retry(format!("read the stream: {e}"));
                }
            };
            let step = match follower.on_frame(&body, &understands) {
                Ok(step) => step,
                Err(bad) => {
                    // The whole commands checked before it still apply; the bad frame never
                    // does, nor the part of a command before it.
                    let flushed = self.submit(pipeline, held.take_whole());
                    let offset = bad.offset().map(|o| o.to_string()).unwrap_or("-".into());
                    tracing::warn!(offset, "refused a frame from the leader: {bad}");
                    lock(&self.status).refused_frames += 1;
                    if let Err(end) = flushed {
                        return end;
                    }
                    return End::Retry(format!("refused a frame at offset {offset}: {bad}"));
                }
            };
            match step {
                Step::Hello => {
                    let mut s = lock(&self.status);
                    s.connects += 1;
                    s.state = FollowState::CatchingUp;
                    s.last_contact_ms = now_ms();
                }
                Step::Apply(entry) => {
                    let offset = entry.entry().offset;
                    if let Held::Split { from } = held.push(entry) {
                        tracing::warn!(
                            from,
                            to = offset,
                            "a command larger than {HELD_COMMAND_BYTES_MAX} bytes is applied \
                             in parts: readers of this mirror may see part of it"
                        );
                    }
                    // Live, whole commands go as soon as nothing more has arrived, for a short
                    // lag. Before the caught-up marker the leader is sending its backlog without
                    // pause, so the batch fills up instead: fewer, larger commits (each one an
                    // fsync), while the commits before it are in flight.
                    let more_ready = !caught_up || !reader.buffer().is_empty();
                    if !more_ready && !marks {
                        // A leader of an earlier build: no mark will say the command is whole.
                        held.release();
                    }
                    if held.whole_len() > 0
                        && (!more_ready
                            || held.whole_len() >= APPLY_BATCH_ENTRIES_MAX
                            || held.whole_bytes() >= APPLY_BATCH_BYTES_MAX)
                    {
                        if let Err(end) = self.submit(pipeline, held.take_whole()) {
                            return end;
                        }
                        // Live, each commit is waited for before reading on: what arrives
                        // meanwhile forms the next batch, so batches grow with the leader's
                        // rate instead of splitting into more commits (each an fsync, on a disk
                        // the leader may share).
                        if caught_up {
                            if let Err(end) = self.drain(pipeline) {
                                return end;
                            }
                        }
                    }
                }
                Step::LeaderHead {
                    offset,
                    caught_up: marker,
                    ..
                } => {
                    if marks {
                        held.head_at(offset);
                    } else {
                        // A leader of an earlier build: its followers applied what they had
                        // at every heartbeat.
                        held.release();
                    }
                    if let Err(end) = self.submit(pipeline, held.take_whole()) {
                        return end;
                    }
                    caught_up |= marker;
                    // Live (from the marker on), every commit is waited for, and acknowledged
                    // once landed.
                    if caught_up {
                        if let Err(end) = self.drain(pipeline) {
                            return end;
                        }
                    }
                    self.ack();
                    let mut s = lock(&self.status);
                    s.leader_head = s.leader_head.max(offset);
                    s.last_contact_ms = now_ms();
                    if caught_up {
                        s.state = FollowState::Following;
                    }
                }
                Step::Unsupported {
                    offset,
                    command,
                    reason,
                } => {
                    // What is held is whole unless this entry continues its command; that
                    // command is then not applied at all.
                    held.next_command(&command);
                    let served = held.first_open().unwrap_or(offset) - 1;
                    if let Err(end) = self.submit(pipeline, held.take_whole()) {
                        return end;
                    }
                    return End::Halt(FollowState::Stopped {
                        message: format!(
                            "the leader's entry {offset} cannot be applied by this binary \
                             ({reason}): upgrade mirrors first, then the leader; reads are \
                             served at offset {served}"
                        ),
                    });
                }
                Step::LeaderBehind {
                    leader_head,
                    mirror_head,
                } => {
                    return End::Refused {
                        code: "follower_ahead".into(),
                        message: format!(
                            "the mirror is ahead of its leader: the mirror holds offset \
                             {mirror_head}, the leader's head is {leader_head}"
                        ),
                    }
                }
            }
        }
    }

    /// Submits the batch as one commit, after waiting for the oldest commit in flight if
    /// there are `APPLY_BATCHES_IN_FLIGHT_MAX`. A commit found failed ends the stream.
    fn submit(&self, pipeline: &mut Commits, batch: Vec<VerifiedEntry>) -> Result<(), End> {
        if batch.is_empty() {
            return Ok(());
        }
        if pipeline.make_room().map_err(|e| self.apply_failed(&e))? > 0 {
            self.ack();
        }
        match self.ws.submit_replicated(batch) {
            Ok(ticket) => {
                pipeline.push(ticket);
                Ok(())
            }
            Err(e) => {
                self.drain(pipeline)?;
                Err(self.apply_failed(&e.to_string()))
            }
        }
    }

    /// Waits for every commit in flight; the first failure, once all have answered.
    fn drain(&self, pipeline: &mut Commits) -> Result<(), End> {
        if pipeline.drain().map_err(|e| self.apply_failed(&e))? > 0 {
            self.ack();
        }
        Ok(())
    }

    fn apply_failed(&self, error: &str) -> End {
        // A writer that stopped (an entry failed to apply) takes nothing more: retrying would
        // only reconnect forever.
        if matches!(self.ws.health(), cairn::store::WriterHealth::Stopped { .. }) {
            return End::Halt(FollowState::Stopped {
                message: format!(
                    "this mirror's writer stopped applying the leader's entries ({error}); \
                     reads are served at offset {}; reopen it (restart `cairn mirror`)",
                    self.ws.applied()
                ),
            });
        }
        End::Retry(format!("apply the leader's entries: {error}"))
    }

    /// Has the acknowledger tell the leader what this mirror has durably applied (it sends
    /// nothing when the leader has that offset already, and again what did not get through).
    fn ack(&self) {
        self.acker.wake();
    }

    /// Finds the first offset where this mirror's log and the leader's differ (they differ
    /// at `at`), and stops following.
    fn diverged(&self, at: u64, leader_says: &str) -> End {
        let found = first_difference(0, at, |offset| -> Result<bool, String> {
            Ok(self.leader_hash(offset)? == self.own_hash(offset)?)
        });
        let offset = match found {
            Ok(o) => o,
            Err(e) => return End::Retry(format!("find where the logs diverged: {e}")),
        };
        End::Halt(FollowState::Diverged {
            offset,
            message: format!(
                "this mirror's log differs from its leader's from offset {offset} on ({leader_says}). \
                 A mirror never undoes an applied entry: re-provision it from a backup of the \
                 leader (stop it, move its data directory away, start `cairn mirror` on an empty \
                 one)"
            ),
        })
    }

    fn leader_hash(&self, offset: u64) -> Result<Option<Hash>, String> {
        let answer = self
            .agent
            .get(&self.url("/v1/replication/hash"))
            .set("authorization", &self.bearer())
            .query("offset", &offset.to_string())
            .call()
            .map_err(|e| format!("ask the leader for the hash at {offset}: {e}"))?;
        let v: serde_json::Value = answer
            .into_json()
            .map_err(|e| format!("the leader's hash answer: {e}"))?;
        Ok(v["hash"].as_str().and_then(parse_hash))
    }

    fn own_hash(&self, offset: u64) -> Result<Option<Hash>, String> {
        let entries = self
            .rt
            .block_on(self.ws.read_log(offset, 1))
            .map_err(|e| format!("read this mirror's entry {offset}: {e}"))?;
        Ok(entries.first().map(|e| e.hash))
    }
}

/// A commit submitted to the store: the store's ticket, or a test's stand-in.
trait InFlight {
    /// Whether `wait` would return at once.
    fn is_answered(&self) -> bool;
    /// Waits for the commit; why it failed.
    fn wait(self) -> Result<(), String>;
}

type Ticket = cairn::store::Ticket<cairn::store::Committed, cairn::store::StoreError>;

impl InFlight for Ticket {
    fn is_answered(&self) -> bool {
        Ticket::is_answered(self)
    }

    fn wait(self) -> Result<(), String> {
        Ticket::wait(self).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The store's commits of one stream.
type Commits = Pipeline<Ticket>;

/// Commits of checked entries submitted and not yet known to have landed, oldest first (at
/// most `limit`; the store answers them in order). After a failure every later one is waited
/// for too before the failure is reported: the store refuses them (they continued the failed
/// one), and nothing may still be landing when the follower reconnects from its head.
struct Pipeline<T> {
    in_flight: std::collections::VecDeque<T>,
    limit: usize,
}

impl<T> Default for Pipeline<T> {
    fn default() -> Self {
        Self {
            in_flight: std::collections::VecDeque::new(),
            limit: APPLY_BATCHES_IN_FLIGHT_MAX,
        }
    }
}

impl<T: InFlight> Pipeline<T> {
    /// Makes room for one more commit: takes the answers already there (a failure is noticed
    /// as early as possible), then waits for the oldest while the pipeline is full.
    /// Returns how many landed.
    fn make_room(&mut self) -> Result<usize, String> {
        let before = self.in_flight.len();
        while self.in_flight.front().is_some_and(T::is_answered) {
            self.land_oldest()?;
        }
        while self.in_flight.len() >= self.limit {
            self.land_oldest()?;
        }
        Ok(before - self.in_flight.len())
    }

    fn push(&mut self, commit: T) {
        assert!(
            self.in_flight.len() < self.limit,
            "make_room ran before every push"
        );
        self.in_flight.push_back(commit);
    }

    /// Waits for every commit; the first failure, once all have answered. Returns how many
    /// landed.
    fn drain(&mut self) -> Result<usize, String> {
        let before = self.in_flight.len();
        while !self.in_flight.is_empty() {
            self.land_oldest()?;
        }
        Ok(before)
    }

    fn land_oldest(&mut self) -> Result<(), String> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(());
        };
        oldest.wait().inspect_err(|_| {
            for later in self.in_flight.drain(..) {
                let _ = later.wait();
            }
        })
    }
}

/// The acknowledger: a thread that tells the leader the mirror's head (offset and hash) whenever
/// it is woken and the head moved past what the leader last took, paced by an [`AckPacer`] at
/// the interval the leader asked for ([`ACK_INTERVAL_HEADER`]): at most one acknowledgement
/// per interval, for the latest head, and the last head of a burst always goes. With no
/// interval (a leader whose writes wait for mirrors, or an older leader) every commit is
/// acknowledged, and a burst of commits while one acknowledgement is in flight costs one more.
struct Acker {
    shared: Arc<(Mutex<AckerState>, std::sync::Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct AckerState {
    woken: bool,
    stop: bool,
    /// The interval the current stream's leader asked for, until the thread takes it.
    interval: Option<Duration>,
}

impl Acker {
    fn start(ws: Workspace, agent: ureq::Agent, options: FollowerOptions) -> Acker {
        let shared = Arc::new((Mutex::new(AckerState::default()), std::sync::Condvar::new()));
        let thread = std::thread::Builder::new()
            .name("cairn-follower-ack".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || Acker::run(&shared, &ws, &agent, &options)
            })
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the acknowledging thread; the leader will not see this mirror's offset");
        }
        Acker { shared, thread }
    }

    fn wake(&self) {
        let (state, cv) = &*self.shared;
        lock(state).woken = true;
        cv.notify_one();
    }

    /// Keeps to `interval` from now on (a stream's leader said it).
    fn set_interval(&self, interval: Duration) {
        let (state, cv) = &*self.shared;
        lock(state).interval = Some(interval);
        cv.notify_one();
    }

    fn run(
        shared: &(Mutex<AckerState>, std::sync::Condvar),
        ws: &Workspace,
        agent: &ureq::Agent,
        options: &FollowerOptions,
    ) {
        let (state, cv) = shared;
        let mut pacer = AckPacer::new(Duration::ZERO);
        // When the pacer said an acknowledgement is due (decided again then).
        let mut due: Option<std::time::Instant> = None;
        // After an acknowledgement got through, decide again at once: the head may have moved
        // while it was out.
        let mut again = false;
        loop {
            {
                let mut s = lock(state);
                // Sleeps until woken (a commit landed, the leader was heard), given a new
                // interval, stopped, or an acknowledgement is due.
                while !again && !s.stop && s.interval.is_none() && !s.woken {
                    let now = std::time::Instant::now();
                    s = match due {
                        None => cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                        Some(at) if at > now => {
                            cv.wait_timeout(s, at - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        Some(_) => break,
                    };
                }
                again = false;
                if s.stop {
                    return;
                }
                if let Some(interval) = s.interval.take() {
                    pacer.set_interval(interval);
                }
                if std::mem::take(&mut s.woken) {
                    pacer.woken();
                }
            }
            let head = match ws.head() {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the head to acknowledge failed");
                    due = None;
                    continue;
                }
            };
            let now = std::time::Instant::now();
            due = None;
            match pacer.step(head.offset, now) {
                AckStep::Idle => continue,
                AckStep::WaitUntil(at) => {
                    due = Some(at);
                    continue;
                }
                AckStep::Send(_) => {}
            }
            let answer = agent
                .post(&format!(
                    "{}/v1/replication/ack",
                    options.leader.trim_end_matches('/')
                ))
                .set("authorization", &format!("Bearer {}", options.token))
                .query("name", &options.name)
                .query("applied", &head.offset.to_string())
                .query("hash", &head.hash.to_string())
                .call();
            // A failed one goes again when next woken (the next commit or heartbeat).
            if let Err(e) = &answer {
                tracing::debug!(error = %e, "acknowledging to the leader failed");
            }
            pacer.sent(head.offset, now, answer.is_ok());
            again = answer.is_ok();
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        let (state, cv) = &*self.shared;
        lock(state).stop = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Codes with which a leader refuses a follower (see `protocol::Refusal::code`).
fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "wrong_workspace"
            | "protocol"
            | "upgrade_mirror"
            | "follower_ahead"
            | "forbidden"
            | "unauthorized"
    )
}

/// The `{error: {code, message}}` of an error answer.
fn error_of(response: ureq::Response) -> (String, String) {
    let status = response.status();
    match response.into_json::<serde_json::Value>() {
        Ok(v) => (
            v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
            v["error"]["message"].as_str().unwrap_or("").to_string(),
        ),
        Err(_) => ("unknown".into(), format!("HTTP {status}")),
    }
}

/// Reads one length-prefixed frame body; a length over `FRAME_BODY_BYTES_MAX` is refused
/// before anything is allocated.
fn read_frame(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BODY_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame declares {len} bytes, over the limit of {FRAME_BODY_BYTES_MAX}"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A commit whose answer is set by the test; waiting for it is recorded.
    struct Fake {
        id: u32,
        answer: Result<(), String>,
        answered: Rc<RefCell<Vec<u32>>>,
        waited: Rc<RefCell<Vec<u32>>>,
    }

    impl InFlight for Fake {
        fn is_answered(&self) -> bool {
            self.answered.borrow().contains(&self.id)
        }

        fn wait(self) -> Result<(), String> {
            self.waited.borrow_mut().push(self.id);
            self.answer
        }
    }

    #[derive(Default)]
    struct Fakes {
        answered: Rc<RefCell<Vec<u32>>>,
        waited: Rc<RefCell<Vec<u32>>>,
    }

    impl Fakes {
        fn commit(&self, id: u32, answer: Result<(), &str>) -> Fake {
            Fake {
                id,
                answer: answer.map_err(str::to_string),
                answered: Rc::clone(&self.answered),
                waited: Rc::clone(&self.waited),
            }
        }

        fn waited(&self) -> Vec<u32> {
            self.waited.borrow().clone()
        }
    }

    fn submit(p: &mut Pipeline<Fake>, commit: Fake) -> Result<(), String> {
        p.make_room()?;
        p.push(commit);
        Ok(())
    }

    #[test]
    fn at_most_the_limit_of_commits_is_in_flight_and_they_land_in_order() {
        let f = Fakes::default();
        let mut p = Pipeline::<Fake>::default();
        assert_eq!(p.limit, APPLY_BATCHES_IN_FLIGHT_MAX);
        for id in 1..=5 {
            submit(&mut p, f.commit(id, Ok(()))).unwrap();
            assert!(p.in_flight.len() <= APPLY_BATCHES_IN_FLIGHT_MAX);
        }
        let submitted = 5 - APPLY_BATCHES_IN_FLIGHT_MAX as u32;
        assert_eq!(
            f.waited(),
            (1..=submitted).collect::<Vec<_>>(),
            "oldest first"
        );
        p.drain().unwrap();
        assert_eq!(f.waited(), (1..=5).collect::<Vec<_>>());
        assert!(p.in_flight.is_empty());
    }

    #[test]
    fn an_answered_commit_is_taken_before_the_next_one_is_submitted() {
        let f = Fakes::default();
        let mut p = Pipeline::<Fake>::default();
        submit(&mut p, f.commit(1, Err("disk full"))).unwrap();
        f.answered.borrow_mut().push(1);
        // The failure is noticed at once, though the pipeline had room: nothing more is
        // submitted after it.
        assert_eq!(
            submit(&mut p, f.commit(2, Ok(()))).unwrap_err(),
            "disk full"
        );
        assert_eq!(f.waited(), [1]);
        assert!(p.in_flight.is_empty());
    }

    #[test]
    fn a_failed_commit_mid_pipeline_is_reported_after_every_later_one_answered() {
        let f = Fakes::default();
        let mut p = Pipeline::<Fake> {
            limit: 3,
            ..Pipeline::default()
        };
        submit(&mut p, f.commit(1, Ok(()))).unwrap();
        submit(&mut p, f.commit(2, Err("write failed"))).unwrap();
        submit(&mut p, f.commit(3, Err("does not continue the log"))).unwrap();
        f.answered.borrow_mut().extend([1, 2]);
        // Making room takes 1 (fine), then finds 2 failed: 3 is waited for too, so that
        // nothing is still landing when the follower reconnects from its head, and 4 is never
        // submitted.
        assert_eq!(
            submit(&mut p, f.commit(4, Ok(()))).unwrap_err(),
            "write failed"
        );
        assert_eq!(f.waited(), [1, 2, 3]);
        assert!(p.in_flight.is_empty());
    }

    #[test]
    fn draining_waits_for_every_commit_and_reports_the_first_failure() {
        let f = Fakes::default();
        let mut p = Pipeline::<Fake>::default();
        submit(&mut p, f.commit(1, Err("first"))).unwrap();
        submit(&mut p, f.commit(2, Err("second"))).unwrap();
        assert_eq!(p.drain().unwrap_err(), "first");
        assert_eq!(f.waited(), [1, 2]);
        assert!(p.in_flight.is_empty());
        p.drain().unwrap();
    }

    #[test]
    fn frames_are_read_whole_and_oversized_lengths_are_refused() {
        let mut bytes = Vec::new();
        cairn_log::frame::write_frame(b"abc", &mut bytes);
        cairn_log::frame::write_frame(b"", &mut bytes);
        let mut r = std::io::Cursor::new(bytes.clone());
        assert_eq!(read_frame(&mut r).unwrap(), b"abc");
        assert_eq!(read_frame(&mut r).unwrap(), b"");
        assert!(read_frame(&mut r).is_err());
        // Cut inside a frame.
        let mut r = std::io::Cursor::new(bytes[..5].to_vec());
        assert_eq!(
            read_frame(&mut r).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        let mut r = std::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(read_frame(&mut r)
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
    }
}
