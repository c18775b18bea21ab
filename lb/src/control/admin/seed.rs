//! Seed 003's replica API on the admin listener, with its JSON shapes:
//!
//! - `GET /rep`: `{"message": {"N": 3, "replicas": ["s1", "s2", "s3"]}, "status": "successful"}`
//!   (the backends of the service `default`, or the only one);
//! - `POST /add {"n": 2, "hostnames": ["s4"]}`: starts n new local replicas (the `backend` binary
//!   beside lb, or `replicas.command`), named from `hostnames` and then `s<k>`, each on a free
//!   loopback port, adds them to the service once they listen, answers like `/rep`;
//! - `DELETE /rm {"n": 1, "hostnames": ["s4"]}`: removes n backends, the named ones first, then
//!   the newest local replicas, and stops the replicas' processes; answers like `/rep`.
//!
//! More hostnames than n is a 400 with the seed's error shape:
//! `{"message": "<Error> ...", "status": "failure"}`. The replicas added here are admin-API
//! backends: a reload keeps them, `/rm` (or `DELETE /lb/backends/NAME`) removes them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use crate::config::backends::check_name;
use crate::config::{BackendConfig, ReplicaSpec, DEFAULT_WEIGHT};
use crate::shared::Service;

use super::request::Request;
use super::routes::Response;
use super::Ctx;

/// How long a new replica may take to listen.
const START_WAIT: Duration = Duration::from_secs(5);
/// Replicas one request may start.
const MAX_ADD: usize = 32;

#[derive(Debug, Deserialize)]
struct Change {
    n: usize,
    #[serde(default)]
    hostnames: Vec<String>,
}

fn failure(msg: &str) -> Response {
    Response::json(
        400,
        json!({ "message": format!("<Error> {msg}"), "status": "failure" }).to_string(),
    )
}

fn replicas(svc: &Service) -> Response {
    let names: Vec<String> = svc
        .set
        .load()
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    Response::json(
        200,
        json!({ "message": { "N": names.len(), "replicas": names }, "status": "successful" })
            .to_string(),
    )
}

/// The seed's routes, or None for any other request.
pub async fn handle(req: &Request, ctx: &Ctx) -> Option<Response> {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let (method, path) = (req.method.as_str(), segs.as_slice());
    if !matches!(
        (method, path),
        ("GET", ["rep"]) | ("POST", ["add"]) | ("DELETE", ["rm"])
    ) {
        return None;
    }
    let Some(svc) = ctx.shared.default_service() else {
        return Some(failure(
            "lb serves several services and none is named default: use /lb/services/NAME/backends",
        ));
    };
    if method == "GET" {
        return Some(replicas(&svc));
    }
    let change: Change = match serde_json::from_slice(&req.body) {
        Ok(c) => c,
        Err(e) => {
            return Some(failure(&format!(
                "body must be {{\"n\": N, \"hostnames\": [...]}}: {e}"
            )))
        }
    };
    if change.hostnames.len() > change.n {
        return Some(failure(if method == "POST" {
            "Length of hostname list is more than newly added instances"
        } else {
            "Length of hostname list is more than removable instances"
        }));
    }
    Some(if method == "POST" {
        add(ctx, &svc, change).await
    } else {
        remove(ctx, &svc, change)
    })
}

async fn add(ctx: &Ctx, svc: &Service, change: Change) -> Response {
    if change.n > MAX_ADD {
        return failure(&format!("at most {MAX_ADD} replicas per request"));
    }
    if !ctx.replicas.can_start() {
        return failure(
            "no `backend` binary beside lb and no replicas.command: lb cannot start replicas",
        );
    }
    let taken = |name: &str| svc.set.load().find(name).is_some();
    let mut names = Vec::with_capacity(change.n);
    for h in &change.hostnames {
        if let Err(e) = check_name("hostnames", h) {
            return failure(&e.to_string());
        }
        if taken(h) || names.contains(h) {
            return failure(&format!("a backend named {h:?} already exists"));
        }
        names.push(h.clone());
    }
    let mut k = 1;
    while names.len() < change.n {
        let name = format!("s{k}");
        if !taken(&name) && !names.contains(&name) {
            names.push(name);
        }
        k += 1;
    }
    for name in names {
        let addr = match free_port() {
            Ok(a) => a,
            Err(e) => return failure(&format!("no free port for {name}: {e}")),
        };
        let spec = ReplicaSpec {
            id: name.clone(),
            addr,
        };
        if let Err(e) = ctx.replicas.add(spec) {
            return failure(&format!("cannot start replica {name}: {e}"));
        }
        // Into the set once it listens, so that no client is sent to it before.
        let deadline = Instant::now() + START_WAIT;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(20)).is_err() {
            if Instant::now() > deadline {
                ctx.replicas.remove(&name);
                return failure(&format!(
                    "replica {name} did not listen on {addr} within {} s",
                    START_WAIT.as_secs()
                ));
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let cfg = BackendConfig::new(name.clone(), addr, DEFAULT_WEIGHT);
        if let Err(e) = svc.set.add(&cfg) {
            ctx.replicas.remove(&name);
            return failure(&e.to_string());
        }
        tracing::info!(service = %svc.name, backend = ?name, %addr, "seed API /add: replica started and added");
    }
    replicas(svc)
}

fn remove(ctx: &Ctx, svc: &Service, change: Change) -> Response {
    let present: Vec<String> = svc
        .set
        .load()
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    for h in &change.hostnames {
        if !present.contains(h) {
            return failure(&format!("no backend named {h:?}"));
        }
    }
    if change.n > present.len() {
        return failure(&format!("only {} backends to remove", present.len()));
    }
    let mut victims = change.hostnames.clone();
    // Then the newest local replicas, then the last backends.
    let local: Vec<String> = ctx
        .replicas
        .specs()
        .into_iter()
        .map(|s| s.id)
        .rev()
        .collect();
    for name in local.iter().chain(present.iter().rev()) {
        if victims.len() >= change.n {
            break;
        }
        if present.contains(name) && !victims.contains(name) {
            victims.push(name.clone());
        }
    }
    for name in victims {
        if let Err(e) = svc.set.remove(&name) {
            return failure(&e.to_string());
        }
        let stopped = ctx.replicas.remove(&name);
        tracing::info!(service = %svc.name, backend = ?name, stopped, "seed API /rm: backend removed");
    }
    replicas(svc)
}

/// A loopback port nobody listens on now.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}
