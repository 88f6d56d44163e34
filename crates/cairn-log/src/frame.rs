//! Length-delimited frames: how entries travel in a byte stream (the replication stream) and sit
//! in a file (the golden files): a 4-byte big-endian length, then that many bytes of an encoded
//! entry. A length over [`ENTRY_BYTES_MAX`] is refused before anything is allocated.

use crate::error::DecodeError;
use crate::limits::{ENTRY_BYTES_MAX, FRAME_HEADER_BYTES};

/// Appends one frame holding `bytes` to `out`.
pub fn write_frame(bytes: &[u8], out: &mut Vec<u8>) {
    assert!(
        bytes.len() <= ENTRY_BYTES_MAX,
        "frame body over ENTRY_BYTES_MAX"
    );
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Why a framed buffer does not split into frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer ends inside a frame.
    #[error("truncated frame at byte {at}: {needed} bytes needed, {available} available")]
    Truncated {
        /// Byte position of the frame's start.
        at: usize,
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// A frame declares more bytes than any entry may have.
    #[error("frame at byte {at} declares {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Byte position of the frame's start.
        at: usize,
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl From<FrameError> for DecodeError {
    fn from(e: FrameError) -> Self {
        DecodeError::Malformed(e.to_string())
    }
}

/// Takes the next frame off the front of `buf`: `Ok(None)` when `buf` is empty.
pub fn next_frame<'a>(buf: &mut &'a [u8], at: usize) -> Result<Option<&'a [u8]>, FrameError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Truncated {
            at,
            needed: FRAME_HEADER_BYTES,
            available: buf.len(),
        });
    }
    let (header, rest) = buf.split_at(FRAME_HEADER_BYTES);
    let len = u32::from_be_bytes(header.try_into().expect("header is 4 bytes")) as usize;
    if len > ENTRY_BYTES_MAX {
        return Err(FrameError::TooLarge {
            at,
            len,
            max: ENTRY_BYTES_MAX,
        });
    }
    if rest.len() < len {
        return Err(FrameError::Truncated {
            at,
            needed: FRAME_HEADER_BYTES + len,
            available: buf.len(),
        });
    }
    let (body, rest) = rest.split_at(len);
    *buf = rest;
    Ok(Some(body))
}

/// Splits a whole buffer into frames.
pub fn split_frames(mut buf: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let total = buf.len();
    let mut out = Vec::new();
    loop {
        let at = total - buf.len();
        match next_frame(&mut buf, at)? {
            Some(frame) => out.push(frame),
            None => return Ok(out),
        }
    }
}
