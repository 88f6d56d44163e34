//! `cairn`: the command-line interface. Local mode (`--data DIR`) opens the workspace in this
//! process; remote mode (`--server URL --token-file F`) talks to a running `cairn serve`. Both
//! run the same `cairn_server::Request` and print the same output. Exit codes: 0 success, 1 a
//! rejected or failed command, 2 usage errors, 3 integrity failures.

/// `println!` for this crate, shadowing the standard one in every module (it is defined
/// before them): a closed stdout (the reader of a pipe went away, as in `cairn log show | head
/// -1`) ends the process quietly with exit 0 instead of a panic; any other write error is
/// reported and exits 1. See [`print_line`].
macro_rules! println {
    () => {
        $crate::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

mod backend;
mod demo;
mod drive;
mod output;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use backend::{data_dir, open_local, Backend, Open, Remote};
use cairn_kernel::echo::echo;
use cairn_server::api::{ApiError, Request};

/// Why a command failed, and the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// A rejected or failed command (exit 1).
    Other(String),
    /// Bad usage (exit 2).
    Usage(String),
    /// An integrity failure: a corrupt entry, a digest mismatch (exit 3).
    Integrity(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        if e.is_integrity() {
            Failure::Integrity(e.message)
        } else {
            Failure::Other(e.message)
        }
    }
}

const KEEP_KINDS: [&str; 5] = ["vars", "queues", "vaults", "daemons", "model"];

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "cairn: a workspace's packages, features and resources on a hash-chained log",
    long_about = "cairn keeps a workspace (packages, their resources, features, interface \
                  connections) as the fold of an append-only, hash-chained log in RocksDB.\n\n\
                  Local mode (default) opens the workspace directory in this process; remote \
                  mode (--server URL --token-file F) talks to a running `cairn serve`.",
    after_help = "Examples:\n  cairn init\n  cairn pkg install netmon.toml\n  cairn feature set netmon disabled\n  cairn --server http://127.0.0.1:7878 --token-file admin.token pkg list --json"
)]
struct Cli {
    /// Workspace directory (local mode).
    #[arg(long, global = true, env = "CAIRN_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Server URL (remote mode), e.g. http://127.0.0.1:7878.
    #[arg(long, global = true, env = "CAIRN_SERVER", value_name = "URL")]
    server: Option<String>,
    /// File holding the bearer token (remote mode).
    #[arg(long, global = true, env = "CAIRN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Machine-readable output (JSON; `log show` prints JSON lines).
    #[arg(long, global = true)]
    json: bool,
    /// Local mode: `sync` (every commit fsynced before it is answered) or `buffered` (the WAL
    /// is written per commit and fsynced at most every 100 ms; a machine crash can lose the
    /// last 100 ms, a process crash loses nothing).
    #[arg(long, global = true, env = "CAIRN_DURABILITY", default_value = "sync", value_parser = ["sync", "buffered"])]
    durability: String,
    /// Remote mode: a read answers only once the node has applied offset N (waits up to 10 s;
    /// read-your-writes across nodes: pass the offset a write answered with).
    #[arg(long, global = true, value_name = "N")]
    min_offset: Option<u64>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a workspace; prints its id and writes <data>/admin.token (mode 0600).
    #[command(after_help = "Example:\n  cairn --data ./ws init")]
    Init,
    /// Packages: install, uninstall, list, show.
    #[command(subcommand)]
    Pkg(Pkg),
    /// A package's variables.
    #[command(subcommand)]
    Var(Var),
    /// A package's durable queues (named PKG:QUEUE).
    #[command(subcommand)]
    Queue(Queue),
    /// A package's vaults (secrets, sealed with the workspace key before they are logged).
    #[command(subcommand)]
    Vault(Vault),
    /// Features: list, set, report.
    #[command(subcommand)]
    Feature(Feature),
    /// Package daemons, supervised by the leader (`cairn serve`; local mode runs none).
    #[command(subcommand)]
    Daemon(Daemon),
    /// Interface connections between plugs and slots.
    #[command(subcommand)]
    Iface(Iface),
    /// The Drive: a tree of items with versioned JSON data, typed by JSON Schemas whose
    /// migrations are recorded in the log (docs/drive.md).
    #[command(subcommand)]
    Drive(drive::Drive),
    /// Changes (install, uninstall, connect, disconnect) and their tasks.
    #[command(subcommand)]
    Change(Change),
    /// The log: show entries, follow it live.
    #[command(subcommand)]
    Log(Log),
    /// The projection's state digest.
    #[command(subcommand)]
    State(State),
    /// Audit: verify the hash chain and the projection against a full replay.
    #[command(subcommand)]
    Audit(Audit),
    /// Build a new workspace holding the state at offset N.
    #[command(after_help = "Example:\n  cairn replay --until 120 --into ./ws-at-120")]
    Replay {
        /// Last offset to replay.
        #[arg(long, value_name = "N")]
        until: u64,
        /// New workspace directory (must not exist).
        #[arg(long, value_name = "DIR")]
        into: PathBuf,
    },
    /// Rebuild the projection from the log (local mode; the workspace must not be open).
    #[command(after_help = "Example:\n  cairn --data ./ws rebuild")]
    Rebuild,
    /// Recover a workspace that refuses to open (local mode; the workspace must not be open).
    #[command(
        after_help = "A workspace whose write-ahead log lost acknowledged commits (a \
        damaged record before intact ones) refuses every open with exit code 3 and says what was \
        found. Restore it from a backup, or accept the loss:\n\n  cairn --data ./ws recover \
        --accept-wal-loss\n\nThe workspace then continues from the offset its WAL replay \
        recovered; the lost commits are gone (copies of the damaged WAL files stay in \
        <data>/quarantine/), and the acceptance is recorded in the log as \
        store.wal_loss_accepted.v1."
    )]
    Recover {
        /// Accept the loss of the commits a damaged write-ahead log dropped.
        #[arg(long, required = true)]
        accept_wal_loss: bool,
    },
    /// Write a consistent checkpoint (log + state + meta) into DIR (must not exist).
    #[command(after_help = "Example:\n  cairn backup /backups/ws-2026-11-22")]
    Backup {
        /// Target directory.
        dir: PathBuf,
    },
    /// Run the leader daemon: the HTTP API on ADDR until SIGTERM or SIGINT.
    #[command(after_help = "Example:\n  cairn --data ./ws serve --listen 127.0.0.1:7878")]
    Serve {
        /// Address to listen on (port 0 picks a free port; the URL is printed).
        #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR")]
        listen: String,
        /// Answer a command only once this many mirrors have durably applied it.
        #[arg(long, default_value_t = 0, value_name = "K")]
        sync_mirrors: usize,
        /// With --sync-mirrors: how long a command waits for them before it answers 503
        /// not_replicated (it is committed on the leader).
        #[arg(long, default_value_t = cairn_server::SYNC_TIMEOUT_MS_DEFAULT, value_name = "MS")]
        sync_timeout_ms: u64,
    },
    /// Run a mirror: follow a leader's log into the local data directory and serve the read
    /// API on ADDR until SIGTERM or SIGINT (writes answer 503 naming the leader).
    #[command(
        after_help = "Example:\n  cairn --data ./mirror mirror --leader http://10.0.0.1:7878 \\\n    --leader-token mirror.token --from-backup /backups/ws --listen 127.0.0.1:7879"
    )]
    Mirror {
        /// The leader's URL.
        #[arg(long, value_name = "URL")]
        leader: String,
        /// File holding a token of role `mirror` on the leader.
        #[arg(long, value_name = "FILE")]
        leader_token: PathBuf,
        /// Address to listen on (port 0 picks a free port; the URL is printed).
        #[arg(long, default_value = "127.0.0.1:7879", value_name = "ADDR")]
        listen: String,
        /// Provision an empty (or missing) data directory from this `cairn backup` of the
        /// leader.
        #[arg(long, value_name = "DIR")]
        from_backup: Option<PathBuf>,
        /// The name shown in the leader's status (default: the host name and listen address).
        #[arg(long)]
        name: Option<String>,
        /// Once this node leads (after `promote` or a handoff to it): answer a command only
        /// once this many mirrors have durably applied it, as `serve --sync-mirrors`.
        #[arg(long, default_value_t = 0, value_name = "K")]
        sync_mirrors: usize,
        /// With --sync-mirrors: how long a command waits for them (as `serve`).
        #[arg(long, default_value_t = cairn_server::SYNC_TIMEOUT_MS_DEFAULT, value_name = "MS")]
        sync_timeout_ms: u64,
    },
    /// Make this mirror the leader of a new epoch (forced: its leader is gone). On a running
    /// mirror use --server; on a stopped one, --data.
    #[command(
        after_help = "Example:\n  cairn --server http://10.0.0.2:7879 --token-file admin.token promote --name mirror-1"
    )]
    Promote {
        /// The name the new epoch records for its leader.
        #[arg(long)]
        name: Option<String>,
    },
    /// Hand leadership to a mirror, with nothing lost (planned switch, on the leader): stop
    /// taking writes, wait until that mirror has applied the head, promote it, follow it.
    #[command(
        after_help = "Example:\n  cairn --server http://10.0.0.1:7879 --token-file admin.token handoff --to http://10.0.0.2:7879"
    )]
    Handoff {
        /// The mirror's URL, as the leader reaches it (the leader follows it there afterwards).
        #[arg(long, value_name = "URL")]
        to: String,
        /// The name this node takes in the new leader's mirrors table.
        #[arg(long)]
        name: Option<String>,
        /// How long the mirror may take to apply the leader's head before the handoff is
        /// called off (the leader then leads again).
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
    },
    /// Role, workspace id, applied offset, epoch.
    #[command(after_help = "Example:\n  cairn status --json")]
    Status,
    /// API tokens: create, revoke, list (admin).
    #[command(subcommand)]
    Token(Token),
    /// The whole lifecycle on a scratch workspace, narrated.
    #[command(after_help = "Example:\n  cairn demo")]
    Demo {
        /// Keep the demo workspace here instead of a temporary directory.
        #[arg(long = "into", value_name = "DIR")]
        into: Option<PathBuf>,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  cairn completions bash > /etc/bash_completion.d/cairn")]
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Internal: the demo's writer that gets killed mid-uninstall.
    #[command(hide = true)]
    DemoVictim,
}

#[derive(Subcommand)]
enum Pkg {
    /// Install a package from a TOML manifest; waits for the install change.
    #[command(after_help = "Example:\n  cairn pkg install docs/examples/netmon.toml")]
    Install {
        /// Manifest file.
        manifest: PathBuf,
        /// Return the change id without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Uninstall a package, deleting what it owns except the kept kinds.
    #[command(after_help = "Example:\n  cairn pkg uninstall netmon --keep vars,queues")]
    Uninstall {
        /// Package.
        name: String,
        /// Resource kinds to keep: vars, queues, vaults, daemons, model (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(KEEP_KINDS))]
        keep: Vec<String>,
        /// Abort and undo if the onuninstall hook fails.
        #[arg(long)]
        strict: bool,
        /// Return the change id without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// List packages: name, version, status.
    #[command(after_help = "Example:\n  cairn pkg list --json")]
    List,
    /// Show a package: status, resources, features, plugs, slots.
    #[command(after_help = "Example:\n  cairn pkg show netmon")]
    Show {
        /// Package.
        name: String,
    },
}

#[derive(Subcommand)]
enum Var {
    /// Set a variable.
    #[command(after_help = "Example:\n  cairn var set netmon threshold 20")]
    Set {
        /// Package.
        pkg: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Refuse unless the variable is at this revision (0: must not exist).
        #[arg(long, value_name = "N")]
        expect_revision: Option<u64>,
    },
    /// Print a variable's value.
    #[command(after_help = "Example:\n  cairn var get netmon threshold")]
    Get {
        /// Package.
        pkg: String,
        /// Key.
        key: String,
    },
    /// Delete a variable.
    #[command(after_help = "Example:\n  cairn var del netmon threshold")]
    Del {
        /// Package.
        pkg: String,
        /// Key.
        key: String,
    },
    /// List a package's variables.
    #[command(after_help = "Example:\n  cairn var list netmon --json")]
    List {
        /// Package.
        pkg: String,
    },
}

#[derive(Subcommand)]
enum Queue {
    /// Append items to a queue (one log entry).
    #[command(after_help = "Example:\n  cairn queue put netmon:events link-up link-down")]
    Put {
        /// PKG:QUEUE.
        name: String,
        /// Items.
        #[arg(required = true)]
        items: Vec<String>,
    },
    /// Read unacknowledged items.
    #[command(after_help = "Example:\n  cairn queue read netmon:events --from 1")]
    Read {
        /// PKG:QUEUE.
        name: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most items.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Acknowledge (and delete) items up to N.
    #[command(after_help = "Example:\n  cairn queue ack netmon:events 2")]
    Ack {
        /// PKG:QUEUE.
        name: String,
        /// Last sequence number acknowledged.
        upto: u64,
    },
}

#[derive(Subcommand)]
enum Vault {
    /// Store a secret read from stdin (the log and backups hold only its ciphertext).
    #[command(after_help = "Example:\n  printf %s \"$TOKEN\" | cairn vault set netmon api-token")]
    Set {
        /// Package.
        pkg: String,
        /// Vault.
        vault: String,
        /// The secret; read from stdin when absent (an argument is visible to other users in
        /// the process list). One trailing newline is dropped.
        secret: Option<String>,
    },
    /// Print a secret (admin token in remote mode).
    #[command(after_help = "Example:\n  cairn vault get netmon api-token")]
    Get {
        /// Package.
        pkg: String,
        /// Vault.
        vault: String,
    },
}

#[derive(Subcommand)]
enum Daemon {
    /// List daemons: package, name, desired, observed, restarts, and the leader's pid and
    /// start time.
    #[command(after_help = "Example:\n  cairn --server http://127.0.0.1:7070 daemon list --json")]
    List,
    /// Ask a daemon to run (its package installed and its feature, if any, enabled).
    #[command(after_help = "Example:\n  cairn daemon enable netmon:collector")]
    Enable {
        /// PKG:NAME
        daemon: String,
    },
    /// Stop a daemon and keep it stopped.
    #[command(after_help = "Example:\n  cairn daemon disable netmon:collector")]
    Disable {
        /// PKG:NAME
        daemon: String,
    },
    /// Run a daemon again now (also one marked failed), with a fresh restart history.
    #[command(
        after_help = "Example:\n  cairn --server http://127.0.0.1:7070 daemon restart netmon:collector"
    )]
    Restart {
        /// PKG:NAME
        daemon: String,
    },
    /// The tail of a daemon's output, as kept by the leader that runs it.
    #[command(
        after_help = "Example:\n  cairn --server http://127.0.0.1:7070 daemon logs netmon:collector"
    )]
    Logs {
        /// PKG:NAME
        daemon: String,
    },
}

#[derive(Subcommand)]
enum Feature {
    /// List features.
    #[command(after_help = "Example:\n  cairn feature list --json")]
    List,
    /// Set a feature's state: enabled or disabled.
    #[command(after_help = "Example:\n  cairn feature set netmon disabled --expect-revision 7")]
    Set {
        /// Feature.
        name: String,
        /// enabled | disabled | always_enabled | always_disabled
        state: String,
        /// Refuse unless the feature is at this revision.
        #[arg(long, value_name = "N")]
        expect_revision: Option<u64>,
    },
    /// Report the state observed on the service side.
    #[command(after_help = "Example:\n  cairn feature report netmon enabled")]
    Report {
        /// Feature.
        name: String,
        /// Observed state.
        state: String,
    },
}

#[derive(Subcommand)]
enum Iface {
    /// Connect a plug to a slot (runs the connect hooks).
    #[command(after_help = "Example:\n  cairn iface connect netmon:net router:net")]
    Connect {
        /// PKG:PLUG.
        plug: String,
        /// PKG:SLOT.
        slot: String,
        /// Return the change id without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Disconnect a plug from a slot.
    #[command(after_help = "Example:\n  cairn iface disconnect netmon:net router:net")]
    Disconnect {
        /// PKG:PLUG.
        plug: String,
        /// PKG:SLOT.
        slot: String,
        /// Return the change id without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// List connections.
    #[command(after_help = "Example:\n  cairn iface list")]
    List,
}

#[derive(Subcommand)]
enum Change {
    /// List changes, oldest first.
    #[command(after_help = "Example:\n  cairn change list --json")]
    List,
    /// Show a change and its tasks.
    #[command(after_help = "Example:\n  cairn change show 7c1e…")]
    Show {
        /// Change id.
        id: String,
    },
    /// Abort a change: cancel its running hook, then undo it.
    #[command(after_help = "Example:\n  cairn change abort 7c1e…")]
    Abort {
        /// Change id.
        id: String,
    },
}

#[derive(Subcommand)]
enum Log {
    /// Show entries (JSON lines with --json).
    #[command(
        after_help = "Example:\n  cairn log show --from 1 --limit 20 --kind feature. --json"
    )]
    Show {
        /// First offset.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most entries.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// Only entries whose kind starts with PREFIX.
        #[arg(long, value_name = "PREFIX")]
        kind: Option<String>,
    },
    /// Follow the log live (JSON lines), from the next entry or --from.
    #[command(after_help = "Example:\n  cairn log tail")]
    Tail {
        /// First offset.
        #[arg(long)]
        from: Option<u64>,
    },
}

#[derive(Subcommand)]
enum State {
    /// Print "<applied-offset> <digest-hex>".
    #[command(after_help = "Example:\n  cairn state digest")]
    Digest,
}

#[derive(Subcommand)]
enum Audit {
    /// Verify every entry's hash and link, replay the log into a scratch store, compare digests.
    #[command(after_help = "Example:\n  cairn audit verify")]
    Verify,
}

#[derive(Subcommand)]
enum Token {
    /// Create a token; prints its secret (shown once), or writes it into --out FILE.
    #[command(
        after_help = "Examples:\n  cairn token create ops --role read --out ops.token\n  cairn token create ops --role read > ops.token"
    )]
    Create {
        /// Name.
        name: String,
        /// Role.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["read", "write", "admin", "mirror"]))]
        role: String,
        /// Write the secret into FILE instead of stdout. FILE is created with mode 0600 before
        /// the token is, and must not exist (it is never overwritten).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Revoke a token.
    #[command(after_help = "Example:\n  cairn token revoke ops")]
    Revoke {
        /// Name.
        name: String,
    },
    /// List tokens (names and roles; secrets are never stored).
    #[command(after_help = "Example:\n  cairn token list")]
    List,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            print_clap_error(&e);
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // The daemon logs what it does; one-shot commands only warnings. `CAIRN_LOG` overrides.
    let default_level = if matches!(cli.command, Cmd::Serve { .. } | Cmd::Mirror { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (code, msg) = match f {
                Failure::Other(m) => (1, m),
                Failure::Usage(m) => (2, m),
                Failure::Integrity(m) => (3, m),
            };
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

/// Prints clap's message. clap quotes a bad argument whole, so a usage error holding a word
/// longer than [`cairn_kernel::echo::ERROR_ECHO_CHARS_MAX`] characters is printed without
/// colour, such words cut like echoed input.
fn print_clap_error(e: &clap::Error) {
    use cairn_kernel::echo::{echo_bare, ERROR_ECHO_CHARS_MAX};
    let long = |w: &str| w.chars().count() > ERROR_ECHO_CHARS_MAX;
    let text = e.render().to_string();
    if !e.use_stderr() || !text.split([' ', '\n']).any(long) {
        let _ = e.print();
        return;
    }
    for line in text.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                if long(w) {
                    echo_bare(w).to_string()
                } else {
                    w.to_string()
                }
            })
            .collect();
        eprintln!("{}", words.join(" "));
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Writes one line to stdout (what this crate's `println!` does). When stdout is closed
/// (`EPIPE`: the reader is gone, so nobody can see more output) the process exits 0 at once,
/// as `head` expects of the command before it, and what `cairn` had done stands; it exits 0
/// rather than dying of SIGPIPE (141) so that `set -o pipefail` scripts that stop reading
/// early do not fail, and because SIGPIPE stays ignored, so a write to a hook's or a socket's
/// closed pipe is an error where it happens, never a kill. Any other write error exits 1.
fn print_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_fmt(args)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
    {
        stdout_failed(&e);
    }
}

/// Ends the process after a failed write to stdout (see [`print_line`]).
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// Opens where the command runs: remote when `--server` is given, else local.
fn backend(cli: &Cli, open: Open) -> Result<Backend, Failure> {
    match (&cli.server, &cli.token_file) {
        (Some(url), Some(tf)) => Ok(Backend::Remote(
            Remote::new(url, tf)?.with_min_offset(cli.min_offset),
        )),
        (Some(_), None) => Err(Failure::Usage(
            "--server needs --token-file FILE (the bearer token)".into(),
        )),
        (None, _) => {
            let b = open_local(&data_dir(&cli.data), open, durability(cli))?;
            if let (Some(wanted), Backend::Local { svc, .. }) = (cli.min_offset, &b) {
                // A local workspace holds everything it will ever apply: nothing to wait for.
                let applied = svc.workspace().applied();
                if wanted > applied {
                    return Err(Failure::Other(format!(
                        "--min-offset {wanted}: this workspace's applied offset is {applied}"
                    )));
                }
            }
            Ok(b)
        }
    }
}

fn durability(cli: &Cli) -> cairn_store::Durability {
    match cli.durability.as_str() {
        "buffered" => cairn_store::Durability::Buffered,
        _ => cairn_store::Durability::Sync,
    }
}

fn local_only(cli: &Cli, what: &str) -> Result<PathBuf, Failure> {
    if cli.server.is_some() {
        return Err(Failure::Usage(format!(
            "`cairn {what}` works on a local data directory (--data DIR); it has no remote mode"
        )));
    }
    Ok(data_dir(&cli.data))
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {human_pos}/{human_len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Cmd::Init => init(&cli),
        Cmd::Serve {
            listen,
            sync_mirrors,
            sync_timeout_ms,
        } => serve(
            &cli,
            listen,
            cairn_server::SyncMirrors {
                count: *sync_mirrors,
                timeout_ms: *sync_timeout_ms,
            },
        ),
        Cmd::Mirror { .. } => mirror(&cli),
        Cmd::Rebuild => rebuild(&cli),
        Cmd::Recover { .. } => recover(&cli),
        Cmd::Demo { into } => demo::run(into.clone()),
        Cmd::DemoVictim => demo::victim(&data_dir(&cli.data)),
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "cairn", &mut script);
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&script).and_then(|_| out.flush()) {
                stdout_failed(&e);
            }
            Ok(())
        }
        Cmd::Backup { dir } => backup(&cli, dir),
        Cmd::Replay { until, into } => replay(&cli, *until, into),
        Cmd::Audit(Audit::Verify) => audit(&cli),
        Cmd::Log(Log::Tail { from }) => tail(&cli, *from),
        Cmd::Token(Token::Create {
            name,
            out: Some(file),
            ..
        }) => token_create_out(&cli, name, file),
        Cmd::Handoff { .. } if cli.server.is_none() => Err(Failure::Usage(
            "handoff runs on the serving leader: give --server URL and --token-file F (an \
             admin token)"
                .into(),
        )),
        _ => {
            let (req, open) = request(&cli.command)?;
            if open == Open::Mirror && cli.server.is_none() {
                // A local promote opens the directory as a mirror: it must be one.
                let data = data_dir(&cli.data);
                if !data.join(cairn::MIRROR_MARKER_FILE).exists() {
                    return Err(Failure::Other(format!(
                        "{} is not a mirror's data directory; only a mirror is promoted",
                        data.display()
                    )));
                }
            }
            let b = backend(&cli, open)?;
            let result = b.call(req);
            b.close();
            print(&cli, result?)
        }
    }
}

/// The request a plain command runs, and how local mode opens the workspace for it: reads
/// without the change engine; writes wait for resumed changes first; aborts and tokens do not
/// wait, so a stuck change can be looked at and aborted.
fn request(cmd: &Cmd) -> Result<(Request, Open), Failure> {
    let (req, writes) = request_of(cmd)?;
    let open = match (cmd, writes) {
        (Cmd::Change(Change::Abort { .. }), _) => Open::Drive,
        // Tokens and the drive touch no change: no engine, no hooks.
        (Cmd::Token(_) | Cmd::Drive(_), true) => Open::Quiet,
        (Cmd::Token(_), false) => Open::Quiet,
        (Cmd::Promote { .. }, _) => Open::Mirror,
        (_, true) => Open::Write,
        (_, false) => Open::Read,
    };
    Ok((req, open))
}

fn daemon_name(daemon: &str) -> Result<(String, String), Failure> {
    cairn_server::service::parse_end("daemon", daemon).map_err(|e| Failure::Usage(e.message))
}

fn request_of(cmd: &Cmd) -> Result<(Request, bool), Failure> {
    let split = |name: &str| -> Result<(String, String), Failure> {
        cairn_server::service::parse_end("queue", name).map_err(|e| Failure::Usage(e.message))
    };
    Ok(match cmd {
        Cmd::Pkg(Pkg::Install { manifest, no_wait }) => {
            let text = std::fs::read_to_string(manifest)
                .map_err(|e| Failure::Other(format!("cannot read {}: {e}", manifest.display())))?;
            (
                Request::PkgInstall {
                    manifest: text,
                    wait: !no_wait,
                },
                true,
            )
        }
        Cmd::Pkg(Pkg::Uninstall {
            name,
            keep,
            strict,
            no_wait,
        }) => (
            Request::PkgUninstall {
                name: name.clone(),
                keep: keep.clone(),
                strict: *strict,
                wait: !no_wait,
            },
            true,
        ),
        Cmd::Pkg(Pkg::List) => (Request::PkgList, false),
        Cmd::Pkg(Pkg::Show { name }) => (Request::PkgShow { name: name.clone() }, false),
        Cmd::Var(Var::Set {
            pkg,
            key,
            value,
            expect_revision,
        }) => (
            Request::VarSet {
                pkg: pkg.clone(),
                key: key.clone(),
                value: value.clone(),
                expect_revision: *expect_revision,
            },
            true,
        ),
        Cmd::Var(Var::Get { pkg, key }) => (
            Request::VarGet {
                pkg: pkg.clone(),
                key: key.clone(),
            },
            false,
        ),
        Cmd::Var(Var::Del { pkg, key }) => (
            Request::VarDel {
                pkg: pkg.clone(),
                key: key.clone(),
            },
            true,
        ),
        Cmd::Var(Var::List { pkg }) => (Request::VarList { pkg: pkg.clone() }, false),
        Cmd::Queue(Queue::Put { name, items }) => {
            let (pkg, queue) = split(name)?;
            (
                Request::QueuePut {
                    pkg,
                    queue,
                    items: items.clone(),
                },
                true,
            )
        }
        Cmd::Queue(Queue::Read { name, from, limit }) => {
            let (pkg, queue) = split(name)?;
            (
                Request::QueueRead {
                    pkg,
                    queue,
                    from: *from,
                    limit: *limit,
                },
                false,
            )
        }
        Cmd::Queue(Queue::Ack { name, upto }) => {
            let (pkg, queue) = split(name)?;
            (
                Request::QueueAck {
                    pkg,
                    queue,
                    upto: *upto,
                },
                true,
            )
        }
        Cmd::Vault(Vault::Set { pkg, vault, secret }) => (
            Request::VaultSet {
                pkg: pkg.clone(),
                vault: vault.clone(),
                secret: match secret {
                    Some(s) => s.clone(),
                    None => read_secret()?,
                },
            },
            true,
        ),
        Cmd::Vault(Vault::Get { pkg, vault }) => (
            Request::VaultGet {
                pkg: pkg.clone(),
                vault: vault.clone(),
            },
            false,
        ),
        Cmd::Daemon(Daemon::List) => (Request::DaemonList, false),
        Cmd::Daemon(Daemon::Enable { daemon } | Daemon::Disable { daemon }) => {
            let (pkg, name) = daemon_name(daemon)?;
            let state = match cmd {
                Cmd::Daemon(Daemon::Enable { .. }) => "enabled",
                _ => "disabled",
            };
            (
                Request::DaemonSet {
                    pkg,
                    name,
                    state: state.into(),
                },
                true,
            )
        }
        Cmd::Daemon(Daemon::Restart { daemon }) => {
            let (pkg, name) = daemon_name(daemon)?;
            (Request::DaemonRestart { pkg, name }, false)
        }
        Cmd::Daemon(Daemon::Logs { daemon }) => {
            let (pkg, name) = daemon_name(daemon)?;
            (Request::DaemonLogs { pkg, name }, false)
        }
        Cmd::Feature(Feature::List) => (Request::FeatureList, false),
        Cmd::Feature(Feature::Set {
            name,
            state,
            expect_revision,
        }) => (
            Request::FeatureSet {
                name: name.clone(),
                state: state.clone(),
                expect_revision: *expect_revision,
            },
            true,
        ),
        Cmd::Feature(Feature::Report { name, state }) => (
            Request::FeatureReport {
                name: name.clone(),
                state: state.clone(),
            },
            true,
        ),
        Cmd::Iface(Iface::Connect {
            plug,
            slot,
            no_wait,
        }) => (
            Request::IfaceConnect {
                plug: plug.clone(),
                slot: slot.clone(),
                wait: !no_wait,
            },
            true,
        ),
        Cmd::Iface(Iface::Disconnect {
            plug,
            slot,
            no_wait,
        }) => (
            Request::IfaceDisconnect {
                plug: plug.clone(),
                slot: slot.clone(),
                wait: !no_wait,
            },
            true,
        ),
        Cmd::Iface(Iface::List) => (Request::IfaceList, false),
        Cmd::Change(Change::List) => (Request::ChangeList, false),
        Cmd::Change(Change::Show { id }) => (Request::ChangeShow { id: id.clone() }, false),
        Cmd::Change(Change::Abort { id }) => (Request::ChangeAbort { id: id.clone() }, false),
        Cmd::Log(Log::Show { from, limit, kind }) => (
            Request::LogShow {
                from: *from,
                limit: *limit,
                kind: kind.clone(),
            },
            false,
        ),
        Cmd::State(State::Digest) => (Request::StateDigest, false),
        Cmd::Status => (Request::Status, false),
        Cmd::Promote { name } => (
            Request::Promote {
                name: name.clone(),
                expect_offset: None,
                expect_hash: None,
                handoff: None,
            },
            true,
        ),
        Cmd::Handoff {
            to,
            name,
            timeout_ms,
        } => (
            Request::Handoff {
                to: to.clone(),
                name: name.clone(),
                timeout_ms: *timeout_ms,
            },
            true,
        ),
        Cmd::Token(Token::Create { name, role, .. }) => (
            Request::TokenCreate {
                name: name.clone(),
                role: role.clone(),
            },
            false,
        ),
        Cmd::Token(Token::Revoke { name }) => (Request::TokenRevoke { name: name.clone() }, false),
        Cmd::Token(Token::List) => (Request::TokenList, false),
        Cmd::Drive(d) => return drive::request_of(d),
        Cmd::Init
        | Cmd::Serve { .. }
        | Cmd::Mirror { .. }
        | Cmd::Rebuild
        | Cmd::Recover { .. }
        | Cmd::Demo { .. }
        | Cmd::DemoVictim
        | Cmd::Completions { .. }
        | Cmd::Backup { .. }
        | Cmd::Replay { .. }
        | Cmd::Audit(_)
        | Cmd::Log(Log::Tail { .. }) => {
            return Err(Failure::Other("internal: not a plain request".into()))
        }
    })
}

/// A secret from stdin, without one trailing newline.
fn read_secret() -> Result<String, Failure> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .map_err(|e| Failure::Other(format!("cannot read the secret from stdin: {e}")))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

/// Prints a plain command's answer. A command that waited for a change fails (exit 1) unless
/// the change ended `done` (an abort: `undone`).
fn print(cli: &Cli, v: Value) -> Result<(), Failure> {
    print_answer(cli, &v);
    let waited = matches!(
        cli.command,
        Cmd::Pkg(Pkg::Install { .. })
            | Cmd::Pkg(Pkg::Uninstall { .. })
            | Cmd::Iface(Iface::Connect { .. })
            | Cmd::Iface(Iface::Disconnect { .. })
            | Cmd::Change(Change::Abort { .. })
    );
    if waited {
        change_outcome(&v)
    } else {
        Ok(())
    }
}

fn print_answer(cli: &Cli, v: &Value) {
    let v = v.clone();
    if cli.json {
        if let Cmd::Log(Log::Show { .. }) = cli.command {
            for e in v.as_array().into_iter().flatten() {
                println!("{e}");
            }
        } else {
            print_json(&v);
        }
        return;
    }
    match &cli.command {
        Cmd::Pkg(Pkg::List) => output::packages(&v),
        Cmd::Pkg(Pkg::Show { .. }) => {
            output::fields(
                &v,
                &[
                    "name",
                    "version",
                    "status",
                    "onload",
                    "revision",
                    "install_change",
                ],
            );
            for k in ["status_change", "keep", "broken_reason"] {
                if !v[k].is_null() {
                    output::fields(&v, &[k]);
                }
            }
            println!("hooks     {}", v["hooks"]);
            println!("resources {}", v["resources"]);
            println!("features  {}", v["features"]);
            println!("plugs     {}", v["plugs"]);
            println!("slots     {}", v["slots"]);
        }
        Cmd::Var(Var::Get { .. }) => match &v["value"] {
            Value::String(s) => println!("{s}"),
            other => println!("{other}"),
        },
        Cmd::Vault(Vault::Get { .. }) => match &v["secret"] {
            Value::String(s) => println!("{s}"),
            Value::Null => eprintln!("(the vault holds no secret)"),
            other => println!("{other}"),
        },
        Cmd::Var(Var::List { .. }) => output::vars(&v),
        Cmd::Queue(Queue::Read { .. }) => output::list(&v, &["SEQ", "ITEM"], &["seq", "item"]),
        Cmd::Feature(Feature::List) => output::features(&v),
        Cmd::Daemon(Daemon::List) => output::daemons(&v),
        Cmd::Daemon(Daemon::Logs { .. }) => print!("{}", output::s(&v["tail"])),
        Cmd::Daemon(Daemon::Restart { daemon }) => println!("restarted {daemon}"),
        Cmd::Iface(Iface::List) => output::list(
            &v,
            &["PLUG", "SLOT", "INTERFACE", "AUTO"],
            &["plug", "slot", "interface", "auto"],
        ),
        Cmd::Change(Change::List) => output::list(
            &v,
            &["ID", "KIND", "STATUS", "SUMMARY"],
            &["id", "kind", "status", "summary"],
        ),
        Cmd::Change(Change::Show { .. }) | Cmd::Change(Change::Abort { .. }) => output::change(&v),
        Cmd::Log(Log::Show { .. }) => {
            for e in v.as_array().into_iter().flatten() {
                println!("{}", output::entry_line(e));
            }
        }
        Cmd::State(State::Digest) => println!(
            "{} {}",
            v["applied_offset"],
            v["digest"].as_str().unwrap_or_default()
        ),
        Cmd::Status => output::status(&v),
        Cmd::Promote { .. } => output::fields(&v, &["role", "epoch", "offset", "leader"]),
        Cmd::Handoff { .. } => {
            output::fields(
                &v,
                &["role", "leader", "handed_off_at", "epoch", "token_file"],
            );
            eprintln!(
                "this node follows {} now; to restart it, run `cairn mirror --leader {} \
                 --leader-token {}`",
                v["leader"].as_str().unwrap_or("?"),
                v["leader"].as_str().unwrap_or("?"),
                v["token_file"].as_str().unwrap_or("?")
            );
        }
        Cmd::Token(Token::Create { name, role, .. }) => {
            eprintln!("created token {name:?} with role {role}; its secret (shown once):");
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        Cmd::Token(Token::List) => output::list(
            &v,
            &["NAME", "ROLE", "REVISION"],
            &["name", "role", "revision"],
        ),
        Cmd::Pkg(Pkg::Install { .. })
        | Cmd::Pkg(Pkg::Uninstall { .. })
        | Cmd::Iface(Iface::Connect { .. })
        | Cmd::Iface(Iface::Disconnect { .. }) => {
            if v.get("status").is_some() {
                output::change(&v);
            } else {
                println!("{}", v["change"].as_str().unwrap_or_default());
            }
        }
        Cmd::Drive(d) => {
            if !drive::print(d, &v) {
                print_committed(&v);
            }
        }
        _ => print_committed(&v),
    }
}

/// A command's answer: `ok (offset N)`, or `ok` when it wrote nothing.
fn print_committed(v: &Value) {
    if let Some(o) = v["offsets"].as_array() {
        if v["replayed"] == Value::Bool(true) {
            println!("ok (already committed at offset {})", o[0]);
        } else if o[0].as_u64() <= o[1].as_u64() {
            println!("ok (offset {})", o[1]);
        } else {
            println!("ok");
        }
    } else {
        print_json(v);
    }
}

/// A waited-for change that did not end `done` fails the command (exit 1).
fn change_outcome(v: &Value) -> Result<(), Failure> {
    let (Some(status), Some(id)) = (v["status"].as_str(), v["id"].as_str()) else {
        return Ok(());
    };
    let abort = v.get("applied").is_some();
    if v.get("tasks").is_none() || (status == "done" && !abort) {
        return Ok(());
    }
    let why: Vec<String> = v["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["log"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect();
    // An abort is asked for: ending undone is its success (and ending done means it came
    // too late).
    if v.get("applied").is_some() && status == "undone" {
        return Ok(());
    }
    Err(Failure::Other(format!(
        "change {id} ended {status}{}",
        if why.is_empty() {
            String::new()
        } else {
            format!(": {}", why.join("; "))
        }
    )))
}

fn init(cli: &Cli) -> Result<(), Failure> {
    let data = local_only(cli, "init")?;
    let token_file = data.join("admin.token");
    if token_file.exists() {
        return Err(Failure::Other(format!(
            "{} already exists; init would not be able to write the new admin token",
            token_file.display()
        )));
    }
    let id = cairn::Workspace::init(&data).map_err(|e| Failure::Other(e.to_string()))?;
    // The file exists (empty, 0600) before the token does, so its secret cannot be lost
    // between the commit and the write.
    let mut file = create_secret_file(&token_file)?;
    let created = open_local(&data, Open::Quiet, durability(cli)).and_then(|b| {
        let r = b.call(Request::TokenCreate {
            name: "admin".into(),
            role: "admin".into(),
        });
        b.close();
        r.map_err(Failure::from)
    });
    let created = match created {
        Ok(v) => v,
        Err(e) => {
            // No token was made: leave no empty token file behind.
            let _ = std::fs::remove_file(&token_file);
            return Err(e);
        }
    };
    let secret = created["token"].as_str().unwrap_or_default().to_string();
    writeln!(file, "{secret}")
        .and_then(|_| file.sync_all())
        .map_err(|e| Failure::Other(format!("cannot write {}: {e}", token_file.display())))?;
    println!("{id}");
    eprintln!(
        "initialized workspace {id} at {}; admin token in {}",
        data.display(),
        data.join("admin.token").display()
    );
    Ok(())
}

/// Creates a secret file readable by its owner only (mode 0600); it must not exist.
fn create_secret_file(path: &Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::Other(format!(
                "{} already exists; a secret is never written over a file (choose another \
                 name, or remove it first)",
                path.display()
            )),
            _ => Failure::Other(format!("cannot create {}: {e}", path.display())),
        })
}

/// `token create NAME --role R --out FILE`: FILE is created (mode 0600, never over an existing
/// file) before the token is, so no secret is made that cannot be kept; if the token is not
/// created, the empty file is removed. The secret goes into the file, not to stdout.
fn token_create_out(cli: &Cli, name: &str, file: &Path) -> Result<(), Failure> {
    let (req, open) = request(&cli.command)?;
    let mut f = create_secret_file(file)?;
    let created = backend(cli, open).and_then(|b| {
        let r = b.call(req);
        b.close();
        r.map_err(Failure::from)
    });
    let mut v = match created {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(file);
            return Err(e);
        }
    };
    let secret = v["token"].as_str().unwrap_or_default().to_string();
    writeln!(f, "{secret}")
        .and_then(|_| f.sync_all())
        .map_err(|e| {
            Failure::Other(format!(
                "token {} was created, but its secret could not be written to {}: {e}; revoke it \
             (`cairn token revoke NAME`) and create another",
                echo(name),
                file.display()
            ))
        })?;
    if let Some(o) = v.as_object_mut() {
        o.remove("token");
        o.insert("token_file".into(), file.display().to_string().into());
    }
    if cli.json {
        print_json(&v);
    } else {
        eprintln!(
            "created token {} with role {}; its secret is in {} (mode 0600)",
            echo(name),
            v["role"].as_str().unwrap_or_default(),
            file.display()
        );
    }
    Ok(())
}

fn serve(cli: &Cli, listen: &str, sync: cairn_server::SyncMirrors) -> Result<(), Failure> {
    let data = local_only(cli, "serve")?;
    let b = open_local(&data, Open::Serve, durability(cli))?;
    let Backend::Local { rt, svc } = b else {
        return Err(Failure::Other(
            "internal: serve needs a local workspace".into(),
        ));
    };
    run_server(&rt, svc.with_sync_mirrors(sync), &data, listen, "serving")
}

/// `cairn mirror`: provisions the data directory from a backup when asked, opens it as a
/// mirror, follows the leader on a thread and serves the read API until a signal.
fn mirror(cli: &Cli) -> Result<(), Failure> {
    let Cmd::Mirror {
        leader,
        leader_token,
        listen,
        from_backup,
        name,
        sync_mirrors,
        sync_timeout_ms,
    } = &cli.command
    else {
        unreachable!("called for `cairn mirror`")
    };
    let data = local_only(cli, "mirror")?;
    if cli.durability != "sync" {
        // A mirror acknowledges what it applied as durable: its leader counts on that for
        // --sync-mirrors.
        return Err(Failure::Usage(format!(
            "`cairn mirror` runs with --durability sync only (it acknowledges durable commits to \
             its leader); --durability {} is not allowed",
            cli.durability
        )));
    }
    backend::check_server_url(leader)?;
    let token = backend::read_token_file(leader_token)?.trim().to_string();
    let empty = std::fs::read_dir(&data).map_or(true, |mut d| d.next().is_none());
    match (from_backup, empty) {
        (Some(backup), true) => provision_from_backup(backup, &data)?,
        (Some(_), false) => {
            return Err(Failure::Usage(format!(
                "--from-backup provisions an empty data directory; {} is not empty",
                data.display()
            )))
        }
        (None, true) => provision_from_leader(leader, &token, &data)?,
        (None, false) => {}
    }
    let b = open_local(&data, Open::Mirror, cairn_store::Durability::Sync)?;
    let Backend::Local { rt, svc } = b else {
        return Err(Failure::Other(
            "internal: mirror needs a local workspace".into(),
        ));
    };
    let ws = svc.workspace().clone();
    drop(svc);
    let name = name.clone().unwrap_or_else(|| default_mirror_name(listen));
    let follower = cairn_mirror::start(
        ws.clone(),
        rt.handle().clone(),
        cairn_mirror::FollowerOptions {
            leader: leader.trim_end_matches('/').to_string(),
            token,
            name,
        },
    )
    .map_err(|e| Failure::Other(format!("cannot start the follower: {e}")))?;
    // Applies once this node leads (a mirror answers no command itself).
    let svc =
        cairn_server::Service::mirror(ws, follower).with_sync_mirrors(cairn_server::SyncMirrors {
            count: *sync_mirrors,
            timeout_ms: *sync_timeout_ms,
        });
    run_server(&rt, svc, &data, listen, "serving as a mirror")
}

/// The host name and listen address, as a mirror name (`[A-Za-z0-9-_.:]`).
fn default_mirror_name(listen: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let name: String = format!("{host}-{listen}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(cairn_mirror::protocol::MIRROR_NAME_BYTES_MAX)
        .collect();
    name
}

/// Copies a `cairn backup` directory into `data` (built aside and renamed, so an interrupted
/// copy leaves no half-provisioned mirror). Opening it as a mirror then checks it whole.
fn provision_from_backup(backup: &Path, data: &Path) -> Result<(), Failure> {
    if !backup.join("db").is_dir() {
        return Err(Failure::Usage(format!(
            "{} is not a cairn backup (it has no db directory)",
            backup.display()
        )));
    }
    let failed = |e: &dyn std::fmt::Display| {
        Failure::Other(format!("cannot provision {}: {e}", data.display()))
    };
    // An empty directory is replaced by the copy.
    if data.exists() {
        std::fs::remove_dir(data).map_err(|e| failed(&e))?;
    }
    let partial = cairn_store::PartialDir::create(data, "provision").map_err(|e| failed(&e))?;
    copy_tree(backup, partial.path()).map_err(|e| failed(&e))?;
    partial.commit().map_err(|e| failed(&e))?;
    tracing::info!(backup = %backup.display(), "provisioned from a backup");
    Ok(())
}

/// Provisions an empty (or missing) `data` from the leader's backup bundle
/// (`GET /v1/replication/bundle`), received aside and renamed when whole.
fn provision_from_leader(leader: &str, token: &str, data: &Path) -> Result<(), Failure> {
    let failed = |e: &dyn std::fmt::Display| {
        Failure::Other(format!(
            "cannot provision {} from the leader {leader}: {e}",
            data.display()
        ))
    };
    let answer = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(10))
        .build()
        .get(&format!(
            "{}/v1/replication/bundle",
            leader.trim_end_matches('/')
        ))
        .set("authorization", &format!("Bearer {token}"))
        .call();
    let reader = match answer {
        Ok(r) => r.into_reader(),
        Err(ureq::Error::Status(status, r)) => {
            let text = r.into_string().unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(failed(&format!("the leader answered {status}: {message}")));
        }
        Err(e) => return Err(failed(&e)),
    };
    if data.exists() {
        std::fs::remove_dir(data).map_err(|e| failed(&e))?;
    }
    let pb = progress_bar(0, "provision");
    cairn_server::bundle::read_bundle(reader, data, &mut |n| pb.set_position(n))
        .map_err(|e| failed(&e))?;
    pb.finish_and_clear();
    tracing::info!(leader, "provisioned from the leader");
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Serves `svc` on `listen` until SIGTERM or SIGINT, then closes the workspace.
fn run_server(
    rt: &tokio::runtime::Runtime,
    svc: cairn_server::Service,
    data: &Path,
    listen: &str,
    what: &str,
) -> Result<(), Failure> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen))
        .map_err(|e| Failure::Other(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Other(format!("cannot read the bound address: {e}")))?;
    let url = format!("http://{addr}");
    // Signal handlers first: a SIGTERM right after the URL is printed is a clean shutdown.
    let (mut term, mut int) = rt
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(|e| Failure::Other(format!("cannot install signal handlers: {e}")))?;
    let url_file = data.join(backend::SERVER_ADDR_FILE);
    let _ = std::fs::write(&url_file, format!("{url}\n"));
    // Not `println!`: a daemon whose stdout is closed goes on serving.
    let _ =
        writeln!(std::io::stdout(), "listening on {url}").and_then(|_| std::io::stdout().flush());
    tracing::info!(%url, workspace = %svc.workspace().id(), "{what}");
    let ws = svc.workspace().clone();
    let result = rt.block_on(async move {
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        };
        let r = cairn_server::serve(svc.clone(), listener, shutdown).await;
        // A follower (a mirror's, or a former leader's after a handoff) holds the workspace:
        // stop it before closing, so that the store's writer is joined.
        svc.stop_follower().await;
        ws.close().await;
        r
    });
    let _ = std::fs::remove_file(&url_file);
    eprintln!("stopped");
    result.map_err(|e| Failure::Other(format!("server failed: {e}")))
}

fn rebuild(cli: &Cli) -> Result<(), Failure> {
    if cli.server.is_some() {
        let b = backend(cli, Open::Read)?;
        let Backend::Remote(r) = &b else {
            unreachable!("--server given")
        };
        let resp = r.stream("POST", "/v1/rebuild", &[], Some(serde_json::json!({})));
        return resp.map(|_| ()).map_err(Failure::from);
    }
    let data = data_dir(&cli.data);
    let machine = cairn::KernelMachine(cairn::kernel::Kernel::new());
    let pb = progress_bar(0, "rebuild");
    let report = cairn_store::Store::rebuild(&data, &machine, &mut |p| {
        pb.set_length(p.total);
        pb.set_position(p.done);
    })
    .map_err(|e| backend::open_failure(&data, cairn::Error::Store(e)))?;
    pb.finish_and_clear();
    if cli.json {
        print_json(&serde_json::json!({
            "entries": report.entries,
            "head_offset": report.head.offset,
            "head_hash": report.head.hash.to_string(),
        }));
    } else {
        println!(
            "rebuilt the projection from {} entries (head {} {})",
            report.entries, report.head.offset, report.head.hash
        );
    }
    Ok(())
}

/// `recover --accept-wal-loss`: accepts a recorded WAL damage and logs the acceptance.
fn recover(cli: &Cli) -> Result<(), Failure> {
    if cli.server.is_some() {
        return Err(Failure::Usage(
            "recover runs in local mode, on the machine that holds the workspace, with the \
             server stopped (a damaged workspace does not open, so no server can serve it)"
                .into(),
        ));
    }
    let data = data_dir(&cli.data);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the runtime: {e}")))?;
    let opts = cairn::Options {
        actor: backend::LOCAL_ACTOR.into(),
        daemons: cairn::Daemons::Off,
        ..Default::default()
    };
    let (damage, recorded) = rt
        .block_on(cairn::Workspace::accept_wal_loss(&data, opts))
        .map_err(|e| backend::open_failure(&data, e))?;
    if cli.json {
        print_json(&serde_json::json!({
            "recovered_offset": damage.recovered_offset,
            "lost_commits": damage.lost_commits,
            "lost_through_offset": damage.lost_through_offset,
            "file": damage.file,
            "byte": damage.byte,
            "reason": damage.reason,
            "quarantine": damage.quarantine,
            "recorded_at": recorded,
        }));
    } else {
        println!(
            "accepted the loss of {} commit(s) after db/{} byte {} ({}); the workspace \
             continues from offset {}; the acceptance is recorded at offset {}",
            damage.lost_commits,
            damage.file,
            damage.byte,
            damage.reason,
            damage.recovered_offset,
            recorded
        );
        if let Some(q) = &damage.quarantine {
            println!(
                "copies of the damaged WAL files: {}",
                data.join(q).display()
            );
        }
    }
    Ok(())
}

fn backup(cli: &Cli, dir: &Path) -> Result<(), Failure> {
    if dir.exists() {
        return Err(Failure::Other(format!(
            "backup target {} already exists",
            dir.display()
        )));
    }
    let b = backend(cli, Open::Quiet)?;
    let result = match &b {
        Backend::Local { svc, .. } => svc
            .workspace()
            .store()
            .backup(dir)
            .map(|_| ())
            .map_err(|e| Failure::from(ApiError::from(e))),
        Backend::Remote(r) => receive(r, "/v1/backup", serde_json::json!({}), dir, "backup"),
    };
    b.close();
    result?;
    // Report from the backup itself, the same way in both modes.
    let v = backend::report_closed(dir)?;
    if cli.json {
        print_json(&v);
    } else {
        println!(
            "backup written to {} at offset {}: digest {} (vault.key is not included)",
            dir.display(),
            v["applied_offset"],
            v["digest"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// Receives a bundle stream into `dir` (with a byte counter on a terminal).
fn receive(r: &Remote, path: &str, body: Value, dir: &Path, what: &str) -> Result<(), Failure> {
    let reader = r.stream("POST", path, &[], Some(body))?;
    let pb = progress_bar(0, what);
    if !pb.is_hidden() {
        pb.set_style(
            ProgressStyle::with_template("{msg:>8} {bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
    }
    cairn_server::bundle::read_bundle(reader, dir, &mut |n| pb.set_position(n))
        .map_err(|e| Failure::Other(format!("{what} failed: {e}")))?;
    pb.finish_and_clear();
    Ok(())
}

fn replay(cli: &Cli, until: u64, into: &Path) -> Result<(), Failure> {
    if until == 0 {
        return Err(Failure::Usage(
            "--until 0: offsets start at 1 (--until N replays the log up to offset N)".into(),
        ));
    }
    if into.exists() {
        return Err(Failure::Other(format!(
            "replay target {} already exists",
            into.display()
        )));
    }
    let b = backend(cli, Open::Read)?;
    let result = match &b {
        Backend::Local { svc, .. } => {
            let ws = svc.workspace();
            let pb = progress_bar(until, "replay");
            let r = ws
                .view()
                .map_err(|e| Failure::Other(e.to_string()))
                .and_then(|view| {
                    cairn::tools::replay(
                        &view,
                        ws.data_dir(),
                        ws.store().machine().0.clone(),
                        until,
                        into,
                        &mut |p| {
                            pb.set_length(p.total);
                            pb.set_position(p.done);
                        },
                    )
                    .map_err(|e| match &e {
                        cairn::Error::Store(s) if s.is_integrity() => {
                            Failure::Integrity(e.to_string())
                        }
                        _ => Failure::Other(e.to_string()),
                    })
                });
            pb.finish_and_clear();
            r.map(|_| ())
        }
        Backend::Remote(r) => receive(
            r,
            "/v1/replay",
            serde_json::json!({ "until": until }),
            into,
            "replay",
        ),
    };
    b.close();
    result?;
    // Report from the new workspace itself, the same way in both modes, without opening it
    // as a leader (which would resume a change the replay cut at N).
    let v = backend::report_closed(into)?;
    if cli.json {
        print_json(&v);
    } else {
        println!(
            "replayed to offset {} into {}: digest {}",
            v["applied_offset"],
            into.display(),
            v["digest"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn audit(cli: &Cli) -> Result<(), Failure> {
    let b = backend(cli, Open::Read)?;
    let result = match &b {
        Backend::Local { svc, .. } => {
            let pb = progress_bar(0, "audit");
            let r = cairn::tools::audit_verify(svc.workspace(), &mut |p| {
                pb.set_length(p.total);
                pb.set_position(p.done);
            });
            pb.finish_and_clear();
            r.map(|rep| serde_json::to_value(rep).unwrap_or_default())
                .map_err(|e| Failure::from(ApiError::from(e)))
        }
        Backend::Remote(r) => r.call(&Request::AuditVerify).map_err(Failure::from),
    };
    b.close();
    let v = result?;
    if cli.json {
        print_json(&v);
    } else {
        println!(
            "ok: {} entries verified (head {} {}); the projection matches a full replay (digest {})",
            v["entries"],
            v["head_offset"],
            v["head_hash"].as_str().unwrap_or_default(),
            v["digest"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn tail(cli: &Cli, from: Option<u64>) -> Result<(), Failure> {
    let b = backend(cli, Open::Read)?;
    let out = std::io::stdout();
    let print_line = |line: &str| -> bool {
        let mut o = out.lock();
        writeln!(o, "{line}").and_then(|_| o.flush()).is_ok()
    };
    match &b {
        Backend::Local { rt, svc } => {
            let ws = svc.workspace().clone();
            let from = from.unwrap_or(ws.applied() + 1).max(1);
            rt.block_on(async {
                let mut sub = ws
                    .subscribe(from)
                    .map_err(|e| Failure::Other(e.to_string()))?;
                loop {
                    let e = tokio::select! {
                        e = sub.next() => e.map_err(|e| Failure::Other(e.to_string()))?,
                        _ = tokio::signal::ctrl_c() => return Ok::<(), Failure>(()),
                    };
                    let line = cairn_server::service::entry_json(&e).to_string();
                    if !print_line(&line) {
                        return Ok(());
                    }
                }
            })?;
        }
        Backend::Remote(r) => {
            let mut query = vec![];
            if let Some(f) = from {
                query.push(("from", f.to_string()));
            }
            let reader = r.stream("GET", "/v1/log/tail", &query, None)?;
            for line in std::io::BufReader::new(reader).lines() {
                let line = line.map_err(|e| Failure::Other(format!("the stream broke: {e}")))?;
                if !print_line(&line) {
                    break;
                }
            }
        }
    }
    b.close();
    Ok(())
}
