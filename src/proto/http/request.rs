//! The server's side of HTTP/1.1: the request parser and the answers (`Session`), one per
//! connection.
//!
//! The parser keeps no copy of its input, only what must outlive a split: where it is in the
//! grammar, how far the word being read (the method, the path, a header's name, a token of
//! its value) matches so far, what the four headers it acts on (Host, Connection,
//! Content-Length, Transfer-Encoding) said, the answer owed, and how much body is left to
//! discard. A `Session` is at most 40 bytes (`size_of`, held by a unit test), which matters
//! at a million connections.
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

use std::time::Instant;

use super::{BODY, Date, Limits, Match, is_tchar, is_value_byte};

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
    /// The status code, e.g. 200.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::ContentTooLarge => 413,
            Status::HeadersTooLarge => 431,
            Status::NotImplemented => 501,
            Status::VersionNotSupported => 505,
            Status::RequestTimeout => 408,
        }
    }

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

const METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];
const GET: usize = 0;
const HEAD: usize = 1;
const PATHS: [&[u8]; 2] = [b"/", b"/plaintext"];
/// The headers the parser acts on; every other one is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    Host,
    Connection,
    ContentLength,
    TransferEncoding,
    /// Referer and User-Agent: only the access log reads them (`Capture`).
    Referer,
    UserAgent,
    Other,
}

/// Header names, lowercase (names are case-insensitive), and the header each is.
const NAMES: [&[u8]; 6] = [
    b"host",
    b"connection",
    b"content-length",
    b"transfer-encoding",
    b"referer",
    b"user-agent",
];
const HEADERS: [Header; 6] = [
    Header::Host,
    Header::Connection,
    Header::ContentLength,
    Header::TransferEncoding,
    Header::Referer,
    Header::UserAgent,
];
/// Connection and Transfer-Encoding tokens, lowercase.
const TOKENS: [&[u8]; 3] = [b"close", b"keep-alive", b"chunked"];
const T_CLOSE: usize = 0;
const T_KEEP_ALIVE: usize = 1;
const T_CHUNKED: usize = 2;

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
    /// Discarding the `number` bytes left of a Content-Length body.
    Body,
    ChunkSize,
    /// After a chunk's size: extensions, skipped to the end of the line.
    ChunkExt,
    /// Discarding the `number` bytes left of a chunk's data.
    ChunkData,
    /// The line end after chunk data.
    ChunkEnd,
    /// A line of the trailer section (after the last chunk); an empty one ends the body.
    TrailerStart,
    Trailer,
    /// An answer that closes the connection was written: input is ignored.
    Dead,
}

/// Which part of a request a connection is in (`Session::reading`): what its deadlines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Before a request's first byte (or after an answer that closes).
    Between,
    Head,
    Body,
}

/// What one call to `Session::on_input` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Answers written (one per request read whole, or the one error answer).
    pub answers: u32,
    /// The last answer closes the connection: send what was written, then close.
    pub close: bool,
}

/// One server connection's HTTP state, at most 40 bytes (see the module doc): what is never
/// needed at once shares a field. `word` is each word of the head in turn, `number` the
/// number being read and then the body left, `length` the declared length and then the
/// chunked total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    state: State,
    /// A CR was read; the next byte must be LF.
    cr: bool,
    /// Bytes of the head (or of a chunk-size line, or of the trailer) so far, against
    /// `max_header_bytes`.
    head_bytes: u32,
    /// The word being read: the method, then the target's path, then each header's name and
    /// (Connection, Transfer-Encoding) each token of its value.
    word: Match,
    /// The answer the method and path call for (set at the method's end, made 404 at the
    /// target's); owed once the request has been read whole.
    status: Status,
    /// The method is HEAD: the answer has no body.
    head: bool,
    /// The target's path has ended (a `?` began its query).
    in_query: bool,
    /// Bytes of the version so far.
    version_len: u8,
    /// Minor version 0: HTTP/1.0.
    http10: bool,
    /// The header whose value is being read.
    header: Header,
    hosts: u8,
    conn_close: bool,
    conn_keep_alive: bool,
    chunked: bool,
    /// A transfer coding other than chunked, or chunked not last.
    bad_coding: bool,
    /// A Content-Length was read: its value is `length`.
    has_length: bool,
    /// `number` holds at least one digit.
    digits: bool,
    /// Whitespace followed the digits: only more whitespace may come.
    digits_done: bool,
    /// The number being read (a Content-Length value, a chunk size); then, in `Body` and
    /// `ChunkData`, the bytes left to discard.
    number: u64,
    /// In the head, the Content-Length (if `has_length`); in a chunked body, the chunk sizes
    /// so far, against `max_body_bytes`.
    length: u64,
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
            word: Match::new(&METHODS),
            // Set at the method's end, before anything can be answered.
            status: Status::Ok,
            head: false,
            in_query: false,
            version_len: 0,
            http10: false,
            header: Header::Other,
            hosts: 0,
            conn_close: false,
            conn_keep_alive: false,
            chunked: false,
            bad_coding: false,
            has_length: false,
            digits: false,
            digits_done: false,
            number: 0,
            length: 0,
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
        self.input(input, limits, Answers::new(date, out, None))
    }

    /// `on_input`, and for a connection that logs, `log` keeps each request's fields as
    /// they arrive (at the `Instant` given) and records each answered request.
    pub fn on_input_logged(
        &mut self,
        input: &[u8],
        limits: &Limits,
        date: &Date,
        out: &mut Vec<u8>,
        log: Option<(&mut Capture, Instant)>,
    ) -> Outcome {
        self.input(input, limits, Answers::new(date, out, log))
    }

    fn input(&mut self, input: &[u8], limits: &Limits, mut a: Answers<'_>) -> Outcome {
        let mut i = 0;
        while i < input.len() && self.state != State::Dead {
            match self.state {
                State::Body | State::ChunkData => {
                    let n =
                        (input.len() - i).min(usize::try_from(self.number).unwrap_or(usize::MAX));
                    i += n;
                    self.number -= n as u64;
                    if self.number == 0 {
                        if self.state == State::Body {
                            self.finish(&mut a);
                        } else {
                            self.state = State::ChunkEnd;
                        }
                    }
                    continue;
                }
                State::Value if self.header == Header::Other && !self.cr => {
                    // An ignored header's value (User-Agent, Accept, ...): skip to its end.
                    let rest = &input[i..];
                    let n = rest
                        .iter()
                        .position(|&b| !is_value_byte(b))
                        .unwrap_or(rest.len());
                    if !self.count_head(n, limits, &mut a) {
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
            if self.in_head() && !self.count_head(1, limits, &mut a) {
                break;
            }
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    self.fail(Status::BadRequest, &mut a);
                    break;
                }
            }
            if b == b'\r' && self.ends_lines() {
                self.cr = true;
                continue;
            }
            if let Some((log, now)) = &mut a.log {
                log.byte(self.state, self.header, b, *now);
            }
            if let Err(status) = self.step(b, limits, &mut a) {
                self.fail(status, &mut a);
            }
        }
        a.outcome
    }

    /// Which part of a request is being read: the head from its first byte to its end (the
    /// header timeout runs), then the body to its last byte (the body timeout runs).
    pub fn reading(&self) -> Reading {
        match self.state {
            State::Method
            | State::Target
            | State::Version
            | State::LineStart
            | State::Name
            | State::ValueLead
            | State::Value => Reading::Head,
            State::Body
            | State::ChunkSize
            | State::ChunkExt
            | State::ChunkData
            | State::ChunkEnd
            | State::TrailerStart
            | State::Trailer => Reading::Body,
            State::Start | State::Dead => Reading::Between,
        }
    }

    /// The header or body timeout passed: answers 408 and closes (nothing if an answer already
    /// closes the connection); a connection that logs records it in `log`.
    pub fn time_out(
        &mut self,
        date: &Date,
        out: &mut Vec<u8>,
        log: Option<(&mut Capture, Instant)>,
    ) -> Outcome {
        let mut a = Answers::new(date, out, log);
        if self.state != State::Dead {
            self.fail(Status::RequestTimeout, &mut a);
        }
        a.outcome
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
    fn count_head(&mut self, n: usize, limits: &Limits, a: &mut Answers<'_>) -> bool {
        let total = u64::from(self.head_bytes) + n as u64;
        if total > u64::from(limits.max_header_bytes) {
            self.fail(Status::HeadersTooLarge, a);
            return false;
        }
        self.head_bytes = total as u32;
        true
    }

    /// One byte (a CR that ends a line arrives as the LF after it).
    fn step(&mut self, b: u8, limits: &Limits, a: &mut Answers<'_>) -> Result<(), Status> {
        match self.state {
            State::Start => match b {
                b'\n' => {}
                _ if is_tchar(b) => {
                    self.state = State::Method;
                    self.word.push(b, &METHODS);
                }
                _ => return Err(Status::BadRequest),
            },
            State::Method => match b {
                b' ' => self.end_method(),
                _ if is_tchar(b) => self.word.push(b, &METHODS),
                _ => return Err(Status::BadRequest),
            },
            State::Target => match b {
                // Not empty: a path byte was pushed, or the target began with its query.
                b' ' if self.word.len > 0 || self.in_query => self.end_target(),
                0x21..=0x7E => {
                    if b == b'?' {
                        self.in_query = true;
                    } else if !self.in_query {
                        self.word.push(b, &PATHS);
                    }
                }
                _ => return Err(Status::BadRequest),
            },
            State::Version => match b {
                b'\n' => self.end_version()?,
                0x21..=0x7E => self.version_byte(b)?,
                _ => return Err(Status::BadRequest),
            },
            State::LineStart => match b {
                b'\n' => self.end_head(limits, a)?,
                _ if is_tchar(b) => {
                    self.state = State::Name;
                    self.word = Match::new(&NAMES);
                    self.word.push(b.to_ascii_lowercase(), &NAMES);
                }
                // Whitespace here would be obs-fold, which RFC 9112 5.2 lets a server refuse.
                _ => return Err(Status::BadRequest),
            },
            State::Name => match b {
                b':' => {
                    self.header = self
                        .word
                        .found(&NAMES)
                        .map_or(Header::Other, |i| HEADERS[i]);
                    self.word = Match::new(&TOKENS);
                    self.number = 0;
                    self.digits = false;
                    self.digits_done = false;
                    if self.header == Header::Host {
                        self.hosts = self.hosts.saturating_add(1);
                    }
                    self.state = State::ValueLead;
                }
                _ if is_tchar(b) => self.word.push(b.to_ascii_lowercase(), &NAMES),
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
                b';' | b' ' | b'\t' if self.digits => self.state = State::ChunkExt,
                _ => {
                    let d = (b as char).to_digit(16).ok_or(Status::BadRequest)?;
                    self.number = self
                        .number
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                        .ok_or(Status::ContentTooLarge)?;
                    self.digits = true;
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
                b'\n' if self.state == State::TrailerStart => self.finish(a),
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

    /// The method has ended: what it calls for, unless the path or the head says otherwise.
    fn end_method(&mut self) {
        let method = self.word.found(&METHODS);
        self.status = match method {
            Some(GET | HEAD) => Status::Ok,
            Some(_) => Status::MethodNotAllowed,
            None => Status::NotImplemented,
        };
        self.head = method == Some(HEAD);
        self.word = Match::new(&PATHS);
        self.state = State::Target;
    }

    fn end_target(&mut self) {
        if self.status == Status::Ok && self.word.found(&PATHS).is_none() {
            self.status = Status::NotFound;
        }
        self.state = State::Version;
    }

    fn end_version(&mut self) -> Result<(), Status> {
        if self.version_len != 8 {
            return Err(Status::BadRequest);
        }
        self.state = State::LineStart;
        Ok(())
    }

    fn value_byte(&mut self, b: u8) -> Result<(), Status> {
        match self.header {
            Header::ContentLength => match b {
                b'0'..=b'9' if !self.digits_done => {
                    self.number = self
                        .number
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')))
                        .ok_or(Status::ContentTooLarge)?;
                    self.digits = true;
                }
                b' ' | b'\t' if self.digits => self.digits_done = true,
                _ => return Err(Status::BadRequest),
            },
            Header::Connection | Header::TransferEncoding => match b {
                b',' | b' ' | b'\t' => self.end_token(),
                _ => self.word.push(b.to_ascii_lowercase(), &TOKENS),
            },
            Header::Host | Header::Referer | Header::UserAgent | Header::Other => {}
        }
        Ok(())
    }

    fn end_token(&mut self) {
        if self.word.len == 0 {
            return;
        }
        let t = self.word.found(&TOKENS);
        self.word = Match::new(&TOKENS);
        if self.header == Header::Connection {
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
        match self.header {
            Header::ContentLength => {
                if !self.digits || (self.has_length && self.length != self.number) {
                    return Err(Status::BadRequest);
                }
                self.length = self.number;
                self.has_length = true;
            }
            Header::Connection | Header::TransferEncoding => self.end_token(),
            Header::Host | Header::Referer | Header::UserAgent | Header::Other => {}
        }
        Ok(())
    }

    /// The empty line after the headers: decide the answer and how the body is framed.
    fn end_head(&mut self, limits: &Limits, a: &mut Answers<'_>) -> Result<(), Status> {
        let transfer_coded = self.chunked || self.bad_coding;
        if transfer_coded && self.has_length {
            return Err(Status::BadRequest);
        }
        if self.bad_coding {
            return Err(Status::NotImplemented);
        }
        // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; no request has two.
        if self.hosts > 1 || (!self.http10 && self.hosts == 0) {
            return Err(Status::BadRequest);
        }
        if self.has_length && self.length > limits.max_body_bytes {
            return Err(Status::ContentTooLarge);
        }
        self.head_bytes = 0;
        if self.chunked {
            // No Content-Length (checked above): `length` is 0, the chunked total so far.
            self.start_chunk();
        } else {
            self.number = if self.has_length { self.length } else { 0 };
            self.state = State::Body;
            if self.number == 0 {
                self.finish(a);
            }
        }
        Ok(())
    }

    fn end_chunk_size(&mut self, limits: &Limits) -> Result<(), Status> {
        if !self.digits {
            return Err(Status::BadRequest);
        }
        if self.number == 0 {
            self.head_bytes = 0;
            self.state = State::TrailerStart;
            return Ok(());
        }
        self.length = self.length.saturating_add(self.number);
        if self.length > limits.max_body_bytes {
            return Err(Status::ContentTooLarge);
        }
        // `number`, the chunk's size, is now its data left to discard.
        self.state = State::ChunkData;
        Ok(())
    }

    /// A chunk-size line begins. Its bytes (and the trailer's) count against the header
    /// limit: the grammar bounds neither leading zeros nor extensions.
    fn start_chunk(&mut self) {
        self.state = State::ChunkSize;
        self.number = 0;
        self.digits = false;
        self.head_bytes = 0;
    }

    /// The request has been read whole: answer it and get ready for the next.
    fn finish(&mut self, a: &mut Answers<'_>) {
        let keep_alive = !self.conn_close && (!self.http10 || self.conn_keep_alive);
        a.answer(self.status, self.head, keep_alive, self.http10);
        if keep_alive {
            *self = Session::new();
        } else {
            self.state = State::Dead;
            a.outcome.close = true;
        }
    }

    /// Input that cannot be framed: answer `status`, close, ignore what follows.
    fn fail(&mut self, status: Status, a: &mut Answers<'_>) {
        a.answer(status, false, false, false);
        a.outcome.close = true;
        self.state = State::Dead;
    }
}

/// Where one call's answers go: the output, what the call did, and (a connection that logs)
/// the request's log fields.
struct Answers<'a> {
    date: &'a Date,
    out: &'a mut Vec<u8>,
    outcome: Outcome,
    log: Option<(&'a mut Capture, Instant)>,
}

impl<'a> Answers<'a> {
    fn new(date: &'a Date, out: &'a mut Vec<u8>, log: Option<(&'a mut Capture, Instant)>) -> Self {
        Answers {
            date,
            out,
            outcome: Outcome::default(),
            log,
        }
    }

    fn answer(&mut self, status: Status, head: bool, keep_alive: bool, http10: bool) {
        write_answer(status, head, keep_alive, http10, self.date, self.out);
        self.outcome.answers += 1;
        if let Some((log, now)) = &mut self.log {
            // HEAD and every error answer carry no body.
            let body = if status == Status::Ok && !head {
                BODY.len()
            } else {
                0
            };
            log.answered(status, body as u32, *now);
        }
    }
}

/// The most bytes of each field the access log keeps (the request line, Referer,
/// User-Agent); the rest is cut.
pub const LOG_FIELD_MAX: usize = 2048;

/// What the access log writes of a request (nginx's `combined` format, which
/// `server::access` formats): gathered as the request arrives, when the connection logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Capture {
    line: Vec<u8>,
    referer: Vec<u8>,
    user_agent: Vec<u8>,
    /// When the request's first byte arrived.
    since: Option<Instant>,
    /// The requests answered, oldest first, until the caller takes them.
    pub answered: Vec<Logged>,
}

/// One answered request, as the access log reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The request line as it arrived (without its line end), cut at `LOG_FIELD_MAX`.
    pub line: Vec<u8>,
    /// Empty when the request had none.
    pub referer: Vec<u8>,
    pub user_agent: Vec<u8>,
    pub status: u16,
    /// Bytes of the answer's body.
    pub body_bytes: u32,
    /// From the request's first byte to its answer.
    pub took: std::time::Duration,
}

impl Capture {
    /// Byte `b` arrived in `state` (line ends are not passed, CRs never).
    fn byte(&mut self, state: State, header: Header, b: u8, now: Instant) {
        let keep = |field: &mut Vec<u8>| {
            if field.len() < LOG_FIELD_MAX {
                field.push(b);
            }
        };
        match state {
            _ if b == b'\n' => {}
            State::Start => {
                self.since = Some(now);
                keep(&mut self.line);
            }
            State::Method | State::Target | State::Version => keep(&mut self.line),
            State::ValueLead if b == b' ' || b == b'\t' => {}
            State::ValueLead | State::Value => match header {
                Header::Referer => keep(&mut self.referer),
                Header::UserAgent => keep(&mut self.user_agent),
                _ => {}
            },
            _ => {}
        }
    }

    fn answered(&mut self, status: Status, body_bytes: u32, now: Instant) {
        let trim = |mut v: Vec<u8>| {
            while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.pop();
            }
            v
        };
        let since = self.since.take().unwrap_or(now);
        self.answered.push(Logged {
            line: std::mem::take(&mut self.line),
            referer: trim(std::mem::take(&mut self.referer)),
            user_agent: trim(std::mem::take(&mut self.user_agent)),
            status: status.code(),
            body_bytes,
            took: now.saturating_duration_since(since),
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::ResponseCheck;
    use crate::proto::http::testing::{OK, answer, date, feed};
    use proptest::prelude::*;

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
    fn the_head_clock_runs_from_a_heads_first_byte_to_its_end() {
        let mut s = Session::new();
        let mut out = Vec::new();
        assert_eq!(
            s.reading(),
            Reading::Between,
            "nothing yet: only the idle timeout applies"
        );
        feed(&mut s, b"\r\n", &mut out);
        assert_eq!(
            s.reading(),
            Reading::Between,
            "empty lines between requests are not a head"
        );
        for part in [&b"G"[..], b"ET / HTTP/1.1\r", b"\nHost: a", b"\r\n"] {
            feed(&mut s, part, &mut out);
            assert_eq!(s.reading(), Reading::Head);
        }
        feed(
            &mut s,
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            &mut out,
        );
        assert_eq!(s.reading(), Reading::Body, "a body is not a head");
        assert_eq!(statuses(&String::from_utf8_lossy(&out)), ["200"]);
        // Timed out mid-head: 408 and close, then nothing more.
        feed(&mut s, b"abcdeGET / HT", &mut out);
        out.clear();
        let o = s.time_out(&date(), &mut out, None);
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
        assert_eq!(s.reading(), Reading::Between);
        out.clear();
        assert_eq!(s.time_out(&date(), &mut out, None), Outcome::default());
        assert_eq!(
            feed(&mut s, b"TP/1.1\r\n\r\n", &mut out),
            Outcome::default()
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_chunked_body_is_read_as_body_to_the_end_of_its_trailer() {
        let mut s = Session::new();
        let mut out = Vec::new();
        feed(
            &mut s,
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            &mut out,
        );
        for part in [
            &b"5"[..],
            b";x=1\r\n",
            b"ab",
            b"cde\r\n",
            b"0\r\n",
            b"T: v\r\n",
        ] {
            feed(&mut s, part, &mut out);
            assert_eq!(s.reading(), Reading::Body, "after {part:?}");
        }
        assert!(out.is_empty(), "answered before the body ended");
        feed(&mut s, b"\r\n", &mut out);
        assert_eq!(s.reading(), Reading::Between);
        assert_eq!(statuses(&String::from_utf8_lossy(&out)), ["200"]);
    }

    #[test]
    fn the_capture_records_each_answered_request_whatever_the_split() {
        let input: &[u8] = b"GET /plaintext?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: \t wrk/4 \r\n\
            Referer: http://r/\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\n\
            GET /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab\
            BAD\x01 / HTTP/1.1\r\n\r\n";
        let t0 = Instant::now();
        let limits = Limits {
            max_header_bytes: 8192,
            max_body_bytes: 100,
        };
        let run = |step: usize| {
            let (mut s, mut c, mut out) = (Session::new(), Capture::default(), Vec::new());
            for (i, part) in input.chunks(step).enumerate() {
                let now = t0 + std::time::Duration::from_millis(i as u64);
                s.on_input_logged(part, &limits, &date(), &mut out, Some((&mut c, now)));
            }
            c.answered
        };
        let whole = run(input.len());
        type Fields<'a> = (&'a [u8], u16, u32, &'a [u8], &'a [u8]);
        let got: Vec<Fields> = whole
            .iter()
            .map(|l| {
                (
                    &l.line[..],
                    l.status,
                    l.body_bytes,
                    &l.referer[..],
                    &l.user_agent[..],
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    &b"GET /plaintext?x=1 HTTP/1.1"[..],
                    200,
                    13,
                    &b"http://r/"[..],
                    &b"wrk/4"[..]
                ),
                (b"HEAD / HTTP/1.1", 200, 0, b"", b""),
                (b"GET /nope HTTP/1.1", 404, 0, b"", b""),
                (b"BAD\x01", 400, 0, b"", b""),
            ]
        );
        for step in [1, 2, 3, 7, 64] {
            let split = run(step);
            let fields = |v: &[Logged]| -> Vec<(Vec<u8>, u16)> {
                v.iter().map(|l| (l.line.clone(), l.status)).collect()
            };
            assert_eq!(fields(&split), fields(&whole), "split every {step}");
        }
        // A byte at a time, a millisecond apart: the first request took as many
        // milliseconds as it has bytes, less one.
        let first = &run(1)[0];
        let len = input.iter().position(|&b| b == b'H').unwrap();
        assert!(
            first.took >= std::time::Duration::from_millis(len as u64),
            "{first:?}"
        );
    }

    #[test]
    fn a_long_field_is_cut_for_the_log() {
        let ua = vec![b'a'; LOG_FIELD_MAX + 10];
        let input = [
            &b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: "[..],
            &ua,
            b"\r\n\r\n",
        ]
        .concat();
        let (mut s, mut c, mut out) = (Session::new(), Capture::default(), Vec::new());
        let limits = Limits {
            max_header_bytes: 8192,
            max_body_bytes: 0,
        };
        s.on_input_logged(
            &input,
            &limits,
            &date(),
            &mut out,
            Some((&mut c, Instant::now())),
        );
        assert_eq!(c.answered.len(), 1);
        assert_eq!(c.answered[0].user_agent.len(), LOG_FIELD_MAX);
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
    fn a_session_is_the_40_bytes_the_module_doc_says() {
        // One per connection, a million connections.
        assert!(size_of::<Session>() <= 40, "{} bytes", size_of::<Session>());
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
