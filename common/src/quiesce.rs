//! Closing a listener without resetting its accept queue: hold new SYNs, let the queue empty,
//! then close. Closing (or `shutdown`) resets every connection the kernel completed but the
//! process had not accepted yet, and those clients had already sent their request: in CI a
//! compose scale-down failed a request through lb this way, and a backend held with SIGSTOP
//! while 32 clients connected reset 9 to 32 of them at SIGTERM (backend/tests/stop.rs).
//!
//! The hold is a classic BPF socket filter that drops TCP segments with SYN set and ACK clear:
//! new handshakes are not answered (the client retransmits its SYN after 1 s and then finds the
//! closed listener, or its balancer times the connect out and retries elsewhere), while the final
//! ACKs of handshakes already under way still complete them into the queue. Children inherit the
//! filter, which only ever drops a bare SYN, something an open connection is never sent.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How long handshakes already answered (SYN-ACK sent) get to complete once SYNs are held: a
/// client's ACK takes one round trip, well under this on a LAN or in a container network.
pub const SETTLE: Duration = Duration::from_millis(50);
/// How often the queues are looked at while they empty.
const POLL: Duration = Duration::from_millis(2);

/// The filter: `ldb [13]` (the TCP flags byte; a socket filter sees the segment from its TCP
/// header), keep SYN and ACK (`and #0x12`), drop when only SYN is set, else keep the segment.
fn hold_program() -> [libc::sock_filter; 5] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13),
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, 0x12),
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, 0x02),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ]
}

/// Makes the listening socket `fd` stop answering new connections; those already completed or
/// under way still reach its accept queue.
pub fn hold_new_connections(fd: RawFd) -> io::Result<()> {
    let mut prog = hold_program();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, both alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connections in the accept queue of the listening socket `fd` (TCP_INFO's `tcpi_unacked` is
/// the accept backlog for a listener).
pub fn queued(fd: RawFd) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// What [`quiesce`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Quiesced {
    /// Listeners whose new SYNs could not be held: closing those still resets their queue.
    pub not_held: usize,
    /// Connections still queued when `limit` ran out: whoever accepts was not keeping up.
    pub left: u32,
}

/// Holds new SYNs on every listener, waits [`SETTLE`] for handshakes under way, then until every
/// accept queue is empty (the caller's accept loops keep running) or `limit` has passed since
/// the call. The caller closes the listeners next.
pub fn quiesce(fds: &[RawFd], limit: Duration) -> Quiesced {
    let start = Instant::now();
    let not_held = fds
        .iter()
        .filter(|&&fd| hold_new_connections(fd).is_err())
        .count();
    std::thread::sleep(SETTLE.min(limit));
    loop {
        let left: u32 = fds.iter().map(|&fd| queued(fd).unwrap_or(0)).sum();
        if left == 0 || start.elapsed() >= limit {
            return Quiesced { not_held, left };
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn connects_within(addr: std::net::SocketAddr, t: Duration) -> bool {
        TcpStream::connect_timeout(&addr, t).is_ok()
    }

    #[test]
    fn a_held_listener_answers_no_new_client_but_keeps_its_queue_and_open_connections() {
        held_listener_on("127.0.0.1:0");
    }

    /// The filter reads the TCP header, which a socket filter sees first over IPv6 too.
    #[test]
    fn the_hold_works_over_ipv6() {
        if TcpListener::bind("[::1]:0").is_err() {
            eprintln!("SKIPPED: no IPv6 loopback");
            return;
        }
        held_listener_on("[::1]:0");
    }

    fn held_listener_on(bind: &str) {
        let l = TcpListener::bind(bind).unwrap();
        let addr = l.local_addr().unwrap();
        let mut open_client = TcpStream::connect(addr).unwrap();
        let (mut open_server, _) = l.accept().unwrap();
        let mut queued_client = TcpStream::connect(addr).unwrap();
        queued_client.write_all(b"queued").unwrap();
        assert_eq!(queued(l.as_raw_fd()).unwrap(), 1);

        hold_new_connections(l.as_raw_fd()).unwrap();
        assert!(
            !connects_within(addr, Duration::from_millis(300)),
            "a new client was answered after the hold"
        );
        assert_eq!(queued(l.as_raw_fd()).unwrap(), 1, "the queue changed");
        // The connection queued before the hold is accepted whole.
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"queued");
        assert_eq!(queued(l.as_raw_fd()).unwrap(), 0);
        // The connection open before the hold carries data both ways.
        open_client.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        open_server.read_exact(&mut got).unwrap();
        open_server.write_all(b"pong").unwrap();
        open_client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        drop(queued_client);
    }

    #[test]
    fn quiesce_returns_once_the_queue_is_accepted_and_reports_what_is_left() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).unwrap();
        // Nobody accepts: the limit ends the wait and the queued connection is reported.
        let fd = l.as_raw_fd();
        let t = Instant::now();
        let q = quiesce(&[fd], Duration::from_millis(120));
        assert_eq!(
            q,
            Quiesced {
                not_held: 0,
                left: 1
            }
        );
        assert!(t.elapsed() >= Duration::from_millis(120));
        // Once it is accepted, the wait ends after the settle time.
        let _s = l.accept().unwrap();
        let t = Instant::now();
        assert_eq!(quiesce(&[fd], Duration::from_secs(5)), Quiesced::default());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_socket_that_cannot_be_held_is_counted() {
        let q = quiesce(&[-1], Duration::from_millis(1));
        assert_eq!(q.not_held, 1);
    }
}
