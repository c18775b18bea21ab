//! Address lists in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address), for
//! `trusted_proxies` and the access lists. Parsing and matching come from the `ipnet` crate,
//! whose prefix arithmetic is the well-tested part.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{invalid, ConfigError};

/// A list of networks; a client matches when its address is in any of them. IPv4-mapped IPv6
/// addresses (a v4 client on a dual-stack listener) match the IPv4 networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    pub fn parse(key: &str, items: &[String]) -> Result<CidrList, ConfigError> {
        let mut nets = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let t = item.trim();
            let net = t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        &format!("{key}[{i}]"),
                        format!(
                            "'{}' is not an address or network (e.g. \"10.0.0.0/8\", \"::1\")",
                            item.escape_debug()
                        ),
                    )
                })?;
            nets.push(net.trunc());
        }
        Ok(CidrList(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The networks as written back (`10.0.0.0/8`), for stats.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|n| n.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> CidrList {
        CidrList::parse(
            "k",
            &items.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn networks_and_bare_addresses_match_v4_v6_and_mapped_clients() {
        let l = list(&["127.0.0.0/8", "10.1.2.3", "2001:db8::/32"]);
        assert!(l.contains("127.9.9.9".parse().unwrap()));
        assert!(l.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(l.contains("10.1.2.3".parse().unwrap()));
        assert!(!l.contains("10.1.2.4".parse().unwrap()));
        assert!(l.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!l.contains("::1".parse().unwrap()));
        assert!(!CidrList::default().contains("127.0.0.1".parse().unwrap()));
        assert_eq!(list(&["10.1.2.3/8"]).to_strings(), ["10.0.0.0/8"]);
    }

    #[test]
    fn a_bad_entry_is_named_by_its_index() {
        let e = CidrList::parse(
            "listeners[0].trusted_proxies",
            &["10.0.0.0/8".into(), "ten".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("listeners[0].trusted_proxies[1]") && e.contains("'ten'"),
            "{e}"
        );
        assert!(CidrList::parse("k", &["10.0.0.0/33".into()]).is_err());
    }
}
