//! The entry envelope: what one record of the log holds, and how its hash is computed.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::EntryError;
use crate::limits::{ACTOR_BYTES_MAX, ENTRY_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, KIND_BYTES_MAX};

/// The newest envelope format this build writes. Decoders accept every format ever written.
pub const FORMAT_LATEST: u8 = 1;

/// A blake3 hash of an entry (or all zeros: the `prev` of offset 1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

/// Lowercase hex of any bytes (hashes, ciphertext, token secrets in output).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Hash {
    /// The `prev` of the first entry.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// Who did what, on whose behalf: recorded with every entry, covered by its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The token or process name that issued the command.
    pub actor: String,
    /// The change this entry belongs to, if any.
    pub change: Option<Uuid>,
    /// The command that produced this entry (several entries may share one command).
    pub command: Uuid,
    /// The idempotency key the command carried, if any.
    pub idempotency_key: Option<String>,
}

/// One record of the log. Field order is the encoding order; see `docs/log-format.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Envelope version; 1 is the only one written so far.
    pub format: u8,
    /// Dense position in the log, starting at 1.
    pub offset: u64,
    /// Leader epoch that wrote the entry.
    pub epoch: u64,
    /// Leader wall clock at decide time, in ms since the Unix epoch. Informational only.
    pub time_ms: u64,
    /// Hash of the entry at `offset - 1` (all zeros for offset 1).
    pub prev: Hash,
    /// Hash of this entry, see [`StoredEntry::compute_hash`].
    pub hash: Hash,
    /// Who and why.
    pub meta: Meta,
    /// Event kind, e.g. `package.installed.v1`.
    pub kind: String,
    /// The event, encoded with [`crate::codec`].
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// An entry before it has a place in the log: everything but offset, prev and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryDraft {
    /// Leader epoch.
    pub epoch: u64,
    /// Leader wall clock at decide time.
    pub time_ms: u64,
    /// Who and why.
    pub meta: Meta,
    /// Event kind.
    pub kind: String,
    /// Encoded event.
    pub payload: Vec<u8>,
}

impl EntryDraft {
    /// Checks the draft against the format's limits; the error names the field.
    pub fn validate(&self) -> Result<(), EntryError> {
        validate_fields(&self.kind, &self.meta, self.payload.len())
    }

    /// Places the draft at `offset` after an entry whose hash is `prev`, computing its hash.
    pub fn seal(self, offset: u64, prev: Hash) -> Result<StoredEntry, EntryError> {
        self.validate()?;
        if offset == 0 {
            return Err(EntryError::ZeroOffset);
        }
        let mut entry = StoredEntry {
            format: FORMAT_LATEST,
            offset,
            epoch: self.epoch,
            time_ms: self.time_ms,
            prev,
            hash: Hash::ZERO,
            meta: self.meta,
            kind: self.kind,
            payload: self.payload,
        };
        entry.hash = entry.compute_hash();
        Ok(entry)
    }
}

/// Largest payload: the entry limit less room for the largest envelope around it.
pub const PAYLOAD_BYTES_MAX: usize =
    ENTRY_BYTES_MAX - 256 - KIND_BYTES_MAX - ACTOR_BYTES_MAX - IDEMPOTENCY_KEY_BYTES_MAX;

/// Checks an entry's fields against the format's limits; the error names the field.
pub(crate) fn validate_fields(
    kind: &str,
    meta: &Meta,
    payload_len: usize,
) -> Result<(), EntryError> {
    check_kind(kind)?;
    if meta.actor.len() > ACTOR_BYTES_MAX {
        return Err(EntryError::TooLong {
            field: "meta.actor",
            len: meta.actor.len(),
            max: ACTOR_BYTES_MAX,
        });
    }
    if let Some(key) = &meta.idempotency_key {
        if key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(EntryError::TooLong {
                field: "meta.idempotency_key",
                len: key.len(),
                max: IDEMPOTENCY_KEY_BYTES_MAX,
            });
        }
    }
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err(EntryError::TooLong {
            field: "payload",
            len: payload_len,
            max: PAYLOAD_BYTES_MAX,
        });
    }
    Ok(())
}

/// Kinds are `[a-z0-9._:-]{1,128}`.
fn check_kind(kind: &str) -> Result<(), EntryError> {
    if kind.is_empty() || kind.len() > KIND_BYTES_MAX {
        return Err(EntryError::TooLong {
            field: "kind",
            len: kind.len(),
            max: KIND_BYTES_MAX,
        });
    }
    let ok = kind
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-'));
    if !ok {
        return Err(EntryError::BadKind(kind.to_owned()));
    }
    Ok(())
}

impl StoredEntry {
    /// The hash this entry should carry: blake3 over the canonical hash input
    /// (`docs/log-format.md`, "Hash input"): every field except `hash`, integers as fixed
    /// 8-byte little endian, strings and byte strings length-prefixed, options tagged.
    pub fn compute_hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&[self.format]);
        h.update(&self.prev.0);
        h.update(&self.offset.to_le_bytes());
        h.update(&self.epoch.to_le_bytes());
        h.update(&self.time_ms.to_le_bytes());
        hash_bytes(&mut h, self.meta.actor.as_bytes());
        match &self.meta.change {
            None => h.update(&[0]),
            Some(id) => h.update(&[1]).update(id.as_bytes()),
        };
        h.update(self.meta.command.as_bytes());
        match &self.meta.idempotency_key {
            None => h.update(&[0]),
            Some(key) => {
                h.update(&[1]);
                hash_bytes(&mut h, key.as_bytes());
                &mut h
            }
        };
        hash_bytes(&mut h, self.kind.as_bytes());
        hash_bytes(&mut h, &self.payload);
        Hash(*h.finalize().as_bytes())
    }

    /// The entry's position as a chain head.
    pub fn head(&self) -> crate::Head {
        crate::Head {
            offset: self.offset,
            hash: self.hash,
            epoch: self.epoch,
        }
    }
}

fn hash_bytes(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}
