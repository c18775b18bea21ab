//! Byte movers that know nothing of backends: the two L4 relays, idle timeouts, and the peeks at
//! what a connection sends first, all into one [`prefix::Prefix`]: a PROXY header
//! ([`proxy_header`]), a TLS ClientHello's server name ([`tls`]), an HTTP head for cookie and
//! header hashing ([`http`]).

pub mod budget;
pub mod halves;
pub mod http;
pub mod idle;
pub mod join;
pub mod multishot;
pub mod prefix;
pub mod proxy_header;
pub mod readiness;
pub mod tcp;
pub mod tls;

#[cfg(test)]
mod golden;

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use idle::{Cut, Expired, IdleGuard, Until};
use join::TryJoin;
use tcp::{RelayError, Relayed};

/// Runs both relay directions (client to backend, backend to client) until they end, the first
/// error, the idle timeout or a cut. Anything but both directions ending cleanly aborts both
/// sockets (`fds`) with a reset, so that a stream cut short never looks complete to either peer.
///
/// A plain function returning a hand-written future rather than an `async fn`: an async fn keeps
/// its arguments in its state next to the future built from them, which doubled the two relay
/// directions in every connection (measured: the completion relay's future 1,808 -> ~850 bytes).
pub fn until_idle<'a, A, B>(
    up: A,
    down: B,
    idle: &'a IdleGuard,
    fds: [RawFd; 2],
) -> UntilIdle<'a, A, B>
where
    A: Future<Output = Result<u64, RelayError>>,
    B: Future<Output = Result<u64, RelayError>>,
{
    UntilIdle {
        inner: Until::new(join::try_join(up, down), idle.expired()),
        fds,
    }
}

pub struct UntilIdle<'a, A, B> {
    inner: Until<TryJoin<A, B>, Expired<'a>>,
    /// The client's and the backend's socket.
    fds: [RawFd; 2],
}

/// TCP keepalive on `fd` (probes after `idle`, every `interval`, `count` of them).
pub fn set_keepalive(
    fd: RawFd,
    idle: std::time::Duration,
    interval: std::time::Duration,
    count: u32,
) {
    // SAFETY: the socket belongs to the caller and outlives this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(count);
    let _ = sock.set_tcp_keepalive(&ka);
}

/// Makes the close of `fd` a reset (`SO_LINGER {1, 0}`) instead of a FIN.
pub fn abort_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket the caller owns, with a linger struct of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

impl<A, B> Future for UntilIdle<'_, A, B>
where
    A: Future<Output = Result<u64, RelayError>>,
    B: Future<Output = Result<u64, RelayError>>,
{
    type Output = Result<Relayed, RelayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of `inner`, never moved out while pinned; `fds` is Copy.
        let this = unsafe { self.get_unchecked_mut() };
        let fds = this.fds;
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        inner.poll(cx).map(|r| {
            let r = match r {
                Ok(r) => r.map(|(to_backend, to_client)| Relayed {
                    to_backend,
                    to_client,
                }),
                Err(Cut::Idle) => Err(RelayError::Idle),
                Err(Cut::Shutdown) => Err(RelayError::Shutdown),
                Err(Cut::Lifetime) => Err(RelayError::Lifetime),
                Err(Cut::Drained) => Err(RelayError::Drained),
            };
            if r.as_ref()
                .is_err_and(|e| !matches!(e, RelayError::Lifetime))
            {
                // Set before the sockets close (when this future's halves are dropped).
                fds.iter().copied().for_each(abort_on_close);
            }
            r
        })
    }
}

/// Test helpers shared by the peeks.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::{Read, Write};
    use std::time::Duration;

    /// The server side of a loopback connection whose client, on a thread of its own, writes
    /// `chunks` one by one (a pause between them, so that they tend to arrive as separate reads)
    /// and then closes (`close`) or waits (at most 10 s) for the server to close.
    pub async fn client_sending(
        chunks: Vec<Vec<u8>>,
        close: bool,
    ) -> (monoio::net::TcpStream, std::thread::JoinHandle<()>) {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            for chunk in chunks {
                // The server may have closed early (a refused or invalid prefix): not an error.
                if s.write_all(&chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if !close {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.read(&mut [0u8; 1]);
            }
        });
        let (stream, _) = listener.accept().await.unwrap();
        (stream, client)
    }

    /// Waits for a client thread without blocking the runtime: monoio closes a dropped socket
    /// through the ring, so a blocking join would keep the client waiting for the close.
    pub async fn join(client: std::thread::JoinHandle<()>) {
        for _ in 0..2_000 {
            if client.is_finished() {
                break;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        client.join().unwrap();
    }

    /// A seeded xorshift64: reproducible random inputs without a crate.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform enough in `0..n` (`n` > 0).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        pub fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| (self.next() >> 24) as u8).collect()
        }
    }
}
