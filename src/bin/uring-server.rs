//! `uring-server`: the Proactor echo server. Parses flags and calls into the library.

use clap::Parser;

use c1m::cli::ServerArgs;
use c1m::proactor::{self, UringConfig};

/// A completion-based (io_uring) TCP echo server: per-core shards, each owning its ring, with
/// multishot accept into direct descriptors and multishot recv into a provided-buffer ring.
/// Holds more connections than RLIMIT_NOFILE by planning several rings where needed.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,

    /// Provided buffers per shard (a power of two, at most 32768).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    bufs: u16,

    /// Size of each provided buffer in bytes.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    buf_size: u32,
}

fn main() {
    let cli = Cli::parse();
    let mut cfg = UringConfig {
        server: cli.server,
        bufs: cli.bufs,
        buf_size: cli.buf_size,
        table_slots: 0,
    };
    if let Err(e) = proactor::run(&mut cfg) {
        eprintln!("uring-server: error: {e}");
        std::process::exit(1);
    }
}
