//! The contract between the planes: state the control plane writes and the workers read (or the
//! other way round for counters). Everything here is `Send + Sync`; the data path reads it without
//! a lock.

pub mod counters;
pub mod exit;
pub mod fds;
pub mod set;

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use counters::CoreCounters;
use set::BackendSet;

/// Running, or stopping with a deadline.
pub struct Lifecycle {
    started: Instant,
    stopping: AtomicBool,
    /// Deadline for open connections, in ms after `started`.
    deadline_ms: AtomicU64,
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle {
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Stop accepting; open connections get `grace` to finish. A later call can only shorten it.
    pub fn stop(&self, grace: Duration) {
        let at = (self.started.elapsed() + grace).as_millis() as u64;
        self.deadline_ms.fetch_min(at, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn deadline(&self) -> Instant {
        let ms = self.deadline_ms.load(Ordering::SeqCst);
        self.started + Duration::from_millis(ms.min(365 * 24 * 3600 * 1000))
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything the workers and the control plane share.
pub struct Shared {
    pub config: Config,
    pub set: Arc<BackendSet>,
    pub cores: CoreCounters,
    pub lifecycle: Lifecycle,
    /// The address clients connect to (resolved when the config said port 0).
    pub listen: SocketAddr,
    /// lb's own listen and admin addresses, as bound: a backend at one of them would be lb.
    pub own_addresses: Vec<SocketAddr>,
    /// Raw fds of the client listeners, for a binary upgrade to take over.
    pub listener_fds: Vec<RawFd>,
    /// Accept loops running (a new process confirms a takeover once all of them are).
    pub ready: AtomicUsize,
    /// How many client connections the descriptor limit leaves room for.
    pub fds: fds::FdBudget,
    /// The `discover = true` entries in force (a reload may change them).
    pub discover: arc_swap::ArcSwap<Vec<crate::config::DiscoverSpec>>,
}

impl Shared {
    /// The shared state for a process serving `config` on listeners bound to `listen`, with its
    /// admin API on `admin` (when it has one).
    pub fn new(
        config: Config,
        listen: SocketAddr,
        admin: Option<SocketAddr>,
        listener_fds: Vec<RawFd>,
    ) -> Arc<Shared> {
        let set = Arc::new(BackendSet::new(
            &config.backends,
            config.cores,
            config.algorithm,
            config.hash,
        ));
        // Kept free for everything but client connections: the admin API at its cap, one health
        // check per backend, the pools, and the runtime's own descriptors.
        let reserve = config.admin.max_connections
            + config.backends.len()
            + config.pool.idle_per_backend * config.backends.len() * config.cores
            + 8 * config.cores
            + 32;
        Arc::new(Shared {
            fds: fds::FdBudget::new(reserve as u64),
            discover: arc_swap::ArcSwap::from_pointee(config.discover.clone()),
            cores: CoreCounters::new(config.cores),
            lifecycle: Lifecycle::new(),
            listener_fds,
            ready: AtomicUsize::new(0),
            listen,
            own_addresses: std::iter::once(listen).chain(admin).collect(),
            set,
            config,
        })
    }
}
