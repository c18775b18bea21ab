//! Golden vectors: bytes that real programs sent, captured on this machine, in hex.
//!
//! How they were captured (2 cores, loopback only): a Python listener on 127.0.0.1 that wrote the
//! hex of the first bytes of every connection it accepted (until 0.7 s of silence), behind
//!
//! - HAProxy 2.6.12 (Debian 12), `mode tcp`, frontends on 127.0.0.1 and [::1], servers
//!   `send-proxy-v2`, `send-proxy` (v1), `send-proxy-v2 proxy-v2-options crc32c,unique-id` (with
//!   `unique-id-format lb-golden-%rt`) and `send-proxy-v2 check` (its health checks); the client
//!   sent `GET / HTTP/1.1\r\nHost: golden\r\n\r\n` through it;
//! - nginx 1.22.1, `stream { server { listen ...; proxy_pass ...; proxy_protocol on; } }`, on
//!   127.0.0.1 and [::1], with the same request.
//!
//! The PROXY vectors are the header followed by the request, as the backend got them.

#![allow(dead_code)]

/// Decodes one of the vectors below.
pub fn bytes(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// What the client sent after every PROXY header below.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: golden\r\n\r\n";

/// HAProxy `send-proxy-v2`, client 127.0.0.1:53956 to the frontend
/// 127.0.0.1:47001.
pub const HAPROXY_V2_TCP4: &str = "\
    0d0a0d0a000d0a515549540a2111000c7f0000017f000001d2c4b799474554202f20485454502f312e310d0a486f7374\
    3a20676f6c64656e0d0a0d0a";

/// HAProxy `send-proxy-v2`, client [::1]:42960 to the frontend [::1]:47003.
pub const HAPROXY_V2_TCP6: &str = "\
    0d0a0d0a000d0a515549540a212100240000000000000000000000000000000100000000000000000000000000000001\
    a7d0b79b474554202f20485454502f312e310d0a486f73743a20676f6c64656e0d0a0d0a";

/// HAProxy `send-proxy-v2 proxy-v2-options crc32c,unique-id`: a CRC32C TLV (type 3) and a
/// unique-id TLV (type 5, `lb-golden-2`) after the IPv4 addresses (127.0.0.1:40174 to
/// 127.0.0.1:47005).
pub const HAPROXY_V2_TLVS: &str = "\
    0d0a0d0a000d0a515549540a211100217f0000017f0000019ceeb79d030004e6dc48bd05000b6c622d676f6c64656e2d\
    32474554202f20485454502f312e310d0a486f73743a20676f6c64656e0d0a0d0a";

/// HAProxy's health check of a `send-proxy-v2` server: a LOCAL command, family UNSPEC, no
/// address (and nothing after it: the check only connects).
pub const HAPROXY_V2_LOCAL: &str = "0d0a0d0a000d0a515549540a20000000";

/// HAProxy `send-proxy`, client 127.0.0.1:54612 to the frontend 127.0.0.1:47002.
pub const HAPROXY_V1_TCP4: &str = "\
    50524f58592054435034203132372e302e302e31203132372e302e302e312035343631322034373030320d0a47455420\
    2f20485454502f312e310d0a486f73743a20676f6c64656e0d0a0d0a";

/// HAProxy `send-proxy`, client [::1]:56272 to the frontend [::1]:47004.
pub const HAPROXY_V1_TCP6: &str = "\
    50524f58592054435036203a3a31203a3a312035363237322034373030340d0a474554202f20485454502f312e310d0a\
    486f73743a20676f6c64656e0d0a0d0a";

/// nginx `proxy_protocol on` (stream), client 127.0.0.1:53892 to 127.0.0.1:47011.
pub const NGINX_V1_TCP4: &str = "\
    50524f58592054435034203132372e302e302e31203132372e302e302e312035333839322034373031310d0a47455420\
    2f20485454502f312e310d0a486f73743a20676f6c64656e0d0a0d0a";

/// nginx `proxy_protocol on` (stream), client [::1]:55546 to [::1]:47012.
pub const NGINX_V1_TCP6: &str = "\
    50524f58592054435036203a3a31203a3a312035353534362034373031320d0a474554202f20485454502f312e310d0a\
    486f73743a20676f6c64656e0d0a0d0a";
