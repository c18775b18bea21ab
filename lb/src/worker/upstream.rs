//! The backend set as one core sees it: choose, connect, retry on another backend, eject.
//!
//! What each algorithm sees: `active` is the number of open connections summed over all cores
//! (read from [`counters::BackendCounters`], possibly a moment old for other cores); `ewma_ns` is
//! this core's own peak-EWMA of connect times (cores measure independently, so no cross-core
//! traffic); eligibility combines the published snapshot (health, drain) with this core's own
//! passive ejection; `weight` is the configured weight ramped up during slow start.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::logging::RateLimited;
use lb_common::net::is_local_resource_error;
use monoio::net::TcpStream;

use crate::balance::ewma::PeakEwma;
use crate::balance::{Algorithm, BackendSpec, Balancer, Candidate, HashConfig};
use crate::config::response_time::Metric;
use crate::config::{PoolConfig, RetryConfig};
use crate::shared::counters::BackendCounters;
use crate::shared::routing::service_counter;
use crate::shared::set::{self, Snapshot};
use crate::shared::Service;

use super::latency::Estimate;
use super::queue::{CoreQueue, Place};

use super::pool::BackendPool;

/// Why no backend connection could be made; the client side is not at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no backend is available (all down, draining or ejected after failures)")]
    NoneAvailable,
    #[error("backend connect failed after {tries} tries, last to {last_backend}: {last}")]
    AllFailed {
        tries: u32,
        last_backend: String,
        last: io::Error,
    },
    /// lb itself is out of a resource (descriptors, buffers, memory).
    #[error("lb cannot open a backend connection: {0}")]
    Local(io::Error),
    /// Every eligible backend was at its max_connections for the whole queue_timeout_ms.
    #[error("every backend was full for {0:?}")]
    QueueTimeout(Duration),
    /// Every eligible backend was full and the queue at its max_queue.
    #[error("every backend was full and the queue too")]
    QueueFull,
}

#[derive(Default)]
struct LocalBackend {
    eject_until: Cell<Option<Instant>>,
    /// Consecutive connect failures: each one doubles the ejection, up to the maximum.
    fails: Cell<u32>,
    /// Its response time as this core sees it (least_response_time), by the service's metric.
    latency: Rc<RefCell<PeakEwma>>,
    warning: RateLimited,
}

impl LocalBackend {
    /// A backend that became eligible again since the last snapshot (its checks brought it back
    /// UP, it was undrained, or lb restarted it as a replica) starts with a clean slate: without
    /// this, a core that saw it refuse would keep skipping it for the rest of its ejection (up to
    /// `eject_max_ms`) although it is known to be back.
    fn carry_over(
        &self,
        old_since: Option<Instant>,
        new_since: Option<Instant>,
        name: &str,
        core: usize,
    ) -> bool {
        if old_since == new_since {
            return false;
        }
        self.fails.set(0);
        // Measured afresh: a backend that was slow before it went away is probed again.
        self.latency.borrow_mut().reset();
        let cleared = self.eject_until.take().is_some();
        if cleared {
            tracing::info!(backend = ?name, core, "backend is back: passive ejection cleared");
        }
        cleared
    }
}

/// This core's balancer and local state for one snapshot generation.
struct View {
    snap: Arc<Snapshot>,
    /// What `balancer` was built for.
    algorithm: Algorithm,
    hash: HashConfig,
    /// The response-time decay the local estimates were made with.
    decay: Duration,
    balancer: Balancer,
    candidates: Vec<Candidate>,
    local: Vec<Rc<LocalBackend>>,
    pools: Vec<Rc<BackendPool>>,
}

/// One core's view of one service's backends. Lives in an `Rc` on that core. The service's
/// configuration is read where it is used (a reload may change it); the balancer is rebuilt
/// when the snapshot or the algorithm changes.
pub struct CoreUpstream {
    core: usize,
    service: Arc<Service>,
    view: RefCell<View>,
    seed: u64,
    pool: PoolConfig,
    /// Clients waiting on this core for a slot of a full backend.
    queue: Rc<CoreQueue>,
}

/// Marks one connection to a backend as open in the shared counts until dropped.
/// A backend connection, and how it was got.
pub struct Connected {
    pub stream: TcpStream,
    pub active: ActiveConn,
    pub address: std::net::SocketAddr,
    /// Time spent waiting in the queue for a slot.
    pub queued: Duration,
    /// For least_response_time by first or last byte: the backend's estimate on this core, for
    /// the connection's probe.
    pub latency: Option<Estimate>,
}

pub struct ActiveConn {
    counters: Arc<BackendCounters>,
    backend: String,
    core: usize,
    bytes: Cell<(u64, u64)>,
    /// It holds one of the backend's max_connections slots: given back (and this core's queue
    /// told) when the connection ends.
    claim: Option<Rc<CoreQueue>>,
    /// Connect attempts it took, and the time from the first to the connection.
    pub attempts: u32,
    pub connect_time: Duration,
}

impl ActiveConn {
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Its backend's identity among this process's backends (the address of its counters).
    pub fn backend_id(&self) -> usize {
        Arc::as_ptr(&self.counters) as usize
    }

    /// Bytes relayed (to the backend, to the client), counted when the connection ends.
    pub fn set_bytes(&self, to_backend: u64, to_client: u64) {
        self.bytes.set((to_backend, to_client));
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        let (up, down) = self.bytes.get();
        self.counters.closed(self.core, up, down);
        if let Some(q) = self.claim.take() {
            self.counters.release();
            q.notify();
        }
    }
}

impl CoreUpstream {
    pub fn new(core: usize, service: Arc<Service>, pool: PoolConfig) -> CoreUpstream {
        // Per-core seed: random and power_of_two must not move in lockstep on every core.
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ (core as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let snap = service.set.load();
        let cfg = service.config.load();
        let up = CoreUpstream {
            core,
            view: RefCell::new(View {
                algorithm: cfg.algorithm,
                hash: cfg.hash,
                decay: cfg.response_time.decay,
                balancer: Balancer::new(cfg.algorithm, &[], &cfg.hash, seed),
                candidates: Vec::new(),
                local: Vec::new(),
                pools: Vec::new(),
                snap: snap.clone(),
            }),
            service: service.clone(),
            seed,
            pool,
            queue: Rc::new(CoreQueue::default()),
        };
        up.rebuild(snap);
        up
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Picks up a newer snapshot or algorithm, if there is one. Called between connections.
    pub fn refresh(&self) {
        let (generation, algorithm, hash) = {
            let v = self.view.borrow();
            (v.snap.generation, v.algorithm, v.hash)
        };
        let cfg = self.service.config.load();
        if self.service.set.generation() != generation
            || cfg.algorithm != algorithm
            || cfg.hash != hash
            || cfg.response_time.decay != self.view.borrow().decay
        {
            self.rebuild(self.service.set.load());
        }
    }

    pub fn generation(&self) -> u64 {
        self.view.borrow().snap.generation
    }

    fn rebuild(&self, snap: Arc<Snapshot>) {
        let cfg = self.service.config.load();
        let decay = cfg.response_time.decay;
        let mut view = self.view.borrow_mut();
        let specs: Vec<BackendSpec> = snap
            .backends
            .iter()
            .map(|b| BackendSpec::new(b.name.clone(), b.weight))
            .collect();
        // Keep each surviving backend's local state (ejection, EWMA) and pool, found by name.
        let old_index = |name: &str| view.snap.find(name);
        let local: Vec<Rc<LocalBackend>> = snap
            .backends
            .iter()
            .map(|b| {
                let kept = old_index(&b.name).and_then(|i| {
                    let local = view.local.get(i).cloned()?;
                    if local.carry_over(view.snap.backends[i].since, b.since, &b.name, self.core) {
                        b.counters.unejected(self.core);
                    }
                    Some(local)
                });
                if let Some(l) = &kept {
                    // A reload changed the decay: measured afresh with the new one.
                    if l.latency.borrow().tau() != decay {
                        *l.latency.borrow_mut() = PeakEwma::new(decay);
                    }
                }
                kept.unwrap_or_else(|| {
                    // New to this core: it may come with an ejection (a binary upgrade carries
                    // the old process's).
                    let fresh = LocalBackend {
                        latency: Rc::new(RefCell::new(PeakEwma::new(decay))),
                        ..Default::default()
                    };
                    if let Some(until) = b.counters.ejected_until(self.core, Instant::now()) {
                        fresh.eject_until.set(Some(until));
                        fresh.fails.set(1);
                    }
                    Rc::new(fresh)
                })
            })
            .collect();
        let pools: Vec<Rc<BackendPool>> = snap
            .backends
            .iter()
            .map(|b| match old_index(&b.name) {
                Some(i) if view.snap.backends[i].address == b.address && i < view.pools.len() => {
                    view.pools[i].clone()
                }
                _ => BackendPool::new(
                    b.address,
                    self.pool.idle_per_backend,
                    self.pool.max_age,
                    cfg.timeouts.connect,
                ),
            })
            .collect();
        if view.snap.generation != snap.generation {
            tracing::debug!(
                core = self.core,
                generation = snap.generation,
                backends = specs.len(),
                "core picked up a new backend set"
            );
        }
        // The table was built by the control plane with the snapshot: this is cheap.
        view.balancer =
            Balancer::with_table(cfg.algorithm, &specs, &snap.table, &cfg.hash, self.seed);
        view.algorithm = cfg.algorithm;
        view.hash = cfg.hash;
        view.decay = decay;
        view.candidates = Candidate::all_eligible(&specs);
        view.local = local;
        view.pools = pools;
        view.snap = snap;
    }

    /// Fills every backend's idle pool (no-op when the pool is off). Call inside the runtime.
    pub fn warm_pools(&self) {
        for p in &self.view.borrow().pools {
            p.refill();
        }
    }

    /// Chooses a backend, excluding those already tried. Borrows end before returning.
    /// The backend to try, and whether some backend was left out only for being at its
    /// max_connections (then the caller queues rather than gives up).
    fn choose(
        &self,
        key: Option<u64>,
        tried: &[usize],
        now: Instant,
        slow_start: Duration,
    ) -> (Option<usize>, bool) {
        let mut guard = self.view.borrow_mut();
        let view = &mut *guard;
        let mut any_full = false;
        for (i, c) in view.candidates.iter_mut().enumerate() {
            let b = &view.snap.backends[i];
            let local = &view.local[i];
            let up = b.eligible() && local.eject_until.get().is_none_or(|t| now >= t);
            let full = b
                .max_connections
                .is_some_and(|m| b.counters.claimed() >= u64::from(m));
            any_full |= up && full && !tried.contains(&i);
            c.eligible = up && !full;
            // A limited backend's load includes its connects in progress (its claimed slots).
            c.active = b.counters.active().max(b.counters.claimed());
            c.ewma_ns = local.latency.borrow().candidate_ns(now);
            c.weight = match b.since {
                Some(since) => {
                    ramped_weight(b.weight, now.saturating_duration_since(since), slow_start)
                }
                None => b.weight,
            };
        }
        (
            view.balancer.pick_excluding(&view.candidates, key, tried),
            any_full,
        )
    }

    /// Connects to a chosen backend, retrying refused or timed-out connects on other backends
    /// within the configured tries and time budget. Nothing has been sent upstream yet, so a retry
    /// is always safe here.
    pub async fn connect(&self, key: Option<u64>) -> Result<Connected, ConnectError> {
        self.refresh();
        let cfg = self.service.config.load_full();
        let (retry, connect_timeout) = (cfg.retry, cfg.timeouts.connect);
        let start = Instant::now();
        // Every backend tried for this client, so that no retry picks one twice; filled only
        // once a try has failed, so the usual connection allocates nothing here.
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<(String, io::Error)> = None;
        let mut n_tried = 0u32;
        let limits = &cfg.limits;
        let mut place: Option<Place> = None;
        // First come, first served: while clients wait on this core, a newcomer queues behind
        // them instead of taking the slot that frees first.
        if !self.queue.is_empty() {
            place = Some(self.join_queue(limits.max_queue)?);
            if !place
                .as_ref()
                .expect("joined")
                .turn(start + limits.queue_timeout)
                .await
            {
                self.leave_queue(&mut place, start, false);
                return Err(ConnectError::QueueTimeout(limits.queue_timeout));
            }
        }
        while n_tried < retry.tries {
            let now = Instant::now();
            let (picked, any_full) = self.choose(key, &tried, now, cfg.health.slow_start);
            let Some(idx) = picked else {
                if !any_full {
                    break;
                }
                // Every eligible backend is at its max_connections: wait in this core's queue.
                if place.is_none() {
                    place = Some(self.join_queue(limits.max_queue)?);
                }
                let waited = place
                    .as_ref()
                    .expect("joined")
                    .turn(start + limits.queue_timeout)
                    .await;
                if !waited {
                    self.leave_queue(&mut place, start, false);
                    return Err(ConnectError::QueueTimeout(limits.queue_timeout));
                }
                continue;
            };
            // Clone what the await needs so that no borrow is held across it.
            let (backend, local, pool) = {
                let view = self.view.borrow();
                (
                    view.snap.backends[idx].clone(),
                    view.local[idx].clone(),
                    view.pools[idx].clone(),
                )
            };
            // A limited backend: take one of its slots, or look again (another core took the
            // last one since the choice).
            let claim = match backend.max_connections {
                Some(m) if !backend.counters.try_claim(m) => continue,
                Some(_) => Some(self.queue.clone()),
                None => None,
            };
            n_tried += 1;
            if let Some(stream) = pool.take() {
                pool.refill();
                backend.counters.opened(self.core, None);
                let queued = self.leave_queue(&mut place, start, true);
                let active = self.active(&backend, claim, n_tried, start.elapsed());
                return Ok(self.connected(stream, active, queued, &cfg, &local, &backend));
            }
            pool.refill();
            let remaining = retry.budget.saturating_sub(start.elapsed());
            let limit = connect_timeout.min(remaining);
            match connect_one(backend.address, limit).await {
                Ok(stream) => {
                    let took = now.elapsed();
                    self.record_success(&local, &backend, took);
                    backend.counters.opened(self.core, Some(took));
                    let queued = self.leave_queue(&mut place, start, true);
                    let active = self.active(&backend, claim, n_tried, start.elapsed());
                    return Ok(self.connected(stream, active, queued, &cfg, &local, &backend));
                }
                // Out of descriptors or memory: lb's own shortage, not the backend's. Nothing
                // is ejected or counted against it, and another backend would fare no better.
                Err(e) if is_local_resource_error(&e) => {
                    if claim.is_some() {
                        backend.counters.release();
                    }
                    self.leave_queue(&mut place, start, true);
                    return Err(ConnectError::Local(e));
                }
                Err(e) => {
                    if claim.is_some() {
                        backend.counters.release();
                        self.queue.notify();
                    }
                    backend.counters.connect_failed(self.core);
                    self.record_failure(&local, &backend, &e, &retry);
                    last = Some((backend.name.clone(), e));
                    if tried.capacity() == 0 {
                        tried.reserve_exact(
                            (retry.tries as usize).min(self.view.borrow().local.len()),
                        );
                    }
                    tried.push(idx);
                }
            }
            if start.elapsed() >= retry.budget {
                break;
            }
        }
        // Out of the queue with a slot, or with nothing left to wait for: not a timeout.
        self.leave_queue(&mut place, start, true);
        match last {
            None => Err(ConnectError::NoneAvailable),
            Some((name, e)) => Err(ConnectError::AllFailed {
                tries: n_tried,
                last_backend: name,
                last: e,
            }),
        }
    }

    fn active(
        &self,
        backend: &set::Backend,
        claim: Option<Rc<CoreQueue>>,
        attempts: u32,
        connect_time: Duration,
    ) -> ActiveConn {
        ActiveConn {
            counters: backend.counters.clone(),
            backend: backend.name.clone(),
            core: self.core,
            bytes: Cell::new((0, 0)),
            claim,
            attempts,
            connect_time,
        }
    }

    /// Joins this core's queue, counted; refused when `max` wait already.
    fn join_queue(&self, max: usize) -> Result<Place, ConnectError> {
        let counters = &self.service.counters;
        match self.queue.join(max) {
            Some(p) => {
                counters.add(self.core, service_counter::QUEUED, 1);
                Ok(p)
            }
            None => {
                counters.add(self.core, service_counter::QUEUE_FULL, 1);
                Err(ConnectError::QueueFull)
            }
        }
    }

    /// Leaves this core's queue (if the client waited in it), counting how it went.
    fn leave_queue(&self, place: &mut Option<Place>, since: Instant, served: bool) -> Duration {
        if place.take().is_none() {
            return Duration::ZERO;
        }
        let waited = since.elapsed();
        {
            let c = &self.service.counters;
            c.sub(self.core, service_counter::QUEUED, 1);
            c.add(
                self.core,
                if served {
                    service_counter::QUEUE_SERVED
                } else {
                    service_counter::QUEUE_TIMEOUTS
                },
                1,
            );
            c.add(
                self.core,
                service_counter::QUEUE_WAIT_US,
                waited.as_micros() as u64,
            );
        }
        waited
    }

    /// Clients waiting on this core now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn connected(
        &self,
        stream: TcpStream,
        active: ActiveConn,
        queued: Duration,
        cfg: &crate::config::ServiceConfig,
        local: &LocalBackend,
        backend: &set::Backend,
    ) -> Connected {
        Connected {
            stream,
            active,
            address: backend.address,
            queued,
            latency: self.probe_for(cfg, local, backend),
        }
    }

    fn estimate(&self, local: &LocalBackend, backend: &set::Backend) -> Estimate {
        Estimate {
            ewma: local.latency.clone(),
            counters: backend.counters.clone(),
            core: self.core,
        }
    }

    /// The estimate a connection's probe feeds: only least_response_time by first or last
    /// byte measures connections (the other algorithms pay nothing for it).
    fn probe_for(
        &self,
        cfg: &crate::config::ServiceConfig,
        local: &LocalBackend,
        backend: &set::Backend,
    ) -> Option<Estimate> {
        (cfg.algorithm == Algorithm::LeastResponseTime
            && cfg.response_time.metric != Metric::Connect)
            .then(|| self.estimate(local, backend))
    }

    fn record_success(&self, local: &LocalBackend, backend: &set::Backend, took: Duration) {
        let cfg = self.service.config.load();
        if cfg.algorithm == Algorithm::LeastResponseTime
            && cfg.response_time.metric == Metric::Connect
        {
            self.estimate(local, backend).observe(took, Instant::now());
        }
        local.fails.set(0);
        if local.eject_until.take().is_some() {
            backend.counters.unejected(self.core);
            tracing::info!(backend = ?backend.name, core = self.core, "backend accepts connections again");
        }
    }

    fn record_failure(
        &self,
        local: &LocalBackend,
        backend: &set::Backend,
        e: &io::Error,
        retry: &RetryConfig,
    ) {
        let now = Instant::now();
        let name = &backend.name;
        let fails = local.fails.get().saturating_add(1);
        local.fails.set(fails);
        let eject = eject_for(retry.eject, retry.eject_max, fails);
        local.eject_until.set(Some(now + eject));
        backend.counters.ejected(self.core, now + eject);
        local.warning.warn(|suppressed| {
            tracing::warn!(backend = ?name, core = self.core, error = %e, consecutive = fails, suppressed,
                eject_ms = eject.as_millis() as u64, "backend connect failed; skipping it for a while")
        });
    }
}

/// Passive ejection time after `fails` consecutive failures: the base, doubled per further
/// failure, capped.
pub fn eject_for(base: Duration, max: Duration, fails: u32) -> Duration {
    let doublings = fails.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << doublings).min(max.max(base))
}

/// Slow start: a backend that just became eligible gets a share growing linearly from 1/10 of
/// its weight to all of it over `window` (at least 1), instead of a flood.
pub fn ramped_weight(weight: u32, age: Duration, window: Duration) -> u32 {
    if window.is_zero() || age >= window {
        return weight;
    }
    let frac = 0.1 + 0.9 * age.as_secs_f64() / window.as_secs_f64();
    ((weight as f64 * frac).round() as u32).max(1)
}

async fn connect_one(addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    match monoio::time::timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => {
            s.set_nodelay(true)?;
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {} ms", limit.as_millis()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_doubles_per_consecutive_failure_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(eject_for(base, max, 1), Duration::from_secs(1));
        assert_eq!(eject_for(base, max, 2), Duration::from_secs(2));
        assert_eq!(eject_for(base, max, 4), Duration::from_secs(8));
        assert_eq!(eject_for(base, max, 50), max);
    }

    #[test]
    fn a_backend_that_comes_back_is_no_longer_ejected() {
        let local = LocalBackend::default();
        let t0 = Instant::now();
        local.fails.set(3);
        local.eject_until.set(Some(t0 + Duration::from_secs(8)));
        // The same eligibility period: the ejection stands.
        local.carry_over(Some(t0), Some(t0), "s1", 0);
        assert!(local.eject_until.get().is_some());
        assert_eq!(local.fails.get(), 3);
        // Back up (or restarted) since: cleared, and the next failure starts from the base again.
        local.carry_over(Some(t0), Some(t0 + Duration::from_millis(1)), "s1", 0);
        assert_eq!(local.eject_until.get(), None);
        assert_eq!(local.fails.get(), 0);
        local.fails.set(2);
        local.eject_until.set(Some(t0 + Duration::from_secs(4)));
        local.carry_over(None, Some(t0), "s1", 0);
        assert_eq!(local.eject_until.get(), None);
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_the_full_weight() {
        let w = Duration::from_secs(10);
        assert_eq!(ramped_weight(100, Duration::ZERO, w), 10);
        assert_eq!(ramped_weight(100, Duration::from_secs(5), w), 55);
        assert_eq!(ramped_weight(100, Duration::from_secs(10), w), 100);
        assert_eq!(ramped_weight(1, Duration::ZERO, w), 1, "never below 1");
        assert_eq!(
            ramped_weight(7, Duration::ZERO, Duration::ZERO),
            7,
            "off when the window is 0"
        );
    }
}
