//! `epoll-server`: the Reactor echo server. Parses flags and calls into the library.

use c1m::cli::EpollArgs;
use c1m::{config, reactor};

fn main() {
    config::Server::<EpollArgs> {
        name: "epoll-server",
        server: |a| &a.server,
        check: reactor::check,
        run: reactor::run,
        who: |a| match a.worker_index {
            Some(index) => format!("epoll-server worker {index}"),
            None => "epoll-server".into(),
        },
    }
    .main();
}
