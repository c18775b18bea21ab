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

/// How long a bind waits for a listener that is only going away: a process that just exited
/// keeps its sockets until the kernel has torn its io_uring down (measured here: 5-11 ms).
pub const GOING_AWAY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl ListenerGroup {
    /// Binds `count` sockets on `addr`, after checking that nothing else listens there: with
    /// `SO_REUSEPORT` a second process of the same user would otherwise silently share the port
    /// and split the clients between two configurations.
    pub fn bind(addr: SocketAddr, count: usize, backlog: i32) -> io::Result<ListenerGroup> {
        ensure_free(addr, GOING_AWAY_WAIT)?;
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

/// Fails with `AddrInUse` when a socket already listens on `addr`, found by a bind without
/// `SO_REUSEPORT` (which any listener there refuses, whatever its options). Waits up to `wait` for
/// a listener that is going away. Port 0 is always free.
pub fn ensure_free(addr: SocketAddr, wait: std::time::Duration) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    retry_in_use(wait, || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // TIME_WAIT connections on the port are no listener.
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false).ok();
        }
        socket.bind(&addr.into())
    })
    .map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: address in use: another process already listens there"),
            )
        } else {
            io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
        }
    })
}

/// Runs `f` until it succeeds, fails with anything but `AddrInUse`, or `wait` has passed.
pub fn retry_in_use<T>(
    wait: std::time::Duration,
    mut f: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match f() {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// Accepts one connection with `accept4(SOCK_CLOEXEC)`, non-blocking when the driver wants it
/// (epoll), blocking otherwise (io_uring works best so). Not monoio's own accept: its io_uring
/// op sets no flags, so its sockets lack close-on-exec and leak into every process lb starts (a
/// replica started during an admin request held that request's connection open, and its client
/// waited for an end that never came).
pub fn accept_cloexec(
    fd: std::os::fd::RawFd,
) -> io::Result<(std::os::fd::OwnedFd, socket2::SockAddr)> {
    use std::os::fd::FromRawFd;
    let mut flags = libc::SOCK_CLOEXEC;
    if IoDriver::wants_nonblocking() {
        flags |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: accept4 fills at most `len` bytes of the storage we own; the fd it returns is ours.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let s = libc::accept4(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            flags,
        );
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            std::os::fd::OwnedFd::from_raw_fd(s),
            socket2::SockAddr::new(storage, len),
        ))
    }
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

/// Errors that say this process is short of something (descriptors, buffers, memory), never that
/// the peer failed: they must not eject a backend or fail its health check.
pub fn is_local_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether `ip` is one of this machine's addresses (loopback, or on any interface): a backend there,
/// on the port lb listens on, would be lb itself.
pub fn is_local_ip(ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || interface_ips().contains(&ip)
}

/// The addresses of every interface (getifaddrs(3)); empty if it fails.
pub fn interface_ips() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let a = &*(sa as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::from(
                            u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let a = &*(sa as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::from(a.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_interface_addresses_are_local_and_a_documentation_address_is_not() {
        assert!(is_local_ip("127.0.0.1".parse().unwrap()));
        assert!(is_local_ip("127.3.2.1".parse().unwrap()));
        assert!(is_local_ip("::1".parse().unwrap()));
        assert!(is_local_ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_local_ip("192.0.2.7".parse().unwrap()));
        for ip in interface_ips() {
            assert!(is_local_ip(ip), "{ip}");
        }
    }

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
    fn a_port_another_reuseport_group_listens_on_is_in_use() {
        let g = ListenerGroup::bind("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let addr = g.addr;
        let err = ListenerGroup::bind(addr, 1, 16)
            .err()
            .expect("must not share");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("address in use"), "{err}");
        drop(g);
        assert!(
            ListenerGroup::bind(addr, 2, 16).is_ok(),
            "free again once closed"
        );
    }

    #[test]
    fn binding_a_taken_non_reuseport_address_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = reuseport_listener(addr, 16).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
