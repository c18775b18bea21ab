//! Sockets built with socket2: `SO_REUSEPORT` listener groups and helpers to hand them to monoio.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::runtime::IoDriver;

/// Default accept backlog; the kernel caps it at `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: i32 = 4096;

/// One `SO_REUSEPORT` listener per worker, all on the same address.
///
/// Built on the main thread so that port 0 resolves once (the first socket picks the port, the
/// others join it) and so that the real address can be printed before workers start.
pub struct ListenerGroup {
    pub addr: SocketAddr,
    listeners: Vec<StdListener>,
}

impl ListenerGroup {
    pub fn bind(addr: SocketAddr, count: usize, backlog: i32) -> io::Result<ListenerGroup> {
        let first = reuseport_listener(addr, backlog)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..count.max(1) {
            listeners.push(reuseport_listener(addr, backlog)?);
        }
        Ok(ListenerGroup { addr, listeners })
    }

    /// Hands out the listeners, one per worker, in worker order.
    pub fn into_listeners(self) -> Vec<StdListener> {
        self.listeners
    }
}

/// A bound, listening TCP socket with `SO_REUSEADDR` and `SO_REUSEPORT` set.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Converts a std listener into a monoio one. Must run inside the worker's runtime.
pub fn monoio_listener(l: StdListener) -> io::Result<monoio::net::TcpListener> {
    l.set_nonblocking(IoDriver::wants_nonblocking())?;
    monoio::net::TcpListener::from_std(l)
}

/// Parses `host:port`, accepting `localhost` and a bare `:port` (meaning all interfaces) too.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        s.to_string()
    };
    if let Ok(a) = full.parse::<SocketAddr>() {
        return Ok(a);
    }
    match full.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("'{s}' resolves to no address")),
        Err(e) => Err(format!("'{s}' is not a host:port address ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_members_share_one_resolved_port() {
        let g = ListenerGroup::bind("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        assert_ne!(g.addr.port(), 0);
        let port = g.addr.port();
        for l in g.into_listeners() {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn addresses_parse_with_names_and_bare_ports() {
        assert_eq!(parse_addr("127.0.0.1:80").unwrap().port(), 80);
        assert_eq!(parse_addr(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert!(parse_addr("localhost:9000").unwrap().ip().is_loopback());
        assert!(parse_addr("nonsense").is_err());
    }

    #[test]
    fn binding_a_taken_non_reuseport_address_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = reuseport_listener(addr, 16).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
