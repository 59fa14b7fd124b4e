//! `epoll-server`: the Reactor echo server. Parses flags and calls into the library.

use clap::Parser;

use c1m::cli::EpollArgs;
use c1m::reactor;

fn main() {
    let args = EpollArgs::parse();
    if let Err(e) = reactor::run(&args) {
        let who = match args.worker_index {
            Some(index) => format!("epoll-server worker {index}"),
            None => "epoll-server".to_string(),
        };
        eprintln!("{who}: error: {e}");
        std::process::exit(e.exit_code());
    }
}
