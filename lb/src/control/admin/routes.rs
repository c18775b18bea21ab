//! Admin routes: request -> response, pure so that they are tested without sockets.
//!
//! - `GET /health` lb itself; `GET /lb/stats` JSON; `GET /metrics` Prometheus text format
//! - `GET /lb/backends`; `POST /lb/backends` `{"address": "h:p", "name"?: "", "weight"?: 1}`
//! - `DELETE /lb/backends/NAME`; `PUT /lb/backends/NAME/weight` `{"weight": N}`;
//!   `DELETE /lb/backends/NAME/weight` (back to the configured weight)
//! - `POST /lb/backends/NAME/drain`, `POST /lb/backends/NAME/undrain`

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::config::backends::{check_name, is_own_address};
use crate::config::{BackendConfig, DEFAULT_WEIGHT, MAX_WEIGHT};
use crate::shared::set::{AdminState, SetError};
use crate::shared::{Service, Shared};

use super::request::Request;
use super::{metrics, stats};

pub const JSON: &str = "application/json";

/// An answer: status, content type, body, extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: JSON,
            body,
            headers: Vec::new(),
        }
    }

    pub fn error(status: u16, msg: impl std::fmt::Display) -> Response {
        let mut r = Response::json(status, json!({ "error": msg.to_string() }).to_string());
        if status == 401 {
            r.headers
                .push(("WWW-Authenticate", "Bearer realm=\"lb admin\"".into()));
        }
        r
    }
}

fn set_error(e: SetError) -> Response {
    match e {
        SetError::NotFound(_) => Response::error(404, e),
        SetError::Exists(_) => Response::error(409, e),
        SetError::Invalid(_) => Response::error(400, e),
    }
}

fn changed(generation: u64) -> Response {
    Response::json(
        200,
        json!({ "ok": true, "generation": generation }).to_string(),
    )
}

/// `POST /lb/backends`, before its address is resolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBackend {
    pub address: String,
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub max_connections: Option<u32>,
}

/// `PUT /lb/backends/NAME/weight`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetWeight {
    weight: u32,
}

/// The optional body of `POST /lb/backends/NAME/drain`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Drain {
    /// Close the connections still open after this long (absent: they may finish).
    deadline_ms: Option<u64>,
}

/// The largest drain deadline: a day.
const MAX_DRAIN_DEADLINE_MS: u64 = 86_400_000;

/// The body of `POST /lb/backends`, checked except for its address (resolved off this thread).
pub fn parse_add(body: &[u8]) -> Result<AddBackend, String> {
    let add: AddBackend = serde_json::from_slice(body).map_err(|e| {
        format!(
            "body must be {{\"address\": \"host:port\", \"name\"?: \"...\", \"weight\"?: N}}: {e}"
        )
    })?;
    if let Some(n) = &add.name {
        check_name("name", n).map_err(|e| e.to_string())?;
    }
    if let Some(w) = add.weight {
        if !(1..=MAX_WEIGHT).contains(&w) {
            return Err(format!("weight must be a number from 1 to {MAX_WEIGHT}"));
        }
    }
    Ok(add)
}

/// A backend route's service and the rest of its path, or the error answer.
pub type Scope<'a> = Result<(Arc<Service>, &'a [&'a str]), Response>;

/// Which service a backend route acts on: `/lb/services/NAME/backends...`, or
/// `/lb/backends...` for `default` (or the only service). The rest of the path after `backends`.
pub fn backend_scope<'a>(shared: &Shared, segs: &'a [&'a str]) -> Option<Scope<'a>> {
    let (svc, rest) = match segs {
        ["lb", "backends", rest @ ..] => (None, rest),
        ["lb", "services", name, "backends", rest @ ..] => (Some(*name), rest),
        _ => return None,
    };
    let routing = shared.routing.load();
    Some(match svc {
        Some(name) => routing
            .service(name)
            .cloned()
            .map(|s| (s, rest))
            .ok_or_else(|| Response::error(404, format!("no service named {name:?}"))),
        None => routing.default_service().cloned().map(|s| (s, rest)).ok_or_else(|| {
            Response::error(
                404,
                "lb serves several services and none is named default: use /lb/services/NAME/backends",
            )
        }),
    })
}

/// Adds the backend `add` to `svc` once its address resolved to `addr`.
pub fn add_backend(shared: &Shared, svc: &Service, add: &AddBackend, addr: SocketAddr) -> Response {
    if addr.port() == 0 {
        return Response::error(400, format!("address '{}' has port 0", add.address));
    }
    if is_own_address(addr, &shared.own_addresses()) {
        return Response::error(
            400,
            format!(
                "{addr} is one of lb's own listen or admin addresses: a client sent there would loop through lb"
            ),
        );
    }
    let name = add
        .name
        .clone()
        .unwrap_or_else(|| add.address.trim().to_string());
    if let Err(e) = check_name("name", &name) {
        return Response::error(400, format!("{e}; give the backend a \"name\""));
    }
    if add.max_connections == Some(0) {
        return Response::error(
            400,
            "max_connections must be at least 1 (leave it out for no limit)",
        );
    }
    let cfg = BackendConfig {
        max_connections: add.max_connections,
        ..BackendConfig::new(name, addr, add.weight.unwrap_or(DEFAULT_WEIGHT))
    };
    match svc.set.add(&cfg) {
        Ok(g) => {
            tracing::info!(service = %svc.name, backend = ?cfg.name, address = %cfg.address, weight = cfg.weight, generation = g, "admin: backend added");
            Response::json(
                201,
                json!({ "ok": true, "generation": g, "name": cfg.name, "service": svc.name })
                    .to_string(),
            )
        }
        Err(e) => set_error(e),
    }
}

/// Every route but `POST .../backends`, whose address lookup the caller does first.
pub fn route(req: &Request, shared: &Arc<Shared>) -> Response {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    if let Some(scope) = backend_scope(shared, &segs) {
        return match scope {
            Ok((svc, rest)) => backend_route(req, &svc, rest),
            Err(r) => r,
        };
    }
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["health"]) => {
            let l = &shared.lifecycle;
            let status = if l.stopping() {
                "stopping"
            } else if l.draining() {
                "draining"
            } else {
                "ok"
            };
            Response::json(
                // A balancer or Kubernetes probe in front of lb must see the drain.
                if status == "ok" { 200 } else { 503 },
                json!({ "status": status, "generation": shared.routing.load().generation })
                    .to_string(),
            )
        }
        ("GET", ["lb", "stats"]) => Response::json(200, stats::stats(shared).to_string()),
        ("GET", ["lb", "services"]) => {
            Response::json(200, json!(stats::services_json(shared)).to_string())
        }
        ("GET", ["lb", "services", name]) => match shared.routing.load().service(name) {
            Some(s) => Response::json(200, json!(stats::service_json(shared, s)).to_string()),
            None => Response::error(404, format!("no service named {name:?}")),
        },
        ("GET", ["lb", "listeners"]) => {
            Response::json(200, json!(stats::listeners_json(shared)).to_string())
        }
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::metrics(shared),
            headers: Vec::new(),
        },
        (_, ["health"] | ["metrics"] | ["lb", ..]) => Response::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => Response::error(404, format!("no such endpoint: {}", req.path)),
    }
}

/// `.../backends...` of one service.
fn backend_route(req: &Request, svc: &Service, rest: &[&str]) -> Response {
    let set = &svc.set;
    match (req.method.as_str(), rest) {
        ("GET", []) => Response::json(200, json!(stats::backends_json_of(svc)).to_string()),
        ("DELETE", [name]) => {
            let from_file = set
                .load()
                .backends
                .iter()
                .any(|b| b.name == *name && b.origin == crate::shared::set::Origin::Config);
            match set.remove(name) {
                Ok(g) => {
                    if from_file {
                        tracing::info!(service = %svc.name, backend = ?name, generation = g, "admin: backend removed (open connections finish); it is in the config file, so a reload brings it back");
                    } else {
                        tracing::info!(service = %svc.name, backend = ?name, generation = g, "admin: backend removed (open connections finish)");
                    }
                    changed(g)
                }
                Err(e) => set_error(e),
            }
        }
        ("DELETE", [name, "weight"]) => match set.clear_weight(name) {
            Ok(g) => {
                tracing::info!(service = %svc.name, backend = ?name, generation = g, "admin: weight set through the API dropped; the configured one is in force");
                changed(g)
            }
            Err(e) => set_error(e),
        },
        ("PUT", [name, "weight"]) => match serde_json::from_slice::<SetWeight>(&req.body) {
            Ok(SetWeight { weight }) => match set.set_weight(name, weight) {
                Ok(g) => {
                    tracing::info!(service = %svc.name, backend = ?name, weight, generation = g, "admin: weight changed");
                    changed(g)
                }
                Err(e) => set_error(e),
            },
            Err(_) => Response::error(
                400,
                format!("body must be {{\"weight\": N}} with N from 1 to {MAX_WEIGHT}"),
            ),
        },
        ("POST", [name, "drain"]) => {
            let body = if req.body.iter().all(u8::is_ascii_whitespace) {
                Ok(Drain::default())
            } else {
                serde_json::from_slice::<Drain>(&req.body)
            };
            let deadline_ms = match body {
                Ok(Drain {
                    deadline_ms: Some(ms),
                }) if ms == 0 || ms > MAX_DRAIN_DEADLINE_MS => {
                    return Response::error(
                        400,
                        format!("deadline_ms must be from 1 to {MAX_DRAIN_DEADLINE_MS}"),
                    )
                }
                Ok(d) => d.deadline_ms,
                Err(_) => {
                    return Response::error(
                        400,
                        "body must be empty or {\"deadline_ms\": N}: close what is still open after N ms",
                    )
                }
            };
            let deadline = deadline_ms
                .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
            match set.drain(name, deadline) {
                Ok(g) => {
                    tracing::info!(service = %svc.name, backend = ?name, deadline_ms, generation = g, "admin: backend draining");
                    changed(g)
                }
                Err(e) => set_error(e),
            }
        }
        ("POST", [name, "undrain"]) => match set.set_admin(name, AdminState::Active) {
            Ok(g) => {
                tracing::info!(service = %svc.name, backend = ?name, generation = g, "admin: backend undrained");
                changed(g)
            }
            Err(e) => set_error(e),
        },
        _ => Response::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        ),
    }
}
