//! The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy's doc/proxy-protocol.txt
//! specifies them: a sans-IO parser for the header a trusted upstream sends first, the read that
//! takes that header off a connection's [`Prefix`], and the encoders for the header lb sends
//! first to a backend.
//!
//! The parser tells a header from anything else at the first byte that differs from both
//! signatures, and refuses a header longer than [`V1_MAX`] or [`V2_MAX`] as soon as it knows its
//! length, so that a client can neither hold a connection open with bytes that cannot be a header
//! nor make lb buffer more than a few hundred bytes for one.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use monoio::net::TcpStream;

use super::prefix::Prefix;

/// The longest v1 line, CRLF included (the spec's worst case: `UNKNOWN` with two full IPv6
/// addresses and ports).
pub const V1_MAX: usize = 107;
/// The longest v2 header lb takes, in all: the 16-byte fixed part, the addresses and any TLVs.
/// The spec designs both versions to fit in 536 bytes (the smallest TCP segment every host must
/// take); HAProxy's IPv6 header with its CRC32C, unique-id and SSL TLVs is far shorter. The
/// 16-bit length field would allow 65,551 bytes: a longer header is refused before it is read.
pub const V2_MAX: usize = 536;

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Which versions a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V1,
    V2,
    /// Either, told apart by their signatures (as HAProxy's `accept-proxy` does).
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Relayed on behalf of a client: the addresses, if any, are the client's connection's.
    Proxy,
    /// Opened by the upstream itself, e.g. its health checks (v2 only). The spec requires a
    /// receiver to accept it and use the connection's own addresses.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP over IPv4 or over IPv6: both addresses are of that family.
    Tcp {
        /// The client.
        source: SocketAddr,
        /// What the client connected to.
        destination: SocketAddr,
    },
    /// No address lb uses: v1 `UNKNOWN`, v2 `UNSPEC`, a v2 family or protocol other than TCP
    /// over IPv4 or IPv6 (UDP, UNIX: the spec lets a receiver treat them as `UNSPEC`), and any
    /// `LOCAL` header. The connection's own addresses apply.
    Unspec,
}

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    pub command: Command,
    pub transport: Transport,
}

impl ProxyHeader {
    /// The client's address, when the header carries one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self.transport {
            Transport::Tcp { source, .. } => Some(source),
            Transport::Unspec => None,
        }
    }

    /// The address the client connected to, when the header carries one.
    pub fn destination(&self) -> Option<SocketAddr> {
        match self.transport {
            Transport::Tcp { destination, .. } => Some(destination),
            Transport::Unspec => None,
        }
    }
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long: what follows it is the client's own data.
    Complete { header: ProxyHeader, len: usize },
    /// Every byte so far can start a header: read more.
    Incomplete,
    /// No more bytes can make this a header lb takes (the reason is for logs).
    Invalid(&'static str),
}

/// Parses the PROXY header at the start of `buf`. More bytes never change a `Complete` or an
/// `Invalid` answer; an `Incomplete` one holds at most [`V2_MAX`] bytes.
pub fn parse(buf: &[u8], accept: Accept) -> Parsed {
    let v1 = accept != Accept::V2 && starts_like(buf, V1_SIGNATURE);
    let v2 = accept != Accept::V1 && starts_like(buf, V2_SIGNATURE);
    if v1 {
        parse_v1(buf)
    } else if v2 {
        parse_v2(buf)
    } else {
        // By `accept` alone, so that the reason does not depend on how many bytes were there.
        Parsed::Invalid(match accept {
            Accept::V1 => "not a PROXY v1 header (only v1 is accepted)",
            Accept::V2 => "not a PROXY v2 header (only v2 is accepted)",
            Accept::Any => "not a PROXY protocol header",
        })
    }
}

/// `buf` and `signature` agree on the bytes both have.
fn starts_like(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

const V1_TOO_LONG: &str = "a PROXY v1 line longer than 107 bytes";
const V1_PROTOCOL: &str = "a PROXY v1 protocol other than TCP4, TCP6 or UNKNOWN";

/// Version 1: one line, `PROXY TCP4|TCP6 src dst sport dport\r\n` or `PROXY UNKNOWN ...\r\n`.
///
/// One pass left to right checks each byte as it can be checked without the rest of the line, so
/// that a line that cannot become valid is refused at its first wrong byte, and every prefix of
/// a buffer gives either `Incomplete` or the whole buffer's answer (same reason included). The
/// fields are parsed once the CRLF is there.
fn parse_v1(buf: &[u8]) -> Parsed {
    // Field 0 is "PROXY", checked with the signature; this pass starts in field 1.
    let mut field = 1;
    let mut field_start = V1_SIGNATURE.len();
    let mut unknown = false;
    let mut i = V1_SIGNATURE.len();
    let end = loop {
        let Some(&b) = buf.get(i) else {
            return Parsed::Incomplete;
        };
        // The last byte a line can have is its LF, met with its CR just before.
        if i >= V1_MAX - 1 {
            return Parsed::Invalid(V1_TOO_LONG);
        }
        match b {
            b'\r' => match buf.get(i + 1) {
                None => return Parsed::Incomplete,
                Some(b'\n') => break i,
                Some(_) => return Parsed::Invalid("a bare CR in a PROXY v1 line"),
            },
            b'\n' => return Parsed::Invalid("a PROXY v1 line ended by a bare LF"),
            // Whatever follows UNKNOWN is ignored up to the CRLF, as the spec requires.
            _ if unknown => {}
            b' ' => {
                let done = &buf[field_start..i];
                if done.is_empty() {
                    return Parsed::Invalid("two spaces in a row in a PROXY v1 line");
                }
                if field == 1 {
                    match done {
                        b"TCP4" | b"TCP6" => {}
                        b"UNKNOWN" => unknown = true,
                        _ => return Parsed::Invalid(V1_PROTOCOL),
                    }
                }
                if field == 5 {
                    return Parsed::Invalid("more than six fields in a PROXY v1 line");
                }
                field += 1;
                field_start = i + 1;
            }
            _ => {
                let ok = match field {
                    1 => [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                        .iter()
                        .any(|p| p.starts_with(&buf[field_start..=i])),
                    2 | 3 => b.is_ascii_hexdigit() || b == b':' || b == b'.',
                    _ => b.is_ascii_digit(),
                };
                if !ok {
                    return Parsed::Invalid(match field {
                        1 => V1_PROTOCOL,
                        2 | 3 => "a PROXY v1 address with a character no address has",
                        _ => "a PROXY v1 port that is not a decimal number",
                    });
                }
            }
        }
        i += 1;
    };
    let len = end + 2;
    let mut fields = buf[V1_SIGNATURE.len()..end].split(|&b| b == b' ');
    let tcp4 = match fields.next() {
        Some(b"UNKNOWN") => {
            return complete(Version::V1, Command::Proxy, Transport::Unspec, len);
        }
        Some(b"TCP4") => true,
        Some(b"TCP6") => false,
        _ => return Parsed::Invalid(V1_PROTOCOL),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Parsed::Invalid("a PROXY v1 TCP line without exactly four addresses and ports");
    };
    // The checks above leave only ASCII in these fields.
    fn text(f: &[u8]) -> &str {
        std::str::from_utf8(f).unwrap_or("")
    }
    let (Some(sport), Some(dport)) = (v1_port(sport), v1_port(dport)) else {
        return Parsed::Invalid("a PROXY v1 port with a leading zero or above 65535");
    };
    let transport = if tcp4 {
        match (text(src).parse::<Ipv4Addr>(), text(dst).parse::<Ipv4Addr>()) {
            (Ok(s), Ok(d)) => Transport::Tcp {
                source: SocketAddr::new(s.into(), sport),
                destination: SocketAddr::new(d.into(), dport),
            },
            _ => return Parsed::Invalid("a PROXY v1 TCP4 line without two IPv4 addresses"),
        }
    } else {
        match (text(src).parse::<Ipv6Addr>(), text(dst).parse::<Ipv6Addr>()) {
            (Ok(s), Ok(d)) => Transport::Tcp {
                source: SocketAddr::new(s.into(), sport),
                destination: SocketAddr::new(d.into(), dport),
            },
            _ => return Parsed::Invalid("a PROXY v1 TCP6 line without two IPv6 addresses"),
        }
    };
    complete(Version::V1, Command::Proxy, transport, len)
}

/// A decimal port without a leading zero (the spec forbids them, against octal confusion).
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || (field[0] == b'0' && field.len() > 1) {
        return None;
    }
    let n = field.iter().try_fold(0u32, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })?;
    u16::try_from(n).ok()
}

/// Version 2: the signature, version and command, family and protocol, a 16-bit length, then
/// that many bytes of addresses and TLVs. Each field is checked as soon as it has arrived.
fn parse_v2(buf: &[u8]) -> Parsed {
    let Some(&ver_cmd) = buf.get(12) else {
        return Parsed::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("a PROXY v2 signature with a version other than 2");
    }
    let command = match ver_cmd & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => return Parsed::Invalid("a PROXY v2 command other than LOCAL and PROXY"),
    };
    let Some(&fam) = buf.get(13) else {
        return Parsed::Incomplete;
    };
    // LOCAL: "the receiver must ... discard the protocol block including the family".
    let (family, protocol) = (fam >> 4, fam & 0x0f);
    if command == Command::Proxy && (family > 3 || protocol > 2) {
        return Parsed::Invalid("a PROXY v2 address family or protocol the spec does not define");
    }
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Parsed::Incomplete;
    };
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX {
        return Parsed::Invalid("a PROXY v2 header longer than 536 bytes");
    }
    let Some(block) = buf.get(16..len) else {
        return Parsed::Incomplete;
    };
    if command == Command::Local {
        return complete(Version::V2, command, Transport::Unspec, len);
    }
    // Address bytes by family: UNSPEC, INET, INET6, UNIX.
    let addresses = [0, 12, 36, 216][usize::from(family)];
    let Some(tlvs) = block.get(addresses..) else {
        return Parsed::Invalid("a PROXY v2 address block shorter than its family's addresses");
    };
    let transport = match fam {
        0x11 => Transport::Tcp {
            source: SocketAddrV4::new(ipv4(&block[0..4]), port(&block[8..10])).into(),
            destination: SocketAddrV4::new(ipv4(&block[4..8]), port(&block[10..12])).into(),
        },
        0x21 => Transport::Tcp {
            source: SocketAddrV6::new(ipv6(&block[0..16]), port(&block[32..34]), 0, 0).into(),
            destination: SocketAddrV6::new(ipv6(&block[16..32]), port(&block[34..36]), 0, 0).into(),
        },
        _ => Transport::Unspec,
    };
    // TLVs follow the addresses of a known family; with UNSPEC the layout is unknown and the
    // whole block is skipped.
    if family != 0 {
        if let Some(reason) = check_tlvs(tlvs) {
            return Parsed::Invalid(reason);
        }
    }
    complete(Version::V2, command, transport, len)
}

/// Walks the TLVs (type, 16-bit length, value) without reading them: each must fit in the header.
fn check_tlvs(mut tlvs: &[u8]) -> Option<&'static str> {
    while !tlvs.is_empty() {
        let Some(&[_, hi, lo]) = tlvs.get(..3) else {
            return Some("a PROXY v2 TLV cut short by the header's end");
        };
        let Some(rest) = tlvs.get(3 + usize::from(u16::from_be_bytes([hi, lo]))..) else {
            return Some("a PROXY v2 TLV longer than what is left of the header");
        };
        tlvs = rest;
    }
    None
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(b);
    Ipv6Addr::from(octets)
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn complete(version: Version, command: Command, transport: Transport, len: usize) -> Parsed {
    Parsed::Complete {
        header: ProxyHeader {
            version,
            command,
            transport,
        },
        len,
    }
}

/// Reads from `stream` into `prefix` until it starts with a whole PROXY header of an accepted
/// version, then consumes that header (it is not for the backend) and returns it. What the client
/// sent after the header stays in the prefix for the next peek and the replay.
///
/// Fails with `InvalidData` on bytes that are not such a header, with `UnexpectedEof` if the
/// client closes first, and with the prefix's errors ([`super::prefix::PrefixError`]): the
/// deadline, the core's budget, or a prefix limit below the header's length (give the prefix at
/// least [`V2_MAX`] bytes). Each read reparses at most [`V2_MAX`] bytes.
pub async fn read_proxy_header(
    prefix: &mut Prefix<'_>,
    stream: &mut TcpStream,
    accept: Accept,
) -> io::Result<ProxyHeader> {
    loop {
        match parse(prefix.data(), accept) {
            Parsed::Complete { header, len } => {
                prefix.consume(len);
                return Ok(header);
            }
            Parsed::Invalid(reason) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
            }
            Parsed::Incomplete => {}
        }
        if prefix.fill(stream).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed before its PROXY header ended",
            ));
        }
    }
}

/// Both addresses as IPv4 when both are (IPv4-mapped IPv6 addresses, as a dual-stack socket
/// reports IPv4 peers, count as IPv4); otherwise both as IPv6, an IPv4 one mapped (as HAProxy
/// does for a mixed pair).
enum Pair {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

fn pair(source: SocketAddr, destination: SocketAddr) -> Pair {
    let v4 = |a: SocketAddr| match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    };
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        SocketAddr::V6(a) => a,
    };
    match (v4(source), v4(destination)) {
        (Some(s), Some(d)) => Pair::V4(s, d),
        _ => Pair::V6(v6(source), v6(destination)),
    }
}

/// The v1 line for a connection from `source` to `destination` (`TCP4` or `TCP6`, never
/// `UNKNOWN`: any two IP addresses can be written as one family). At most 104 bytes.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    match pair(source, destination) {
        Pair::V4(s, d) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        Pair::V6(s, d) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
    }
    .into_bytes()
}

/// The v2 header (command PROXY, TCP over IPv4 or IPv6, no TLV) for a connection from `source`
/// to `destination`: 28 or 52 bytes.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(V2_SIGNATURE);
    match pair(source, destination) {
        Pair::V4(s, d) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        Pair::V6(s, d) => {
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

/// The v2 header of a connection lb opens on its own behalf (a health check): command LOCAL,
/// family UNSPEC, no address, as HAProxy sends for its checks.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::super::golden;
    use super::super::testing::{client_sending, join, Rng};
    use super::*;

    fn tcp(source: &str, destination: &str) -> Transport {
        Transport::Tcp {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn header(version: Version, transport: Transport) -> ProxyHeader {
        ProxyHeader {
            version,
            command: Command::Proxy,
            transport,
        }
    }

    /// Every prefix of `buf` parses as `Incomplete` or as `buf` does; `Complete` and `Invalid`
    /// answers never change with more bytes. Returns what `buf` parses as.
    fn same_at_every_split(buf: &[u8], accept: Accept) -> Parsed {
        let whole = parse(buf, accept);
        let mut decided_at = None;
        for end in 0..=buf.len() {
            let got = parse(&buf[..end], accept);
            if decided_at.is_some() || got != Parsed::Incomplete {
                assert_eq!(got, whole, "prefix of {end} bytes of {buf:02x?}");
                decided_at.get_or_insert(end);
            }
            if let Parsed::Complete { len, .. } = got {
                assert!(len <= end);
            }
            // An answer depends on the header's bytes only: a few more past it are enough.
            if decided_at.is_some_and(|at| end >= at + 16) {
                break;
            }
        }
        whole
    }

    #[test]
    fn haproxy_and_nginx_headers_parse_to_their_addresses() {
        let cases = [
            (
                golden::HAPROXY_V2_TCP4,
                Version::V2,
                tcp("127.0.0.1:53956", "127.0.0.1:47001"),
            ),
            (
                golden::HAPROXY_V2_TCP6,
                Version::V2,
                tcp("[::1]:42960", "[::1]:47003"),
            ),
            (
                golden::HAPROXY_V2_TLVS,
                Version::V2,
                tcp("127.0.0.1:40174", "127.0.0.1:47005"),
            ),
            (
                golden::HAPROXY_V1_TCP4,
                Version::V1,
                tcp("127.0.0.1:54612", "127.0.0.1:47002"),
            ),
            (
                golden::HAPROXY_V1_TCP6,
                Version::V1,
                tcp("[::1]:56272", "[::1]:47004"),
            ),
            (
                golden::NGINX_V1_TCP4,
                Version::V1,
                tcp("127.0.0.1:53892", "127.0.0.1:47011"),
            ),
            (
                golden::NGINX_V1_TCP6,
                Version::V1,
                tcp("[::1]:55546", "[::1]:47012"),
            ),
        ];
        for (hex, version, transport) in cases {
            let buf = golden::bytes(hex);
            let len = buf.len() - golden::REQUEST.len();
            assert_eq!(&buf[len..], golden::REQUEST);
            let expected = Parsed::Complete {
                header: header(version, transport),
                len,
            };
            assert_eq!(same_at_every_split(&buf, Accept::Any), expected);
            let own = if version == Version::V1 {
                Accept::V1
            } else {
                Accept::V2
            };
            assert_eq!(parse(&buf, own), expected);
            let other = if version == Version::V1 {
                Accept::V2
            } else {
                Accept::V1
            };
            assert!(matches!(parse(&buf, other), Parsed::Invalid(_)));
            assert!(
                matches!(parse(&buf[..1], other), Parsed::Invalid(_)),
                "told at once"
            );
        }
    }

    #[test]
    fn a_v2_local_header_from_haproxys_health_checks_is_accepted_without_addresses() {
        let buf = golden::bytes(golden::HAPROXY_V2_LOCAL);
        let expected = Parsed::Complete {
            header: ProxyHeader {
                version: Version::V2,
                command: Command::Local,
                transport: Transport::Unspec,
            },
            len: 16,
        };
        assert_eq!(same_at_every_split(&buf, Accept::V2), expected);
        // LOCAL ignores the family and skips whatever address block it is given.
        let mut odd = buf.clone();
        odd[13] = 0xff;
        odd[15] = 5;
        odd.extend_from_slice(&[9; 5]);
        assert_eq!(
            parse(&odd, Accept::V2),
            Parsed::Complete {
                header: ProxyHeader {
                    version: Version::V2,
                    command: Command::Local,
                    transport: Transport::Unspec,
                },
                len: 21,
            }
        );
    }

    #[test]
    fn the_specs_v1_examples_and_limits() {
        let spec = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            same_at_every_split(spec, Accept::V1),
            Parsed::Complete {
                header: header(Version::V1, tcp("192.168.0.1:56324", "192.168.0.11:443")),
                len: 47,
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            same_at_every_split(unknown, Accept::Any),
            Parsed::Complete {
                header: header(Version::V1, Transport::Unspec),
                len: 15,
            }
        );
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        assert!(matches!(
            same_at_every_split(tcp6.as_bytes(), Accept::V1),
            Parsed::Complete { len: 104, .. }
        ));
        // The worst case is 107 bytes; one more is refused, at its 107th byte.
        let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(worst.len(), 107);
        assert!(matches!(
            same_at_every_split(worst.as_bytes(), Accept::V1),
            Parsed::Complete { len: 107, .. }
        ));
        let long = format!("PROXY UNKNOWN {f} {f} 65535 655355\r\n");
        assert_eq!(
            parse(long.as_bytes(), Accept::V1),
            Parsed::Invalid(V1_TOO_LONG)
        );
        assert_eq!(
            parse(&long.as_bytes()[..107], Accept::V1),
            Parsed::Invalid(V1_TOO_LONG)
        );
        assert_eq!(
            parse(&long.as_bytes()[..106], Accept::V1),
            Parsed::Incomplete
        );
        // Anything after UNKNOWN is ignored up to the CRLF.
        assert!(matches!(
            parse(b"PROXY UNKNOWN \x01whatever\xff\r\n", Accept::V1),
            Parsed::Complete { len: 26, .. }
        ));
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 80\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 443 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +443 80\r\n",
            b"PROXY TCP4 192.168.01.1 5.6.7.8 443 80\r\n",
            b"PROXY TCP4 ::1 ::1 443 80\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 443 80\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 443 80\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 443 80\rx\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 443 80\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 443 80 9\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 443 \r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 443 80\r\n",
            b"PROXY TCP 1.2.3.4 5.6.7.8 443 80\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWNX\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 443 80\r\n",
            b"PROXY TCP4 1.2.3.4 g.6.7.8 443 80\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for line in bad {
            assert!(
                matches!(same_at_every_split(line, Accept::Any), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // Told at the first byte that no header has.
        assert!(matches!(parse(b"G", Accept::Any), Parsed::Invalid(_)));
        assert!(matches!(parse(b"\x16", Accept::Any), Parsed::Invalid(_)));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 x", Accept::Any),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP7", Accept::Any),
            Parsed::Invalid(_)
        ));
        assert_eq!(parse(b"", Accept::Any), Parsed::Incomplete);
        assert_eq!(parse(b"PROX", Accept::Any), Parsed::Incomplete);
        assert_eq!(parse(b"\r\n\r\n\0", Accept::Any), Parsed::Incomplete);
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, fam]);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v2_families_protocols_lengths_and_tlvs_are_checked() {
        let ipv4_block = [127, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187];
        // UDP over IPv4 and UNIX streams: valid, but no address lb uses.
        for (fam, block) in [(0x12, ipv4_block.to_vec()), (0x31, vec![0; 216])] {
            let buf = v2(0x21, fam, &block);
            assert_eq!(
                same_at_every_split(&buf, Accept::V2),
                Parsed::Complete {
                    header: header(Version::V2, Transport::Unspec),
                    len: buf.len(),
                }
            );
        }
        // UNSPEC with PROXY: accepted, the block skipped unread.
        assert!(matches!(
            parse(&v2(0x21, 0x00, &[1, 2]), Accept::V2),
            Parsed::Complete { len: 18, .. }
        ));
        // TLVs after the addresses: walked, each bounded by the header.
        let mut with_tlvs = ipv4_block.to_vec();
        with_tlvs.extend_from_slice(&[0x04, 0, 2, 0, 0, 0xe0, 0, 0]);
        assert!(matches!(
            same_at_every_split(&v2(0x21, 0x11, &with_tlvs), Accept::V2),
            Parsed::Complete { len: 36, .. }
        ));
        let bad: Vec<Vec<u8>> = vec![
            v2(0x11, 0x11, &ipv4_block),                          // version 1 nibble
            v2(0x22, 0x11, &ipv4_block),                          // command 2
            v2(0x21, 0x41, &ipv4_block),                          // family 4
            v2(0x21, 0x13, &ipv4_block),                          // protocol 3
            v2(0x21, 0x11, &ipv4_block[..11]),                    // addresses cut short
            v2(0x21, 0x21, &[0; 35]),                             // IPv6 addresses cut short
            v2(0x21, 0x11, &[&ipv4_block[..], &[4, 0]].concat()), // TLV header cut short
            v2(0x21, 0x11, &[&ipv4_block[..], &[4, 0, 3, 0]].concat()), // TLV past the end
        ];
        for buf in &bad {
            assert!(
                matches!(same_at_every_split(buf, Accept::V2), Parsed::Invalid(_)),
                "{buf:02x?}"
            );
        }
    }

    #[test]
    fn a_v2_header_longer_than_the_maximum_is_refused_from_its_first_16_bytes() {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend_from_slice(&[0x21, 0x11]);
        buf.extend_from_slice(&((V2_MAX - 16 + 1) as u16).to_be_bytes());
        assert_eq!(buf.len(), 16);
        assert!(matches!(parse(&buf, Accept::V2), Parsed::Invalid(_)));
        // At the maximum it is waited for (TLVs of a NOOP type fill it).
        let mut block = vec![127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2];
        let pad = V2_MAX - 16 - block.len() - 3;
        block.extend_from_slice(&[0x04]);
        block.extend_from_slice(&(pad as u16).to_be_bytes());
        block.resize(V2_MAX - 16, 0);
        let buf = v2(0x21, 0x11, &block);
        assert_eq!(buf.len(), V2_MAX);
        assert_eq!(parse(&buf[..V2_MAX - 1], Accept::V2), Parsed::Incomplete);
        assert!(matches!(
            parse(&buf, Accept::V2),
            Parsed::Complete { len: V2_MAX, .. }
        ));
    }

    #[test]
    fn encoders_write_what_haproxy_writes() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let header_of = |hex: &str| {
            let b = golden::bytes(hex);
            b[..b.len() - golden::REQUEST.len()].to_vec()
        };
        assert_eq!(
            encode_v2(a("127.0.0.1:53956"), a("127.0.0.1:47001")),
            header_of(golden::HAPROXY_V2_TCP4)
        );
        assert_eq!(
            encode_v2(a("[::1]:42960"), a("[::1]:47003")),
            header_of(golden::HAPROXY_V2_TCP6)
        );
        assert_eq!(
            encode_v1(a("127.0.0.1:54612"), a("127.0.0.1:47002")),
            header_of(golden::HAPROXY_V1_TCP4)
        );
        assert_eq!(
            encode_v1(a("[::1]:56272"), a("[::1]:47004")),
            header_of(golden::HAPROXY_V1_TCP6)
        );
        assert_eq!(encode_v2_local(), golden::bytes(golden::HAPROXY_V2_LOCAL));
        // IPv4-mapped addresses (a dual-stack listener's IPv4 peers) are written as IPv4...
        assert_eq!(
            encode_v1(a("[::ffff:10.0.0.1]:1000"), a("10.0.0.2:80")),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n"
        );
        assert_eq!(
            encode_v2(a("[::ffff:10.0.0.1]:1000"), a("[::ffff:10.0.0.2]:80"))[13],
            0x11
        );
        // ...and a mixed pair as IPv6, the IPv4 one mapped, as HAProxy does.
        assert_eq!(
            encode_v1(a("10.0.0.1:1000"), a("[2001:db8::2]:80")),
            b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 1000 80\r\n"
        );
        assert_eq!(
            parse(
                &encode_v2(a("10.0.0.1:1000"), a("[2001:db8::2]:80")),
                Accept::V2
            ),
            Parsed::Complete {
                header: header(
                    Version::V2,
                    tcp("[::ffff:10.0.0.1]:1000", "[2001:db8::2]:80")
                ),
                len: 52,
            }
        );
    }

    fn random_addr(rng: &mut Rng) -> SocketAddr {
        let port = rng.next() as u16;
        match rng.below(3) {
            0 => SocketAddr::new(Ipv4Addr::from(rng.next() as u32).into(), port),
            1 => SocketAddr::new(
                Ipv4Addr::from(rng.next() as u32).to_ipv6_mapped().into(),
                port,
            ),
            // Few and long runs of zero groups, so that `::` forms are met.
            _ => {
                let mut seg = [0u16; 8];
                for s in seg.iter_mut() {
                    if rng.below(2) == 0 {
                        *s = rng.next() as u16;
                    }
                }
                SocketAddr::new(Ipv6Addr::from(seg).into(), port)
            }
        }
    }

    fn canonical(a: SocketAddr) -> SocketAddr {
        SocketAddr::new(a.ip().to_canonical(), a.port())
    }

    #[test]
    fn encoded_headers_parse_back_to_their_addresses_at_every_split() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let (s, d) = (random_addr(&mut rng), random_addr(&mut rng));
            for (buf, version) in [
                (encode_v1(s, d), Version::V1),
                (encode_v2(s, d), Version::V2),
            ] {
                assert!(buf.len() <= if version == Version::V1 { 104 } else { 52 });
                let mut with_data = buf.clone();
                with_data.extend_from_slice(b"\x16\x03\x01 data");
                let Parsed::Complete { header, len } = same_at_every_split(&with_data, Accept::Any)
                else {
                    panic!("{:?} did not parse", String::from_utf8_lossy(&buf));
                };
                assert_eq!((header.version, len), (version, buf.len()));
                let both_v4 = canonical(s).is_ipv4() && canonical(d).is_ipv4();
                let (ps, pd) = (header.source().unwrap(), header.destination().unwrap());
                assert_eq!(ps.is_ipv4(), both_v4);
                assert_eq!((canonical(ps), canonical(pd)), (canonical(s), canonical(d)));
            }
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic_and_answers_never_change_with_more_bytes() {
        let seeds: Vec<Vec<u8>> = [
            golden::HAPROXY_V2_TCP4,
            golden::HAPROXY_V2_TCP6,
            golden::HAPROXY_V2_TLVS,
            golden::HAPROXY_V2_LOCAL,
            golden::HAPROXY_V1_TCP4,
            golden::NGINX_V1_TCP6,
        ]
        .iter()
        .map(|h| golden::bytes(h))
        .collect();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for i in 0..20_000 {
            let buf = if i % 4 == 0 {
                let len = rng.below(600);
                rng.bytes(len)
            } else {
                // A real header with a few bytes changed, cut or lengthened.
                let mut b = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(b.len());
                    b[at] = match rng.below(3) {
                        0 => rng.next() as u8,
                        1 => b" \r\n:.0"[rng.below(6)],
                        _ => b[at].wrapping_add(1),
                    };
                }
                if rng.below(4) == 0 {
                    b.truncate(rng.below(b.len() + 1));
                } else if rng.below(4) == 0 {
                    let more = rng.below(600);
                    b.extend(rng.bytes(more));
                }
                b
            };
            let accept = [Accept::V1, Accept::V2, Accept::Any][rng.below(3)];
            match same_at_every_split(&buf, accept) {
                Parsed::Complete { len, .. } => assert!(len <= V2_MAX.max(V1_MAX)),
                Parsed::Incomplete => assert!(buf.len() < V2_MAX, "{} bytes pending", buf.len()),
                Parsed::Invalid(_) => {}
            }
        }
    }

    #[test]
    fn read_proxy_header_consumes_the_header_and_leaves_the_data_byte_by_byte_too() {
        lb_common::runtime::block_on(|| async {
            let budget = super::super::budget::PeekBudget::new(1 << 20);
            let whole = golden::bytes(golden::HAPROXY_V2_TLVS);
            let hlen = whole.len() - golden::REQUEST.len();
            let splits = [
                vec![whole.clone()],
                whole.chunks(1).map(<[u8]>::to_vec).collect(),
                vec![whole[..13].to_vec(), whole[13..].to_vec()],
                vec![whole[..hlen].to_vec(), whole[hlen..].to_vec()],
            ];
            for chunks in splits {
                let (mut s, c) = client_sending(chunks, true).await;
                let mut p = Prefix::new(&budget, 4096, std::time::Duration::from_secs(5));
                let h = read_proxy_header(&mut p, &mut s, Accept::Any)
                    .await
                    .unwrap();
                assert_eq!(h.source(), Some("127.0.0.1:40174".parse().unwrap()));
                // The rest of the request may still be on its way.
                while p.len() < golden::REQUEST.len() && p.fill(&mut s).await.unwrap() > 0 {}
                assert_eq!(p.data(), golden::REQUEST);
                join(c).await;
            }
            // Not a header, EOF first.
            let (mut s, c) = client_sending(vec![b"GET / HTTP/1.1\r\n".to_vec()], true).await;
            let mut p = Prefix::new(&budget, 4096, std::time::Duration::from_secs(5));
            let e = read_proxy_header(&mut p, &mut s, Accept::Any)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            join(c).await;
            let (mut s, c) = client_sending(vec![b"PROXY TCP4 1.2".to_vec()], true).await;
            let mut p = Prefix::new(&budget, 4096, std::time::Duration::from_secs(5));
            let e = read_proxy_header(&mut p, &mut s, Accept::Any)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            join(c).await;
        });
    }
}
