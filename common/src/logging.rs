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

/// A warning logged at most once per interval; the ones held back in between are counted and
/// reported with the next (`suppressed`). For one thread (a core, the control thread).
pub struct RateLimited {
    interval: std::time::Duration,
    last: std::cell::Cell<Option<std::time::Instant>>,
    suppressed: std::cell::Cell<u64>,
}

impl RateLimited {
    pub const fn new(interval: std::time::Duration) -> RateLimited {
        RateLimited {
            interval,
            last: std::cell::Cell::new(None),
            suppressed: std::cell::Cell::new(0),
        }
    }

    /// Calls `log` with the number held back since the last one, if the interval has passed.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let now = std::time::Instant::now();
        if self
            .last
            .get()
            .is_none_or(|t| now.duration_since(t) >= self.interval)
        {
            self.last.set(Some(now));
            log(self.suppressed.replace(0));
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
        }
    }
}

impl Default for RateLimited {
    /// One per 5 s.
    fn default() -> Self {
        RateLimited::new(std::time::Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_warning_counts_what_it_held_back() {
        let w = RateLimited::new(std::time::Duration::from_secs(3600));
        let mut seen = Vec::new();
        for _ in 0..4 {
            w.warn(|n| seen.push(n));
        }
        assert_eq!(seen, [0]);
        let w = RateLimited::new(std::time::Duration::ZERO);
        w.warn(|n| seen.push(n));
        w.warn(|n| seen.push(n));
        assert_eq!(seen, [0, 0, 0]);
    }
}
