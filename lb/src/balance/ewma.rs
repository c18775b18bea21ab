//! Peak-EWMA of one backend's response times, with the stalled-connection rule: a pure state
//! machine that is given the time (`now`) by its owner and never reads a clock.
//!
//! # Shape
//!
//! One [`PeakEwma`] per backend per core, owned by that core (`&mut self`, no atomics): the owner
//! calls [`PeakEwma::start_pending`] when a connection starts waiting for the backend's first
//! byte, gives the returned [`Pending`] back with [`PeakEwma::first_byte`] when that byte arrives
//! (which records the sample), or with [`PeakEwma::end_pending`] when the connection ends without
//! an answer, and reads [`PeakEwma::estimate`] (or [`PeakEwma::candidate_ns`]) when it picks.
//!
//! The pending connections live inside the struct rather than being passed in as an
//! `oldest_pending: Option<Instant>` because the oldest of a set whose members leave in any order
//! is the hard part, and every owner would have to solve it again. Here it costs O(1) per start,
//! end and read with no allocation in the steady state: the waiting connections form a list in
//! start order inside a slab (`Vec`) whose freed slots are reused, so the oldest is the list's
//! head and the memory is that of the most connections ever waiting at once. A plain
//! [`PeakEwma::observe`] remains for samples that the owner measures itself (the `connect`
//! metric, `last_byte`).
//!
//! # What the numbers mean
//!
//! - **Peak reaction**: a sample above the average replaces it at once, so a backend that
//!   slows down is avoided from its first slow answer.
//! - **Faster samples decay in**: a sample below the average is blended in with the weight
//!   `1 - exp(-dt / tau)`, `dt` the time since the previous sample. The weight depends on time,
//!   not on the number of samples, so a busy backend and a quiet one converge at the same pace:
//!   after a slow period, the average approaches the new level with time constant `tau`.
//! - **Reads decay with silence**: [`PeakEwma::ewma`] at `now` is the average times
//!   `exp(-(now - last sample) / tau)`. Without this, a backend that was slow once and is then
//!   never chosen again (the others are cheaper) keeps its old cost for ever: it gets no new
//!   sample that could show it recovered. With it, an idle backend's cost fades until it is
//!   worth a probe (from 25x the others' cost after about `3.2 tau`). The fading is optimism,
//!   not a measurement: the next sample is blended into the average as it stood at the last
//!   sample, so that a stream of identical samples keeps the average exactly at their value
//!   (reading does not pull it down).
//! - **Stalled connections**: [`PeakEwma::estimate`] is at least the age of the oldest
//!   connection still waiting for its first byte, once that age exceeds the average. A backend
//!   that stops answering therefore gets more expensive by one second per second from the
//!   moment its oldest waiting connection is older than its usual answer, before any answer
//!   arrives. A connection that legitimately waits long for its first byte (a long poll) makes
//!   its backend look slow in the same way; that is the `first_byte` metric's nature (NGINX
//!   Plus `least_time first_byte` records such a connection as one slow sample when it answers).
//!
//! Time that goes backwards (a `now` before the last sample, a start before the newest pending
//! one) is read as no time passing: nothing panics, no decay, no negative age.

use std::time::{Duration, Instant};

/// Time constant of the decay: old samples fade over about ten seconds, as in Finagle and
/// linkerd (and lb's connect-time EWMA before it).
pub const DEFAULT_TAU: Duration = Duration::from_secs(10);

/// End of the pending list and of the free list.
const NIL: u32 = u32::MAX;

/// A connection that waits for its backend's first byte. Give it back exactly once, to the
/// [`PeakEwma`] that made it, with [`PeakEwma::first_byte`] or [`PeakEwma::end_pending`]: one
/// that is dropped instead stays "waiting" and makes its backend look stalled.
#[must_use = "give a Pending back with first_byte or end_pending, or its backend looks stalled"]
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    slot: u32,
    /// Unique per start within one [`PeakEwma`] (also across [`PeakEwma::reset`]), so that a
    /// token from before a reset is recognised as stale instead of ending another connection.
    stamp: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    start: Instant,
    /// 0: free.
    stamp: u64,
    prev: u32,
    /// Next in start order while in use; next free slot while free.
    next: u32,
}

/// The peak-EWMA of one backend as one core sees it, plus that core's connections still
/// waiting for the backend's first byte. See the module documentation.
#[derive(Clone, Debug)]
pub struct PeakEwma {
    tau: Duration,
    /// `tau` in nanoseconds, at least 1.
    tau_ns: f64,
    /// The average as of `at`, in nanoseconds.
    value_ns: f64,
    /// Time of the latest sample; `None` before the first.
    at: Option<Instant>,
    slots: Vec<Slot>,
    /// Oldest and newest waiting connection.
    head: u32,
    tail: u32,
    free: u32,
    waiting: u32,
    next_stamp: u64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma::new(DEFAULT_TAU)
    }
}

impl PeakEwma {
    /// No sample and nothing waiting. `tau` is the decay's time constant; below 1 ns it is read
    /// as 1 ns (every sample then replaces the average, and a read a moment later is 0).
    pub fn new(tau: Duration) -> PeakEwma {
        let tau = tau.max(Duration::from_nanos(1));
        PeakEwma {
            tau,
            tau_ns: tau.as_nanos() as f64,
            value_ns: 0.0,
            at: None,
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            waiting: 0,
            next_stamp: 1,
        }
    }

    /// The time constant, as given to [`PeakEwma::new`] (at least 1 ns).
    pub fn tau(&self) -> Duration {
        self.tau
    }

    /// `exp(-dt / tau)`: the weight the past keeps after `dt`.
    fn keep(&self, dt: Duration) -> f64 {
        (-(dt.as_nanos() as f64) / self.tau_ns).exp()
    }

    /// Records one response time measured at `now`: a sample at or above the average replaces
    /// it, a smaller one is blended in with weight `1 - exp(-dt / tau)` (`dt` since the previous
    /// sample; none when `now` is not later). The first sample becomes the average.
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let s = sample.as_nanos() as f64;
        match self.at {
            None => {
                self.value_ns = s;
                self.at = Some(now);
            }
            Some(at) => {
                if s >= self.value_ns {
                    self.value_ns = s;
                } else {
                    let w = self.keep(now.saturating_duration_since(at));
                    self.value_ns = self.value_ns * w + s * (1.0 - w);
                }
                self.at = Some(at.max(now));
            }
        }
    }

    /// The average at `now`, faded by the time since the latest sample; `None` before the first
    /// sample. Ignores waiting connections (see [`PeakEwma::estimate`]).
    pub fn ewma(&self, now: Instant) -> Option<Duration> {
        let at = self.at?;
        let v = self.value_ns * self.keep(now.saturating_duration_since(at));
        Some(Duration::from_nanos(v.round() as u64))
    }

    /// What picking should use: [`PeakEwma::ewma`], raised to the age of the oldest connection
    /// still waiting for its first byte when that is larger. `None` only when there is neither a
    /// sample nor a waiting connection.
    pub fn estimate(&self, now: Instant) -> Option<Duration> {
        let ewma = self.ewma(now);
        let stalled = self
            .oldest_pending()
            .map(|start| now.saturating_duration_since(start));
        match (ewma, stalled) {
            (Some(e), Some(age)) => Some(e.max(age)),
            (e, None) => e,
            (None, age) => age,
        }
    }

    /// [`PeakEwma::estimate`] in nanoseconds as a balancer `Candidate::ewma_ns` wants it: 0 when
    /// nothing is known (an unmeasured backend, probed first), else at least 1.
    pub fn candidate_ns(&self, now: Instant) -> u64 {
        match self.estimate(now) {
            None => 0,
            Some(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Time of the latest sample, if any.
    pub fn last_sample_at(&self) -> Option<Instant> {
        self.at
    }

    /// A connection starts waiting for the backend's first byte at `start` (when its first byte
    /// went upstream; for protocols where the server speaks first, when it connected). A start
    /// earlier than the newest waiting connection's is recorded as that one's time, so that the
    /// list stays in start order.
    pub fn start_pending(&mut self, start: Instant) -> Pending {
        let start = match self.slot(self.tail) {
            Some(newest) => start.max(newest.start),
            None => start,
        };
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let slot = Slot {
            start,
            stamp,
            prev: self.tail,
            next: NIL,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.slots[i as usize].next;
            self.slots[i as usize] = slot;
            i
        } else {
            // u32::MAX connections waiting at once cannot happen: file descriptors run out first.
            let i = self.slots.len() as u32;
            debug_assert!(i < NIL);
            self.slots.push(slot);
            i
        };
        match self.tail {
            NIL => self.head = i,
            t => self.slots[t as usize].next = i,
        }
        self.tail = i;
        self.waiting += 1;
        Pending { slot: i, stamp }
    }

    /// The backend's first byte arrived at `now` on this connection: records `now - start` as a
    /// sample (see [`PeakEwma::observe`]) and returns it. `None`, and nothing recorded, for a
    /// token this `PeakEwma` did not hand out or that predates a [`PeakEwma::reset`].
    pub fn first_byte(&mut self, pending: Pending, now: Instant) -> Option<Duration> {
        let start = self.unlink(&pending)?;
        let sample = now.saturating_duration_since(start);
        self.observe(sample, now);
        Some(sample)
    }

    /// The connection stopped waiting without an answer (it closed, failed or timed out):
    /// records nothing and returns how long it had waited, for an owner that wants to count it
    /// as a sample after all. `None` for a stale token, as for [`PeakEwma::first_byte`].
    pub fn end_pending(&mut self, pending: Pending, now: Instant) -> Option<Duration> {
        let start = self.unlink(&pending)?;
        Some(now.saturating_duration_since(start))
    }

    /// Start of the oldest connection still waiting for its first byte.
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.slot(self.head).map(|s| s.start)
    }

    /// Connections still waiting for their first byte.
    pub fn pending(&self) -> u32 {
        self.waiting
    }

    /// Forgets every sample and every waiting connection (their tokens become stale); keeps
    /// `tau`. For a backend that came back and should be measured afresh.
    pub fn reset(&mut self) {
        let stamp = self.next_stamp;
        *self = PeakEwma::new(self.tau);
        self.next_stamp = stamp;
    }

    fn slot(&self, i: u32) -> Option<&Slot> {
        if i == NIL {
            None
        } else {
            self.slots.get(i as usize)
        }
    }

    /// Takes a waiting connection out of the list and returns its start; `None` if the token is
    /// stale.
    fn unlink(&mut self, p: &Pending) -> Option<Instant> {
        let s = *self
            .slots
            .get(p.slot as usize)
            .filter(|s| s.stamp == p.stamp)?;
        match s.prev {
            NIL => self.head = s.next,
            prev => self.slots[prev as usize].next = s.next,
        }
        match s.next {
            NIL => self.tail = s.prev,
            next => self.slots[next as usize].prev = s.prev,
        }
        let slot = &mut self.slots[p.slot as usize];
        slot.stamp = 0;
        slot.prev = NIL;
        slot.next = self.free;
        self.free = p.slot;
        self.waiting -= 1;
        Some(s.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn nothing_is_known_before_the_first_sample_or_connection() {
        let e = PeakEwma::new(TAU);
        let t = Instant::now();
        assert_eq!(e.ewma(t), None);
        assert_eq!(e.estimate(t), None);
        assert_eq!(e.candidate_ns(t), 0);
        assert_eq!(e.oldest_pending(), None);
        assert_eq!(e.pending(), 0);
        assert_eq!(e.last_sample_at(), None);
    }

    #[test]
    fn the_first_sample_becomes_the_average() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(7), t);
        assert_eq!(e.ewma(t), Some(ms(7)));
        assert_eq!(e.estimate(t), Some(ms(7)));
        assert_eq!(e.candidate_ns(t), 7_000_000);
        assert_eq!(e.last_sample_at(), Some(t));
    }

    #[test]
    fn a_read_one_time_constant_later_has_faded_to_one_e_th() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(100), t);
        let expect = 100_000_000.0 * (-1.0f64).exp();
        let got = e.ewma(t + TAU).unwrap().as_nanos() as f64;
        assert!((got - expect).abs() < 2.0, "{got} vs {expect}");
        // Half a time constant: exp(-1/2); three: exp(-3). Reading changes nothing.
        let half = e.ewma(t + TAU / 2).unwrap().as_nanos() as f64;
        assert!((half - 100e6 * (-0.5f64).exp()).abs() < 2.0, "{half}");
        let three = e.ewma(t + TAU * 3).unwrap().as_nanos() as f64;
        assert!((three - 100e6 * (-3.0f64).exp()).abs() < 2.0, "{three}");
        assert_eq!(e.ewma(t), Some(ms(100)));
    }

    #[test]
    fn a_long_silence_fades_the_cost_to_nothing_but_keeps_it_measured() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(25), t);
        let later = t + TAU * 100;
        assert_eq!(e.ewma(later), Some(Duration::ZERO));
        assert_eq!(
            e.candidate_ns(later),
            1,
            "measured backends never read as unmeasured"
        );
    }

    #[test]
    fn a_slower_sample_takes_effect_at_once() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(1), t);
        e.observe(ms(50), t + us(10));
        assert_eq!(e.ewma(t + us(10)), Some(ms(50)));
        // Even at the same instant.
        e.observe(ms(80), t + us(10));
        assert_eq!(e.ewma(t + us(10)), Some(ms(80)));
    }

    #[test]
    fn a_faster_sample_is_blended_in_by_the_time_since_the_previous_one() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(10), t);
        // One time constant later, a 0 sample: the old value keeps exp(-1) of its weight.
        e.observe(Duration::ZERO, t + TAU);
        let got = e.ewma(t + TAU).unwrap().as_nanos() as f64;
        assert!((got - 10e6 * (-1.0f64).exp()).abs() < 2.0, "{got}");
        // A faster sample 1 ms after the previous one barely moves the average.
        let mut e = PeakEwma::new(TAU);
        e.observe(ms(10), t);
        e.observe(ms(1), t + ms(1));
        let v = e.ewma(t + ms(1)).unwrap();
        assert!(v < ms(10) && v > ms(10) - us(2), "{v:?}");
    }

    #[test]
    fn a_faster_sample_at_the_same_instant_carries_no_weight() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(10), t);
        e.observe(ms(1), t);
        assert_eq!(e.ewma(t), Some(ms(10)));
    }

    #[test]
    fn identical_samples_keep_the_average_at_their_value_however_often_it_is_read() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        for i in 0..1000u32 {
            let now = t + ms(3) * i;
            e.observe(ms(5), now);
            let _ = e.estimate(now + ms(1));
        }
        assert_eq!(e.ewma(t + ms(3) * 999), Some(ms(5)));
    }

    #[test]
    fn after_a_slow_period_fast_samples_converge_with_the_time_constant() {
        let tau = ms(100);
        let mut e = PeakEwma::new(tau);
        let t = Instant::now();
        e.observe(ms(25), t);
        // 1 ms answers every millisecond for three time constants.
        let mut now = t;
        for _ in 0..300 {
            now += ms(1);
            e.observe(ms(1), now);
        }
        // 1 + 24 exp(-3) ms; the discrete steps make it a hair different.
        let expect = 1e6 + 24e6 * (-3.0f64).exp();
        let got = e.ewma(now).unwrap().as_nanos() as f64;
        assert!((got - expect).abs() < 0.01 * expect, "{got} vs {expect}");
        // Three more: 1 + 24 exp(-6) ms, and never below the new level.
        for _ in 0..300 {
            now += ms(1);
            e.observe(ms(1), now);
        }
        let v = e.ewma(now).unwrap();
        assert!(v >= ms(1) && v < ms(1) + us(65), "{v:?}");
    }

    #[test]
    fn convergence_depends_on_time_not_on_how_many_samples_arrive() {
        let tau = ms(100);
        let t = Instant::now();
        let run = |every: Duration| {
            let mut e = PeakEwma::new(tau);
            e.observe(ms(25), t);
            let mut now = t;
            while now < t + ms(100) {
                now += every;
                e.observe(ms(1), now);
            }
            e.ewma(now).unwrap().as_nanos() as f64
        };
        let busy = run(us(100));
        let quiet = run(ms(10));
        assert!((busy - quiet).abs() < 0.01 * busy, "{busy} vs {quiet}");
    }

    #[test]
    fn a_waiting_connection_raises_the_estimate_once_it_is_older_than_the_average() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(1), t);
        let p = e.start_pending(t + ms(10));
        assert_eq!(e.oldest_pending(), Some(t + ms(10)));
        assert_eq!(e.pending(), 1);
        // Younger than the average: the average stands.
        let at = t + ms(10) + us(500);
        assert_eq!(e.estimate(at), e.ewma(at));
        // Older: its age.
        assert_eq!(e.estimate(t + ms(15)), Some(ms(5)));
        assert_eq!(e.estimate(t + ms(1010)), Some(ms(1000)));
        assert!(
            e.ewma(t + ms(1010)).unwrap() < ms(1),
            "the average itself is untouched"
        );
        assert_eq!(e.candidate_ns(t + ms(15)), 5_000_000);
        // Its answer arrives: a 5 ms sample, a peak, and nothing waits any more.
        assert_eq!(e.first_byte(p, t + ms(15)), Some(ms(5)));
        assert_eq!(e.pending(), 0);
        assert_eq!(e.oldest_pending(), None);
        assert_eq!(e.estimate(t + ms(15)), Some(ms(5)));
    }

    #[test]
    fn a_backend_that_never_answered_is_avoided_before_its_first_answer() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        let _p = e.start_pending(t);
        assert_eq!(e.ewma(t + ms(300)), None);
        assert_eq!(e.estimate(t + ms(300)), Some(ms(300)));
        assert_eq!(
            e.candidate_ns(t),
            1,
            "just started: measured, cheap, still probed"
        );
    }

    #[test]
    fn the_oldest_waiting_connection_counts_whatever_order_they_end_in() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        let a = e.start_pending(t);
        let b = e.start_pending(t + ms(1));
        let c = e.start_pending(t + ms(2));
        let d = e.start_pending(t + ms(3));
        assert_eq!(e.oldest_pending(), Some(t));
        assert_eq!(e.end_pending(a, t + ms(4)), Some(ms(4)));
        assert_eq!(e.oldest_pending(), Some(t + ms(1)));
        assert_eq!(e.end_pending(c, t + ms(4)), Some(ms(2)));
        assert_eq!(e.oldest_pending(), Some(t + ms(1)));
        assert_eq!(e.first_byte(d, t + ms(5)), Some(ms(2)));
        assert_eq!(e.oldest_pending(), Some(t + ms(1)));
        assert_eq!(e.pending(), 1);
        assert_eq!(e.first_byte(b, t + ms(6)), Some(ms(5)));
        assert_eq!((e.pending(), e.oldest_pending()), (0, None));
        // Only the two answers were samples: the peak of 5 ms.
        assert_eq!(e.ewma(t + ms(6)), Some(ms(5)));
    }

    #[test]
    fn ending_without_an_answer_records_no_sample() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        let p = e.start_pending(t);
        assert_eq!(e.end_pending(p, t + ms(40)), Some(ms(40)));
        assert_eq!(e.ewma(t + ms(40)), None);
        assert_eq!(e.estimate(t + ms(40)), None);
    }

    #[test]
    fn freed_slots_are_reused_so_memory_follows_the_most_waiting_at_once() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        let mut held = Vec::new();
        for i in 0..10_000u32 {
            let now = t + us(10) * i;
            held.push(e.start_pending(now));
            if held.len() == 3 {
                let p = held.remove(i as usize % 3);
                e.first_byte(p, now).unwrap();
            }
        }
        assert_eq!(e.pending(), 2);
        assert!(e.slots.len() <= 3, "{} slots", e.slots.len());
    }

    #[test]
    fn a_token_from_before_a_reset_is_ignored() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(ms(3), t);
        let old = e.start_pending(t);
        e.reset();
        assert_eq!((e.ewma(t), e.pending()), (None, 0));
        assert_eq!(e.tau(), TAU);
        let new = e.start_pending(t + ms(1));
        assert_eq!(e.first_byte(old, t + ms(9)), None, "stale: no sample");
        assert_eq!(e.ewma(t + ms(9)), None);
        assert_eq!(e.pending(), 1, "and the new connection still waits");
        assert_eq!(e.first_byte(new, t + ms(2)), Some(ms(1)));
    }

    #[test]
    fn time_that_goes_backwards_is_read_as_no_time_passing() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now() + Duration::from_secs(60);
        e.observe(ms(10), t);
        // A read before the latest sample: no decay, no panic.
        assert_eq!(e.ewma(t - ms(5)), Some(ms(10)));
        // A faster sample stamped earlier carries no weight and does not move the clock back.
        e.observe(ms(1), t - ms(5));
        assert_eq!(e.ewma(t), Some(ms(10)));
        assert_eq!(e.last_sample_at(), Some(t));
        // A slower one is still a peak.
        e.observe(ms(20), t - ms(5));
        assert_eq!(e.ewma(t), Some(ms(20)));
        // A connection read before it started has age 0; one answered "before" it started is
        // a 0 sample, blended in (with no weight, being no later than the latest sample).
        let p = e.start_pending(t + ms(1));
        assert_eq!(e.estimate(t), Some(ms(20)));
        assert_eq!(e.first_byte(p, t), Some(Duration::ZERO));
        assert_eq!(e.ewma(t), Some(ms(20)));
    }

    #[test]
    fn a_start_earlier_than_the_newest_waiting_one_keeps_the_list_in_order() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now() + Duration::from_secs(60);
        let a = e.start_pending(t);
        let b = e.start_pending(t - ms(5));
        assert_eq!(e.oldest_pending(), Some(t));
        assert_eq!(e.end_pending(a, t + ms(1)), Some(ms(1)));
        assert_eq!(
            e.oldest_pending(),
            Some(t),
            "b counts from the newest start before it"
        );
        assert_eq!(e.end_pending(b, t + ms(1)), Some(ms(1)));
    }

    #[test]
    fn a_zero_sample_is_a_measurement_not_an_absence() {
        let mut e = PeakEwma::new(TAU);
        let t = Instant::now();
        e.observe(Duration::ZERO, t);
        assert_eq!(e.ewma(t), Some(Duration::ZERO));
        assert_eq!(e.candidate_ns(t), 1);
    }

    #[test]
    fn a_zero_time_constant_makes_every_sample_replace_the_average_without_nan() {
        let mut e = PeakEwma::new(Duration::ZERO);
        assert_eq!(e.tau(), Duration::from_nanos(1));
        let t = Instant::now();
        e.observe(ms(10), t);
        assert_eq!(e.ewma(t), Some(ms(10)));
        e.observe(ms(2), t + ms(1));
        assert_eq!(e.ewma(t + ms(1)), Some(ms(2)));
        assert_eq!(e.ewma(t + ms(2)), Some(Duration::ZERO));
    }

    #[test]
    fn huge_samples_and_ages_saturate_instead_of_overflowing() {
        let mut e = PeakEwma::new(Duration::MAX);
        let t = Instant::now();
        e.observe(Duration::MAX, t);
        let v = e.ewma(t).unwrap();
        assert_eq!(v, Duration::from_nanos(u64::MAX));
        assert_eq!(e.candidate_ns(t), u64::MAX);
        e.observe(ms(1), t + Duration::from_secs(3600));
        assert!(e.ewma(t + Duration::from_secs(3600)).is_some());
    }

    #[test]
    fn the_default_uses_the_default_time_constant() {
        assert_eq!(PeakEwma::default().tau(), DEFAULT_TAU);
    }
}
