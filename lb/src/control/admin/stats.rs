//! `GET /lb/stats` and `GET /lb/backends`: JSON views of the backend set and the cores.

use serde_json::{json, Value};

use crate::shared::Shared;

pub fn backends_json(shared: &Shared) -> Vec<Value> {
    let snap = shared.set.load();
    let cores = shared.cores.cores();
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
            json!({
                "name": b.name,
                "address": b.address.to_string(),
                "state": state,
                "ejected_cores": t.ejected_cores,
                "ejections_total": t.ejections,
                "weight": b.weight,
                "active_connections": t.active,
                "connections_total": t.total,
                "connect_failures": t.connect_failures,
                "bytes_to_backend": t.bytes_to_backend,
                "bytes_to_client": t.bytes_to_client,
                "connect_ms": { "p50": t.connect_quantile_ms(0.5), "p90": t.connect_quantile_ms(0.9), "p99": t.connect_quantile_ms(0.99) },
            })
        })
        .collect()
}

pub fn stats(shared: &Shared) -> Value {
    let cores: Vec<Value> = (0..shared.cores.cores())
        .map(|i| {
            let c = shared.cores.get(i);
            json!({ "core": i, "accepted": c.accepted, "active": c.active, "no_backend": c.no_backend, "peek_refused": c.peek_refused })
        })
        .collect();
    json!({
        "algorithm": shared.config.algorithm.name(),
        "listen": shared.listen.to_string(),
        "uptime_s": shared.lifecycle.uptime().as_secs_f64(),
        "generation": shared.set.generation(),
        "stopping": shared.lifecycle.stopping(),
        "backends": backends_json(shared),
        "overrides": overrides_json(shared),
        "cores": cores,
    })
}

/// The admin-API changes that a reload keeps (cleared only by an explicit DELETE or undrain).
pub fn overrides_json(shared: &Shared) -> Vec<Value> {
    use crate::shared::set::Override;
    shared
        .set
        .overrides()
        .into_iter()
        .map(|o| match o {
            Override::Added { backend } => json!({ "backend": backend, "kind": "added" }),
            Override::Weight {
                backend,
                weight,
                file,
            } => json!({ "backend": backend, "kind": "weight", "weight": weight, "file_weight": file }),
            Override::Drained { backend } => json!({ "backend": backend, "kind": "drained" }),
        })
        .collect()
}
