//! The delay before answering `/`, shared by every core and changed at run time by
//! `POST /admin/latency` (experiments make a backend slow in the middle of a run this way).

use std::sync::atomic::{AtomicU64, Ordering};

/// Largest delay, in milliseconds (`--max-latency` and the admin endpoint): one hour.
pub const MAX_MS: u64 = 3_600_000;

/// Largest `POST /admin/latency` body accepted.
pub const MAX_BODY: usize = 1024;

/// The delay range `min_ms..=max_ms` in one atomic word (min in the high half, max in the
/// low one), so that a core never sees a new min with an old max. Each request reads it once
/// (a relaxed load: it guards no other data); writes come only from admin requests.
#[derive(Debug)]
pub struct Latency(AtomicU64);

/// A range that `POST /admin/latency` cannot apply; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LatencyError {
    #[error("the body must be JSON like {{\"min_ms\": 25, \"max_ms\": 25}} (max_ms defaults to min_ms, both in milliseconds): {0}")]
    Json(String),
    #[error("min_ms ({min}) must not exceed max_ms ({max})")]
    MinAboveMax { min: u64, max: u64 },
    #[error("max_ms is in milliseconds and at most {MAX_MS} (one hour), got {0}")]
    TooLong(u64),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    min_ms: u64,
    max_ms: Option<u64>,
}

fn pack(min: u64, max: u64) -> u64 {
    (min << 32) | max
}

impl Latency {
    /// A range already validated by the configuration (`min <= max <= MAX_MS`).
    pub fn new(min_ms: u64, max_ms: u64) -> Latency {
        debug_assert!(min_ms <= max_ms && max_ms <= MAX_MS);
        Latency(AtomicU64::new(pack(min_ms, max_ms)))
    }

    /// `(min_ms, max_ms)`.
    pub fn get(&self) -> (u64, u64) {
        let v = self.0.load(Ordering::Relaxed);
        (v >> 32, v & 0xffff_ffff)
    }

    /// Sets the range, checked; returns the previous one.
    pub fn set(&self, min_ms: u64, max_ms: u64) -> Result<(u64, u64), LatencyError> {
        if max_ms > MAX_MS {
            return Err(LatencyError::TooLong(max_ms));
        }
        if min_ms > max_ms {
            return Err(LatencyError::MinAboveMax {
                min: min_ms,
                max: max_ms,
            });
        }
        let old = self.0.swap(pack(min_ms, max_ms), Ordering::Relaxed);
        Ok((old >> 32, old & 0xffff_ffff))
    }

    /// Applies a `POST /admin/latency` body: `{"min_ms": A, "max_ms": B}`, `max_ms` defaulting
    /// to `min_ms`. Returns the new range.
    pub fn set_from_json(&self, body: &[u8]) -> Result<(u64, u64), LatencyError> {
        let b: Body =
            serde_json::from_slice(body).map_err(|e| LatencyError::Json(e.to_string()))?;
        let max = b.max_ms.unwrap_or(b.min_ms);
        self.set(b.min_ms, max)?;
        Ok((b.min_ms, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_reads_back_as_set_and_set_returns_the_previous_one() {
        let l = Latency::new(1, 5);
        assert_eq!(l.get(), (1, 5));
        assert_eq!(l.set(25, 25), Ok((1, 5)));
        assert_eq!(l.get(), (25, 25));
        assert_eq!(l.set(0, MAX_MS), Ok((25, 25)));
        assert_eq!(l.get(), (0, MAX_MS));
    }

    #[test]
    fn bad_ranges_are_refused_and_leave_the_range_alone() {
        let l = Latency::new(1, 5);
        assert_eq!(
            l.set(10, 5),
            Err(LatencyError::MinAboveMax { min: 10, max: 5 })
        );
        assert_eq!(l.set(0, MAX_MS + 1), Err(LatencyError::TooLong(MAX_MS + 1)));
        assert_eq!(
            l.set(u64::MAX, u64::MAX),
            Err(LatencyError::TooLong(u64::MAX))
        );
        assert_eq!(l.get(), (1, 5));
    }

    #[test]
    fn json_bodies_set_both_bounds_or_max_defaults_to_min() {
        let l = Latency::new(0, 0);
        assert_eq!(
            l.set_from_json(br#"{"min_ms": 20, "max_ms": 30}"#),
            Ok((20, 30))
        );
        assert_eq!(l.get(), (20, 30));
        assert_eq!(l.set_from_json(br#"{"min_ms":7}"#), Ok((7, 7)));
        assert_eq!(l.get(), (7, 7));
    }

    #[test]
    fn malformed_or_unknown_json_is_refused_with_the_expected_shape() {
        let l = Latency::new(3, 3);
        for bad in [
            &b""[..],
            b"25",
            b"{}",
            br#"{"max_ms": 5}"#,
            br#"{"min_ms": -1}"#,
            br#"{"min_ms": 1.5}"#,
            br#"{"min_ms": 5, "max": 9}"#,
            br#"{"min_ms": "5"}"#,
        ] {
            let e = l.set_from_json(bad).unwrap_err();
            assert!(matches!(e, LatencyError::Json(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("min_ms"), "{e}");
        }
        assert!(matches!(
            l.set_from_json(br#"{"min_ms": 9, "max_ms": 2}"#),
            Err(LatencyError::MinAboveMax { .. })
        ));
        assert_eq!(l.get(), (3, 3));
    }
}
