//! `uring-server`: the Proactor echo server. Parses flags and calls into the library.

use clap::Parser;

use c1m::cli::UringArgs;
use c1m::proactor;

fn main() {
    let args = UringArgs::parse();
    if let Err(e) = proactor::run(&args) {
        eprintln!("uring-server: error: {e}");
        std::process::exit(e.exit_code());
    }
}
