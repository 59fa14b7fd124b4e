//! One load-generator connection's request stream: requests of `size` bytes cut from the
//! pattern, sent in order with at most one send in flight, and their echoes verified byte by
//! byte as they come back, in order, whatever the chunking. Several requests may be
//! outstanding (`--depth`, or an open-loop schedule running ahead of the server). Pure: the
//! shard feeds it completions and carries out what it returns.

use std::collections::VecDeque;
use std::time::Instant;

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
    /// Bytes that are not the echo of what was sent (or more bytes than were sent).
    Mismatch,
    /// A send failed (`-errno`) or took no byte (0).
    SendFailed(i32),
}

#[derive(Debug)]
pub struct Stream {
    conn: u64,
    size: usize,
    seq: u64,
    /// Requests issued and not yet fully echoed, oldest first. The first `sending` of them
    /// are completely sent; the next one is being sent (`sent` bytes so far).
    reqs: VecDeque<Req>,
    sending: usize,
    sent: usize,
    in_flight: bool,
    /// Echo bytes of the oldest request verified so far.
    got: usize,
}

impl Stream {
    pub fn new(conn: u64, size: usize) -> Self {
        Stream {
            conn,
            size,
            seq: 0,
            reqs: VecDeque::new(),
            sending: 0,
            sent: 0,
            in_flight: false,
            got: 0,
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
        self.reqs.push_back(Req {
            off: pattern_offset(self.conn, self.seq),
            intended,
            sent_at: None,
        });
        self.seq += 1;
    }

    /// The next send to submit, if none is in flight: pattern offset and length.
    pub fn next_send(&mut self, now: Instant) -> Option<(usize, usize)> {
        if self.in_flight {
            return None;
        }
        let req = self.reqs.get_mut(self.sending)?;
        req.sent_at.get_or_insert(now);
        self.in_flight = true;
        Some((req.off + self.sent, self.size - self.sent))
    }

    /// The send in flight completed with `res`.
    pub fn on_sent(&mut self, res: i32) -> Result<(), Fault> {
        self.in_flight = false;
        let n = usize::try_from(res).ok().filter(|n| *n > 0);
        let Some(n) = n.filter(|n| self.sent + n <= self.size) else {
            return Err(Fault::SendFailed(res.min(0)));
        };
        self.sent += n;
        if self.sent == self.size {
            self.sending += 1;
            self.sent = 0;
        }
        Ok(())
    }

    /// Echo bytes arrived: verifies them in order, calling `done` for each request they
    /// complete.
    pub fn on_data(
        &mut self,
        mut data: &[u8],
        pattern: &[u8],
        mut done: impl FnMut(Completed),
    ) -> Result<(), Fault> {
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
        let mut s = Stream::new(3, 100);
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
        let mut s = Stream::new(1, 10);
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
        let mut s = Stream::new(1, 10);
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
        let mut s = Stream::new(1, 10);
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
        let mut s = Stream::new(0, 10);
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
}
