//! The request parser: RESP2 multibulk requests (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) and
//! inline commands (`GET k\r\n`), as Redis reads them (networking.c, processMultibulkBuffer
//! and processInlineBuffer). Input is gathered in one buffer, like Redis's query buffer,
//! until a whole command is there; the arguments are ranges of it.

use super::Limits;

/// The longest inline command, and the longest `*N` / `$N` line (Redis's
/// PROTO_INLINE_MAX_SIZE).
const INLINE_MAX: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No whole command yet.
    Partial,
    /// A command: its arguments are `Parser::args` until the next call.
    Command,
    /// A malformed request: Redis's message after `Protocol error: `; the connection closes.
    Error(&'static str),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    pos: usize,
    /// The last command's arguments, as ranges of `buf`.
    args: Vec<(usize, usize)>,
}

impl Parser {
    pub fn feed(&mut self, input: &[u8]) {
        self.buf.extend_from_slice(input);
    }

    /// Bytes of the input fed so far that whole commands took.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Nothing is held of a command begun.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == self.pos
    }

    /// Drops what was parsed, keeping what begins the next command (and little memory when
    /// nothing is held).
    pub fn consumed(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            if self.buf.capacity() > 16 * 1024 {
                self.buf = Vec::new();
            }
        } else {
            self.buf.drain(..self.pos);
        }
        self.pos = 0;
        self.args.clear();
    }

    pub fn args(&self) -> Vec<&[u8]> {
        self.args.iter().map(|&(a, b)| &self.buf[a..b]).collect()
    }

    /// The next command in the input fed so far.
    pub fn next(&mut self, limits: &Limits) -> Parsed {
        self.args.clear();
        loop {
            let rest = &self.buf[self.pos..];
            let Some(&first) = rest.first() else {
                return Parsed::Partial;
            };
            let r = if first == b'*' {
                self.multibulk(limits)
            } else {
                self.inline()
            };
            match r {
                // An empty line, or `*0`/`*-1`: nothing to run.
                Ok(Some(0)) => continue,
                Ok(Some(_)) => return Parsed::Command,
                Ok(None) => return Parsed::Partial,
                Err(e) => return Parsed::Error(e),
            }
        }
    }

    /// An inline command: the words of one line. Ok(None): the line has not ended.
    fn inline(&mut self) -> Result<Option<usize>, &'static str> {
        let rest = &self.buf[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > INLINE_MAX {
                return Err("too big inline request");
            }
            return Ok(None);
        };
        let start = self.pos;
        let mut end = start + nl;
        if end > start && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        let mut i = start;
        while i < end {
            while i < end && self.buf[i].is_ascii_whitespace() {
                i += 1;
            }
            let w = i;
            while i < end && !self.buf[i].is_ascii_whitespace() {
                i += 1;
            }
            if i > w {
                self.args.push((w, i));
            }
        }
        self.pos = start + nl + 1;
        Ok(Some(self.args.len()))
    }

    /// A multibulk request. Ok(None): not whole yet (nothing is consumed).
    fn multibulk(&mut self, limits: &Limits) -> Result<Option<usize>, &'static str> {
        let mut i = self.pos;
        let Some((count, next)) = line_number(&self.buf, i + 1, "too big mbulk count string")?
        else {
            return Ok(None);
        };
        if count > i64::from(limits.max_multibulk) || count > i64::from(i32::MAX) {
            return Err("invalid multibulk length");
        }
        i = next;
        let mut args = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count.max(0) {
            match self.buf.get(i) {
                None => return Ok(None),
                Some(b'$') => {}
                Some(&b) => return Err(expected_dollar(b)),
            }
            let Some((len, next)) = line_number(&self.buf, i + 1, "too big bulk count string")?
            else {
                return Ok(None);
            };
            if len < 0 || len as u64 > limits.max_bulk_bytes {
                return Err("invalid bulk length");
            }
            let len = len as usize;
            if self.buf.len() < next + len + 2 {
                return Ok(None);
            }
            args.push((next, next + len));
            i = next + len + 2;
        }
        self.pos = i;
        self.args = args;
        Ok(Some(self.args.len()))
    }
}

/// Redis's message for a multibulk argument that does not start with `$`.
fn expected_dollar(_b: u8) -> &'static str {
    "expected '$', got something else"
}

/// The number on the line starting at `at`, and where the next line starts. Ok(None): the
/// line has not ended.
fn line_number(
    buf: &[u8],
    at: usize,
    too_big: &'static str,
) -> Result<Option<(i64, usize)>, &'static str> {
    let rest = buf.get(at..).unwrap_or(&[]);
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        if rest.len() > INLINE_MAX {
            return Err(too_big);
        }
        return Ok(None);
    };
    if rest.len() < cr + 2 {
        return Ok(None);
    }
    let n = std::str::from_utf8(&rest[..cr])
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    match n {
        Some(n) => Ok(Some((n, at + cr + 2))),
        None if too_big.contains("mbulk") => Err("invalid multibulk length"),
        None => Err("invalid bulk length"),
    }
}
