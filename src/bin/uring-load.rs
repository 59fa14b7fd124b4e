//! `uring-load`: the io_uring load generator. Parses flags and calls into the library.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use c1m::cli::{AddrList, PortList, Proto};
use c1m::load::{self, LoadConfig};

/// An io_uring load generator: every connection a direct descriptor (no fd each, so one process
/// holds far more than RLIMIT_NOFILE), echo requests with every byte verified or HTTP GETs with
/// every answer's status and body checked, closed loop or open loop (latency corrected for
/// coordinated omission), and an honest count of every connection. Exits 3 when fewer connections were established than asked, or on any error
/// (a byte that did not verify, a request left unanswered), unless --allow-partial.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Merge the --hlog files of several runs (several hosts, say) into one latency report.
    Merge {
        /// Interval logs written by --hlog.
        #[arg(required = true, value_name = "FILE.hlog")]
        logs: Vec<PathBuf>,
        /// Write the merged report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    host: Ipv4Addr,

    /// Server ports, connections spread over them: one port, a range A-B, or a comma list.
    #[arg(long, default_value = "6000", value_name = "PORTS")]
    ports: PortList,

    /// Source addresses to connect from, a range A-B or a comma list (each adds
    /// ip_local_port_range's worth of connections per server port).
    #[arg(long, value_name = "ADDRS")]
    sources: Option<AddrList>,

    /// Connections to open and hold, all at once.
    #[arg(long, default_value_t = 100, value_name = "N")]
    conns: u64,

    /// The protocol: echo requests, or HTTP/1.1 GETs whose answers must be 200 with the body
    /// `Hello, World!`.
    #[arg(long, value_enum, default_value_t = Proto::Echo)]
    proto: Proto,

    /// Echo: bytes per request [default: 64].
    #[arg(long, value_name = "BYTES")]
    size: Option<usize>,

    /// HTTP: the path to GET [default: /plaintext].
    #[arg(long, value_name = "PATH")]
    path: Option<String>,

    /// HTTP, closed loop: requests written together on a connection; the next batch goes
    /// once all are answered [default: 1].
    #[arg(long, value_name = "N")]
    pipeline: Option<u32>,

    /// Closed loop: requests (with --pipeline: batches) outstanding on each connection.
    #[arg(long, default_value_t = 1, value_name = "D")]
    depth: u32,

    /// Open loop: total requests per second, spread evenly over the connections.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,

    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    warmup: f64,

    /// Seconds measured once every connection is up (with --requests: the time limit).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    duration: f64,

    /// Closed loop, counted: this many requests on each connection, then stop.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,

    /// Client threads are pinned to this many cores (default: all).
    #[arg(long, value_name = "N")]
    cores: Option<usize>,

    /// Connects in flight per client thread.
    #[arg(long, default_value_t = 256, value_name = "N")]
    connect_inflight: usize,

    /// Connects per second (default: as fast as the in-flight bound lets them go).
    #[arg(long, value_name = "R")]
    connect_rate: Option<f64>,

    /// Seed of the payload pattern.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write an HdrHistogram interval log (one histogram per second) to this file.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,

    /// Batch completions: each thread waits for up to 64, or this many microseconds once one
    /// is there (fewer wake-ups with many connections per thread; latency still counts from
    /// when each request was due). 0: off. Kernel 6.12+.
    #[arg(long, default_value_t = 0, value_name = "USEC")]
    batch_usec: u32,

    /// Exit 0 even when connections failed or requests went wrong.
    #[arg(long)]
    allow_partial: bool,

    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

fn seconds(v: f64, flag: &str) -> Duration {
    if !(v.is_finite() && v >= 0.0) {
        eprintln!("uring-load: error: {flag} must be a number of seconds >= 0");
        std::process::exit(2);
    }
    Duration::from_secs_f64(v)
}

fn write_json(path: &PathBuf, value: &impl serde::Serialize) {
    let json = serde_json::to_string_pretty(value).expect("reports always serialize");
    if let Err(e) = std::fs::write(path, json + "\n") {
        eprintln!("uring-load: error: writing {}: {e}", path.display());
        std::process::exit(1);
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Merge { logs, json }) = cli.command {
        match load::merge_report(&logs) {
            Ok(r) => {
                println!("{}", r.human());
                if let Some(path) = &json {
                    write_json(path, &r);
                }
                return;
            }
            Err(e) => {
                eprintln!("uring-load: error: {e}");
                std::process::exit(1);
            }
        }
    }
    let a = cli.run;
    let http = a.proto == Proto::Http;
    let misplaced = match (
        http,
        a.size.is_some(),
        a.path.is_some() || a.pipeline.is_some(),
    ) {
        (true, true, _) => Some("--size is for echo; HTTP requests are GETs of --path"),
        (false, _, true) => Some("--path and --pipeline are for --proto http"),
        _ => None,
    };
    if let Some(why) = misplaced {
        eprintln!("uring-load: error: {why}");
        std::process::exit(2);
    }
    let cfg = LoadConfig {
        host: a.host,
        ports: a.ports,
        sources: a.sources.map(|s| s.0).unwrap_or_default(),
        conns: a.conns,
        proto: a.proto,
        size: a.size.unwrap_or(64),
        path: a.path.unwrap_or_else(|| "/plaintext".into()),
        pipeline: a.pipeline.unwrap_or(1),
        depth: a.depth,
        rate: a.rate,
        warmup: seconds(a.warmup, "--warmup"),
        duration: seconds(a.duration, "--duration"),
        requests: a.requests,
        cores: a.cores,
        connect_inflight: a.connect_inflight,
        connect_rate: a.connect_rate,
        seed: a.seed,
        hlog: a.hlog,
        batch_usec: a.batch_usec,
        progress: !a.quiet,
    };
    let report = match load::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uring-load: error: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", report.human());
    if let Some(path) = &a.json {
        write_json(path, &report);
    }
    let short = report.conns_established < report.conns_requested;
    if (short || report.error_count() > 0) && !a.allow_partial {
        eprintln!(
            "uring-load: FAILED: {} of {} connections established, {} errors (--allow-partial to accept)",
            report.conns_established,
            report.conns_requested,
            report.error_count()
        );
        std::process::exit(3);
    }
}
