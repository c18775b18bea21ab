//! Discovery by DNS name: a `discover = true` backend is a name (a compose service scaled to N
//! replicas, say) re-resolved every interval on its own thread, off the data path; each address
//! becomes a backend `NAME@IP`. Changes are published like admin changes. A failed lookup keeps
//! the backends already known: a DNS hiccup must not empty the pool.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use crate::config::{BackendConfig, DiscoverSpec};
use crate::shared::set::Origin;
use crate::shared::{Service, Shared};

/// Runs the lookups on their own thread for the life of the process: the entries come from
/// `shared.discover`, which a reload may change.
pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new().name("lb-discovery".into()).spawn(move || {
        let mut failing: BTreeSet<(String, String)> = BTreeSet::new();
        loop {
            // The interval and hosts file in force: a reload may change them.
            let cfg = shared.live.load_full();
            let routing = shared.routing.load_full();
            for svc in &routing.services {
                let specs = svc.discover.load_full();
                for spec in specs.iter() {
                    let key = (svc.name.clone(), spec.name.clone());
                    match resolve(&spec.host, spec.port, cfg.discovery.hosts_file.as_deref()) {
                        Ok(addrs) => {
                            failing.remove(&key);
                            apply(&shared, svc, spec, &addrs);
                        }
                        Err(e) => {
                            // Warn once per failure streak, not every interval.
                            if failing.insert(key) {
                                tracing::warn!(service = %svc.name, name = %spec.host, error = %e, "discovery lookup failed; keeping the backends already known");
                            }
                        }
                    }
                }
            }
            // In steps, so that a reload's shorter interval applies now, not after the old one.
            let since = std::time::Instant::now();
            while since.elapsed() < shared.live.load().discovery.interval {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    })?;
    Ok(())
}

/// The addresses of `host`, from `hosts_file` first (hosts(5) format), else the system resolver.
pub fn resolve(
    host: &str,
    port: u16,
    hosts_file: Option<&Path>,
) -> Result<Vec<SocketAddr>, String> {
    if let Some(path) = hosts_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let found: BTreeSet<IpAddr> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let ip: IpAddr = words.next()?.parse().ok()?;
                words.any(|w| w.eq_ignore_ascii_case(host)).then_some(ip)
            })
            .collect();
        if !found.is_empty() {
            return Ok(found
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect());
        }
    }
    let addrs: BTreeSet<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok(addrs.into_iter().collect())
}

/// Makes the set's `NAME@…` backends match `addrs`; unchanged sets publish nothing. An address
/// that is lb's own (a name that resolves to lb itself) is skipped with a warning: a client sent
/// there would loop through lb.
fn apply(shared: &Shared, svc: &Service, spec: &DiscoverSpec, addrs: &[SocketAddr]) {
    let own = shared.own_addresses();
    let prefix = format!("{}@", spec.name);
    let wanted: Vec<BackendConfig> = addrs
        .iter()
        .filter(|a| {
            let is_own = crate::config::backends::is_own_address(**a, &own);
            if is_own {
                tracing::warn!(name = %spec.host, address = %a, "discovery: skipping an address that is lb's own");
            }
            !is_own
        })
        .map(|a| BackendConfig {
            max_connections: spec.max_connections,
            ..BackendConfig::new(format!("{}{}", prefix, a.ip()), *a, spec.weight)
        })
        .collect();
    let set = &svc.set;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let result = set.update(|v| {
        v.retain(|b| {
            let keep = !b.name.starts_with(&prefix) || wanted.iter().any(|w| w.name == b.name);
            if !keep {
                removed.push(b.name.clone());
            }
            keep
        });
        for w in &wanted {
            if !v.iter().any(|b| b.name == w.name) {
                added.push(w.name.clone());
                v.push(set.new_backend(w, Origin::Discovered(spec.name.clone())));
            }
        }
        Ok(!added.is_empty() || !removed.is_empty())
    });
    if let Ok(generation) = result {
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(service = %svc.name, name = %spec.host, addresses = addrs.len(), added = ?added, removed = ?removed, generation, "discovery: backend set changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_file_is_read_before_the_system_resolver() {
        let path = std::env::temp_dir().join(format!("lb-hosts-{}", std::process::id()));
        std::fs::write(
            &path,
            "# test\n127.0.0.2 svc other\n127.0.0.3\tsvc\n10.0.0.1 unrelated\n",
        )
        .unwrap();
        let got = resolve("svc", 80, Some(&path)).unwrap();
        assert_eq!(
            got,
            vec![
                "127.0.0.2:80".parse().unwrap(),
                "127.0.0.3:80".parse().unwrap()
            ]
        );
        let local = resolve("localhost", 81, Some(&path)).unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 81));
        std::fs::remove_file(path).unwrap();
    }
}
