//! The run-time state a binary upgrade carries from the old process to the new one, so that an
//! upgrade loses nothing an operator did or lb learned: backends added through the admin API,
//! weights it set, drains, health states, passive ejections, and the addresses discovery found.
//! The configuration itself comes from the new process's own file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::BackendConfig;
use crate::shared::set::{AdminState, Health, Origin};
use crate::shared::{Service, Shared};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub services: Vec<CarriedService>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedService {
    pub name: String,
    pub backends: Vec<CarriedBackend>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedBackend {
    pub name: String,
    pub address: String,
    /// `config`, `api` or `discovered:SPEC`.
    pub origin: String,
    pub config_weight: u32,
    pub api_weight: Option<u32>,
    pub drained: bool,
    pub down: bool,
    /// Longest passive ejection left on any core, in ms (0: none).
    pub ejected_ms: u64,
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// A drain's deadline, in ms from the handover.
    #[serde(default)]
    pub drain_deadline_ms: Option<u64>,
}

/// What this process would hand over now.
pub fn collect(shared: &Shared) -> Carried {
    let now = Instant::now();
    let routing = shared.routing.load();
    Carried {
        services: routing
            .services
            .iter()
            .map(|s| CarriedService {
                name: s.name.clone(),
                backends: s
                    .set
                    .load()
                    .backends
                    .iter()
                    .map(|b| CarriedBackend {
                        name: b.name.clone(),
                        address: b.address.to_string(),
                        origin: match &b.origin {
                            Origin::Config => "config".into(),
                            Origin::Api => "api".into(),
                            Origin::Discovered(spec) => format!("discovered:{spec}"),
                        },
                        config_weight: b.config_weight,
                        api_weight: b.api_weight,
                        drained: b.admin == AdminState::Draining,
                        down: b.health == Health::Down,
                        ejected_ms: b
                            .counters
                            .ejected_left(now)
                            .map_or(0, |d| d.as_millis() as u64),
                        max_connections: b.max_connections,
                        drain_deadline_ms: b
                            .drain_deadline
                            .map(|d| d.saturating_duration_since(now).as_millis() as u64),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Applies what the old process handed over to this one's services (those of the same name):
/// adds the backends the API added and the addresses discovery found (for entries still
/// configured), restores API weights, drains and DOWN states, and the passive ejections on
/// every core. Returns what was restored, one line each, for the log.
pub fn apply(shared: &Shared, carried: &Carried) -> Vec<String> {
    let mut done = Vec::new();
    let routing = shared.routing.load();
    let now = Instant::now();
    for cs in &carried.services {
        let Some(svc) = routing.service(&cs.name) else {
            done.push(format!(
                "service {:?} is not in this configuration: its state is dropped",
                cs.name
            ));
            continue;
        };
        apply_service(svc, cs, now, &mut done);
    }
    done
}

fn apply_service(svc: &Arc<Service>, cs: &CarriedService, now: Instant, done: &mut Vec<String>) {
    let specs: Vec<String> = svc.discover.load().iter().map(|d| d.name.clone()).collect();
    for b in &cs.backends {
        let present = svc.set.load().find(&b.name).is_some();
        if !present {
            let origin = match b.origin.as_str() {
                "api" => Origin::Api,
                o => match o.strip_prefix("discovered:") {
                    Some(spec) if specs.iter().any(|s| s == spec) => {
                        Origin::Discovered(spec.into())
                    }
                    _ => continue,
                },
            };
            let Ok(address) = b.address.parse() else {
                continue;
            };
            let cfg = BackendConfig {
                max_connections: b.max_connections,
                ..BackendConfig::new(b.name.clone(), address, b.config_weight)
            };
            let backend = svc.set.new_backend(&cfg, origin.clone());
            let added = svc.set.update(|v| {
                if v.iter().any(|x| x.name == cfg.name) {
                    return Ok(false);
                }
                v.push(backend);
                Ok(true)
            });
            if added.is_ok() {
                done.push(format!(
                    "{}: backend {:?} ({:?}) kept",
                    svc.name, b.name, origin
                ));
            }
        }
        if let Some(w) = b.api_weight {
            if svc.set.set_weight(&b.name, w).is_ok() {
                done.push(format!("{}: weight {w} of {:?} kept", svc.name, b.name));
            }
        }
        let deadline = b
            .drain_deadline_ms
            .map(|ms| Instant::now() + std::time::Duration::from_millis(ms));
        if b.drained && svc.set.drain(&b.name, deadline).is_ok() {
            done.push(format!("{}: drain of {:?} kept", svc.name, b.name));
        }
        if b.down && svc.set.set_health(&b.name, Health::Down).is_ok() {
            done.push(format!(
                "{}: {:?} stays DOWN until its checks pass",
                svc.name, b.name
            ));
        }
        if b.ejected_ms > 0 {
            if let Some(x) = svc.set.load().backends.iter().find(|x| x.name == b.name) {
                let until = now + Duration::from_millis(b.ejected_ms);
                for core in 0..x.counters.cores() {
                    x.counters.ejected(core, until);
                }
                done.push(format!(
                    "{}: passive ejection of {:?} kept for {} ms",
                    svc.name, b.name, b.ejected_ms
                ));
            }
        }
    }
}
