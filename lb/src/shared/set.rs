//! The backend set as published snapshots: the control plane (config reload, health checks,
//! admin API) writes a new immutable [`Snapshot`] with a higher generation; each core picks it up
//! between connections and rebuilds its own balancer. Readers never lock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::counters::BackendCounters;
use crate::balance::{Algorithm, BackendSpec, HashConfig, Table};
use crate::config::BackendConfig;

/// Administrative state, set through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes new connections (when healthy).
    Active,
    /// No new connections; open ones finish.
    Draining,
}

/// Health as seen by the active checker (always `Up` when checks are off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

/// Where a backend came from, which decides what a reload does with it: the file is the base, and
/// what the admin API and discovery added stays on top of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file (or the command line, or lb's own replicas).
    Config,
    /// `POST /lb/backends`: kept across reloads until `DELETE /lb/backends/NAME`.
    Api,
    /// An address of this `discover = true` entry: kept while the entry is in the file.
    Discovered(String),
}

/// One admin-API change that outlives a reload, as `/lb/stats` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Override {
    /// The backend was added through the admin API.
    Added { backend: String },
    /// Its weight was set through the admin API (the file says `file`).
    Weight {
        backend: String,
        weight: u32,
        file: u32,
    },
    /// It was drained through the admin API.
    Drained { backend: String },
}

/// One backend in a snapshot.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    /// The weight in force: the admin API's when it set one, else the configured one.
    pub weight: u32,
    /// The weight the file (or the API's add, or discovery) gave it.
    pub config_weight: u32,
    /// A weight set through the admin API, kept across reloads until deleted.
    pub api_weight: Option<u32>,
    /// Open connections at most, over all cores (None: no limit).
    pub max_connections: Option<u32>,
    pub origin: Origin,
    pub admin: AdminState,
    /// A drain's deadline: its connections still open then are closed (None: they may finish).
    pub drain_deadline: Option<Instant>,
    pub health: Health,
    /// When the backend last became eligible at run time (added, back up, or undrained): slow
    /// start counts from it. `None` for the backends lb started with: no ramp at start-up.
    pub since: Option<Instant>,
    pub counters: Arc<BackendCounters>,
}

impl Backend {
    pub fn eligible(&self) -> bool {
        self.admin == AdminState::Active && self.health == Health::Up
    }

    pub fn state_name(&self) -> &'static str {
        match (self.admin, self.health) {
            (AdminState::Draining, _) => "draining",
            (_, Health::Down) => "down",
            _ => "up",
        }
    }
}

pub struct Snapshot {
    pub generation: u64,
    pub backends: Vec<Backend>,
    /// The hash algorithm's table for these backends (names and weights), built by the writer.
    pub table: Table,
}

impl Snapshot {
    pub fn find(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }
}

/// Why a change to the set was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("no backend named '{0}'")]
    NotFound(String),
    #[error("a backend named '{0}' already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
}

/// The published set plus what writers need to make the next one.
pub struct BackendSet {
    current: ArcSwap<Snapshot>,
    /// Serialises writers (control plane only; the data path never takes it).
    write: Mutex<()>,
    cores: usize,
    /// Which table each snapshot carries (a reload may change it).
    tables: Mutex<(Algorithm, HashConfig)>,
}

/// The names and weights a table is built from.
fn specs(backends: &[Backend]) -> Vec<BackendSpec> {
    backends
        .iter()
        .map(|b| BackendSpec::new(b.name.clone(), b.weight))
        .collect()
}

impl BackendSet {
    /// The set of `backends`, publishing with each snapshot the table `algorithm` needs. The
    /// configuration was checked against the table's bounds, so building it cannot fail here.
    pub fn new(
        backends: &[BackendConfig],
        cores: usize,
        algorithm: Algorithm,
        hash: HashConfig,
    ) -> BackendSet {
        let backends = backends
            .iter()
            .map(|b| Backend {
                name: b.name.clone(),
                address: b.address,
                weight: b.weight,
                config_weight: b.weight,
                api_weight: None,
                max_connections: b.max_connections,
                origin: Origin::Config,
                admin: AdminState::Active,
                drain_deadline: None,
                health: Health::Up,
                since: None,
                counters: Arc::new(BackendCounters::new(cores)),
            })
            .collect::<Vec<_>>();
        let table = Table::build(algorithm, &specs(&backends), &hash).unwrap_or_else(|e| {
            tracing::error!(error = %e, "no table for the configured backends");
            Table::None
        });
        BackendSet {
            current: ArcSwap::from_pointee(Snapshot {
                generation: 1,
                backends,
                table,
            }),
            write: Mutex::new(()),
            cores,
            tables: Mutex::new((algorithm, hash)),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Applies `change` to a copy of the current backends and publishes the result as the next
    /// generation, unless `change` refuses or changes nothing, or the table the result needs is
    /// past its bounds. The table is built here, by the writer, once for all cores; a change of
    /// health or drain keeps the current one. Returns the generation in force.
    pub fn update(
        &self,
        change: impl FnOnce(&mut Vec<Backend>) -> Result<bool, SetError>,
    ) -> Result<u64, SetError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load_full();
        let mut next = cur.backends.clone();
        if !change(&mut next)? {
            return Ok(cur.generation);
        }
        let same_specs = next.len() == cur.backends.len()
            && next
                .iter()
                .zip(&cur.backends)
                .all(|(a, b)| a.name == b.name && a.weight == b.weight);
        let table = if same_specs {
            cur.table.clone()
        } else {
            let (algorithm, hash) = *self.tables.lock().unwrap_or_else(|p| p.into_inner());
            Table::build(algorithm, &specs(&next), &hash)
                .map_err(|e| SetError::Invalid(e.to_string()))?
        };
        let generation = cur.generation + 1;
        self.current.store(Arc::new(Snapshot {
            generation,
            backends: next,
            table,
        }));
        Ok(generation)
    }

    /// Switches the table the snapshots carry to `algorithm` with `hash` (a reload changed the
    /// service's algorithm): publishes a snapshot with the new table when anything changed.
    pub fn reconfigure(&self, algorithm: Algorithm, hash: HashConfig) -> Result<u64, SetError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.current.load_full();
        if *t == (algorithm, hash) {
            return Ok(cur.generation);
        }
        let table = Table::build(algorithm, &specs(&cur.backends), &hash)
            .map_err(|e| SetError::Invalid(e.to_string()))?;
        *t = (algorithm, hash);
        let generation = cur.generation + 1;
        self.current.store(Arc::new(Snapshot {
            generation,
            backends: cur.backends.clone(),
            table,
        }));
        Ok(generation)
    }

    /// A new backend entry with fresh counters.
    pub fn new_backend(&self, cfg: &BackendConfig, origin: Origin) -> Backend {
        Backend {
            name: cfg.name.clone(),
            address: cfg.address,
            weight: cfg.weight,
            config_weight: cfg.weight,
            api_weight: None,
            max_connections: cfg.max_connections,
            origin,
            admin: AdminState::Active,
            drain_deadline: None,
            health: Health::Up,
            since: Some(Instant::now()),
            counters: Arc::new(BackendCounters::new(self.cores)),
        }
    }

    /// `POST /lb/backends`.
    pub fn add(&self, cfg: &BackendConfig) -> Result<u64, SetError> {
        let b = self.new_backend(cfg, Origin::Api);
        self.update(|v| {
            if v.iter().any(|x| x.name == b.name) {
                return Err(SetError::Exists(b.name.clone()));
            }
            v.push(b);
            Ok(true)
        })
    }

    pub fn remove(&self, name: &str) -> Result<u64, SetError> {
        self.update(|v| {
            let i = v
                .iter()
                .position(|x| x.name == name)
                .ok_or_else(|| SetError::NotFound(name.to_string()))?;
            v.remove(i);
            Ok(true)
        })
    }

    pub fn set_weight(&self, name: &str, weight: u32) -> Result<u64, SetError> {
        if !(1..=crate::config::MAX_WEIGHT).contains(&weight) {
            return Err(SetError::Invalid(format!(
                "weight must be between 1 and {} (got {weight})",
                crate::config::MAX_WEIGHT
            )));
        }
        self.modify(name, |b| {
            let changed = b.weight != weight;
            if b.origin == Origin::Api {
                // The backend is the API's altogether: its weight is no separate override.
                b.config_weight = weight;
            } else {
                b.api_weight = Some(weight);
            }
            b.weight = weight;
            changed
        })
    }

    /// Drops a weight set through the admin API: the configured one is in force again.
    pub fn clear_weight(&self, name: &str) -> Result<u64, SetError> {
        self.modify(name, |b| {
            let had = b.api_weight.take().is_some();
            b.weight = b.config_weight;
            had
        })
    }

    /// The admin-API changes in force, in backend order.
    pub fn overrides(&self) -> Vec<Override> {
        let snap = self.load();
        let mut out = Vec::new();
        for b in &snap.backends {
            if b.origin == Origin::Api {
                out.push(Override::Added {
                    backend: b.name.clone(),
                });
            }
            if let Some(w) = b.api_weight {
                out.push(Override::Weight {
                    backend: b.name.clone(),
                    weight: w,
                    file: b.config_weight,
                });
            }
            if b.admin == AdminState::Draining {
                out.push(Override::Drained {
                    backend: b.name.clone(),
                });
            }
        }
        out
    }

    pub fn set_admin(&self, name: &str, admin: AdminState) -> Result<u64, SetError> {
        self.modify(name, |b| {
            let changed = b.admin != admin;
            if changed && admin == AdminState::Active {
                b.since = Some(Instant::now());
            }
            if admin == AdminState::Active {
                b.drain_deadline = None;
            }
            b.admin = admin;
            changed
        })
    }

    /// A drain whose connections still open at `deadline` are closed then (None: a drain
    /// without one, its connections may finish).
    pub fn drain(&self, name: &str, deadline: Option<Instant>) -> Result<u64, SetError> {
        self.modify(name, |b| {
            let changed = b.admin != AdminState::Draining || b.drain_deadline != deadline;
            b.admin = AdminState::Draining;
            b.drain_deadline = deadline;
            changed
        })
    }

    pub fn set_health(&self, name: &str, health: Health) -> Result<u64, SetError> {
        self.modify(name, |b| {
            let changed = b.health != health;
            if changed && health == Health::Up {
                b.since = Some(Instant::now());
            }
            b.health = health;
            changed
        })
    }

    /// A replica lb restarted now accepts connections: it counts as newly eligible (cores clear
    /// their passive ejection of it, slow start ramps it up).
    pub fn mark_restarted(&self, name: &str) -> Result<u64, SetError> {
        self.modify(name, |b| {
            b.since = Some(Instant::now());
            true
        })
    }

    fn modify(&self, name: &str, f: impl FnOnce(&mut Backend) -> bool) -> Result<u64, SetError> {
        self.update(|v| {
            let b = v
                .iter_mut()
                .find(|x| x.name == name)
                .ok_or_else(|| SetError::NotFound(name.to_string()))?;
            Ok(f(b))
        })
    }

    /// A reload: the file's backends (`wanted`) are the base, and on top of them stay the admin
    /// API's changes (backends it added, weights it set, drains) and the addresses discovered for
    /// `discover` entries still in the file. Backends that stay keep their counters, health and
    /// drain; new ones start fresh; the rest leave the set.
    pub fn replace(&self, wanted: &[BackendConfig], discover: &[String]) -> Result<u64, SetError> {
        self.update(|v| {
            let mut next = Vec::with_capacity(wanted.len());
            for cfg in wanted {
                match v.iter().find(|b| b.name == cfg.name) {
                    Some(old) => {
                        let mut b = old.clone();
                        b.address = cfg.address;
                        b.config_weight = cfg.weight;
                        b.weight = b.api_weight.unwrap_or(cfg.weight);
                        b.max_connections = cfg.max_connections;
                        b.origin = Origin::Config;
                        next.push(b);
                    }
                    None => next.push(self.new_backend(cfg, Origin::Config)),
                }
            }
            for old in v.iter() {
                let keep = match &old.origin {
                    Origin::Api => !next.iter().any(|b| b.name == old.name),
                    Origin::Discovered(spec) => discover.contains(spec),
                    Origin::Config => false,
                };
                if keep {
                    next.push(old.clone());
                }
            }
            let same = next.len() == v.len()
                && next.iter().zip(v.iter()).all(|(a, b)| {
                    a.name == b.name
                        && a.address == b.address
                        && a.weight == b.weight
                        && a.max_connections == b.max_connections
                        && a.origin == b.origin
                });
            *v = next;
            Ok(!same)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, port: u16) -> BackendConfig {
        BackendConfig::new(name.into(), SocketAddr::from(([127, 0, 0, 1], port)), 1)
    }

    #[test]
    fn every_change_publishes_a_new_generation_and_no_op_changes_do_not() {
        let set = BackendSet::new(
            &[cfg("a", 1), cfg("b", 2)],
            2,
            Algorithm::RoundRobin,
            HashConfig::default(),
        );
        assert_eq!(set.generation(), 1);
        assert_eq!(set.add(&cfg("c", 3)), Ok(2));
        assert_eq!(set.add(&cfg("c", 3)), Err(SetError::Exists("c".into())));
        assert_eq!(set.set_weight("a", 5), Ok(3));
        assert_eq!(
            set.set_weight("a", 5),
            Ok(3),
            "unchanged weight keeps the generation"
        );
        assert_eq!(set.set_admin("b", AdminState::Draining), Ok(4));
        assert!(!set.load().backends[1].eligible());
        assert_eq!(set.remove("zz"), Err(SetError::NotFound("zz".into())));
        assert_eq!(set.remove("b"), Ok(5));
        assert_eq!(set.load().backends.len(), 2);
        assert!(set.set_weight("a", 0).is_err());
    }

    #[test]
    fn a_reload_keeps_api_changes_and_discovered_backends_on_top_of_the_file() {
        let set = BackendSet::new(
            &[cfg("a", 1), cfg("b", 2)],
            1,
            Algorithm::RoundRobin,
            HashConfig::default(),
        );
        set.add(&cfg("x", 9)).unwrap();
        set.set_weight("a", 7).unwrap();
        set.set_admin("b", AdminState::Draining).unwrap();
        set.update(|v| {
            v.push(set.new_backend(&cfg("svc@10.0.0.1", 5), Origin::Discovered("svc".into())));
            v.push(set.new_backend(&cfg("old@10.0.0.2", 6), Origin::Discovered("old".into())));
            Ok(true)
        })
        .unwrap();
        let mut file_a = cfg("a", 1);
        file_a.weight = 3;
        set.replace(&[file_a, cfg("b", 2)], &["svc".to_string()])
            .unwrap();
        let snap = set.load();
        let names: Vec<&str> = snap.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "x", "svc@10.0.0.1"]);
        assert_eq!(
            (snap.backends[0].weight, snap.backends[0].config_weight),
            (7, 3)
        );
        assert_eq!(snap.backends[1].admin, AdminState::Draining);
        assert_eq!(
            set.overrides(),
            [
                Override::Weight {
                    backend: "a".into(),
                    weight: 7,
                    file: 3
                },
                Override::Drained {
                    backend: "b".into()
                },
                Override::Added {
                    backend: "x".into()
                },
            ]
        );
        set.clear_weight("a").unwrap();
        assert_eq!(set.load().backends[0].weight, 3);
        // An API-added backend that the file now names is the file's.
        set.replace(&[cfg("a", 1), cfg("x", 24)], &[]).unwrap();
        assert_eq!(set.load().backends[1].origin, Origin::Config);
    }

    #[test]
    fn a_reload_keeps_the_counters_of_backends_that_stay() {
        let set = BackendSet::new(
            &[cfg("a", 1), cfg("b", 2)],
            1,
            Algorithm::RoundRobin,
            HashConfig::default(),
        );
        set.load().backends[0].counters.opened(0, None);
        set.set_health("a", Health::Down).unwrap();
        let g = set.replace(&[cfg("a", 1), cfg("c", 3)], &[]).unwrap();
        let snap = set.load();
        assert_eq!(snap.generation, g);
        assert_eq!(snap.backends[0].counters.active(), 1);
        assert_eq!(
            snap.backends[0].health,
            Health::Down,
            "health survives a reload"
        );
        assert_eq!(snap.backends[1].name, "c");
        assert_eq!(
            set.replace(&[cfg("a", 1), cfg("c", 3)], &[]).unwrap(),
            g,
            "same list: no new generation"
        );
    }
}
