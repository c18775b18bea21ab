//! `GET /metrics`: the Prometheus text exposition (version 0.0.4).

use std::fmt::Write as _;

use crate::shared::counters::{CounterTotals, CONNECT_BUCKETS};
use crate::shared::Shared;

/// Prometheus text exposition (version 0.0.4).
pub fn metrics(shared: &Shared) -> String {
    let snap = shared.set.load();
    let totals: Vec<(String, String, CounterTotals, bool, u32)> = snap
        .backends
        .iter()
        .map(|b| {
            (
                escape(&b.name),
                b.address.to_string(),
                b.counters.totals(),
                b.eligible(),
                b.weight,
            )
        })
        .collect();
    let mut out = String::with_capacity(4096);
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
    let lbl = |n: &str, a: &str| format!("{{backend=\"{n}\",address=\"{a}\"}}");
    family(
        "lb_backend_up",
        "gauge",
        "1 if the backend takes new connections (healthy, not draining).",
        &mut totals
            .iter()
            .map(|(n, a, _, up, _)| (lbl(n, a), (*up as u8).to_string())),
    );
    family(
        "lb_backend_weight",
        "gauge",
        "Configured weight of the backend.",
        &mut totals
            .iter()
            .map(|(n, a, _, _, w)| (lbl(n, a), w.to_string())),
    );
    family(
        "lb_backend_active_connections",
        "gauge",
        "Open proxied connections to the backend.",
        &mut totals
            .iter()
            .map(|(n, a, t, _, _)| (lbl(n, a), t.active.to_string())),
    );
    family(
        "lb_backend_connections_total",
        "counter",
        "Proxied connections opened to the backend.",
        &mut totals
            .iter()
            .map(|(n, a, t, _, _)| (lbl(n, a), t.total.to_string())),
    );
    family(
        "lb_backend_connect_failures_total",
        "counter",
        "Failed connects to the backend.",
        &mut totals
            .iter()
            .map(|(n, a, t, _, _)| (lbl(n, a), t.connect_failures.to_string())),
    );
    family(
        "lb_backend_sent_bytes_total",
        "counter",
        "Bytes relayed to the backend (counted when a connection ends).",
        &mut totals
            .iter()
            .map(|(n, a, t, _, _)| (lbl(n, a), t.bytes_to_backend.to_string())),
    );
    family(
        "lb_backend_received_bytes_total",
        "counter",
        "Bytes relayed from the backend to clients (counted when a connection ends).",
        &mut totals
            .iter()
            .map(|(n, a, t, _, _)| (lbl(n, a), t.bytes_to_client.to_string())),
    );
    let mut hist = Vec::new();
    for (n, a, t, _, _) in &totals {
        let mut cum = 0;
        for (i, c) in t.connect_buckets.iter().enumerate() {
            cum += c;
            let le = if i + 1 == CONNECT_BUCKETS {
                "+Inf".to_string()
            } else {
                format!("{}", (1u64 << i) as f64 / 1e6)
            };
            hist.push((
                format!("_bucket{{backend=\"{n}\",address=\"{a}\",le=\"{le}\"}}"),
                cum.to_string(),
            ));
        }
        hist.push((
            format!("_sum{}", lbl(n, a)),
            format!("{}", t.connect_seconds_sum),
        ));
        hist.push((format!("_count{}", lbl(n, a)), cum.to_string()));
    }
    let _ = writeln!(
        out,
        "# HELP lb_backend_connect_seconds Time to connect to the backend."
    );
    let _ = writeln!(out, "# TYPE lb_backend_connect_seconds histogram");
    for (suffix, v) in hist {
        let _ = writeln!(out, "lb_backend_connect_seconds{suffix} {v}");
    }
    let cores: Vec<_> = (0..shared.cores.cores())
        .map(|i| (i, shared.cores.get(i)))
        .collect();
    let mut family2 = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family2(
        "lb_core_accepted_connections_total",
        "counter",
        "Client connections accepted by each core.",
        cores
            .iter()
            .map(|(i, c)| (format!("{{core=\"{i}\"}}"), c.accepted.to_string()))
            .collect(),
    );
    family2(
        "lb_core_active_connections",
        "gauge",
        "Open client connections on each core.",
        cores
            .iter()
            .map(|(i, c)| (format!("{{core=\"{i}\"}}"), c.active.to_string()))
            .collect(),
    );
    family2(
        "lb_core_no_backend_total",
        "counter",
        "Clients closed because no backend could be reached.",
        cores
            .iter()
            .map(|(i, c)| (format!("{{core=\"{i}\"}}"), c.no_backend.to_string()))
            .collect(),
    );
    family2(
        "lb_config_generation",
        "gauge",
        "Generation of the backend set in force.",
        vec![(String::new(), shared.set.generation().to_string())],
    );
    family2(
        "lb_uptime_seconds",
        "gauge",
        "Seconds since lb started.",
        vec![(
            String::new(),
            format!("{:.3}", shared.lifecycle.uptime().as_secs_f64()),
        )],
    );
    out
}

/// Label values escape backslash, quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
