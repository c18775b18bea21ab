//! `[access_log]`: one line per connection at its close (and optionally at its start and every
//! `interval_ms` while it lasts), to stderr or a file, as JSON or a HAProxy-`tcplog`-like text.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Lines per second over the whole process unless `max_lines_per_s` says otherwise: well above
/// what two cores serve in short connections (about 20,000 per second each), well below what
/// would make the log the bottleneck.
pub const DEFAULT_MAX_LINES_PER_S: u32 = 100_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub format: Option<String>,
    pub log_on_connect: Option<bool>,
    pub interval_ms: Option<u64>,
    pub max_lines_per_s: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// None: stderr.
    pub path: Option<PathBuf>,
    pub format: LogFormat,
    /// Also a line when the backend connection is up.
    pub log_on_connect: bool,
    /// A line every this long for each connection still open (None: only at close).
    pub interval: Option<Duration>,
    /// Lines per second, all cores together; the rest are dropped and counted.
    pub max_lines_per_s: u32,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            path: None,
            format: LogFormat::Text,
            log_on_connect: false,
            interval: None,
            max_lines_per_s: DEFAULT_MAX_LINES_PER_S,
        }
    }
}

pub fn build(f: &FileAccessLog) -> Result<AccessLogConfig, ConfigError> {
    let format = match f.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(invalid(
                "access_log.format",
                format!("is \"json\" or \"text\", not {other:?}"),
            ))
        }
    };
    let path = match f.path.as_deref() {
        None | Some("") | Some("-") | Some("stderr") => None,
        Some(p) => Some(PathBuf::from(p)),
    };
    let interval = match f.interval_ms {
        None | Some(0) => None,
        Some(ms) if ms < 100 => {
            return Err(invalid(
                "access_log.interval_ms",
                format!("must be 0 (off) or at least 100 ms (got {ms})"),
            ))
        }
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    let max_lines_per_s = match f.max_lines_per_s {
        Some(0) => {
            return Err(invalid(
                "access_log.max_lines_per_s",
                "must be at least 1 (set enabled = false to log nothing)",
            ))
        }
        v => v.unwrap_or(DEFAULT_MAX_LINES_PER_S),
    };
    Ok(AccessLogConfig {
        // A path turns it on unless `enabled = false` says otherwise.
        enabled: f.enabled.unwrap_or(f.path.is_some()),
        path,
        format,
        log_on_connect: f.log_on_connect.unwrap_or(false),
        interval,
        max_lines_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_turns_the_log_on_and_bad_values_name_their_key() {
        let c = build(&FileAccessLog::default()).unwrap();
        assert!(!c.enabled);
        let c = build(&FileAccessLog {
            path: Some("/var/log/lb/access.log".into()),
            format: Some("json".into()),
            interval_ms: Some(5000),
            ..Default::default()
        })
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(c.interval, Some(Duration::from_secs(5)));
        let stderr = build(&FileAccessLog {
            enabled: Some(true),
            path: Some("-".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(stderr.path, None);
        for (f, key) in [
            (
                FileAccessLog {
                    format: Some("clf".into()),
                    ..Default::default()
                },
                "access_log.format",
            ),
            (
                FileAccessLog {
                    interval_ms: Some(5),
                    ..Default::default()
                },
                "access_log.interval_ms",
            ),
            (
                FileAccessLog {
                    max_lines_per_s: Some(0),
                    ..Default::default()
                },
                "access_log.max_lines_per_s",
            ),
        ] {
            assert!(build(&f).unwrap_err().to_string().contains(key));
        }
    }
}
