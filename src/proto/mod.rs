//! Protocols, shared by both engines and the load generator's checks: pure code, bytes in and
//! bytes out, no I/O, no unsafe.

pub mod digits;
pub mod echo;
pub mod http;
pub mod redis;

/// A connection's session in a protocol of requests and replies (echo needs none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    Http(http::Session),
    Redis(redis::Session),
}

/// What the access log gathers of a connection's requests, in its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    Http(http::Capture),
    Redis(redis::Capture),
}

/// The requests answered since the log last took them.
#[derive(Debug)]
pub enum Done<'a> {
    Http(&'a mut Vec<http::Logged>),
    Redis(&'a mut Vec<redis::Logged>),
}

impl Capture {
    /// A fresh capture for `session`'s protocol.
    pub fn new(session: &Session) -> Capture {
        match session {
            Session::Http(_) => Capture::Http(http::Capture::default()),
            Session::Redis(_) => Capture::Redis(redis::Capture::default()),
        }
    }

    pub fn done(&mut self) -> Done<'_> {
        match self {
            Capture::Http(c) => Done::Http(&mut c.answered),
            Capture::Redis(c) => Done::Redis(&mut c.answered),
        }
    }
}

/// What one input did, whatever the protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Requests answered.
    pub answers: u32,
    /// The last answer closes the connection.
    pub close: bool,
    /// Redis: the journal position the replies wait for (`redis::Outcome::lsn`).
    pub lsn: Option<u64>,
}
