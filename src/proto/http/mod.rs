//! HTTP/1.1 (RFC 9112), both ends: the server's request parser and answers
//! ([`request`]: `Session`), the load generator's check of answers ([`check`]:
//! `ResponseCheck`), and the `Date` header's value ([`date`]). Pure, incremental state
//! machines: bytes in, bytes out, no I/O, no unsafe, no allocation (answers are appended to
//! the caller's `Vec`). Input may be split anywhere and may hold several pipelined messages.

pub mod check;
pub mod date;
pub mod request;

pub use check::{Answer, Malformed, ResponseCheck};
pub use date::Date;
pub use request::{Capture, LOG_FIELD_MAX, Logged, Outcome, Reading, Session, Status};

/// The answer to `GET /plaintext`.
pub const BODY: &[u8] = b"Hello, World!";

/// What a request may be; over these the connection is answered and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers together (and a chunked body's trailer).
    pub max_header_bytes: u32,
    /// A request body, declared or (chunked) summed.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    /// nginx's defaults: 8 KiB of headers (large_client_header_buffers), 1 MiB of body
    /// (client_max_body_size).
    fn default() -> Self {
        Limits {
            max_header_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Matches a token against a few candidate words as its bytes arrive, split anywhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Match {
    /// Bytes seen, saturating (no candidate is near 255 bytes long).
    len: u8,
    /// Bit i: the bytes so far are a prefix of word i.
    cand: u16,
}

impl Match {
    fn new(words: &[&[u8]]) -> Match {
        Match {
            len: 0,
            cand: (1u16 << words.len()) - 1,
        }
    }

    fn push(&mut self, b: u8, words: &[&[u8]]) {
        let mut c = self.cand;
        while c != 0 {
            let i = c.trailing_zeros() as usize;
            c &= c - 1;
            if words[i].get(usize::from(self.len)) != Some(&b) {
                self.cand &= !(1 << i);
            }
        }
        self.len = self.len.saturating_add(1);
    }

    /// The word the token is, if it is one of them.
    fn found(&self, words: &[&[u8]]) -> Option<usize> {
        (0..words.len())
            .find(|&i| self.cand & (1 << i) != 0 && words[i].len() == usize::from(self.len))
    }
}

/// RFC 9110 `tchar`: what methods, header names and tokens are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a header value may hold: visible characters, obs-text, space and tab.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7F)
}

#[cfg(test)]
mod testing {
    //! What the request and check tests share: a fixed date, and the server's answers to a
    //! request as text.

    use super::{Date, Limits, Outcome, Session};

    /// RFC 9110's example date.
    pub fn date() -> Date {
        Date::at(784_111_777)
    }

    pub fn feed(s: &mut Session, input: &[u8], out: &mut Vec<u8>) -> Outcome {
        s.on_input(input, &Limits::default(), &date(), out)
    }

    /// The answers to `input` fed whole, as text, and whether the connection closes.
    pub fn answer(input: &[u8]) -> (String, bool) {
        let mut out = Vec::new();
        let o = feed(&mut Session::new(), input, &mut out);
        (String::from_utf8(out).unwrap(), o.close)
    }

    pub const OK: &str = "HTTP/1.1 200 OK\r\nServer: c1m\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                          Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";
}
