//! Listeners and services as both planes see them: the control plane publishes a [`Routing`]
//! (which listeners exist, which services) and replaces it when a reload adds or removes one;
//! each core looks services up in it by name. A service's backends live in its own
//! [`BackendSet`], with its own snapshots.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::counters::PerCore;
use super::set::BackendSet;
use crate::config::{DiscoverSpec, ListenerConfig, ServiceConfig, DEFAULT_SERVICE};

/// Counters of a listener, per core.
pub mod listener_counter {
    /// Connections accepted.
    pub const ACCEPTED: usize = 0;
    /// Open now.
    pub const ACTIVE: usize = 1;
    /// Closed before a service was chosen: a bad or untrusted PROXY header, no route, a peek
    /// that failed.
    pub const REFUSED: usize = 2;
    /// Refused by an access list (allow/deny).
    pub const DENIED: usize = 3;
    /// Refused by max_connections_per_ip.
    pub const PER_IP: usize = 4;
    /// Refused by max_new_connections_per_ip_per_s.
    pub const RATE: usize = 5;
    /// Times accepting paused at max_connections (the listener's or the process's).
    pub const LIMIT_PAUSES: usize = 6;
    pub const N: usize = 7;
}

/// Counters of a service, per core.
pub mod service_counter {
    /// Clients closed because no backend could be reached.
    pub const NO_BACKEND: usize = 0;
    /// Clients waiting now for a backend slot (every eligible backend at its max_connections).
    pub const QUEUED: usize = 1;
    /// Clients that waited and got a slot.
    pub const QUEUE_SERVED: usize = 2;
    /// Clients closed after queue_timeout_ms in the queue.
    pub const QUEUE_TIMEOUTS: usize = 3;
    /// Clients closed because the queue was at max_queue.
    pub const QUEUE_FULL: usize = 4;
    /// Microseconds spent in the queue, over every client that left it.
    pub const QUEUE_WAIT_US: usize = 5;
    pub const N: usize = 6;
}

/// One backend pool.
pub struct Service {
    pub name: String,
    /// Its configuration in force.
    pub config: ArcSwap<ServiceConfig>,
    pub set: BackendSet,
    /// Its `discover = true` entries in force.
    pub discover: ArcSwap<Vec<DiscoverSpec>>,
    pub counters: PerCore<{ service_counter::N }>,
}

impl Service {
    pub fn new(config: ServiceConfig, cores: usize) -> Service {
        Service {
            name: config.name.clone(),
            set: BackendSet::new(&config.backends, cores, config.algorithm, config.hash),
            discover: ArcSwap::from_pointee(config.discover.clone()),
            config: ArcSwap::from_pointee(config),
            counters: PerCore::new(cores),
        }
    }
}

/// One address lb accepts on, bound on every core.
pub struct Listener {
    pub name: String,
    /// Its configuration in force (a reload may change its routes and PROXY settings).
    pub config: ArcSwap<ListenerConfig>,
    /// As bound (the configured port 0 resolved).
    pub address: SocketAddr,
    /// One socket per core, for a binary upgrade to hand over.
    pub fds: Vec<RawFd>,
    /// Set when a reload removed it: its accept loops stop and drop their sockets.
    closed: AtomicBool,
    pub counters: PerCore<{ listener_counter::N }>,
    /// Per-source limits' state.
    pub ips: super::ips::IpTable,
}

impl Listener {
    pub fn new(
        config: ListenerConfig,
        address: SocketAddr,
        fds: Vec<RawFd>,
        cores: usize,
    ) -> Listener {
        Listener {
            name: config.name.clone(),
            config: ArcSwap::from_pointee(config),
            address,
            fds,
            closed: AtomicBool::new(false),
            counters: PerCore::new(cores),
            ips: Default::default(),
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The listeners and services in force.
pub struct Routing {
    /// Grows with every change, so that a core knows when to look again.
    pub generation: u64,
    pub services: Vec<Arc<Service>>,
    pub listeners: Vec<Arc<Listener>>,
}

impl Routing {
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The service today's single-service admin routes act on: `default`, or the only one.
    pub fn default_service(&self) -> Option<&Arc<Service>> {
        self.service(DEFAULT_SERVICE)
            .or_else(|| (self.services.len() == 1).then(|| &self.services[0]))
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}
