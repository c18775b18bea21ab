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

/// One backend in a snapshot.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub admin: AdminState,
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
    /// Which table each snapshot carries.
    algorithm: Algorithm,
    hash: HashConfig,
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
                admin: AdminState::Active,
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
            algorithm,
            hash,
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
            Table::build(self.algorithm, &specs(&next), &self.hash)
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

    /// A new backend entry with fresh counters.
    pub fn new_backend(&self, cfg: &BackendConfig) -> Backend {
        Backend {
            name: cfg.name.clone(),
            address: cfg.address,
            weight: cfg.weight,
            admin: AdminState::Active,
            health: Health::Up,
            since: Some(Instant::now()),
            counters: Arc::new(BackendCounters::new(self.cores)),
        }
    }

    pub fn add(&self, cfg: &BackendConfig) -> Result<u64, SetError> {
        let b = self.new_backend(cfg);
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
            b.weight = weight;
            changed
        })
    }

    pub fn set_admin(&self, name: &str, admin: AdminState) -> Result<u64, SetError> {
        self.modify(name, |b| {
            let changed = b.admin != admin;
            if changed && admin == AdminState::Active {
                b.since = Some(Instant::now());
            }
            b.admin = admin;
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

    /// Replaces the list with `wanted` (a reload): backends that stay keep their counters,
    /// health and drain state; new ones start fresh; missing ones leave the set.
    pub fn replace(&self, wanted: &[BackendConfig]) -> Result<u64, SetError> {
        self.update(|v| {
            let mut next = Vec::with_capacity(wanted.len());
            for cfg in wanted {
                match v.iter().find(|b| b.name == cfg.name) {
                    Some(old) => {
                        let mut b = old.clone();
                        b.address = cfg.address;
                        b.weight = cfg.weight;
                        next.push(b);
                    }
                    None => next.push(self.new_backend(cfg)),
                }
            }
            let same = next.len() == v.len()
                && next.iter().zip(v.iter()).all(|(a, b)| {
                    a.name == b.name && a.address == b.address && a.weight == b.weight
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
        BackendConfig {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
        }
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
    fn a_reload_keeps_the_counters_of_backends_that_stay() {
        let set = BackendSet::new(
            &[cfg("a", 1), cfg("b", 2)],
            1,
            Algorithm::RoundRobin,
            HashConfig::default(),
        );
        set.load().backends[0].counters.opened(0, None);
        set.set_health("a", Health::Down).unwrap();
        let g = set.replace(&[cfg("a", 1), cfg("c", 3)]).unwrap();
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
            set.replace(&[cfg("a", 1), cfg("c", 3)]).unwrap(),
            g,
            "same list: no new generation"
        );
    }
}
