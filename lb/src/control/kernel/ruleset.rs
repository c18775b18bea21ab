//! The nftables table of kernel mode, as `nft -f` scripts built from a [`Plan`]: pure, so that
//! every script is tested without netfilter. One script is one `nft` run, which libnftables
//! sends as one netlink batch: the kernel applies all of it or none of it.
//!
//! The table, `ip lb`, holds per kernel-mode service `i`:
//!
//! - `s<i>_slots`, a map from Maglev slot to `backend address . port`, one element per slot
//!   (`typeof numgen inc mod M`: a 32-bit integer key, as `jhash ... mod M` produces);
//! - per listener, in `prerouting` (forwarded traffic) and `output` (clients on lb's own
//!   host): `ip daddr VIP tcp dport P dnat ip to jhash ip saddr mod M seed S map @s<i>_slots`
//!   (`fib daddr type local` instead of `ip daddr VIP` for a 0.0.0.0 listener). Only a flow's
//!   first packet meets a nat chain; conntrack keeps the rest of it on its backend;
//! - counters per backend, `s<i>_<address>_<port>_t` (packets and bytes, both directions) and
//!   `_c` (new flows), reached through the maps `s<i>_traffic` and `s<i>_conns` from rules on
//!   `forward` (and `input`/`output` for local clients) that match the flows DNATed from the
//!   listener's address (`ct status dnat ct original ...`);
//! - with `snat`, a `postrouting` rule that masquerades (or SNATs) those flows.

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::balance::hash::JHASH_SEED;
use crate::config::Snat;

/// The table lb programs: one per network namespace (a second lb there replaces it).
pub const TABLE: &str = "lb";

/// A listener's address and port as netfilter matches them (None: 0.0.0.0, every local
/// address).
pub type Match = (Option<Ipv4Addr>, u16);

/// What netfilter does for one kernel-mode service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub name: String,
    /// The listeners' addresses and ports.
    pub matches: Vec<Match>,
    pub snat: Snat,
    /// The backend of each slot; None where no backend may take new flows.
    pub slots: Vec<Option<SocketAddrV4>>,
    /// Every backend of the set, usable or not, each once: their counters.
    pub backends: Vec<SocketAddrV4>,
}

impl ServicePlan {
    /// What only a new table can change: everything but the slots' backends and the backends.
    fn shape(&self) -> (&str, &[Match], Snat, usize) {
        (&self.name, &self.matches, self.snat, self.slots.len())
    }
}

/// The whole table: the kernel-mode services that have a listener, in routing order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
}

/// Which counter of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterKind {
    /// Packets and bytes, both directions.
    Traffic,
    /// New flows: the packets counted are connections.
    Connections,
}

/// The name of service `i`'s counter of `backend`: letters, digits and `_` only.
pub fn counter_name(i: usize, backend: SocketAddrV4, kind: CounterKind) -> String {
    let [a, b, c, d] = backend.ip().octets();
    let k = match kind {
        CounterKind::Traffic => 't',
        CounterKind::Connections => 'c',
    };
    format!("s{i}_{a}_{b}_{c}_{d}_{}_{k}", backend.port())
}

/// What `counter_name` made, back to its service index, backend and kind.
pub fn parse_counter_name(name: &str) -> Option<(usize, SocketAddrV4, CounterKind)> {
    let rest = name.strip_prefix('s')?;
    let parts: Vec<&str> = rest.split('_').collect();
    let [i, a, b, c, d, port, k] = parts.as_slice() else {
        return None;
    };
    let kind = match *k {
        "t" => CounterKind::Traffic,
        "c" => CounterKind::Connections,
        _ => return None,
    };
    let ip = Ipv4Addr::new(
        a.parse().ok()?,
        b.parse().ok()?,
        c.parse().ok()?,
        d.parse().ok()?,
    );
    Some((
        i.parse().ok()?,
        SocketAddrV4::new(ip, port.parse().ok()?),
        kind,
    ))
}

fn addr(b: SocketAddrV4) -> String {
    format!("{} . {}", b.ip(), b.port())
}

/// `ip daddr VIP tcp dport P`, or `fib daddr type local tcp dport P` for 0.0.0.0.
fn dnat_match(m: &Match) -> String {
    match m.0 {
        Some(a) => format!("ip daddr {a} tcp dport {}", m.1),
        None => format!("fib daddr type local tcp dport {}", m.1),
    }
}

/// The flows this listener's rule DNATed, as conntrack remembers them.
fn ct_match(m: &Match) -> String {
    let daddr =
        m.0.map(|a| format!(" ct original ip daddr {a}"))
            .unwrap_or_default();
    format!(
        "ct status dnat{daddr} meta l4proto tcp ct original proto-dst {}",
        m.1
    )
}

/// Counter map elements `backend : "counter"` of service `i`.
fn counter_elements(i: usize, backends: &[SocketAddrV4], kind: CounterKind) -> String {
    backends
        .iter()
        .map(|&b| format!("{} : \"{}\"", addr(b), counter_name(i, b, kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn slot_elements(slots: impl Iterator<Item = (usize, SocketAddrV4)>) -> String {
    slots
        .map(|(s, b)| format!("{s} : {}", addr(b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A script that replaces the table `table` (whatever was there: a stale one of an lb that
/// died, or none) with `plan`'s, in one transaction.
pub fn full(table: &str, plan: &Plan) -> String {
    let mut s = String::new();
    // `table` first so that `delete` finds one to delete; all of it is one batch.
    let _ = writeln!(
        s,
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{"
    );
    for (name, hook, prio) in [
        ("prerouting", "nat hook prerouting", "dstnat"),
        ("output", "nat hook output", "-100"),
        ("postrouting", "nat hook postrouting", "srcnat"),
        ("forward", "filter hook forward", "filter"),
        ("input", "filter hook input", "filter"),
        ("output_count", "filter hook output", "filter"),
    ] {
        let _ = writeln!(
            s,
            "\tchain {name} {{\n\t\ttype {hook} priority {prio}; policy accept;\n\t}}"
        );
    }
    s.push_str("}\n");
    for (i, svc) in plan.services.iter().enumerate() {
        let m = svc.slots.len();
        if m < 2 || svc.matches.is_empty() {
            // No table (no backend at all) or no listener: nothing to DNAT, lb's own listener
            // answers.
            continue;
        }
        let t = |w: &str| format!("s{i}_{w}");
        let _ = writeln!(
            s,
            "add map ip {table} {} {{ typeof numgen inc mod {m} : ip daddr . tcp dport; }}",
            t("slots")
        );
        for map in ["traffic", "conns"] {
            let _ = writeln!(
                s,
                "add map ip {table} {} {{ type ipv4_addr . inet_service : counter; }}",
                t(map)
            );
        }
        for &b in &svc.backends {
            for kind in [CounterKind::Traffic, CounterKind::Connections] {
                let _ = writeln!(s, "add counter ip {table} {}", counter_name(i, b, kind));
            }
        }
        if !svc.backends.is_empty() {
            let _ = writeln!(
                s,
                "add element ip {table} {} {{ {} }}",
                t("traffic"),
                counter_elements(i, &svc.backends, CounterKind::Traffic)
            );
            let _ = writeln!(
                s,
                "add element ip {table} {} {{ {} }}",
                t("conns"),
                counter_elements(i, &svc.backends, CounterKind::Connections)
            );
        }
        let filled: Vec<(usize, SocketAddrV4)> = svc
            .slots
            .iter()
            .enumerate()
            .filter_map(|(s, b)| b.map(|b| (s, b)))
            .collect();
        if !filled.is_empty() {
            let _ = writeln!(
                s,
                "add element ip {table} {} {{ {} }}",
                t("slots"),
                slot_elements(filled.into_iter())
            );
        }
        for mt in &svc.matches {
            let dnat = format!(
                "{} dnat ip to jhash ip saddr mod {m} seed {JHASH_SEED:#x} map @{}",
                dnat_match(mt),
                t("slots")
            );
            let ct = ct_match(mt);
            let (traffic, conns) = (t("traffic"), t("conns"));
            let original = format!("counter name ip daddr . tcp dport map @{traffic}");
            let reply = format!("counter name ip saddr . tcp sport map @{traffic}");
            let new = format!("ct state new counter name ip daddr . tcp dport map @{conns}");
            for line in [
                format!("prerouting {dnat}"),
                format!("output {dnat}"),
                format!("forward {ct} ct direction original {original}"),
                format!("forward {ct} ct direction reply {reply}"),
                format!("forward {ct} {new}"),
                format!("output_count {ct} ct direction original {original}"),
                format!("output_count {ct} {new}"),
                format!("input {ct} ct direction reply {reply}"),
            ] {
                let _ = writeln!(s, "add rule ip {table} {line}");
            }
            match svc.snat {
                Snat::Off => {}
                Snat::Masquerade => {
                    let _ = writeln!(s, "add rule ip {table} postrouting {ct} masquerade");
                }
                Snat::To(a) => {
                    let _ = writeln!(s, "add rule ip {table} postrouting {ct} snat ip to {a}");
                }
            }
        }
    }
    s
}

/// A script that turns `old` (programmed) into `new` by changing elements and counters only,
/// in one transaction: the slots whose backend changed (and only those), the counters of
/// backends that came or went. None when only a new table can do it (a service, listener,
/// SNAT setting or table size changed); an empty script when nothing changed.
pub fn delta(table: &str, old: &Plan, new: &Plan) -> Option<String> {
    if old.services.len() != new.services.len()
        || old
            .services
            .iter()
            .zip(&new.services)
            .any(|(o, n)| o.shape() != n.shape())
    {
        return None;
    }
    let mut s = String::new();
    for (i, (o, n)) in old.services.iter().zip(&new.services).enumerate() {
        if n.slots.len() < 2 || n.matches.is_empty() {
            continue;
        }
        let t = |w: &str| format!("s{i}_{w}");
        let came: Vec<SocketAddrV4> = n
            .backends
            .iter()
            .filter(|b| !o.backends.contains(b))
            .copied()
            .collect();
        let went: Vec<SocketAddrV4> = o
            .backends
            .iter()
            .filter(|b| !n.backends.contains(b))
            .copied()
            .collect();
        for &b in &came {
            for kind in [CounterKind::Traffic, CounterKind::Connections] {
                let _ = writeln!(s, "add counter ip {table} {}", counter_name(i, b, kind));
            }
        }
        if !came.is_empty() {
            let _ = writeln!(
                s,
                "add element ip {table} {} {{ {} }}",
                t("traffic"),
                counter_elements(i, &came, CounterKind::Traffic)
            );
            let _ = writeln!(
                s,
                "add element ip {table} {} {{ {} }}",
                t("conns"),
                counter_elements(i, &came, CounterKind::Connections)
            );
        }
        let changed: Vec<usize> = (0..n.slots.len())
            .filter(|&k| o.slots[k] != n.slots[k])
            .collect();
        let deleted: Vec<String> = changed
            .iter()
            .filter(|&&k| o.slots[k].is_some())
            .map(|k| k.to_string())
            .collect();
        if !deleted.is_empty() {
            let _ = writeln!(
                s,
                "delete element ip {table} {} {{ {} }}",
                t("slots"),
                deleted.join(", ")
            );
        }
        let added: Vec<(usize, SocketAddrV4)> = changed
            .iter()
            .filter_map(|&k| n.slots[k].map(|b| (k, b)))
            .collect();
        if !added.is_empty() {
            let _ = writeln!(
                s,
                "add element ip {table} {} {{ {} }}",
                t("slots"),
                slot_elements(added.into_iter())
            );
        }
        if !went.is_empty() {
            let keys: Vec<String> = went.iter().map(|&b| addr(b)).collect();
            for map in ["traffic", "conns"] {
                let _ = writeln!(
                    s,
                    "delete element ip {table} {} {{ {} }}",
                    t(map),
                    keys.join(", ")
                );
            }
            for &b in &went {
                for kind in [CounterKind::Traffic, CounterKind::Connections] {
                    let _ = writeln!(s, "delete counter ip {table} {}", counter_name(i, b, kind));
                }
            }
        }
    }
    Some(s)
}

/// Takes the DNAT rules out and leaves the rest: no new flow is DNATed, and the nat chains that
/// keep the kernel translating the open ones stay.
pub fn stop_new_flows(table: &str) -> String {
    format!("flush chain ip {table} prerouting\nflush chain ip {table} output\n")
}

/// Deletes the table with this handle: the one this process made, and not one that another lb
/// (the new process of a binary upgrade) put in its place under the same name.
pub fn remove(handle: u64) -> String {
    format!("delete table ip handle {handle}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, last), 8000)
    }

    fn plan(slots: Vec<Option<SocketAddrV4>>, backends: Vec<SocketAddrV4>) -> Plan {
        Plan {
            services: vec![ServicePlan {
                name: "web".into(),
                matches: vec![(Some(Ipv4Addr::new(10, 0, 100, 1)), 80)],
                snat: Snat::Off,
                slots,
                backends,
            }],
        }
    }

    #[test]
    fn a_full_script_replaces_the_table_and_dnats_by_jhash_through_the_slot_map() {
        let p = plan(
            vec![Some(b(11)), Some(b(12)), None, Some(b(11)), Some(b(12))],
            vec![b(11), b(12)],
        );
        let s = full(TABLE, &p);
        assert!(
            s.starts_with("table ip lb\ndelete table ip lb\ntable ip lb {\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "add map ip lb s0_slots { typeof numgen inc mod 5 : ip daddr . tcp dport; }"
            ),
            "{s}"
        );
        assert!(s.contains(
            "add rule ip lb prerouting ip daddr 10.0.100.1 tcp dport 80 dnat ip to jhash ip saddr mod 5 seed 0x6c626a68 map @s0_slots"
        ), "{s}");
        assert!(
            s.contains("add rule ip lb output ip daddr 10.0.100.1 tcp dport 80 dnat"),
            "{s}"
        );
        assert!(s.contains(
            "add element ip lb s0_slots { 0 : 10.0.1.11 . 8000, 1 : 10.0.1.12 . 8000, 3 : 10.0.1.11 . 8000, 4 : 10.0.1.12 . 8000 }"
        ), "{s}");
        assert!(s.contains("add counter ip lb s0_10_0_1_12_8000_c"), "{s}");
        assert!(s.contains(
            "add rule ip lb forward ct status dnat ct original ip daddr 10.0.100.1 meta l4proto tcp ct original proto-dst 80 ct direction reply counter name ip saddr . tcp sport map @s0_traffic"
        ), "{s}");
        assert!(!s.contains("masquerade"), "{s}");
        let mut m = p.clone();
        m.services[0].snat = Snat::Masquerade;
        m.services[0].matches = vec![(None, 80)];
        let s = full(TABLE, &m);
        assert!(
            s.contains("prerouting fib daddr type local tcp dport 80 dnat"),
            "{s}"
        );
        assert!(s.contains(
            "add rule ip lb postrouting ct status dnat meta l4proto tcp ct original proto-dst 80 masquerade"
        ), "{s}");
        m.services[0].snat = Snat::To(Ipv4Addr::new(10, 0, 1, 1));
        assert!(full(TABLE, &m).contains("snat ip to 10.0.1.1"));
    }

    #[test]
    fn a_service_without_backends_or_listeners_gets_no_rules() {
        let s = full(TABLE, &plan(vec![], vec![]));
        assert!(!s.contains("add rule") && !s.contains("add map"), "{s}");
        let mut p = plan(vec![Some(b(11)), Some(b(11))], vec![b(11)]);
        p.services[0].matches.clear();
        assert!(!full(TABLE, &p).contains("add rule"));
    }

    #[test]
    fn a_delta_rewrites_only_the_slots_that_changed_and_the_counters_that_came_or_went() {
        let old = plan(
            vec![Some(b(11)), Some(b(12)), Some(b(13)), Some(b(12)), None],
            vec![b(11), b(12), b(13)],
        );
        assert_eq!(delta(TABLE, &old, &old).as_deref(), Some(""));
        // b12 leaves: its slots go to others; slot 4 gets a backend again.
        let new = plan(
            vec![
                Some(b(11)),
                Some(b(13)),
                Some(b(13)),
                Some(b(11)),
                Some(b(14)),
            ],
            vec![b(11), b(13), b(14)],
        );
        let s = delta(TABLE, &old, &new).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                "add counter ip lb s0_10_0_1_14_8000_t",
                "add counter ip lb s0_10_0_1_14_8000_c",
                "add element ip lb s0_traffic { 10.0.1.14 . 8000 : \"s0_10_0_1_14_8000_t\" }",
                "add element ip lb s0_conns { 10.0.1.14 . 8000 : \"s0_10_0_1_14_8000_c\" }",
                "delete element ip lb s0_slots { 1, 3 }",
                "add element ip lb s0_slots { 1 : 10.0.1.13 . 8000, 3 : 10.0.1.11 . 8000, 4 : 10.0.1.14 . 8000 }",
                "delete element ip lb s0_traffic { 10.0.1.12 . 8000 }",
                "delete element ip lb s0_conns { 10.0.1.12 . 8000 }",
                "delete counter ip lb s0_10_0_1_12_8000_t",
                "delete counter ip lb s0_10_0_1_12_8000_c",
            ]
        );
        let mut other = new.clone();
        other.services[0].matches[0].1 = 81;
        assert_eq!(
            delta(TABLE, &old, &other),
            None,
            "a listener changed: new table"
        );
        assert_eq!(
            delta(TABLE, &old, &plan(vec![Some(b(11)); 7], vec![b(11)])),
            None
        );
        assert_eq!(delta(TABLE, &old, &Plan::default()), None);
    }

    #[test]
    fn counter_names_parse_back_and_the_table_goes_by_its_handle() {
        for kind in [CounterKind::Traffic, CounterKind::Connections] {
            let n = counter_name(3, b(200), kind);
            assert!(
                n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
                "{n}"
            );
            assert_eq!(parse_counter_name(&n), Some((3, b(200), kind)));
        }
        assert_eq!(parse_counter_name("s0_10_0_1_x_80_t"), None);
        assert_eq!(parse_counter_name("other"), None);
        assert_eq!(remove(42), "delete table ip handle 42\n");
        assert_eq!(
            stop_new_flows(TABLE),
            "flush chain ip lb prerouting\nflush chain ip lb output\n"
        );
    }
}
