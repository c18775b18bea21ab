//! `GET /metrics`: the OpenMetrics text exposition, encoded by `prometheus-client` (escaping,
//! types, `_total` suffixes and the `# EOF` trailer come from the library) from a collector that
//! reads lb's own lock-free counters at scrape time.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::shared::counters::{CounterTotals, CONNECT_BUCKETS};
use crate::shared::routing::{listener_counter, service_counter};
use crate::shared::Shared;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape's text.
pub fn metrics(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(LbCollector(shared.clone())));
    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

struct LbCollector(Arc<Shared>);

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LbCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: name, help, type and its samples.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for LbCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let routing = shared.routing.load();
        let cores = shared.cores.cores();
        let mut rows: Vec<(Labels, CounterTotals, bool, u32)> = Vec::new();
        // (labels, healthy, draining) of each backend: what tells DOWN from drained.
        let mut states: Vec<(Labels, bool, bool)> = Vec::new();
        // (labels, max_connections or 0, slots taken)
        let mut limits: Vec<(Labels, u32, u64)> = Vec::new();
        // (labels with the core, seconds) of each core's response-time estimate.
        let mut response: Vec<(Labels, f64)> = Vec::new();
        for svc in &routing.services {
            for b in svc.set.load().backends.iter() {
                let labels = vec![
                    ("service", svc.name.clone()),
                    ("backend", b.name.clone()),
                    ("address", b.address.to_string()),
                ];
                let t = b.counters.totals();
                // Eligible and not skipped by every core: it takes new connections.
                let up = b.eligible() && t.ejected_cores.len() < cores;
                limits.push((
                    labels.clone(),
                    b.max_connections.unwrap_or(0),
                    b.counters.claimed(),
                ));
                for (core, rt) in b.counters.response_times().into_iter().enumerate() {
                    if let Some(rt) = rt {
                        let mut l = labels.clone();
                        l.push(("core", core.to_string()));
                        response.push((l, rt.as_secs_f64()));
                    }
                }
                states.push((
                    labels.clone(),
                    b.health == crate::shared::set::Health::Up,
                    b.admin == crate::shared::set::AdminState::Draining,
                ));
                rows.push((labels, t, up, b.weight));
            }
        }
        let gauge = |f: &dyn Fn(&CounterTotals, bool, u32) -> i64| {
            rows.iter()
                .map(move |(l, t, up, w)| (l.clone(), ConstGauge::new(f(t, *up, *w))))
                .collect::<Vec<_>>()
        };
        let counter = |f: &dyn Fn(&CounterTotals) -> u64| {
            rows.iter()
                .map(move |(l, t, _, _)| (l.clone(), ConstCounter::new(f(t))))
                .collect::<Vec<_>>()
        };
        family(&mut enc, "lb_backend_up", "1 if the backend takes new connections (healthy, not draining, not passively ejected by every core).", MetricType::Gauge, gauge(&|_, up, _| up as i64))?;
        family(
            &mut enc,
            "lb_backend_healthy",
            "1 if the backend passes its health checks (or has none), 0 while they hold it DOWN.",
            MetricType::Gauge,
            states
                .iter()
                .map(|(l, h, _)| (l.clone(), ConstGauge::new(*h as i64))),
        )?;
        family(
            &mut enc,
            "lb_backend_draining",
            "1 if the backend was drained through the admin API (no new connections).",
            MetricType::Gauge,
            states
                .iter()
                .map(|(l, _, d)| (l.clone(), ConstGauge::new(*d as i64))),
        )?;
        family(
            &mut enc,
            "lb_backend_max_connections",
            "The backend's max_connections (0: no limit).",
            MetricType::Gauge,
            limits
                .iter()
                .map(|(l, m, _)| (l.clone(), ConstGauge::new(*m as i64))),
        )?;
        family(
            &mut enc,
            "lb_backend_slots_taken",
            "Connections holding one of the backend's max_connections slots now.",
            MetricType::Gauge,
            limits
                .iter()
                .map(|(l, _, t)| (l.clone(), ConstGauge::new(*t as i64))),
        )?;
        family(
            &mut enc,
            "lb_backend_weight",
            "Weight of the backend in force.",
            MetricType::Gauge,
            gauge(&|_, _, w| w as i64),
        )?;
        family(
            &mut enc,
            "lb_backend_active_connections",
            "Open proxied connections to the backend.",
            MetricType::Gauge,
            gauge(&|t, _, _| t.active as i64),
        )?;
        family(
            &mut enc,
            "lb_backend_connections",
            "Proxied connections opened to the backend.",
            MetricType::Counter,
            counter(&|t| t.total),
        )?;
        family(
            &mut enc,
            "lb_backend_connect_failures",
            "Failed connects to the backend.",
            MetricType::Counter,
            counter(&|t| t.connect_failures),
        )?;
        family(
            &mut enc,
            "lb_backend_sent_bytes",
            "Bytes relayed to the backend (counted when a connection ends, however it ends).",
            MetricType::Counter,
            counter(&|t| t.bytes_to_backend),
        )?;
        family(&mut enc, "lb_backend_received_bytes", "Bytes relayed from the backend to clients (counted when a connection ends, however it ends).", MetricType::Counter, counter(&|t| t.bytes_to_client))?;
        family(
            &mut enc,
            "lb_backend_ejections",
            "Passive ejections of the backend after failed connects, over all cores.",
            MetricType::Counter,
            counter(&|t| t.ejections),
        )?;
        family(
            &mut enc,
            "lb_backend_response_time_seconds",
            "least_response_time: each core's Peak-EWMA of the backend's response time (by the service's response_time.metric), as of its latest sample.",
            MetricType::Gauge,
            response
                .iter()
                .map(|(l, s)| (l.clone(), ConstGauge::new(*s))),
        )?;
        family(
            &mut enc,
            "lb_backend_ejected_cores",
            "Cores that passively eject the backend now.",
            MetricType::Gauge,
            gauge(&|t, _, _| t.ejected_cores.len() as i64),
        )?;
        family(
            &mut enc,
            "lb_backend_ejected",
            "1 if this core passively ejects the backend now (it skips the backend after failed connects).",
            MetricType::Gauge,
            rows.iter().flat_map(|(l, t, _, _)| {
                (0..cores).map(move |c| {
                    let mut l = l.clone();
                    l.push(("core", c.to_string()));
                    (l, ConstGauge::new(t.ejected_cores.contains(&c) as i64))
                })
            }),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "lb_backend_connect_seconds",
                "Time to connect to the backend.",
                None,
                MetricType::Histogram,
            )?;
            for (labels, t, _, _) in &rows {
                let buckets: Vec<(f64, u64)> = t
                    .connect_buckets
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let le = if i + 1 == CONNECT_BUCKETS {
                            f64::INFINITY
                        } else {
                            (1u64 << i) as f64 / 1e6
                        };
                        (le, *c)
                    })
                    .collect();
                let count = t.connect_buckets.iter().sum();
                m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                    t.connect_seconds_sum,
                    count,
                    &buckets,
                    None,
                )?;
            }
        }
        let per_core = |f: &dyn Fn(usize) -> u64| {
            (0..cores)
                .map(move |i| (vec![("core", i.to_string())], f(i)))
                .collect::<Vec<_>>()
        };
        let c = &shared.cores;
        family(
            &mut enc,
            "lb_core_accepted_connections",
            "Client connections accepted by each core.",
            MetricType::Counter,
            per_core(&|i| c.get(i).accepted)
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "lb_core_active_connections",
            "Open client connections on each core.",
            MetricType::Gauge,
            per_core(&|i| c.get(i).active)
                .into_iter()
                .map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "lb_core_no_backend",
            "Clients closed because no backend could be reached.",
            MetricType::Counter,
            per_core(&|i| c.get(i).no_backend)
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "lb_core_peek_refused",
            "Clients refused because the core's head-peek memory (relay.peek_memory) was in use.",
            MetricType::Counter,
            per_core(&|i| c.get(i).peek_refused)
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        // Kernel mode: nftables' counters of the flows netfilter forwarded, per backend.
        let kv = shared.kernel.view();
        let mut kernel_rows: Vec<(Labels, crate::shared::kernel::NftCounters)> = Vec::new();
        for svc in &routing.services {
            if !kv.services.contains_key(&svc.name) {
                continue;
            }
            for b in svc.set.load().backends.iter() {
                if let Some(c) =
                    crate::control::kernel::backend_counters(&shared.kernel, &svc.name, b.address)
                {
                    kernel_rows.push((
                        vec![
                            ("service", svc.name.clone()),
                            ("backend", b.name.clone()),
                            ("address", b.address.to_string()),
                        ],
                        c,
                    ));
                }
            }
        }
        let kcounter = |f: &dyn Fn(&crate::shared::kernel::NftCounters) -> u64| {
            kernel_rows
                .iter()
                .map(move |(l, c)| (l.clone(), ConstCounter::new(f(c))))
                .collect::<Vec<_>>()
        };
        family(&mut enc, "lb_kernel_backend_packets", "Packets of the backend's flows that netfilter forwarded (kernel mode), both directions, as nftables counted them.", MetricType::Counter, kcounter(&|c| c.packets))?;
        family(&mut enc, "lb_kernel_backend_bytes", "Bytes of the backend's flows that netfilter forwarded (kernel mode), both directions, IP headers included.", MetricType::Counter, kcounter(&|c| c.bytes))?;
        family(
            &mut enc,
            "lb_kernel_backend_connections",
            "New flows netfilter DNATed to the backend (kernel mode).",
            MetricType::Counter,
            kcounter(&|c| c.connections),
        )?;
        family(
            &mut enc,
            "lb_service_kernel_active",
            "1 if netfilter forwards the kernel-mode service's new connections, 0 while lb relays them.",
            MetricType::Gauge,
            kv.services.iter().map(|(name, k)| {
                (vec![("service", name.clone())], ConstGauge::new(k.active as i64))
            }),
        )?;
        let none = || -> Labels { Vec::new() };
        family(
            &mut enc,
            "lb_config_generation",
            "Generation of the listeners and services in force (a reload adds one).",
            MetricType::Gauge,
            [(none(), ConstGauge::new(routing.generation as i64))],
        )?;
        family(
            &mut enc,
            "lb_service_backend_set_generation",
            "Generation of each service's backend set (every change adds one).",
            MetricType::Gauge,
            routing.services.iter().map(|s| {
                (
                    vec![("service", s.name.clone())],
                    ConstGauge::new(s.set.generation() as i64),
                )
            }),
        )?;
        family(
            &mut enc,
            "lb_service_no_backend",
            "Clients of each service closed because no backend could be reached.",
            MetricType::Counter,
            routing.services.iter().map(|s| {
                (
                    vec![("service", s.name.clone())],
                    ConstCounter::new(s.counters.sum(service_counter::NO_BACKEND)),
                )
            }),
        )?;
        let lrow = |f: &dyn Fn(&crate::shared::Listener) -> u64| {
            routing
                .listeners
                .iter()
                .map(|l| {
                    (
                        vec![
                            ("listener", l.name.clone()),
                            ("address", l.address.to_string()),
                        ],
                        f(l),
                    )
                })
                .collect::<Vec<_>>()
        };
        family(
            &mut enc,
            "lb_listener_accepted_connections",
            "Client connections each listener accepted.",
            MetricType::Counter,
            lrow(&|l| l.counters.sum(listener_counter::ACCEPTED))
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "lb_listener_active_connections",
            "Open client connections of each listener.",
            MetricType::Gauge,
            lrow(&|l| l.counters.sum(listener_counter::ACTIVE))
                .into_iter()
                .map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "lb_listener_refused",
            "Clients each listener refused, by reason: protocol (a bad or untrusted PROXY header, a malformed ClientHello, no route, a failed peek), denied (an access list), per_ip (max_connections_per_ip), rate (max_new_connections_per_ip_per_s).",
            MetricType::Counter,
            routing.listeners.iter().flat_map(|l| {
                [
                    ("protocol", listener_counter::REFUSED),
                    ("denied", listener_counter::DENIED),
                    ("per_ip", listener_counter::PER_IP),
                    ("rate", listener_counter::RATE),
                ]
                .into_iter()
                .map(move |(reason, c)| {
                    (
                        vec![("listener", l.name.clone()), ("address", l.address.to_string()), ("reason", reason.to_string())],
                        ConstCounter::new(l.counters.sum(c)),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "lb_listener_max_connections",
            "Each listener's max_connections (0: no limit).",
            MetricType::Gauge,
            lrow(&|l| l.config.load().limits.max_connections.unwrap_or(0))
                .into_iter()
                .map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "lb_listener_limit_pauses",
            "Times a listener's accepting paused at max_connections (its own or the process's).",
            MetricType::Counter,
            lrow(&|l| l.counters.sum(listener_counter::LIMIT_PAUSES))
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "lb_listener_sources_tracked",
            "Client addresses a listener's per-source limits track now.",
            MetricType::Gauge,
            lrow(&|l| l.ips.sources() as u64)
                .into_iter()
                .map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        let srow = |c: usize| {
            routing
                .services
                .iter()
                .map(move |s| (vec![("service", s.name.clone())], s.counters.sum(c)))
                .collect::<Vec<_>>()
        };
        family(
            &mut enc,
            "lb_service_queued_connections",
            "Clients waiting now for a slot of a backend at its max_connections.",
            MetricType::Gauge,
            srow(service_counter::QUEUED)
                .into_iter()
                .map(|(l, v)| (l, ConstGauge::new(v as i64))),
        )?;
        family(
            &mut enc,
            "lb_service_queue_served",
            "Clients that waited in the queue and got a backend slot.",
            MetricType::Counter,
            srow(service_counter::QUEUE_SERVED)
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "lb_service_queue_timeouts",
            "Clients closed after queue_timeout_ms in the queue.",
            MetricType::Counter,
            srow(service_counter::QUEUE_TIMEOUTS)
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "lb_service_queue_full",
            "Clients closed because the queue was at max_queue.",
            MetricType::Counter,
            srow(service_counter::QUEUE_FULL)
                .into_iter()
                .map(|(l, v)| (l, ConstCounter::new(v))),
        )?;
        family(&mut enc, "lb_service_queue_wait_seconds", "Seconds clients spent in the queue, summed (divide by served + timeouts for the mean).", MetricType::Counter,
            srow(service_counter::QUEUE_WAIT_US).into_iter().map(|(l, v)| (l, ConstCounter::new(v as f64 / 1e6))))?;
        family(
            &mut enc,
            "lb_max_connections",
            "The whole process's max_connections (0: no limit).",
            MetricType::Gauge,
            [(
                Vec::new(),
                ConstGauge::new(shared.live.load().max_connections.unwrap_or(0) as i64),
            )],
        )?;
        family(
            &mut enc,
            "lb_uptime_seconds",
            "Seconds since lb started.",
            MetricType::Gauge,
            [(
                none(),
                ConstGauge::new(shared.lifecycle.uptime().as_secs_f64()),
            )],
        )?;
        family(
            &mut enc,
            "lb_fd_limit",
            "The file descriptor limit (RLIMIT_NOFILE) lb runs with.",
            MetricType::Gauge,
            [(none(), ConstGauge::new(shared.fds.limit as i64))],
        )?;
        family(
            &mut enc,
            "lb_accept_paused_for_fds",
            "Times an accept loop paused because no descriptors were left for another connection.",
            MetricType::Counter,
            [(
                none(),
                ConstCounter::new(shared.fds.pauses.load(std::sync::atomic::Ordering::Relaxed)),
            )],
        )?;
        let access = &shared.access;
        family(
            &mut enc,
            "lb_access_log_lines",
            "Access log lines handed to the writer.",
            MetricType::Counter,
            [(
                none(),
                ConstCounter::new(access.lines.load(std::sync::atomic::Ordering::Relaxed)),
            )],
        )?;
        family(
            &mut enc,
            "lb_access_log_dropped",
            "Access log lines lost to the rate cap (access_log.max_lines_per_s) or a writer behind.",
            MetricType::Counter,
            [(
                none(),
                ConstCounter::new(access.dropped.load(std::sync::atomic::Ordering::Relaxed)),
            )],
        )?;
        Ok(())
    }
}
