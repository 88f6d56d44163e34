//! The replication protocol, sans-IO: the hello a follower sends and the leader admits or
//! refuses, the frames of the stream, and the follower's checks of every frame. Nothing here
//! touches a socket or a clock; `leader.rs` and `follower.rs` move the bytes.
//!
//! A stream is a sequence of [`cairn_log::frame`] frames (4-byte big-endian length, then the
//! body). A body is a tag byte and its fields, integers big-endian:
//!
//! | tag | frame | fields |
//! |---|---|---|
//! | 1 | hello | workspace id (16 bytes), head offset, head epoch, schema version, schema compat (u32 each) |
//! | 2 | entry | the `StoredEntry` bytes, exactly as stored |
//! | 3 | heartbeat | head offset, head epoch, leader time (ms since the Unix epoch) |
//! | 4 | caught up | head offset |
//!
//! The first frame is the leader's hello; then entries from the offset the follower asked for,
//! in order, with heartbeats and a caught-up marker between them.

use cairn_log::{ChainCursor, ChainError, EncodedEntry, Hash, Head, StoredEntry, VerifiedEntry};
use uuid::Uuid;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

const TAG_HELLO: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_HEARTBEAT: u8 = 3;
const TAG_CAUGHT_UP: u8 = 4;

/// What a follower says when it connects (the query of `GET /v1/replication/stream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerHello {
    /// The workspace the follower holds.
    pub workspace_id: Uuid,
    /// The first offset it wants (its head + 1).
    pub from: u64,
    /// The hash of its entry `from - 1` ([`Hash::ZERO`] when `from` is 1).
    pub prev: Hash,
    /// The protocol version it speaks.
    pub protocol: u32,
    /// The `cairn` schema version its binary supports.
    pub schema: u32,
    /// Its binary's projection version (reported; each node folds with its own).
    pub projection: u64,
    /// The name it is shown under in the leader's status.
    pub name: String,
}

/// Longest follower name.
pub const MIRROR_NAME_BYTES_MAX: usize = 64;

impl FollowerHello {
    /// The hello as query parameters.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        vec![
            ("workspace", self.workspace_id.to_string()),
            ("from", self.from.to_string()),
            ("prev", self.prev.to_string()),
            ("protocol", self.protocol.to_string()),
            ("schema", self.schema.to_string()),
            ("projection", self.projection.to_string()),
            ("name", self.name.clone()),
        ]
    }

    /// Parses the hello from query parameters, naming the first one that is missing or wrong.
    pub fn from_query(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let need =
            |name: &str| get(name).ok_or_else(|| format!("query parameter {name} is missing"));
        let number = |name: &str| -> Result<u64, String> {
            let v = need(name)?;
            v.parse()
                .map_err(|_| format!("query parameter {name} is not a non-negative integer"))
        };
        let workspace_id = need("workspace")?
            .parse()
            .map_err(|_| "query parameter workspace is not a uuid".to_string())?;
        let prev = parse_hash(&need("prev")?)
            .ok_or_else(|| "query parameter prev is not 64 hex digits".to_string())?;
        let name = need("name")?;
        if name.is_empty()
            || name.len() > MIRROR_NAME_BYTES_MAX
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(format!(
                "query parameter name must be 1..={MIRROR_NAME_BYTES_MAX} of [A-Za-z0-9-_.:]"
            ));
        }
        let small = |name: &str| -> Result<u32, String> {
            u32::try_from(number(name)?).map_err(|_| format!("query parameter {name} is too large"))
        };
        Ok(Self {
            workspace_id,
            from: number("from")?.max(1),
            prev,
            protocol: small("protocol")?,
            schema: small("schema")?,
            projection: number("projection")?,
            name,
        })
    }
}

/// Parses 64 hex digits.
pub fn parse_hash(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Hash(out))
}

/// What the leader knows when it admits a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    /// Its workspace.
    pub workspace_id: Uuid,
    /// Its head.
    pub head: Head,
    /// The stored `cairn` schema version and compat version of its workspace.
    pub schema: u32,
    /// Compat version: the oldest binary that can fold its log.
    pub schema_compat: u32,
}

/// Why a leader refuses a follower (before any entry is sent).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The follower holds another workspace.
    #[error("this leader serves workspace {leader}; the mirror holds workspace {mirror}")]
    WrongWorkspace {
        /// The leader's workspace id.
        leader: Uuid,
        /// The follower's.
        mirror: Uuid,
    },
    /// The follower speaks another protocol version.
    #[error("the leader speaks replication protocol {leader}; the mirror speaks {mirror}")]
    Protocol {
        /// The leader's.
        leader: u32,
        /// The follower's.
        mirror: u32,
    },
    /// The follower's binary cannot fold the leader's log.
    #[error(
        "the leader's workspace needs schema version {compat} or newer (it is at {schema}); this \
         mirror's binary supports {mirror}: upgrade mirrors first, then the leader"
    )]
    MirrorTooOld {
        /// The leader's stored schema version.
        schema: u32,
        /// Its compat version.
        compat: u32,
        /// The follower binary's version.
        mirror: u32,
    },
    /// The follower has entries the leader does not: the leader lost entries or was restored
    /// from an older backup. A mirror is also its leader's witness, so it does not follow.
    #[error(
        "the mirror is ahead of its leader: the mirror holds offset {mirror_head}, the leader's \
         head is {leader_head}; the leader lost entries or was restored from an older backup"
    )]
    FollowerAhead {
        /// The follower's head offset.
        mirror_head: u64,
        /// The leader's.
        leader_head: u64,
    },
    /// The follower's entry `at` is not the leader's: their logs fork at or before `at`.
    #[error("the mirror's entry {at} is not the leader's: the logs diverged at or before it")]
    Diverged {
        /// The offset whose hashes differ (the follower finds the first differing one).
        at: u64,
        /// The leader's head offset.
        leader_head: u64,
    },
}

impl Refusal {
    /// The error code the leader answers with (HTTP 409, or 400 for the protocol).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::WrongWorkspace { .. } => "wrong_workspace",
            Refusal::Protocol { .. } => "protocol",
            Refusal::MirrorTooOld { .. } => "upgrade_mirror",
            Refusal::FollowerAhead { .. } => "follower_ahead",
            Refusal::Diverged { .. } => "diverged",
        }
    }
}

/// Decides whether the leader streams to `hello`. `prev_at` is the hash of the leader's entry
/// `hello.from - 1` (`None` when the leader has no such entry; [`Hash::ZERO`] for offset 0).
pub fn admit(
    leader: &LeaderView,
    hello: &FollowerHello,
    prev_at: Option<Hash>,
) -> Result<(), Refusal> {
    if hello.workspace_id != leader.workspace_id {
        return Err(Refusal::WrongWorkspace {
            leader: leader.workspace_id,
            mirror: hello.workspace_id,
        });
    }
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Refusal::Protocol {
            leader: PROTOCOL_VERSION,
            mirror: hello.protocol,
        });
    }
    if leader.schema_compat > hello.schema {
        return Err(Refusal::MirrorTooOld {
            schema: leader.schema,
            compat: leader.schema_compat,
            mirror: hello.schema,
        });
    }
    let mirror_head = hello.from - 1;
    if mirror_head > leader.head.offset {
        return Err(Refusal::FollowerAhead {
            mirror_head,
            leader_head: leader.head.offset,
        });
    }
    match prev_at {
        Some(hash) if hash == hello.prev => Ok(()),
        _ => Err(Refusal::Diverged {
            at: mirror_head,
            leader_head: leader.head.offset,
        }),
    }
}

/// A frame of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The leader's first frame.
    Hello {
        /// Its workspace.
        workspace_id: Uuid,
        /// Its head offset and epoch when the stream started.
        head_offset: u64,
        /// Epoch of the head.
        head_epoch: u64,
        /// Stored `cairn` schema version.
        schema: u32,
        /// Stored compat version.
        schema_compat: u32,
    },
    /// An entry, as stored (decoded by the follower).
    Entry(Vec<u8>),
    /// The leader is alive; its head now.
    Heartbeat {
        /// Head offset.
        head_offset: u64,
        /// Head epoch.
        head_epoch: u64,
        /// The leader's clock (ms since the Unix epoch), for lag in milliseconds.
        time_ms: u64,
    },
    /// Every entry up to `head_offset` has been sent.
    CaughtUp {
        /// The leader's head when the backlog ran out.
        head_offset: u64,
    },
}

impl Frame {
    /// The frame's body (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Frame::Hello {
                workspace_id,
                head_offset,
                head_epoch,
                schema,
                schema_compat,
            } => {
                out.push(TAG_HELLO);
                out.extend_from_slice(workspace_id.as_bytes());
                out.extend_from_slice(&head_offset.to_be_bytes());
                out.extend_from_slice(&head_epoch.to_be_bytes());
                out.extend_from_slice(&schema.to_be_bytes());
                out.extend_from_slice(&schema_compat.to_be_bytes());
            }
            Frame::Entry(bytes) => {
                out.reserve(1 + bytes.len());
                out.push(TAG_ENTRY);
                out.extend_from_slice(bytes);
            }
            Frame::Heartbeat {
                head_offset,
                head_epoch,
                time_ms,
            } => {
                out.push(TAG_HEARTBEAT);
                out.extend_from_slice(&head_offset.to_be_bytes());
                out.extend_from_slice(&head_epoch.to_be_bytes());
                out.extend_from_slice(&time_ms.to_be_bytes());
            }
            Frame::CaughtUp { head_offset } => {
                out.push(TAG_CAUGHT_UP);
                out.extend_from_slice(&head_offset.to_be_bytes());
            }
        }
        out
    }

    /// Appends the frame, length-prefixed, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        cairn_log::frame::write_frame(&self.encode(), out);
    }

    /// Appends an entry frame of `entry` (its stored bytes), length-prefixed, to `out`: the
    /// same bytes as `Frame::Entry(entry.to_vec()).write_to(out)`, without the copies.
    pub fn write_entry(entry: &[u8], out: &mut Vec<u8>) {
        let len = 1 + entry.len();
        assert!(
            len <= cairn_log::limits::ENTRY_BYTES_MAX,
            "frame body over ENTRY_BYTES_MAX"
        );
        out.reserve(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(TAG_ENTRY);
        out.extend_from_slice(entry);
    }

    /// Parses a frame body, naming what is wrong.
    pub fn decode(body: &[u8]) -> Result<Frame, String> {
        let (&tag, rest) = body.split_first().ok_or("an empty frame")?;
        let fixed = |n: usize| -> Result<&[u8], String> {
            if rest.len() == n {
                Ok(rest)
            } else {
                Err(format!(
                    "a frame of tag {tag} has {} bytes of fields, not {n}",
                    rest.len()
                ))
            }
        };
        let u64_at =
            |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at =
            |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        match tag {
            TAG_HELLO => {
                let b = fixed(16 + 8 + 8 + 4 + 4)?;
                Ok(Frame::Hello {
                    workspace_id: Uuid::from_bytes(b[..16].try_into().expect("16 bytes")),
                    head_offset: u64_at(b, 16),
                    head_epoch: u64_at(b, 24),
                    schema: u32_at(b, 32),
                    schema_compat: u32_at(b, 36),
                })
            }
            TAG_ENTRY => Ok(Frame::Entry(rest.to_vec())),
            TAG_HEARTBEAT => {
                let b = fixed(24)?;
                Ok(Frame::Heartbeat {
                    head_offset: u64_at(b, 0),
                    head_epoch: u64_at(b, 8),
                    time_ms: u64_at(b, 16),
                })
            }
            TAG_CAUGHT_UP => {
                let b = fixed(8)?;
                Ok(Frame::CaughtUp {
                    head_offset: u64_at(b, 0),
                })
            }
            other => Err(format!("unknown frame tag {other}")),
        }
    }
}

/// Why a follower refuses a frame. The frame is not applied; the connection is dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadFrame {
    /// The body is not a frame.
    #[error("a malformed frame while expecting offset {expected}: {reason}")]
    Malformed {
        /// The offset the follower expected next.
        expected: u64,
        /// What is wrong.
        reason: String,
    },
    /// The first frame was not the leader's hello, or a second hello came.
    #[error("{0}")]
    OutOfOrder(String),
    /// An entry does not decode.
    #[error("the entry expected at offset {expected} does not decode: {reason}")]
    Undecodable {
        /// The offset expected.
        expected: u64,
        /// Why.
        reason: String,
    },
    /// An entry does not continue this node's chain (offset, link, hash or epoch).
    #[error("{0}")]
    Chain(ChainError),
    /// The leader's hello is of another workspace.
    #[error("the leader's stream is of workspace {leader}; this mirror holds {mirror}")]
    WrongWorkspace {
        /// The leader's.
        leader: Uuid,
        /// This mirror's.
        mirror: Uuid,
    },
}

impl BadFrame {
    /// The offset the frame was refused at (the follower's next expected offset).
    pub fn offset(&self) -> Option<u64> {
        match self {
            BadFrame::Malformed { expected, .. } | BadFrame::Undecodable { expected, .. } => {
                Some(*expected)
            }
            BadFrame::Chain(e) => Some(chain_error_offset(e)),
            BadFrame::OutOfOrder(_) | BadFrame::WrongWorkspace { .. } => None,
        }
    }
}

fn chain_error_offset(e: &ChainError) -> u64 {
    match e {
        ChainError::OffsetMismatch { found, .. } => *found,
        ChainError::PrevMismatch { offset, .. }
        | ChainError::HashMismatch { offset, .. }
        | ChainError::EpochRegressed { offset, .. }
        | ChainError::Invalid { offset, .. } => *offset,
    }
}

/// What the follower does after a frame it accepted.
// A step is returned per frame and consumed at once: moving the entry costs less than boxing
// it, which would be one more allocation per entry.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The leader's hello checked out.
    Hello,
    /// Apply this entry (it continues the chain and verifies).
    Apply(VerifiedEntry),
    /// The leader cannot be followed: an entry this binary cannot fold (it is not applied).
    Unsupported {
        /// The entry's offset.
        offset: u64,
        /// The command it belongs to (`meta.command`).
        command: Uuid,
        /// What is missing.
        reason: String,
    },
    /// The leader's head (from a heartbeat or the caught-up marker); nothing to apply.
    LeaderHead {
        /// Head offset.
        offset: u64,
        /// The leader's clock, when a heartbeat said it.
        time_ms: Option<u64>,
        /// Whether the backlog has been sent (a caught-up marker).
        caught_up: bool,
    },
    /// The leader's head is behind this follower's: it lost entries (a witness refuses it).
    LeaderBehind {
        /// The leader's head offset.
        leader_head: u64,
        /// This follower's.
        mirror_head: u64,
    },
}

/// The follower's side of one connection: checks every frame against this node's chain.
#[derive(Clone, Debug)]
pub struct Follower {
    workspace_id: Uuid,
    chain: ChainCursor,
    hello: bool,
}

impl Follower {
    /// A follower of a connection that starts after `head` (this node's log head).
    pub fn new(workspace_id: Uuid, head: Head) -> Self {
        Self {
            workspace_id,
            chain: ChainCursor::new(head),
            hello: false,
        }
    }

    /// The last entry accepted (this node's head plus what was accepted on this connection).
    pub fn head(&self) -> Head {
        self.chain.head()
    }

    /// Checks one frame body. `understands` says whether this binary can fold an entry
    /// (`cairn_kernel::Kernel::understands`). A refused frame changes nothing.
    pub fn on_frame(
        &mut self,
        body: &[u8],
        understands: &dyn Fn(&StoredEntry) -> Result<(), String>,
    ) -> Result<Step, BadFrame> {
        let expected = self.chain.head().offset + 1;
        let frame =
            Frame::decode(body).map_err(|reason| BadFrame::Malformed { expected, reason })?;
        if !self.hello && !matches!(frame, Frame::Hello { .. }) {
            return Err(BadFrame::OutOfOrder(
                "the stream did not start with the leader's hello".into(),
            ));
        }
        match frame {
            Frame::Hello {
                workspace_id,
                head_offset,
                ..
            } => {
                if self.hello {
                    return Err(BadFrame::OutOfOrder("a second hello in one stream".into()));
                }
                if workspace_id != self.workspace_id {
                    return Err(BadFrame::WrongWorkspace {
                        leader: workspace_id,
                        mirror: self.workspace_id,
                    });
                }
                self.hello = true;
                Ok(self.behind(head_offset).unwrap_or(Step::Hello))
            }
            Frame::Entry(bytes) => {
                // The bytes received are kept: they are what the store writes.
                let entry = EncodedEntry::decode(bytes).map_err(|e| BadFrame::Undecodable {
                    expected,
                    reason: e.to_string(),
                })?;
                let entry = self.chain.check_encoded(entry).map_err(BadFrame::Chain)?;
                if let Err(reason) = understands(entry.entry()) {
                    return Ok(Step::Unsupported {
                        offset: entry.entry().offset,
                        command: entry.entry().meta.command,
                        reason,
                    });
                }
                // `check_encoded` verified its hash just above: hashing it again would double
                // the follower's hashing for nothing.
                self.chain
                    .advance_sealed(entry.entry())
                    .expect("an entry that passed the check advances the chain");
                Ok(Step::Apply(entry))
            }
            Frame::Heartbeat {
                head_offset,
                time_ms,
                ..
            } => Ok(self.behind(head_offset).unwrap_or(Step::LeaderHead {
                offset: head_offset,
                time_ms: Some(time_ms),
                caught_up: false,
            })),
            Frame::CaughtUp { head_offset } => {
                Ok(self.behind(head_offset).unwrap_or(Step::LeaderHead {
                    offset: head_offset,
                    time_ms: None,
                    caught_up: true,
                }))
            }
        }
    }

    /// `Some(LeaderBehind)` when the leader says its head is behind what this node holds.
    fn behind(&self, leader_head: u64) -> Option<Step> {
        let mirror_head = self.chain.head().offset;
        (leader_head < mirror_head).then_some(Step::LeaderBehind {
            leader_head,
            mirror_head,
        })
    }
}

/// Finds the first offset where two logs differ, given that they agree at `agree` (0 always
/// agrees) and differ at `differ` (> `agree`); `same(offset)` says whether both logs hold the
/// same entry there. A chained log that differs at some offset differs at every later one, so
/// this bisects in about log2(differ - agree) probes.
pub fn first_difference<E>(
    mut agree: u64,
    mut differ: u64,
    mut same: impl FnMut(u64) -> Result<bool, E>,
) -> Result<u64, E> {
    assert!(agree < differ, "bisect needs agree < differ");
    while differ - agree > 1 {
        let mid = agree + (differ - agree) / 2;
        if same(mid)? {
            agree = mid;
        } else {
            differ = mid;
        }
    }
    Ok(differ)
}

/// The header of the leader's stream answer (value `1`) that says it marks its head whenever
/// the stream has sent everything committed (a heartbeat at that offset follows the last
/// entry), so a follower may hold a command until it knows it is whole ([`Assembler`]). Behind
/// a leader without it (an earlier build), a follower applies what it holds whenever nothing
/// more has arrived or a heartbeat comes, as that build's followers did: it may then show part of a command, but a
/// write never waits for an idle heartbeat while mirrors are upgraded ahead of their leader.
pub const HEAD_MARKS_HEADER: &str = "cairn-head-marks";

/// The most bytes of one command a follower holds while waiting for the rest of it. A command
/// the kernel makes is far smaller (the largest, a drive migration, is bounded by
/// `DRIVE_MIGRATION_BYTES_MAX`); one larger than this (an embedder's extension events) is
/// applied in parts, with a warning naming its offsets, rather than held without bound.
pub const HELD_COMMAND_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Entries a follower accepted, held until the command they belong to is known to be whole,
/// sans-IO.
///
/// A leader commits all the entries of one command in one `WriteBatch`, so its readers never
/// see part of a command; a mirror applies whole commands only, however the stream's bytes
/// arrive. The entries of one command share `meta.command`, so the command of the last entry
/// received is whole once an entry of another command follows it, or once the leader marks its
/// head there: a heartbeat or caught-up marker whose head offset is that entry's (a leader's
/// head is always the end of a commit, and a leader marks it whenever it has sent everything
/// committed). Until then the entries are *open*: not applied, and dropped (asked for again)
/// if the stream ends.
#[derive(Debug)]
pub struct Assembler {
    whole: Vec<VerifiedEntry>,
    whole_bytes: usize,
    open: Vec<VerifiedEntry>,
    open_bytes: usize,
    open_bytes_max: usize,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::with_limit(HELD_COMMAND_BYTES_MAX)
    }
}

/// What [`Assembler::push`] did with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The entry is held with its command's other entries.
    Open,
    /// The command grew past the limit ([`HELD_COMMAND_BYTES_MAX`]): what was held of it is released
    /// as whole, from this offset to the entry just pushed.
    Split {
        /// The first offset of the part released.
        from: u64,
    },
}

impl Assembler {
    /// An assembler that holds at most `open_bytes_max` of one command
    /// ([`HELD_COMMAND_BYTES_MAX`] by default).
    pub fn with_limit(open_bytes_max: usize) -> Self {
        Self {
            whole: Vec::new(),
            whole_bytes: 0,
            open: Vec::new(),
            open_bytes: 0,
            open_bytes_max,
        }
    }

    /// Adds an accepted entry (entries come in offset order).
    pub fn push(&mut self, entry: VerifiedEntry) -> Held {
        self.next_command(&entry.entry().meta.command);
        self.open_bytes += entry.bytes().len();
        self.open.push(entry);
        if self.open_bytes < self.open_bytes_max {
            return Held::Open;
        }
        let from = self.open[0].entry().offset;
        self.close();
        Held::Split { from }
    }

    /// The next entry belongs to `command` (say so before an entry that is not pushed): the
    /// entries held are whole if they belong to another command.
    pub fn next_command(&mut self, command: &Uuid) {
        if self
            .open
            .last()
            .is_some_and(|last| last.entry().meta.command != *command)
        {
            self.close();
        }
    }

    /// The leader says its head is `offset`: the entries held are whole if the last is there.
    pub fn head_at(&mut self, offset: u64) {
        if self
            .open
            .last()
            .is_some_and(|last| last.entry().offset == offset)
        {
            self.close();
        }
    }

    /// Takes the entries held as whole without knowing it (behind a leader that sends no head
    /// marks: [`HEAD_MARKS_HEADER`]).
    pub fn release(&mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.whole.append(&mut self.open);
        self.whole_bytes += std::mem::take(&mut self.open_bytes);
    }

    /// Entries known to be whole commands, waiting to be taken.
    pub fn whole_len(&self) -> usize {
        self.whole.len()
    }

    /// Their bytes.
    pub fn whole_bytes(&self) -> usize {
        self.whole_bytes
    }

    /// The first offset held open (part of a command not known to be whole).
    pub fn first_open(&self) -> Option<u64> {
        self.open.first().map(|e| e.entry().offset)
    }

    /// Takes the entries of whole commands, in order: they end at the end of a command.
    pub fn take_whole(&mut self) -> Vec<VerifiedEntry> {
        self.whole_bytes = 0;
        std::mem::take(&mut self.whole)
    }
}

/// The header of the leader's stream answer that says how often it wants acknowledgements:
/// at most one per that many milliseconds (`0`: after every commit). A follower that finds no
/// such header (an older leader) acknowledges every commit.
pub const ACK_INTERVAL_HEADER: &str = "cairn-ack-interval-ms";
/// The acknowledgement interval of a leader whose writes do not wait for mirrors: a mirror
/// applying many small commits sends at most one acknowledgement per this many milliseconds
/// (the leader's `status` and `/metrics` see its offset that much later).
pub const ACK_INTERVAL_MS: u64 = 20;
/// The longest interval a follower accepts from a leader (one heartbeat: a leader's view of
/// its mirrors is never staler than its own heartbeats).
pub const ACK_INTERVAL_MS_MAX: u64 = crate::leader::HEARTBEAT_INTERVAL_MS;
const _: () = assert!(ACK_INTERVAL_MS > 0 && ACK_INTERVAL_MS <= ACK_INTERVAL_MS_MAX);

/// The acknowledgement interval a leader asks its followers for, in milliseconds: every commit
/// when a write waits for `sync_mirrors` mirrors (`--sync-mirrors`), so that coalescing never
/// delays a write; otherwise [`ACK_INTERVAL_MS`].
pub fn ack_interval_ms(sync_mirrors: usize) -> u64 {
    if sync_mirrors > 0 {
        0
    } else {
        ACK_INTERVAL_MS
    }
}

/// The interval a follower keeps to, from the leader's [`ACK_INTERVAL_HEADER`]: none or an
/// unreadable one is `0` (acknowledge every commit, what an older leader expects), and at
/// most [`ACK_INTERVAL_MS_MAX`].
pub fn parse_ack_interval(header: Option<&str>) -> std::time::Duration {
    let ms = header
        .and_then(|h| h.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(ACK_INTERVAL_MS_MAX);
    std::time::Duration::from_millis(ms)
}

/// What the acknowledger does now (see [`AckPacer::step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStep {
    /// Nothing to send: the leader has this head, or the last attempt failed and nothing
    /// woke the acknowledger since.
    Idle,
    /// Send an acknowledgement of this offset now.
    Send(u64),
    /// An acknowledgement is due at this instant (the interval since the last one ends then);
    /// decide again then, with the head as it is then.
    WaitUntil(std::time::Instant),
}

/// When a follower acknowledges, sans-IO (the caller passes the clock): at most one
/// acknowledgement per interval, for the latest head; the last head of a burst is always sent,
/// one interval after the one before at the latest. With a zero interval every head that
/// moved is sent at once.
///
/// A failed acknowledgement is not retried on a timer (a leader that is down would be called
/// in a loop): the next one goes when the acknowledger is woken again (a commit landed, a
/// heartbeat came), still at most one per interval.
#[derive(Clone, Debug)]
pub struct AckPacer {
    interval: std::time::Duration,
    /// The highest offset the leader took.
    acked: u64,
    /// When the last acknowledgement was sent (whether it got through or not).
    last_sent: Option<std::time::Instant>,
    /// The last one failed and nothing woke the acknowledger since.
    failed: bool,
}

impl AckPacer {
    /// A pacer that has sent nothing, keeping to `interval` (zero: every commit).
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            acked: 0,
            last_sent: None,
            failed: false,
        }
    }

    /// Keeps to `interval` from now on (each stream's leader says its own).
    pub fn set_interval(&mut self, interval: std::time::Duration) {
        self.interval = interval;
    }

    /// The highest offset the leader took.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The acknowledger was woken (a commit landed, the leader was heard): a failed
    /// acknowledgement may go again.
    pub fn woken(&mut self) {
        self.failed = false;
    }

    /// What to do, with this mirror's durably applied `head` at `now`.
    pub fn step(&self, head: u64, now: std::time::Instant) -> AckStep {
        if head <= self.acked || self.failed {
            return AckStep::Idle;
        }
        match self.last_sent.map(|at| at + self.interval) {
            Some(due) if due > now => AckStep::WaitUntil(due),
            _ => AckStep::Send(head),
        }
    }

    /// An acknowledgement of `offset` sent at `at` got through (`true`) or failed.
    pub fn sent(&mut self, offset: u64, at: std::time::Instant, through: bool) {
        self.last_sent = Some(at);
        if through {
            self.acked = self.acked.max(offset);
        } else {
            self.failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_log::{EntryDraft, Meta};
    use proptest::prelude::*;

    fn entry(offset: u64, prev: Hash, epoch: u64) -> StoredEntry {
        EntryDraft {
            epoch,
            time_ms: 1000 + offset,
            meta: Meta {
                actor: "test".into(),
                change: None,
                command: Uuid::from_u128(offset as u128),
                idempotency_key: None,
            },
            kind: "test.thing.v1".into(),
            payload: vec![offset as u8; 3],
        }
        .seal(offset, prev)
        .unwrap()
    }

    fn chain(n: u64) -> Vec<StoredEntry> {
        let mut out: Vec<StoredEntry> = Vec::new();
        for offset in 1..=n {
            let prev = out.last().map(|e| e.hash).unwrap_or(Hash::ZERO);
            out.push(entry(offset, prev, 1));
        }
        out
    }

    fn all(_: &StoredEntry) -> Result<(), String> {
        Ok(())
    }

    const WS: Uuid = Uuid::from_u128(7);

    fn hello(head_offset: u64) -> Vec<u8> {
        Frame::Hello {
            workspace_id: WS,
            head_offset,
            head_epoch: 1,
            schema: 3,
            schema_compat: 3,
        }
        .encode()
    }

    fn entry_frame(e: &StoredEntry) -> Vec<u8> {
        Frame::Entry(cairn_log::codec::encode(e)).encode()
    }

    /// What the follower hands on for `e`: the entry with its encoding.
    fn verified(e: &StoredEntry) -> VerifiedEntry {
        VerifiedEntry::verify(EncodedEntry::new(e.clone())).unwrap()
    }

    #[test]
    fn an_entry_written_in_place_is_the_entry_frame() {
        for entry in [vec![], vec![7], codec_bytes()] {
            let (mut framed, mut direct) = (Vec::new(), vec![0xaa]);
            Frame::Entry(entry.clone()).write_to(&mut framed);
            Frame::write_entry(&entry, &mut direct);
            assert_eq!(direct[1..], framed[..]);
        }
    }

    fn codec_bytes() -> Vec<u8> {
        cairn_log::codec::encode(&chain(1)[0])
    }

    #[test]
    fn every_frame_survives_encoding() {
        let frames = [
            Frame::Hello {
                workspace_id: WS,
                head_offset: 9,
                head_epoch: 2,
                schema: 3,
                schema_compat: 1,
            },
            Frame::Entry(vec![1, 2, 3]),
            Frame::Heartbeat {
                head_offset: 5,
                head_epoch: 1,
                time_ms: 77,
            },
            Frame::CaughtUp { head_offset: 5 },
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        }
        assert!(Frame::decode(&[]).unwrap_err().contains("empty"));
        assert!(Frame::decode(&[9])
            .unwrap_err()
            .contains("unknown frame tag 9"));
        assert!(Frame::decode(&[TAG_CAUGHT_UP, 1])
            .unwrap_err()
            .contains("not 8"));
    }

    #[test]
    fn a_follower_applies_a_chain_in_order_after_the_hello() {
        let log = chain(3);
        let mut f = Follower::new(WS, Head::EMPTY);
        assert_eq!(f.on_frame(&hello(3), &all).unwrap(), Step::Hello);
        for e in &log {
            assert_eq!(
                f.on_frame(&entry_frame(e), &all).unwrap(),
                Step::Apply(verified(e))
            );
        }
        assert_eq!(f.head(), log[2].head());
        assert_eq!(
            f.on_frame(&Frame::CaughtUp { head_offset: 3 }.encode(), &all)
                .unwrap(),
            Step::LeaderHead {
                offset: 3,
                time_ms: None,
                caught_up: true
            }
        );
    }

    #[test]
    fn entries_before_the_hello_another_workspace_and_a_second_hello_are_refused() {
        let log = chain(1);
        let mut f = Follower::new(WS, Head::EMPTY);
        assert!(matches!(
            f.on_frame(&entry_frame(&log[0]), &all),
            Err(BadFrame::OutOfOrder(_))
        ));
        let other = Frame::Hello {
            workspace_id: Uuid::from_u128(8),
            head_offset: 0,
            head_epoch: 0,
            schema: 3,
            schema_compat: 3,
        };
        assert!(matches!(
            f.on_frame(&other.encode(), &all),
            Err(BadFrame::WrongWorkspace { .. })
        ));
        f.on_frame(&hello(1), &all).unwrap();
        assert!(matches!(
            f.on_frame(&hello(1), &all),
            Err(BadFrame::OutOfOrder(_))
        ));
    }

    #[test]
    fn a_gap_a_bad_link_a_bad_hash_and_an_older_epoch_are_refused_with_their_offset() {
        let log = chain(3);
        let start = || {
            let mut f = Follower::new(WS, log[0].head());
            f.on_frame(&hello(3), &all).unwrap();
            f
        };
        // A gap: offset 3 after 1.
        let err = start().on_frame(&entry_frame(&log[2]), &all).unwrap_err();
        assert_eq!(err.offset(), Some(3), "{err}");
        // A bad link: an entry 2 that links elsewhere.
        let forged = entry(2, Hash([9; 32]), 1);
        let err = start().on_frame(&entry_frame(&forged), &all).unwrap_err();
        assert!(matches!(
            err,
            BadFrame::Chain(ChainError::PrevMismatch { offset: 2, .. })
        ));
        // A flipped payload byte: the hash no longer matches.
        let mut flipped = log[1].clone();
        flipped.payload[0] ^= 1;
        let err = start().on_frame(&entry_frame(&flipped), &all).unwrap_err();
        assert!(matches!(
            err,
            BadFrame::Chain(ChainError::HashMismatch { offset: 2, .. })
        ));
        // An epoch that goes back.
        let mut f = Follower::new(WS, entry(1, Hash::ZERO, 2).head());
        f.on_frame(&hello(3), &all).unwrap();
        let older = entry(2, entry(1, Hash::ZERO, 2).hash, 1);
        let err = f.on_frame(&entry_frame(&older), &all).unwrap_err();
        assert!(
            matches!(err, BadFrame::Chain(ChainError::EpochRegressed { .. })),
            "{err}"
        );
        // Bytes that are no entry.
        let err = start()
            .on_frame(&Frame::Entry(vec![1, 2, 3]).encode(), &all)
            .unwrap_err();
        assert!(
            matches!(err, BadFrame::Undecodable { expected: 2, .. }),
            "{err}"
        );
        // The refused frames changed nothing: the real entry 2 still applies.
        let mut f = start();
        let _ = f.on_frame(&entry_frame(&flipped), &all);
        assert!(matches!(
            f.on_frame(&entry_frame(&log[1]), &all),
            Ok(Step::Apply(_))
        ));
    }

    #[test]
    fn an_entry_this_binary_cannot_fold_is_not_applied() {
        let log = chain(2);
        let mut f = Follower::new(WS, Head::EMPTY);
        f.on_frame(&hello(2), &all).unwrap();
        f.on_frame(&entry_frame(&log[0]), &all).unwrap();
        let refuse = |e: &StoredEntry| Err(format!("no decoder for {}", e.kind));
        assert_eq!(
            f.on_frame(&entry_frame(&log[1]), &refuse).unwrap(),
            Step::Unsupported {
                offset: 2,
                command: log[1].meta.command,
                reason: "no decoder for test.thing.v1".into()
            }
        );
        assert_eq!(f.head(), log[0].head(), "the entry was not taken");
    }

    #[test]
    fn a_leader_whose_head_is_behind_the_follower_is_named() {
        let log = chain(5);
        let mut f = Follower::new(WS, log[4].head());
        assert_eq!(
            f.on_frame(&hello(3), &all).unwrap(),
            Step::LeaderBehind {
                leader_head: 3,
                mirror_head: 5
            }
        );
        let beat = Frame::Heartbeat {
            head_offset: 4,
            head_epoch: 1,
            time_ms: 0,
        };
        assert!(matches!(
            f.on_frame(&beat.encode(), &all).unwrap(),
            Step::LeaderBehind { .. }
        ));
    }

    fn leader(head: u64) -> LeaderView {
        LeaderView {
            workspace_id: WS,
            head: Head {
                offset: head,
                hash: Hash::ZERO,
                epoch: 1,
            },
            schema: 3,
            schema_compat: 3,
        }
    }

    fn follower_hello(from: u64, prev: Hash) -> FollowerHello {
        FollowerHello {
            workspace_id: WS,
            from,
            prev,
            protocol: PROTOCOL_VERSION,
            schema: 3,
            projection: 2,
            name: "m1".into(),
        }
    }

    #[test]
    fn the_leader_admits_only_a_follower_that_continues_its_log() {
        let h = Hash([4; 32]);
        assert_eq!(
            admit(
                &leader(10),
                &follower_hello(1, Hash::ZERO),
                Some(Hash::ZERO)
            ),
            Ok(())
        );
        assert_eq!(admit(&leader(10), &follower_hello(6, h), Some(h)), Ok(()));
        assert_eq!(admit(&leader(10), &follower_hello(11, h), Some(h)), Ok(()));
        assert_eq!(
            admit(&leader(10), &follower_hello(6, h), Some(Hash([5; 32]))),
            Err(Refusal::Diverged {
                at: 5,
                leader_head: 10
            })
        );
        assert_eq!(
            admit(&leader(10), &follower_hello(13, h), None),
            Err(Refusal::FollowerAhead {
                mirror_head: 12,
                leader_head: 10
            })
        );
        let mut other = follower_hello(1, Hash::ZERO);
        other.workspace_id = Uuid::from_u128(99);
        assert!(matches!(
            admit(&leader(10), &other, Some(Hash::ZERO)),
            Err(Refusal::WrongWorkspace { .. })
        ));
        let mut old = follower_hello(1, Hash::ZERO);
        old.schema = 2;
        let refused = admit(&leader(10), &old, Some(Hash::ZERO)).unwrap_err();
        assert!(refused
            .to_string()
            .contains("upgrade mirrors first, then the leader"));
        let mut future = follower_hello(1, Hash::ZERO);
        future.protocol = 2;
        assert_eq!(refused.code(), "upgrade_mirror");
        assert!(matches!(
            admit(&leader(10), &future, Some(Hash::ZERO)),
            Err(Refusal::Protocol { .. })
        ));
    }

    #[test]
    fn the_hello_survives_its_query_form_and_bad_values_are_named() {
        let h = follower_hello(6, Hash([0xab; 32]));
        let q = h.to_query();
        let get = |name: &str| q.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        assert_eq!(FollowerHello::from_query(get).unwrap(), h);
        let broken = |name: &'static str, value: &'static str| {
            let q = h.to_query();
            FollowerHello::from_query(move |k| {
                if k == name {
                    Some(value.to_string())
                } else {
                    q.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
                }
            })
            .unwrap_err()
        };
        assert!(broken("prev", "xyz").contains("prev"));
        assert!(broken("from", "-1").contains("from"));
        assert!(broken("workspace", "nope").contains("workspace"));
        assert!(broken("name", "a b").contains("name"));
    }

    const MS: std::time::Duration = std::time::Duration::from_millis(1);

    #[test]
    fn a_leader_whose_writes_wait_for_mirrors_asks_for_every_acknowledgement() {
        assert_eq!(ack_interval_ms(0), ACK_INTERVAL_MS);
        for sync in [1, 2, 5] {
            assert_eq!(ack_interval_ms(sync), 0, "--sync-mirrors {sync}");
        }
        // What the follower makes of the header: none (an older leader) or garbage is every
        // commit; a leader cannot make its mirrors stay silent longer than a heartbeat.
        assert_eq!(parse_ack_interval(None), std::time::Duration::ZERO);
        assert_eq!(parse_ack_interval(Some("soon")), std::time::Duration::ZERO);
        assert_eq!(parse_ack_interval(Some(" 20 ")), 20 * MS);
        assert_eq!(
            parse_ack_interval(Some("3600000")),
            ACK_INTERVAL_MS_MAX as u32 * MS
        );
        let leader_says = ack_interval_ms(0).to_string();
        assert_eq!(
            parse_ack_interval(Some(&leader_says)),
            ACK_INTERVAL_MS as u32 * MS
        );
    }

    #[test]
    fn with_no_interval_every_head_that_moved_is_acknowledged_at_once() {
        let t = std::time::Instant::now();
        let mut p = AckPacer::new(std::time::Duration::ZERO);
        assert_eq!(p.step(0, t), AckStep::Idle);
        for (head, at) in [(3, t), (4, t), (9, t + MS)] {
            assert_eq!(p.step(head, at), AckStep::Send(head));
            p.sent(head, at, true);
            assert_eq!(p.step(head, at), AckStep::Idle, "nothing new to say");
        }
        assert_eq!(p.acked(), 9);
    }

    #[test]
    fn a_burst_of_commits_costs_one_acknowledgement_per_interval_and_the_last_head_is_sent() {
        let t = std::time::Instant::now();
        let mut p = AckPacer::new(20 * MS);
        // The first one goes at once.
        assert_eq!(p.step(5, t), AckStep::Send(5));
        p.sent(5, t, true);
        // Commits land 1 ms apart: none is sent until the interval is over, ...
        for (i, head) in (6..=15).enumerate() {
            let now = t + (i as u32 + 1) * MS;
            assert_eq!(p.step(head, now), AckStep::WaitUntil(t + 20 * MS));
        }
        // ... then the head as it is then, once.
        assert_eq!(p.step(15, t + 20 * MS), AckStep::Send(15));
        p.sent(15, t + 20 * MS, true);
        assert_eq!(p.step(15, t + 21 * MS), AckStep::Idle);
        // A head that moves after a quiet spell goes at once.
        assert_eq!(p.step(16, t + 60 * MS), AckStep::Send(16));
    }

    #[test]
    fn an_interval_set_for_a_new_stream_applies_to_the_next_acknowledgement() {
        let t = std::time::Instant::now();
        let mut p = AckPacer::new(20 * MS);
        p.sent(5, t, true);
        assert_eq!(p.step(6, t + MS), AckStep::WaitUntil(t + 20 * MS));
        // The stream of a leader with synchronous mirrors asks for every commit.
        p.set_interval(std::time::Duration::ZERO);
        assert_eq!(p.step(6, t + MS), AckStep::Send(6));
    }

    #[test]
    fn a_failed_acknowledgement_waits_to_be_woken_and_then_for_the_interval() {
        let t = std::time::Instant::now();
        let mut p = AckPacer::new(20 * MS);
        assert_eq!(p.step(5, t), AckStep::Send(5));
        p.sent(5, t, false);
        assert_eq!(p.acked(), 0, "the leader did not take it");
        // No timer retries it: a leader that is down is not called in a loop.
        assert_eq!(p.step(5, t + 100 * MS), AckStep::Idle);
        p.woken();
        assert_eq!(p.step(5, t + 100 * MS), AckStep::Send(5));
        // Woken again soon after another failure: still one per interval.
        p.sent(5, t + 100 * MS, false);
        p.woken();
        assert_eq!(p.step(6, t + 101 * MS), AckStep::WaitUntil(t + 120 * MS));
        assert_eq!(p.step(6, t + 120 * MS), AckStep::Send(6));
        // Without an interval a failed one goes again as soon as it is woken.
        let mut p = AckPacer::new(std::time::Duration::ZERO);
        p.sent(5, t, false);
        assert_eq!(p.step(5, t), AckStep::Idle);
        p.woken();
        assert_eq!(p.step(5, t), AckStep::Send(5));
    }

    /// A chain whose commands have these many entries each (command `i` has id `i`).
    fn commands_chain(sizes: &[usize]) -> Vec<StoredEntry> {
        let mut out: Vec<StoredEntry> = Vec::new();
        for (command, size) in sizes.iter().enumerate() {
            for _ in 0..*size {
                let prev = out.last().map(|e| e.hash).unwrap_or(Hash::ZERO);
                let mut draft = EntryDraft {
                    epoch: 1,
                    time_ms: 1,
                    meta: Meta {
                        actor: "test".into(),
                        change: None,
                        command: Uuid::from_u128(command as u128),
                        idempotency_key: None,
                    },
                    kind: "test.thing.v1".into(),
                    payload: vec![1; 3],
                };
                draft.payload.push(out.len() as u8);
                out.push(draft.seal(out.len() as u64 + 1, prev).unwrap());
            }
        }
        out
    }

    fn offsets(batch: &[VerifiedEntry]) -> Vec<u64> {
        batch.iter().map(|e| e.entry().offset).collect()
    }

    #[test]
    fn a_command_is_held_until_another_command_or_the_head_mark_follows_it() {
        // Commands 1..=2, 3..=5, 6.
        let log = commands_chain(&[2, 3, 1]);
        let mut a = Assembler::default();
        a.push(verified(&log[0]));
        a.push(verified(&log[1]));
        assert_eq!(a.whole_len(), 0, "the first command may go on");
        a.head_at(1);
        assert_eq!(
            a.whole_len(),
            0,
            "a head mark inside the held entries says nothing"
        );
        a.push(verified(&log[2]));
        assert_eq!(offsets(&a.take_whole()), [1, 2], "another command began");
        a.push(verified(&log[3]));
        a.head_at(9);
        assert_eq!(
            a.whole_len(),
            0,
            "a head past the entries held says nothing"
        );
        assert_eq!(a.first_open(), Some(3));
        a.push(verified(&log[4]));
        a.head_at(5);
        assert_eq!(
            a.whole_bytes(),
            (2..5)
                .map(|i| verified(&log[i]).bytes().len())
                .sum::<usize>()
        );
        assert_eq!(
            offsets(&a.take_whole()),
            [3, 4, 5],
            "the leader marked its head there"
        );
        assert_eq!(a.first_open(), None);
        a.push(verified(&log[5]));
        a.next_command(&Uuid::from_u128(2));
        assert_eq!(a.whole_len(), 0, "the next entry is of the same command");
        a.next_command(&Uuid::from_u128(3));
        assert_eq!(offsets(&a.take_whole()), [6]);
    }

    #[test]
    fn a_command_larger_than_the_limit_is_released_in_parts() {
        let log = commands_chain(&[5, 1]);
        let size = verified(&log[0]).bytes().len();
        let mut a = Assembler::with_limit(2 * size);
        assert_eq!(a.push(verified(&log[0])), Held::Open);
        assert_eq!(a.push(verified(&log[1])), Held::Split { from: 1 });
        assert_eq!(offsets(&a.take_whole()), [1, 2]);
        assert_eq!(a.push(verified(&log[2])), Held::Open);
        assert_eq!(a.push(verified(&log[3])), Held::Split { from: 3 });
        assert_eq!(a.push(verified(&log[4])), Held::Open);
        assert_eq!(a.push(verified(&log[5])), Held::Open);
        assert_eq!(offsets(&a.take_whole()), [3, 4, 5]);
    }

    proptest! {
        /// However the entries arrive and whenever the follower takes what is whole, what it
        /// takes ends at the end of a command, nothing is taken twice or out of order, and
        /// once the leader marks its last entry everything has been taken.
        #[test]
        fn taken_entries_always_end_at_the_end_of_a_command(
            sizes in proptest::collection::vec(1usize..5, 1..20),
            actions in proptest::collection::vec(0u8..4, 0..120),
        ) {
            let log = commands_chain(&sizes);
            let ends: std::collections::BTreeSet<u64> = sizes
                .iter()
                .scan(0u64, |end, size| { *end += *size as u64; Some(*end) })
                .collect();
            let mut a = Assembler::default();
            let (mut next, mut taken) = (0usize, Vec::new());
            let take = |a: &mut Assembler, taken: &mut Vec<u64>| {
                let batch = offsets(&a.take_whole());
                if let Some(last) = batch.last() {
                    assert!(ends.contains(last), "a batch ended inside a command at {last}");
                }
                taken.extend(batch);
            };
            for action in actions {
                match action {
                    0 | 1 if next < log.len() => {
                        a.push(verified(&log[next]));
                        next += 1;
                    }
                    // The leader marks its head only at the end of a commit.
                    2 if next > 0 && ends.contains(&(next as u64)) => a.head_at(next as u64),
                    _ => take(&mut a, &mut taken),
                }
            }
            while next < log.len() {
                a.push(verified(&log[next]));
                next += 1;
            }
            a.head_at(log.len() as u64);
            take(&mut a, &mut taken);
            prop_assert_eq!(taken, (1..=log.len() as u64).collect::<Vec<_>>());
        }
    }

    proptest! {
        /// Whatever the commits' timing, no two acknowledgements are closer than the interval,
        /// and once commits stop, the last head is sent within one interval.
        #[test]
        fn acknowledgements_keep_to_the_interval_and_the_last_head_always_goes(
            gaps in proptest::collection::vec(0u64..50, 1..60),
            interval in 0u64..30,
        ) {
            let t0 = std::time::Instant::now();
            let interval = std::time::Duration::from_millis(interval);
            let mut p = AckPacer::new(interval);
            let (mut now, mut head, mut due) = (t0, 0u64, None);
            let mut sends: Vec<std::time::Instant> = Vec::new();
            let mut run = |p: &mut AckPacer,
                           head: u64,
                           now: std::time::Instant,
                           due: &mut Option<std::time::Instant>| {
                match p.step(head, now) {
                    AckStep::Send(o) => {
                        p.sent(o, now, true);
                        sends.push(now);
                        *due = None;
                    }
                    AckStep::WaitUntil(at) => *due = Some(at),
                    AckStep::Idle => *due = None,
                }
            };
            for gap in gaps {
                let next = now + std::time::Duration::from_millis(gap);
                // A timer that was due before this commit fires first.
                if let Some(at) = due.filter(|at| *at <= next) {
                    run(&mut p, head, at, &mut due);
                }
                now = next;
                head += 1;
                run(&mut p, head, now, &mut due);
            }
            if let Some(at) = due {
                prop_assert!(at <= now + interval);
                run(&mut p, head, at, &mut due);
            }
            prop_assert_eq!(p.acked(), head, "the last head was sent");
            for pair in sends.windows(2) {
                prop_assert!(pair[1] - pair[0] >= interval);
            }
        }

        /// Whatever bytes arrive, the follower never accepts an entry that does not continue
        /// its chain, and never panics.
        #[test]
        fn arbitrary_frames_never_break_the_chain(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
        ) {
            let log = chain(2);
            let mut f = Follower::new(WS, log[0].head());
            f.on_frame(&hello(2), &all).unwrap();
            for body in bodies {
                let before = f.head();
                match f.on_frame(&body, &all) {
                    Ok(Step::Apply(e)) => {
                        prop_assert_eq!(e.entry().offset, before.offset + 1);
                        prop_assert_eq!(e.entry().prev, before.hash);
                    }
                    Ok(_) | Err(_) => prop_assert_eq!(f.head(), before),
                }
            }
        }

        /// A stream cut, duplicated or with one byte flipped anywhere applies only a prefix
        /// of the real log, in order.
        #[test]
        fn a_damaged_stream_applies_only_a_prefix_of_the_log(
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            duplicate in any::<prop::sample::Index>(),
        ) {
            let log = chain(6);
            let mut stream: Vec<Vec<u8>> = log.iter().map(entry_frame).collect();
            let d = duplicate.index(stream.len());
            let copy = stream[d].clone();
            stream.insert(d, copy);
            let i = flip.index(stream.len());
            let j = flip.index(stream[i].len());
            stream[i][j] ^= 1 << bit;
            let mut f = Follower::new(WS, Head::EMPTY);
            f.on_frame(&hello(6), &all).unwrap();
            let mut applied = Vec::new();
            for body in &stream {
                match f.on_frame(body, &all) {
                    Ok(Step::Apply(e)) => applied.push(e.into_parts().0),
                    Ok(_) => {}
                    // The follower drops the connection at the first bad frame.
                    Err(_) => break,
                }
            }
            prop_assert!(applied.len() <= log.len());
            prop_assert_eq!(&applied[..], &log[..applied.len()]);
        }

        #[test]
        fn bisect_finds_the_first_difference(n in 2u64..500, fork in 1u64..500) {
            let fork = fork.min(n);
            let mut probes = 0;
            let found = first_difference::<()>(0, n, |o| { probes += 1; Ok(o < fork) }).unwrap();
            prop_assert_eq!(found, fork);
            prop_assert!(probes <= 10);
        }
    }
}
