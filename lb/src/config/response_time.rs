//! `[response_time]` (and a service's `[services.response_time]`): what `least_response_time`
//! measures, as NGINX Plus `least_time` in its stream module does.
//!
//! - `first_byte` (the default): from the first byte sent to the backend to the first byte that
//!   comes back; for a protocol where the backend speaks first, from the connect.
//! - `connect`: the TCP handshake (on a LAN the kernel's, the same for a fast and a slow server).
//! - `last_byte`: from the first byte sent to the end of the connection.
//!
//! `decay_ms` is the Peak-EWMA's time constant (`balance::ewma`): how fast a backend's cost falls
//! back after a slow answer, or after silence.

use std::time::Duration;

use serde::Deserialize;

use super::values::millis;
use super::{invalid, ConfigError};

/// The decay: a slow answer (or a backend's silence) fades over about this long. Finagle and
/// linkerd use 10 s. Measured with a1-latency (backends at 1, 5, 25 ms, 4,000 requests at 500/s,
/// one run each on a shared machine): 10 s gave the 1 ms backend 69% and a client p99 of 27 ms,
/// and one scheduling hiccup on it kept it out for seconds (its share swung 13-65% per 250 ms
/// before it turned slow); 2 s gave 72%, p99 13 ms, 67-76%; 0.5 s 70%, p99 27 ms, 62-83%.
pub const DEFAULT_DECAY: Duration = Duration::from_millis(2_000);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResponseTime {
    pub metric: Option<String>,
    pub decay_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTime {
    pub metric: Metric,
    pub decay: Duration,
}

impl Default for ResponseTime {
    fn default() -> Self {
        ResponseTime {
            metric: Metric::default(),
            decay: DEFAULT_DECAY,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    #[default]
    FirstByte,
    Connect,
    LastByte,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::FirstByte => "first_byte",
            Metric::Connect => "connect",
            Metric::LastByte => "last_byte",
        }
    }
}

/// `prefix` names the table in errors (`""` or `services[N].`).
pub fn build(
    prefix: &str,
    f: &FileResponseTime,
    base: ResponseTime,
) -> Result<ResponseTime, ConfigError> {
    let metric = match f.metric.as_deref() {
        None => base.metric,
        Some("first_byte") => Metric::FirstByte,
        Some("connect") => Metric::Connect,
        Some("last_byte") => Metric::LastByte,
        Some(other) => {
            return Err(invalid(
                &format!("{prefix}response_time.metric"),
                format!("is \"first_byte\", \"connect\" or \"last_byte\", not {other:?}"),
            ))
        }
    };
    Ok(ResponseTime {
        metric,
        decay: millis(
            &format!("{prefix}response_time.decay_ms"),
            f.decay_ms,
            base.decay,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_is_the_default_and_a_service_overrides_it() {
        let top = build("", &FileResponseTime::default(), ResponseTime::default()).unwrap();
        assert_eq!(top.metric, Metric::FirstByte);
        assert_eq!(top.decay, DEFAULT_DECAY);
        let f = FileResponseTime {
            metric: Some("connect".into()),
            decay_ms: Some(2000),
        };
        let svc = build("services[0].", &f, top).unwrap();
        assert_eq!(svc.metric, Metric::Connect);
        assert_eq!(svc.decay, Duration::from_secs(2));
        let bad = FileResponseTime {
            metric: Some("ttfb".into()),
            decay_ms: None,
        };
        let e = build("services[1].", &bad, top).unwrap_err().to_string();
        assert!(e.contains("services[1].response_time.metric"), "{e}");
    }
}
