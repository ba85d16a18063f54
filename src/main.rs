use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = genfs::cli::Cli::parse();
    genfs::cli::init_logging();
    match genfs::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("genfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
