//! cairn's lifecycle domain, sans-IO: commands, events, `decide` (validate against state) and
//! pure `apply`, over the `StateRead`/`StateWrite` keyspace shared with the store.
//!
//! - [`Kernel::decide`] validates a [`Command`] and yields [`Event`]s or a [`Rejection`].
//! - [`Kernel::apply`] folds one log entry into state; it reads no clock, randomness or
//!   environment (enforced by this crate's `clippy.toml`), so replay is deterministic.
//! - [`change`] holds the task engine's rules; the runtime drives changes by asking
//!   [`ChangeRecord::next_action`] and reporting outcomes as commands.
//! - [`query`] reads the projection for the runtime, the CLI and the server.
//! - [`echo`] cuts user input repeated in messages to a bounded length.

// Rejections name their entity in full (for messages) and events carry whole records; both
// are moved once per command, so their size is not worth boxing.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

pub mod change;
pub mod command;
pub mod echo;
pub mod event;
pub mod ext;
mod kernel;
pub mod keys;
pub mod manifest;
pub mod model;
pub mod query;
pub mod records;

pub use change::{
    Action, ChangeKind, ChangeRecord, ChangeStatus, Step, Task, TaskNote, TaskOutcome, TaskStatus,
};
pub use command::{Command, Entity, Rejection};
pub use event::{Event, EventError, HookOutcome, HookResult, HookSummary};
pub use ext::{ExtRead, ExtWrite, Extension, Migration, Schema};
pub use kernel::{
    builtin_schema, ApplyFailure, DecideError, Kernel, OpenError, Subsystem, PROJECTION_VERSION,
    SCHEMA_COMPAT_VERSION, SCHEMA_NAME, SCHEMA_VERSION,
};
pub use manifest::Manifest;
