//! Errors a user can meet: each names the cause and, where there is one, the fix.

use std::fmt;
use std::io;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum Error {
    /// A flag's value cannot be used.
    BadFlag(String),
    /// Another socket is already listening on this address.
    PortInUse(SocketAddr),
    /// A host limit stands in the way of what was asked.
    Limit { what: String, fix: String },
    /// A system call failed where no more specific cause is known.
    Io { context: String, source: io::Error },
    /// A shard thread stopped with an error or panicked.
    Shard { shard: usize, reason: String },
    /// Another process holds what this one needs (a live `--pid-file`).
    Running(String),
}

/// Exit status of a usage error: a flag whose value cannot be used (clap exits so too on a
/// flag it cannot parse).
const EXIT_USAGE: i32 = 2;
/// Exit status of an error met while running.
const EXIT_FAILURE: i32 = 1;

impl Error {
    /// The status a binary exits with on this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadFlag(_) => EXIT_USAGE,
            Error::PortInUse(_)
            | Error::Limit { .. }
            | Error::Io { .. }
            | Error::Shard { .. }
            | Error::Running(_) => EXIT_FAILURE,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadFlag(msg) => write!(f, "{msg}"),
            Error::PortInUse(addr) => write!(
                f,
                "{addr} is already in use by another socket; stop the program that holds it \
                 (`ss -ltnp 'sport = :{}'` shows it) or choose other --ports",
                addr.port()
            ),
            Error::Limit { what, fix } => write!(f, "{what}; {fix}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Shard { shard, reason } => write!(f, "shard {shard} failed: {reason}"),
            Error::Running(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
