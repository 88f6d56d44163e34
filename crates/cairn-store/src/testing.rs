//! Small state machines and helpers for tests, benches, the demo and the crash and power-cut
//! tests.
//!
//! [`KvMachine`] is a tiny key/value domain that follows the kernel's rules (a delete of a key
//! that does not exist is rejected, never an upsert); [`NullMachine`] appends events and keeps
//! no state, for measuring the log path alone.

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;

use cairn_log::{codec, Meta, Space, StateWrite, StoredEntry};
use uuid::Uuid;

use crate::machine::{ApplyError, DecideCtx, DecideError, Event, StateMachine};
use crate::{CommandError, Durability, Options, Store};

/// Commands of [`KvMachine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    /// Sets a key. Keys starting with `d/` live in the drive space, others in state; a key
    /// starting with `bulk/` makes it a bulk command (`Lane::Bulk`).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Sets several keys in one command (one event per key, committed together).
    SetMany(Vec<(String, Vec<u8>)>),
    /// Deletes a key; rejected if it does not exist.
    Delete {
        /// The key.
        key: String,
    },
    /// Emits an arbitrary event as it is (used to test what happens with unknown kinds).
    Emit(Event),
}

/// Rejections of [`KvMachine`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvRejection {
    /// Delete of a missing key.
    #[error("key {0:?} does not exist")]
    Missing(String),
    /// Empty key.
    #[error("key is empty")]
    EmptyKey,
}

/// A key/value state machine. Its projection version is configurable so tests can force a
/// rebuild at open.
#[derive(Clone, Debug)]
pub struct KvMachine {
    /// Reported projection version.
    pub version: u64,
}

impl Default for KvMachine {
    fn default() -> Self {
        Self { version: 1 }
    }
}

const KIND_SET: &str = "kv.set.v1";
const KIND_DELETED: &str = "kv.deleted.v1";

fn locate(key: &str) -> (Space, Vec<u8>) {
    match key.strip_prefix("d/") {
        Some(rest) => (Space::Drive, format!("kv/{rest}").into_bytes()),
        None => (Space::State, format!("kv/{key}").into_bytes()),
    }
}

/// Where [`KvMachine`] keeps `key`, for tests that read state directly.
pub fn kv_location(key: &str) -> (Space, Vec<u8>) {
    locate(key)
}

fn set_event(key: &str, value: &[u8]) -> Event {
    Event {
        kind: KIND_SET.into(),
        payload: codec::encode_value(&(key, value)).expect("a pair of strings encodes"),
    }
}

impl StateMachine for KvMachine {
    type Command = KvCommand;
    type Rejection = KvRejection;

    fn projection_version(&self) -> u64 {
        self.version
    }

    /// A set of a key starting with `bulk/` is a bulk command; every other is foreground.
    fn lane(&self, command: &KvCommand) -> crate::Lane {
        match command {
            KvCommand::Set { key, .. } if key.starts_with("bulk/") => crate::Lane::Bulk,
            _ => crate::Lane::Foreground,
        }
    }

    fn decide(
        &self,
        state: &dyn cairn_log::StateRead,
        _ctx: &DecideCtx,
        command: &KvCommand,
    ) -> Result<Vec<Event>, DecideError<KvRejection>> {
        match command {
            KvCommand::Set { key, value } => {
                if key.is_empty() {
                    return Err(DecideError::Rejected(KvRejection::EmptyKey));
                }
                Ok(vec![set_event(key, value)])
            }
            KvCommand::SetMany(pairs) => {
                if pairs.iter().any(|(k, _)| k.is_empty()) {
                    return Err(DecideError::Rejected(KvRejection::EmptyKey));
                }
                Ok(pairs.iter().map(|(k, v)| set_event(k, v)).collect())
            }
            KvCommand::Delete { key } => {
                let (space, k) = locate(key);
                if state.get(space, &k)?.is_none() {
                    return Err(DecideError::Rejected(KvRejection::Missing(key.clone())));
                }
                Ok(vec![Event {
                    kind: KIND_DELETED.into(),
                    payload: codec::encode_value(key).expect("a string encodes"),
                }])
            }
            KvCommand::Emit(event) => Ok(vec![event.clone()]),
        }
    }

    fn apply(&self, state: &mut dyn StateWrite, entry: &StoredEntry) -> Result<(), ApplyError> {
        let bad = |e: cairn_log::DecodeError| ApplyError::new(entry, e.to_string());
        match entry.kind.as_str() {
            KIND_SET => {
                let (key, value): (String, Vec<u8>) =
                    codec::decode_value(&entry.payload).map_err(bad)?;
                let (space, k) = locate(&key);
                state.put(space, &k, &value);
            }
            KIND_DELETED => {
                let key: String = codec::decode_value(&entry.payload).map_err(bad)?;
                let (space, k) = locate(&key);
                state.delete(space, &k);
            }
            other => {
                return Err(ApplyError::new(
                    entry,
                    format!("unknown event kind {other}"),
                ))
            }
        }
        Ok(())
    }
}

/// A machine that appends the events it is given and keeps no state.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullMachine;

impl StateMachine for NullMachine {
    type Command = Event;
    type Rejection = Infallible;

    fn projection_version(&self) -> u64 {
        1
    }

    fn decide(
        &self,
        _state: &dyn cairn_log::StateRead,
        _ctx: &DecideCtx,
        command: &Event,
    ) -> Result<Vec<Event>, DecideError<Infallible>> {
        Ok(vec![command.clone()])
    }

    fn apply(&self, _state: &mut dyn StateWrite, _entry: &StoredEntry) -> Result<(), ApplyError> {
        Ok(())
    }
}

/// A meta for test commands: actor `test`, a command id derived from `n`.
pub fn meta(n: u64) -> Meta {
    Meta {
        actor: "test".into(),
        change: None,
        command: Uuid::from_u128(n as u128),
        idempotency_key: None,
    }
}

/// The value the crash writer stores under `key`, so a checker can recompute it.
pub fn crash_value(key: &str) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(64, b'.');
    v
}

/// The child side of the crash test and demo: opens `data` with `Durability::Sync` and
/// appends from `threads` threads until killed (or `max_entries` are written, or stdout is
/// closed), printing `<offset> <key>` for every acknowledged command, flushed at once.
pub fn crash_writer(data: &Path, threads: usize, max_entries: u64) -> Result<(), String> {
    crash_writer_with(data, threads, max_entries, Durability::Sync)
}

/// [`crash_writer`] under any `durability`: the power-cut test's negative control writes
/// with `Durability::None` to show that its checker finds what a missing fsync loses.
pub fn crash_writer_with(
    data: &Path,
    threads: usize,
    max_entries: u64,
    durability: Durability,
) -> Result<(), String> {
    let opts = Options {
        durability,
        ..Options::default()
    };
    let store = Store::open(data, KvMachine::default(), opts).map_err(|e| e.to_string())?;
    let start = store.applied();
    let per_thread = max_entries / threads as u64 + 1;
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = &store;
            s.spawn(move || {
                let stdout = std::io::stdout();
                for j in 0..per_thread {
                    let key = format!("s{start}-t{t}-{j}");
                    let value = crash_value(&key);
                    match store.execute(
                        meta(j),
                        KvCommand::Set {
                            key: key.clone(),
                            value,
                        },
                    ) {
                        Ok(c) => {
                            let mut out = stdout.lock();
                            if writeln!(out, "{} {key}", c.offsets.start)
                                .and_then(|_| out.flush())
                                .is_err()
                            {
                                return; // the parent is gone
                            }
                        }
                        Err(CommandError::Rejected(r)) => panic!("crash writer rejected: {r}"),
                        Err(CommandError::Store(e)) => panic!("crash writer failed: {e}"),
                    }
                }
            });
        }
    });
    Ok(())
}

/// The parent side of the crash and power-cut tests: reads a crash writer child's
/// `<offset> <key>` lines, SIGKILLs it once it has acknowledged `target` entries (it writes
/// continuously from several threads, so the kill lands mid-write), then reads what it printed
/// before it died (still in the pipe). Calls `ack` with every complete line; returns how many
/// there were, or an error if the child exited before `target`.
pub fn kill_after_acks(
    child: &mut std::process::Child,
    target: usize,
    ack: &mut dyn FnMut(&str),
) -> Result<usize, String> {
    use std::io::BufRead;
    let stdout = child
        .stdout
        .take()
        .ok_or("the child's stdout is not piped")?;
    let mut out = std::io::BufReader::new(stdout);
    let mut line = String::new();
    let mut seen = 0;
    while seen < target {
        line.clear();
        if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err(format!("the child exited early: {:?}", child.wait()));
        }
        ack(&line);
        seen += 1;
    }
    child.kill().map_err(|e| e.to_string())?; // SIGKILL
    child.wait().map_err(|e| e.to_string())?;
    loop {
        line.clear();
        if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(seen);
        }
        // A line cut short by the kill was never acknowledged.
        if line.ends_with('\n') {
            ack(&line);
            seen += 1;
        }
    }
}
