//! One load-generator connection's request stream: requests of `size` bytes cut from the
//! pinned request region, sent in order with at most one send in flight, and their answers
//! checked as they come back, in order, whatever the chunking: echo answers byte by byte
//! against what was sent, HTTP answers by status (200) and body (`Hello, World!`). Several
//! requests may be outstanding (`--depth`, `--pipeline`, or an open-loop schedule running
//! ahead of the server). Pure: the shard feeds it completions and carries out what it
//! returns.

use std::collections::VecDeque;
use std::time::Instant;

use crate::proto::http::{self, ResponseCheck};

/// What the requests are, and so how their answers are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    /// Echo: `size` bytes at an offset into the pattern that varies with connection and
    /// request (`pattern_offset`); the answer is those bytes.
    Echo,
    /// HTTP: the region holds `copies` copies of one GET of `size` bytes, one after the
    /// other, so consecutive requests lie end to end and pipelined ones go out in one send;
    /// every answer must be 200 with the plaintext body.
    Http { copies: usize },
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

/// A request whose whole echo came back and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub intended: Instant,
    pub sent_at: Instant,
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
    /// HTTP: the reader of answers.
    check: Option<ResponseCheck>,
}

impl Stream {
    pub fn new(conn: u64, size: usize, kind: Requests) -> Self {
        Stream {
            conn,
            size,
            kind,
            seq: 0,
            reqs: VecDeque::new(),
            sending: 0,
            sent: 0,
            in_flight: false,
            offered: 0,
            got: 0,
            check: matches!(kind, Requests::Http { .. }).then(ResponseCheck::new),
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
        };
        self.reqs.push_back(Req {
            off,
            intended,
            sent_at: None,
        });
        self.seq += 1;
    }

    /// The next send to submit, if none is in flight: region offset and length. It takes
    /// the rest of the request being sent and every later one that lies right after it.
    pub fn next_send(&mut self, now: Instant) -> Option<(usize, usize)> {
        if self.in_flight {
            return None;
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
        Some((start, end - start))
    }

    /// The send in flight completed with `res`.
    pub fn on_sent(&mut self, res: i32) -> Result<(), Fault> {
        self.in_flight = false;
        let n = usize::try_from(res).ok().filter(|n| *n > 0);
        let Some(n) = n.filter(|n| *n <= self.offered) else {
            return Err(Fault::SendFailed(res.min(0)));
        };
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
        if let Some(check) = &mut self.check {
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
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (off, len) = s.next_send(t).unwrap();
        assert_eq!((off, len), (pattern_offset(3, 0), 100));
        assert_eq!(s.next_send(t), None, "one send in flight");
        s.on_sent(60).unwrap();
        assert_eq!(s.next_send(t), Some((off + 60, 40)));
        let echo = echo_of(&p, 3, 0, 100);
        let mut done = Vec::new();
        s.on_data(&echo[..50], &p, |c| done.push(c)).unwrap();
        s.on_sent(40).unwrap();
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
            let (off, len) = s.next_send(t).unwrap();
            assert_eq!(off, pattern_offset(1, seq));
            s.on_sent(len as i32).unwrap();
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
        s.next_send(t);
        s.on_sent(10).unwrap();
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
        s.next_send(t);
        s.on_sent(4).unwrap();
        let echo = echo_of(&p, 1, 0, 10);
        assert_eq!(s.on_data(&echo[..5], &p, |_| {}), Err(Fault::Mismatch));
    }

    #[test]
    fn a_failed_or_empty_send_is_a_fault() {
        let t = Instant::now();
        let mut s = Stream::new(0, 10, Requests::Echo);
        s.issue(t);
        s.next_send(t);
        assert_eq!(
            s.on_sent(-libc::EPIPE),
            Err(Fault::SendFailed(-libc::EPIPE))
        );
        s.next_send(t);
        assert_eq!(s.on_sent(0), Err(Fault::SendFailed(0)));
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
        assert_eq!(s.next_send(t), Some((0, 3 * GET.len())));
        // A short send: the rest goes next, from the middle of the second request.
        s.on_sent(GET.len() as i32 + 5).unwrap();
        assert_eq!(s.next_send(t), Some((GET.len() + 5, 2 * GET.len() - 5)));
        let mut n = 0;
        s.on_data(&OK[..20], &region, |_| n += 1).unwrap();
        s.on_data(&OK[20..], &region, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        s.on_sent(2 * GET.len() as i32 - 5).unwrap();
        s.on_data(&OK.repeat(2), &region, |_| n += 1).unwrap();
        assert_eq!((n, s.outstanding()), (3, 0));
        // The region wraps after `copies` requests: the send stops there.
        for _ in 0..3 {
            s.issue(t);
        }
        assert_eq!(s.next_send(t), Some((3 * GET.len(), GET.len())));
    }

    #[test]
    fn http_answers_that_are_wrong_or_early_are_faults() {
        let t = Instant::now();
        let (mut s, region) = http_stream(2);
        assert_eq!(s.on_data(OK, &region, |_| {}), Err(Fault::Mismatch));
        let (mut s, _) = http_stream(2);
        s.issue(t);
        s.next_send(t);
        s.on_sent(GET.len() as i32).unwrap();
        let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            s.on_data(not_found, &region, |_| {}),
            Err(Fault::HttpStatus(404))
        );
        let (mut s, _) = http_stream(2);
        s.issue(t);
        s.next_send(t);
        s.on_sent(GET.len() as i32).unwrap();
        let wrong = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!";
        assert_eq!(s.on_data(wrong, &region, |_| {}), Err(Fault::HttpBody));
        let (mut s, _) = http_stream(2);
        s.issue(t);
        s.next_send(t);
        s.on_sent(GET.len() as i32).unwrap();
        assert_eq!(
            s.on_data(b"SSH-2.0\r\n", &region, |_| {}),
            Err(Fault::HttpMalformed)
        );
    }
}
