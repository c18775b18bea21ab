//! `GET /lb/stats`, `/lb/backends`, `/lb/services` and `/lb/listeners`: JSON views of the
//! listeners, services, backends and cores, as serde structs.
//!
//! `/lb/stats` keeps the single-service fields at its top (`algorithm`, `listen`, `backends`,
//! `overrides`, `generation`: those of the default service and the first listener) beside the
//! full `services` and `listeners`.

use serde::Serialize;

use crate::config::Mode;
use crate::shared::routing::{listener_counter, service_counter};
use crate::shared::set::Override;
use crate::shared::{Listener, Service, Shared};

#[derive(Serialize)]
pub struct ConnectMs {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Serialize)]
pub struct BackendStats {
    pub name: String,
    pub address: String,
    /// `up`, `down`, `draining`, or `ejected` when every core passively ejects it.
    pub state: &'static str,
    pub ejected_cores: Vec<usize>,
    pub ejections_total: u64,
    pub weight: u32,
    pub active_connections: u64,
    pub connections_total: u64,
    pub connect_failures: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub connect_ms: ConnectMs,
    /// Its max_connections (null: no limit) and the connections holding its slots now.
    pub max_connections: Option<u32>,
    pub slots_taken: u64,
    /// Time left before a drain closes what is still open (null: no deadline).
    pub drain_deadline_ms: Option<u64>,
    /// least_response_time: each core's estimate, ms (null: no sample on that core yet).
    pub response_time_ms: Vec<Option<f64>>,
    /// Kernel mode: what nftables counted for the backend (flows netfilter forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelCounterStats>,
}

#[derive(Serialize)]
pub struct KernelCounterStats {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}

/// A kernel-mode service's netfilter state.
#[derive(Serialize)]
pub struct KernelServiceStats {
    /// netfilter forwards its new connections now; false: lb relays them.
    pub active: bool,
    pub table: String,
    pub slots: usize,
    /// The backend set generation the map holds (the service's `generation` once it caught up).
    pub generation: u64,
    /// Why it is not active, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Serialize)]
pub struct OverrideStats {
    pub backend: String,
    /// `added`, `weight` or `drained`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_weight: Option<u32>,
}

#[derive(Serialize)]
pub struct QueueStats {
    /// Waiting now, over all cores.
    pub queued: u64,
    pub served: u64,
    pub timeouts: u64,
    pub full: u64,
    pub timeout_ms: u64,
    pub max_per_core: usize,
    /// Mean wait of the clients that left the queue.
    pub mean_wait_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct ServiceStats {
    pub name: String,
    /// `relay` or `kernel`, as configured (`kernel.active` says whether netfilter forwards).
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelServiceStats>,
    pub algorithm: &'static str,
    pub send_proxy: &'static str,
    /// What least_response_time measures.
    pub response_time_metric: &'static str,
    pub generation: u64,
    pub no_backend: u64,
    pub queue: QueueStats,
    pub backends: Vec<BackendStats>,
    pub overrides: Vec<OverrideStats>,
}

#[derive(Serialize)]
pub struct RouteStats {
    pub sni: String,
    pub service: String,
}

#[derive(Serialize)]
pub struct ListenerStats {
    pub name: String,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_service: Option<String>,
    pub accept_proxy: &'static str,
    pub trusted_proxies: Vec<String>,
    pub accepted: u64,
    pub active: u64,
    pub refused: u64,
    /// null: no limit.
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u32>,
    pub max_new_connections_per_ip_per_s: Option<u32>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub denied: u64,
    pub refused_per_ip: u64,
    pub refused_rate: u64,
    pub limit_pauses: u64,
    pub sources_tracked: usize,
}

#[derive(Serialize)]
pub struct CoreStats {
    pub core: usize,
    pub accepted: u64,
    pub active: u64,
    pub no_backend: u64,
    pub peek_refused: u64,
}

#[derive(Serialize)]
pub struct Stats {
    pub algorithm: &'static str,
    pub listen: String,
    /// The whole process's max_connections (null: no limit).
    pub max_connections: Option<u64>,
    pub uptime_s: f64,
    pub generation: u64,
    pub routing_generation: u64,
    pub stopping: bool,
    pub backends: Vec<BackendStats>,
    pub overrides: Vec<OverrideStats>,
    pub services: Vec<ServiceStats>,
    pub listeners: Vec<ListenerStats>,
    pub cores: Vec<CoreStats>,
    pub access_log: AccessLogStats,
    /// What the last SIGHUP did (null: none yet).
    pub reload: Option<crate::shared::ReloadReport>,
}

#[derive(Serialize)]
pub struct AccessLogStats {
    pub enabled: bool,
    /// null: stderr.
    pub path: Option<String>,
    pub format: &'static str,
    pub lines: u64,
    pub dropped: u64,
}

pub fn backends_json_of(svc: &Service) -> Vec<BackendStats> {
    let snap = svc.set.load();
    let cores = svc.counters.cores();
    snap.backends
        .iter()
        .map(|b| {
            let t = b.counters.totals();
            // Healthy and undrained, but skipped by every core after failed connects.
            let state = if b.eligible() && t.ejected_cores.len() >= cores {
                "ejected"
            } else {
                b.state_name()
            };
            BackendStats {
                name: b.name.clone(),
                address: b.address.to_string(),
                state,
                ejected_cores: t.ejected_cores.clone(),
                ejections_total: t.ejections,
                weight: b.weight,
                active_connections: t.active,
                connections_total: t.total,
                connect_failures: t.connect_failures,
                bytes_to_backend: t.bytes_to_backend,
                bytes_to_client: t.bytes_to_client,
                connect_ms: ConnectMs {
                    p50: t.connect_quantile_ms(0.5),
                    p90: t.connect_quantile_ms(0.9),
                    p99: t.connect_quantile_ms(0.99),
                },
                max_connections: b.max_connections,
                slots_taken: b.counters.claimed(),
                response_time_ms: b
                    .counters
                    .response_times()
                    .into_iter()
                    .map(|d| d.map(|d| d.as_micros() as f64 / 1000.0))
                    .collect(),
                drain_deadline_ms: b.drain_deadline.map(|d| {
                    d.saturating_duration_since(std::time::Instant::now())
                        .as_millis() as u64
                }),
                kernel: None,
            }
        })
        .collect()
}

/// The default service's backends (`GET /lb/backends`).
pub fn backends_json(shared: &Shared) -> Vec<BackendStats> {
    shared
        .default_service()
        .map(|s| backends_json_of(&s))
        .unwrap_or_default()
}

/// The admin-API changes that a reload keeps (cleared only by an explicit DELETE or undrain).
pub fn overrides_of(svc: &Service) -> Vec<OverrideStats> {
    svc.set
        .overrides()
        .into_iter()
        .map(|o| match o {
            Override::Added { backend } => OverrideStats {
                backend,
                kind: "added",
                weight: None,
                file_weight: None,
            },
            Override::Weight {
                backend,
                weight,
                file,
            } => OverrideStats {
                backend,
                kind: "weight",
                weight: Some(weight),
                file_weight: Some(file),
            },
            Override::Drained { backend } => OverrideStats {
                backend,
                kind: "drained",
                weight: None,
                file_weight: None,
            },
        })
        .collect()
}

/// The service's backends with, in kernel mode, nftables' counters of each.
pub fn backends_with_kernel(shared: &Shared, svc: &Service) -> Vec<BackendStats> {
    let mut out = backends_json_of(svc);
    if svc.config.load().mode == Mode::Kernel {
        let snap = svc.set.load();
        for (b, s) in snap.backends.iter().zip(out.iter_mut()) {
            s.kernel =
                crate::control::kernel::backend_counters(&shared.kernel, &svc.name, b.address).map(
                    |c| KernelCounterStats {
                        packets: c.packets,
                        bytes: c.bytes,
                        connections: c.connections,
                    },
                );
        }
    }
    out
}

fn kernel_of(shared: &Shared, svc: &Service) -> Option<KernelServiceStats> {
    let v = shared.kernel.view();
    let k = v.services.get(&svc.name);
    Some(KernelServiceStats {
        active: k.is_some_and(|k| k.active),
        table: v.table.clone()?,
        slots: k.map_or(0, |k| k.slots),
        generation: k.filter(|k| k.active).map_or(0, |k| k.generation),
        reason: match (k, &v.unavailable) {
            (_, Some(why)) => Some(why.clone()),
            (Some(k), None) if !k.active => {
                Some("no listener routes to it, or it has no backend".into())
            }
            _ => None,
        },
    })
}

pub fn service_json(shared: &Shared, svc: &Service) -> ServiceStats {
    let cfg = svc.config.load();
    ServiceStats {
        name: svc.name.clone(),
        mode: cfg.mode.name(),
        kernel: (cfg.mode == Mode::Kernel)
            .then(|| kernel_of(shared, svc))
            .flatten(),
        algorithm: cfg.algorithm.name(),
        send_proxy: cfg.send_proxy.name(),
        response_time_metric: cfg.response_time.metric.name(),
        generation: svc.set.generation(),
        no_backend: svc.counters.sum(service_counter::NO_BACKEND),
        queue: {
            let c = &svc.counters;
            let left =
                c.sum(service_counter::QUEUE_SERVED) + c.sum(service_counter::QUEUE_TIMEOUTS);
            QueueStats {
                queued: c.sum(service_counter::QUEUED),
                served: c.sum(service_counter::QUEUE_SERVED),
                timeouts: c.sum(service_counter::QUEUE_TIMEOUTS),
                full: c.sum(service_counter::QUEUE_FULL),
                timeout_ms: cfg.limits.queue_timeout.as_millis() as u64,
                max_per_core: cfg.limits.max_queue,
                mean_wait_ms: (left > 0)
                    .then(|| c.sum(service_counter::QUEUE_WAIT_US) as f64 / left as f64 / 1000.0),
            }
        },
        backends: backends_with_kernel(shared, svc),
        overrides: overrides_of(svc),
    }
}

pub fn services_json(shared: &Shared) -> Vec<ServiceStats> {
    shared
        .routing
        .load()
        .services
        .iter()
        .map(|s| service_json(shared, s))
        .collect()
}

fn listener_json(l: &Listener) -> ListenerStats {
    use crate::config::Route;
    let cfg = l.config.load();
    let (service, routes, default_service) = match &cfg.route {
        Route::Service(s) => (Some(s.clone()), Vec::new(), None),
        Route::Sni { routes, default } => (
            None,
            routes
                .iter()
                .map(|r| RouteStats {
                    sni: r.pattern.text(),
                    service: r.service.clone(),
                })
                .collect(),
            default.clone(),
        ),
    };
    ListenerStats {
        name: l.name.clone(),
        address: l.address.to_string(),
        service,
        routes,
        default_service,
        accept_proxy: cfg.accept_proxy.name(),
        trusted_proxies: cfg.trusted_proxies.to_strings(),
        accepted: l.counters.sum(listener_counter::ACCEPTED),
        active: l.counters.sum(listener_counter::ACTIVE),
        refused: l.counters.sum(listener_counter::REFUSED),
        max_connections: cfg.limits.max_connections,
        max_connections_per_ip: cfg.limits.max_connections_per_ip,
        max_new_connections_per_ip_per_s: cfg.limits.max_new_connections_per_ip_per_s,
        allow: cfg.limits.access.allow.to_strings(),
        deny: cfg.limits.access.deny.to_strings(),
        denied: l.counters.sum(listener_counter::DENIED),
        refused_per_ip: l.counters.sum(listener_counter::PER_IP),
        refused_rate: l.counters.sum(listener_counter::RATE),
        limit_pauses: l.counters.sum(listener_counter::LIMIT_PAUSES),
        sources_tracked: l.ips.sources(),
    }
}

pub fn listeners_json(shared: &Shared) -> Vec<ListenerStats> {
    shared
        .routing
        .load()
        .listeners
        .iter()
        .map(|l| listener_json(l))
        .collect()
}

pub fn stats(shared: &Shared) -> serde_json::Value {
    let routing = shared.routing.load();
    let default = routing.default_service();
    let cores = (0..shared.cores.cores())
        .map(|i| {
            let c = shared.cores.get(i);
            CoreStats {
                core: i,
                accepted: c.accepted,
                active: c.active,
                no_backend: c.no_backend,
                peek_refused: c.peek_refused,
            }
        })
        .collect();
    let s = Stats {
        algorithm: default.map_or("", |s| s.config.load().algorithm.name()),
        listen: routing
            .listeners
            .first()
            .map(|l| l.address.to_string())
            .unwrap_or_default(),
        max_connections: shared.live.load().max_connections,
        uptime_s: shared.lifecycle.uptime().as_secs_f64(),
        generation: default.map_or(0, |s| s.set.generation()),
        routing_generation: routing.generation,
        stopping: shared.lifecycle.stopping(),
        backends: default
            .map(|s| backends_with_kernel(shared, s))
            .unwrap_or_default(),
        overrides: default.map(|s| overrides_of(s)).unwrap_or_default(),
        services: services_json(shared),
        listeners: listeners_json(shared),
        cores,
        access_log: {
            let a = &shared.access;
            let c = a.config();
            AccessLogStats {
                enabled: c.enabled,
                path: c.path.as_ref().map(|p| p.display().to_string()),
                format: c.format.name(),
                lines: a.lines.load(std::sync::atomic::Ordering::Relaxed),
                dropped: a.dropped.load(std::sync::atomic::Ordering::Relaxed),
            }
        },
        reload: shared
            .last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    serde_json::to_value(s).unwrap_or_default()
}
