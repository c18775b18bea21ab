//! Running the `nft` tool: scripts in (`nft -f -`, one transaction each), JSON out
//! (`nft -j list ...`), and whether lb may use it at all.
//!
//! Why the tool and not netlink from Rust: it is nftables' own front end (libnftables), so a
//! script is checked and batched exactly as an operator's would be, and the maintained netlink
//! crates (`rustables`, `nftnl` over libnftnl) would add a C library or a young crate for no
//! gain on a path that runs once per change to a backend set. Scripts are nft's text syntax:
//! nft 1.0.6's JSON input (Debian 12) crashes on `dnat to jhash ... map` of an address and port
//! (tested here), and cannot declare a `typeof` map. Its JSON output is used to read.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// The program: `nft` on the PATH.
pub const NFT: &str = "nft";

/// CAP_NET_ADMIN's bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// Why lb cannot program netfilter here, or None. Checked at start: the capability, then the
/// tool.
pub fn unavailable() -> Option<String> {
    if !has_net_admin(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()) {
        return Some(
            "lb lacks CAP_NET_ADMIN, which programming netfilter needs (run lb as root, or grant \
             it: `setcap cap_net_admin+ep`, systemd `AmbientCapabilities=CAP_NET_ADMIN`, \
             Kubernetes `capabilities.add: [NET_ADMIN]`)"
                .into(),
        );
    }
    match Command::new(NFT)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`{NFT} --version` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!(
            "nftables' `{NFT}` command is not usable ({e}): install the nftables package"
        )),
    }
}

/// Whether the `CapEff:` line of a /proc/PID/status text has CAP_NET_ADMIN.
pub fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Runs `script` as one transaction.
pub fn apply(script: &str) -> Result<(), String> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {NFT}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{NFT}: {e}"))?;
    written.map_err(|e| format!("writing to {NFT}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        // nft repeats the offending line under each error: the first lines say it.
        let first: Vec<&str> = err.lines().take(3).collect();
        Err(format!("{NFT} -f: {}: {}", out.status, first.join(" | ")))
    }
}

fn list(args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(NFT)
        .arg("-j")
        .arg("list")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {NFT}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{NFT} -j list {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{NFT} -j list: bad JSON: {e}"))
}

/// The handle of table `ip NAME`, None when there is none.
pub fn table_handle(name: &str) -> Result<Option<u64>, String> {
    Ok(parse_table_handle(&list(&["tables"])?, name))
}

/// Packets and bytes of every named counter of table `ip NAME`.
pub fn counters(name: &str) -> Result<HashMap<String, (u64, u64)>, String> {
    Ok(parse_counters(&list(&["counters", "table", "ip", name])?))
}

fn objects<'a>(
    v: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

/// From `nft -j list tables`.
pub fn parse_table_handle(v: &serde_json::Value, name: &str) -> Option<u64> {
    objects(v, "table")
        .find(|t| t["family"] == "ip" && t["name"] == name)
        .and_then(|t| t["handle"].as_u64())
}

/// From `nft -j list counters ...`: name -> (packets, bytes).
pub fn parse_counters(v: &serde_json::Value) -> HashMap<String, (u64, u64)> {
    objects(v, "counter")
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_string(),
                (c["packets"].as_u64()?, c["bytes"].as_u64()?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_net_admin_is_read_from_the_effective_set() {
        assert!(has_net_admin("Name:\tlb\nCapEff:\t000001ffffffffff\n"));
        assert!(has_net_admin("CapEff:\t0000000000001000\n"));
        assert!(!has_net_admin(
            "CapEff:\t0000000000000400\nCapPrm:\t0000000000001000\n"
        ));
        assert!(!has_net_admin("Name:\tlb\n"));
    }

    #[test]
    fn handles_and_counters_are_read_from_nfts_json() {
        // As nft 1.0.6 prints them.
        let tables: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "lb", "handle": 3}}, {"table": {"family": "ip", "name": "lb", "handle": 19}}]}"#,
        )
        .unwrap();
        assert_eq!(parse_table_handle(&tables, "lb"), Some(19));
        assert_eq!(parse_table_handle(&tables, "other"), None);
        let counters: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"counter": {"family": "ip", "name": "s0_10_253_1_11_8000_t", "table": "lb", "handle": 3, "packets": 98, "bytes": 7464}},
            {"counter": {"family": "ip", "name": "s0_10_253_1_11_8000_c", "table": "lb", "handle": 4, "packets": 8, "bytes": 480}}]}"#,
        )
        .unwrap();
        let c = parse_counters(&counters);
        assert_eq!(c.len(), 2);
        assert_eq!(c["s0_10_253_1_11_8000_t"], (98, 7464));
        assert_eq!(c["s0_10_253_1_11_8000_c"], (8, 480));
    }
}
