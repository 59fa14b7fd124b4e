//! `uring-load`: the io_uring load generator. Parses flags and calls into the library.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use c1m::cli::PortList;
use c1m::load::{self, LoadConfig};

/// An io_uring load generator: every connection a direct descriptor (no fd each, so one process
/// holds far more than RLIMIT_NOFILE), closed-loop echo requests with every byte verified, and
/// an honest count of every connection. Exits non-zero when fewer connections were established
/// than asked or any byte failed verification, unless --allow-partial.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    host: Ipv4Addr,

    /// Server ports, connections spread over them: one port, a range A-B, or a comma list.
    #[arg(long, default_value = "6000", value_name = "PORTS")]
    ports: PortList,

    /// Connections to open and hold.
    #[arg(long, default_value_t = 100, value_name = "N")]
    conns: u64,

    /// Bytes per echo request.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    size: usize,

    /// How long to run requests once every connection is up, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    duration: f64,

    /// Instead of a duration: this many requests on each connection, then stop.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,

    /// Client threads are pinned to this many cores (default: all).
    #[arg(long, value_name = "N")]
    cores: Option<usize>,

    /// Connects in flight per client thread.
    #[arg(long, default_value_t = 256, value_name = "N")]
    connect_inflight: usize,

    /// Seed of the payload pattern.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Exit 0 even when connections failed or bytes did not verify.
    #[arg(long)]
    allow_partial: bool,

    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    let cli = Cli::parse();
    if !(cli.duration.is_finite() && cli.duration >= 0.0) {
        eprintln!("uring-load: error: --duration must be a number of seconds >= 0");
        std::process::exit(2);
    }
    let cfg = LoadConfig {
        host: cli.host,
        ports: cli.ports,
        conns: cli.conns,
        size: cli.size,
        duration: Duration::from_secs_f64(cli.duration),
        requests: cli.requests,
        cores: cli.cores,
        connect_inflight: cli.connect_inflight,
        seed: cli.seed,
        progress: !cli.quiet,
    };
    let report = match load::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uring-load: error: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", report.human());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report).expect("a report always serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("uring-load: error: writing {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    let short = report.conns_established < report.conns_requested;
    if (short || report.error_count() > 0) && !cli.allow_partial {
        eprintln!(
            "uring-load: FAILED: {} of {} connections established, {} errors (--allow-partial to accept)",
            report.conns_established,
            report.conns_requested,
            report.error_count()
        );
        std::process::exit(3);
    }
}
