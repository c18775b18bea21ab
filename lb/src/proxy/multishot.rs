//! Multishot relay: each socket's receives are one multishot receive on the core's own ring
//! (`lb_common::uring`), into buffers of its provided buffer ring; sends stay on monoio.
//!
//! Against the completion relay (`tcp.rs`) a message costs no poll arming and no failed first
//! receive, and an idle connection holds no buffer (like the readiness relay). Where that ring
//! cannot run (the epoll driver, a kernel before 6.0) the readiness relay takes over.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;

use lb_common::uring::{MultiRecv, RecvRing};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::halves::{split, Half};
use super::idle::IdleGuard;
use super::readiness::{self, Scratch};
use super::tcp::{RelayError, RelayOpts, Relayed, Side};

/// The relay's future, boxed at the size of whichever relay runs.
pub type RelayFuture<'a> = Pin<Box<dyn Future<Output = Result<Relayed, RelayError>> + 'a>>;

/// Relays with multishot receives, or with the readiness relay where they are not available.
pub fn relay<'a>(
    client: TcpStream,
    backend: TcpStream,
    opts: RelayOpts,
    scratch: &'a Scratch,
    idle: &'a IdleGuard,
) -> RelayFuture<'a> {
    match RecvRing::current() {
        Some(ring) => Box::pin(relay_on(&ring, client, backend, idle)),
        None => Box::pin(readiness::relay(client, backend, opts, scratch, idle)),
    }
}

fn relay_on<'a>(
    ring: &Rc<RecvRing>,
    client: TcpStream,
    backend: TcpStream,
    idle: &'a IdleGuard,
) -> super::UntilIdle<
    'a,
    impl Future<Output = Result<u64, RelayError>> + 'a,
    impl Future<Output = Result<u64, RelayError>> + 'a,
> {
    let fds = [client.as_raw_fd(), backend.as_raw_fd()];
    let (from_client, from_backend) = (ring.recv(fds[0]), ring.recv(fds[1]));
    // Each direction keeps the socket it reads open (the receive refers to its descriptor) and
    // writes into the other.
    let (client_r, client_w) = split(client);
    let (backend_r, backend_w) = split(backend);
    super::until_idle(
        copy_half(
            from_client,
            client_r,
            backend_w,
            Side::Client,
            Side::Backend,
            idle,
        ),
        copy_half(
            from_backend,
            backend_r,
            client_w,
            Side::Backend,
            Side::Client,
            idle,
        ),
        idle,
        fds,
    )
}

/// Not an `async fn`, which would keep its arguments twice in every idle connection.
#[allow(clippy::manual_async_fn)]
fn copy_half(
    mut from: MultiRecv,
    reading: Half<TcpStream>,
    mut to: Half<TcpStream>,
    from_side: Side,
    to_side: Side,
    idle: &IdleGuard,
) -> impl Future<Output = Result<u64, RelayError>> + '_ {
    async move {
        let _reading = reading;
        let mut total = 0u64;
        loop {
            let chunk = from
                .recv()
                .await
                .map_err(|source| RelayError::io(from_side, source))?;
            idle.touch();
            let Some(chunk) = chunk else {
                // Half-close: tell the other side we are done writing, keep the other direction.
                // The access log names whichever side closed first.
                idle.eof(from_side == Side::Client);
                let _ = to.shutdown().await;
                return Ok(total);
            };
            let n = chunk.len();
            // The buffer goes back to the ring when the send is done with it.
            let (res, _) = to.write_all(chunk).await;
            res.map_err(|source| RelayError::io(to_side, source))?;
            idle.moved(to_side == Side::Backend, n);
            total += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn the_multishot_relay_future_of_an_idle_connection_stays_small() {
        let size = lb_common::runtime::block_on(|| async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            let client = TcpStream::connect(a).await.unwrap();
            let backend = TcpStream::connect(a).await.unwrap();
            let timer = super::super::idle::IdleTimer::new();
            let idle = timer.register(Duration::from_secs(5));
            let Some(ring) = RecvRing::current() else {
                // The epoll driver has no such ring (the readiness relay runs instead).
                assert!(
                    std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some(),
                    "no multishot ring on io_uring"
                );
                return None;
            };
            let fut = relay_on(&ring, client, backend, &idle);
            let size = std::mem::size_of_val(&fut);
            drop(fut);
            Some(size)
        });
        if let Some(size) = size {
            assert!(size <= 1024, "multishot relay future is {size} bytes");
        }
    }
}
