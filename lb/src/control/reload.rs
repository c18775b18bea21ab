//! Reload on SIGHUP: re-read the config file and apply what can change without a restart:
//! services and listeners come and go (the others' open connections untouched), a service's
//! backends, algorithm and settings change, a listener's routes and PROXY settings change.
//!
//! The file is the base; the admin API's changes (backends it added, weights it set, drains) and
//! the addresses discovered for `discover = true` entries still in the file stay on top of it
//! and are logged as kept. A file that would need local replicas lb did not start is refused.
//! Everything that can fail (binding a new listener) happens before anything is changed.

use std::net::TcpListener as StdListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::config::backends::is_own_address;
use crate::config::{Config, FileConfig, Overrides};
use crate::shared::set::Override;
use crate::shared::{Listener, ReloadReport, Routing, Service, Shared};

/// Re-reads `shared.config.source` with the same environment and command-line overrides and
/// applies it. Returns the routing generation in force, or why nothing changed. An invalid file
/// leaves the running configuration untouched.
pub fn reload(shared: &Shared, overrides: &Overrides) -> Result<u64, String> {
    let r = apply_file(shared, overrides);
    let report = match &r {
        Ok((generation, not_applied)) => ReloadReport {
            at_uptime_s: shared.lifecycle.uptime().as_secs_f64(),
            ok: true,
            generation: Some(*generation),
            error: None,
            not_applied: not_applied.iter().map(|k| k.to_string()).collect(),
        },
        Err(e) => ReloadReport {
            at_uptime_s: shared.lifecycle.uptime().as_secs_f64(),
            ok: false,
            generation: None,
            error: Some(e.clone()),
            not_applied: Vec::new(),
        },
    };
    *shared.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    r.map(|(g, _)| g)
}

/// The keys that changed in the file but apply only at a restart (or an upgrade, which is one).
pub fn restart_only(old: &Config, next: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let (o, n) = (old, next);
    for (changed, key) in [
        (o.cores != n.cores, "cores"),
        (o.pin != n.pin, "pin"),
        (o.admin.listen != n.admin.listen, "admin.listen"),
        (
            o.admin.unix_socket != n.admin.unix_socket,
            "admin.unix_socket",
        ),
        (
            o.admin.max_connections != n.admin.max_connections,
            "admin.max_connections",
        ),
        (o.relay.mode != n.relay.mode, "relay.mode"),
        (
            o.relay.buffer_size != n.relay.buffer_size,
            "relay.buffer_size",
        ),
        (o.relay.max_head != n.relay.max_head, "relay.max_head"),
        (o.relay.backlog != n.relay.backlog, "relay.backlog"),
        (
            o.relay.peek_memory != n.relay.peek_memory,
            "relay.peek_memory",
        ),
        (
            o.pool.idle_per_backend != n.pool.idle_per_backend,
            "pool.idle_per_backend",
        ),
        (o.pool.max_age != n.pool.max_age, "pool.max_age_ms"),
    ] {
        if changed {
            keys.push(key);
        }
    }
    keys
}

fn apply_file(shared: &Shared, overrides: &Overrides) -> Result<(u64, Vec<&'static str>), String> {
    let Some(path) = shared.config.source.clone() else {
        return Err("lb was started without --config: there is no file to re-read".into());
    };
    let file: FileConfig = Config::read_file(&path).map_err(|e| e.to_string())?;
    let next = Config::build(file, overrides.clone(), Some(path)).map_err(|e| e.to_string())?;
    let old = &shared.config;
    if next.replicas.specs != old.replicas.specs {
        return Err(if old.replicas.is_empty() {
            format!(
                "the file would need {} local replicas (it lists no backend), which lb did not start: list the backends, or restart lb to let it start replicas",
                next.replicas.len()
            )
        } else {
            "the file changes lb's local replicas, which only a restart can do".to_string()
        });
    }
    super::kernel::refuse_reload(shared, &next)?;
    let cur = shared.routing.load_full();

    // Listeners: kept by name while their address stays; the new ones bound now.
    let mut listeners: Vec<Arc<Listener>> = Vec::new();
    let mut fresh: Vec<(Arc<Listener>, Vec<StdListener>)> = Vec::new();
    for l in &next.listeners {
        match cur.listener(&l.name) {
            Some(o) if o.config.load().address == l.address => {
                o.config.store(Arc::new(l.clone()));
                listeners.push(o.clone());
            }
            _ => {
                let socks =
                    lb_common::net::ListenerGroup::bind(l.address, old.cores, old.relay.backlog)
                        .map_err(|e| format!("listener '{}': {e}", l.name))?
                        .into_listeners();
                let bound = socks[0].local_addr().map_err(|e| e.to_string())?;
                let n = Arc::new(Listener::new(
                    l.clone(),
                    bound,
                    socks.iter().map(|s| s.as_raw_fd()).collect(),
                    old.cores,
                ));
                listeners.push(n.clone());
                fresh.push((n, socks));
            }
        }
    }
    let own: Vec<_> = listeners
        .iter()
        .map(|l| l.address)
        .chain(shared.admin_address)
        .collect();
    for s in &next.services {
        if let Some(b) = s.backends.iter().find(|b| is_own_address(b.address, &own)) {
            return Err(format!(
                "service '{}': backend '{}' at {} is lb's own listen or admin address",
                s.name, b.name, b.address
            ));
        }
    }
    // The access log's new file is opened before anything changes: a path lb cannot write
    // refuses the whole reload.
    shared
        .access
        .apply(&next.access_log)
        .map_err(|e| e.to_string())?;
    let restart_only = restart_only(old, &next);
    if !restart_only.is_empty() {
        tracing::warn!(keys = %restart_only.join(", "), "these keys changed but only take effect after a restart or upgrade");
    }

    // Services: kept by name (their backends, counters and each core's view of them survive),
    // with the new settings and backends; the new ones start fresh.
    let mut services: Vec<Arc<Service>> = Vec::new();
    for s in &next.services {
        match cur.service(&s.name) {
            Some(o) => {
                let specs: Vec<String> = s.discover.iter().map(|d| d.name.clone()).collect();
                if let Err(e) = o.set.reconfigure(s.algorithm, s.hash) {
                    tracing::error!(service = %s.name, error = %e, "the service keeps its algorithm");
                }
                if let Err(e) = o.set.replace(&s.backends, &specs) {
                    tracing::error!(service = %s.name, error = %e, "the service keeps its backends");
                }
                o.discover.store(Arc::new(s.discover.clone()));
                o.config.store(Arc::new(s.clone()));
                log_overrides(o);
                services.push(o.clone());
            }
            None => {
                tracing::info!(service = %s.name, backends = s.backends.len(), "reload: service added");
                services.push(Arc::new(Service::new(s.clone(), old.cores)));
            }
        }
    }
    for o in &cur.services {
        if !services.iter().any(|s| s.name == o.name) {
            tracing::info!(service = %o.name, "reload: service removed (its open connections finish)");
        }
    }
    for o in &cur.listeners {
        if !listeners.iter().any(|l| Arc::ptr_eq(l, o)) {
            tracing::info!(listener = %o.name, address = %o.address, "reload: listener removed (its open connections finish)");
            o.close();
        }
    }
    shared.live.store(Arc::new(next.clone()));
    let generation = cur.generation + 1;
    shared.routing.store(Arc::new(Routing {
        generation,
        services,
        listeners,
    }));
    // The workers pick the new listeners up from their inboxes (socket i to core i mod cores).
    for (l, socks) in fresh {
        tracing::info!(listener = %l.name, address = %l.address, "reload: listener added");
        for (i, s) in socks.into_iter().enumerate() {
            shared.inbox[i % old.cores]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((l.clone(), s));
        }
    }
    Ok((generation, restart_only))
}

fn log_overrides(svc: &Service) {
    for o in svc.set.overrides() {
        match o {
            Override::Added { backend } => {
                tracing::info!(service = %svc.name, backend = ?backend, "reload kept a backend added through the admin API (DELETE .../backends/NAME removes it)")
            }
            Override::Weight {
                backend,
                weight,
                file,
            } => {
                tracing::info!(service = %svc.name, backend = ?backend, weight, file_weight = file, "reload kept a weight set through the admin API (DELETE .../backends/NAME/weight restores the file's)")
            }
            Override::Drained { backend } => {
                tracing::info!(service = %svc.name, backend = ?backend, "reload kept a drain set through the admin API (POST .../backends/NAME/undrain ends it)")
            }
        }
    }
}
