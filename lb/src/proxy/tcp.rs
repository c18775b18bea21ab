//! The L4 relay: one read/write loop per direction, half-close propagated, either error ends both.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::idle::IdleGuard;

/// Buffers start this small so that thousands of idle connections cost little memory; a read that
/// fills the buffer doubles it, up to the configured maximum, so bulk transfers quickly get large
/// reads.
pub const INITIAL_BUFFER: usize = 512;

/// Which side of the proxy an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// How a relay ended when not both directions ended cleanly. Either way both sockets are then
/// closed with a reset.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{side:?} side: {source}")]
    Io {
        side: Side,
        #[source]
        source: io::Error,
    },
    #[error("idle timeout")]
    Idle,
    #[error("cut at the shutdown deadline")]
    Shutdown,
    /// Past its maximum lifetime and quiet: closed cleanly, not reset.
    #[error("past its maximum lifetime")]
    Lifetime,
    /// Its backend's drain deadline passed.
    #[error("cut at its backend's drain deadline")]
    Drained,
}

impl RelayError {
    pub fn io(side: Side, source: io::Error) -> RelayError {
        RelayError::Io { side, source }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RelayOpts {
    pub max_buffer: usize,
}

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub to_backend: u64,
    pub to_client: u64,
}

/// Relays until both directions reached EOF (each propagated as a write shutdown), or until the
/// first error or idle timeout, which drops (and so cancels) the other direction. Not an `async
/// fn`, so that the streams it splits are not kept a second time in the connection's state.
pub fn relay(
    client: TcpStream,
    backend: TcpStream,
    opts: RelayOpts,
    idle: &IdleGuard,
) -> super::UntilIdle<
    '_,
    impl Future<Output = CopyResult> + '_,
    impl Future<Output = CopyResult> + '_,
> {
    let fds = [client.as_raw_fd(), backend.as_raw_fd()];
    let (client_r, client_w) = super::halves::split(client);
    let (backend_r, backend_w) = super::halves::split(backend);
    super::until_idle(
        copy_half(client_r, backend_w, Side::Client, Side::Backend, opts, idle),
        copy_half(backend_r, client_w, Side::Backend, Side::Client, opts, idle),
        idle,
        fds,
    )
}

type CopyResult = Result<u64, RelayError>;

/// Not an `async fn`, which would keep its arguments twice in every idle connection.
#[allow(clippy::manual_async_fn)]
fn copy_half<'a, R: AsyncReadRent + 'a, W: AsyncWriteRent + 'a>(
    mut from: R,
    mut to: W,
    from_side: Side,
    to_side: Side,
    opts: RelayOpts,
    idle: &'a IdleGuard,
) -> impl Future<Output = Result<u64, RelayError>> + 'a {
    async move {
        let mut cap = INITIAL_BUFFER.min(opts.max_buffer);
        let mut buf: Vec<u8> = Vec::with_capacity(cap);
        let mut total = 0u64;
        loop {
            let (res, b) = from.read(buf).await;
            buf = b;
            let n = res.map_err(|source| RelayError::io(from_side, source))?;
            idle.touch();
            if n == 0 {
                idle.eof(from_side == Side::Client);
                // Half-close: tell the other side we are done writing, keep the other direction.
                let _ = to.shutdown().await;
                return Ok(total);
            }
            let (res, b) = to.write_all(buf).await;
            buf = b;
            res.map_err(|source| RelayError::io(to_side, source))?;
            idle.moved(to_side == Side::Backend, n);
            total += n as u64;
            if n == cap && cap < opts.max_buffer {
                cap = (cap * 2).min(opts.max_buffer);
                buf = Vec::with_capacity(cap);
            } else {
                buf.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn the_relay_future_of_an_idle_connection_stays_small() {
        // Every open connection holds this future: it was 1,808 bytes while `relay` and
        // `until_idle` were async fns keeping their arguments beside what they built from them.
        let size = lb_common::runtime::block_on(|| async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            let client = TcpStream::connect(a).await.unwrap();
            let backend = TcpStream::connect(a).await.unwrap();
            let timer = super::super::idle::IdleTimer::new();
            let idle = timer.register(Duration::from_secs(5));
            let opts = RelayOpts { max_buffer: 65536 };
            let fut = relay(client, backend, opts, &idle);
            let size = std::mem::size_of_val(&fut);
            drop(fut);
            size
        });
        // 752 while copy_half was an `async fn` keeping its arguments twice; 688 after.
        assert!(size <= 704, "relay future is {size} bytes");
    }
}
