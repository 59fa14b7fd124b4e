//! HTTP/1.1 (RFC 9112), both ends: the server's request parser and answers (`Session`), and
//! the load generator's check of responses (`ResponseCheck`). Pure, incremental state
//! machines: bytes in, bytes out, no I/O, no unsafe, no allocation (answers are appended to
//! the caller's `Vec`).
//!
//! Input may be split anywhere and may hold several pipelined requests. The parser keeps no
//! copy of it, only what must outlive a split: where it is in the grammar, how far the
//! method, the path and the names and values of the four headers it acts on (Host,
//! Connection, Content-Length, Transfer-Encoding) match so far, and how much body is left
//! to discard. That is about 40 bytes per connection, which matters at a million.
//!
//! What the server answers:
//! - `GET` or `HEAD` of `/plaintext` or `/`: 200, `Hello, World!` as text/plain (the
//!   TechEmpower plaintext semantics); any other path 404; other methods 405 if RFC 9110
//!   defines them, 501 if not. These keep the connection open (keep-alive is the default in
//!   HTTP/1.1; in HTTP/1.0 only with `Connection: keep-alive`; `Connection: close` always
//!   closes after the answer).
//! - A request is answered once it has been read whole, body included (a body is read and
//!   discarded, whether framed by Content-Length or chunked), so pipelined answers keep
//!   their order and a body can never be taken for the next request.
//! - Input that cannot be framed safely gets one answer and the connection closes, and
//!   every later byte is ignored: malformed 400; request line and headers over
//!   `max_header_bytes` 431; a body over `max_body_bytes` 413; a transfer coding other than
//!   chunked 501; an HTTP major version other than 1 505. Content-Length together with
//!   Transfer-Encoding, or two different Content-Lengths, is 400 (request smuggling).

use std::time::{SystemTime, UNIX_EPOCH};

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

/// The `Date` header's value (IMF-fixdate), formatted once per second rather than per
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    secs: u64,
    text: [u8; 29],
}

impl Date {
    /// The date `unix_secs` seconds after the epoch.
    pub fn at(unix_secs: u64) -> Date {
        const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let days = unix_secs / 86_400;
        let s = unix_secs % 86_400;
        // Days to civil date: Howard Hinnant's `civil_from_days`, for days since 1970.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        let mut text = *b"Thu, 01 Jan 1970 00:00:00 GMT";
        text[..3].copy_from_slice(DAYS[(days % 7) as usize]);
        let two = |t: &mut [u8], v: u64| {
            t[0] = b'0' + (v / 10 % 10) as u8;
            t[1] = b'0' + (v % 10) as u8;
        };
        two(&mut text[5..7], day);
        text[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
        two(&mut text[12..14], year / 100);
        two(&mut text[14..16], year);
        two(&mut text[17..19], s / 3600);
        two(&mut text[20..22], s / 60 % 60);
        two(&mut text[23..25], s % 60);
        Date {
            secs: unix_secs,
            text,
        }
    }

    pub fn now() -> Date {
        Date::at(unix_now())
    }

    /// Re-formats if the second has changed (a vDSO clock read otherwise).
    pub fn refresh(&mut self) {
        let now = unix_now();
        if now != self.secs {
            *self = Date::at(now);
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The statuses the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    ContentTooLarge,
    HeadersTooLarge,
    NotImplemented,
    VersionNotSupported,
    RequestTimeout,
}

impl Status {
    fn line(self) -> &'static [u8] {
        match self {
            Status::Ok => b"HTTP/1.1 200 OK\r\n",
            Status::BadRequest => b"HTTP/1.1 400 Bad Request\r\n",
            Status::NotFound => b"HTTP/1.1 404 Not Found\r\n",
            Status::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n",
            Status::ContentTooLarge => b"HTTP/1.1 413 Content Too Large\r\n",
            Status::HeadersTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Status::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\n",
            Status::VersionNotSupported => b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
            Status::RequestTimeout => b"HTTP/1.1 408 Request Timeout\r\n",
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

const METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];
const GET: usize = 0;
const HEAD: usize = 1;
const PATHS: [&[u8]; 2] = [b"/", b"/plaintext"];
/// Header names, lowercase (names are case-insensitive).
const NAMES: [&[u8]; 4] = [
    b"host",
    b"connection",
    b"content-length",
    b"transfer-encoding",
];
const H_HOST: usize = 0;
const H_CONNECTION: usize = 1;
const H_CONTENT_LENGTH: usize = 2;
const H_TRANSFER_ENCODING: usize = 3;
/// Connection and Transfer-Encoding tokens, lowercase.
const TOKENS: [&[u8]; 3] = [b"close", b"keep-alive", b"chunked"];
const T_CLOSE: usize = 0;
const T_KEEP_ALIVE: usize = 1;
const T_CHUNKED: usize = 2;

/// RFC 9110 `tchar`: what methods, header names and tokens are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a header value may hold: visible characters, obs-text, space and tab.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7F)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request: empty lines are skipped (RFC 9112 2.2).
    Start,
    Method,
    Target,
    Version,
    /// The start of a header line, or of the empty line that ends the head.
    LineStart,
    Name,
    /// Whitespace before a header's value.
    ValueLead,
    Value,
    /// Discarding `remaining` bytes of a Content-Length body.
    Body,
    ChunkSize,
    /// After a chunk's size: extensions, skipped to the end of the line.
    ChunkExt,
    /// Discarding `remaining` bytes of chunk data.
    ChunkData,
    /// The line end after chunk data.
    ChunkEnd,
    /// A line of the trailer section (after the last chunk); an empty one ends the body.
    TrailerStart,
    Trailer,
    /// An answer that closes the connection was written: input is ignored.
    Dead,
}

/// What one call to `Session::on_input` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Answers written (one per request read whole, or the one error answer).
    pub answers: u32,
    /// The last answer closes the connection: send what was written, then close.
    pub close: bool,
}

/// One server connection's HTTP state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    state: State,
    /// A CR was read; the next byte must be LF.
    cr: bool,
    /// Bytes of the head (or trailer) so far, against `max_header_bytes`.
    head_bytes: u32,
    method: Match,
    path: Match,
    /// The target's path has ended (a `?` began its query).
    in_query: bool,
    target_len: u32,
    /// Bytes of the version so far.
    version_len: u8,
    /// Minor version 0: HTTP/1.0.
    http10: bool,
    name: Match,
    /// Which of `NAMES` the current header is, if any.
    header: Option<u8>,
    token: Match,
    hosts: u8,
    conn_close: bool,
    conn_keep_alive: bool,
    chunked: bool,
    /// A transfer coding other than chunked, or chunked not last.
    bad_coding: bool,
    content_length: Option<u64>,
    /// The Content-Length value being read.
    digits: Option<u64>,
    /// Whitespace followed the digits: only more whitespace may come.
    digits_done: bool,
    /// Body bytes left to discard (Content-Length, or the current chunk).
    remaining: u64,
    /// Chunked body bytes so far, against `max_body_bytes`.
    body_total: u64,
    /// The answer owed once the body has been read: status, HEAD, keep-alive.
    owed: Option<(Status, bool, bool)>,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    pub fn new() -> Session {
        Session {
            state: State::Start,
            cr: false,
            head_bytes: 0,
            method: Match::new(&METHODS),
            path: Match::new(&PATHS),
            in_query: false,
            target_len: 0,
            version_len: 0,
            http10: false,
            name: Match::new(&NAMES),
            header: None,
            token: Match::new(&TOKENS),
            hosts: 0,
            conn_close: false,
            conn_keep_alive: false,
            chunked: false,
            bad_coding: false,
            content_length: None,
            digits: None,
            digits_done: false,
            remaining: 0,
            body_total: 0,
            owed: None,
        }
    }

    /// Reads `input`, appending to `out` the answer to every request it completes.
    pub fn on_input(
        &mut self,
        input: &[u8],
        limits: &Limits,
        date: &Date,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let mut i = 0;
        while i < input.len() && self.state != State::Dead {
            match self.state {
                State::Body | State::ChunkData => {
                    let n = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    i += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        if self.state == State::Body {
                            self.finish(date, out, &mut outcome);
                        } else {
                            self.state = State::ChunkEnd;
                        }
                    }
                    continue;
                }
                State::Value if self.header.is_none() && !self.cr => {
                    // An ignored header's value (User-Agent, Accept, ...): skip to its end.
                    let rest = &input[i..];
                    let n = rest
                        .iter()
                        .position(|&b| !is_value_byte(b))
                        .unwrap_or(rest.len());
                    if !self.count_head(n, limits, date, out, &mut outcome) {
                        break;
                    }
                    i += n;
                    if n == rest.len() {
                        continue;
                    }
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            if self.in_head() && !self.count_head(1, limits, date, out, &mut outcome) {
                break;
            }
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    self.fail(Status::BadRequest, date, out, &mut outcome);
                    break;
                }
            }
            if b == b'\r' && self.ends_lines() {
                self.cr = true;
                continue;
            }
            if let Err(status) = self.step(b, limits, date, out, &mut outcome) {
                self.fail(status, date, out, &mut outcome);
            }
        }
        outcome
    }

    /// Whether a request head has begun and not yet ended (the header timeout runs).
    pub fn reading_head(&self) -> bool {
        matches!(
            self.state,
            State::Method
                | State::Target
                | State::Version
                | State::LineStart
                | State::Name
                | State::ValueLead
                | State::Value
        )
    }

    /// The header timeout passed: answers 408 and closes (nothing if an answer already
    /// closes the connection).
    pub fn time_out(&mut self, date: &Date, out: &mut Vec<u8>) -> Outcome {
        let mut outcome = Outcome::default();
        if self.state != State::Dead {
            self.fail(Status::RequestTimeout, date, out, &mut outcome);
        }
        outcome
    }

    /// States whose bytes count against `max_header_bytes`: all but body data.
    fn in_head(&self) -> bool {
        !matches!(self.state, State::Body | State::ChunkData | State::Dead)
    }

    /// States where CR may end a line (elsewhere it is a malformed byte).
    fn ends_lines(&self) -> bool {
        !matches!(
            self.state,
            State::Method
                | State::Target
                | State::Name
                | State::Body
                | State::ChunkData
                | State::Dead
        )
    }

    /// Counts `n` bytes of head or trailer; over the limit answers 431. False if it did.
    fn count_head(
        &mut self,
        n: usize,
        limits: &Limits,
        date: &Date,
        out: &mut Vec<u8>,
        outcome: &mut Outcome,
    ) -> bool {
        let total = u64::from(self.head_bytes) + n as u64;
        if total > u64::from(limits.max_header_bytes) {
            self.fail(Status::HeadersTooLarge, date, out, outcome);
            return false;
        }
        self.head_bytes = total as u32;
        true
    }

    /// One byte (a CR that ends a line arrives as the LF after it).
    fn step(
        &mut self,
        b: u8,
        limits: &Limits,
        date: &Date,
        out: &mut Vec<u8>,
        outcome: &mut Outcome,
    ) -> Result<(), Status> {
        match self.state {
            State::Start => match b {
                b'\n' => {}
                _ if is_tchar(b) => {
                    self.state = State::Method;
                    self.method.push(b, &METHODS);
                }
                _ => return Err(Status::BadRequest),
            },
            State::Method => match b {
                b' ' => self.state = State::Target,
                _ if is_tchar(b) => self.method.push(b, &METHODS),
                _ => return Err(Status::BadRequest),
            },
            State::Target => match b {
                b' ' if self.target_len > 0 => self.state = State::Version,
                0x21..=0x7E => {
                    if b == b'?' {
                        self.in_query = true;
                    } else if !self.in_query {
                        self.path.push(b, &PATHS);
                    }
                    self.target_len = self.target_len.saturating_add(1);
                }
                _ => return Err(Status::BadRequest),
            },
            State::Version => match b {
                b'\n' => self.end_version()?,
                0x21..=0x7E => self.version_byte(b)?,
                _ => return Err(Status::BadRequest),
            },
            State::LineStart => match b {
                b'\n' => self.end_head(limits, date, out, outcome)?,
                _ if is_tchar(b) => {
                    self.state = State::Name;
                    self.name = Match::new(&NAMES);
                    self.name.push(b.to_ascii_lowercase(), &NAMES);
                }
                // Whitespace here would be obs-fold, which RFC 9112 5.2 lets a server refuse.
                _ => return Err(Status::BadRequest),
            },
            State::Name => match b {
                b':' => {
                    self.header = self.name.found(&NAMES).map(|h| h as u8);
                    self.token = Match::new(&TOKENS);
                    self.digits = None;
                    self.digits_done = false;
                    if self.header == Some(H_HOST as u8) {
                        self.hosts = self.hosts.saturating_add(1);
                    }
                    self.state = State::ValueLead;
                }
                _ if is_tchar(b) => self.name.push(b.to_ascii_lowercase(), &NAMES),
                _ => return Err(Status::BadRequest),
            },
            State::ValueLead | State::Value => match b {
                b'\n' => {
                    self.end_value()?;
                    self.state = State::LineStart;
                }
                b' ' | b'\t' if self.state == State::ValueLead => {}
                _ if is_value_byte(b) => {
                    self.state = State::Value;
                    self.value_byte(b)?;
                }
                _ => return Err(Status::BadRequest),
            },
            State::ChunkSize => match b {
                b'\n' => self.end_chunk_size(limits)?,
                b';' | b' ' | b'\t' if self.digits.is_some() => self.state = State::ChunkExt,
                _ => {
                    let d = (b as char).to_digit(16).ok_or(Status::BadRequest)?;
                    let v = self
                        .digits
                        .unwrap_or(0)
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                        .ok_or(Status::ContentTooLarge)?;
                    self.digits = Some(v);
                }
            },
            State::ChunkExt => match b {
                b'\n' => self.end_chunk_size(limits)?,
                _ if is_value_byte(b) => {}
                _ => return Err(Status::BadRequest),
            },
            State::ChunkEnd => match b {
                b'\n' => self.start_chunk(),
                _ => return Err(Status::BadRequest),
            },
            State::TrailerStart | State::Trailer => match b {
                b'\n' if self.state == State::TrailerStart => self.finish(date, out, outcome),
                b'\n' => self.state = State::TrailerStart,
                _ if is_value_byte(b) => self.state = State::Trailer,
                _ => return Err(Status::BadRequest),
            },
            State::Body | State::ChunkData | State::Dead => unreachable!("handled in on_input"),
        }
        Ok(())
    }

    /// The version, checked against its form `HTTP/d.d` as it arrives; major 1 only.
    fn version_byte(&mut self, b: u8) -> Result<(), Status> {
        const FORM: &[u8] = b"HTTP/d.d";
        let at = usize::from(self.version_len);
        let ok = match FORM.get(at) {
            Some(b'd') => b.is_ascii_digit(),
            Some(&c) => c == b,
            None => false,
        };
        if !ok {
            return Err(Status::BadRequest);
        }
        match at {
            5 if b != b'1' => return Err(Status::VersionNotSupported),
            7 => self.http10 = b == b'0',
            _ => {}
        }
        self.version_len += 1;
        Ok(())
    }

    fn end_version(&mut self) -> Result<(), Status> {
        if self.version_len != 8 {
            return Err(Status::BadRequest);
        }
        self.state = State::LineStart;
        Ok(())
    }

    fn value_byte(&mut self, b: u8) -> Result<(), Status> {
        match self.header.map(usize::from) {
            Some(H_CONTENT_LENGTH) => match b {
                b'0'..=b'9' if !self.digits_done => {
                    let v = self
                        .digits
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        .ok_or(Status::ContentTooLarge)?;
                    self.digits = Some(v);
                }
                b' ' | b'\t' if self.digits.is_some() => self.digits_done = true,
                _ => return Err(Status::BadRequest),
            },
            Some(H_CONNECTION) | Some(H_TRANSFER_ENCODING) => match b {
                b',' | b' ' | b'\t' => self.end_token(),
                _ => self.token.push(b.to_ascii_lowercase(), &TOKENS),
            },
            _ => {}
        }
        Ok(())
    }

    fn end_token(&mut self) {
        if self.token.len == 0 {
            return;
        }
        let t = self.token.found(&TOKENS);
        self.token = Match::new(&TOKENS);
        if self.header == Some(H_CONNECTION as u8) {
            match t {
                Some(T_CLOSE) => self.conn_close = true,
                Some(T_KEEP_ALIVE) => self.conn_keep_alive = true,
                _ => {}
            }
        } else if self.chunked || t != Some(T_CHUNKED) {
            // RFC 9112 6.1: chunked must be the final coding, and is the only one we know.
            self.bad_coding = true;
        } else {
            self.chunked = true;
        }
    }

    fn end_value(&mut self) -> Result<(), Status> {
        match self.header.map(usize::from) {
            Some(H_CONTENT_LENGTH) => {
                let v = self.digits.ok_or(Status::BadRequest)?;
                if self.content_length.is_some_and(|c| c != v) {
                    return Err(Status::BadRequest);
                }
                self.content_length = Some(v);
            }
            Some(H_CONNECTION) | Some(H_TRANSFER_ENCODING) => self.end_token(),
            _ => {}
        }
        Ok(())
    }

    /// The empty line after the headers: decide the answer and how the body is framed.
    fn end_head(
        &mut self,
        limits: &Limits,
        date: &Date,
        out: &mut Vec<u8>,
        outcome: &mut Outcome,
    ) -> Result<(), Status> {
        let transfer_coded = self.chunked || self.bad_coding;
        if transfer_coded && self.content_length.is_some() {
            return Err(Status::BadRequest);
        }
        if self.bad_coding {
            return Err(Status::NotImplemented);
        }
        // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; no request has two.
        if self.hosts > 1 || (!self.http10 && self.hosts == 0) {
            return Err(Status::BadRequest);
        }
        if self
            .content_length
            .is_some_and(|n| n > limits.max_body_bytes)
        {
            return Err(Status::ContentTooLarge);
        }
        let keep_alive = !self.conn_close && (!self.http10 || self.conn_keep_alive);
        let method = self.method.found(&METHODS);
        let status = match method {
            Some(GET | HEAD) if self.path.found(&PATHS).is_some() => Status::Ok,
            Some(GET | HEAD) => Status::NotFound,
            Some(_) => Status::MethodNotAllowed,
            None => Status::NotImplemented,
        };
        self.owed = Some((status, method == Some(HEAD), keep_alive));
        self.head_bytes = 0;
        if self.chunked {
            self.start_chunk();
        } else {
            self.remaining = self.content_length.unwrap_or(0);
            self.state = State::Body;
            if self.remaining == 0 {
                self.finish(date, out, outcome);
            }
        }
        Ok(())
    }

    fn end_chunk_size(&mut self, limits: &Limits) -> Result<(), Status> {
        let size = self.digits.ok_or(Status::BadRequest)?;
        if size == 0 {
            self.head_bytes = 0;
            self.state = State::TrailerStart;
            return Ok(());
        }
        self.body_total = self.body_total.saturating_add(size);
        if self.body_total > limits.max_body_bytes {
            return Err(Status::ContentTooLarge);
        }
        self.remaining = size;
        self.state = State::ChunkData;
        Ok(())
    }

    /// A chunk-size line begins. Its bytes (and the trailer's) count against the header
    /// limit: the grammar bounds neither leading zeros nor extensions.
    fn start_chunk(&mut self) {
        self.state = State::ChunkSize;
        self.digits = None;
        self.head_bytes = 0;
    }

    /// The request has been read whole: answer it and get ready for the next.
    fn finish(&mut self, date: &Date, out: &mut Vec<u8>, outcome: &mut Outcome) {
        let (status, head, keep_alive) = self
            .owed
            .take()
            .expect("a request read whole has an answer owed");
        write_answer(status, head, keep_alive, self.http10, date, out);
        outcome.answers += 1;
        if keep_alive {
            *self = Session::new();
        } else {
            self.state = State::Dead;
            outcome.close = true;
        }
    }

    /// Input that cannot be framed: answer `status`, close, ignore what follows.
    fn fail(&mut self, status: Status, date: &Date, out: &mut Vec<u8>, outcome: &mut Outcome) {
        write_answer(status, false, false, false, date, out);
        outcome.answers += 1;
        outcome.close = true;
        self.state = State::Dead;
    }
}

fn write_answer(
    status: Status,
    head: bool,
    keep_alive: bool,
    http10: bool,
    date: &Date,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(status.line());
    out.extend_from_slice(b"Server: c1m\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    if status == Status::Ok {
        out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n");
    } else {
        out.extend_from_slice(b"\r\nContent-Length: 0\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if status == Status::Ok && !head {
        out.extend_from_slice(BODY);
    }
}

/// One answer as the load generator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The body was exactly the expected bytes.
    pub body_ok: bool,
}

/// Answers the load generator cannot frame: not HTTP/1.x, a head over 64 KiB, or a body
/// without Content-Length (our requests never ask for one that needs another framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RState {
    Version,
    Status,
    Reason,
    LineStart,
    Name,
    Value,
    Body,
}

/// The most head bytes one answer may have.
const MAX_ANSWER_HEAD: u32 = 64 * 1024;
const ANSWER_NAMES: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];

/// The load generator's reader of answers: frames each, reads its status and compares its
/// body with the expected one, whatever the splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCheck {
    state: RState,
    cr: bool,
    head_bytes: u32,
    at: u8,
    status: u16,
    name: Match,
    header: Option<u8>,
    digits: Option<u64>,
    content_length: Option<u64>,
    transfer_coded: bool,
    body_pos: u64,
    body_ok: bool,
}

impl Default for ResponseCheck {
    fn default() -> Self {
        ResponseCheck::new()
    }
}

impl ResponseCheck {
    pub fn new() -> ResponseCheck {
        ResponseCheck {
            state: RState::Version,
            cr: false,
            head_bytes: 0,
            at: 0,
            status: 0,
            name: Match::new(&ANSWER_NAMES),
            header: None,
            digits: None,
            content_length: None,
            transfer_coded: false,
            body_pos: 0,
            body_ok: true,
        }
    }

    /// Reads `input`, calling `done` for every answer it completes (1xx answers are
    /// skipped: a final one follows).
    pub fn on_input(
        &mut self,
        input: &[u8],
        expected_body: &[u8],
        mut done: impl FnMut(Answer),
    ) -> Result<(), Malformed> {
        let mut i = 0;
        while i < input.len() {
            if self.state == RState::Body {
                let left = self.content_length.unwrap_or(0) - self.body_pos;
                let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                let from = usize::try_from(self.body_pos).unwrap_or(usize::MAX);
                let want = expected_body.get(from..).and_then(|e| e.get(..n));
                self.body_ok &= want == Some(&input[i..i + n]);
                self.body_pos += n as u64;
                i += n;
                if self.body_pos == self.content_length.unwrap_or(0) {
                    self.complete(expected_body, &mut done);
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.head_bytes += 1;
            if self.head_bytes > MAX_ANSWER_HEAD {
                return Err(Malformed);
            }
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    return Err(Malformed);
                }
            } else if b == b'\r'
                && matches!(
                    self.state,
                    RState::Reason | RState::LineStart | RState::Value
                )
            {
                self.cr = true;
                continue;
            }
            self.step(b, expected_body, &mut done)?;
        }
        Ok(())
    }

    fn step(
        &mut self,
        b: u8,
        expected_body: &[u8],
        done: &mut impl FnMut(Answer),
    ) -> Result<(), Malformed> {
        match self.state {
            RState::Version => {
                const FORM: &[u8] = b"HTTP/1.d ";
                let ok = match FORM.get(usize::from(self.at)) {
                    Some(b'd') => b.is_ascii_digit(),
                    Some(&c) => c == b,
                    None => false,
                };
                if !ok {
                    return Err(Malformed);
                }
                self.at += 1;
                if usize::from(self.at) == FORM.len() {
                    self.state = RState::Status;
                    self.at = 0;
                }
            }
            RState::Status => match (self.at, b) {
                (0..=2, b'0'..=b'9') => {
                    self.status = self.status * 10 + u16::from(b - b'0');
                    self.at += 1;
                }
                (3, b' ') => self.state = RState::Reason,
                _ => return Err(Malformed),
            },
            RState::Reason => match b {
                b'\n' => self.state = RState::LineStart,
                _ if is_value_byte(b) => {}
                _ => return Err(Malformed),
            },
            RState::LineStart => match b {
                b'\n' => self.end_head(expected_body, done)?,
                _ if is_tchar(b) => {
                    self.name = Match::new(&ANSWER_NAMES);
                    self.name.push(b.to_ascii_lowercase(), &ANSWER_NAMES);
                    self.state = RState::Name;
                }
                _ => return Err(Malformed),
            },
            RState::Name => match b {
                b':' => {
                    self.header = self.name.found(&ANSWER_NAMES).map(|h| h as u8);
                    self.digits = None;
                    self.transfer_coded |= self.header == Some(1);
                    self.state = RState::Value;
                }
                _ if is_tchar(b) => self.name.push(b.to_ascii_lowercase(), &ANSWER_NAMES),
                _ => return Err(Malformed),
            },
            RState::Value => match b {
                b'\n' => {
                    if self.header == Some(0) {
                        let v = self.digits.ok_or(Malformed)?;
                        if self.content_length.is_some_and(|c| c != v) {
                            return Err(Malformed);
                        }
                        self.content_length = Some(v);
                    }
                    self.state = RState::LineStart;
                }
                b'0'..=b'9' if self.header == Some(0) => {
                    let v = self.digits.unwrap_or(0);
                    let v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')));
                    self.digits = Some(v.ok_or(Malformed)?);
                }
                b' ' | b'\t' => {}
                _ if self.header == Some(0) => return Err(Malformed),
                _ if is_value_byte(b) => {}
                _ => return Err(Malformed),
            },
            RState::Body => unreachable!("handled in on_input"),
        }
        Ok(())
    }

    fn end_head(
        &mut self,
        expected_body: &[u8],
        done: &mut impl FnMut(Answer),
    ) -> Result<(), Malformed> {
        let bodiless =
            (100..200).contains(&self.status) || self.status == 204 || self.status == 304;
        if self.transfer_coded || (self.content_length.is_none() && !bodiless) {
            return Err(Malformed);
        }
        if bodiless {
            self.content_length = Some(0);
        }
        self.state = RState::Body;
        if self.content_length == Some(0) {
            self.complete(expected_body, done);
        }
        Ok(())
    }

    fn complete(&mut self, expected_body: &[u8], done: &mut impl FnMut(Answer)) {
        let status = self.status;
        let body_ok = self.body_ok && self.body_pos == expected_body.len() as u64;
        *self = ResponseCheck::new();
        if !(100..200).contains(&status) {
            done(Answer { status, body_ok });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 9110's example date.
    fn date() -> Date {
        Date::at(784_111_777)
    }

    fn feed(s: &mut Session, input: &[u8], out: &mut Vec<u8>) -> Outcome {
        s.on_input(input, &Limits::default(), &date(), out)
    }

    /// The answers to `input` fed whole, as text, and whether the connection closes.
    fn answer(input: &[u8]) -> (String, bool) {
        let mut out = Vec::new();
        let o = feed(&mut Session::new(), input, &mut out);
        (String::from_utf8(out).unwrap(), o.close)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nServer: c1m\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                      Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

    fn error(line: &str) -> String {
        format!(
            "HTTP/1.1 {line}\r\nServer: c1m\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }

    fn statuses(text: &str) -> Vec<&str> {
        text.match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect()
    }

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(date().as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(Date::at(0).as_bytes(), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            Date::at(951_782_400).as_bytes(),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            Date::at(4_102_444_799).as_bytes(),
            b"Thu, 31 Dec 2099 23:59:59 GMT"
        );
        let mut d = Date::at(0);
        d.refresh();
        assert_ne!(d.as_bytes(), Date::at(0).as_bytes());
    }

    #[test]
    fn the_head_clock_runs_from_a_heads_first_byte_to_its_end() {
        let mut s = Session::new();
        let mut out = Vec::new();
        assert!(
            !s.reading_head(),
            "nothing yet: only the idle timeout applies"
        );
        feed(&mut s, b"\r\n", &mut out);
        assert!(
            !s.reading_head(),
            "empty lines between requests are not a head"
        );
        for part in [&b"G"[..], b"ET / HTTP/1.1\r", b"\nHost: a", b"\r\n"] {
            feed(&mut s, part, &mut out);
            assert!(s.reading_head());
        }
        feed(
            &mut s,
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            &mut out,
        );
        assert!(!s.reading_head(), "a body is not a head");
        assert_eq!(statuses(&String::from_utf8_lossy(&out)), ["200"]);
        // Timed out mid-head: 408 and close, then nothing more.
        feed(&mut s, b"abcdeGET / HT", &mut out);
        out.clear();
        let o = s.time_out(&date(), &mut out);
        assert_eq!(
            o,
            Outcome {
                answers: 1,
                close: true
            }
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            error("408 Request Timeout")
        );
        assert!(!s.reading_head());
        out.clear();
        assert_eq!(s.time_out(&date(), &mut out), Outcome::default());
        assert_eq!(
            feed(&mut s, b"TP/1.1\r\n\r\n", &mut out),
            Outcome::default()
        );
        assert!(out.is_empty());
    }

    #[test]
    fn plaintext_and_root_answer_hello_world_and_keep_the_connection() {
        assert_eq!(
            answer(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n"),
            (OK.to_string(), false)
        );
        assert_eq!(
            answer(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            (OK.to_string(), false)
        );
        assert_eq!(
            answer(b"GET /plaintext?x=1&y HTTP/1.1\r\nHost: a\r\n\r\n").0,
            OK
        );
        // Bare LF line ends are accepted (RFC 9112 2.2), as are empty lines before a request.
        assert_eq!(answer(b"\r\n\nGET / HTTP/1.1\nHost: a\n\n").0, OK);
    }

    #[test]
    fn head_gets_the_headers_without_the_body() {
        let (text, close) = answer(b"HEAD /plaintext HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(text, OK.strip_suffix("Hello, World!").unwrap());
        assert!(!close);
    }

    #[test]
    fn other_paths_are_404_and_other_methods_405_or_501_and_keep_the_connection() {
        let (text, close) = answer(
            b"GET /plaintextX HTTP/1.1\r\nHost: a\r\n\r\n\
              DELETE / HTTP/1.1\r\nHost: a\r\n\r\n\
              BREW / HTTP/1.1\r\nHost: a\r\n\r\n\
              GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!(statuses(&text), ["404", "405", "501", "200"]);
        assert!(
            text.contains("405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"),
            "{text}"
        );
        assert!(!text.contains("Connection: close"), "{text}");
        assert!(!close);
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "plaintext".repeat(100)
        );
        assert_eq!(statuses(&answer(long.as_bytes()).0), ["404"]);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_whatever_the_split() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\n\
                      GET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
                      HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (whole, _) = answer(input);
        assert_eq!(statuses(&whole), ["200", "404", "200"]);
        for cut in 0..=input.len() {
            let mut s = Session::new();
            let mut out = Vec::new();
            let a = feed(&mut s, &input[..cut], &mut out).answers;
            let b = feed(&mut s, &input[cut..], &mut out).answers;
            assert_eq!(String::from_utf8(out).unwrap(), whole, "cut at {cut}");
            assert_eq!(a + b, 3);
        }
        let mut s = Session::new();
        let mut out = Vec::new();
        for b in input {
            feed(&mut s, std::slice::from_ref(b), &mut out);
        }
        assert_eq!(String::from_utf8(out).unwrap(), whole);
    }

    #[test]
    fn connection_close_closes_after_the_answer_and_ignores_what_follows() {
        let (text, close) =
            answer(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(statuses(&text), ["200"]);
        assert!(
            text.contains("Content-Length: 13\r\nConnection: close\r\n\r\nHello"),
            "{text}"
        );
        assert!(close);
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        let (text, close) = answer(b"GET / HTTP/1.0\r\n\r\n");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(close);
        let (text, close) =
            answer(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET / HTTP/1.0\r\n\r\n");
        assert_eq!(statuses(&text), ["200", "200"]);
        assert!(text.contains("Connection: keep-alive\r\n"), "{text}");
        assert!(close, "the second asked for nothing: closed");
    }

    #[test]
    fn malformed_requests_get_400_and_close() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
            b"G\x00T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            let (text, close) = answer(bad);
            assert_eq!(text, error("400 Bad Request"), "{:?}", String::from_utf8_lossy(bad));
            assert!(close);
        }
    }

    #[test]
    fn other_versions_and_codings_are_refused() {
        assert_eq!(
            answer(b"GET / HTTP/2.0\r\n\r\n").0,
            error("505 HTTP Version Not Supported")
        );
        let gzip = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(answer(gzip).0, error("501 Not Implemented"));
        let twice = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n";
        assert_eq!(answer(twice).0, error("501 Not Implemented"));
        // HTTP/1.2 would be a later 1.x: answered as 1.1.
        assert_eq!(answer(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n").0, OK);
    }

    #[test]
    fn heads_over_the_limit_get_431() {
        let limits = Limits {
            max_header_bytes: 100,
            ..Limits::default()
        };
        let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        let fits = 100 - req.len() - 2;
        let mut at_limit = req.clone();
        at_limit.extend(format!("X: {}\r\n\r\n", "v".repeat(fits - 5)).bytes());
        assert_eq!(at_limit.len(), 100);
        let mut out = Vec::new();
        let o = Session::new().on_input(&at_limit, &limits, &date(), &mut out);
        assert_eq!(
            (o.answers, o.close),
            (1, false),
            "exactly at the limit is fine"
        );
        req.extend(format!("X: {}\r\n\r\n", "v".repeat(fits - 4)).bytes());
        out.clear();
        let o = Session::new().on_input(&req, &limits, &date(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            error("431 Request Header Fields Too Large")
        );
        assert!(o.close);
        // Endless empty lines, or a chunk size of endless zeros, meet the same bound.
        let mut out = Vec::new();
        let o = Session::new().on_input(&[b'\n'; 200], &limits, &date(), &mut out);
        assert!(o.close);
        let zeros = [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &[b'0'; 200],
        ]
        .concat();
        let mut out = Vec::new();
        let o = Session::new().on_input(&zeros, &limits, &date(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            error("431 Request Header Fields Too Large")
        );
        assert!(o.close);
    }

    #[test]
    fn bodies_are_discarded_and_the_next_request_is_read_right() {
        let (text, close) = answer(
            b"GET / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 16\r\n\r\nGET / HTTP/1.1\r\n\
              POST /plaintext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n\
              5;ext=1\r\nGET /\r\n0b\r\n HTTP/1.1\r\n\r\n0\r\nTrailer: x\r\n\r\n\
              GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc\
              HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!(statuses(&text), ["200", "405", "200", "200"]);
        assert!(!close);
    }

    #[test]
    fn bodies_over_the_limit_get_413() {
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let run = |input: &[u8]| {
            let mut out = Vec::new();
            let o = Session::new().on_input(input, &limits, &date(), &mut out);
            (String::from_utf8(out).unwrap(), o.close)
        };
        let declared = run(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(declared, (error("413 Content Too Large"), true));
        let chunked =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\n";
        assert_eq!(run(chunked), (error("413 Content Too Large"), true));
        let huge = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(run(huge), (error("413 Content Too Large"), true));
        let fits = run(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789");
        assert_eq!(statuses(&fits.0), ["405"]);
    }

    #[test]
    fn a_session_is_small() {
        // One per connection, a million connections.
        assert!(
            std::mem::size_of::<Session>() <= 96,
            "{}",
            std::mem::size_of::<Session>()
        );
    }

    fn answers(input: &[u8], expected: &[u8]) -> Result<Vec<Answer>, Malformed> {
        let mut got = Vec::new();
        ResponseCheck::new().on_input(input, expected, |a| got.push(a))?;
        Ok(got)
    }

    #[test]
    fn the_check_reads_status_and_body_whatever_the_split() {
        let (text, _) = answer(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        let stream = [b"HTTP/1.1 100 Continue\r\n\r\n", text.as_bytes()].concat();
        let whole = answers(&stream, BODY).unwrap();
        let ok = Answer {
            status: 200,
            body_ok: true,
        };
        let not_found = Answer {
            status: 404,
            body_ok: false,
        };
        assert_eq!(whole, [ok, not_found, ok]);
        for cut in 0..=stream.len() {
            let mut c = ResponseCheck::new();
            let mut got = Vec::new();
            c.on_input(&stream[..cut], BODY, |a| got.push(a)).unwrap();
            c.on_input(&stream[cut..], BODY, |a| got.push(a)).unwrap();
            assert_eq!(got, whole, "cut at {cut}");
        }
        let wrong = OK.replace("World", "Worle");
        assert_eq!(
            answers(wrong.as_bytes(), BODY).unwrap(),
            [Answer {
                status: 200,
                body_ok: false
            }]
        );
        let longer = OK.replace("13", "14") + "!";
        assert!(!answers(longer.as_bytes(), BODY).unwrap()[0].body_ok);
    }

    #[test]
    fn answers_the_check_cannot_frame_are_malformed() {
        assert_eq!(
            answers(b"HTTP/1.1 200 OK\r\n\r\nHello", BODY),
            Err(Malformed)
        );
        assert_eq!(
            answers(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                BODY
            ),
            Err(Malformed)
        );
        assert_eq!(answers(b"SSH-2.0-OpenSSH\r\n", BODY), Err(Malformed));
        assert_eq!(answers(b"HTTP/1.1 20 OK\r\n", BODY), Err(Malformed));
        assert_eq!(
            answers(b"HTTP/1.1 204 No Content\r\n\r\n", BODY)
                .unwrap()
                .len(),
            1
        );
    }

    /// A valid request: method, path, version, extra headers, body framing.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec!["GET", "HEAD", "POST", "DELETE", "BREW"]),
            prop::sample::select(vec!["/", "/plaintext", "/plaintext?q=1", "/other", "*"]),
            any::<bool>(),
            prop::collection::vec(
                prop::sample::select(vec!["Accept: */*", "X-Y:z", "User-Agent:  a b c  "]),
                0..3,
            ),
            prop_oneof![
                Just(None),
                prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| Some((false, b))),
                prop::collection::vec(any::<u8>(), 1..40).prop_map(|b| Some((true, b))),
            ],
        )
            .prop_map(|(method, path, http10, headers, body)| {
                let mut r = format!(
                    "{method} {path} HTTP/1.{}\r\nHost: h\r\n",
                    u8::from(!http10)
                );
                if http10 {
                    r += "Connection: keep-alive\r\n";
                }
                for h in headers {
                    r += h;
                    r += "\r\n";
                }
                let mut r = r.into_bytes();
                match body {
                    None => r.extend(b"\r\n"),
                    Some((false, b)) => {
                        r.extend(format!("Content-Length: {}\r\n\r\n", b.len()).bytes());
                        r.extend(b);
                    }
                    Some((true, b)) => {
                        r.extend(b"Transfer-Encoding: chunked\r\n\r\n");
                        for chunk in b.chunks(7) {
                            r.extend(format!("{:x};e=v\r\n", chunk.len()).bytes());
                            r.extend(chunk);
                            r.extend(b"\r\n");
                        }
                        r.extend(b"0\r\n\r\n");
                    }
                }
                r
            })
    }

    /// Feeds `input` in pieces cut at `cuts` (positions modulo its length).
    fn fed_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Outcome) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut s = Session::new();
        let mut out = Vec::new();
        let mut total = Outcome::default();
        let mut from = 0;
        for cut in cuts.into_iter().chain([input.len()]) {
            let o = feed(&mut s, &input[from..cut], &mut out);
            total.answers += o.answers;
            total.close |= o.close;
            from = cut;
        }
        (out, total)
    }

    proptest! {
        #[test]
        fn any_split_of_valid_requests_is_answered_the_same(
            reqs in prop::collection::vec(request(), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let input = reqs.concat();
            let (whole, outcome) = fed_in_pieces(&input, &[]);
            prop_assert_eq!(outcome.answers as usize, reqs.len());
            prop_assert!(!outcome.close);
            let (split, o) = fed_in_pieces(&input, &cuts);
            prop_assert_eq!(&split, &whole);
            prop_assert_eq!(o, outcome);
            // And the load generator's check reads those answers back, one per request (it
            // cannot frame answers to HEAD, which it never sends).
            if !reqs.iter().any(|r| r.starts_with(b"HEAD")) {
                let mut n = 0;
                ResponseCheck::new().on_input(&whole, BODY, |_| n += 1).unwrap();
                prop_assert_eq!(n, reqs.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_split_the_same(
            input in prop::collection::vec(any::<u8>(), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let (whole, outcome) = fed_in_pieces(&input, &[]);
            let (split, o) = fed_in_pieces(&input, &cuts);
            prop_assert_eq!(split, whole);
            prop_assert_eq!(o, outcome);
            let _ = ResponseCheck::new().on_input(&input, BODY, |_| {});
        }

        #[test]
        fn requests_with_noise_never_panic(
            reqs in prop::collection::vec(request(), 1..4),
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut input = reqs.concat();
            for (at, b) in flips {
                let at = at % input.len();
                input[at] = b;
            }
            let (out, outcome) = fed_in_pieces(&input, &[]);
            prop_assert!(outcome.answers as usize <= reqs.len() + 1);
            prop_assert_eq!(out.is_empty(), outcome.answers == 0);
        }
    }
}
