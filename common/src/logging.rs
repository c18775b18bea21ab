//! One way to set up `tracing` for all three binaries: env filter (`RUST_LOG`), default `info`.

use tracing_subscriber::EnvFilter;

/// Installs a stderr subscriber. `RUST_LOG` overrides `default_level` (e.g. `info`, `lb=debug`).
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A second init (tests that call main logic twice) is harmless: ignore the error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs in files and CI stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_thread_names(true)
        .try_init();
}
