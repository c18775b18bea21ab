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
    /// Closed before a service was chosen: a bad or untrusted PROXY header, no route.
    pub const REFUSED: usize = 2;
    pub const N: usize = 3;
}

/// Counters of a service, per core.
pub mod service_counter {
    /// Clients closed because no backend could be reached.
    pub const NO_BACKEND: usize = 0;
    pub const N: usize = 1;
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
