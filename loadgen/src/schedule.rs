//! When each connection sends its next request: closed loop (as soon as the previous response is
//! in), open-loop pacing for `--rate`, and the stop conditions (`--duration`, `--requests`).
//!
//! Open loop: request number n of the whole run is due at `start + n / rate`, and request n goes to
//! connection `n % conns`. So connection j sends at `start + (j + k * conns) / rate`, k = 0, 1, ...:
//! the connections are staggered and their union is evenly spaced at the total rate. A request's
//! latency is measured from its due time, so a slow response that delays the connection's later
//! requests shows up in their latency instead of silently lowering the rate (coordinated
//! omission, as wrk2 avoids it).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Open-loop due times for one connection.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    rate: f64,
    /// Global sequence number of this connection's next request.
    next: u64,
    /// Number of connections in the whole run: the distance between this connection's requests.
    step: u64,
}

impl Pacer {
    pub fn new(start: Instant, rate: f64, conn_index: usize, total_conns: usize) -> Self {
        Pacer {
            start,
            rate,
            next: conn_index as u64,
            step: total_conns.max(1) as u64,
        }
    }

    /// Due time of global request `n`. Computed from `n` each time (not by adding intervals), so
    /// rounding never accumulates into drift.
    pub fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_nanos((n as f64 * 1e9 / self.rate) as u64)
    }

    /// Due time of this connection's next request; advances to the one after.
    pub fn next_due(&mut self) -> Instant {
        let due = self.due(self.next);
        self.next += self.step;
        due
    }
}

/// How the run ends, shared by the connections of one core.
#[derive(Debug, Clone)]
pub enum Budget {
    /// Start no request at or after this instant.
    Until(Instant),
    /// Requests of this core still to start (counted ones only; warmup requests are free).
    Count(Rc<Cell<u64>>),
}

/// The next request of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    /// Open loop: the due time to wait for and to measure latency from. Closed loop: `now`.
    pub at: Instant,
    /// Whether the request belongs to the measurement (it starts at or after the warmup).
    pub counted: bool,
}

/// One connection's view of the schedule and of the stop condition.
#[derive(Debug, Clone)]
pub struct Plan {
    budget: Budget,
    measure_start: Instant,
    pacer: Option<Pacer>,
}

impl Plan {
    pub fn new(budget: Budget, measure_start: Instant, pacer: Option<Pacer>) -> Self {
        Plan {
            budget,
            measure_start,
            pacer,
        }
    }

    pub fn open_loop(&self) -> bool {
        self.pacer.is_some()
    }

    /// The next request, or `None` when this connection is done.
    pub fn next(&mut self, now: Instant) -> Option<Next> {
        let at = match &mut self.pacer {
            Some(p) => p.next_due(),
            None => now,
        };
        let counted = at >= self.measure_start;
        match &self.budget {
            Budget::Until(end) if at >= *end => return None,
            Budget::Until(_) => {}
            Budget::Count(left) if counted => {
                if left.get() == 0 {
                    return None;
                }
                left.set(left.get() - 1);
            }
            Budget::Count(_) => {}
        }
        Some(Next { at, counted })
    }
}

/// `total` split into `parts` shares that differ by at most one and add up exactly.
pub fn split(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts.max(1) as u64;
    total / parts + u64::from((index as u64) < total % parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_staggered_and_together_evenly_spaced() {
        let start = Instant::now();
        // 100 req/s over 4 connections: each sends every 40 ms, offset by 10 ms from the last.
        let mut pacers: Vec<Pacer> = (0..4).map(|j| Pacer::new(start, 100.0, j, 4)).collect();
        let mut all = Vec::new();
        for _ in 0..3 {
            for p in &mut pacers {
                all.push(p.next_due() - start);
            }
        }
        all.sort();
        for (n, d) in all.iter().enumerate() {
            assert_eq!(*d, Duration::from_millis(10 * n as u64));
        }
    }

    #[test]
    fn due_times_do_not_drift_over_long_runs() {
        let start = Instant::now();
        let p = Pacer::new(start, 3.0, 0, 1);
        // 1/3 s is not representable; the millionth request is still due at exactly n/3 s.
        let d = p.due(3_000_000) - start;
        assert_eq!(d, Duration::from_secs(1_000_000));
    }

    #[test]
    fn open_loop_duration_runs_send_rate_times_duration_requests() {
        let start = Instant::now();
        let end = start + Duration::from_secs(2);
        let conns = 64;
        let mut sent = 0;
        for j in 0..conns {
            let pacer = Pacer::new(start, 200.0, j, conns);
            let mut plan = Plan::new(Budget::Until(end), start, Some(pacer));
            while plan.next(start).is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, 400);
    }

    #[test]
    fn a_request_budget_is_shared_and_exact() {
        let start = Instant::now();
        let left = Rc::new(Cell::new(10));
        let mut a = Plan::new(Budget::Count(left.clone()), start, None);
        let mut b = Plan::new(Budget::Count(left.clone()), start, None);
        let mut n = 0;
        loop {
            let x = a.next(start).is_some();
            let y = b.next(start).is_some();
            n += x as u32 + y as u32;
            if !x && !y {
                break;
            }
        }
        assert_eq!(n, 10);
        assert_eq!(left.get(), 0);
    }

    #[test]
    fn warmup_requests_are_not_counted_and_do_not_use_the_budget() {
        let start = Instant::now();
        let measure = start + Duration::from_secs(1);
        let left = Rc::new(Cell::new(1));
        let mut plan = Plan::new(Budget::Count(left.clone()), measure, None);
        assert_eq!(
            plan.next(start),
            Some(Next {
                at: start,
                counted: false
            })
        );
        assert_eq!(left.get(), 1);
        assert_eq!(
            plan.next(measure),
            Some(Next {
                at: measure,
                counted: true
            })
        );
        assert_eq!(plan.next(measure), None);
    }

    #[test]
    fn closed_loop_stops_at_the_end() {
        let start = Instant::now();
        let end = start + Duration::from_secs(1);
        let mut plan = Plan::new(Budget::Until(end), start, None);
        assert!(plan.next(start).is_some());
        assert!(plan.next(end).is_none());
    }

    #[test]
    fn splits_add_up_exactly() {
        for (total, parts) in [(10, 3), (1000, 7), (5, 8), (0, 2)] {
            let sum: u64 = (0..parts).map(|i| split(total, parts, i)).sum();
            assert_eq!(sum, total);
            let max = (0..parts).map(|i| split(total, parts, i)).max().unwrap();
            let min = (0..parts).map(|i| split(total, parts, i)).min().unwrap();
            assert!(max - min <= 1);
        }
    }
}
