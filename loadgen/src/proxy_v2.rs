//! The PROXY protocol v2 header `--proxy-v2` writes first on every connection, as HAProxy's
//! doc/proxy-protocol.txt (section 2.2) specifies it and `send-proxy-v2` writes it: the 12-byte
//! signature, version 2 with command PROXY, TCP over IPv4 or IPv6, the address block's length,
//! then source address, destination address, source port, destination port, no TLV.
//!
//! loadgen plays the balancer in front of the target: the source is its own end of the
//! connection, the destination the target's. Its own small encoder, so that loadgen measures lb
//! without depending on it.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

/// `\r\n\r\n\0\r\nQUIT\n`: what no v1 line or protocol a receiver might otherwise see starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2 (high nibble), command PROXY (low nibble).
const VERSION_PROXY: u8 = 0x21;
/// Family INET (1) or INET6 (2) in the high nibble, protocol STREAM (1) in the low one.
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;

/// Appends the v2 header of a connection from `source` to `destination` to `out`: 28 bytes when
/// both are IPv4 (IPv4-mapped IPv6 addresses, as a dual-stack socket reports IPv4 peers, count as
/// IPv4), else 52 with both written as IPv6 (an IPv4 one mapped, as HAProxy does).
pub fn encode(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (v4(source), v4(destination)) {
        (Some(s), Some(d)) => {
            out.push(TCP4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let (s, d) = (v6(source), v6(destination));
            out.push(TCP6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

fn v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        SocketAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn header(source: &str, destination: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            source.parse().unwrap(),
            destination.parse().unwrap(),
            &mut out,
        );
        out
    }

    /// Headers HAProxy 2.6.12 `send-proxy-v2` wrote on this machine (captured for lb's parser
    /// tests: lb/src/proxy/golden.rs, HAPROXY_V2_TCP4 and HAPROXY_V2_TCP6, which lb's parser
    /// takes), without the request that followed them.
    #[test]
    fn headers_are_byte_for_byte_what_haproxy_writes() {
        assert_eq!(
            header("127.0.0.1:53956", "127.0.0.1:47001"),
            hex("0d0a0d0a000d0a515549540a2111000c7f0000017f000001d2c4b799")
        );
        assert_eq!(
            header("[::1]:42960", "[::1]:47003"),
            hex("0d0a0d0a000d0a515549540a21210024\
                 00000000000000000000000000000001\
                 00000000000000000000000000000001\
                 a7d0b79b")
        );
    }

    #[test]
    fn mapped_addresses_are_ipv4_and_a_mixed_pair_is_ipv6() {
        let mapped = header("[::ffff:10.0.0.1]:1000", "[::ffff:10.0.0.2]:80");
        assert_eq!(mapped, header("10.0.0.1:1000", "10.0.0.2:80"));
        assert_eq!((mapped.len(), mapped[13]), (28, TCP4));
        let mixed = header("10.0.0.1:1000", "[2001:db8::2]:80");
        assert_eq!((mixed.len(), mixed[13], mixed[15]), (52, TCP6, 36));
        // The IPv4 source as ::ffff:10.0.0.1, then the IPv6 destination.
        assert_eq!(mixed[16..32], hex("00000000000000000000ffff0a000001")[..]);
        assert_eq!(mixed[32..48], hex("20010db8000000000000000000000002")[..]);
        assert_eq!(mixed[48..52], [0x03, 0xe8, 0x00, 0x50]);
    }

    #[test]
    fn the_header_is_appended_to_what_the_buffer_holds() {
        let mut out = b"x".to_vec();
        encode(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            &mut out,
        );
        assert_eq!(out.len(), 1 + 28);
        assert_eq!(out[1..13], SIGNATURE);
    }
}
