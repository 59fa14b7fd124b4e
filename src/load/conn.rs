//! One load-generator connection's request stream: requests of `size` bytes cut from the
//! pinned request region, sent in order with at most one send in flight, and their answers
//! checked as they come back, in order, whatever the chunking: echo answers byte by byte
//! against what was sent, HTTP answers by status (200) and body (`Hello, World!`), Redis
//! replies against the one each command must get. Several requests may be outstanding
//! (`--depth`, `--pipeline`, or an open-loop schedule running ahead of the server). Pure:
//! the shard feeds it completions and carries out what it returns.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::proto::http::{self, ResponseCheck};
use crate::proto::redis::check::{self as redis, Commands, ErrorPrefix, ReplyCheck, Verb};

/// What the requests are, and so how their answers are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requests {
    /// Echo: `size` bytes at an offset into the pattern that varies with connection and
    /// request (`pattern_offset`); the answer is those bytes.
    Echo,
    /// HTTP: the region holds `copies` copies of one GET of `size` bytes, one after the
    /// other, so consecutive requests lie end to end and pipelined ones go out in one send;
    /// every answer must be 200 with the plaintext body.
    Http { copies: usize },
    /// Redis: SETs and GETs as `Commands` makes them, encoded when they are sent (a send
    /// takes every request issued and not yet sent), every reply checked.
    Redis(Arc<Commands>),
}

/// A send for the shard to submit.
#[derive(Debug, PartialEq, Eq)]
pub enum Send {
    /// `len` bytes at `off` of the request region.
    Region { off: usize, len: usize },
    /// `data[start..]`: the send owns `data` until its completion hands it back.
    Bytes { data: Vec<u8>, start: usize },
}

/// Offsets into the pattern region vary with connection and request, so that bytes crossed
/// between connections or requests cannot verify. The region is `size + PATTERN_SPREAD` long.
pub const PATTERN_SPREAD: usize = 1 << 16;

pub fn pattern_offset(conn: u64, seq: u64) -> usize {
    (conn
        .wrapping_mul(7919)
        .wrapping_add(seq.wrapping_mul(104_729))
        % PATTERN_SPREAD as u64) as usize
}

#[derive(Debug, Clone, Copy)]
struct Req {
    off: usize,
    /// When the request was due: its schedule time (open loop) or when it was issued.
    intended: Instant,
    /// When its first byte was handed to the kernel.
    sent_at: Option<Instant>,
}

/// A request whose whole answer came back and checked (echo: verified byte by byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub intended: Instant,
    pub sent_at: Instant,
    /// Redis: the reply it got.
    pub reply: Option<redis::Reply>,
}

/// What went wrong on a stream; the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes that are not the echo of what was sent (or more bytes than were sent), or an
    /// answer to a request not yet sent.
    Mismatch,
    /// An HTTP answer with another status than 200.
    HttpStatus(u16),
    /// An HTTP 200 whose body is not the plaintext one.
    HttpBody,
    /// Bytes that are not an HTTP/1.1 answer.
    HttpMalformed,
    /// A Redis error reply.
    RedisError(ErrorPrefix),
    /// A Redis reply other than one the command may get.
    RedisUnexpected(Verb),
    /// A send failed (`-errno`) or took no byte (0).
    SendFailed(i32),
}

#[derive(Debug)]
pub struct Stream {
    conn: u64,
    size: usize,
    kind: Requests,
    seq: u64,
    /// Requests issued and not yet fully echoed, oldest first. The first `sending` of them
    /// are completely sent; the next one is being sent (`sent` bytes so far).
    reqs: VecDeque<Req>,
    sending: usize,
    sent: usize,
    in_flight: bool,
    /// Bytes offered to the send in flight.
    offered: usize,
    /// Echo bytes of the oldest request verified so far.
    got: usize,
    check: Check,
    /// Redis: the rest of a send that went short, to go next.
    rest: Option<(Vec<u8>, usize)>,
}

/// The reader of answers.
#[derive(Debug)]
enum Check {
    /// Echo: `got`, against the region.
    Echo,
    Http(ResponseCheck),
    Redis(ReplyCheck),
}

impl Stream {
    pub fn new(conn: u64, size: usize, kind: Requests) -> Self {
        Stream {
            conn,
            size,
            seq: 0,
            reqs: VecDeque::new(),
            sending: 0,
            sent: 0,
            in_flight: false,
            offered: 0,
            got: 0,
            check: match kind {
                Requests::Echo => Check::Echo,
                Requests::Http { .. } => Check::Http(ResponseCheck::new()),
                Requests::Redis(_) => Check::Redis(ReplyCheck::new()),
            },
            kind,
            rest: None,
        }
    }

    /// Requests issued so far.
    pub fn issued(&self) -> u64 {
        self.seq
    }

    /// Requests issued and not yet fully echoed.
    pub fn outstanding(&self) -> usize {
        self.reqs.len()
    }

    /// Issues a request due at `intended`.
    pub fn issue(&mut self, intended: Instant) {
        let off = match self.kind {
            Requests::Echo => pattern_offset(self.conn, self.seq),
            Requests::Http { copies } => (self.seq % copies as u64) as usize * self.size,
            Requests::Redis(_) => 0,
        };
        self.reqs.push_back(Req {
            off,
            intended,
            sent_at: None,
        });
        self.seq += 1;
    }

    /// The next send to submit, if none is in flight. In the region, it takes the rest of
    /// the request being sent and every later one that lies right after it; Redis's are
    /// encoded into a buffer taken from `spare`.
    pub fn next_send(&mut self, now: Instant, spare: &mut Vec<Vec<u8>>) -> Option<Send> {
        if self.in_flight {
            return None;
        }
        if let Requests::Redis(cmds) = &self.kind {
            let (data, start) = match self.rest.take() {
                Some(rest) => rest,
                None if self.sending < self.reqs.len() => {
                    let mut data = spare.pop().unwrap_or_default();
                    let first = self.seq - (self.reqs.len() - self.sending) as u64;
                    for (n, req) in (first..).zip(self.reqs.range_mut(self.sending..)) {
                        cmds.encode(self.conn, n, &mut data);
                        req.sent_at = Some(now);
                    }
                    // Counted as sent once handed to the send: Redis answers each command
                    // as soon as it has it whole, maybe before the send's last byte.
                    self.sending = self.reqs.len();
                    (data, 0)
                }
                None => return None,
            };
            self.in_flight = true;
            self.offered = data.len() - start;
            return Some(Send::Bytes { data, start });
        }
        let first = self.reqs.get_mut(self.sending)?;
        first.sent_at.get_or_insert(now);
        let (start, mut end) = (first.off + self.sent, first.off + self.size);
        for req in self.reqs.range_mut(self.sending + 1..) {
            if req.off != end {
                break;
            }
            req.sent_at = Some(now);
            end += self.size;
        }
        self.in_flight = true;
        self.offered = end - start;
        Some(Send::Region {
            off: start,
            len: end - start,
        })
    }

    /// The send in flight completed with `res`, handing back its buffer if it had one (a
    /// buffer done with goes to `spare`).
    pub fn on_sent(
        &mut self,
        res: i32,
        bytes: Option<(Vec<u8>, usize)>,
        spare: &mut Vec<Vec<u8>>,
    ) -> Result<(), Fault> {
        self.in_flight = false;
        let n = usize::try_from(res).ok().filter(|n| *n > 0);
        let Some(n) = n.filter(|n| *n <= self.offered) else {
            return Err(Fault::SendFailed(res.min(0)));
        };
        if let Some((mut data, start)) = bytes {
            if start + n < data.len() {
                self.rest = Some((data, start + n));
            } else {
                data.clear();
                spare.push(data);
            }
            return Ok(());
        }
        self.sent += n;
        self.sending += self.sent / self.size;
        self.sent %= self.size;
        Ok(())
    }

    /// Answer bytes arrived: checks them in order, calling `done` for each request they
    /// complete. `pattern` is the request region.
    pub fn on_data(
        &mut self,
        mut data: &[u8],
        pattern: &[u8],
        mut done: impl FnMut(Completed),
    ) -> Result<(), Fault> {
        if let (Check::Redis(check), Requests::Redis(cmds)) = (&mut self.check, &self.kind) {
            let (reqs, sending) = (&mut self.reqs, &mut self.sending);
            let mut fault = None;
            let framed = check.on_input(data, cmds, self.conn, |reply| {
                if fault.is_some() {
                    return;
                }
                if *sending == 0 {
                    fault = Some(Fault::Mismatch);
                    return;
                }
                // Answered, rightly or not: no longer outstanding.
                let req = reqs.pop_front().expect("a sent request is outstanding");
                *sending -= 1;
                match reply {
                    redis::Reply::Error(prefix) => fault = Some(Fault::RedisError(prefix)),
                    _ => done(Completed {
                        intended: req.intended,
                        sent_at: req.sent_at.expect("a sent request has a send time"),
                        reply: Some(reply),
                    }),
                }
            });
            return match (framed, fault) {
                (_, Some(f)) => Err(f),
                (Err(redis::Unexpected(verb)), None) => {
                    // Answered, wrongly (or by bytes a request not yet sent cannot have).
                    if *sending == 0 {
                        return Err(Fault::Mismatch);
                    }
                    reqs.pop_front();
                    *sending -= 1;
                    Err(Fault::RedisUnexpected(verb))
                }
                (Ok(()), None) => Ok(()),
            };
        }
        if let Check::Http(check) = &mut self.check {
            let (reqs, sending) = (&mut self.reqs, &mut self.sending);
            let mut fault = None;
            let framed = check.on_input(data, http::BODY, |a| {
                if fault.is_some() {
                    return;
                }
                if *sending == 0 {
                    fault = Some(Fault::Mismatch);
                    return;
                }
                // Answered, rightly or not: no longer outstanding.
                let req = reqs.pop_front().expect("a sent request is outstanding");
                *sending -= 1;
                if a.status != 200 {
                    fault = Some(Fault::HttpStatus(a.status));
                } else if !a.body_ok {
                    fault = Some(Fault::HttpBody);
                } else {
                    done(Completed {
                        intended: req.intended,
                        sent_at: req.sent_at.expect("a fully sent request has a send time"),
                        reply: None,
                    });
                }
            });
            return match (framed, fault) {
                (_, Some(f)) => Err(f),
                (Err(http::Malformed), None) => Err(Fault::HttpMalformed),
                (Ok(()), None) => Ok(()),
            };
        }
        while !data.is_empty() {
            let Some(front) = self.reqs.front() else {
                return Err(Fault::Mismatch);
            };
            // Bytes of the oldest request that have been sent, hence may come back.
            let sent = if self.sending > 0 {
                self.size
            } else {
                self.sent
            };
            let n = data.len().min(self.size - self.got);
            if self.got + n > sent {
                return Err(Fault::Mismatch);
            }
            let start = front.off + self.got;
            if pattern[start..start + n] != data[..n] {
                return Err(Fault::Mismatch);
            }
            self.got += n;
            data = &data[n..];
            if self.got == self.size {
                let req = self.reqs.pop_front().expect("front exists");
                self.sending -= 1;
                self.got = 0;
                done(Completed {
                    intended: req.intended,
                    sent_at: req.sent_at.expect("a fully sent request has a send time"),
                    reply: None,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next send, of the region.
    fn send(s: &mut Stream, t: Instant) -> Option<(usize, usize)> {
        match s.next_send(t, &mut Vec::new())? {
            Send::Region { off, len } => Some((off, len)),
            other => panic!("{other:?}"),
        }
    }

    fn sent(s: &mut Stream, res: i32) -> Result<(), Fault> {
        s.on_sent(res, None, &mut Vec::new())
    }

    fn pattern() -> Vec<u8> {
        (0..PATTERN_SPREAD + 1000)
            .map(|i| (i * 31 % 251) as u8)
            .collect()
    }

    fn echo_of(p: &[u8], conn: u64, seq: u64, size: usize) -> Vec<u8> {
        let off = pattern_offset(conn, seq);
        p[off..off + size].to_vec()
    }

    #[test]
    fn one_request_sent_in_two_short_sends_and_echoed_in_pieces() {
        let p = pattern();
        let t = Instant::now();
        let mut s = Stream::new(3, 100, Requests::Echo);
        s.issue(t);
        let (off, len) = send(&mut s, t).unwrap();
        assert_eq!((off, len), (pattern_offset(3, 0), 100));
        assert_eq!(send(&mut s, t), None, "one send in flight");
        sent(&mut s, 60).unwrap();
        assert_eq!(send(&mut s, t), Some((off + 60, 40)));
        let echo = echo_of(&p, 3, 0, 100);
        let mut done = Vec::new();
        s.on_data(&echo[..50], &p, |c| done.push(c)).unwrap();
        sent(&mut s, 40).unwrap();
        s.on_data(&echo[50..], &p, |c| done.push(c)).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn pipelined_requests_whose_echoes_share_a_chunk() {
        let p = pattern();
        let t = Instant::now();
        let mut s = Stream::new(1, 10, Requests::Echo);
        for _ in 0..3 {
            s.issue(t);
        }
        let mut echoes = Vec::new();
        for seq in 0..3 {
            let (off, len) = send(&mut s, t).unwrap();
            assert_eq!(off, pattern_offset(1, seq));
            sent(&mut s, len as i32).unwrap();
            echoes.extend(echo_of(&p, 1, seq, 10));
        }
        let mut n = 0;
        s.on_data(&echoes[..15], &p, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        s.on_data(&echoes[15..], &p, |_| n += 1).unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn a_wrong_byte_is_a_mismatch() {
        let p = pattern();
        let t = Instant::now();
        let mut s = Stream::new(1, 10, Requests::Echo);
        s.issue(t);
        send(&mut s, t);
        sent(&mut s, 10).unwrap();
        let mut echo = echo_of(&p, 1, 0, 10);
        echo[7] ^= 1;
        assert_eq!(s.on_data(&echo, &p, |_| {}), Err(Fault::Mismatch));
    }

    #[test]
    fn bytes_before_they_were_sent_or_with_nothing_outstanding_are_a_mismatch() {
        let p = pattern();
        let t = Instant::now();
        let mut s = Stream::new(1, 10, Requests::Echo);
        assert_eq!(s.on_data(&[1], &p, |_| {}), Err(Fault::Mismatch));
        s.issue(t);
        send(&mut s, t);
        sent(&mut s, 4).unwrap();
        let echo = echo_of(&p, 1, 0, 10);
        assert_eq!(s.on_data(&echo[..5], &p, |_| {}), Err(Fault::Mismatch));
    }

    #[test]
    fn a_failed_or_empty_send_is_a_fault() {
        let t = Instant::now();
        let mut s = Stream::new(0, 10, Requests::Echo);
        s.issue(t);
        send(&mut s, t);
        assert_eq!(
            sent(&mut s, -libc::EPIPE),
            Err(Fault::SendFailed(-libc::EPIPE))
        );
        send(&mut s, t);
        assert_eq!(sent(&mut s, 0), Err(Fault::SendFailed(0)));
    }

    #[test]
    fn offsets_differ_between_connections_and_requests() {
        assert_ne!(pattern_offset(0, 0), pattern_offset(1, 0));
        assert_ne!(pattern_offset(0, 0), pattern_offset(0, 1));
        assert!(pattern_offset(u64::MAX, u64::MAX) < PATTERN_SPREAD);
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

    fn http_stream(copies: usize) -> (Stream, Vec<u8>) {
        (
            Stream::new(0, GET.len(), Requests::Http { copies }),
            GET.repeat(copies),
        )
    }

    #[test]
    fn pipelined_http_requests_go_out_in_one_send_and_each_answer_completes_one() {
        let t = Instant::now();
        let (mut s, region) = http_stream(4);
        for _ in 0..3 {
            s.issue(t);
        }
        assert_eq!(send(&mut s, t), Some((0, 3 * GET.len())));
        // A short send: the rest goes next, from the middle of the second request.
        sent(&mut s, GET.len() as i32 + 5).unwrap();
        assert_eq!(send(&mut s, t), Some((GET.len() + 5, 2 * GET.len() - 5)));
        let mut n = 0;
        s.on_data(&OK[..20], &region, |_| n += 1).unwrap();
        s.on_data(&OK[20..], &region, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        sent(&mut s, 2 * GET.len() as i32 - 5).unwrap();
        s.on_data(&OK.repeat(2), &region, |_| n += 1).unwrap();
        assert_eq!((n, s.outstanding()), (3, 0));
        // The region wraps after `copies` requests: the send stops there.
        for _ in 0..3 {
            s.issue(t);
        }
        assert_eq!(send(&mut s, t), Some((3 * GET.len(), GET.len())));
    }

    #[test]
    fn http_answers_that_are_wrong_or_early_are_faults() {
        let t = Instant::now();
        let (mut s, region) = http_stream(2);
        assert_eq!(s.on_data(OK, &region, |_| {}), Err(Fault::Mismatch));
        let (mut s, _) = http_stream(2);
        s.issue(t);
        send(&mut s, t);
        sent(&mut s, GET.len() as i32).unwrap();
        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            s.on_data(not_found, &region, |_| {}),
            Err(Fault::HttpStatus(404))
        );
        let (mut s, _) = http_stream(2);
        s.issue(t);
        send(&mut s, t);
        sent(&mut s, GET.len() as i32).unwrap();
        let wrong = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!";
        assert_eq!(s.on_data(wrong, &region, |_| {}), Err(Fault::HttpBody));
        let (mut s, _) = http_stream(2);
        s.issue(t);
        send(&mut s, t);
        sent(&mut s, GET.len() as i32).unwrap();
        assert_eq!(
            s.on_data(b"SSH-2.0\r\n", &region, |_| {}),
            Err(Fault::HttpMalformed)
        );
    }

    fn redis_stream() -> (Stream, Arc<Commands>) {
        let cmds = Arc::new(Commands {
            sets: 1,
            gets: 2,
            conns: 4,
            key_maximum: 99,
            key_prefix: b"k-".to_vec(),
            data_size: 5,
            ttl: None,
            seed: 1,
        });
        (Stream::new(2, 5, Requests::Redis(cmds.clone())), cmds)
    }

    /// What Redis answers to connection 2's commands `n`: `+OK`, or the bulk its SET wrote.
    fn reply(cmds: &Commands, n: u64) -> Vec<u8> {
        let c = cmds.command(2, n);
        if c.verb == Verb::Set {
            return b"+OK\r\n".to_vec();
        }
        let first_set = (0..).find(|&m| cmds.command(2, m).set == c.set).unwrap();
        let mut set = Vec::new();
        cmds.encode(2, first_set, &mut set);
        // The value is the last argument: its 5 bytes before the final CRLF.
        let value = &set[set.len() - 7..set.len() - 2];
        [&b"$5\r\n"[..], value, b"\r\n"].concat()
    }

    #[test]
    fn pipelined_redis_commands_go_out_in_one_send_even_after_two_short_sends() {
        let t = Instant::now();
        let (mut s, cmds) = redis_stream();
        let mut spare = vec![Vec::with_capacity(64)];
        for _ in 0..3 {
            s.issue(t);
        }
        let Some(Send::Bytes { data, start: 0 }) = s.next_send(t, &mut spare) else {
            panic!("one buffer of the three commands")
        };
        let mut want = Vec::new();
        for n in 0..3 {
            cmds.encode(2, n, &mut want);
        }
        assert_eq!(data, want);
        assert!(spare.is_empty(), "the spare buffer was taken");
        assert_eq!(s.next_send(t, &mut spare), None, "one send in flight");
        // Two short sends, each going on from where the last stopped; then the rest.
        s.on_sent(10, Some((data, 0)), &mut spare).unwrap();
        let Some(Send::Bytes { data, start: 10 }) = s.next_send(t, &mut spare) else {
            panic!("the rest")
        };
        s.on_sent(7, Some((data, 10)), &mut spare).unwrap();
        let Some(Send::Bytes { data, start: 17 }) = s.next_send(t, &mut spare) else {
            panic!("the rest")
        };
        let n = data.len() - 17;
        s.on_sent(n as i32, Some((data, 17)), &mut spare).unwrap();
        assert_eq!((spare.len(), spare[0].len()), (1, 0), "back, emptied");
        assert_eq!(s.next_send(t, &mut spare), None, "nothing left to send");
        let replies: Vec<u8> = (0..3).flat_map(|n| reply(&cmds, n)).collect();
        let mut got = Vec::new();
        s.on_data(&replies[..9], &[], |c| got.push(c.reply))
            .unwrap();
        s.on_data(&replies[9..], &[], |c| got.push(c.reply))
            .unwrap();
        use redis::Reply::{Hit, Stored};
        assert_eq!(got, [Some(Stored), Some(Hit), Some(Hit)]);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn redis_replies_that_are_errors_wrong_or_early_are_faults() {
        let t = Instant::now();
        let (mut s, _) = redis_stream();
        assert_eq!(s.on_data(b"+OK\r\n", &[], |_| {}), Err(Fault::Mismatch));
        let sent = |s: &mut Stream| {
            s.issue(t);
            let Some(Send::Bytes { data, .. }) = s.next_send(t, &mut Vec::new()) else {
                panic!("a send")
            };
            s.on_sent(data.len() as i32, Some((data, 0)), &mut Vec::new())
                .unwrap();
        };
        let (mut s, _) = redis_stream();
        sent(&mut s);
        let Err(Fault::RedisError(prefix)) = s.on_data(b"-ERR no\r\n", &[], |_| {}) else {
            panic!("an error reply is a fault")
        };
        assert_eq!((prefix.to_string().as_str(), s.outstanding()), ("ERR", 0));
        let (mut s, _) = redis_stream();
        sent(&mut s);
        assert_eq!(
            s.on_data(b"$-1\r\n", &[], |_| {}),
            Err(Fault::RedisUnexpected(Verb::Set))
        );
        assert_eq!(s.outstanding(), 0, "answered, wrongly");
    }
}
