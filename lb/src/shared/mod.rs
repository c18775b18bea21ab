//! The contract between the planes: state the control plane writes and the workers read (or the
//! other way round for counters). Everything here is `Send + Sync`; the data path reads it without
//! a lock.

pub mod access_log;
pub mod counters;
pub mod exit;
pub mod fds;
pub mod ips;
pub mod kernel;
pub mod routing;
pub mod set;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, ListenerConfig};
use counters::CoreCounters;
pub use routing::{Listener, Routing, Service};

/// Running, draining (lame duck: still accepting, but telling health probes to go away), or
/// stopping with a deadline.
pub struct Lifecycle {
    started: Instant,
    draining: AtomicBool,
    stopping: AtomicBool,
    /// Deadline for open connections, in ms after `started`.
    deadline_ms: AtomicU64,
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle {
            started: Instant::now(),
            draining: AtomicBool::new(false),
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

    /// Lame duck: /health answers 503 while lb still accepts.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Draining or stopping: what a health probe in front of lb must learn.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.stopping()
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

/// What the last reload did, for `/lb/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub at_uptime_s: f64,
    pub ok: bool,
    pub generation: Option<u64>,
    pub error: Option<String>,
    /// Keys that changed but need a restart.
    pub not_applied: Vec<String>,
}

/// A listener a reload added, and one of its sockets for a core.
pub type NewListener = (Arc<Listener>, StdListener);

/// Everything the workers and the control plane share.
pub struct Shared {
    /// The configuration lb started with: its process-wide sections (cores, relay, pool,
    /// admin, shutdown, replicas, discovery). Listeners and services in force are in `routing`.
    pub config: Config,
    /// The configuration in force: the one lb started with, then each reload's. Process-wide
    /// keys that can change live (limits, shutdown, discovery, the access log) are read here.
    pub live: ArcSwap<Config>,
    pub routing: ArcSwap<Routing>,
    /// Listeners a reload added, waiting for each core's worker to accept on its socket.
    pub inbox: Vec<Mutex<Vec<NewListener>>>,
    pub cores: CoreCounters,
    pub lifecycle: Lifecycle,
    /// The admin API's address as bound.
    pub admin_address: Option<SocketAddr>,
    /// Accept loops running (a new process confirms a takeover once all of them are).
    pub ready: AtomicUsize,
    /// How many client connections the descriptor limit leaves room for.
    pub fds: fds::FdBudget,
    pub access: Arc<access_log::AccessLog>,
    /// What the last SIGHUP did.
    pub last_reload: Mutex<Option<ReloadReport>>,
    /// Kernel mode as its control loop last saw it, for the admin API.
    pub kernel: kernel::KernelStatus,
}

impl Shared {
    /// The shared state for a process serving `config` on `listeners` (bound, with their
    /// sockets' fds, one per core), with its admin API on `admin` (when it has one).
    pub fn new(
        config: Config,
        listeners: Vec<(ListenerConfig, SocketAddr, Vec<RawFd>)>,
        admin: Option<SocketAddr>,
        access: Arc<access_log::AccessLog>,
    ) -> Arc<Shared> {
        let cores = config.cores;
        let services: Vec<Arc<Service>> = config
            .services
            .iter()
            .map(|s| Arc::new(Service::new(s.clone(), cores)))
            .collect();
        let listeners = listeners
            .into_iter()
            .map(|(c, addr, fds)| Arc::new(Listener::new(c, addr, fds, cores)))
            .collect();
        // Kept free for everything but client connections: the admin API at its cap, one health
        // check per backend, the pools, and the runtime's own descriptors.
        let backends = config.backend_count();
        let reserve = config.admin.max_connections
            + backends
            + config.pool.idle_per_backend * backends * cores
            + 8 * cores
            + 32;
        Arc::new(Shared {
            access,
            last_reload: Mutex::new(None),
            fds: fds::FdBudget::new(reserve as u64),
            routing: ArcSwap::from_pointee(Routing {
                generation: 1,
                services,
                listeners,
            }),
            inbox: (0..cores).map(|_| Mutex::new(Vec::new())).collect(),
            cores: CoreCounters::new(cores),
            lifecycle: Lifecycle::new(),
            ready: AtomicUsize::new(0),
            admin_address: admin,
            live: ArcSwap::from_pointee(config.clone()),
            kernel: Default::default(),
            config,
        })
    }

    /// lb's own listen and admin addresses, as bound: a backend at one of them would be lb.
    pub fn own_addresses(&self) -> Vec<SocketAddr> {
        self.routing
            .load()
            .listeners
            .iter()
            .map(|l| l.address)
            .chain(self.admin_address)
            .collect()
    }

    /// The service today's single-service routes and tools act on.
    pub fn default_service(&self) -> Option<Arc<Service>> {
        self.routing.load().default_service().cloned()
    }
}
