//! One connection's state in the Proactor: a pure state machine fed the completions of its
//! operations, which returns what it wants done as `Effect`s (send this, recycle that buffer,
//! re-arm or cancel the recv, shut, close; counters; timer changes), in order. No fds, no
//! unsafe, no calls back into the shard: the shard applies the effects in one place, and the
//! tests below and the kernel model (`conn_check`) read them.
//!
//! Output rules: at most one send in flight. Echo: bytes that arrive while it is in flight
//! are copied to `queued` (coalescing them into the next send) and their buffer goes back at
//! once; bytes that arrive when nothing is in flight are sent straight from their provided
//! buffer, which goes back when the send has taken them all. HTTP: the answers to what
//! arrived are appended to `queued` and the buffer goes back at once; after an answer that
//! ends the connection, what arrives is discarded, and once the last byte is sent the write
//! side is shut and the close waits for the peer's EOF (`Phase::Lingering`). A short send
//! resubmits the rest.
//!
//! Output is bounded: once more than `OUTPUT_CAP` bytes are queued (a peer that sends but does
//! not read), the multishot recv is cancelled, and it is re-armed when the queue has drained,
//! so such a peer can neither grow the server's memory nor hold the shard's buffers.

use std::collections::VecDeque;

use crate::proto::http::Reading;
use crate::proto::{Capture, Done, Session};
use crate::server::core::{self, KEEP_QUEUE_CAPACITY, ProtoEnv};

/// What the connection asks of its shard.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `len` bytes from byte `off` of provided buffer `bid` (held by this connection).
    SendBuf {
        bid: u16,
        off: u32,
        len: u32,
    },
    /// Send `data[start..]`; the bytes come back with its completion (`on_sent`).
    SendVec {
        data: Vec<u8>,
        start: usize,
    },
    /// Give buffer `bid` back to the kernel.
    Recycle(u16),
    ArmRecv,
    /// The recv ended for lack of buffers: call `rearm` once some have come back.
    WaitBuffers,
    CancelRecv,
    /// Cancel the send in flight (one to a peer that does not read may never finish): of a
    /// `Vec` if `vec`, else of a provided buffer.
    CancelSend {
        vec: bool,
    },
    /// Shut the write side (everything owed has been sent): the peer reads EOF.
    ShutdownWrite,
    Close,
    /// A send took fewer bytes than offered; the rest was resubmitted.
    ShortSend,
    /// HTTP requests or Redis commands answered.
    Answered(u32),
    /// Redis with `--appendfsync always`: replies wait until the journal is durable to
    /// this position; call `durable` once it is.
    Hold(u64),
    /// The connection ends on an error (once per connection).
    Failed,
    /// HTTP: which part of a request is being read (the header or body timeout runs).
    Reading(Reading),
    /// The connection closes after a final answer, or aborts after a timeout: the timer
    /// wheel bounds what is left of it.
    Linger,
}

/// A recv completion: its result, the provided buffer it filled (with the bytes) if any,
/// and IORING_CQE_F_MORE.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub res: i32,
    pub buf: Option<(u16, &'a [u8])>,
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Armed,
    /// Cancelled because too much output is queued; its final completion has not come yet.
    Pausing,
    /// Stopped because too much output is queued; re-armed when the queue drains.
    Paused,
    /// Ended for lack of buffers; the shard re-arms it.
    WaitingBuffers,
    /// Ended for good: EOF, error, or cancelled on purpose.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inflight {
    None,
    Buf { bid: u16, off: u32, len: u32 },
    Vec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// The peer half-closed: echo what arrived, then close.
    PeerDone,
    /// Stop reading, finish what is owed, then close (server shutdown).
    Draining,
    /// HTTP, after an answer that closes: send what is owed, then shut the write side
    /// (`shut`) and read and discard until the peer's EOF, so that bytes it sent after the
    /// request are not left unread at close (which would reset the connection and could
    /// destroy the answer before the peer read it). The shard bounds it with a timer.
    Lingering {
        shut: bool,
    },
    /// An error or a deadline: drop what is owed and close as soon as operations end.
    Aborting,
    /// The close was submitted.
    Closing,
}

/// Queued output above which the connection stops being read.
pub const OUTPUT_CAP: usize = 256 * 1024;

#[derive(Debug)]
pub struct Conn {
    pub generation: u32,
    pub fixed: u32,
    recv: Recv,
    inflight: Inflight,
    queued: Vec<u8>,
    phase: Phase,
    /// The HTTP or Redis session when one is served (boxed: echo connections pay one
    /// pointer); echo when None.
    session: Option<Box<Session>>,
    /// With `--access-log`: the requests' fields, and those answered, for the shard.
    log: Option<Box<Capture>>,
    /// Redis with `--appendfsync always`: replies that wait for the journal (see `Held`).
    held: Option<Box<Held>>,
}

/// Replies that wait until the journal is durable. Bytes are counted from the connection's
/// first (`base` is where `queued` starts); each gate holds back everything queued from its
/// `start` on until the journal is durable to its `lsn`, so replies still go out in order.
#[derive(Debug, Default)]
struct Held {
    base: u64,
    /// (lsn, start), oldest first; lsns only grow.
    gates: VecDeque<(u64, u64)>,
}

impl Conn {
    /// A connection just accepted into direct slot `fixed`, speaking the protocol of `env`
    /// (echo without one); arms its recv.
    pub fn accepted(
        generation: u32,
        fixed: u32,
        env: Option<&ProtoEnv>,
        out: &mut Vec<Effect>,
    ) -> Self {
        out.push(Effect::ArmRecv);
        Conn {
            generation,
            fixed,
            recv: Recv::Armed,
            inflight: Inflight::None,
            queued: Vec::new(),
            phase: Phase::Open,
            session: env.map(|e| Box::new(e.session())),
            log: None,
            held: None,
        }
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

    /// Whether the recv is waiting for buffers and may be re-armed.
    #[cfg(test)]
    fn wants_buffers(&self) -> bool {
        self.recv == Recv::WaitingBuffers
    }

    /// HTTP: which part of a request is being read.
    fn reading(&self) -> Reading {
        self.session
            .as_deref()
            .map_or(Reading::Between, core::reading)
    }

    /// In a lingering close (see `Phase::Lingering`).
    fn lingering(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. })
    }

    /// The header or body timeout passed: answer 408 and close (lingering). An echo connection, or
    /// one already ending, is aborted. Either way the linger timer bounds what is left.
    pub fn time_out(&mut self, env: Option<&ProtoEnv>, out: &mut Vec<Effect>) {
        let answered = match (&mut self.session, env) {
            (Some(session), Some(env)) if self.phase == Phase::Open => {
                env.time_out(session, &mut self.queued, self.log.as_deref_mut())
            }
            _ => false,
        };
        if answered {
            if self.inflight == Inflight::None {
                self.send_queued(out);
            }
            self.linger(out);
        } else {
            self.abort(out);
        }
        out.push(Effect::Linger);
    }

    /// The journal is durable to `lsn`: the replies held for it go out.
    pub fn durable(&mut self, lsn: u64, out: &mut Vec<Effect>) {
        let Some(held) = &mut self.held else {
            return;
        };
        while held.gates.front().is_some_and(|&(l, _)| l <= lsn) {
            held.gates.pop_front();
        }
        if held.gates.is_empty() {
            self.held = None;
        }
        if self.inflight == Inflight::None {
            self.send_queued(out);
        }
        self.maybe_close(out);
    }

    #[cfg(test)]
    fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// Bytes owed to the peer and not yet handed to a send.
    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.queued.len()
    }

    /// A recv completion (HTTP connections need their shard's `http`).
    pub fn on_recv(&mut self, r: Received<'_>, http: Option<&ProtoEnv>, out: &mut Vec<Effect>) {
        match r.buf {
            Some((bid, bytes)) if !bytes.is_empty() => self.on_data(bid, bytes, r.more, http, out),
            Some((bid, _)) => {
                out.push(Effect::Recycle(bid));
                if !r.more {
                    self.on_recv_end(r.res, out);
                }
            }
            None => self.on_recv_end(r.res, out),
        }
    }

    /// `bytes` arrived in buffer `bid`; `more` is IORING_CQE_F_MORE.
    fn on_data(
        &mut self,
        bid: u16,
        bytes: &[u8],
        more: bool,
        http: Option<&ProtoEnv>,
        out: &mut Vec<Effect>,
    ) {
        let len = bytes.len() as u32;
        if matches!(
            self.phase,
            Phase::Aborting | Phase::Closing | Phase::Lingering { .. }
        ) {
            out.push(Effect::Recycle(bid));
        } else if let Some(session) = &mut self.session {
            let env = http.expect("a connection's shard serves its protocol");
            let start = self.queued.len();
            let o = env.input(session, bytes, &mut self.queued, self.log.as_deref_mut());
            out.push(Effect::Recycle(bid));
            if o.answers > 0 {
                out.push(Effect::Answered(o.answers));
            }
            if let Some(lsn) = o.lsn {
                let held = self.held.get_or_insert_default();
                held.gates.push_back((lsn, held.base + start as u64));
                out.push(Effect::Hold(lsn));
            }
            if self.inflight == Inflight::None {
                self.send_queued(out);
            }
            if o.close {
                self.linger(out);
            } else {
                self.pause_if_over_cap(more, out);
            }
        } else if self.inflight == Inflight::None && self.queued.is_empty() {
            self.inflight = Inflight::Buf { bid, off: 0, len };
            out.push(Effect::SendBuf { bid, off: 0, len });
        } else {
            crate::proto::echo::reply(bytes, &mut self.queued);
            out.push(Effect::Recycle(bid));
            self.pause_if_over_cap(more, out);
        }
        if !more && self.recv == Recv::Pausing {
            // The cancel and the end of the multishot crossed: nothing left to cancel.
            self.recv = Recv::Paused;
            if self.lingering() {
                self.recv = Recv::Armed;
                out.push(Effect::ArmRecv);
            }
        } else if !more {
            // The multishot ended after this buffer (it can, e.g. on CQ overflow): go on.
            if self.reads() {
                out.push(Effect::ArmRecv);
            } else {
                self.recv = Recv::Done;
            }
        }
        self.maybe_close(out);
        if self.session.is_some() {
            out.push(Effect::Reading(self.reading()));
        }
        if self.lingering() {
            out.push(Effect::Linger);
        }
    }

    /// After a closing HTTP answer: lingering close (see `Phase::Lingering`). A peer that has
    /// already half-closed has nothing more to send: the close follows the answer.
    fn linger(&mut self, out: &mut Vec<Effect>) {
        if self.phase == Phase::Open {
            self.phase = Phase::Lingering { shut: false };
            if self.recv == Recv::Paused {
                self.recv = Recv::Armed;
                out.push(Effect::ArmRecv);
            }
        }
        self.maybe_close(out);
    }

    /// Whether the recv should be kept armed: open, or discarding in a lingering close.
    fn reads(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Lingering { .. })
    }

    /// Stops reading a peer that does not read what it is sent (see the module doc).
    fn pause_if_over_cap(&mut self, more: bool, out: &mut Vec<Effect>) {
        if self.queued.len() > OUTPUT_CAP && self.recv == Recv::Armed && more {
            self.recv = Recv::Pausing;
            out.push(Effect::CancelRecv);
        }
    }

    /// A recv completion without data: `res` is 0 (EOF) or -errno; never has F_MORE.
    fn on_recv_end(&mut self, res: i32, out: &mut Vec<Effect>) {
        let pausing = self.recv == Recv::Pausing;
        self.recv = Recv::Done;
        match -res {
            libc::ECANCELED if pausing && self.phase == Phase::Open => {
                self.recv = Recv::Paused;
                self.resume(out);
            }
            libc::ECANCELED if pausing && self.lingering() => {
                self.recv = Recv::Armed;
                out.push(Effect::ArmRecv);
            }
            0 => {
                if self.phase == Phase::Open {
                    self.phase = Phase::PeerDone;
                }
            }
            libc::ENOBUFS if self.reads() => {
                self.recv = Recv::WaitingBuffers;
                out.push(Effect::WaitBuffers);
            }
            libc::ENOBUFS | libc::ECANCELED => {}
            _ => self.fail(out),
        }
        self.maybe_close(out);
    }

    /// Re-arms a recv that waited for buffers (the shard calls this when some came back).
    /// Returns whether it was waiting.
    pub fn rearm(&mut self, out: &mut Vec<Effect>) -> bool {
        if self.recv != Recv::WaitingBuffers {
            return false;
        }
        if self.reads() {
            self.recv = Recv::Armed;
            out.push(Effect::ArmRecv);
        } else {
            self.recv = Recv::Done;
            self.maybe_close(out);
        }
        true
    }

    /// The send in flight completed with `res`; a `SendVec`'s bytes come back in `vec`.
    pub fn on_sent(&mut self, res: i32, vec: Option<(Vec<u8>, usize)>, out: &mut Vec<Effect>) {
        match vec {
            Some((data, start)) => self.on_sent_vec(res, data, start, out),
            None => self.on_sent_buf(res, out),
        }
    }

    /// The send from a provided buffer completed with `res`.
    fn on_sent_buf(&mut self, res: i32, out: &mut Vec<Effect>) {
        let Inflight::Buf { bid, off, len } = self.inflight else {
            debug_assert!(false, "buffer send completion without one in flight");
            return;
        };
        self.inflight = Inflight::None;
        match u32::try_from(res) {
            Ok(n) if n > 0 && n < len && self.phase != Phase::Aborting => {
                out.push(Effect::ShortSend);
                self.inflight = Inflight::Buf {
                    bid,
                    off: off + n,
                    len: len - n,
                };
                out.push(Effect::SendBuf {
                    bid,
                    off: off + n,
                    len: len - n,
                });
            }
            Ok(n) if n == len => {
                out.push(Effect::Recycle(bid));
                self.send_queued(out);
            }
            _ => {
                out.push(Effect::Recycle(bid));
                self.fail(out);
            }
        }
        self.maybe_close(out);
    }

    /// The send of `data[start..]` completed with `res`.
    fn on_sent_vec(&mut self, res: i32, mut data: Vec<u8>, start: usize, out: &mut Vec<Effect>) {
        debug_assert_eq!(self.inflight, Inflight::Vec);
        self.inflight = Inflight::None;
        let rest = data.len() - start;
        match usize::try_from(res) {
            Ok(n) if n > 0 && n < rest && self.phase != Phase::Aborting => {
                out.push(Effect::ShortSend);
                self.inflight = Inflight::Vec;
                out.push(Effect::SendVec {
                    data,
                    start: start + n,
                });
            }
            Ok(n) if n == rest => {
                if self.queued.is_empty() && data.capacity() <= KEEP_QUEUE_CAPACITY {
                    data.clear();
                    self.queued = data;
                }
                self.send_queued(out);
            }
            _ => self.fail(out),
        }
        self.maybe_close(out);
    }

    /// Server shutdown: stop reading, send what is owed, then close.
    pub fn drain(&mut self, out: &mut Vec<Effect>) {
        if matches!(
            self.phase,
            Phase::Open | Phase::PeerDone | Phase::Lingering { .. }
        ) {
            self.phase = Phase::Draining;
            match self.recv {
                Recv::Armed => out.push(Effect::CancelRecv),
                Recv::Paused => self.recv = Recv::Done,
                _ => {}
            }
        }
        self.maybe_close(out);
    }

    /// An operation failed (reset, broken pipe): counted once per connection, then abort.
    fn fail(&mut self, out: &mut Vec<Effect>) {
        if !matches!(self.phase, Phase::Aborting | Phase::Closing) {
            out.push(Effect::Failed);
        }
        self.abort(out);
    }

    /// Drop what is owed and close once every operation has ended.
    pub fn abort(&mut self, out: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Aborting | Phase::Closing) {
            return;
        }
        self.phase = Phase::Aborting;
        self.queued = Vec::new();
        self.held = None;
        match self.recv {
            Recv::Armed => out.push(Effect::CancelRecv),
            Recv::Paused => self.recv = Recv::Done,
            _ => {}
        }
        match self.inflight {
            Inflight::None => {}
            Inflight::Buf { .. } => out.push(Effect::CancelSend { vec: false }),
            Inflight::Vec => out.push(Effect::CancelSend { vec: true }),
        }
        self.maybe_close(out);
    }

    /// Sends what is queued, up to the first reply held (`Held`).
    fn send_queued(&mut self, out: &mut Vec<Effect>) {
        let free = match &mut self.held {
            None => self.queued.len(),
            Some(h) => {
                let free = h
                    .gates
                    .front()
                    .map_or(self.queued.len(), |&(_, start)| (start - h.base) as usize);
                h.base += free as u64;
                free
            }
        };
        if free > 0 && self.phase != Phase::Aborting {
            let rest = if free < self.queued.len() {
                self.queued.split_off(free)
            } else {
                Vec::new()
            };
            self.inflight = Inflight::Vec;
            out.push(Effect::SendVec {
                data: std::mem::replace(&mut self.queued, rest),
                start: 0,
            });
        }
        self.resume(out);
    }

    /// Re-arms a recv paused for queued output once all of it has been sent.
    fn resume(&mut self, out: &mut Vec<Effect>) {
        let drained = self.queued.is_empty() && self.inflight == Inflight::None;
        if self.recv == Recv::Paused && drained && self.phase == Phase::Open {
            self.recv = Recv::Armed;
            out.push(Effect::ArmRecv);
        }
    }

    fn maybe_close(&mut self, out: &mut Vec<Effect>) {
        let idle = self.queued.is_empty() && self.inflight == Inflight::None;
        let finished = match self.phase {
            Phase::Open | Phase::Closing => false,
            Phase::PeerDone | Phase::Draining => self.queued.is_empty(),
            Phase::Lingering { shut } => {
                if idle && !shut {
                    self.phase = Phase::Lingering { shut: true };
                    out.push(Effect::ShutdownWrite);
                }
                self.queued.is_empty()
            }
            Phase::Aborting => true,
        };
        let recv_over = if self.lingering() {
            // Until the peer's EOF (or error): a recv waiting for buffers is re-armed.
            self.recv == Recv::Done
        } else {
            !matches!(self.recv, Recv::Armed | Recv::Pausing)
        };
        if finished && recv_over && self.inflight == Inflight::None {
            self.phase = Phase::Closing;
            out.push(Effect::Close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Act {
        SendBuf(u16, u32, u32),
        /// Length and start of the bytes handed to the send.
        SendVec(usize, usize),
        Recycle(u16),
        Arm,
        Wait,
        CancelRecv,
        CancelSend(bool),
        Close,
        Short,
        Failed,
        Shut,
    }

    #[derive(Default)]
    struct Rec {
        acts: Vec<Act>,
        /// What the next HTTP data completion's buffer holds.
        input: Vec<u8>,
        /// The bytes of the last vec send.
        sent: Vec<u8>,
        answered: u32,
        /// The shard's HTTP environment, for HTTP tests.
        http: Option<ProtoEnv>,
        /// The timer effects seen, apart from the acts.
        parts: Vec<Reading>,
        lingers: usize,
        /// The positions of `Effect::Hold`s.
        held: Vec<u64>,
        effects: Vec<Effect>,
    }

    impl Rec {
        fn take(&mut self) -> Vec<Act> {
            std::mem::take(&mut self.acts)
        }

        /// Records the effects the last call returned.
        fn record(&mut self) {
            for e in std::mem::take(&mut self.effects) {
                let act = match e {
                    Effect::SendBuf { bid, off, len } => Act::SendBuf(bid, off, len),
                    Effect::SendVec { data, start } => {
                        let act = Act::SendVec(data.len(), start);
                        self.sent = data;
                        act
                    }
                    Effect::Recycle(bid) => Act::Recycle(bid),
                    Effect::ArmRecv => Act::Arm,
                    Effect::WaitBuffers => Act::Wait,
                    Effect::CancelRecv => Act::CancelRecv,
                    Effect::CancelSend { vec } => Act::CancelSend(vec),
                    Effect::ShutdownWrite => Act::Shut,
                    Effect::Close => Act::Close,
                    Effect::ShortSend => Act::Short,
                    Effect::Failed => Act::Failed,
                    Effect::Answered(n) => {
                        self.answered += n;
                        continue;
                    }
                    Effect::Reading(part) => {
                        self.parts.push(part);
                        continue;
                    }
                    Effect::Linger => {
                        self.lingers += 1;
                        continue;
                    }
                    Effect::Hold(lsn) => {
                        self.held.push(lsn);
                        continue;
                    }
                };
                self.acts.push(act);
            }
        }
    }

    /// Buffer `bid` holds bytes `bid, bid, bid...`.
    static BUF: [u8; 4096] = [0; 4096];

    /// A connection under test: the events a shard feeds it, each recording the effects it
    /// returns in the `Rec`.
    struct Tested(Conn);

    impl std::ops::Deref for Tested {
        type Target = Conn;
        fn deref(&self) -> &Conn {
            &self.0
        }
    }

    impl Tested {
        fn on_data(&mut self, bid: u16, len: u32, more: bool, io: &mut Rec) {
            let bytes = if io.input.is_empty() {
                &BUF[..len as usize]
            } else {
                &io.input[..len as usize]
            };
            let r = Received {
                res: len as i32,
                buf: Some((bid, bytes)),
                more,
            };
            self.0.on_recv(r, io.http.as_ref(), &mut io.effects);
            io.record();
        }
        fn on_recv_end(&mut self, res: i32, io: &mut Rec) {
            let r = Received {
                res,
                buf: None,
                more: false,
            };
            self.0.on_recv(r, io.http.as_ref(), &mut io.effects);
            io.record();
        }
        fn on_sent_buf(&mut self, res: i32, io: &mut Rec) {
            self.0.on_sent(res, None, &mut io.effects);
            io.record();
        }
        fn on_sent_vec(&mut self, res: i32, data: Vec<u8>, start: usize, io: &mut Rec) {
            self.0.on_sent(res, Some((data, start)), &mut io.effects);
            io.record();
        }
        fn rearm(&mut self, io: &mut Rec) -> bool {
            let waited = self.0.rearm(&mut io.effects);
            io.record();
            waited
        }
        fn drain(&mut self, io: &mut Rec) {
            self.0.drain(&mut io.effects);
            io.record();
        }
        fn abort(&mut self, io: &mut Rec) {
            self.0.abort(&mut io.effects);
            io.record();
        }
        fn time_out(&mut self, io: &mut Rec) {
            self.0.time_out(io.http.as_ref(), &mut io.effects);
            io.record();
        }
    }

    fn open() -> (Tested, Rec) {
        let mut io = Rec::default();
        let c = Tested(Conn::accepted(1, 5, None, &mut io.effects));
        io.record();
        assert_eq!(io.take(), vec![Act::Arm]);
        (c, io)
    }

    fn open_http() -> (Tested, Rec) {
        let mut io = Rec {
            http: Some(ProtoEnv {
                limits: http::Limits::default(),
                date: http::Date::at(0),
                now: std::time::Instant::now(),
                redis: None,
            }),
            ..Rec::default()
        };
        let c = Tested(Conn::accepted(1, 5, io.http.as_ref(), &mut io.effects));
        io.record();
        assert_eq!(io.take(), vec![Act::Arm]);
        (c, io)
    }

    /// An HTTP data completion in buffer 7 holding `input`.
    fn http_data(c: &mut Tested, io: &mut Rec, input: &[u8], more: bool) {
        io.input = input.to_vec();
        c.on_data(7, input.len() as u32, more, io);
    }

    fn statuses(bytes: &[u8]) -> usize {
        bytes.windows(9).filter(|w| w == b"HTTP/1.1 ").count()
    }

    /// A Redis connection whose shard holds replies to writes until the journal is durable
    /// (`--appendfsync always`).
    fn open_redis_always() -> (Tested, Rec) {
        use crate::proto::redis::{Config, Keyspace, Limits};
        use crate::server::core::RedisEnv;
        let keyspace = Keyspace::new(Config {
            maxmemory: None,
            journal: true,
        });
        let mut io = Rec {
            http: Some(ProtoEnv {
                limits: http::Limits::default(),
                date: http::Date::at(0),
                now: std::time::Instant::now(),
                redis: Some(RedisEnv::new(
                    std::sync::Arc::new(keyspace),
                    Limits::default(),
                    true,
                )),
            }),
            ..Rec::default()
        };
        let c = Tested(Conn::accepted(1, 5, io.http.as_ref(), &mut io.effects));
        io.record();
        assert_eq!(io.take(), vec![Act::Arm]);
        (c, io)
    }

    #[test]
    fn redis_replies_after_a_write_wait_until_it_is_durable_and_keep_their_order() {
        let (mut c, mut io) = open_redis_always();
        // A read's reply goes at once; a write's, arriving while it is in flight, waits.
        http_data(&mut c, &mut io, b"PING\r\n", true);
        assert_eq!(io.take(), vec![Act::Recycle(7), Act::SendVec(7, 0)]);
        http_data(
            &mut c,
            &mut io,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
            true,
        );
        assert_eq!(io.take(), vec![Act::Recycle(7)]);
        let lsn = io.held.pop().expect("the write is held");
        let sent = std::mem::take(&mut io.sent);
        c.on_sent_vec(sent.len() as i32, sent, 0, &mut io);
        assert_eq!(io.take(), vec![]);
        // A read behind the held write waits behind it.
        http_data(&mut c, &mut io, b"PING\r\n", true);
        assert_eq!(io.take(), vec![Act::Recycle(7)]);
        assert_eq!(c.queued_bytes(), 5 + 7);
        // Durable short of it: nothing; durable to it: both, in order.
        c.0.durable(lsn - 1, &mut io.effects);
        io.record();
        assert_eq!(io.take(), vec![]);
        c.0.durable(lsn, &mut io.effects);
        io.record();
        assert_eq!(io.take(), vec![Act::SendVec(12, 0)]);
        assert_eq!(io.sent, b"+OK\r\n+PONG\r\n");
    }

    #[test]
    fn http_answers_go_out_in_one_send_and_the_buffer_back_at_once() {
        let (mut c, mut io) = open_http();
        let two = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n";
        http_data(&mut c, &mut io, two, true);
        let acts = io.take();
        assert_eq!(acts[0], Act::Recycle(7));
        assert!(matches!(acts[1..], [Act::SendVec(_, 0)]), "{acts:?}");
        assert_eq!((io.answered, statuses(&io.sent)), (2, 2));
        // A request that arrives while that send is in flight waits, then goes out alone.
        http_data(&mut c, &mut io, &two[..27], true);
        assert_eq!(io.take(), vec![Act::Recycle(7)]);
        assert_eq!(c.queued_bytes(), io.sent.len() / 2);
        let sent = std::mem::take(&mut io.sent);
        c.on_sent_vec(sent.len() as i32, sent, 0, &mut io);
        assert!(matches!(io.take()[..], [Act::SendVec(_, 0)]));
        assert_eq!(statuses(&io.sent), 1);
    }

    #[test]
    fn a_header_timeout_answers_408_then_lingers_and_an_echo_one_aborts() {
        let (mut c, mut io) = open_http();
        http_data(&mut c, &mut io, b"GET / HTTP/1.1\r\nHost", true);
        assert_eq!(c.reading(), Reading::Head);
        io.take();
        c.time_out(&mut io);
        assert_eq!(io.take(), vec![Act::SendVec(io.sent.len(), 0)]);
        assert!(io.sent.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"));
        assert!(c.reading() == Reading::Between && c.lingering());
        let sent = std::mem::take(&mut io.sent);
        c.on_sent_vec(sent.len() as i32, sent, 0, &mut io);
        assert_eq!(io.take(), vec![Act::Shut]);
        c.on_recv_end(0, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);

        let (mut c, mut io) = open();
        assert_eq!(c.reading(), Reading::Between);
        c.time_out(&mut io);
        assert_eq!(io.take(), vec![Act::CancelRecv]);
        c.on_recv_end(-libc::ECANCELED, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
    }

    #[test]
    fn the_timers_hear_of_a_head_a_body_and_the_linger_and_echo_says_nothing() {
        use Reading::{Between, Body, Head};
        let (mut c, mut io) = open_http();
        http_data(&mut c, &mut io, b"GET / HTTP/1.1\r\nHost", true);
        assert_eq!((&io.parts[..], io.lingers), (&[Head][..], 0));
        http_data(&mut c, &mut io, b": a\r\nContent-Length: 3\r\n\r\nab", true);
        assert_eq!((&io.parts[..], io.lingers), (&[Head, Body][..], 0));
        http_data(&mut c, &mut io, b"c", true);
        assert_eq!((&io.parts[..], io.lingers), (&[Head, Body, Between][..], 0));
        http_data(
            &mut c,
            &mut io,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            true,
        );
        assert_eq!(
            (&io.parts[..], io.lingers),
            (&[Head, Body, Between, Between][..], 1)
        );
        let (mut c, mut io) = open();
        c.on_data(1, 10, true, &mut io);
        c.time_out(&mut io);
        assert_eq!((&io.parts[..], io.lingers), (&[][..], 1));
    }

    /// The lingering close: the answer goes out whole, then the write side is shut, then
    /// whatever the peer still sends is read and discarded until its EOF, then the close.
    #[test]
    fn http_connection_close_sends_the_answer_shuts_and_lingers_to_the_peers_eof() {
        let (mut c, mut io) = open_http();
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        http_data(&mut c, &mut io, req, true);
        assert!(matches!(
            io.take()[..],
            [Act::Recycle(7), Act::SendVec(_, 0)]
        ));
        assert!(c.lingering());
        // Later requests are read and discarded, never answered.
        http_data(&mut c, &mut io, req, true);
        assert_eq!(io.take(), vec![Act::Recycle(7)]);
        let sent = std::mem::take(&mut io.sent);
        let n = sent.len();
        c.on_sent_vec(10, sent, 0, &mut io);
        assert_eq!(io.take(), vec![Act::Short, Act::SendVec(n, 10)]);
        let sent = std::mem::take(&mut io.sent);
        c.on_sent_vec(n as i32 - 10, sent, 10, &mut io);
        assert_eq!(io.take(), vec![Act::Shut]);
        // The multishot may end (CQ overflow) while lingering: it is re-armed.
        http_data(&mut c, &mut io, req, false);
        assert_eq!(io.take(), vec![Act::Recycle(7), Act::Arm]);
        c.on_recv_end(0, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
        assert!(c.is_closing());
    }

    #[test]
    fn http_garbage_after_the_peers_eof_closes_after_the_answer() {
        let (mut c, mut io) = open_http();
        http_data(&mut c, &mut io, b"\x16\x03\x01 hello", true);
        assert!(matches!(
            io.take()[..],
            [Act::Recycle(7), Act::SendVec(_, 0)]
        ));
        assert!(io.sent.starts_with(b"HTTP/1.1 400 "));
        c.on_recv_end(0, &mut io);
        assert_eq!(io.take(), vec![], "the answer is still in flight");
        let sent = std::mem::take(&mut io.sent);
        c.on_sent_vec(sent.len() as i32, sent, 0, &mut io);
        assert_eq!(io.take(), vec![Act::Shut, Act::Close]);
    }

    #[test]
    fn server_shutdown_while_lingering_cancels_the_recv_and_closes() {
        let (mut c, mut io) = open_http();
        http_data(&mut c, &mut io, b"GET / HTTP/1.0\r\n\r\n", true);
        let sent = std::mem::take(&mut io.sent);
        c.on_sent_vec(sent.len() as i32, sent, 0, &mut io);
        io.take();
        c.drain(&mut io);
        assert_eq!(io.take(), vec![Act::CancelRecv]);
        c.on_recv_end(-libc::ECANCELED, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
    }

    #[test]
    fn data_is_sent_from_its_buffer_and_recycled_when_all_sent() {
        let (mut c, mut io) = open();
        c.on_data(3, 100, true, &mut io);
        assert_eq!(io.take(), vec![Act::SendBuf(3, 0, 100)]);
        c.on_sent_buf(100, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(3)]);
    }

    #[test]
    fn short_send_then_second_short_send_sends_exactly_the_rest() {
        let (mut c, mut io) = open();
        c.on_data(3, 100, true, &mut io);
        io.take();
        c.on_sent_buf(30, &mut io);
        assert_eq!(io.take(), vec![Act::Short, Act::SendBuf(3, 30, 70)]);
        c.on_sent_buf(50, &mut io);
        assert_eq!(io.take(), vec![Act::Short, Act::SendBuf(3, 80, 20)]);
        c.on_sent_buf(20, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(3)]);
    }

    #[test]
    fn data_during_a_send_is_coalesced_and_its_buffers_go_back_at_once() {
        let (mut c, mut io) = open();
        c.on_data(1, 10, true, &mut io);
        c.on_data(2, 20, true, &mut io);
        c.on_data(3, 30, true, &mut io);
        assert_eq!(
            io.take(),
            vec![Act::SendBuf(1, 0, 10), Act::Recycle(2), Act::Recycle(3)]
        );
        assert_eq!(c.queued_bytes(), 50);
        c.on_sent_buf(10, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(1), Act::SendVec(50, 0)]);
        // A short vec send resubmits from where it stopped.
        c.on_sent_vec(20, vec![0; 50], 0, &mut io);
        assert_eq!(io.take(), vec![Act::Short, Act::SendVec(50, 20)]);
        c.on_sent_vec(30, vec![0; 50], 20, &mut io);
        assert_eq!(io.take(), vec![]);
    }

    #[test]
    fn enobufs_waits_then_rearms() {
        let (mut c, mut io) = open();
        c.on_recv_end(-libc::ENOBUFS, &mut io);
        assert_eq!(io.take(), vec![Act::Wait]);
        assert!(c.wants_buffers());
        c.rearm(&mut io);
        assert_eq!(io.take(), vec![Act::Arm]);
        assert!(!c.wants_buffers());
    }

    #[test]
    fn final_data_cqe_without_more_rearms() {
        let (mut c, mut io) = open();
        c.on_data(4, 8, false, &mut io);
        assert_eq!(io.take(), vec![Act::SendBuf(4, 0, 8), Act::Arm]);
    }

    #[test]
    fn eof_while_a_send_is_in_flight_closes_after_the_send() {
        let (mut c, mut io) = open();
        c.on_data(1, 10, true, &mut io);
        c.on_data(2, 5, true, &mut io);
        io.take();
        c.on_recv_end(0, &mut io);
        assert_eq!(io.take(), vec![]);
        c.on_sent_buf(10, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(1), Act::SendVec(5, 0)]);
        c.on_sent_vec(5, vec![0; 5], 0, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
        assert!(c.is_closing());
    }

    #[test]
    fn eof_with_nothing_owed_closes_at_once() {
        let (mut c, mut io) = open();
        c.on_recv_end(0, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
    }

    #[test]
    fn reset_drops_what_is_owed_and_closes_after_the_send_ends() {
        let (mut c, mut io) = open();
        c.on_data(1, 10, true, &mut io);
        c.on_data(2, 10, true, &mut io);
        io.take();
        c.on_recv_end(-libc::ECONNRESET, &mut io);
        assert_eq!(io.take(), vec![Act::Failed, Act::CancelSend(false)]);
        // The send's own error after the reset is the same failure: counted once.
        c.on_sent_buf(-libc::ECONNRESET, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(1), Act::Close]);
    }

    #[test]
    fn send_error_cancels_the_recv_and_closes_when_it_ends() {
        let (mut c, mut io) = open();
        c.on_data(1, 10, true, &mut io);
        io.take();
        c.on_sent_buf(-libc::EPIPE, &mut io);
        assert_eq!(
            io.take(),
            vec![Act::Recycle(1), Act::Failed, Act::CancelRecv]
        );
        c.on_data(2, 10, true, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(2)]);
        c.on_recv_end(-libc::ECANCELED, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
    }

    #[test]
    fn drain_cancels_the_recv_echoes_late_data_then_closes() {
        let (mut c, mut io) = open();
        c.drain(&mut io);
        assert_eq!(io.take(), vec![Act::CancelRecv]);
        // Data that raced the cancel is still echoed.
        c.on_data(1, 10, true, &mut io);
        assert_eq!(io.take(), vec![Act::SendBuf(1, 0, 10)]);
        c.on_recv_end(-libc::ECANCELED, &mut io);
        assert_eq!(io.take(), vec![]);
        c.on_sent_buf(10, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(1), Act::Close]);
    }

    #[test]
    fn drain_while_waiting_for_buffers_closes_at_once_and_a_late_rearm_is_a_no_op() {
        let (mut c, mut io) = open();
        c.on_recv_end(-libc::ENOBUFS, &mut io);
        io.take();
        c.drain(&mut io);
        assert_eq!(io.take(), vec![Act::Close]);
        c.rearm(&mut io);
        assert_eq!(io.take(), vec![]);
    }

    #[test]
    fn abort_with_a_coalesced_send_in_flight_cancels_it_and_the_recv() {
        let (mut c, mut io) = open();
        c.on_data(1, 10, true, &mut io);
        c.on_data(2, 10, true, &mut io);
        c.on_sent_buf(10, &mut io);
        io.take();
        c.abort(&mut io);
        assert_eq!(io.take(), vec![Act::CancelRecv, Act::CancelSend(true)]);
        c.on_sent_vec(-libc::ECANCELED, vec![0; 10], 0, &mut io);
        assert_eq!(io.take(), vec![]);
        c.on_recv_end(-libc::ECANCELED, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
    }

    #[test]
    fn a_peer_that_does_not_read_stops_being_read_until_its_output_drains() {
        let (mut c, mut io) = open();
        c.on_data(0, 4096, true, &mut io);
        io.take();
        // The send to the non-reading peer stays in flight; input piles up to the cap.
        let per = 4096u32;
        let n = (OUTPUT_CAP / per as usize) as u16 + 1;
        for bid in 1..=n {
            c.on_data(bid % 8, per, true, &mut io);
        }
        let acts = io.take();
        assert_eq!(acts.last(), Some(&Act::CancelRecv), "{acts:?}");
        assert_eq!(acts.iter().filter(|a| **a == Act::CancelRecv).count(), 1);
        // Data racing the cancel is still queued, then the recv's final completion.
        c.on_data(1, 10, true, &mut io);
        c.on_recv_end(-libc::ECANCELED, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(1)]);
        // The first send completes; the queue goes out in one send; when it is sent, reading resumes.
        c.on_sent_buf(4096, &mut io);
        let acts = io.take();
        assert!(
            matches!(acts[..], [Act::Recycle(0), Act::SendVec(_, 0)]),
            "{acts:?}"
        );
        let queued = (n as usize) * per as usize + 10;
        c.on_sent_vec(queued as i32, vec![0; queued], 0, &mut io);
        assert_eq!(io.take(), vec![Act::Arm]);
    }

    #[test]
    fn a_multishot_that_ends_as_the_pause_is_cancelled_is_paused_not_rearmed() {
        let (mut c, mut io) = open();
        c.on_data(0, 10, true, &mut io);
        for _ in 0..(OUTPUT_CAP / 4096 + 1) {
            c.on_data(1, 4096, true, &mut io);
        }
        assert_eq!(io.take().last(), Some(&Act::CancelRecv));
        // The multishot ends on its own (no F_MORE) before the cancel lands.
        c.on_data(2, 100, false, &mut io);
        assert_eq!(io.take(), vec![Act::Recycle(2)], "no re-arm while paused");
        // The cancel then finds nothing; the drained queue re-arms the recv once.
        c.on_sent_buf(10, &mut io);
        let acts = io.take();
        assert!(
            matches!(acts[..], [Act::Recycle(0), Act::SendVec(..)]),
            "{acts:?}"
        );
        let queued = (OUTPUT_CAP / 4096 + 1) * 4096 + 100;
        c.on_sent_vec(queued as i32, vec![0; queued], 0, &mut io);
        assert_eq!(io.take(), vec![Act::Arm]);
    }

    #[test]
    fn eof_while_pausing_closes_once_output_is_sent() {
        let (mut c, mut io) = open();
        c.on_data(0, 10, true, &mut io);
        for _ in 0..(OUTPUT_CAP / 4096 + 1) {
            c.on_data(1, 4096, true, &mut io);
        }
        io.take();
        c.on_recv_end(0, &mut io);
        assert_eq!(io.take(), vec![]);
        c.on_sent_buf(10, &mut io);
        let acts = io.take();
        assert!(
            matches!(acts[..], [Act::Recycle(0), Act::SendVec(..)]),
            "{acts:?}"
        );
        let queued = (OUTPUT_CAP / 4096 + 1) * 4096;
        c.on_sent_vec(queued as i32, vec![0; queued], 0, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
    }

    #[test]
    fn abort_twice_acts_once() {
        let (mut c, mut io) = open();
        c.abort(&mut io);
        c.abort(&mut io);
        assert_eq!(io.take(), vec![Act::CancelRecv]);
        c.on_recv_end(-libc::ECANCELED, &mut io);
        assert_eq!(io.take(), vec![Act::Close]);
    }
}
