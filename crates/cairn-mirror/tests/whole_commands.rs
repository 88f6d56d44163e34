//! A mirror shows whole commands only. A leader commits all the entries of one command in one
//! `WriteBatch`, so its readers never see part of a command; a mirror must not either, however
//! the stream's bytes happen to arrive. These tests put a scripted leader on 127.0.0.1 in
//! front of a real follower: the entries are a real leader's (chained, hashed), and the script
//! decides where the stream pauses, where it breaks, and where it marks the leader's head.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn::{CommandOptions, NodeRole, Options, Workspace};
use cairn_log::StoredEntry;
use cairn_mirror::protocol::Frame;

const WAIT: Duration = Duration::from_secs(20);

/// A stream connection the follower opened, with the `from` it asked for.
struct Stream {
    from: u64,
    socket: TcpStream,
}

impl Stream {
    fn send(&mut self, frames: &[u8]) {
        self.socket
            .write_all(frames)
            .expect("write to the follower");
        self.socket.flush().expect("flush to the follower");
    }
}

/// A scripted leader: stream connections are handed to the test; every other request (the
/// follower's acknowledgements) is answered `200 {}`. With `marks`, its stream answer says it
/// marks its head (`HEAD_MARKS_HEADER`), as this build's leaders do.
fn scripted_leader(marks: bool) -> (String, mpsc::Receiver<Stream>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(socket.try_clone().expect("clone the socket"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let target = line.split(' ').nth(1).unwrap_or("").to_string();
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if header == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let mut socket = socket;
                if target.starts_with("/v1/replication/stream?") {
                    let from = target
                        .split(['?', '&'])
                        .find_map(|p| p.strip_prefix("from="))
                        .and_then(|v| v.parse().ok())
                        .expect("the stream request names from");
                    let marks = if marks {
                        format!("{}: 1\r\n", cairn_mirror::protocol::HEAD_MARKS_HEADER)
                    } else {
                        String::new()
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                         cairn-ack-interval-ms: 0\r\n{marks}connection: close\r\n\r\n"
                    );
                    socket
                        .write_all(answer.as_bytes())
                        .expect("answer the stream request");
                    let _ = tx.send(Stream { from, socket });
                } else {
                    let _ = socket.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 2\r\nconnection: close\r\n\r\n{}",
                    );
                }
            });
        }
    });
    (url, rx)
}

/// A two-worker runtime for the workspaces and the follower.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The leader's entries from `from` on, decoded and as stored (the canonical encoding: the
/// store decodes strictly).
fn log_from(
    rt: &tokio::runtime::Runtime,
    ws: &Workspace,
    from: u64,
) -> Vec<(StoredEntry, Vec<u8>)> {
    rt.block_on(ws.read_log(from, usize::MAX))
        .expect("read the log")
        .into_iter()
        .map(|e| {
            let bytes = cairn_log::codec::encode(&e);
            (e, bytes)
        })
        .collect()
}

/// The offset ranges of the commands in `log`, in order (entries of one command share
/// `meta.command`).
fn commands(log: &[(StoredEntry, Vec<u8>)]) -> Vec<std::ops::RangeInclusive<u64>> {
    let mut out: Vec<std::ops::RangeInclusive<u64>> = Vec::new();
    for (i, (e, _)) in log.iter().enumerate() {
        let same = i > 0 && log[i - 1].0.meta.command == e.meta.command;
        match out.last_mut() {
            Some(r) if same => *r = *r.start()..=e.offset,
            _ => out.push(e.offset..=e.offset),
        }
    }
    out
}

fn entry_frames(log: &[(StoredEntry, Vec<u8>)], range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for (e, bytes) in log {
        if range.contains(&e.offset) {
            Frame::write_entry(bytes, &mut out);
        }
    }
    out
}

fn frame(f: Frame) -> Vec<u8> {
    let mut out = Vec::new();
    f.write_to(&mut out);
    out
}

// Fields drop in this order: the follower stops before the workspaces close, and the
// runtime and the directory go last.
struct Setup {
    follower: cairn_mirror::FollowerHandle,
    mirror: Workspace,
    leader: Workspace,
    streams: mpsc::Receiver<Stream>,
    /// Where the mirror's backup ends.
    base: u64,
    /// The leader's entries after it.
    log: Vec<(StoredEntry, Vec<u8>)>,
    /// Heartbeats sent by [`Setup::processed`].
    beats: std::cell::Cell<u64>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// A leader that installed two packages after the mirror's backup was taken, and a mirror
    /// following a scripted leader that serves the real leader's entries (and says it marks
    /// its head when `marks`).
    fn new(marks: bool) -> Setup {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let leader_dir = dir.path().join("leader");
        Workspace::init(&leader_dir).expect("init the leader");
        let leader = rt
            .block_on(Workspace::open(&leader_dir, Options::default()))
            .expect("open the leader");
        let mirror_dir = dir.path().join("mirror");
        leader
            .store()
            .backup(&mirror_dir)
            .expect("back up the leader");
        let base = leader.applied();
        for name in ["alpha", "beta"] {
            let manifest = format!(
                "name = \"{name}\"\nversion = \"1.0.0\"\n\n[vars]\na = \"1\"\nb = \"2\"\n\n\
                 [[queues]]\nname = \"q\"\n\n[[features]]\nname = \"{name}\"\nstate = \"enabled\"\n"
            );
            let change = rt
                .block_on(leader.install_toml(&manifest, &CommandOptions::default()))
                .expect("install");
            rt.block_on(async { tokio::time::timeout(WAIT, leader.wait_change(change)).await })
                .expect("the install finished in time")
                .expect("wait for the install");
        }
        let log = log_from(&rt, &leader, base + 1);
        let mirror = rt
            .block_on(Workspace::open(
                &mirror_dir,
                Options {
                    role: NodeRole::Mirror,
                    ..Options::default()
                },
            ))
            .expect("open the mirror");
        let (url, streams) = scripted_leader(marks);
        let follower = cairn_mirror::start(
            mirror.clone(),
            rt.handle().clone(),
            cairn_mirror::FollowerOptions {
                leader: url,
                token: "scripted".into(),
                name: "m1".into(),
            },
        )
        .expect("start the follower");
        Setup {
            follower,
            mirror,
            leader,
            streams,
            base,
            log,
            beats: std::cell::Cell::new(0),
            rt,
            _dir: dir,
        }
    }

    fn next_stream(&self) -> Stream {
        self.streams
            .recv_timeout(WAIT)
            .expect("the follower opened a stream")
    }

    fn hello(&self) -> Vec<u8> {
        let view = cairn_mirror::leader::leader_view(&self.leader).expect("the leader's view");
        frame(Frame::Hello {
            workspace_id: view.workspace_id,
            head_offset: view.head.offset,
            head_epoch: view.head.epoch,
            schema: view.schema,
            schema_compat: view.schema_compat,
        })
    }

    fn head_mark(&self, offset: u64) -> Vec<u8> {
        let epoch = self
            .log
            .iter()
            .find(|(e, _)| e.offset == offset)
            .map_or(1, |(e, _)| e.epoch);
        frame(Frame::Heartbeat {
            head_offset: offset,
            head_epoch: epoch,
            time_ms: 1,
        })
    }

    /// The first command of several entries, and the next one after it.
    fn two_commands(&self) -> (std::ops::RangeInclusive<u64>, std::ops::RangeInclusive<u64>) {
        let commands = commands(&self.log);
        let several: Vec<_> = commands.iter().filter(|c| c.end() > c.start()).collect();
        assert!(
            several.len() >= 2,
            "the workload makes two commands of several entries: {commands:?}"
        );
        (several[0].clone(), several[1].clone())
    }

    /// Returns once the follower has taken every frame sent before: a heartbeat with a head
    /// past anything the log holds follows them (it marks no entry as a command's end), and
    /// the follower shows that head in its status only after it submitted what it held as
    /// whole and those commits landed. Then `applied` says exactly what was applied.
    fn processed(&self, stream: &mut Stream) {
        let head = self.log.last().expect("entries").0.offset + 1_000 + self.beats.get();
        self.beats.set(self.beats.get() + 1);
        stream.send(&frame(Frame::Heartbeat {
            head_offset: head,
            head_epoch: 1,
            time_ms: 1,
        }));
        wait_until("the follower took the heartbeat", || {
            self.follower.status().leader_head >= head
        });
    }

    /// Waits until the mirror applied `offset`.
    fn applied_reaches(&self, offset: u64) {
        self.rt
            .block_on(async { tokio::time::timeout(WAIT, self.mirror.wait_for(offset)).await })
            .expect("the mirror applied the offset in time")
            .expect("the mirror is open");
    }

    /// The follower's stream, sent the hello, the caught-up marker at the backlog's end, and
    /// the leader's entries from there up to all but the last entry of command `c`.
    fn caught_up_then_all_but_the_last_entry_of(
        &self,
        c: &std::ops::RangeInclusive<u64>,
    ) -> Stream {
        let mut stream = self.next_stream();
        assert_eq!(stream.from, self.base + 1);
        let mut out = self.hello();
        out.extend(frame(Frame::CaughtUp {
            head_offset: self.base,
        }));
        out.extend(entry_frames(&self.log, self.base + 1..=c.end() - 1));
        stream.send(&out);
        stream
    }

    /// Sends the leader's entries from `from` on and the mark of its head, and checks that
    /// the mirror applies them all and has the leader's digest.
    fn finish(&self, stream: &mut Stream, from: u64) {
        let head = self.log.last().expect("entries").0.offset;
        let mut out = entry_frames(&self.log, from..=head);
        out.extend(self.head_mark(head));
        stream.send(&out);
        self.applied_reaches(head);
        assert_eq!(self.mirror.applied(), head);
        self.digests_agree();
    }

    fn digests_agree(&self) {
        let leader = self
            .leader
            .view()
            .expect("leader view")
            .digest()
            .expect("digest");
        let mirror = self
            .mirror
            .view()
            .expect("mirror view")
            .digest()
            .expect("digest");
        assert_eq!(leader, mirror, "the mirror's digest is the leader's");
    }
}

#[test]
fn a_paused_stream_leaves_a_command_unapplied_until_all_its_entries_and_the_head_arrived() {
    let s = Setup::new(true);
    let (c, d) = s.two_commands();

    let mut stream = s.next_stream();
    assert_eq!(stream.from, s.base + 1);
    let mut out = s.hello();
    out.extend(entry_frames(&s.log, s.base + 1..=c.start() - 1));
    out.extend(frame(Frame::CaughtUp {
        head_offset: c.start() - 1,
    }));
    stream.send(&out);
    s.processed(&mut stream);
    assert_eq!(s.mirror.applied(), c.start() - 1);

    // All of the command but its last entry, then a pause: nothing of it may show.
    stream.send(&entry_frames(&s.log, *c.start()..=c.end() - 1));
    s.processed(&mut stream);
    assert_eq!(
        s.mirror.applied(),
        c.start() - 1,
        "the mirror applied part of a command while the rest had not arrived"
    );

    // Its last entry, on to the first entry of the next command of several: each new command
    // says the one before is whole, and that next command is held in turn.
    stream.send(&entry_frames(&s.log, *c.end()..=*d.start()));
    s.processed(&mut stream);
    assert_eq!(
        s.mirror.applied(),
        d.start() - 1,
        "the mirror applied the first entry of a command whose other entries had not arrived, \
         or not the whole commands before it"
    );

    // The rest of the log and the leader's head: everything applies.
    s.finish(&mut stream, d.start() + 1);
}

#[test]
fn a_stream_that_breaks_mid_command_applies_none_of_it_and_asks_for_it_again() {
    let s = Setup::new(true);
    let (c, _) = s.two_commands();

    let mut stream = s.caught_up_then_all_but_the_last_entry_of(&c);
    s.processed(&mut stream);
    assert_eq!(s.mirror.applied(), c.start() - 1);
    drop(stream);

    let mut stream = s.next_stream();
    assert_eq!(
        stream.from,
        *c.start(),
        "after a break the mirror asks again for the command it held part of"
    );
    stream.send(&s.hello());
    s.finish(&mut stream, *c.start());
}

#[test]
fn behind_a_leader_that_marks_no_head_a_paused_stream_applies_what_it_has() {
    // A leader of an earlier build sends no head marks: a mirror that held a command until a
    // mark came would make every write wait for an idle heartbeat. It applies what it holds
    // whenever nothing more has arrived, or a heartbeat came, as that build's followers did.
    let s = Setup::new(false);
    let (c, _) = s.two_commands();
    let mut stream = s.caught_up_then_all_but_the_last_entry_of(&c);
    s.processed(&mut stream);
    assert_eq!(
        s.mirror.applied(),
        c.end() - 1,
        "behind a leader that marks no head the mirror held what it had"
    );
    s.finish(&mut stream, *c.end());
}

/// Frames of a leader stream opened in process, in order.
struct Frames {
    rx: tokio::sync::mpsc::Receiver<cairn_mirror::leader::Chunk>,
    buf: Vec<u8>,
}

impl Frames {
    async fn next(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if self.buf.len() >= 4 + len {
                    let frame = Frame::decode(&self.buf[4..4 + len]).expect("a well-formed frame");
                    self.buf.drain(..4 + len);
                    return frame;
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("the stream sent more in time")
                .expect("the stream is open")
                .expect("the stream read the log");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

#[test]
fn a_leader_stream_that_sent_everything_marks_the_head_before_the_next_commit() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    Workspace::init(dir.path()).expect("init");
    rt.block_on(async {
        let leader = Workspace::open(dir.path(), Options::default())
            .await
            .expect("open the leader");
        let opts = CommandOptions::default();
        let manifest = "name = \"alpha\"\nversion = \"1.0.0\"\n[vars]\nk = \"0\"\n";
        let change = leader.install_toml(manifest, &opts).await.expect("install");
        tokio::time::timeout(WAIT, leader.wait_change(change))
            .await
            .expect("the install finished in time")
            .expect("wait for the install");
        let head = leader.head().expect("head");
        let hello = cairn_mirror::FollowerHello {
            workspace_id: leader.id(),
            from: head.offset + 1,
            prev: head.hash,
            protocol: cairn_mirror::PROTOCOL_VERSION,
            schema: cairn::kernel::SCHEMA_VERSION,
            projection: cairn::kernel::PROJECTION_VERSION,
            name: "t".into(),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let rx = cairn_mirror::open_stream(
            leader.clone(),
            hello,
            std::sync::Arc::new(cairn_mirror::Mirrors::default()),
            stop.clone(),
        )
        .await
        .expect("open a stream");
        let mut frames = Frames {
            rx,
            buf: Vec::new(),
        };
        assert!(matches!(frames.next().await, Frame::Hello { .. }));
        assert_eq!(
            frames.next().await,
            Frame::CaughtUp {
                head_offset: head.offset
            }
        );
        let set = |i: usize| {
            let leader = leader.clone();
            let opts = opts.clone();
            async move {
                let value = format!("{i}");
                let committed = leader
                    .var_set("alpha", "k", value.as_bytes(), None, &opts)
                    .await
                    .expect("set a var");
                committed.offsets.end - 1
            }
        };
        let mut last = set(0).await;
        for i in 1..=10 {
            loop {
                match frames.next().await {
                    Frame::Entry(bytes) => {
                        let entry = cairn_log::codec::decode(&bytes).expect("an entry");
                        if entry.offset == last {
                            break;
                        }
                    }
                    // A heartbeat of the idle stream may come before the commit's entries.
                    Frame::Heartbeat { .. } => {}
                    other => panic!("unexpected frame {other:?}"),
                }
            }
            // The next commit is made at once: the mark must come before its entries.
            let next = set(i).await;
            match frames.next().await {
                Frame::Heartbeat { head_offset, .. } => assert_eq!(head_offset, last),
                Frame::Entry(_) => panic!(
                    "after the entries of the commit ending at {last}, the stream sent the \
                     next commit's entries without marking its head there"
                ),
                other => panic!("unexpected frame {other:?}"),
            }
            last = next;
        }
        stop.cancel();
    });
}
