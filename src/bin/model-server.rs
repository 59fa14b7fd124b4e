//! `model-server`: every server model of the notes, one at a time. Parses flags and calls
//! into the library.

use clap::Parser;

use c1m::cli::ModelArgs;
use c1m::models;

fn main() {
    let args = ModelArgs::parse();
    match args.install.print::<ModelArgs>() {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            eprintln!("model-server: error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = models::run(&args) {
        eprintln!("model-server: error: {e}");
        std::process::exit(e.exit_code());
    }
}
