//! What `least_response_time` learns from one connection: a probe that the relays tell of the
//! first byte each way (see [`crate::proxy::idle::FirstBytes`]), feeding this core's Peak-EWMA of
//! the backend ([`crate::balance::ewma`]) by the service's metric.
//!
//! - The wait starts when the first byte goes to the backend (a replayed prefix, or the client's
//!   first relayed byte), or at the connect for a backend that speaks first; while it lasts the
//!   connection counts as pending, so a backend that stops answering looks slower by the second
//!   before its first answer (the stalled rule of [`PeakEwma::estimate`]).
//! - `first_byte`: the first byte back ends the wait and is the sample.
//! - `last_byte`: the sample is from the start of the wait to the connection's end.
//! - A connection that sent something and ended without any answer counts its wait as a sample:
//!   a backend that never answers must not look unmeasured (and so cheapest) again.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::ewma::{PeakEwma, Pending};
use crate::config::response_time::Metric;
use crate::proxy::idle::FirstBytes;
use crate::shared::counters::BackendCounters;

/// One core's estimate of one backend, and where it is published for the stats.
#[derive(Clone)]
pub struct Estimate {
    pub ewma: Rc<RefCell<PeakEwma>>,
    pub counters: Arc<BackendCounters>,
    pub core: usize,
}

impl Estimate {
    /// The average as of its latest sample, for `/lb/stats` and `/metrics` (what picking uses
    /// also fades with silence and rises with stalled connections; see PeakEwma::estimate).
    fn publish(&self) {
        let ewma = self.ewma.borrow();
        if let Some(at) = ewma.last_sample_at() {
            if let Some(e) = ewma.ewma(at) {
                self.counters.set_response_time(self.core, e);
            }
        }
    }

    /// A sample measured by the owner (the connect metric).
    pub fn observe(&self, sample: std::time::Duration, now: Instant) {
        self.ewma.borrow_mut().observe(sample, now);
        self.publish();
    }
}

pub struct Probe {
    est: Estimate,
    metric: Metric,
    pending: RefCell<Option<Pending>>,
    /// Start of the wait (for last_byte).
    start: Cell<Instant>,
    /// Something went to the backend: a request is out.
    sent: Cell<bool>,
    answered: Cell<bool>,
    finished: Cell<bool>,
}

impl Probe {
    /// A probe for a connection to the backend of `est`, connected at `connected`; `sent_at`
    /// when a prefix already went to the backend.
    pub fn start(
        est: Estimate,
        metric: Metric,
        connected: Instant,
        sent_at: Option<Instant>,
    ) -> Rc<Probe> {
        let start = sent_at.unwrap_or(connected);
        let pending = est.ewma.borrow_mut().start_pending(start);
        Rc::new(Probe {
            est,
            metric,
            pending: RefCell::new(Some(pending)),
            start: Cell::new(start),
            sent: Cell::new(sent_at.is_some()),
            answered: Cell::new(false),
            finished: Cell::new(false),
        })
    }

    /// The connection ended at `now` (once; a probe dropped unfinished finishes then, so that a
    /// cancelled connection never stays pending and makes its backend look stalled for ever).
    pub fn finish(&self, now: Instant) {
        if self.finished.replace(true) {
            return;
        }
        let mut ewma = self.est.ewma.borrow_mut();
        if let Some(p) = self.pending.borrow_mut().take() {
            let waited = ewma.end_pending(p, now);
            // Sent a request and never heard back: that was slow, not unmeasured.
            if let (true, Some(w)) = (self.sent.get(), waited) {
                ewma.observe(w, now);
            }
        } else if self.metric == Metric::LastByte && self.answered.get() {
            ewma.observe(now.saturating_duration_since(self.start.get()), now);
        }
        drop(ewma);
        self.est.publish();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.finish(Instant::now());
    }
}

impl FirstBytes for Probe {
    fn sent(&self, now: Instant) {
        if self.sent.replace(true) || self.answered.get() || self.finished.get() {
            return;
        }
        // The wait began at the connect (nothing had been sent): it begins now.
        let mut ewma = self.est.ewma.borrow_mut();
        if let Some(p) = self.pending.borrow_mut().take() {
            let _ = ewma.end_pending(p, now);
        }
        *self.pending.borrow_mut() = Some(ewma.start_pending(now));
        self.start.set(now);
    }

    fn answered(&self, now: Instant) {
        if self.answered.replace(true) || self.finished.get() {
            return;
        }
        let Some(p) = self.pending.borrow_mut().take() else {
            return;
        };
        let mut ewma = self.est.ewma.borrow_mut();
        match self.metric {
            Metric::FirstByte => {
                let _ = ewma.first_byte(p, now);
            }
            // Not a sample yet (the end is), but no longer stalled.
            Metric::LastByte | Metric::Connect => {
                let _ = ewma.end_pending(p, now);
            }
        }
        drop(ewma);
        self.est.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn est() -> Estimate {
        Estimate {
            ewma: Rc::new(RefCell::new(PeakEwma::default())),
            counters: Arc::new(BackendCounters::new(1)),
            core: 0,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_byte_measures_from_the_request_not_from_the_connect() {
        let e = est();
        let t0 = Instant::now();
        let p = Probe::start(e.clone(), Metric::FirstByte, t0, None);
        // The client speaks 40 ms after the connect; the backend answers 5 ms later.
        p.sent(t0 + ms(40));
        p.answered(t0 + ms(45));
        p.finish(t0 + ms(100));
        assert_eq!(e.ewma.borrow().ewma(t0 + ms(45)), Some(ms(5)));
        assert_eq!(e.counters.response_times(), vec![Some(ms(5))]);
    }

    #[test]
    fn a_backend_that_speaks_first_is_measured_from_the_connect() {
        let e = est();
        let t0 = Instant::now();
        let p = Probe::start(e.clone(), Metric::FirstByte, t0, None);
        p.answered(t0 + ms(3));
        p.sent(t0 + ms(50));
        p.finish(t0 + ms(60));
        assert_eq!(e.ewma.borrow().ewma(t0 + ms(3)), Some(ms(3)));
    }

    #[test]
    fn a_request_never_answered_is_a_slow_sample_and_stalls_the_estimate_meanwhile() {
        let e = est();
        let t0 = Instant::now();
        let fast = Probe::start(e.clone(), Metric::FirstByte, t0, Some(t0));
        fast.answered(t0 + ms(1));
        fast.finish(t0 + ms(2));
        let stuck = Probe::start(e.clone(), Metric::FirstByte, t0 + ms(10), Some(t0 + ms(10)));
        // Pending for 500 ms: the estimate is the wait, not the 1 ms average.
        let at = t0 + ms(510);
        assert!(e.ewma.borrow().estimate(at).unwrap() >= ms(499));
        stuck.finish(at);
        assert_eq!(e.ewma.borrow().pending(), 0);
        assert!(
            e.ewma.borrow().ewma(at).unwrap() >= ms(499),
            "recorded as slow"
        );
        // A client that connects and leaves without a word says nothing of the backend.
        let e2 = est();
        let idle = Probe::start(e2.clone(), Metric::FirstByte, t0, None);
        idle.finish(t0 + ms(900));
        assert_eq!(e2.ewma.borrow().ewma(t0 + ms(900)), None);
        // A connection dropped mid-wait (its task cancelled) is no longer pending.
        let e3 = est();
        let cancelled = Probe::start(e3.clone(), Metric::FirstByte, t0, Some(t0));
        assert_eq!(e3.ewma.borrow().pending(), 1);
        drop(cancelled);
        assert_eq!(e3.ewma.borrow().pending(), 0);
    }

    #[test]
    fn last_byte_measures_to_the_end_of_the_connection() {
        let e = est();
        let t0 = Instant::now();
        let p = Probe::start(e.clone(), Metric::LastByte, t0, Some(t0));
        p.answered(t0 + ms(2));
        assert_eq!(
            e.ewma.borrow().ewma(t0 + ms(2)),
            None,
            "not at the first byte"
        );
        p.finish(t0 + ms(30));
        assert_eq!(e.ewma.borrow().ewma(t0 + ms(30)), Some(ms(30)));
    }
}
