//! The projection's keyspace as the domain sees it: reads and writes of byte keys in named
//! spaces. `cairn-store` implements these over RocksDB (with an overlay for the batch being
//! built); the kernel's `decide` and `apply` are written against them, so the same code runs on
//! the leader, on mirrors, in rebuild and in replay.

use std::fmt;

/// A keyspace of the projection. Each is its own RocksDB column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Lifecycle state: packages, resources, features, changes, ...; keys are `<table>/<...>`.
    State,
    /// The drive item tree.
    Drive,
}

impl Space {
    /// Every space, in digest order.
    pub const ALL: [Space; 2] = [Space::State, Space::Drive];

    /// The column family name (also what the digest covers under).
    pub fn name(self) -> &'static str {
        match self {
            Space::State => "state",
            Space::Drive => "drive",
        }
    }
}

/// Reading the projection failed underneath (IO or corruption): never a rejection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state read failed: {message}")]
pub struct StateError {
    message: String,
    corrupt: bool,
}

impl StateError {
    /// The storage underneath failed (an IO error).
    pub fn io(message: impl Into<String>) -> Self {
        StateError {
            message: message.into(),
            corrupt: false,
        }
    }

    /// What was read is damaged: a storage checksum failed, or a record does not decode.
    pub fn corrupt(message: impl Into<String>) -> Self {
        StateError {
            message: message.into(),
            corrupt: true,
        }
    }

    /// Whether this is corruption (an integrity failure) rather than IO.
    pub fn is_corrupt(&self) -> bool {
        self.corrupt
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Read access to the projection at one consistent point.
pub trait StateRead {
    /// The value at `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Visits every `(key, value)` whose key starts with `prefix`, in key order, until `visit`
    /// returns `false`.
    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError>;

    /// Visits every `(key, value)` whose key starts with `prefix` and is not below `from`, in
    /// key order, until `visit` returns `false`: a listing resumes after a cursor, or jumps
    /// past a subtree, without visiting the keys before. The default filters
    /// [`StateRead::scan_prefix`]; stores override it with a seek.
    fn scan_prefix_from(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        self.scan_prefix(space, prefix, &mut |k, v| k < from || visit(k, v))
    }
}

/// Write access to the projection, used by `apply`. Writes are visible to later reads through
/// the same handle and are committed together with the entries that caused them.
pub trait StateWrite: StateRead {
    /// Sets `key` to `value`.
    fn put(&mut self, space: Space, key: &[u8], value: &[u8]);
    /// Removes `key` (a no-op when absent).
    fn delete(&mut self, space: Space, key: &[u8]);
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
