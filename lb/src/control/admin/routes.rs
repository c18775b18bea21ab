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
use crate::shared::Shared;

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
}

/// `PUT /lb/backends/NAME/weight`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetWeight {
    weight: u32,
}

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

/// Adds the backend `add` once its address resolved to `addr`.
pub fn add_backend(shared: &Shared, add: &AddBackend, addr: SocketAddr) -> Response {
    if addr.port() == 0 {
        return Response::error(400, format!("address '{}' has port 0", add.address));
    }
    if is_own_address(addr, &shared.own_addresses) {
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
    let cfg = BackendConfig {
        name,
        address: addr,
        weight: add.weight.unwrap_or(DEFAULT_WEIGHT),
    };
    match shared.set.add(&cfg) {
        Ok(g) => {
            tracing::info!(backend = ?cfg.name, address = %cfg.address, weight = cfg.weight, generation = g, "admin: backend added");
            Response::json(
                201,
                json!({ "ok": true, "generation": g, "name": cfg.name }).to_string(),
            )
        }
        Err(e) => set_error(e),
    }
}

/// Every route but `POST /lb/backends`, whose address lookup the caller does first.
pub fn route(req: &Request, shared: &Arc<Shared>) -> Response {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["health"]) => {
            let stopping = shared.lifecycle.stopping();
            Response::json(
                // A balancer or Kubernetes probe in front of lb must see the drain.
                if stopping { 503 } else { 200 },
                json!({ "status": if stopping { "stopping" } else { "ok" }, "generation": shared.set.generation() }).to_string(),
            )
        }
        ("GET", ["lb", "stats"]) => Response::json(200, stats::stats(shared).to_string()),
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::metrics(shared),
            headers: Vec::new(),
        },
        ("GET", ["lb", "backends"]) => {
            Response::json(200, json!(stats::backends_json(shared)).to_string())
        }
        ("DELETE", ["lb", "backends", name]) => {
            let from_file = shared
                .set
                .load()
                .backends
                .iter()
                .any(|b| b.name == *name && b.origin == crate::shared::set::Origin::Config);
            match shared.set.remove(name) {
                Ok(g) => {
                    if from_file {
                        tracing::info!(backend = ?name, generation = g, "admin: backend removed (open connections finish); it is in the config file, so a reload brings it back");
                    } else {
                        tracing::info!(backend = ?name, generation = g, "admin: backend removed (open connections finish)");
                    }
                    changed(g)
                }
                Err(e) => set_error(e),
            }
        }
        ("DELETE", ["lb", "backends", name, "weight"]) => match shared.set.clear_weight(name) {
            Ok(g) => {
                tracing::info!(backend = ?name, generation = g, "admin: weight set through the API dropped; the configured one is in force");
                changed(g)
            }
            Err(e) => set_error(e),
        },
        ("PUT", ["lb", "backends", name, "weight"]) => {
            match serde_json::from_slice::<SetWeight>(&req.body) {
                Ok(SetWeight { weight }) => match shared.set.set_weight(name, weight) {
                    Ok(g) => {
                        tracing::info!(backend = ?name, weight, generation = g, "admin: weight changed");
                        changed(g)
                    }
                    Err(e) => set_error(e),
                },
                Err(_) => Response::error(
                    400,
                    format!("body must be {{\"weight\": N}} with N from 1 to {MAX_WEIGHT}"),
                ),
            }
        }
        ("POST", ["lb", "backends", name, action @ ("drain" | "undrain")]) => {
            let state = if *action == "drain" {
                AdminState::Draining
            } else {
                AdminState::Active
            };
            match shared.set.set_admin(name, state) {
                Ok(g) => {
                    tracing::info!(backend = ?name, action = %action, generation = g, "admin: backend state changed");
                    changed(g)
                }
                Err(e) => set_error(e),
            }
        }
        (_, ["health"] | ["metrics"] | ["lb", ..]) => Response::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => Response::error(404, format!("no such endpoint: {}", req.path)),
    }
}
