//! `loadgen`: thread-per-core io_uring HTTP/1.1 load generator. Thin: clap -> run -> print.

mod args;
mod client;
mod echo;
mod keys;
mod outcome;
mod proxy_v2;
mod report;
mod response;
mod run;
mod schedule;
mod stats;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{ArgError, Args};
use crate::report::Report;

fn main() -> ExitCode {
    lb_common::logging::init("warn");
    // Usage errors exit with 2 from clap itself (help and version with 0).
    let args = Args::parse();
    let json = args.json.clone();
    let cfg = match args.into_config() {
        Ok(cfg) => cfg,
        Err(e @ ArgError::Usage(_)) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
        Err(e @ ArgError::Resolve(_)) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(1);
        }
    };
    let out = match run::run(cfg.clone()) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("loadgen: cannot start the workers: {e}");
            return ExitCode::from(1);
        }
    };
    let report = Report::new(&cfg, &out, std::env::args().collect());
    print!("{}", report.text());
    if let Some(path) = json {
        let written = std::fs::File::create(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                serde_json::to_writer_pretty(std::io::BufWriter::new(f), &report)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if report.requests == 0 {
        eprintln!("loadgen: {}", report.why_nothing());
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
