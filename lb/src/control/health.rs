//! Active health checks, once per process: a TCP connect or an HTTP GET per backend every
//! interval; `fall` consecutive failures take a backend out, `rise` consecutive passes bring it
//! back. Changes are published as a new snapshot, which every core picks up.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::config::HealthCheck;
use crate::shared::set::Health;
use crate::shared::{Service, Shared};

/// Runs until the process ends. One check loop per (service, backend name, address); reconciled
/// with the routing and each service's backend set every 100 ms, so that backends and services
/// added or removed at run time are checked or forgotten. A service whose checks are off has no
/// loops.
pub async fn run(shared: Arc<Shared>) {
    type Key = (String, String, SocketAddr);
    let mut running: HashMap<Key, Rc<Cell<bool>>> = HashMap::new();
    let mut announced: HashMap<String, HealthCheck> = HashMap::new();
    loop {
        let routing = shared.routing.load_full();
        let mut wanted: Vec<(Key, Arc<Service>)> = Vec::new();
        for svc in &routing.services {
            let cfg = svc.config.load();
            if announced.get(&svc.name) != Some(&cfg.health.check) {
                let h = &cfg.health;
                match h.check {
                    HealthCheck::None => {
                        tracing::info!(service = %svc.name, "active health checks are off")
                    }
                    _ => {
                        tracing::info!(service = %svc.name, check = ?h.check, interval_ms = h.interval.as_millis() as u64,
                        timeout_ms = h.timeout.as_millis() as u64, rise = h.rise, fall = h.fall, "active health checks on")
                    }
                }
                announced.insert(svc.name.clone(), h.check.clone());
            }
            if cfg.health.check == HealthCheck::None {
                continue;
            }
            for b in svc.set.load().backends.iter() {
                wanted.push(((svc.name.clone(), b.name.clone(), b.address), svc.clone()));
            }
        }
        running.retain(|key, stop| {
            let keep = wanted.iter().any(|(k, _)| k == key);
            if !keep {
                stop.set(true);
            }
            keep
        });
        for (key, svc) in wanted {
            if !running.contains_key(&key) {
                let stop = Rc::new(Cell::new(false));
                running.insert(key.clone(), stop.clone());
                lb_common::task::spawn_guarded("health-check", check_loop(svc, key.1, key.2, stop));
            }
        }
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Consecutive results of one backend's checks, and the transitions they make: `fall` failures
/// in a row take an UP backend DOWN, `rise` passes in a row bring a DOWN one back. Pure: the
/// results and the current state come in as arguments.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    passes: u32,
    fails: u32,
}

impl HealthState {
    /// Records one check; returns the state to publish when it changes.
    pub fn record(
        &mut self,
        passed: bool,
        current: Health,
        rise: u32,
        fall: u32,
    ) -> Option<Health> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.fails = 0;
        } else {
            self.fails = self.fails.saturating_add(1);
            self.passes = 0;
        }
        match current {
            Health::Up if self.fails >= fall => Some(Health::Down),
            Health::Down if self.passes >= rise => Some(Health::Up),
            _ => None,
        }
    }

    pub fn passes(&self) -> u32 {
        self.passes
    }

    pub fn fails(&self) -> u32 {
        self.fails
    }
}

/// What a failed probe says: about the backend, or about lb itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The backend failed the check.
    Failed(String),
    /// lb could not even try (out of descriptors or memory): says nothing of the backend, so it
    /// neither fails the check nor counts towards `fall`.
    Local(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Failed(m) => f.write_str(m),
            ProbeError::Local(m) => write!(f, "lb itself: {m}"),
        }
    }
}

fn connect_error(e: std::io::Error) -> ProbeError {
    if lb_common::net::is_local_resource_error(&e) {
        ProbeError::Local(format!("connect: {e}"))
    } else {
        ProbeError::Failed(format!("connect: {e}"))
    }
}

async fn check_loop(service: Arc<Service>, name: String, addr: SocketAddr, stop: Rc<Cell<bool>>) {
    let mut state = HealthState::default();
    let local_warning = lb_common::logging::RateLimited::default();
    while !stop.get() {
        // The service's settings in force (a reload may change them).
        let cfg = service.config.load().health.clone();
        if cfg.check == HealthCheck::None {
            return;
        }
        let started = Instant::now();
        let result = monoio::time::timeout(cfg.timeout, probe(addr, &cfg.check))
            .await
            .unwrap_or_else(|_| {
                Err(ProbeError::Failed(format!(
                    "no answer within {} ms",
                    cfg.timeout.as_millis()
                )))
            });
        if stop.get() {
            return;
        }
        let result = match result {
            Err(ProbeError::Local(why)) => {
                local_warning.warn(|suppressed| {
                    tracing::warn!(service = %service.name, backend = ?name, reason = %why, suppressed, "health check skipped: lb is short of resources")
                });
                monoio::time::sleep(cfg.interval).await;
                continue;
            }
            Err(ProbeError::Failed(why)) => Err(why),
            Ok(()) => Ok(()),
        };
        let current = service
            .set
            .load()
            .backends
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.health);
        if let Some(current) = current {
            match (
                state.record(result.is_ok(), current, cfg.rise, cfg.fall),
                &result,
            ) {
                (Some(Health::Down), Err(why)) => {
                    if let Ok(g) = service.set.set_health(&name, Health::Down) {
                        tracing::warn!(service = %service.name, backend = ?name, %addr, reason = %why, failed_checks = state.fails(), generation = g, "backend DOWN: out of rotation");
                    }
                }
                (Some(Health::Up), _) => {
                    if let Ok(g) = service.set.set_health(&name, Health::Up) {
                        tracing::info!(service = %service.name, backend = ?name, %addr, passed_checks = state.passes(), generation = g, "backend UP: back in rotation");
                    }
                }
                (_, Err(why)) => {
                    tracing::debug!(service = %service.name, backend = ?name, reason = %why, fails = state.fails(), "health check failed")
                }
                _ => {}
            }
        }
        let spent = started.elapsed();
        monoio::time::sleep(
            cfg.interval
                .saturating_sub(spent)
                .max(Duration::from_millis(1)),
        )
        .await;
    }
}

/// One check. The caller bounds it with the check timeout.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect_addr(addr).await.map_err(connect_error)?;
    http_check(&mut stream, addr, check)
        .await
        .map_err(ProbeError::Failed)
}

async fn http_check(
    stream: &mut TcpStream,
    addr: SocketAddr,
    check: &HealthCheck,
) -> Result<(), String> {
    let HealthCheck::Http {
        path,
        expect_status,
    } = check
    else {
        return Ok(());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n");
    let (res, _) = stream.write_all(req.into_bytes()).await;
    res.map_err(|e| format!("send: {e}"))?;
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let filled = head.len();
        if filled >= 16 * 1024 {
            return Err("response head larger than 16 KiB".into());
        }
        head.reserve(1024);
        use monoio::buf::IoBufMut;
        let (res, slice) = stream.read(head.slice_mut(filled..)).await;
        head = slice.into_inner();
        match res {
            Ok(0) => return Err("connection closed before a response".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let code = resp.code.unwrap_or(0);
                return if code == *expect_status {
                    Ok(())
                } else {
                    Err(format!("status {code}, expected {expect_status}"))
                };
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(format!("bad response: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_in_a_row_take_a_backend_down_and_rise_passes_bring_it_back() {
        let mut s = HealthState::default();
        let (rise, fall) = (2, 3);
        assert_eq!(s.record(false, Health::Up, rise, fall), None);
        assert_eq!(s.record(false, Health::Up, rise, fall), None);
        assert_eq!(
            s.record(true, Health::Up, rise, fall),
            None,
            "a pass resets the streak"
        );
        assert_eq!(s.record(false, Health::Up, rise, fall), None);
        assert_eq!(s.record(false, Health::Up, rise, fall), None);
        assert_eq!(s.record(false, Health::Up, rise, fall), Some(Health::Down));
        assert_eq!(s.record(true, Health::Down, rise, fall), None);
        assert_eq!(
            s.record(false, Health::Down, rise, fall),
            None,
            "a failure resets the passes"
        );
        assert_eq!(s.record(true, Health::Down, rise, fall), None);
        assert_eq!(s.record(true, Health::Down, rise, fall), Some(Health::Up));
        assert_eq!(
            s.record(true, Health::Up, rise, fall),
            None,
            "no change, nothing to publish"
        );
        let mut one = HealthState::default();
        assert_eq!(one.record(false, Health::Up, 1, 1), Some(Health::Down));
    }

    #[test]
    fn a_shortage_of_lbs_own_is_no_failed_check() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = connect_error(std::io::Error::from_raw_os_error(errno));
            assert!(matches!(e, ProbeError::Local(_)), "{errno}: {e:?}");
        }
        let e = connect_error(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(matches!(e, ProbeError::Failed(_)), "{e:?}");
    }
}
