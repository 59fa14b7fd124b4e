//! One load-generator connection's request loop (closed loop, one request outstanding):
//! send `size` bytes of the pattern, expect exactly those bytes back, verify every byte, then
//! the next request. Pure: the shard feeds it completions and carries out what it returns.

/// What the connection asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until another completion.
    Wait,
    /// Send `len` bytes from pattern offset `off`.
    Send { off: usize, len: usize },
    /// A request completed (its echo verified); `Send` the next one or stop.
    Done,
    /// The peer sent bytes that are not the echo; the connection must close.
    Mismatch,
    /// The send failed or sent nothing; the connection must close.
    Broken,
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

#[derive(Debug, Clone)]
pub struct Request {
    /// Where in the pattern this request's bytes start.
    pub off: usize,
    pub size: usize,
    /// Bytes handed to the kernel so far.
    pub sent: usize,
    /// Bytes echoed back and verified so far.
    pub got: usize,
}

impl Request {
    pub fn new(conn: u64, seq: u64, size: usize) -> Self {
        Request {
            off: pattern_offset(conn, seq),
            size,
            sent: 0,
            got: 0,
        }
    }

    /// The first send of the request.
    pub fn start(&self) -> Next {
        Next::Send {
            off: self.off,
            len: self.size,
        }
    }

    /// A send completed with `res`: send the rest if it was short.
    pub fn on_sent(&mut self, res: i32) -> Next {
        match usize::try_from(res) {
            Ok(n) if n > 0 && self.sent + n <= self.size => {
                self.sent += n;
                if self.sent < self.size {
                    Next::Send {
                        off: self.off + self.sent,
                        len: self.size - self.sent,
                    }
                } else {
                    Next::Wait
                }
            }
            _ => Next::Broken,
        }
    }

    /// Bytes arrived: verify them against what was sent.
    pub fn on_data(&mut self, data: &[u8], pattern: &[u8]) -> Next {
        let end = self.got + data.len();
        if end > self.sent || pattern[self.off + self.got..self.off + end] != *data {
            return Next::Mismatch;
        }
        self.got = end;
        if self.got == self.size {
            Next::Done
        } else {
            Next::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern() -> Vec<u8> {
        (0..PATTERN_SPREAD + 100)
            .map(|i| (i * 31 % 251) as u8)
            .collect()
    }

    #[test]
    fn exact_echo_in_pieces_completes() {
        let p = pattern();
        let mut r = Request::new(3, 0, 100);
        assert_eq!(
            r.start(),
            Next::Send {
                off: r.off,
                len: 100
            }
        );
        assert_eq!(
            r.on_sent(60),
            Next::Send {
                off: r.off + 60,
                len: 40
            }
        );
        let first = p[r.off..r.off + 50].to_vec();
        assert_eq!(r.on_data(&first, &p), Next::Wait);
        assert_eq!(r.on_sent(40), Next::Wait);
        let rest = p[r.off + 50..r.off + 100].to_vec();
        assert_eq!(r.on_data(&rest, &p), Next::Done);
    }

    #[test]
    fn a_wrong_byte_is_a_mismatch() {
        let p = pattern();
        let mut r = Request::new(1, 1, 10);
        r.on_sent(10);
        let mut bytes = p[r.off..r.off + 10].to_vec();
        bytes[7] ^= 1;
        assert_eq!(r.on_data(&bytes, &p), Next::Mismatch);
    }

    #[test]
    fn more_bytes_than_were_sent_is_a_mismatch() {
        let p = pattern();
        let mut r = Request::new(1, 1, 10);
        r.on_sent(4);
        assert_eq!(r.on_data(&p[r.off..r.off + 5], &p), Next::Mismatch);
    }

    #[test]
    fn a_failed_or_empty_send_is_broken() {
        let mut r = Request::new(0, 0, 10);
        assert_eq!(r.on_sent(-libc::EPIPE), Next::Broken);
        assert_eq!(r.on_sent(0), Next::Broken);
    }

    #[test]
    fn offsets_differ_between_connections_and_requests() {
        assert_ne!(pattern_offset(0, 0), pattern_offset(1, 0));
        assert_ne!(pattern_offset(0, 0), pattern_offset(0, 1));
        assert!(pattern_offset(u64::MAX, u64::MAX) < PATTERN_SPREAD);
    }
}
