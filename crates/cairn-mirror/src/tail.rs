//! The leader's tail: the entry frames of its latest commits, read from the log once and sent
//! as they are to every stream at its head, instead of each stream reading the same entries.
//!
//! Sans-IO: [`Tail::read`] says what a stream that needs an offset does (send frames the tail
//! holds, wait while another stream reads for everyone, read the log itself because it is
//! behind the tail, or read for everyone); the leader's streams (`leader.rs`) do the reading,
//! the waiting and the sending. Entries come from the log in every case: the tail only holds
//! what one stream read there, framed once, shared as [`Bytes`] without copies.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::Frame;

/// Bytes of entry frames the tail keeps (the oldest segments go first; the newest is always
/// kept). A stream further behind reads the log itself.
pub const TAIL_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The frames of consecutive entries, as sent on the stream, and when they end at the leader's
/// head, a heartbeat that marks it (the follower then knows their last command is whole).
#[derive(Clone, Debug)]
pub struct Segment {
    first: u64,
    /// Where each entry's frame starts in `frames` (entry `first + i` at `starts[i]`).
    starts: Vec<usize>,
    frames: Bytes,
    /// Whether `frames` ends with a heartbeat whose head is the last entry.
    marked: bool,
}

/// The leader's head is a segment's last entry (the end of a commit): the heartbeat that says
/// so follows its entry frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadMark {
    /// The epoch of that entry.
    pub epoch: u64,
    /// The leader's clock (ms since the Unix epoch).
    pub time_ms: u64,
}

impl Segment {
    /// The entry frames of `entries` (stored bytes, with their offsets), which must be
    /// consecutive and at least one, followed by a heartbeat at the last one when `head`
    /// says it is the leader's head.
    pub fn frame(entries: &[(u64, Vec<u8>)], head: Option<HeadMark>) -> Segment {
        let first = entries
            .first()
            .map(|(o, _)| *o)
            .expect("a segment holds an entry");
        let mut frames = Vec::with_capacity(entries.iter().map(|(_, b)| 5 + b.len()).sum());
        let mut starts = Vec::with_capacity(entries.len());
        for (i, (offset, bytes)) in entries.iter().enumerate() {
            assert_eq!(
                *offset,
                first + i as u64,
                "a segment's entries are consecutive"
            );
            starts.push(frames.len());
            Frame::write_entry(bytes, &mut frames);
        }
        Self::of_frames(first, starts, frames, head)
    }

    /// The segment of entry frames already written one after the other into `frames`, entry
    /// `first + i` from `starts[i]` (at least one), followed by a heartbeat at the last one
    /// when `head` says it is the leader's head.
    pub fn of_frames(
        first: u64,
        starts: Vec<usize>,
        mut frames: Vec<u8>,
        head: Option<HeadMark>,
    ) -> Segment {
        assert!(
            starts.first() == Some(&0) && starts.is_sorted(),
            "a segment holds an entry and its frames start at 0, in order"
        );
        if let Some(head) = head {
            Frame::Heartbeat {
                head_offset: first + starts.len() as u64 - 1,
                head_epoch: head.epoch,
                time_ms: head.time_ms,
            }
            .write_to(&mut frames);
        }
        Segment {
            first,
            starts,
            frames: Bytes::from(frames),
            marked: head.is_some(),
        }
    }

    /// Whether its frames end with a heartbeat at its last entry.
    pub fn marked(&self) -> bool {
        self.marked
    }

    /// Its first entry's offset.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Its last entry's offset.
    pub fn last(&self) -> u64 {
        self.first + self.starts.len() as u64 - 1
    }

    /// Every frame, as sent.
    pub fn frames(&self) -> Bytes {
        self.frames.clone()
    }

    /// The frames from entry `offset` (which it holds) to its end.
    fn frames_from(&self, offset: u64) -> Bytes {
        self.frames
            .slice(self.starts[(offset - self.first) as usize]..)
    }
}

/// What a stream that needs the entries from `next` on (committed ones) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailRead {
    /// Send these frames: the entries from `next` to `last`.
    Hit {
        /// The frames, as sent.
        frames: Bytes,
        /// The last entry in them.
        last: u64,
        /// Whether they end with a heartbeat at `last` ([`Segment::marked`]).
        marked: bool,
    },
    /// Another stream is reading the log at the tail's end for everyone: wait until it
    /// publishes (or gives up), then ask again.
    Wait,
    /// `next` is older than anything the tail holds: read it from the log for this stream.
    Behind,
    /// Read the log from `next` for every stream, then [`Tail::publish`] what was read (or
    /// [`Tail::abandon`] if the read failed). Until then other streams at the head wait.
    Read,
}

/// The latest entry frames, contiguous, at most [`TAIL_BYTES_MAX`] of them (and one segment).
#[derive(Debug, Default)]
pub struct Tail {
    segments: VecDeque<Segment>,
    bytes: usize,
    /// The offset a stream is reading from for everyone.
    reading: Option<u64>,
}

impl Tail {
    /// What a stream that needs `next` does.
    pub fn read(&mut self, next: u64) -> TailRead {
        let held = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first <= next && next <= s.last());
        if let Some(segment) = held {
            return TailRead::Hit {
                frames: segment.frames_from(next),
                last: segment.last(),
                marked: segment.marked,
            };
        }
        let first = self.segments.front().map(|s| s.first).or(self.reading);
        if first.is_some_and(|first| next < first) {
            return TailRead::Behind;
        }
        if self.reading.is_some() {
            return TailRead::Wait;
        }
        // The tail ends before `next` (or holds nothing): this stream reads for everyone. If
        // what it will publish would not continue the tail, the tail starts again there.
        if self.segments.back().is_none_or(|s| s.last() + 1 != next) {
            self.segments.clear();
            self.bytes = 0;
        }
        self.reading = Some(next);
        TailRead::Read
    }

    /// Adds what the stream told to [`TailRead::Read`] read (from that offset on), and lets
    /// the waiting streams go on; drops the oldest segments past [`TAIL_BYTES_MAX`].
    pub fn publish(&mut self, segment: Segment) {
        assert_eq!(
            self.reading.take(),
            Some(segment.first),
            "a segment is published by the stream told to read it"
        );
        self.bytes += segment.frames.len();
        self.segments.push_back(segment);
        while self.bytes > TAIL_BYTES_MAX && self.segments.len() > 1 {
            let oldest = self.segments.pop_front().expect("more than one segment");
            self.bytes -= oldest.frames.len();
        }
    }

    /// The stream told to read gave up (the read failed, or the stream ended): another one
    /// reads instead.
    pub fn abandon(&mut self) {
        self.reading = None;
    }

    /// The offsets held, `(first, last)`.
    pub fn held(&self) -> Option<(u64, u64)> {
        Some((self.segments.front()?.first, self.segments.back()?.last()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..=to).map(|o| (o, vec![o as u8; 3])).collect()
    }

    /// The frames a stream reading `from..=to` from the log itself would send.
    fn framed(from: u64, to: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, bytes) in entries(from, to) {
            Frame::write_entry(&bytes, &mut out);
        }
        out
    }

    fn read_for_everyone(t: &mut Tail, from: u64, to: u64) {
        assert_eq!(t.read(from), TailRead::Read);
        t.publish(Segment::frame(&entries(from, to), None));
    }

    #[test]
    fn streams_at_the_head_get_the_frames_one_of_them_read() {
        let mut t = Tail::default();
        // The first stream at the head reads for everyone; the second waits meanwhile.
        assert_eq!(t.read(10), TailRead::Read);
        assert_eq!(t.read(10), TailRead::Wait);
        t.publish(Segment::frame(&entries(10, 14), None));
        for next in [10, 12, 14] {
            let TailRead::Hit { frames, last, .. } = t.read(next) else {
                panic!("the tail holds {next}");
            };
            assert_eq!(last, 14);
            assert_eq!(
                frames[..],
                framed(next, 14)[..],
                "the same bytes as from the log"
            );
        }
        // The next commit: read once more, and the tail goes on.
        read_for_everyone(&mut t, 15, 16);
        assert_eq!(t.held(), Some((10, 16)));
        assert!(matches!(t.read(15), TailRead::Hit { last: 16, .. }));
    }

    #[test]
    fn a_segment_at_the_head_ends_with_a_heartbeat_there_for_every_stream() {
        let mut t = Tail::default();
        assert_eq!(t.read(10), TailRead::Read);
        let head = HeadMark {
            epoch: 3,
            time_ms: 77,
        };
        t.publish(Segment::frame(&entries(10, 12), Some(head)));
        let mut beat = Vec::new();
        Frame::Heartbeat {
            head_offset: 12,
            head_epoch: 3,
            time_ms: 77,
        }
        .write_to(&mut beat);
        for next in [10, 12] {
            let TailRead::Hit {
                frames,
                last,
                marked,
            } = t.read(next)
            else {
                panic!("the tail holds {next}");
            };
            assert_eq!((last, marked), (12, true));
            assert_eq!(frames[..], [framed(next, 12), beat.clone()].concat()[..]);
        }
    }

    #[test]
    fn a_stream_behind_the_tail_reads_the_log_itself() {
        let mut t = Tail::default();
        read_for_everyone(&mut t, 10, 14);
        assert_eq!(t.read(9), TailRead::Behind);
        assert_eq!(t.read(1), TailRead::Behind);
        // Also while the first read is out.
        let mut t = Tail::default();
        assert_eq!(t.read(10), TailRead::Read);
        assert_eq!(t.read(3), TailRead::Behind);
    }

    #[test]
    fn a_read_that_failed_is_made_again_by_the_next_stream() {
        let mut t = Tail::default();
        assert_eq!(t.read(10), TailRead::Read);
        assert_eq!(t.read(10), TailRead::Wait);
        t.abandon();
        assert_eq!(t.read(10), TailRead::Read);
        t.publish(Segment::frame(&entries(10, 11), None));
        assert_eq!(t.held(), Some((10, 11)));
    }

    #[test]
    fn a_stream_past_the_tail_starts_it_again_where_it_is() {
        let mut t = Tail::default();
        read_for_everyone(&mut t, 10, 14);
        // Entries 15..=19 went to a stream that read them itself: the tail cannot continue
        // from 20 without them, so it starts again at 20.
        read_for_everyone(&mut t, 20, 21);
        assert_eq!(t.held(), Some((20, 21)));
        assert_eq!(t.read(14), TailRead::Behind);
    }

    #[test]
    fn the_tail_keeps_at_most_its_limit_of_bytes_and_always_its_newest_segment() {
        let mut t = Tail::default();
        // Three of these frames (5 bytes of frame header each) fill the tail.
        let big = vec![7u8; TAIL_BYTES_MAX / 3 - 5];
        for offset in 1..=5 {
            assert_eq!(t.read(offset), TailRead::Read);
            t.publish(Segment::frame(&[(offset, big.clone())], None));
            assert!(t.bytes <= TAIL_BYTES_MAX);
        }
        assert_eq!(t.held(), Some((3, 5)));
        assert_eq!(t.read(2), TailRead::Behind);
        // A segment over the limit alone is kept: it is what the streams at the head need.
        let quarter = vec![1u8; TAIL_BYTES_MAX / 4];
        let huge: Vec<(u64, Vec<u8>)> = (6..=10).map(|o| (o, quarter.clone())).collect();
        assert_eq!(t.read(6), TailRead::Read);
        t.publish(Segment::frame(&huge, None));
        assert_eq!(t.held(), Some((6, 10)));
    }

    #[test]
    #[should_panic(expected = "published by the stream told to read it")]
    fn only_the_read_that_was_asked_for_is_published() {
        let mut t = Tail::default();
        assert_eq!(t.read(10), TailRead::Read);
        t.publish(Segment::frame(&entries(11, 12), None));
    }
}
