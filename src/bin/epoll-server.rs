//! `epoll-server`: the Reactor echo server. Parses flags and calls into the library.

use clap::Parser;

use c1m::cli::ServerArgs;
use c1m::reactor::{self, EpollConfig, WorkerRole};

/// An edge-triggered epoll TCP echo server, the baseline the Proactor is measured against:
/// one loop per shard, non-blocking sockets, no locks. Above what one process's fd limit
/// holds, the shards are worker processes under a master (nginx style).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,

    /// Internal: run as worker INDEX of a master process.
    #[arg(long, hide = true, requires_all = ["worker_cpu", "worker_cap"])]
    worker_index: Option<usize>,
    #[arg(long, hide = true)]
    worker_cpu: Option<usize>,
    #[arg(long, hide = true)]
    worker_cap: Option<usize>,
    #[arg(long, hide = true)]
    worker_gate_fd: Option<i32>,
}

fn main() {
    let cli = Cli::parse();
    let worker = match (cli.worker_index, cli.worker_cpu, cli.worker_cap) {
        (Some(index), Some(cpu), Some(cap)) => Some(WorkerRole {
            index,
            cpu,
            cap,
            gate_fd: cli.worker_gate_fd,
        }),
        _ => None,
    };
    let mut cfg = EpollConfig {
        server: cli.server,
        worker,
        cap: 0,
    };
    if let Err(e) = reactor::run(&mut cfg) {
        let who = match worker {
            Some(w) => format!("epoll-server worker {}", w.index),
            None => "epoll-server".to_string(),
        };
        eprintln!("{who}: error: {e}");
        std::process::exit(1);
    }
}
