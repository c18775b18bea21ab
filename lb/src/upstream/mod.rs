//! The backend set as one core sees it: choose, connect, retry on another backend, eject.
//!
//! What each algorithm sees: `active` is the number of open connections summed over all cores
//! (read from [`load::LoadBoard`], possibly a moment old for other cores); `ewma_ns` is this core's
//! own peak-EWMA of connect times (cores measure independently, so no cross-core traffic);
//! eligibility is this core's passive ejection state.

pub mod load;
pub mod pool;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balance::{BackendSpec, Balancer, Candidate};
use crate::config::{BackendConfig, Config};
use load::LoadBoard;
use pool::BackendPool;
use std::rc::Rc;

/// Immutable description of the backends plus their shared counters.
pub struct Upstreams {
    pub backends: Vec<BackendConfig>,
    pub board: LoadBoard,
}

impl Upstreams {
    pub fn new(backends: Vec<BackendConfig>, cores: usize) -> Upstreams {
        let board = LoadBoard::new(backends.len(), cores);
        Upstreams { backends, board }
    }

    pub fn specs(&self) -> Vec<BackendSpec> {
        self.backends
            .iter()
            .map(|b| BackendSpec::new(b.name.clone(), b.weight))
            .collect()
    }
}

/// Why no backend connection could be made; the client side is not at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no backend is available (all ejected after failures)")]
    NoneAvailable,
    #[error("backend connect failed after {tries} tries, last to {last_backend}: {last}")]
    AllFailed {
        tries: u32,
        last_backend: String,
        last: io::Error,
    },
}

/// Decay time constant of the connect-time EWMA: old samples fade over about ten seconds.
const EWMA_TAU: Duration = Duration::from_secs(10);
/// At most one failure warning per backend per core per interval; the rest are counted.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct LocalBackend {
    eject_until: Cell<Option<Instant>>,
    ewma_ns: Cell<u64>,
    ewma_at: Cell<Option<Instant>>,
    last_warn: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

/// One core's view: its balancer and its local backend state. Lives in an `Rc` on that core.
pub struct CoreUpstream {
    core: usize,
    upstreams: Arc<Upstreams>,
    balancer: RefCell<Balancer>,
    candidates: RefCell<Vec<Candidate>>,
    local: Vec<LocalBackend>,
    pools: Vec<Rc<BackendPool>>,
    connect_timeout: Duration,
    tries: u32,
    budget: Duration,
    eject: Duration,
}

/// Marks one connection to a backend as open in the shared counts until dropped.
pub struct ActiveConn {
    upstreams: Arc<Upstreams>,
    backend: usize,
    core: usize,
}

impl ActiveConn {
    pub fn backend(&self) -> usize {
        self.backend
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.upstreams.board.closed(self.backend, self.core);
    }
}

impl CoreUpstream {
    pub fn new(core: usize, upstreams: Arc<Upstreams>, config: &Config) -> CoreUpstream {
        let specs = upstreams.specs();
        // Per-core seed: random and power_of_two must not move in lockstep on every core.
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ (core as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let balancer = Balancer::new(config.algorithm, &specs, &config.hash, seed);
        let n = specs.len();
        CoreUpstream {
            core,
            balancer: RefCell::new(balancer),
            candidates: RefCell::new(Candidate::all_eligible(&specs)),
            local: (0..n).map(|_| LocalBackend::default()).collect(),
            pools: upstreams
                .backends
                .iter()
                .map(|b| {
                    BackendPool::new(
                        b.address,
                        config.pool_idle_per_backend,
                        config.pool_max_age,
                        config.connect_timeout,
                    )
                })
                .collect(),
            upstreams,
            connect_timeout: config.connect_timeout,
            tries: config.retry_tries,
            budget: config.retry_budget,
            eject: config.eject,
        }
    }

    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// Fills every backend's idle pool (no-op when the pool is off). Call inside the runtime.
    pub fn warm_pools(&self) {
        for p in &self.pools {
            p.refill();
        }
    }

    /// Chooses a backend, excluding those already tried. Borrows end before returning.
    fn choose(&self, key: Option<u64>, tried: &[usize], now: Instant) -> Option<usize> {
        let mut cands = self.candidates.borrow_mut();
        for (i, c) in cands.iter_mut().enumerate() {
            let local = &self.local[i];
            c.eligible = local.eject_until.get().is_none_or(|t| now >= t);
            c.active = self.upstreams.board.active(i);
            c.ewma_ns = local.ewma_ns.get();
            c.weight = self.upstreams.backends[i].weight;
        }
        self.balancer
            .borrow_mut()
            .pick_excluding(&cands, key, tried)
    }

    /// Connects to a chosen backend, retrying refused or timed-out connects on other backends
    /// within the configured tries and time budget. Nothing has been sent upstream yet, so a retry
    /// is always safe here.
    pub async fn connect(&self, key: Option<u64>) -> Result<(TcpStream, ActiveConn), ConnectError> {
        let start = Instant::now();
        let mut tried: [usize; 16] = [usize::MAX; 16];
        let mut n_tried = 0usize;
        let mut last: Option<(usize, io::Error)> = None;
        while (n_tried as u32) < self.tries {
            let now = Instant::now();
            let Some(idx) = self.choose(key, &tried[..n_tried.min(16)], now) else {
                break;
            };
            if n_tried < tried.len() {
                tried[n_tried] = idx;
            }
            n_tried += 1;
            let pool = &self.pools[idx];
            if let Some(stream) = pool.take() {
                pool.refill();
                self.upstreams.board.opened(idx, self.core);
                return Ok((stream, self.active(idx)));
            }
            pool.refill();
            let addr = self.upstreams.backends[idx].address;
            let remaining = self.budget.saturating_sub(start.elapsed());
            let limit = self.connect_timeout.min(remaining);
            match connect_one(addr, limit).await {
                Ok(stream) => {
                    self.record_success(idx, now);
                    self.upstreams.board.opened(idx, self.core);
                    return Ok((stream, self.active(idx)));
                }
                Err(e) => {
                    self.record_failure(idx, &e);
                    last = Some((idx, e));
                }
            }
            if start.elapsed() >= self.budget {
                break;
            }
        }
        match last {
            None => Err(ConnectError::NoneAvailable),
            Some((idx, e)) => Err(ConnectError::AllFailed {
                tries: n_tried as u32,
                last_backend: self.upstreams.backends[idx].name.clone(),
                last: e,
            }),
        }
    }

    fn active(&self, backend: usize) -> ActiveConn {
        ActiveConn {
            upstreams: self.upstreams.clone(),
            backend,
            core: self.core,
        }
    }

    fn record_success(&self, idx: usize, started: Instant) {
        let local = &self.local[idx];
        let now = Instant::now();
        let sample = now.duration_since(started).as_nanos() as u64;
        let prev = local.ewma_ns.get();
        // Peak EWMA: jump up to a slower sample at once, decay down with time.
        let next = match local.ewma_at.get() {
            _ if prev == 0 || sample >= prev => sample.max(1),
            Some(at) => {
                let w = (-(now.duration_since(at).as_secs_f64()) / EWMA_TAU.as_secs_f64()).exp();
                (prev as f64 * w + sample as f64 * (1.0 - w)) as u64
            }
            None => sample.max(1),
        };
        local.ewma_ns.set(next.max(1));
        local.ewma_at.set(Some(now));
        if local.eject_until.take().is_some() {
            tracing::info!(backend = %self.upstreams.backends[idx].name, core = self.core, "backend accepts connections again");
        }
    }

    fn record_failure(&self, idx: usize, e: &io::Error) {
        let local = &self.local[idx];
        let now = Instant::now();
        local.eject_until.set(Some(now + self.eject));
        let name = &self.upstreams.backends[idx].name;
        let due = local
            .last_warn
            .get()
            .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL);
        if due {
            let suppressed = local.suppressed.replace(0);
            local.last_warn.set(Some(now));
            tracing::warn!(backend = %name, core = self.core, error = %e, suppressed, eject_ms = self.eject.as_millis() as u64,
                "backend connect failed; skipping it for a while");
        } else {
            local.suppressed.set(local.suppressed.get() + 1);
        }
    }
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
