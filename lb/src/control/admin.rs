//! Admin HTTP API on its own listener (127.0.0.1 by default): stats, Prometheus metrics, and
//! backend changes that every core sees at its next connection.
//!
//! Routes:
//! - `GET /health` lb itself; `GET /lb/stats` JSON; `GET /metrics` Prometheus text format
//! - `GET /lb/backends`; `POST /lb/backends` `{"address": "h:p", "name"?: "", "weight"?: 1}`
//! - `DELETE /lb/backends/NAME`; `PUT /lb/backends/NAME/weight` `{"weight": N}`
//! - `POST /lb/backends/NAME/drain`, `POST /lb/backends/NAME/undrain`

use std::fmt::Write as _;
use std::net::TcpListener as StdListener;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use serde_json::{json, Value};

use crate::config::{BackendConfig, DEFAULT_WEIGHT, MAX_WEIGHT};
use crate::shared::counters::{CounterTotals, CONNECT_BUCKETS};
use crate::shared::set::{AdminState, SetError};
use crate::shared::Shared;

const MAX_REQUEST: usize = 64 * 1024;

pub async fn serve(listener: StdListener, shared: Arc<Shared>) {
    let _ = listener.set_nonblocking(lb_common::runtime::IoDriver::wants_nonblocking());
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin API cannot start");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let s = shared.clone();
                lb_common::task::spawn_guarded("admin-connection", connection(stream, s));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One request per connection is enough for an admin API; answers close the connection.
async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let deadline = std::time::Duration::from_secs(10);
    let request = loop {
        if buf.len() >= MAX_REQUEST {
            return respond(
                &mut stream,
                413,
                "application/json",
                br#"{"error":"request too large"}"#,
            )
            .await;
        }
        buf.reserve(4096);
        let filled = buf.len();
        let read = monoio::time::timeout(deadline, stream.read(buf.slice_mut(filled..))).await;
        let Ok((res, slice)) = read else { return };
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match parse(&buf) {
            Parsed::Complete(r) => break r,
            Parsed::Partial => continue,
            Parsed::Bad(why) => {
                let body = json!({ "error": why }).to_string();
                return respond(&mut stream, 400, "application/json", body.as_bytes()).await;
            }
        }
    };
    let (status, ctype, body) = route(&request, &shared);
    respond(&mut stream, status, ctype, body.as_bytes()).await;
}

pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

enum Parsed {
    Complete(Request),
    Partial,
    Bad(String),
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let len = match lb_common::http::content_length(req.headers) {
                Ok(l) => l.unwrap_or(0) as usize,
                Err(e) => return Parsed::Bad(e.to_string()),
            };
            if n + len > MAX_REQUEST {
                return Parsed::Bad("request too large".into());
            }
            if buf.len() < n + len {
                return Parsed::Partial;
            }
            Parsed::Complete(Request {
                method: req.method.unwrap_or("").to_string(),
                path: req
                    .path
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string(),
                body: buf[n..n + len].to_vec(),
            })
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Bad(format!("malformed request: {e}")),
    }
}

async fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) {
    let mut out = Vec::with_capacity(body.len() + 128);
    lb_common::http::write_response(&mut out, status, ctype, body, false);
    let _ = stream.write_all(out).await;
}

const JSON: &str = "application/json";

fn error(status: u16, msg: impl std::fmt::Display) -> (u16, &'static str, String) {
    (
        status,
        JSON,
        json!({ "error": msg.to_string() }).to_string(),
    )
}

fn set_error(e: SetError) -> (u16, &'static str, String) {
    match e {
        SetError::NotFound(_) => error(404, e),
        SetError::Exists(_) => error(409, e),
        SetError::Invalid(_) => error(400, e),
    }
}

fn changed(generation: u64) -> (u16, &'static str, String) {
    (
        200,
        JSON,
        json!({ "ok": true, "generation": generation }).to_string(),
    )
}

/// Pure request -> response, so it is tested without sockets.
pub fn route(req: &Request, shared: &Shared) -> (u16, &'static str, String) {
    let segs: Vec<&str> = req
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["health"]) => (
            200,
            JSON,
            json!({ "status": if shared.lifecycle.stopping() { "stopping" } else { "ok" }, "generation": shared.set.generation() }).to_string(),
        ),
        ("GET", ["lb", "stats"]) => (200, JSON, stats(shared).to_string()),
        ("GET", ["metrics"]) => (200, "text/plain; version=0.0.4", metrics(shared)),
        ("GET", ["lb", "backends"]) => (200, JSON, json!(backends_json(shared)).to_string()),
        ("POST", ["lb", "backends"]) => match add_backend(&req.body) {
            Ok(cfg) => match shared.set.add(&cfg) {
                Ok(g) => {
                    tracing::info!(backend = %cfg.name, address = %cfg.address, weight = cfg.weight, generation = g, "admin: backend added");
                    (201, JSON, json!({ "ok": true, "generation": g, "name": cfg.name }).to_string())
                }
                Err(e) => set_error(e),
            },
            Err(e) => error(400, e),
        },
        ("DELETE", ["lb", "backends", name]) => match shared.set.remove(name) {
            Ok(g) => {
                tracing::info!(backend = %name, generation = g, "admin: backend removed (open connections finish)");
                changed(g)
            }
            Err(e) => set_error(e),
        },
        ("PUT", ["lb", "backends", name, "weight"]) => {
            let weight = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.get("weight").and_then(Value::as_u64));
            match weight {
                Some(w) if w <= u32::MAX as u64 => match shared.set.set_weight(name, w as u32) {
                    Ok(g) => {
                        tracing::info!(backend = %name, weight = w, generation = g, "admin: weight changed");
                        changed(g)
                    }
                    Err(e) => set_error(e),
                },
                _ => error(400, format!("body must be {{\"weight\": N}} with N from 1 to {MAX_WEIGHT}")),
            }
        }
        ("POST", ["lb", "backends", name, action @ ("drain" | "undrain")]) => {
            let state = if *action == "drain" { AdminState::Draining } else { AdminState::Active };
            match shared.set.set_admin(name, state) {
                Ok(g) => {
                    tracing::info!(backend = %name, action = %action, generation = g, "admin: backend state changed");
                    changed(g)
                }
                Err(e) => set_error(e),
            }
        }
        (_, ["health"] | ["metrics"] | ["lb", ..]) => error(405, format!("{} is not allowed on {}", req.method, req.path)),
        _ => error(404, format!("no such endpoint: {}", req.path)),
    }
}

fn add_backend(body: &[u8]) -> Result<BackendConfig, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let address = v
        .get("address")
        .and_then(Value::as_str)
        .ok_or("body needs \"address\": \"host:port\"")?;
    let addr = lb_common::net::parse_addr(address)?;
    if addr.port() == 0 {
        return Err(format!("address '{address}' has port 0"));
    }
    let weight = match v.get("weight") {
        None => DEFAULT_WEIGHT,
        Some(w) => w
            .as_u64()
            .filter(|w| (1..=MAX_WEIGHT as u64).contains(w))
            .ok_or(format!("weight must be a number from 1 to {MAX_WEIGHT}"))?
            as u32,
    };
    let name = match v.get("name") {
        None => address.trim().to_string(),
        Some(n) => n
            .as_str()
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or("name must be a non-empty string without '/'")?
            .to_string(),
    };
    Ok(BackendConfig {
        name,
        address: addr,
        weight,
    })
}

fn backends_json(shared: &Shared) -> Vec<Value> {
    let snap = shared.set.load();
    snap.backends
        .iter()
        .map(|b| {
            let t = b.counters.totals();
            json!({
                "name": b.name,
                "address": b.address.to_string(),
                "state": b.state_name(),
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
            json!({ "core": i, "accepted": c.accepted, "active": c.active, "no_backend": c.no_backend })
        })
        .collect();
    json!({
        "algorithm": shared.config.algorithm.name(),
        "listen": shared.listen.to_string(),
        "uptime_s": shared.lifecycle.uptime().as_secs_f64(),
        "generation": shared.set.generation(),
        "stopping": shared.lifecycle.stopping(),
        "backends": backends_json(shared),
        "cores": cores,
    })
}

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
