//! What the store is generic over: the state machine that decides commands and applies entries.
//!
//! The kernel provides the real one; [`crate::testing`] has small ones for tests and benches.

use std::ops::Range;

use cairn_log::{StateError, StateRead, StateWrite, StoredEntry};

/// An event produced by `decide`, before it becomes an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Event kind, e.g. `package.installed.v1`.
    pub kind: String,
    /// Encoded event.
    pub payload: Vec<u8>,
}

/// What `decide` may know beyond state: where its events will land and when. This is the only
/// way time enters the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecideCtx {
    /// Offset the command's first event will get.
    pub next_offset: u64,
    /// Epoch the events will carry.
    pub epoch: u64,
    /// Leader wall clock, ms since the Unix epoch.
    pub time_ms: u64,
}

/// Why `decide` produced no events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideError<R> {
    /// The command is wrong for the current state; nothing is written.
    Rejected(R),
    /// Reading state failed underneath.
    State(StateError),
}

impl<R> From<StateError> for DecideError<R> {
    fn from(e: StateError) -> Self {
        DecideError::State(e)
    }
}

/// Applying an entry failed. This stops the writer: state must be the fold of the log, so an
/// entry that cannot be applied can never be skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply entry {offset} of kind {kind:?}: {reason}")]
pub struct ApplyError {
    /// The entry's offset.
    pub offset: u64,
    /// The entry's kind.
    pub kind: String,
    /// What went wrong (unknown kind, undecodable payload, state read failure).
    pub reason: String,
}

impl ApplyError {
    /// An apply error about `entry`.
    pub fn new(entry: &StoredEntry, reason: impl Into<String>) -> Self {
        Self {
            offset: entry.offset,
            kind: entry.kind.clone(),
            reason: reason.into(),
        }
    }
}

/// The domain plugged into the store.
///
/// `apply` must be a pure function of the state it reads and the entry: no clock, randomness,
/// environment or unordered iteration. Then the state is the fold of the log, and every replica
/// and every rebuild reaches the same digest.
pub trait StateMachine: Send + Sync + 'static {
    /// A request to change state.
    type Command: Send + 'static;
    /// Why a command was refused.
    type Rejection: Send + std::fmt::Debug + 'static;

    /// Version of the projection's layout. When it differs from the one stored, the store
    /// rebuilds the projection from the log at open.
    fn projection_version(&self) -> u64;

    /// Validates `command` against `state` and yields the events it causes (possibly none).
    fn decide(
        &self,
        state: &dyn StateRead,
        ctx: &DecideCtx,
        command: &Self::Command,
    ) -> Result<Vec<Event>, DecideError<Self::Rejection>>;

    /// Applies one entry to state.
    fn apply(&self, state: &mut dyn StateWrite, entry: &StoredEntry) -> Result<(), ApplyError>;

    /// The offsets an earlier command carrying idempotency key `key` committed, if the
    /// projection still remembers it. A command whose key is remembered is not decided again:
    /// its caller gets the original offsets and nothing is written. The default remembers
    /// nothing.
    fn idempotent(
        &self,
        state: &dyn StateRead,
        key: &str,
    ) -> Result<Option<Range<u64>>, StateError> {
        let _ = (state, key);
        Ok(None)
    }

    /// The writer's lane for `command`. The default puts every command in the foreground.
    fn lane(&self, command: &Self::Command) -> Lane {
        let _ = command;
        Lane::Foreground
    }

    /// Checked at open, against the committed projection, before anything else runs: a
    /// machine refuses data it cannot serve (e.g. a schema newer than it supports).
    fn check_open(&self, state: &dyn StateRead) -> Result<(), CheckOpenError> {
        let _ = state;
        Ok(())
    }
}

/// Which of the writer's two lanes a command waits in.
///
/// Foreground commands are decided as they come. Bulk commands keep their order among
/// themselves, but while foreground commands keep coming a group that holds foreground
/// commands decides none of them, and a group without at most `BULK_GROUP_COMMANDS_MAX`: a
/// bulk load then cannot make a foreground command wait for groups of its size, nor for its
/// decides. A bulk command may therefore be committed after a foreground command submitted
/// later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Decided as soon as the writer takes it (the default).
    Foreground,
    /// Decided in bounded numbers per group while foreground commands are about.
    Bulk,
}

/// Why [`StateMachine::check_open`] refuses a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOpenError {
    /// The machine cannot serve this data (say why, and what to do).
    Incompatible(String),
    /// Reading the projection failed (IO or corruption).
    State(StateError),
}
