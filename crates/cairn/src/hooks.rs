//! Running a package hook as a child process: own process group, bounded output, timeout,
//! cancellation, and a guard that kills it when the process that ran it dies.
//!
//! Every hook runs in a new process group so that everything it starts can be signalled at
//! once. The lifetime rules:
//! - **When the hook's main process ends, for whatever reason, every process left in its group
//!   is killed.** A hook cannot leave background processes behind (a hook that wants a
//!   long-running service declares a daemon instead).
//! - **A hook never outlives the process that ran it**, even one killed by SIGKILL. The group is
//!   led by a *guard*: a tiny `sh` started first (the group id is its pid), which ignores
//!   `SIGTERM` and blocks reading a pipe whose write end only this process holds
//!   (close-on-exec, so no hook inherits it). When this process dies, the kernel closes that
//!   end, the guard's read returns, and it kills its whole group, the hook with it. The hook
//!   itself is this process's child, so its exit status is its own.
//! - **No hook of a task runs twice at the same time**: every hook carries
//!   `CAIRN_HOOK_RUN=<workspace>/<change>/<task>` in its environment, and before a task's
//!   hook runs again (a later attempt, after a crash) every process still carrying that value
//!   is killed and waited for ([`kill_leftovers`]). That also catches a process that left the
//!   group (`setsid`) while keeping the environment.
//!
//! On timeout or cancellation the group gets `SIGTERM`, then `SIGKILL` after
//! [`HookRun::kill_grace`]. Dropping the future returned by [`run_hook`] kills the group with
//! `SIGKILL`, so a cancelled task or a runtime shut down mid-hook leaves no orphans.
//!
//! The group id is only signalled while the guard (whose pid it is) is known not to have been
//! reaped: an unreaped pid cannot be reused, so the signal can never hit an unrelated process
//! group that happens to reuse the number. The guard is reaped last.
//!
//! Hooks get a clean environment: `PATH`, `HOME` and `LANG` (this process's values, or
//! defaults), and the `CAIRN_*` variables of the run; nothing else of the server's
//! environment reaches them.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cairn_kernel::manifest::{HookExec, HookSpec};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Bytes of stdout, and separately of stderr, that a hook report keeps (the last ones written).
pub const HOOK_OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// Default time between `SIGTERM` and `SIGKILL` when a hook is stopped.
pub const HOOK_KILL_GRACE_MS: u64 = 2000;
/// How long output is still read after the hook's process group is gone. Only a process that left
/// the group (`setsid`) while keeping the pipe open can make reading last this long.
pub const HOOK_OUTPUT_DRAIN_MS: u64 = 250;

/// How long [`kill_leftovers`] waits for an earlier attempt's processes to die.
pub const LEFTOVER_KILL_WAIT_MS: u64 = 5000;

/// Size of one read from a hook's stdout or stderr pipe.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// The guard that leads a hook's process group: it ignores the signals a timeout or
/// cancellation sends the group (so it stays until the final `SIGKILL`), and blocks reading its
/// stdin, the read end of the lifeline pipe. The read returns when the write end, held only by
/// the process running the hook, is closed: that process has died (or dropped the run), and
/// the guard kills its group.
const GUARD_SCRIPT: &str = "trap '' TERM INT HUP QUIT; read -r line; kill -9 0";

/// The environment variable naming a hook run's task, for [`kill_leftovers`].
pub const HOOK_RUN_ENV: &str = "CAIRN_HOOK_RUN";

/// `PATH` for hooks when this process has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to run one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookRun {
    /// What to execute: `sh -c` for [`HookExec::Shell`], the argv as is for [`HookExec::Argv`].
    pub exec: HookExec,
    /// Time after which the hook is stopped and reported as [`HookOutcome::TimedOut`].
    pub timeout: Duration,
    /// The run's variables (`CAIRN_WORKSPACE`, `CAIRN_PACKAGE`, ...), added to the clean base
    /// environment (`PATH`, `HOME`, `LANG`); nothing else is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory; the caller's when `None`.
    pub cwd: Option<PathBuf>,
    /// Time between `SIGTERM` and `SIGKILL` when the hook is stopped.
    pub kill_grace: Duration,
}

impl HookRun {
    /// A run of `exec` with `timeout`, no extra environment, the caller's working directory and
    /// the default kill grace ([`HOOK_KILL_GRACE_MS`]).
    pub fn new(exec: HookExec, timeout: Duration) -> HookRun {
        HookRun {
            exec,
            timeout,
            env: Vec::new(),
            cwd: None,
            kill_grace: Duration::from_millis(HOOK_KILL_GRACE_MS),
        }
    }

    /// A run of a manifest's hook, with the manifest's timeout.
    pub fn from_spec(spec: &HookSpec) -> HookRun {
        HookRun::new(spec.exec.clone(), Duration::from_secs(spec.timeout_s))
    }
}

/// How a hook run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// The hook exited with status 0.
    Succeeded,
    /// The hook exited with another status or was killed by a signal it did not get from cairn.
    Failed,
    /// The hook ran longer than its timeout and was stopped.
    TimedOut,
    /// The cancellation token fired and the hook was stopped.
    Cancelled,
    /// The hook could not be started (missing program, empty argv, bad working directory, ...).
    SpawnFailed(String),
}

/// What is recorded about one hook run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookReport {
    /// How the run ended.
    pub outcome: HookOutcome,
    /// The main process's exit code, if it exited normally.
    pub exit: Option<i32>,
    /// The signal that killed the main process, if one did.
    pub signal: Option<i32>,
    /// Wall time from spawn to reaping, in milliseconds.
    pub duration_ms: u64,
    /// The last [`HOOK_OUTPUT_BYTES_MAX`] bytes (at most) of stdout, decoded lossily as UTF-8.
    pub stdout_tail: String,
    /// The last [`HOOK_OUTPUT_BYTES_MAX`] bytes (at most) of stderr, decoded lossily as UTF-8.
    pub stderr_tail: String,
    /// Whether stdout or stderr had more output than was kept.
    pub truncated: bool,
}

/// Runs a hook to completion, timeout or cancellation, and reports how it ended.
///
/// Never panics on the hook's behalf: a program that cannot be started is reported as
/// [`HookOutcome::SpawnFailed`]. When `cancel` fires or the timeout passes, the hook's process
/// group is stopped (`SIGTERM`, then `SIGKILL` after the grace) and the hook is reaped before this
/// returns. Dropping the returned future kills the process group.
pub async fn run_hook(run: &HookRun, cancel: &CancellationToken) -> HookReport {
    run_grouped(run, cancel, None).await
}

/// The output of a running daemon, readable while it runs: the last
/// [`HOOK_OUTPUT_BYTES_MAX`] bytes of stdout and stderr interleaved, and its pid.
#[derive(Debug, Default)]
pub struct LiveOutput {
    tail: std::sync::Mutex<Tail>,
    pid: std::sync::atomic::AtomicI32,
}

impl LiveOutput {
    /// The kept output, decoded lossily as UTF-8.
    pub fn text(&self) -> String {
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .into_string()
    }

    /// The pid of the main process of the run in progress (0 when none runs).
    pub fn pid(&self) -> i32 {
        self.pid.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn push(&self, chunk: &[u8]) {
        self.tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(chunk);
    }

    fn set_pid(&self, pid: i32) {
        self.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs a daemon's process as [`run_hook`] runs a hook (own process group led by the guard,
/// clean environment, stopped by `cancel` with `SIGTERM` then `SIGKILL`), with its output
/// going to `live` as it comes (the report's tails stay empty) and its pid in `live` while it
/// runs.
pub(crate) async fn run_daemon(
    run: &HookRun,
    cancel: &CancellationToken,
    live: &LiveOutput,
) -> HookReport {
    let report = run_grouped(run, cancel, Some(live)).await;
    live.set_pid(0);
    report
}

async fn run_grouped(
    run: &HookRun,
    cancel: &CancellationToken,
    live: Option<&LiveOutput>,
) -> HookReport {
    let started = Instant::now();
    let (lifeline, guard) = match spawn_guard() {
        Ok(spawned) => spawned,
        Err(error) => {
            return HookReport::spawn_failed(
                format!("start the guard of the hook's process group: {error}"),
                started,
            )
        }
    };
    let guard_pid = pid_of(&guard);
    let (mut command, program) = match command_for(run, guard_pid) {
        Ok(built) => built,
        Err(message) => {
            kill_guard(guard).await;
            return HookReport::spawn_failed(message, started);
        }
    };
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            kill_guard(guard).await;
            return HookReport::spawn_failed(
                format!("spawn hook program {program:?}: {error}"),
                started,
            );
        }
    };
    let mut hook = GroupedChild::new(child, guard, lifeline);
    tracing::debug!(pid = hook.pid, pgid = hook.pgid, program = %program, "hook started");
    if let Some(live) = live {
        live.set_pid(hook.pid);
    }

    let exited = match watch_exit(hook.pid) {
        Ok(exited) => exited,
        Err(error) => {
            hook.signal_group(libc::SIGKILL);
            // The result does not matter: the hook is reported as not started either way.
            let _ = hook.reap().await;
            return HookReport::spawn_failed(
                format!("start the exit watcher for hook program {program:?}: {error}"),
                started,
            );
        }
    };

    let stdout = hook.child.stdout.take();
    let stderr = hook.child.stderr.take();
    let mut stdout_tail = Tail::default();
    let mut stderr_tail = Tail::default();
    let (ending, status) = {
        let readers = async {
            match live {
                Some(live) => tokio::join!(
                    read_into(stdout, |chunk| live.push(chunk)),
                    read_into(stderr, |chunk| live.push(chunk))
                ),
                None => tokio::join!(
                    read_into(stdout, |chunk| stdout_tail.push(chunk)),
                    read_into(stderr, |chunk| stderr_tail.push(chunk))
                ),
            }
        };
        let supervise = supervise(&mut hook, exited, run, cancel);
        tokio::pin!(readers, supervise);
        let mut readers_done = false;
        let result = loop {
            tokio::select! {
                result = &mut supervise => break result,
                _ = &mut readers, if !readers_done => readers_done = true,
            }
        };
        if !readers_done {
            // The group is dead, so the pipes are at EOF unless a process that left the group
            // still holds them; read what is buffered, but do not wait for such a process.
            let drain = Duration::from_millis(HOOK_OUTPUT_DRAIN_MS);
            let _ = tokio::time::timeout(drain, &mut readers).await;
        }
        result
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    let (exit, signal, exited_ok) = match &status {
        Ok(status) => (status.code(), status.signal(), status.success()),
        Err(error) => {
            tracing::error!(pid = hook.pid, %error, "waiting for hook failed");
            (None, None, false)
        }
    };
    let outcome = match ending {
        Ending::Exited if exited_ok => HookOutcome::Succeeded,
        Ending::Exited => HookOutcome::Failed,
        Ending::TimedOut => HookOutcome::TimedOut,
        Ending::Cancelled => HookOutcome::Cancelled,
    };
    tracing::debug!(
        pid = hook.pid,
        ?outcome,
        ?exit,
        ?signal,
        duration_ms,
        "hook finished"
    );
    let truncated = stdout_tail.truncated() || stderr_tail.truncated();
    HookReport {
        outcome,
        exit,
        signal,
        duration_ms,
        stdout_tail: stdout_tail.into_string(),
        stderr_tail: stderr_tail.into_string(),
        truncated,
    }
}

impl HookReport {
    fn spawn_failed(message: String, started: Instant) -> HookReport {
        HookReport {
            outcome: HookOutcome::SpawnFailed(message),
            exit: None,
            signal: None,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            truncated: false,
        }
    }
}

/// Starts the guard of a new process group (see the module doc); returns the lifeline's write
/// end, which must live exactly as long as the hook may run.
fn spawn_guard() -> io::Result<(std::io::PipeWriter, Child)> {
    // Both ends are close-on-exec: only the guard gets the read end (as its stdin), and no
    // child of this process inherits the write end.
    let (reader, writer) = std::io::pipe()?;
    let guard = Command::new("/bin/sh")
        .arg("-c")
        .arg(GUARD_SCRIPT)
        .env_clear()
        .env("PATH", base_path())
        .process_group(0)
        .stdin(Stdio::from(reader))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok((writer, guard))
}

/// Kills and reaps a guard whose hook never started.
async fn kill_guard(mut guard: Child) {
    let pgid = pid_of(&guard);
    // SAFETY: killpg has no memory-safety preconditions; the group is the unreaped guard's.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let _ = guard.wait().await;
}

fn pid_of(child: &Child) -> libc::pid_t {
    let pid = child
        .id()
        .expect("a child that has not been awaited yet still has its pid");
    libc::pid_t::try_from(pid).expect("a pid from the kernel fits in pid_t")
}

fn base_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned())
}

/// Builds the command for a hook (in the guard's process group `pgid`) and names its program
/// for messages.
fn command_for(run: &HookRun, pgid: libc::pid_t) -> Result<(Command, String), String> {
    let (mut command, program) = match &run.exec {
        HookExec::Shell(script) => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(script);
            (command, "/bin/sh".to_owned())
        }
        HookExec::Argv(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err("hook command is an empty argv".to_owned());
            };
            let mut command = Command::new(program);
            command.args(args);
            (command, program.clone())
        }
    };
    command.env_clear().env("PATH", base_path());
    for name in ["HOME", "LANG"] {
        if let Ok(value) = std::env::var(name) {
            command.env(name, value);
        }
    }
    command
        .process_group(pgid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(run.env.iter().map(|(key, value)| (key, value)))
        .kill_on_drop(true);
    if let Some(cwd) = &run.cwd {
        command.current_dir(cwd);
    }
    Ok((command, program))
}

/// Why supervision stopped waiting for the hook.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Exited,
    TimedOut,
    Cancelled,
}

/// Waits for the hook's main process to end (stopping it on timeout or cancellation), kills what
/// is left of its group, and reaps it.
async fn supervise(
    hook: &mut GroupedChild,
    mut exited: oneshot::Receiver<io::Result<()>>,
    run: &HookRun,
    cancel: &CancellationToken,
) -> (Ending, io::Result<ExitStatus>) {
    let ending = tokio::select! {
        biased;
        watched = &mut exited => {
            note_watch_result(hook.pid, watched);
            Ending::Exited
        }
        () = tokio::time::sleep(run.timeout) => Ending::TimedOut,
        () = cancel.cancelled() => Ending::Cancelled,
    };
    if !matches!(ending, Ending::Exited) {
        tracing::info!(
            pgid = hook.pgid,
            ?ending,
            "stopping hook: SIGTERM to its process group"
        );
        hook.signal_group(libc::SIGTERM);
        match tokio::time::timeout(run.kill_grace, &mut exited).await {
            Ok(watched) => note_watch_result(hook.pid, watched),
            Err(_elapsed) => {
                tracing::warn!(pgid = hook.pgid, "hook outlived its kill grace: SIGKILL");
                hook.signal_group(libc::SIGKILL);
                note_watch_result(hook.pid, exited.await);
            }
        }
    }
    // The main process has ended: kill whatever it left behind (the guard, unreaped, still
    // holds the group id), then reap it.
    hook.signal_group(libc::SIGKILL);
    let status = hook.reap().await;
    (ending, status)
}

/// Logs a failed exit watch. Supervision then goes on as if the hook had exited: the group is
/// killed and the child reaped, so a broken watcher can cut a hook short but never hang it.
fn note_watch_result(pid: libc::pid_t, watched: Result<io::Result<()>, oneshot::error::RecvError>) {
    match watched {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(pid, %error, "waiting for the hook to exit failed; killing its group")
        }
        Err(_) => tracing::error!(pid, "the hook's exit watcher stopped; killing its group"),
    }
}

/// Starts a thread that waits, without reaping, until process `pid` has exited.
fn watch_exit(pid: libc::pid_t) -> io::Result<oneshot::Receiver<io::Result<()>>> {
    let (sender, receiver) = oneshot::channel();
    std::thread::Builder::new()
        .name("cairn-hook-wait".to_owned())
        .spawn(move || {
            // The receiver is gone when run_hook was dropped; nobody needs the answer then.
            let _ = sender.send(wait_exited_without_reaping(pid));
        })?;
    Ok(receiver)
}

/// Blocks until child `pid` has exited, leaving it a zombie so that its pid (and so its process
/// group id) cannot be reused until it is reaped.
fn wait_exited_without_reaping(pid: libc::pid_t) -> io::Result<()> {
    let id = libc::id_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: siginfo_t is a plain C struct for which all-zero bytes are a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A spawned hook and the guard that leads its process group; the group is killed when this
/// is dropped, unless the guard was reaped.
struct GroupedChild {
    child: Child,
    /// The hook's main process.
    pid: libc::pid_t,
    guard: Child,
    /// The guard's pid, which is the group id.
    pgid: libc::pid_t,
    /// Held while the hook may run: closing it makes the guard kill the group.
    lifeline: Option<std::io::PipeWriter>,
    guard_reaped: bool,
}

impl GroupedChild {
    fn new(child: Child, guard: Child, lifeline: std::io::PipeWriter) -> GroupedChild {
        GroupedChild {
            pid: pid_of(&child),
            pgid: pid_of(&guard),
            child,
            guard,
            lifeline: Some(lifeline),
            guard_reaped: false,
        }
    }

    /// Sends `signal` to every process in the hook's group. A no-op once the guard is reaped,
    /// when its pid may already belong to someone else.
    fn signal_group(&self, signal: libc::c_int) {
        if self.guard_reaped {
            return;
        }
        // SAFETY: killpg has no memory-safety preconditions. The group id is the pid of our
        // unreaped guard, so it cannot name another process group.
        let rc = unsafe { libc::killpg(self.pgid, signal) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            // ESRCH: the whole group is already gone.
            if error.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(pgid = self.pgid, signal, %error, "signalling hook process group failed");
            }
        }
    }

    /// Waits for the main process and reaps it, then the guard (the group has been killed by
    /// now, the guard with it).
    async fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        self.signal_group(libc::SIGKILL);
        self.lifeline = None;
        if let Err(error) = self.guard.wait().await {
            tracing::warn!(pgid = self.pgid, %error, "reaping a hook's guard failed");
        }
        // Even on error: after a failed wait the pid may have been reaped by someone else, and
        // signalling a pid that may be reused is worse than leaving a process behind.
        self.guard_reaped = true;
        status
    }
}

impl Drop for GroupedChild {
    fn drop(&mut self) {
        // Runs before the children are dropped (and before tokio's kill_on_drop), while the
        // guard is still unreaped.
        self.signal_group(libc::SIGKILL);
    }
}

/// Kills every process whose environment carries `CAIRN_HOOK_RUN=<run>` (an earlier attempt of
/// the same task that outlived its runner: a process that left its group, or one whose guard
/// had not acted yet) and waits, for at most [`LEFTOVER_KILL_WAIT_MS`], until none is left.
/// Returns the pids killed, or an error naming those that would not die. Linux only: where
/// there is no `/proc`, nothing is found.
pub async fn kill_leftovers(run: &str) -> Result<Vec<libc::pid_t>, String> {
    let wanted = format!("{HOOK_RUN_ENV}={run}");
    let deadline = Instant::now() + Duration::from_millis(LEFTOVER_KILL_WAIT_MS);
    let mut killed = Vec::new();
    loop {
        let found = tokio::task::spawn_blocking({
            let wanted = wanted.clone();
            move || processes_with_env(&wanted)
        })
        .await
        .unwrap_or_default();
        if found.is_empty() {
            return Ok(killed);
        }
        for pid in &found {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid was just seen
            // carrying this run's marker (a pid is not reused within milliseconds).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            if !killed.contains(pid) {
                tracing::warn!(
                    pid,
                    run,
                    "killed a process left by an earlier attempt of this hook"
                );
                killed.push(*pid);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "processes of an earlier attempt of this hook would not die: pids {found:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Live processes (not zombies) whose environment holds the entry `wanted` exactly.
fn processes_with_env(wanted: &str) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// The last bytes of a stream, bounded by [`HOOK_OUTPUT_BYTES_MAX`].
#[derive(Clone, Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    dropped: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        // Compact only when twice the limit is buffered, so the cost per byte stays constant.
        if self.bytes.len() >= 2 * HOOK_OUTPUT_BYTES_MAX {
            self.keep_last();
        }
    }

    fn keep_last(&mut self) {
        if self.bytes.len() > HOOK_OUTPUT_BYTES_MAX {
            let excess = self.bytes.len() - HOOK_OUTPUT_BYTES_MAX;
            self.bytes.drain(..excess);
            self.dropped = true;
        }
    }

    fn truncated(&self) -> bool {
        self.dropped || self.bytes.len() > HOOK_OUTPUT_BYTES_MAX
    }

    /// The kept bytes as UTF-8 of at most [`HOOK_OUTPUT_BYTES_MAX`] bytes.
    fn into_string(mut self) -> String {
        self.keep_last();
        let mut bytes = self.bytes.as_slice();
        if self.dropped {
            // The cut may have split a character: skip its continuation bytes.
            let partial = bytes
                .iter()
                .take(3)
                .take_while(|byte| (**byte & 0b1100_0000) == 0b1000_0000)
                .count();
            bytes = &bytes[partial..];
        }
        let text = String::from_utf8_lossy(bytes);
        if text.len() <= HOOK_OUTPUT_BYTES_MAX {
            return text.into_owned();
        }
        // Replacement characters can make the text longer than the bytes; keep the limit.
        let mut start = text.len() - HOOK_OUTPUT_BYTES_MAX;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }
}

/// Reads `pipe` to EOF (or the first read error), handing each chunk to `push`.
async fn read_into<R: AsyncRead + Unpin>(pipe: Option<R>, mut push: impl FnMut(&[u8])) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = vec![0; READ_CHUNK_BYTES];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => push(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(%error, "reading hook output failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shell(script: &str) -> HookRun {
        HookRun::new(HookExec::Shell(script.to_owned()), Duration::from_secs(10))
    }

    async fn run(run: &HookRun) -> HookReport {
        run_hook(run, &CancellationToken::new()).await
    }

    /// Polls until `path` holds a pid, for at most 5 s.
    async fn read_pid(path: &Path) -> libc::pid_t {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid in {}", path.display());
    }

    /// Whether `pid` is gone or a zombie (dead, waiting for init, which may be slow in a container).
    fn is_dead(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks for existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => true,
        }
    }

    async fn assert_dies_soon(pid: libc::pid_t) {
        for _ in 0..200 {
            if is_dead(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // SAFETY: cleaning up after a failed test; the pid is the test's own grandchild.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("process {pid} is still alive");
    }

    #[tokio::test]
    async fn success_captures_stdout_and_stderr() {
        let report = run(&shell("echo hello; echo oops >&2")).await;
        assert_eq!(report.outcome, HookOutcome::Succeeded);
        assert_eq!(report.exit, Some(0));
        assert_eq!(report.signal, None);
        assert_eq!(report.stdout_tail, "hello\n");
        assert_eq!(report.stderr_tail, "oops\n");
        assert!(!report.truncated);
    }

    #[tokio::test]
    async fn nonzero_exit_fails_with_its_code() {
        let report = run(&shell("echo partial; exit 3")).await;
        assert_eq!(report.outcome, HookOutcome::Failed);
        assert_eq!(report.exit, Some(3));
        assert_eq!(report.stdout_tail, "partial\n");
    }

    #[tokio::test]
    async fn death_by_signal_fails_with_the_signal() {
        let report = run(&shell("kill -USR1 $$")).await;
        assert_eq!(report.outcome, HookOutcome::Failed);
        assert_eq!(report.exit, None);
        assert_eq!(report.signal, Some(libc::SIGUSR1));
    }

    #[tokio::test]
    async fn argv_runs_without_a_shell() {
        let argv = ["printf", "%s|%s", "a b", "$HOME"]
            .map(str::to_owned)
            .to_vec();
        let report = run(&HookRun::new(HookExec::Argv(argv), Duration::from_secs(10))).await;
        assert_eq!(report.outcome, HookOutcome::Succeeded);
        assert_eq!(report.stdout_tail, "a b|$HOME");
    }

    #[tokio::test]
    async fn env_and_cwd_reach_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut hook =
            shell("echo \"$CAIRN_PACKAGE $CAIRN_KEEP\"; pwd; echo \"${PATH:+inherited}\"");
        hook.env = vec![
            ("CAIRN_PACKAGE".to_owned(), "netmon".to_owned()),
            ("CAIRN_KEEP".to_owned(), "vars,queues".to_owned()),
        ];
        hook.cwd = Some(dir.path().to_owned());
        let report = run(&hook).await;
        assert_eq!(report.outcome, HookOutcome::Succeeded);
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(
            report.stdout_tail,
            format!("netmon vars,queues\n{}\ninherited\n", cwd.display())
        );
    }

    #[tokio::test]
    async fn large_output_keeps_exactly_the_last_bytes() {
        let report = run(&shell(
            "head -c 200000 /dev/zero | tr '\\0' a; echo END; head -c 100000 /dev/zero | tr '\\0' b >&2",
        ))
        .await;
        assert_eq!(report.outcome, HookOutcome::Succeeded);
        assert!(report.truncated);
        assert_eq!(report.stdout_tail.len(), HOOK_OUTPUT_BYTES_MAX);
        assert!(report.stdout_tail.ends_with("aaaEND\n"));
        assert!(report.stdout_tail[..HOOK_OUTPUT_BYTES_MAX - 4]
            .bytes()
            .all(|byte| byte == b'a'));
        assert_eq!(report.stderr_tail, "b".repeat(HOOK_OUTPUT_BYTES_MAX));
    }

    #[tokio::test]
    async fn output_at_the_limit_is_not_truncated() {
        let report = run(&shell("head -c 65536 /dev/zero | tr '\\0' a")).await;
        assert!(!report.truncated);
        assert_eq!(report.stdout_tail.len(), HOOK_OUTPUT_BYTES_MAX);
    }

    #[test]
    fn tail_never_exceeds_the_limit_or_starts_inside_a_character() {
        let mut tail = Tail::default();
        for _ in 0..50_000 {
            tail.push("é€".as_bytes());
        }
        let text = tail.into_string();
        assert!(text.len() <= HOOK_OUTPUT_BYTES_MAX);
        assert!(!text.contains('\u{FFFD}'));
        assert!(text.ends_with("é€"));

        // Invalid bytes decode to 3-byte replacement characters: still within the limit.
        let mut tail = Tail::default();
        tail.push(&[0xff; 2 * HOOK_OUTPUT_BYTES_MAX + 7]);
        let text = tail.into_string();
        assert!(text.len() <= HOOK_OUTPUT_BYTES_MAX);
        assert!(text.chars().all(|c| c == '\u{FFFD}'));
    }

    /// Runs `hook`, failing the test if it has not ended within `limit` (a hang, not a
    /// measurement: the limit is far above what the run needs).
    async fn run_within(hook: &HookRun, cancel: &CancellationToken, limit: Duration) -> HookReport {
        tokio::time::timeout(limit, run_hook(hook, cancel))
            .await
            .unwrap_or_else(|_| panic!("the hook run did not end within {limit:?}"))
    }

    #[tokio::test]
    async fn timeout_stops_the_hook() {
        let mut hook = shell("sleep 30");
        hook.timeout = Duration::from_millis(300);
        let report = run_within(&hook, &CancellationToken::new(), Duration::from_secs(20)).await;
        assert_eq!(report.outcome, HookOutcome::TimedOut);
        assert_eq!(report.exit, None);
        // SIGTERM ended it, not the `sleep 30` running out.
        assert_eq!(report.signal, Some(libc::SIGTERM));
        assert!(report.duration_ms >= 300);
    }

    #[tokio::test]
    async fn hooks_get_a_clean_environment() {
        // The test process has plenty of variables (cargo's, the shell's): none reaches the hook.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        let mut hook = shell("env | cut -d= -f1 | sort");
        hook.env = vec![("CAIRN_PACKAGE".to_owned(), "netmon".to_owned())];
        let report = run(&hook).await;
        assert_eq!(report.outcome, HookOutcome::Succeeded);
        let names: Vec<&str> = report.stdout_tail.lines().collect();
        assert!(names.contains(&"PATH"), "{names:?}");
        assert!(names.contains(&"CAIRN_PACKAGE"), "{names:?}");
        // What the shell itself sets (PWD, SHLVL, _) is not inherited.
        let allowed = [
            "PATH",
            "HOME",
            "LANG",
            "CAIRN_PACKAGE",
            "PWD",
            "SHLVL",
            "_",
            "OLDPWD",
        ];
        for name in &names {
            assert!(allowed.contains(name), "{name} reached the hook: {names:?}");
        }
    }

    #[tokio::test]
    async fn leftovers_of_an_earlier_attempt_are_killed_and_nothing_else() {
        let run_id = format!("test-{}", std::process::id());
        let spawn = |value: &str| {
            std::process::Command::new("sleep")
                .arg("100")
                .env(HOOK_RUN_ENV, value)
                .spawn()
                .unwrap()
        };
        let mut leftover = spawn(&run_id);
        let mut other = spawn(&format!("{run_id}-other"));
        let killed = kill_leftovers(&run_id).await.unwrap();
        assert_eq!(killed, vec![leftover.id() as libc::pid_t]);
        assert!(leftover.wait().unwrap().signal() == Some(libc::SIGKILL));
        assert!(
            other.try_wait().unwrap().is_none(),
            "another run is left alone"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        assert_eq!(
            kill_leftovers(&run_id).await.unwrap(),
            Vec::<libc::pid_t>::new()
        );
    }

    #[tokio::test]
    async fn a_hook_dies_when_its_lifeline_closes() {
        // What happens when the process running the hook dies: the kernel closes the write end
        // of the lifeline, and the guard kills the group. Here the write end is closed by hand.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("hook.pid");
        let (lifeline, guard) = spawn_guard().unwrap();
        let hook = shell(&format!(
            "echo $$ > '{}'; exec sleep 100",
            pid_file.display()
        ));
        let (mut command, _) = command_for(&hook, pid_of(&guard)).unwrap();
        let mut child = command.spawn().unwrap();
        let pid = read_pid(&pid_file).await;
        drop(lifeline);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the guard killed the hook")
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_dies_soon(pid).await;
        drop(guard);
    }

    #[tokio::test]
    async fn cancellation_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let hook = shell(&format!(
            "sleep 100 & echo $! > '{}'; wait",
            pid_file.display()
        ));
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            let pid_file = pid_file.clone();
            tokio::spawn(async move {
                let pid = read_pid(&pid_file).await;
                cancel.cancel();
                pid
            })
        };
        let report = run_within(&hook, &cancel, Duration::from_secs(20)).await;
        assert_eq!(report.outcome, HookOutcome::Cancelled);
        // It was stopped by the cancellation's SIGTERM, not the grace's SIGKILL.
        assert_eq!(report.signal, Some(libc::SIGTERM));
        let grandchild = canceller.await.unwrap();
        assert_dies_soon(grandchild).await;
    }

    #[tokio::test]
    async fn leftover_background_processes_are_killed_when_the_hook_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // The background sleep keeps stdout open; without the group kill, reading would hang.
        let hook = shell(&format!(
            "sleep 100 & echo $! > '{}'; echo done",
            pid_file.display()
        ));
        // Without the group kill, reading its output would wait for the sleep (100 s).
        let report = run_within(&hook, &CancellationToken::new(), Duration::from_secs(20)).await;
        assert_eq!(report.outcome, HookOutcome::Succeeded);
        assert_eq!(report.stdout_tail, "done\n");
        assert_dies_soon(read_pid(&pid_file).await).await;
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let hook = shell(&format!(
            "sleep 100 & echo $! > '{}'; wait",
            pid_file.display()
        ));
        let cancel = CancellationToken::new();
        let pid_file_for_wait = pid_file.clone();
        let raced = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::select! {
                _ = run_hook(&hook, &cancel) => panic!("the hook should still be running"),
                pid = read_pid(&pid_file_for_wait) => pid,
            }
        })
        .await
        .unwrap();
        assert_dies_soon(raced).await;
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_failure() {
        let argv = vec!["/nonexistent/cairn-hook".to_owned()];
        let report = run(&HookRun::new(HookExec::Argv(argv), Duration::from_secs(10))).await;
        let HookOutcome::SpawnFailed(message) = &report.outcome else {
            panic!("expected a spawn failure, got {report:?}");
        };
        assert!(message.contains("/nonexistent/cairn-hook"), "{message}");
        assert_eq!(report.exit, None);

        let report = run(&HookRun::new(
            HookExec::Argv(vec![]),
            Duration::from_secs(10),
        ))
        .await;
        assert_eq!(
            report.outcome,
            HookOutcome::SpawnFailed("hook command is an empty argv".to_owned())
        );
    }

    #[tokio::test]
    async fn a_hook_ignoring_sigterm_is_killed_after_the_grace() {
        let mut hook = shell("trap '' TERM; sleep 30");
        hook.timeout = Duration::from_millis(200);
        hook.kill_grace = Duration::from_millis(300);
        let report = run_within(&hook, &CancellationToken::new(), Duration::from_secs(20)).await;
        assert_eq!(report.outcome, HookOutcome::TimedOut);
        // SIGTERM was ignored; SIGKILL came after the grace.
        assert_eq!(report.signal, Some(libc::SIGKILL));
        assert!(report.duration_ms >= 500, "{report:?}");
    }

    #[test]
    fn from_spec_takes_the_manifest_timeout() {
        let spec = HookSpec {
            exec: HookExec::Shell("true".to_owned()),
            timeout_s: 30,
        };
        let run = HookRun::from_spec(&spec);
        assert_eq!(run.timeout, Duration::from_secs(30));
        assert_eq!(run.kill_grace, Duration::from_millis(HOOK_KILL_GRACE_MS));
    }
}
