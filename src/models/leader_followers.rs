//! `leader_followers`: to be written.

use std::io;

use super::Ctx;

pub fn run(_ctx: Ctx) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "not built yet"))
}
