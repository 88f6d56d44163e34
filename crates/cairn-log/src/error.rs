//! Error types of the log. A *refusal* (the caller handed in a wrong entry) is distinct from
//! *corruption* (what is stored is wrong) and from a *storage failure* (IO).

use crate::entry::Hash;

/// A draft entry breaks the format's rules; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A field is over its limit.
    #[error("entry field {field} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// The field's name, e.g. `payload`.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Its limit.
        max: usize,
    },
    /// A kind has characters outside `[a-z0-9._:-]`.
    #[error("entry kind {0:?} has characters outside [a-z0-9._:-]")]
    BadKind(String),
    /// Offsets start at 1.
    #[error("offset 0 does not exist; offsets start at 1")]
    ZeroOffset,
}

/// Bytes that do not decode to an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Zero bytes.
    #[error("entry is empty")]
    Empty,
    /// A format byte this build does not know.
    #[error("unknown entry format {found} (this build reads formats 1 to {latest})")]
    UnknownFormat {
        /// The format byte found.
        found: u8,
        /// The newest format this build reads.
        latest: u8,
    },
    /// More bytes than any entry may have.
    #[error("entry is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not decode.
    #[error("entry does not decode: {0}")]
    Malformed(String),
    /// Bytes left over after the entry.
    #[error("entry has {0} trailing bytes")]
    Trailing(usize),
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("entry encoding is not canonical")]
    NonCanonical,
}

/// An entry does not fit the chain where it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The entry's offset is not the next one.
    #[error("expected offset {expected}, found offset {found}")]
    OffsetMismatch {
        /// The next offset of the chain.
        expected: u64,
        /// The entry's offset.
        found: u64,
    },
    /// The entry's `prev` is not the hash of the entry before it.
    #[error("entry {offset} links to prev {found}, but entry {} has hash {expected}", offset - 1)]
    PrevMismatch {
        /// The entry's offset.
        offset: u64,
        /// The hash of the entry before it.
        expected: Hash,
        /// The entry's `prev`.
        found: Hash,
    },
    /// The entry's stored hash is not the hash of its contents.
    #[error("entry {offset} has stored hash {stored}, but its contents hash to {computed}")]
    HashMismatch {
        /// The entry's offset.
        offset: u64,
        /// Its stored hash.
        stored: Hash,
        /// The hash of its contents.
        computed: Hash,
    },
    /// Epochs never go backwards along the chain.
    #[error("entry {offset} has epoch {epoch}, older than epoch {prev_epoch} before it")]
    EpochRegressed {
        /// The entry's offset.
        offset: u64,
        /// The epoch of the entry before it.
        prev_epoch: u64,
        /// The entry's epoch.
        epoch: u64,
    },
    /// The entry breaks the format's limits.
    #[error("entry {offset} is invalid: {error}")]
    Invalid {
        /// The entry's offset.
        offset: u64,
        /// What is wrong.
        error: EntryError,
    },
}

/// Why a stored entry is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    /// Its bytes do not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// It decodes but does not fit the chain.
    #[error("{0}")]
    Chain(#[from] ChainError),
    /// It is missing (a gap in the log).
    #[error("entry is missing")]
    Missing,
    /// It is stored under a key that is not its offset.
    #[error("entry is stored under offset {key}")]
    WrongKey {
        /// The key's offset.
        key: u64,
    },
}

/// Errors of a [`crate::LogStore`].
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The entries handed to `append` do not continue the chain; nothing was written.
    #[error("append refused: {0}")]
    Refused(#[from] ChainError),
    /// A stored entry is corrupt.
    #[error("corrupt entry at offset {offset}: {reason}")]
    Corrupt {
        /// The offset of the first corrupt entry found.
        offset: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// The requested offset was compacted away (or is 0, which never exists).
    #[error("offset {requested} is not retained; the first retained offset is {first}")]
    Compacted {
        /// The offset asked for.
        requested: u64,
        /// The first offset still retained.
        first: u64,
    },
    /// The storage underneath failed.
    #[error("storage failure: {0}")]
    Storage(String),
}
