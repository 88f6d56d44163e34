//! Named limits of the log format. Every bounded thing in an entry is bounded here, in one place.
//!
//! These are part of the format's contract: a decoder refuses anything over them before
//! allocating, so arbitrary bytes can never make a reader allocate more than `ENTRY_BYTES_MAX`.

/// Largest encoded entry, envelope included (4 MiB).
pub const ENTRY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Longest event kind, e.g. `package.installed.v1`.
pub const KIND_BYTES_MAX: usize = 128;

/// Longest actor name recorded in an entry's meta.
pub const ACTOR_BYTES_MAX: usize = 256;

/// Longest idempotency key recorded in an entry's meta.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// Length prefix of one frame in a framed stream or file (see [`crate::frame`]).
pub const FRAME_HEADER_BYTES: usize = 4;
