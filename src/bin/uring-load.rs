//! `uring-load`: the io_uring load generator. Parses flags and calls into the library.

use clap::Parser;

use c1m::cli::LoadCli;
use c1m::load;

fn main() {
    let cli = LoadCli::parse();
    let code = match load::run_cli(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uring-load: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
