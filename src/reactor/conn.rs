//! One connection's state in the Reactor: readiness and the results of the syscalls it asked
//! for in; the next operation, and the counters and timer changes each result implies, out.
//! No fds, no syscalls, no unsafe: the shard carries out what `Conn::next` asks, one
//! operation at a time, and reports each result, until the answer is to wait or to close;
//! the tests below play the shard. Reading follows the edge-triggered rule written in the
//! shard's module doc (`Read`).
//!
//! Output: the reply to what was just read (echo: those bytes; HTTP: the answers they
//! complete) lies in the shard's buffers (`Bufs`) and is written from there at once; only
//! what the socket will not take is copied into the connection's queue. A connection that
//! owes anything is not read until all of it is written, so a peer that does not read cannot
//! grow the server's memory; for the same reason the peer's EOF is read only once everything
//! is sent, and the close follows at once. After an HTTP answer that ends the connection no
//! request is read; once its last byte is sent the write side is shut, and what the peer
//! still sends is read and discarded until its EOF (`Phase::Lingering`).
//!
//! Redis in a worker process (`Conn::proxied`): the keyspace is another process's (the
//! owner, `super::owner`), so what is read is forwarded to it (`Effects::forward`) and its
//! replies come back later (`on_reply`), queued as output. The next read waits until the
//! owner has run the last (`on_ran`) and its replies are written, so a peer that does not
//! read holds at most one read's replies, as in one process. The connection ends with the
//! owner in a handshake: whichever side closes first, the worker's close (`Op::Unlink`) is
//! answered by the owner's after every reply owed, and the owner's own (QUIT, a protocol
//! error) is a closing answer, lingering as HTTP's does.

use crate::proto::http::Reading;
use crate::proto::{Capture, Done, Session};
use crate::server::core::{self, KEEP_QUEUE_CAPACITY, ProtoEnv};

/// The shard's buffers, as they are when the connection is asked or told something.
#[derive(Debug, Clone, Copy)]
pub struct Bufs<'a> {
    /// What the last read of this connection's turn returned: an echo is owed from here.
    pub input: &'a [u8],
    /// What the last `on_recv` or `time_out` built: HTTP answers are owed from here.
    pub answers: &'a [u8],
}

/// What the connection wants done next.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Read into the shard's buffer; report `on_recv`, `on_eof`, `on_read_blocked` or
    /// `on_read_error` (EINTR: ask again).
    Read,
    /// Write these bytes; report `on_sent`, `on_write_blocked` or `on_write_error` (EINTR:
    /// ask again).
    Write(&'a [u8]),
    /// Shut the write side, then report `on_shut`. Its result does not matter: a peer already
    /// gone is seen by the reads that follow.
    ShutWrite,
    /// Proxied: tell the owner the connection ends (a close frame), then report
    /// `on_unlinked`; its replies still owed come before its answering close.
    Unlink,
    /// Close the socket and drop the connection.
    Close,
    /// Nothing until the next readiness event or deadline.
    Wait,
}

/// Counters and timer changes an event asks for; the shard applies them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Bytes arrived: the idle deadline (and a body's) starts again.
    pub received: bool,
    /// The peer took bytes: the idle deadline (and the send deadline) starts again.
    pub sent: bool,
    /// Output began to wait for the socket to take it (the send deadline runs), or no longer
    /// waits.
    pub owed: Option<bool>,
    /// HTTP, after input was parsed: which part of a request is being read (its deadline
    /// runs).
    pub reading: Option<Reading>,
    /// A final answer is owed or has been sent: the linger deadline starts.
    pub linger: bool,
    /// HTTP requests or Redis commands answered.
    pub answered: u32,
    /// Redis with `--appendfsync always`: the answers may be written only once the journal
    /// is durable to this position.
    pub lsn: Option<u64>,
    /// Proxied: the bytes just read (`Bufs::input`) go to the keyspace owner.
    pub forward: bool,
    /// A write took fewer bytes than offered; the rest is written next.
    pub short_send: bool,
    /// The connection ends on an error (set once per connection).
    pub failed: bool,
}

/// What the socket may still hold to read, as far as the edges tell (the shard's module doc).
/// Ordered: a new edge only ever raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Read {
    /// The last read found the queue empty (EAGAIN, or a short read): the next arrival raises
    /// a new edge.
    Blocked,
    /// An edge came: read until a read comes back short.
    Ready,
    /// Read until EAGAIN or the EOF, whatever the reads return: the peer's EOF raises no
    /// further edge, and neither do bytes whose edge came while reading was stopped.
    ToEof,
}

/// What is owed to the peer and not yet written; `Conn::sent` bytes of it are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Nothing,
    /// The echo of what was just read: `Bufs::input`.
    Input,
    /// The answers just built: `Bufs::answers`.
    Answers,
    /// Redis with `--appendfsync always`: replies in `Conn::queue` that wait until the
    /// journal is durable (the shard's fdatasync at the end of its turn; `durable`).
    Held,
    /// What the socket would not take, in `Conn::queue`; `writable` once EPOLLOUT has come
    /// since the EAGAIN.
    Queued {
        writable: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// The peer's EOF was read: send what is owed, then close.
    PeerDone,
    /// Server shutdown: no more reads; send what is owed, then close.
    Draining,
    /// HTTP, after an answer that closes: send what is owed, then shut the write side
    /// (`shut`) and read and discard until the peer's EOF, so that bytes it sent after the
    /// request are not left unread at close (which would reset the connection and could
    /// destroy the answer before the peer read it). The shard bounds it with a deadline.
    Lingering {
        shut: bool,
    },
    /// An error or a deadline: close now, dropping what is owed.
    Closing,
}

/// A proxied connection's standing with the keyspace owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    /// The worker's close is sent; the owner's answering one is awaited.
    Closing,
    /// The owner has closed: it holds nothing of the connection any more.
    Closed,
}

#[derive(Debug)]
pub struct Conn {
    phase: Phase,
    read: Read,
    owed: Owed,
    /// Bytes of what is owed that are already written.
    sent: usize,
    /// What the socket would not take (`Owed::Queued`).
    queue: Vec<u8>,
    /// The HTTP or Redis session when one is served (boxed: echo connections pay one
    /// pointer); echo when None.
    session: Option<Box<Session>>,
    /// With `--access-log`: the requests' fields, and those answered, for the shard.
    log: Option<Box<Capture>>,
    /// Proxied (Redis in a worker process): its standing with the keyspace owner.
    link: Option<Link>,
    /// Proxied: reads forwarded that the owner has not yet run.
    forwarded: u32,
}

impl Conn {
    /// A connection just accepted and registered, speaking the protocol of `env` (echo
    /// without one). Registering a socket that already holds input raises its first edge.
    pub fn accepted(env: Option<&ProtoEnv>) -> Conn {
        Conn {
            phase: Phase::Open,
            read: Read::Blocked,
            owed: Owed::Nothing,
            sent: 0,
            queue: Vec::new(),
            session: env.map(|e| Box::new(e.session())),
            log: None,
            link: None,
            forwarded: 0,
        }
    }

    /// A Redis connection just accepted by a worker process, whose bytes go to the keyspace
    /// owner (the shard has sent it the open frame).
    pub fn proxied() -> Conn {
        Conn {
            link: Some(Link::Open),
            ..Conn::accepted(None)
        }
    }

    /// Proxied, and the owner still holds the connection: it must be told of the close.
    pub fn owner_open(&self) -> bool {
        self.link == Some(Link::Open)
    }

    /// HTTP, Redis: keep each request's log fields (`--access-log`); `logged` hands them
    /// over.
    pub fn log_requests(&mut self) {
        if let Some(s) = &self.session {
            self.log = Some(Box::new(Capture::new(s)));
        }
    }

    /// The requests answered since the last call, for the access log.
    pub fn logged(&mut self) -> Option<Done<'_>> {
        self.log.as_deref_mut().map(Capture::done)
    }

    /// An epoll event with these `events` came for the connection.
    pub fn on_ready(&mut self, events: u32) {
        if events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            self.read = Read::ToEof;
        } else if events & libc::EPOLLIN as u32 != 0 {
            self.read = self.read.max(Read::Ready);
        }
        if events & libc::EPOLLOUT as u32 != 0
            && let Owed::Queued { writable } = &mut self.owed
        {
            *writable = true;
        }
    }

    /// What to do next, given the shard's buffers as they are.
    pub fn next<'a>(&'a self, bufs: Bufs<'a>) -> Op<'a> {
        if self.phase == Phase::Closing {
            // Whatever is owed is dropped.
            return Op::Close;
        }
        let owed = match self.owed {
            Owed::Input => bufs.input,
            Owed::Answers => bufs.answers,
            Owed::Queued { writable: true } => &self.queue,
            Owed::Queued { writable: false } | Owed::Held => return Op::Wait,
            Owed::Nothing => {
                return match self.phase {
                    // Proxied: the owner runs one read before the next is forwarded.
                    Phase::Open if self.forwarded > 0 => Op::Wait,
                    Phase::Open | Phase::Lingering { shut: true } => match self.read {
                        Read::Blocked => Op::Wait,
                        Read::Ready | Read::ToEof => Op::Read,
                    },
                    Phase::Lingering { shut: false } => Op::ShutWrite,
                    Phase::PeerDone | Phase::Draining => match self.link {
                        Some(Link::Open) => Op::Unlink,
                        Some(Link::Closing) => Op::Wait,
                        Some(Link::Closed) | None => Op::Close,
                    },
                    Phase::Closing => Op::Close,
                };
            }
        };
        Op::Write(&owed[self.sent..])
    }

    /// A read returned `input` (not empty); `short` if fewer bytes than the shard's buffer
    /// holds. HTTP's answers are built in `answers`; `http` is the shard's limits and Date.
    pub fn on_recv(
        &mut self,
        input: &[u8],
        short: bool,
        http: Option<&ProtoEnv>,
        answers: &mut Vec<u8>,
    ) -> Effects {
        debug_assert_eq!(self.owed, Owed::Nothing, "reads wait until all is written");
        if short && matches!(self.read, Read::Ready) {
            self.read = Read::Blocked;
        }
        let mut fx = Effects {
            received: true,
            ..Effects::default()
        };
        if !matches!(self.phase, Phase::Open) {
            // Lingering: discarded.
            return fx;
        }
        match (&mut self.session, http) {
            _ if self.link.is_some() => {
                fx.forward = true;
                self.forwarded += 1;
            }
            (Some(session), Some(env)) => {
                answers.clear();
                let o = env.input(session, input, answers, self.log.as_deref_mut());
                fx.answered = o.answers;
                fx.lsn = o.lsn;
                fx.reading = Some(core::reading(session));
                if o.close {
                    self.phase = Phase::Lingering { shut: false };
                }
                if o.lsn.is_some() {
                    // `always`: the replies wait in the queue for the turn's fdatasync.
                    self.queue.extend_from_slice(answers);
                    self.owed = Owed::Held;
                } else if !answers.is_empty() {
                    self.owed = Owed::Answers;
                }
            }
            // Echo: the reply is the input itself.
            _ => self.owed = Owed::Input,
        }
        fx
    }

    /// A read returned 0: the peer's EOF.
    pub fn on_eof(&mut self) {
        if matches!(self.phase, Phase::Open | Phase::Lingering { .. }) {
            self.phase = Phase::PeerDone;
        }
    }

    /// A read found nothing (EAGAIN).
    pub fn on_read_blocked(&mut self) {
        self.read = Read::Blocked;
    }

    /// A read failed (reset).
    pub fn on_read_error(&mut self) -> Effects {
        self.fail()
    }

    /// A write took `n` bytes of what `next` offered.
    pub fn on_sent(&mut self, n: usize, bufs: Bufs) -> Effects {
        let len = match self.owed {
            Owed::Nothing => {
                debug_assert!(false, "a write without anything owed");
                return Effects::default();
            }
            Owed::Input => bufs.input.len(),
            Owed::Answers => bufs.answers.len(),
            Owed::Queued { .. } | Owed::Held => self.queue.len(),
        };
        self.sent += n;
        let mut fx = Effects {
            sent: true,
            ..Effects::default()
        };
        if self.sent < len {
            fx.short_send = true;
            return fx;
        }
        if let Owed::Queued { .. } = self.owed {
            fx.owed = Some(false);
            if self.queue.capacity() > KEEP_QUEUE_CAPACITY {
                self.queue = Vec::new();
            } else {
                self.queue.clear();
            }
            // Reading stopped while this was queued: what came meanwhile raised its edges
            // then.
            self.read = Read::ToEof;
        }
        self.owed = Owed::Nothing;
        self.sent = 0;
        fx
    }

    /// A write found the socket full (EAGAIN): the rest is queued and waits for EPOLLOUT.
    pub fn on_write_blocked(&mut self, bufs: Bufs) -> Effects {
        let rest = match self.owed {
            Owed::Nothing => return Effects::default(),
            Owed::Input => &bufs.input[self.sent..],
            Owed::Answers => &bufs.answers[self.sent..],
            Owed::Queued { .. } | Owed::Held => {
                // Still waiting, as before.
                self.owed = Owed::Queued { writable: false };
                return Effects::default();
            }
        };
        if !rest.is_empty() {
            debug_assert!(
                self.queue.is_empty(),
                "nothing is queued while a reply is owed"
            );
            self.queue.extend_from_slice(rest);
            self.sent = 0;
        }
        self.owed = Owed::Queued { writable: false };
        Effects {
            owed: Some(true),
            ..Effects::default()
        }
    }

    /// A write failed (reset, broken pipe).
    pub fn on_write_error(&mut self) -> Effects {
        self.fail()
    }

    /// The write side was shut (`Op::ShutWrite`): linger.
    pub fn on_shut(&mut self) -> Effects {
        if !matches!(self.phase, Phase::Lingering { .. }) {
            return Effects::default();
        }
        self.phase = Phase::Lingering { shut: true };
        Effects {
            linger: true,
            ..Effects::default()
        }
    }

    /// The header or body deadline passed: answer 408, after what is queued, and close
    /// (lingering).
    /// An echo connection is closed.
    pub fn time_out(&mut self, http: Option<&ProtoEnv>, answers: &mut Vec<u8>) -> Effects {
        let (Some(session), Some(env)) = (&mut self.session, http) else {
            self.abort();
            return Effects::default();
        };
        let log = self.log.as_deref_mut();
        let answered = match self.owed {
            Owed::Nothing => {
                answers.clear();
                let answered = env.time_out(session, answers, log);
                if !answers.is_empty() {
                    self.owed = Owed::Answers;
                }
                answered
            }
            Owed::Queued { .. } | Owed::Held => env.time_out(session, &mut self.queue, log),
            Owed::Input | Owed::Answers => {
                debug_assert!(
                    false,
                    "what is owed from the shard's buffers is settled in its turn"
                );
                true
            }
        };
        if !answered {
            // Redis has no header or body timeout.
            self.abort();
            return Effects::default();
        }
        if matches!(self.phase, Phase::Open) {
            self.phase = Phase::Lingering { shut: false };
        }
        Effects {
            linger: true,
            ..Effects::default()
        }
    }

    /// The journal is durable to the lsn its replies waited for: they are written now, as
    /// output waiting for the socket (the send deadline runs).
    pub fn durable(&mut self) -> Effects {
        if self.owed != Owed::Held {
            return Effects::default();
        }
        self.owed = Owed::Queued { writable: true };
        Effects {
            owed: Some(true),
            ..Effects::default()
        }
    }

    /// Proxied: the owner sent `bytes` of replies; they are written as output waiting for
    /// the socket (the send deadline runs), and nothing is read until they are.
    pub fn on_reply(&mut self, bytes: &[u8]) -> Effects {
        if self.phase == Phase::Closing || bytes.is_empty() {
            return Effects::default();
        }
        self.queue.extend_from_slice(bytes);
        match self.owed {
            Owed::Nothing => {
                self.owed = Owed::Queued { writable: true };
                self.sent = 0;
                Effects {
                    owed: Some(true),
                    ..Effects::default()
                }
            }
            _ => Effects::default(),
        }
    }

    /// Proxied: the owner has run a read forwarded (its replies came before).
    pub fn on_ran(&mut self) {
        self.forwarded = self.forwarded.saturating_sub(1);
    }

    /// Proxied: the worker's close was sent to the owner.
    pub fn on_unlinked(&mut self) {
        self.link = Some(Link::Closing);
    }

    /// Proxied: the owner closed the connection. After the worker's close it only answers
    /// it; on its own (QUIT, a protocol error) it is a closing answer: the replies are
    /// written, then the write side is shut and the rest of the input discarded.
    pub fn on_owner_close(&mut self) {
        self.link = Some(Link::Closed);
        if self.phase == Phase::Open {
            self.phase = Phase::Lingering { shut: false };
        }
    }

    /// Server shutdown: stop reading; close once what is owed is written.
    pub fn drain(&mut self) {
        if matches!(
            self.phase,
            Phase::Open | Phase::PeerDone | Phase::Lingering { .. }
        ) {
            self.phase = Phase::Draining;
        }
    }

    /// Close now, dropping what is owed (a deadline passed).
    pub fn abort(&mut self) {
        self.phase = Phase::Closing;
    }

    /// Output waits for the socket to take it (EPOLLOUT): counted in the shard's
    /// `output_owed` from the `Effects::owed` that began it to the one that ended it, or to
    /// the close.
    pub fn waits_for_peer(&self) -> bool {
        matches!(self.owed, Owed::Queued { .. })
    }

    /// A syscall failed: counted once per connection, then close.
    fn fail(&mut self) -> Effects {
        let failed = !matches!(self.phase, Phase::Closing);
        self.abort();
        Effects {
            failed,
            ..Effects::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN: u32 = libc::EPOLLIN as u32;
    const OUT: u32 = libc::EPOLLOUT as u32;
    const RDHUP: u32 = libc::EPOLLRDHUP as u32;

    /// The shard's side of a connection: its buffers, and the syscalls' results.
    #[derive(Default)]
    struct Shard {
        input: Vec<u8>,
        answers: Vec<u8>,
        http: Option<ProtoEnv>,
    }

    impl Shard {
        fn http() -> Shard {
            Shard {
                http: Some(ProtoEnv {
                    limits: crate::proto::http::Limits::default(),
                    date: crate::proto::http::Date::at(0),
                    now: std::time::Instant::now(),
                    redis: None,
                }),
                ..Shard::default()
            }
        }

        fn bufs(&self) -> Bufs<'_> {
            Bufs {
                input: &self.input,
                answers: &self.answers,
            }
        }

        /// The connection asks to read, and the read returns `bytes`.
        fn recv(&mut self, c: &mut Conn, bytes: &[u8], short: bool) -> Effects {
            assert_eq!(c.next(self.bufs()), Op::Read);
            self.input = bytes.to_vec();
            c.on_recv(&self.input, short, self.http.as_ref(), &mut self.answers)
        }

        /// The connection asks to write, and the write takes `n` of the bytes; returns them.
        fn sent(&mut self, c: &mut Conn, n: usize) -> (Vec<u8>, Effects) {
            let Op::Write(bytes) = c.next(self.bufs()) else {
                panic!("expected a write, got {:?}", c.next(self.bufs()));
            };
            let took = bytes[..n].to_vec();
            (took, c.on_sent(n, self.bufs()))
        }

        /// The connection asks to write, and the write returns EAGAIN.
        fn blocked(&mut self, c: &mut Conn) {
            assert!(matches!(c.next(self.bufs()), Op::Write(_)));
            let waiting = matches!(c.owed, Owed::Queued { .. });
            let owed = c.on_write_blocked(self.bufs()).owed;
            assert_eq!(owed, (!waiting).then_some(true));
        }

        /// The connection asks to write; returns what it offers.
        fn offered(&self, c: &Conn) -> Vec<u8> {
            match c.next(self.bufs()) {
                Op::Write(bytes) => bytes.to_vec(),
                op => panic!("expected a write, got {op:?}"),
            }
        }

        fn next<'a>(&'a self, c: &'a Conn) -> Op<'a> {
            c.next(self.bufs())
        }
    }

    fn got() -> Effects {
        Effects {
            received: true,
            ..Effects::default()
        }
    }

    fn wrote() -> Effects {
        Effects {
            sent: true,
            ..Effects::default()
        }
    }

    fn short() -> Effects {
        Effects {
            short_send: true,
            ..wrote()
        }
    }

    /// The last of what was queued is written: nothing is owed any more.
    fn wrote_queue() -> Effects {
        Effects {
            owed: Some(false),
            ..wrote()
        }
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    fn statuses(bytes: &[u8]) -> usize {
        bytes.windows(9).filter(|w| w == b"HTTP/1.1 ").count()
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

    #[test]
    fn echo_writes_what_it_read_straight_back_and_waits_after_a_short_read() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        assert_eq!(s.next(&c), Op::Wait, "no read before the first edge");
        c.on_ready(IN | OUT);
        assert_eq!(s.recv(&mut c, b"hello", true), got());
        assert_eq!(s.sent(&mut c, 5), (b"hello".to_vec(), wrote()));
        assert_eq!(s.next(&c), Op::Wait);
        // EPOLLOUT with nothing queued changes nothing.
        c.on_ready(OUT);
        assert_eq!(s.next(&c), Op::Wait);
    }

    #[test]
    fn a_full_read_reads_again_and_rdhup_reads_on_to_the_eof() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        c.on_ready(IN);
        s.recv(&mut c, &bytes(8), false);
        s.sent(&mut c, 8);
        s.recv(&mut c, &bytes(3), true);
        s.sent(&mut c, 3);
        assert_eq!(s.next(&c), Op::Wait);
        // The peer's FIN raises no edge of its own: short reads do not stop the reading.
        c.on_ready(IN | RDHUP);
        s.recv(&mut c, &bytes(3), true);
        s.sent(&mut c, 3);
        assert_eq!(s.next(&c), Op::Read);
        c.on_eof();
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn eagain_on_a_read_waits_for_the_next_edge() {
        let (mut c, s) = (Conn::accepted(None), Shard::default());
        c.on_ready(IN | RDHUP);
        assert_eq!(s.next(&c), Op::Read);
        c.on_read_blocked();
        assert_eq!(s.next(&c), Op::Wait);
    }

    #[test]
    fn short_write_then_second_short_write_writes_exactly_the_rest() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        let data = bytes(100);
        c.on_ready(IN);
        s.recv(&mut c, &data, true);
        assert_eq!(s.sent(&mut c, 30), (data[..30].to_vec(), short()));
        assert_eq!(s.offered(&c), data[30..]);
        assert_eq!(s.sent(&mut c, 50), (data[30..80].to_vec(), short()));
        assert_eq!(s.offered(&c), data[80..]);
        assert_eq!(s.sent(&mut c, 20), (data[80..].to_vec(), wrote()));
        assert_eq!(s.next(&c), Op::Wait);

        // The same from the queue: a short write, EAGAIN, then two short writes.
        c.on_ready(IN);
        s.recv(&mut c, &data, true);
        s.sent(&mut c, 10);
        s.blocked(&mut c);
        c.on_ready(OUT);
        assert_eq!(s.offered(&c), data[10..]);
        assert_eq!(s.sent(&mut c, 40), (data[10..50].to_vec(), short()));
        assert_eq!(s.sent(&mut c, 25), (data[50..75].to_vec(), short()));
        assert_eq!(s.sent(&mut c, 25), (data[75..].to_vec(), wrote_queue()));
    }

    #[test]
    fn eagain_mid_answer_queues_the_rest_and_reading_stops_until_it_is_written() {
        let (mut c, mut s) = {
            let s = Shard::http();
            (Conn::accepted(s.http.as_ref()), s)
        };
        c.on_ready(IN);
        let two = [GET, GET].concat();
        let fx = s.recv(&mut c, &two, true);
        assert_eq!((fx.answered, fx.reading), (2, Some(Reading::Between)));
        let answers = s.answers.clone();
        assert_eq!(statuses(&answers), 2);
        s.sent(&mut c, 10);
        s.blocked(&mut c);
        // The shard's buffers move on to other connections: the rest was copied.
        s.answers.clear();
        s.input.clear();
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ready(IN);
        assert_eq!(s.next(&c), Op::Wait, "no read while output is queued");
        c.on_ready(OUT);
        assert_eq!(s.offered(&c), answers[10..]);
        s.sent(&mut c, answers.len() - 10);
        // Reading resumes, on to EAGAIN whatever the reads return.
        let fx = s.recv(&mut c, GET, true);
        assert_eq!(fx.answered, 1);
        s.sent(&mut c, s.answers.len());
        assert_eq!(s.next(&c), Op::Read);
        c.on_read_blocked();
        assert_eq!(s.next(&c), Op::Wait);
    }

    #[test]
    fn redis_replies_to_writes_wait_for_the_turns_fdatasync_and_reads_wait_behind_them() {
        use crate::proto::redis::{Config, Keyspace, Limits};
        use crate::server::core::RedisEnv;
        let keyspace = Keyspace::new(Config {
            maxmemory: None,
            journal: true,
        });
        let mut s = Shard {
            http: Some(ProtoEnv {
                limits: crate::proto::http::Limits::default(),
                date: crate::proto::http::Date::at(0),
                now: std::time::Instant::now(),
                redis: Some(RedisEnv::new(
                    std::sync::Arc::new(keyspace),
                    Limits::default(),
                    true,
                )),
            }),
            ..Shard::default()
        };
        let mut c = Conn::accepted(s.http.as_ref());
        c.on_ready(IN);
        // A read alone is answered at once.
        let fx = s.recv(&mut c, b"PING\r\n", true);
        assert_eq!((fx.answered, fx.lsn), (1, None));
        assert_eq!(s.sent(&mut c, 7).0, b"+PONG\r\n");
        // A write waits, and nothing is read meanwhile.
        c.on_ready(IN);
        let fx = s.recv(
            &mut c,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nPING\r\n",
            true,
        );
        assert_eq!(fx.answered, 2);
        assert!(fx.lsn.is_some());
        s.answers.clear();
        c.on_ready(IN);
        assert_eq!(s.next(&c), Op::Wait);
        // Durable: written in order, as output waiting for the peer.
        assert_eq!(c.durable().owed, Some(true));
        assert_eq!(s.offered(&c), b"+OK\r\n+PONG\r\n");
        let (_, fx) = s.sent(&mut c, 12);
        assert_eq!(fx.owed, Some(false));
        assert_eq!(s.next(&c), Op::Read);
    }

    #[test]
    fn eof_with_output_queued_closes_only_after_it_is_all_written() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        let data = bytes(50);
        c.on_ready(IN);
        s.recv(&mut c, &data, true);
        s.sent(&mut c, 20);
        s.blocked(&mut c);
        c.on_ready(IN | RDHUP);
        assert_eq!(
            s.next(&c),
            Op::Wait,
            "the EOF is not read while output is queued"
        );
        c.on_ready(OUT);
        s.sent(&mut c, 10);
        s.blocked(&mut c);
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ready(OUT);
        assert_eq!(s.sent(&mut c, 20), (data[30..].to_vec(), wrote_queue()));
        assert_eq!(s.next(&c), Op::Read);
        c.on_eof();
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn lingering_close_sends_the_answer_shuts_once_discards_then_closes_at_the_eof() {
        let (mut c, mut s) = {
            let s = Shard::http();
            (Conn::accepted(s.http.as_ref()), s)
        };
        c.on_ready(IN);
        let fx = s.recv(&mut c, &[GET_CLOSE, GET].concat(), false);
        assert_eq!(
            fx.answered, 1,
            "nothing after the closing request is answered"
        );
        let answer = s.answers.clone();
        assert!(answer.ends_with(b"Hello, World!"));
        s.sent(&mut c, 7);
        assert_eq!(s.offered(&c), answer[7..]);
        let (_, fx) = s.sent(&mut c, answer.len() - 7);
        assert!(!fx.linger, "the linger starts when the write side is shut");
        assert_eq!(s.next(&c), Op::ShutWrite);
        assert_eq!(
            c.on_shut(),
            Effects {
                linger: true,
                ..Effects::default()
            }
        );
        // What the peer still sends is read and discarded; the write side is not shut again.
        let fx = s.recv(&mut c, GET, false);
        assert_eq!(fx, got());
        assert_eq!(s.next(&c), Op::Read);
        s.recv(&mut c, GET, true);
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ready(IN | RDHUP);
        s.recv(&mut c, GET, true);
        assert_eq!(s.next(&c), Op::Read);
        c.on_eof();
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn a_closing_answer_that_blocks_shuts_after_its_last_byte() {
        let (mut c, mut s) = {
            let s = Shard::http();
            (Conn::accepted(s.http.as_ref()), s)
        };
        c.on_ready(IN);
        s.recv(&mut c, GET_CLOSE, true);
        s.blocked(&mut c);
        c.on_ready(IN);
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ready(OUT);
        let n = s.offered(&c).len();
        s.sent(&mut c, n);
        assert_eq!(s.next(&c), Op::ShutWrite);
        c.on_shut();
        // Reading was stopped while the answer was queued: on to EAGAIN, discarding.
        assert_eq!(s.next(&c), Op::Read);
    }

    #[test]
    fn header_timeout_answers_408_then_lingers() {
        let (mut c, mut s) = {
            let s = Shard::http();
            (Conn::accepted(s.http.as_ref()), s)
        };
        c.on_ready(IN);
        let fx = s.recv(&mut c, b"GET / HTTP/1.1\r\nHost", true);
        assert_eq!((fx.answered, fx.reading), (0, Some(Reading::Head)));
        assert_eq!(s.next(&c), Op::Wait, "nothing owed for half a request");
        let fx = c.time_out(s.http.as_ref(), &mut s.answers);
        assert!(fx.linger);
        let answer = s.offered(&c);
        assert!(answer.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"));
        s.sent(&mut c, answer.len());
        assert_eq!(s.next(&c), Op::ShutWrite);
        c.on_shut();
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ready(IN | RDHUP);
        assert_eq!(s.next(&c), Op::Read);
        c.on_eof();
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn header_timeout_with_output_queued_answers_after_it() {
        let (mut c, mut s) = {
            let s = Shard::http();
            (Conn::accepted(s.http.as_ref()), s)
        };
        c.on_ready(IN);
        s.recv(&mut c, &[GET, b"GET / HT"].concat(), true);
        let first = s.answers.clone();
        s.sent(&mut c, 5);
        s.blocked(&mut c);
        s.answers.clear();
        c.time_out(s.http.as_ref(), &mut s.answers);
        assert!(
            s.answers.is_empty(),
            "appended to the queue, not the shard's buffer"
        );
        c.on_ready(OUT);
        let rest = s.offered(&c);
        assert_eq!(rest[..first.len() - 5], first[5..]);
        assert!(rest[first.len() - 5..].starts_with(b"HTTP/1.1 408 "));
        s.sent(&mut c, rest.len());
        assert_eq!(s.next(&c), Op::ShutWrite);
    }

    #[test]
    fn header_timeout_closes_an_echo_connection() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        assert_eq!(c.time_out(None, &mut s.answers), Effects::default());
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn drain_during_output_writes_the_rest_then_closes_without_reading() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        let data = bytes(40);
        c.on_ready(IN);
        s.recv(&mut c, &data, true);
        s.sent(&mut c, 15);
        s.blocked(&mut c);
        c.drain();
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ready(IN);
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ready(OUT);
        assert_eq!(s.sent(&mut c, 25), (data[15..].to_vec(), wrote_queue()));
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn drain_with_nothing_owed_closes_at_once_even_while_lingering() {
        let (mut c, s) = (Conn::accepted(None), Shard::default());
        c.drain();
        assert_eq!(s.next(&c), Op::Close);

        let (mut c, mut s) = {
            let s = Shard::http();
            (Conn::accepted(s.http.as_ref()), s)
        };
        c.on_ready(IN);
        s.recv(&mut c, GET_CLOSE, true);
        let n = s.answers.len();
        s.sent(&mut c, n);
        c.on_shut();
        c.drain();
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn write_error_is_counted_once_and_closes() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        c.on_ready(IN);
        s.recv(&mut c, &bytes(10), true);
        assert_eq!(
            c.on_write_error(),
            Effects {
                failed: true,
                ..Effects::default()
            }
        );
        assert_eq!(s.next(&c), Op::Close);
        assert_eq!(c.on_read_error(), Effects::default(), "already counted");
        assert_eq!(c.on_write_error(), Effects::default());
    }

    #[test]
    fn read_error_closes_and_an_abort_closes_dropping_what_is_owed() {
        let (mut c, s) = (Conn::accepted(None), Shard::default());
        c.on_ready(IN);
        assert!(c.on_read_error().failed);
        assert_eq!(s.next(&c), Op::Close);

        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        c.on_ready(IN);
        s.recv(&mut c, &bytes(10), true);
        s.blocked(&mut c);
        c.abort();
        c.on_ready(OUT);
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn a_proxied_connection_forwards_its_reads_and_writes_the_owners_replies() {
        let (mut c, mut s) = (Conn::proxied(), Shard::default());
        c.on_ready(IN);
        let fx = s.recv(&mut c, b"PING\r\nPI", false);
        assert_eq!((fx.forward, fx.answered), (true, 0));
        assert_eq!(
            s.next(&c),
            Op::Wait,
            "the owner runs a read before the next"
        );
        assert_eq!(c.on_reply(b"+PONG\r\n").owed, Some(true));
        // More replies while some are queued join them.
        assert_eq!(c.on_reply(b"+PONG\r\n"), Effects::default());
        s.sent(&mut c, 3);
        s.blocked(&mut c);
        c.on_ready(IN);
        assert_eq!(s.next(&c), Op::Wait, "no read while replies are owed");
        c.on_ready(OUT);
        assert_eq!(s.offered(&c), b"NG\r\n+PONG\r\n");
        assert_eq!(s.sent(&mut c, 11).1, wrote_queue());
        assert_eq!(s.next(&c), Op::Wait);
        c.on_ran();
        // Reading resumes, on to EAGAIN.
        assert_eq!(s.next(&c), Op::Read);
        c.on_read_blocked();
        assert_eq!(s.next(&c), Op::Wait);
    }

    #[test]
    fn a_proxied_connection_s_eof_waits_for_the_owner_s_answering_close() {
        let (mut c, mut s) = (Conn::proxied(), Shard::default());
        c.on_ready(IN | RDHUP);
        assert!(s.recv(&mut c, b"SET k v\r\nGET k\r\n", true).forward);
        assert_eq!(s.next(&c), Op::Wait);
        c.on_reply(b"+OK\r\n");
        s.sent(&mut c, 5);
        c.on_ran();
        assert_eq!(s.next(&c), Op::Read);
        c.on_eof();
        assert_eq!(s.next(&c), Op::Unlink);
        assert!(c.owner_open());
        c.on_unlinked();
        assert!(!c.owner_open(), "the shard sent its close once");
        assert_eq!(s.next(&c), Op::Wait, "the owner's close is awaited");
        c.on_reply(b"$1\r\nv\r\n");
        s.sent(&mut c, 7);
        assert_eq!(s.next(&c), Op::Wait);
        c.on_owner_close();
        assert_eq!(s.next(&c), Op::Close);
    }

    #[test]
    fn the_owner_s_own_close_is_a_closing_answer_that_lingers() {
        let (mut c, mut s) = (Conn::proxied(), Shard::default());
        c.on_ready(IN);
        s.recv(&mut c, b"QUIT\r\nPING\r\n", true);
        c.on_reply(b"+OK\r\n");
        c.on_owner_close();
        s.sent(&mut c, 5);
        assert_eq!(s.next(&c), Op::ShutWrite);
        c.on_shut();
        c.on_ready(IN | RDHUP);
        let fx = s.recv(&mut c, b"PING\r\n", true);
        assert!(!fx.forward, "what follows the close is discarded");
        c.on_eof();
        assert_eq!(
            s.next(&c),
            Op::Close,
            "the owner holds nothing: no close for it"
        );
    }

    #[test]
    fn an_aborted_proxied_connection_closes_at_once_and_still_owes_the_owner_its_close() {
        let (mut c, mut s) = (Conn::proxied(), Shard::default());
        c.on_ready(IN);
        s.recv(&mut c, b"GET k\r\n", true);
        c.abort();
        assert_eq!(s.next(&c), Op::Close);
        assert!(c.owner_open());
        assert_eq!(c.on_reply(b"$-1\r\n"), Effects::default());
    }

    #[test]
    fn a_grown_queue_is_dropped_once_written() {
        let (mut c, mut s) = (Conn::accepted(None), Shard::default());
        let data = bytes(KEEP_QUEUE_CAPACITY + 1);
        c.on_ready(IN);
        s.recv(&mut c, &data, true);
        s.blocked(&mut c);
        c.on_ready(OUT);
        s.sent(&mut c, data.len());
        assert_eq!(c.queue.capacity(), 0);
    }
}
