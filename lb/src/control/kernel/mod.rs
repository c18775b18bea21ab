//! Kernel mode: netfilter forwards the connections of `mode = "kernel"` services, and lb keeps
//! its map from Maglev slot to backend in step with the service's backend set. Everything that
//! changes a set (health checks, drains, weights, the admin API, discovery, a reload) publishes
//! a snapshot; this loop, on a thread of its own (`lb-kernel`, every `nft` run blocks it and
//! nothing else), looks at the snapshots every [`POLL`] and programs what changed, in one
//! nftables transaction: the slots whose backend changed, or a new table when a service,
//! listener or table size changed.
//!
//! The map is [`kernel_slots`] of the service's Maglev table: slot for slot the backend lb's
//! own `maglev` (with the `jhash` key hash) picks for a client whose jhash falls there, so a
//! flow lands on the same backend whether netfilter or lb forwards it, and on every lb
//! instance. conntrack keeps established flows where they are whatever the map becomes.
//!
//! lb still binds and serves the listener (it holds the port, and whatever netfilter does not
//! DNAT, such as every connection while netfilter is unavailable, is relayed to the same
//! backend). The table is lb's own (`ip lb`): replaced at start (a stale one of an lb that
//! died, in one transaction, so that the flows it forwarded go on), and removed when lb stops,
//! by its handle, so that the table of a new process that took over is left alone. A stop
//! first takes the DNAT rules out (new flows stop, as they stop at a relay listener) and keeps
//! the table's nat chains until the flows netfilter forwarded have ended or the shutdown
//! deadline passes: without a nat chain in the namespace the kernel stops translating the open
//! flows (seen here: the next packet of a held connection met a reset).

pub mod nft;
pub mod ruleset;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::balance::maglev::kernel_slots;
use crate::balance::Table;
use crate::config::{Mode, Route};
use crate::shared::kernel::{KernelService, KernelStatus, NftCounters};
use crate::shared::Shared;
use ruleset::{CounterKind, Plan, ServicePlan, TABLE};

/// How often the loop looks at the snapshots (a change reaches netfilter within this, plus the
/// `nft` run: about 10 ms for a 1021-slot table).
pub const POLL: Duration = Duration::from_millis(50);
/// After a failed transaction, the next try.
const RETRY: Duration = Duration::from_secs(2);
/// The longest an admin request waits for fresh counters.
const READ_WAIT: Duration = Duration::from_millis(500);

/// The table this process made, for the exit hook: (handle).
static OWNED: Mutex<Option<u64>> = Mutex::new(None);

extern "C" fn remove_at_exit() {
    // try_lock: never block an exit on a thread that died holding the lock.
    if let Ok(mut owned) = OWNED.try_lock() {
        if let Some(h) = owned.take() {
            let _ = nft::apply(&ruleset::remove(h));
        }
    }
}

/// The kernel-mode services lb would program now, from the routing in force.
pub fn plan(shared: &Shared) -> (Plan, HashMap<String, u64>) {
    let routing = shared.routing.load_full();
    let mut services = Vec::new();
    let mut generations = HashMap::new();
    for svc in &routing.services {
        let cfg = svc.config.load();
        if cfg.mode != Mode::Kernel {
            continue;
        }
        let matches: Vec<_> = routing
            .listeners
            .iter()
            .filter(|l| !l.is_closed() && l.config.load().route == Route::Service(svc.name.clone()))
            .filter_map(|l| match l.address {
                SocketAddr::V4(a) => {
                    Some(((!a.ip().is_unspecified()).then_some(*a.ip()), a.port()))
                }
                SocketAddr::V6(_) => None,
            })
            .collect();
        let snap = svc.set.load();
        generations.insert(svc.name.clone(), snap.generation);
        let v4 = |i: usize| match snap.backends.get(i).map(|b| b.address) {
            Some(SocketAddr::V4(a)) => Some(a),
            _ => None,
        };
        let slots = match &snap.table {
            Table::Maglev(t) => kernel_slots(t, |b| {
                v4(b).is_some() && snap.backends.get(b).is_some_and(|x| x.eligible())
            })
            .into_iter()
            .map(|s| s.and_then(|b| v4(b as usize)))
            .collect(),
            _ => Vec::new(),
        };
        let mut backends: Vec<SocketAddrV4> = Vec::new();
        for i in 0..snap.backends.len() {
            if let Some(a) = v4(i) {
                if !backends.contains(&a) {
                    backends.push(a);
                }
            }
        }
        services.push(ServicePlan {
            name: svc.name.clone(),
            matches,
            snat: cfg.kernel.snat,
            slots,
            backends,
        });
    }
    (Plan { services }, generations)
}

/// Starts kernel mode when the configuration has kernel-mode services: checks that lb may
/// program netfilter and programs it before the workers start, so that a service that requires
/// it fails lb's start; otherwise the services are relayed, with a warning. Then the loop runs
/// on its own thread (also without kernel-mode services: a reload may add one).
pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    let mut k = Kernel::default();
    let (p, generations) = plan(&shared);
    if !kernel_services(&shared).is_empty() {
        k.probe(&shared, &p)?;
        k.publish(&shared.kernel, &p, &generations);
    }
    std::thread::Builder::new()
        .name("lb-kernel".into())
        .spawn(move || k.run(&shared))?;
    Ok(())
}

/// (name, required) of each kernel-mode service in force.
fn kernel_services(shared: &Shared) -> Vec<(String, bool)> {
    shared
        .routing
        .load()
        .services
        .iter()
        .filter_map(|s| {
            let c = s.config.load();
            (c.mode == Mode::Kernel).then(|| (s.name.clone(), c.kernel.required))
        })
        .collect()
}

/// Warns when this host would DNAT forwarded flows but not forward them.
fn check_forwarding() {
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
        tracing::warn!("net.ipv4.ip_forward is 0: netfilter DNATs clients from other hosts but this host does not forward their packets to the backends (set it to 1); clients on this host are served");
    }
}

/// The kernel-mode services whose reload needs netfilter that lb cannot use: the reload is
/// refused while one of them requires it.
pub fn refuse_reload(shared: &Shared, next: &crate::config::Config) -> Result<(), String> {
    let why = shared.kernel.view().unavailable;
    match (
        why,
        next.services
            .iter()
            .find(|s| s.mode == Mode::Kernel && s.kernel.required),
    ) {
        (Some(why), Some(s)) => Err(format!(
            "service '{}' requires kernel mode (kernel.required = true), but {why}",
            s.name
        )),
        _ => Ok(()),
    }
}

/// Waits (without blocking the control runtime) for the loop to read fresh counters, at most
/// [`READ_WAIT`]; at once when kernel mode is not in use.
pub async fn fresh_counters(status: &KernelStatus) {
    if !status.in_use() {
        return;
    }
    let n = status.ask_read();
    let deadline = Instant::now() + READ_WAIT;
    while !status.read_done(n) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Default)]
struct Kernel {
    /// Whether lb checked that it may use netfilter (once kernel-mode services appeared).
    probed: bool,
    /// The handle of the table this process made.
    handle: Option<u64>,
    /// What the table holds now.
    programmed: Option<Plan>,
    /// Why netfilter is not in use (None: it is).
    unavailable: Option<String>,
    /// No retry: the capability or the tool is missing.
    permanent: bool,
    next_try: Option<Instant>,
    /// Counter totals before the table was last replaced (a new table starts from zero), and
    /// as last read, by (service, backend).
    base: HashMap<(String, SocketAddrV4), NftCounters>,
    last: HashMap<(String, SocketAddrV4), NftCounters>,
}

impl Kernel {
    /// The first time kernel-mode services are configured: may lb program netfilter? Programs
    /// it when it may. When it may not, a service that requires it is an error (lb does not
    /// start, a reload is refused); the others are relayed, with a warning.
    fn probe(&mut self, shared: &Shared, p: &Plan) -> std::io::Result<()> {
        self.probed = true;
        let why = match nft::unavailable() {
            Some(why) => {
                self.permanent = true;
                Some(why)
            }
            None => self.program(p).err(),
        };
        let Some(why) = why else {
            check_forwarding();
            return Ok(());
        };
        for (name, required) in kernel_services(shared) {
            if required {
                return Err(std::io::Error::other(format!(
                    "service '{name}' requires kernel mode (kernel.required = true), but {why}"
                )));
            }
            tracing::warn!(service = %name, reason = %why, "kernel mode unavailable: lb relays the service instead (same backends, same Maglev choice)");
        }
        self.next_try = Some(Instant::now() + RETRY);
        self.unavailable = Some(why);
        Ok(())
    }

    /// Makes the table hold `p`: a delta when one can, else a new table.
    fn program(&mut self, p: &Plan) -> Result<(), String> {
        if self.programmed.as_ref() == Some(p) {
            return Ok(());
        }
        if let (Some(old), Some(h)) = (&self.programmed, self.handle) {
            if let Some(script) = ruleset::delta(TABLE, old, p) {
                match nft::table_handle(TABLE)? {
                    Some(now) if now == h => {
                        nft::apply(&script)?;
                        self.programmed = Some(p.clone());
                        return Ok(());
                    }
                    Some(other) => {
                        // A new lb (a binary upgrade) made its own table: it is the owner now.
                        self.handle = None;
                        self.permanent = true;
                        *OWNED.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        return Err(format!(
                            "table ip {TABLE} was replaced by another process (handle {h} -> {other}); this lb stops programming it"
                        ));
                    }
                    None => tracing::warn!(table = TABLE, "the nftables table of kernel mode was deleted from outside lb: making it again"),
                }
            }
        }
        // A new table: its counters start from zero, so keep what the old one counted (read
        // now, so that nothing it counted since the last scrape is lost).
        if self.handle.is_some() {
            let _ = self.read();
        }
        for (k, v) in self.last.drain() {
            let b = self.base.entry(k).or_default();
            b.packets += v.packets;
            b.bytes += v.bytes;
            b.connections += v.connections;
        }
        nft::apply(&ruleset::full(TABLE, p))?;
        let h = nft::table_handle(TABLE)?
            .ok_or_else(|| format!("table ip {TABLE} is not there after it was made"))?;
        let first = self.handle.is_none();
        self.handle = Some(h);
        *OWNED.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        if first {
            static HOOK: std::sync::Once = std::sync::Once::new();
            HOOK.call_once(|| {
                // SAFETY: registers a plain extern "C" fn with no captured state.
                unsafe { libc::atexit(remove_at_exit) };
            });
        }
        for s in &p.services {
            tracing::info!(service = %s.name, table = TABLE, handle = h, slots = s.slots.len(),
                listeners = ?s.matches.iter().map(|(a, port)| format!("{}:{port}", a.map_or("0.0.0.0".into(), |a| a.to_string()))).collect::<Vec<_>>(),
                snat = %s.snat.name(), "kernel mode: netfilter forwards the service");
        }
        self.programmed = Some(p.clone());
        Ok(())
    }

    /// A stop: no new flows (the DNAT rules go), the open ones finish (until none is left in
    /// conntrack, or the shutdown deadline), then the table goes. Nothing, when another process
    /// owns the table now (it took over: the flows are its own).
    fn stop(&mut self, shared: &Shared) {
        let Some(h) = self.handle else {
            return;
        };
        if !matches!(nft::table_handle(TABLE), Ok(Some(now)) if now == h) {
            tracing::info!(
                table = TABLE,
                "kernel mode: the table is another process's now; left to it"
            );
            self.handle = None;
            *OWNED.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        let matches: Vec<ruleset::Match> = self
            .programmed
            .iter()
            .flat_map(|p| p.services.iter().flat_map(|s| s.matches.clone()))
            .collect();
        match nft::apply(&ruleset::stop_new_flows(TABLE)) {
            Ok(()) => tracing::info!(
                table = TABLE,
                "kernel mode: new flows are no longer DNATed; open ones finish"
            ),
            Err(e) => tracing::warn!(error = %e, "kernel mode: cannot take the DNAT rules out"),
        }
        let deadline = shared.lifecycle.deadline();
        let mut last_packets = None;
        let mut quiet_since = Instant::now();
        loop {
            let open = match std::fs::read_to_string("/proc/net/nf_conntrack") {
                Ok(table) => open_flows(&table, &matches) > 0,
                // No conntrack table to read: open while the counters still move.
                Err(_) => {
                    let packets: u64 = nft::counters(TABLE)
                        .map(|c| c.values().map(|v| v.0).sum())
                        .unwrap_or(0);
                    if last_packets != Some(packets) {
                        last_packets = Some(packets);
                        quiet_since = Instant::now();
                    }
                    quiet_since.elapsed() < Duration::from_secs(1)
                }
            };
            if !open {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(table = TABLE, "kernel mode: shutdown deadline reached with flows still open: they end with the table");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.remove();
    }

    fn remove(&mut self) {
        if let Some(h) = self.handle.take() {
            *OWNED.lock().unwrap_or_else(|e| e.into_inner()) = None;
            match nft::apply(&ruleset::remove(h)) {
                Ok(()) => tracing::info!(table = TABLE, handle = h, "kernel mode: table removed"),
                Err(e) => tracing::debug!(error = %e, "kernel mode: the table was already gone"),
            }
        }
        self.programmed = None;
    }

    /// Reads the counters into `last`.
    fn read(&mut self) -> Result<(), String> {
        let Some(p) = &self.programmed else {
            return Ok(());
        };
        let raw = nft::counters(TABLE)?;
        let mut last = HashMap::new();
        for (name, (packets, bytes)) in raw {
            let Some((i, addr, kind)) = ruleset::parse_counter_name(&name) else {
                continue;
            };
            let Some(svc) = p.services.get(i) else {
                continue;
            };
            let c: &mut NftCounters = last.entry((svc.name.clone(), addr)).or_default();
            match kind {
                CounterKind::Traffic => {
                    c.packets = packets;
                    c.bytes = bytes;
                }
                CounterKind::Connections => c.connections = packets,
            }
        }
        self.last = last;
        Ok(())
    }

    fn publish(&self, status: &KernelStatus, p: &Plan, generations: &HashMap<String, u64>) {
        let active = self.unavailable.is_none() && self.programmed.as_ref() == Some(p);
        status.update(|v| {
            v.table = Some(format!("ip {TABLE}"));
            v.unavailable = self.unavailable.clone();
            v.services = p
                .services
                .iter()
                .map(|s| {
                    let backends = s
                        .backends
                        .iter()
                        .map(|&b| {
                            let key = (s.name.clone(), b);
                            let base = self.base.get(&key).copied().unwrap_or_default();
                            let last = self.last.get(&key).copied().unwrap_or_default();
                            (
                                SocketAddr::V4(b),
                                NftCounters {
                                    packets: base.packets + last.packets,
                                    bytes: base.bytes + last.bytes,
                                    connections: base.connections + last.connections,
                                },
                            )
                        })
                        .collect();
                    let ks = KernelService {
                        active: active && !s.matches.is_empty() && s.slots.len() >= 2,
                        slots: s.slots.len(),
                        generation: generations.get(&s.name).copied().unwrap_or(0),
                        backends,
                    };
                    (s.name.clone(), ks)
                })
                .collect();
        });
    }

    fn run(mut self, shared: &Shared) {
        let status = &shared.kernel;
        // What the plan was computed from: the routing generation and each kernel-mode
        // service's backend set generation (a table of 65537 slots takes a while to map).
        let mut seen: Option<(u64, Vec<u64>)> = None;
        let (mut p, mut generations) = (Plan::default(), HashMap::new());
        loop {
            if shared.lifecycle.stopping() {
                self.stop(shared);
                status.update(|v| v.services.values_mut().for_each(|s| s.active = false));
                status.mark_stopped();
                return;
            }
            let now = inputs(shared);
            if seen.as_ref() != Some(&now) {
                (p, generations) = plan(shared);
                seen = Some(now);
            }
            if p.services.is_empty() {
                self.remove();
                status.update(|v| v.services.clear());
            } else if !self.probed {
                // A reload brought the first kernel-mode service.
                if let Err(e) = self.probe(shared, &p) {
                    tracing::error!(error = %e, "kernel mode: the reloaded service is relayed");
                }
            } else if self.unavailable.is_none()
                || (!self.permanent && self.next_try.is_none_or(|t| Instant::now() >= t))
            {
                match self.program(&p) {
                    Ok(()) => {
                        if self.unavailable.take().is_some() {
                            tracing::info!(
                                table = TABLE,
                                "kernel mode: netfilter programmed again"
                            );
                        }
                    }
                    Err(e) => {
                        if self.unavailable.is_none() {
                            tracing::error!(error = %e, "kernel mode: programming netfilter failed; lb relays the services' new connections until it works");
                        }
                        self.programmed = None;
                        self.unavailable = Some(e);
                        self.next_try = Some(Instant::now() + RETRY);
                    }
                }
            }
            if !p.services.is_empty() {
                self.publish(status, &p, &generations);
            }
            if let Some(n) = status.wait_for_ask(POLL) {
                if let Err(e) = self.read() {
                    tracing::debug!(error = %e, "kernel mode: counters not read");
                }
                self.publish(status, &p, &generations);
                status.mark_read(n);
            }
        }
    }
}

/// The routing generation and every service's backend set generation: when these are the same,
/// so is the plan.
fn inputs(shared: &Shared) -> (u64, Vec<u64>) {
    let routing = shared.routing.load();
    (
        routing.generation,
        routing
            .services
            .iter()
            .map(|s| s.set.generation())
            .collect(),
    )
}

/// Flows in `/proc/net/nf_conntrack` (this namespace's) that one of `matches` DNATed and that
/// have not ended: their original destination is the listener's address and port and their
/// reply comes from elsewhere (a backend), in any state but TIME_WAIT and CLOSE.
pub fn open_flows(conntrack: &str, matches: &[ruleset::Match]) -> usize {
    conntrack
        .lines()
        .filter(|l| l.contains(" tcp ") && !l.contains(" TIME_WAIT ") && !l.contains(" CLOSE "))
        .filter(|l| {
            let field = |k: &str, nth: usize| {
                l.split_whitespace()
                    .filter_map(|w| w.strip_prefix(k))
                    .nth(nth)
            };
            let (Some(dst), Some(dport), Some(reply_src)) =
                (field("dst=", 0), field("dport=", 0), field("src=", 1))
            else {
                return false;
            };
            reply_src != dst
                && matches
                    .iter()
                    .any(|(a, p)| dport == p.to_string() && a.is_none_or(|a| a.to_string() == dst))
        })
        .count()
}

/// After the workers have finished: waits for the kernel loop to finish its stop (its flows
/// ended or the deadline passed, its table removed), so that the process does not exit from
/// under the flows netfilter still forwards.
pub fn wait_stopped(shared: &Shared) {
    if !shared.kernel.in_use() {
        return;
    }
    let limit = shared
        .lifecycle
        .deadline()
        .saturating_duration_since(Instant::now())
        + Duration::from_secs(2);
    shared.kernel.wait_stopped(limit);
}

/// For `/lb/stats`: a backend's counters from netfilter, when its service is in kernel mode.
pub fn backend_counters(
    status: &KernelStatus,
    service: &str,
    addr: SocketAddr,
) -> Option<NftCounters> {
    let v = status.view();
    let addr = match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((IpAddr::V4(v4), a.port())),
            None => return None,
        },
        a => a,
    };
    v.services.get(service)?.backends.get(&addr).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn open_flows_are_the_dnated_ones_of_the_listener_that_have_not_ended() {
        // As /proc/net/nf_conntrack shows them here.
        let table = "\
ipv4     2 tcp      6 118 TIME_WAIT src=10.253.0.101 dst=10.253.100.1 sport=56607 dport=80 src=10.253.1.12 dst=10.253.0.101 sport=8000 dport=56607 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431965 ESTABLISHED src=10.253.0.101 dst=10.253.100.1 sport=34337 dport=80 src=10.253.1.12 dst=10.253.0.101 sport=8000 dport=34337 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 50 FIN_WAIT src=10.253.0.102 dst=10.253.100.1 sport=34338 dport=80 src=10.253.1.11 dst=10.253.0.102 sport=8000 dport=34338 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431965 ESTABLISHED src=10.253.0.101 dst=10.253.1.11 sport=1 dport=8000 src=10.253.1.11 dst=10.253.0.101 sport=8000 dport=1 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431965 ESTABLISHED src=127.0.0.1 dst=10.253.100.1 sport=2 dport=80 src=10.253.100.1 dst=127.0.0.1 sport=80 dport=2 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 20 src=10.253.0.101 dst=10.253.100.1 sport=5 dport=80 src=10.253.1.12 dst=10.253.0.101 sport=80 dport=5 mark=0 zone=0 use=2
";
        let vip = Some(Ipv4Addr::new(10, 253, 100, 1));
        assert_eq!(
            open_flows(table, &[(vip, 80)]),
            2,
            "established and closing, DNATed"
        );
        assert_eq!(open_flows(table, &[(None, 80)]), 2, "a 0.0.0.0 listener");
        assert_eq!(open_flows(table, &[(vip, 81)]), 0);
        assert_eq!(open_flows("", &[(vip, 80)]), 0);
    }
}
