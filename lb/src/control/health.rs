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

use crate::config::{HealthCheck, HealthConfig};
use crate::shared::set::Health;
use crate::shared::Shared;

/// Runs until the process ends; returns at once when checks are off.
pub async fn run(shared: Arc<Shared>) {
    let cfg = shared.config.health.clone();
    if cfg.check == HealthCheck::None {
        tracing::info!("active health checks are off");
        return;
    }
    tracing::info!(check = ?cfg.check, interval_ms = cfg.interval.as_millis() as u64, timeout_ms = cfg.timeout.as_millis() as u64,
        rise = cfg.rise, fall = cfg.fall, "active health checks on");
    // One check loop per (name, address); reconciled with the backend set every interval so that
    // backends added or removed at run time are checked or forgotten.
    let mut running: HashMap<(String, SocketAddr), Rc<Cell<bool>>> = HashMap::new();
    loop {
        let snap = shared.set.load();
        let wanted: Vec<(String, SocketAddr)> = snap
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.address))
            .collect();
        running.retain(|key, stop| {
            let keep = wanted.contains(key);
            if !keep {
                stop.set(true);
            }
            keep
        });
        for key in wanted {
            if !running.contains_key(&key) {
                let stop = Rc::new(Cell::new(false));
                running.insert(key.clone(), stop.clone());
                let (s, c) = (shared.clone(), cfg.clone());
                lb_common::task::spawn_guarded(
                    "health-check",
                    check_loop(s, key.0, key.1, c, stop),
                );
            }
        }
        monoio::time::sleep(cfg.interval).await;
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

async fn check_loop(
    shared: Arc<Shared>,
    name: String,
    addr: SocketAddr,
    cfg: HealthConfig,
    stop: Rc<Cell<bool>>,
) {
    let (mut passes, mut fails) = (0u32, 0u32);
    let local_warning = lb_common::logging::RateLimited::default();
    while !stop.get() {
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
                    tracing::warn!(backend = ?name, reason = %why, suppressed, "health check skipped: lb is short of resources")
                });
                monoio::time::sleep(cfg.interval).await;
                continue;
            }
            Err(ProbeError::Failed(why)) => Err(why),
            Ok(()) => Ok(()),
        };
        match &result {
            Ok(()) => {
                passes += 1;
                fails = 0;
            }
            Err(_) => {
                fails += 1;
                passes = 0;
            }
        }
        let current = shared
            .set
            .load()
            .backends
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.health);
        match (current, &result) {
            (Some(Health::Up), Err(why)) if fails >= cfg.fall => {
                if let Ok(g) = shared.set.set_health(&name, Health::Down) {
                    tracing::warn!(backend = ?name, %addr, reason = %why, failed_checks = fails, generation = g, "backend DOWN: out of rotation");
                }
            }
            (Some(Health::Down), Ok(())) if passes >= cfg.rise => {
                if let Ok(g) = shared.set.set_health(&name, Health::Up) {
                    tracing::info!(backend = ?name, %addr, passed_checks = passes, generation = g, "backend UP: back in rotation");
                }
            }
            (Some(_), Err(why)) => {
                tracing::debug!(backend = ?name, reason = %why, fails, "health check failed")
            }
            _ => {}
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
    fn a_shortage_of_lbs_own_is_no_failed_check() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = connect_error(std::io::Error::from_raw_os_error(errno));
            assert!(matches!(e, ProbeError::Local(_)), "{errno}: {e:?}");
        }
        let e = connect_error(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(matches!(e, ProbeError::Failed(_)), "{e:?}");
    }
}
