//! `uring-server`: the Proactor echo server. Parses flags and calls into the library.

use c1m::cli::UringArgs;
use c1m::{config, proactor};

fn main() {
    config::Server::<UringArgs> {
        name: "uring-server",
        server: |a| &a.server,
        check: proactor::check,
        run: proactor::run,
        who: |_| "uring-server".into(),
    }
    .main();
}
