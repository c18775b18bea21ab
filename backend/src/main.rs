//! `backend` binary: command line (and seed environment variables) -> config -> logging -> run.

mod chunked;
mod config;
mod echo;
mod health;
mod http_server;
mod latency;
mod server;
mod stop;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = config::Cli::parse();
    let cfg = match config::Config::from_cli(cli) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("backend: error: {e}");
            return ExitCode::from(2);
        }
    };
    lb_common::logging::init("info");
    match server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("backend: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
