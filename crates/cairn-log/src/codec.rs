//! The one place that knows how entries and events become bytes: bincode 2 (standard config,
//! varint integers) through serde. Swapping the encoding means changing this module and bumping
//! the entry `format`, never editing what is already written.
//!
//! Decoding is strict: the format byte must be known, the size within
//! [`ENTRY_BYTES_MAX`](crate::limits::ENTRY_BYTES_MAX), every byte consumed, and the bytes must be
//! exactly the canonical encoding of what they decode to. With the hash covering every decoded
//! field, that makes any change to stored bytes detectable.

use bincode::config::{self, Config};
use bincode::enc::write::Writer;
use bincode::error::EncodeError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entry::{StoredEntry, FORMAT_LATEST};
use crate::error::DecodeError;
use crate::limits::ENTRY_BYTES_MAX;

fn config() -> impl Config {
    config::standard().with_limit::<ENTRY_BYTES_MAX>()
}

/// Encodes an entry.
pub fn encode(entry: &StoredEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + entry.payload.len() + entry.kind.len());
    encode_into(entry, &mut out);
    out
}

/// Encodes an entry, appending to `out`.
pub fn encode_into(entry: &StoredEntry, out: &mut Vec<u8>) {
    debug_assert!(
        entry.format == FORMAT_LATEST,
        "only the latest format is written"
    );
    bincode::serde::encode_into_std_write(entry, out, config())
        // Invariant: a StoredEntry is plain fields, strings and byte strings; writing to a Vec
        // cannot fail.
        .expect("a StoredEntry always encodes into a Vec");
}

/// Decodes an entry, refusing anything that is not the canonical encoding of a known format.
pub fn decode(bytes: &[u8]) -> Result<StoredEntry, DecodeError> {
    let Some(&format) = bytes.first() else {
        return Err(DecodeError::Empty);
    };
    if bytes.len() > ENTRY_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: ENTRY_BYTES_MAX,
        });
    }
    // Every format ever written gets an arm here; format 1 is the layout of `StoredEntry`.
    match format {
        1 => {}
        found => {
            return Err(DecodeError::UnknownFormat {
                found,
                latest: FORMAT_LATEST,
            })
        }
    }
    let (entry, used): (StoredEntry, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - used));
    }
    let mut check = CompareWriter { expected: bytes };
    bincode::serde::encode_into_writer(&entry, &mut check, config())
        .map_err(|_| DecodeError::NonCanonical)?;
    if !check.expected.is_empty() {
        return Err(DecodeError::NonCanonical);
    }
    Ok(entry)
}

/// An entry with its canonical encoding: what a store writes under the entry's offset.
///
/// Built only by encoding an entry ([`EncodedEntry::new`]) or by strictly decoding bytes
/// ([`EncodedEntry::decode`]), so the bytes are always exactly the canonical encoding of the
/// entry. A mirror keeps the bytes it received and stores them as they are, instead of encoding
/// again what it has just decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEntry {
    entry: StoredEntry,
    bytes: Vec<u8>,
}

impl EncodedEntry {
    /// Encodes `entry`.
    pub fn new(entry: StoredEntry) -> Self {
        let bytes = encode(&entry);
        Self { entry, bytes }
    }

    /// Decodes `bytes` strictly (as [`decode`]) and keeps them.
    pub fn decode(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        let entry = decode(&bytes)?;
        Ok(Self { entry, bytes })
    }

    /// The entry.
    pub fn entry(&self) -> &StoredEntry {
        &self.entry
    }

    /// Its canonical encoding.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The entry and its encoding.
    pub fn into_parts(self) -> (StoredEntry, Vec<u8>) {
        (self.entry, self.bytes)
    }
}

impl From<StoredEntry> for EncodedEntry {
    fn from(entry: StoredEntry) -> Self {
        Self::new(entry)
    }
}

/// A bincode writer that compares what is written against expected bytes, without allocating.
struct CompareWriter<'a> {
    expected: &'a [u8],
}

impl Writer for CompareWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        match self.expected.strip_prefix(bytes) {
            Some(rest) => {
                self.expected = rest;
                Ok(())
            }
            None => Err(EncodeError::Other(
                "bytes differ from the canonical encoding",
            )),
        }
    }
}

/// Encodes an event payload (or any value) with the log's codec.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())
}

/// Decodes an event payload (or any value) with the log's codec; every byte must be consumed.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - used));
    }
    Ok(value)
}
