//! Per-backend counters that every core writes and the control plane reads, without a lock.
//!
//! Each core writes only its own slot (one writer, so a relaxed load+store is enough and no
//! read-modify-write is needed) and readers sum the slots. Slots are padded to a cache line so
//! that two cores never bounce the same line. A backend keeps its counters across config
//! generations: they live in an `Arc` that each snapshot entry points to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds on a process-wide monotonic clock (from its first use), so that a moment can live
/// in an atomic; 0 is never a real moment (it means "none").
pub fn clock_ms(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    t.saturating_duration_since(epoch).as_millis() as u64
}

/// Connect-time histogram buckets: bucket i counts connects that took < 2^i microseconds
/// (the last bucket takes everything slower).
pub const CONNECT_BUCKETS: usize = 24;

#[repr(align(64))]
#[derive(Default)]
struct Slot {
    active: AtomicU64,
    total: AtomicU64,
    connect_failures: AtomicU64,
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    connect_us: [AtomicU64; CONNECT_BUCKETS],
    connect_us_sum: AtomicU64,
    /// This core skips the backend until then ([`clock_ms`]); 0: not ejected.
    ejected_until_ms: AtomicU64,
    ejections: AtomicU64,
    /// This core's response-time estimate of the backend (ns; 0: none yet), as of its last
    /// sample.
    response_ns: AtomicU64,
}

/// Counters of one backend, `cores` slots.
pub struct BackendCounters {
    slots: Box<[Slot]>,
    /// Connections holding one of the backend's `max_connections` slots, over all cores: one
    /// shared atomic (contended only for limited backends), so that the limit is exact.
    claimed: AtomicU64,
}

fn bump(a: &AtomicU64, by: u64) {
    a.store(
        a.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

fn sum(slots: &[Slot], f: impl Fn(&Slot) -> &AtomicU64) -> u64 {
    slots.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
}

/// Everything the stats and metrics endpoints show about one backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterTotals {
    pub active: u64,
    pub total: u64,
    pub connect_failures: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// Connects per bucket (see [`CONNECT_BUCKETS`]).
    pub connect_buckets: Vec<u64>,
    pub connect_seconds_sum: f64,
    /// The cores that passively eject the backend right now.
    pub ejected_cores: Vec<usize>,
    /// Passive ejections so far, over all cores.
    pub ejections: u64,
}

impl CounterTotals {
    /// Upper bound, in milliseconds, of the bucket holding quantile `q` of connect times.
    pub fn connect_quantile_ms(&self, q: f64) -> Option<f64> {
        let n: u64 = self.connect_buckets.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.connect_buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some((1u64 << i) as f64 / 1000.0);
            }
        }
        None
    }
}

impl BackendCounters {
    pub fn new(cores: usize) -> BackendCounters {
        BackendCounters {
            slots: (0..cores.max(1)).map(|_| Slot::default()).collect(),
            claimed: AtomicU64::new(0),
        }
    }

    /// Takes one of `max` slots; false when all are taken.
    pub fn try_claim(&self, max: u32) -> bool {
        self.claimed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < u64::from(max)).then_some(c + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn release(&self) {
        let _ = self
            .claimed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    }

    /// Slots taken now.
    pub fn claimed(&self) -> u64 {
        self.claimed.load(Ordering::Acquire)
    }

    /// Core `core` only: a connection to this backend opened after a connect of `took`.
    pub fn opened(&self, core: usize, took: Option<Duration>) {
        let s = &self.slots[core];
        bump(&s.active, 1);
        bump(&s.total, 1);
        if let Some(t) = took {
            let us = t.as_micros() as u64;
            let bucket = (64 - us.leading_zeros() as usize).min(CONNECT_BUCKETS - 1);
            bump(&s.connect_us[bucket], 1);
            bump(&s.connect_us_sum, us);
        }
    }

    /// Core `core` only: a connection ended after moving these bytes.
    pub fn closed(&self, core: usize, to_backend: u64, to_client: u64) {
        let s = &self.slots[core];
        s.active.store(
            s.active.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
        bump(&s.bytes_to_backend, to_backend);
        bump(&s.bytes_to_client, to_client);
    }

    /// Core `core` only: a connect to this backend failed.
    pub fn connect_failed(&self, core: usize) {
        bump(&self.slots[core].connect_failures, 1);
    }

    /// Core `core` only: it skips this backend until `until` (passive ejection).
    pub fn ejected(&self, core: usize, until: Instant) {
        let s = &self.slots[core];
        s.ejected_until_ms.store(clock_ms(until), Ordering::Relaxed);
        bump(&s.ejections, 1);
    }

    /// Core `core` only: it no longer skips this backend.
    pub fn unejected(&self, core: usize) {
        self.slots[core]
            .ejected_until_ms
            .store(0, Ordering::Relaxed);
    }

    /// Core `core`: until when it skips this backend, if it does at `now` (an ejection a binary
    /// upgrade carried over starts a core's view with it).
    pub fn ejected_until(&self, core: usize, now: Instant) -> Option<Instant> {
        let until = self.slots[core].ejected_until_ms.load(Ordering::Relaxed);
        let now_ms = clock_ms(now);
        (until > now_ms).then(|| now + Duration::from_millis(until - now_ms))
    }

    /// The longest ejection left on any core at `now`.
    pub fn ejected_left(&self, now: Instant) -> Option<Duration> {
        let now_ms = clock_ms(now);
        self.slots
            .iter()
            .map(|s| s.ejected_until_ms.load(Ordering::Relaxed))
            .filter(|&u| u > now_ms)
            .max()
            .map(|u| Duration::from_millis(u - now_ms))
    }

    /// The cores that skip this backend at `now`.
    pub fn ejected_cores(&self, now: Instant) -> Vec<usize> {
        let now = clock_ms(now);
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.ejected_until_ms.load(Ordering::Relaxed) > now)
            .map(|(i, _)| i)
            .collect()
    }

    pub fn cores(&self) -> usize {
        self.slots.len()
    }

    /// Core `core` only: its response-time estimate of this backend now.
    pub fn set_response_time(&self, core: usize, estimate: Duration) {
        self.slots[core].response_ns.store(
            u64::try_from(estimate.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            Ordering::Relaxed,
        );
    }

    /// Each core's response-time estimate (None: that core has no sample yet).
    pub fn response_times(&self) -> Vec<Option<Duration>> {
        self.slots
            .iter()
            .map(|s| match s.response_ns.load(Ordering::Relaxed) {
                0 => None,
                ns => Some(Duration::from_nanos(ns)),
            })
            .collect()
    }

    /// Open connections over all cores; another core's count may be a moment old.
    pub fn active(&self) -> u64 {
        sum(&self.slots, |s| &s.active)
    }

    pub fn totals(&self) -> CounterTotals {
        CounterTotals {
            active: self.active(),
            total: sum(&self.slots, |s| &s.total),
            connect_failures: sum(&self.slots, |s| &s.connect_failures),
            bytes_to_backend: sum(&self.slots, |s| &s.bytes_to_backend),
            bytes_to_client: sum(&self.slots, |s| &s.bytes_to_client),
            connect_buckets: (0..CONNECT_BUCKETS)
                .map(|i| sum(&self.slots, |s| &s.connect_us[i]))
                .collect(),
            connect_seconds_sum: sum(&self.slots, |s| &s.connect_us_sum) as f64 / 1e6,
            ejected_cores: self.ejected_cores(Instant::now()),
            ejections: sum(&self.slots, |s| &s.ejections),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_all_cores_add_up() {
        let c = BackendCounters::new(3);
        c.opened(0, None);
        c.opened(2, Some(Duration::from_micros(300)));
        c.opened(2, Some(Duration::from_micros(5)));
        c.closed(2, 10, 20);
        c.connect_failed(1);
        let t = c.totals();
        assert_eq!((t.active, t.total, t.connect_failures), (2, 3, 1));
        assert_eq!((t.bytes_to_backend, t.bytes_to_client), (10, 20));
        assert_eq!(t.connect_buckets.iter().sum::<u64>(), 2);
    }

    #[test]
    fn an_ejection_shows_on_its_core_until_it_ends_or_is_cleared() {
        let c = BackendCounters::new(3);
        let t0 = Instant::now();
        c.ejected(1, t0 + Duration::from_secs(2));
        c.ejected(2, t0 + Duration::from_secs(5));
        assert_eq!(c.ejected_cores(t0), [1, 2]);
        assert_eq!(c.ejected_cores(t0 + Duration::from_secs(3)), [2]);
        c.unejected(2);
        assert!(c.ejected_cores(t0).len() == 1);
        assert_eq!(c.totals().ejections, 2);
    }

    #[test]
    fn slots_are_claimed_up_to_the_limit_and_given_back() {
        let c = BackendCounters::new(2);
        assert!(c.try_claim(2));
        assert!(c.try_claim(2));
        assert!(!c.try_claim(2));
        c.release();
        assert!(c.try_claim(2));
        c.release();
        c.release();
        c.release();
        assert_eq!(c.claimed(), 0, "never below zero");
    }

    #[test]
    fn closing_more_than_opened_does_not_wrap() {
        let c = BackendCounters::new(1);
        c.closed(0, 0, 0);
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn connect_quantiles_come_from_power_of_two_buckets() {
        let c = BackendCounters::new(1);
        for _ in 0..90 {
            c.opened(0, Some(Duration::from_micros(100))); // bucket < 128 us
        }
        for _ in 0..10 {
            c.opened(0, Some(Duration::from_millis(3))); // bucket < 4096 us
        }
        let t = c.totals();
        assert_eq!(t.connect_quantile_ms(0.5), Some(0.128));
        assert_eq!(t.connect_quantile_ms(0.99), Some(4.096));
        assert_eq!(
            BackendCounters::new(1).totals().connect_quantile_ms(0.5),
            None
        );
    }
}

#[repr(align(64))]
#[derive(Default)]
struct CoreSlot {
    accepted: AtomicU64,
    active: AtomicU64,
    no_backend: AtomicU64,
    peek_refused: AtomicU64,
}

/// Per-core connection counters (one writer each, as above).
pub struct CoreCounters {
    slots: Box<[CoreSlot]>,
}

/// One core's counters as read by the control plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreTotals {
    pub accepted: u64,
    pub active: u64,
    pub no_backend: u64,
    /// Clients refused because the core's peek memory was in use.
    pub peek_refused: u64,
}

impl CoreCounters {
    pub fn new(cores: usize) -> CoreCounters {
        CoreCounters {
            slots: (0..cores.max(1)).map(|_| CoreSlot::default()).collect(),
        }
    }

    pub fn accepted(&self, core: usize) {
        let s = &self.slots[core];
        bump(&s.accepted, 1);
        bump(&s.active, 1);
    }

    pub fn finished(&self, core: usize) {
        let s = &self.slots[core];
        s.active.store(
            s.active.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }

    pub fn no_backend(&self, core: usize) {
        bump(&self.slots[core].no_backend, 1);
    }

    pub fn peek_refused(&self, core: usize) {
        bump(&self.slots[core].peek_refused, 1);
    }

    pub fn get(&self, core: usize) -> CoreTotals {
        let s = &self.slots[core];
        CoreTotals {
            accepted: s.accepted.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
            no_backend: s.no_backend.load(Ordering::Relaxed),
            peek_refused: s.peek_refused.load(Ordering::Relaxed),
        }
    }

    pub fn cores(&self) -> usize {
        self.slots.len()
    }

    /// Open client connections over all cores (another core's count may be a moment old).
    pub fn active_total(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.active.load(Ordering::Relaxed))
            .sum()
    }
}

/// `N` counters per core, each core writing only its own padded slot (one writer per slot, as
/// above) and readers summing them.
pub struct PerCore<const N: usize> {
    slots: Box<[PaddedSlot<N>]>,
}

#[repr(align(64))]
struct PaddedSlot<const N: usize>([AtomicU64; N]);

impl<const N: usize> PerCore<N> {
    pub fn new(cores: usize) -> PerCore<N> {
        PerCore {
            slots: (0..cores.max(1))
                .map(|_| PaddedSlot(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Core `core` only.
    pub fn add(&self, core: usize, counter: usize, by: u64) {
        bump(&self.slots[core].0[counter], by);
    }

    /// Core `core` only; never below zero.
    pub fn sub(&self, core: usize, counter: usize, by: u64) {
        let a = &self.slots[core].0[counter];
        a.store(
            a.load(Ordering::Relaxed).saturating_sub(by),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self, core: usize, counter: usize) -> u64 {
        self.slots[core].0[counter].load(Ordering::Relaxed)
    }

    pub fn sum(&self, counter: usize) -> u64 {
        self.slots
            .iter()
            .map(|s| s.0[counter].load(Ordering::Relaxed))
            .sum()
    }

    pub fn cores(&self) -> usize {
        self.slots.len()
    }
}
