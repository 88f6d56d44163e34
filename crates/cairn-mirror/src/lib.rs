//! Replication: a mirror holds its leader's log bit for bit and the projection folded from it.
//!
//! - [`protocol`]: sans-IO: the follower's hello and the leader's admission, the stream's
//!   frames, the follower's checks of every frame, and the bisection that names where two logs
//!   diverge.
//! - [`leader`]: the leader's stream (backlog from the log, then live, with heartbeats) and
//!   its table of mirrors.
//! - [`tail`]: sans-IO: the latest entry frames, read once for every stream at the head.
//! - [`follower`]: the follower's thread (connect, check, apply in batches, acknowledge,
//!   reconnect with backoff and jitter).
//!
//! The HTTP routes that carry this live in `cairn-server`; `docs/replication.md` is the
//! protocol and the runbooks.

// `cairn::Error` carries the kernel's rejection by value, as the runtime does (see there).
#![allow(clippy::result_large_err)]

pub mod follower;
pub mod leader;
pub mod protocol;
pub mod tail;

pub use follower::{
    start, FollowState, FollowStatus, FollowerHandle, FollowerOptions, StatusWatch,
};
pub use leader::{open_stream, MirrorRecord, Mirrors, StreamError};
pub use protocol::{FollowerHello, Refusal, PROTOCOL_VERSION};
