//! Readiness relay: wait until a socket is readable (one io_uring poll, no buffer committed),
//! then move the bytes with non-blocking `recv`/`send` through one per-core scratch buffer.
//!
//! An idle connection therefore holds no relay buffer at all, which is what keeps thousands of
//! idle proxied connections cheap (the completion relay in `tcp.rs` must commit a buffer to every
//! pending read). Only a write that the peer cannot take at once keeps its unsent rest in a
//! buffer of its own until the socket is writable again.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::net::TcpStream;

use super::idle::IdleGuard;
use super::tcp::{RelayError, RelayOpts, Relayed, Side};

/// One scratch buffer per core: every read-then-write below runs without an await in between,
/// so no two connections ever use it at once.
pub struct Scratch {
    buf: RefCell<Vec<u8>>,
}

impl Scratch {
    pub fn new(size: usize) -> Scratch {
        Scratch {
            buf: RefCell::new(vec![0u8; size]),
        }
    }
}

/// Not an `async fn`, which would keep both streams twice in every idle connection (its
/// arguments and the locals it moves them into); the block keeps the captured ones.
#[allow(clippy::manual_async_fn)]
pub fn relay<'a>(
    client: TcpStream,
    backend: TcpStream,
    opts: RelayOpts,
    scratch: &'a Scratch,
    idle: &'a IdleGuard,
) -> impl Future<Output = Result<Relayed, RelayError>> + 'a {
    async move {
        let fds = [client.as_raw_fd(), backend.as_raw_fd()];
        super::until_idle(
            copy_half(
                &client,
                &backend,
                Side::Client,
                Side::Backend,
                opts,
                scratch,
                idle,
            ),
            copy_half(
                &backend,
                &client,
                Side::Backend,
                Side::Client,
                opts,
                scratch,
                idle,
            ),
            idle,
            fds,
        )
        .await
    }
}

fn err(side: Side, source: io::Error) -> RelayError {
    RelayError::io(side, source)
}

async fn copy_half(
    from: &TcpStream,
    to: &TcpStream,
    from_side: Side,
    to_side: Side,
    opts: RelayOpts,
    scratch: &Scratch,
    idle: &IdleGuard,
) -> Result<u64, RelayError> {
    let (rfd, wfd) = (from.as_raw_fd(), to.as_raw_fd());
    let mut total = 0u64;
    // A new connection usually has its first bytes waiting, and a read that filled the buffer
    // probably left more: try at once. After a short read the socket is most likely drained, so
    // wait for readiness instead of paying for a recv that would find nothing.
    let mut try_now = true;
    loop {
        if !try_now {
            from.readable(false).await.map_err(|e| err(from_side, e))?;
        }
        let outcome = {
            let mut buf = scratch.buf.borrow_mut();
            let limit = buf.len().min(opts.max_buffer);
            match recv(rfd, &mut buf[..limit]) {
                Ok(0) => None,
                Ok(n) => {
                    try_now = n == limit;
                    Some(forward(wfd, &buf[..n]).map(|sent| (n, buf[sent..n].to_vec())))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    try_now = false;
                    Some(Ok((0, Vec::new())))
                }
                Err(e) => return Err(err(from_side, e)),
            }
        };
        match outcome {
            None => {
                idle.eof(from_side == Side::Client);
                // EOF: half-close the other side, keep the other direction running.
                // SAFETY: plain shutdown(2) on a socket this connection owns.
                unsafe { libc::shutdown(wfd, libc::SHUT_WR) };
                return Ok(total);
            }
            Some(Err(e)) => return Err(err(to_side, e)),
            Some(Ok((0, _))) => {}
            Some(Ok((n, rest))) => {
                idle.moved(to_side == Side::Backend, n - rest.len());
                total += n as u64;
                if !rest.is_empty() {
                    write_rest(to, wfd, rest, idle, to_side).await?;
                }
            }
        }
    }
}

/// Sends what the peer takes now; returns how many bytes went out.
fn forward(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < data.len() {
        match send(fd, &data[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// The peer's receive window is full: keep the rest and send it as the socket drains.
async fn write_rest(
    to: &TcpStream,
    fd: RawFd,
    rest: Vec<u8>,
    idle: &IdleGuard,
    side: Side,
) -> Result<(), RelayError> {
    let mut off = 0;
    while off < rest.len() {
        to.writable(false).await.map_err(|e| err(side, e))?;
        let sent = forward(fd, &rest[off..]).map_err(|e| err(side, e))?;
        off += sent;
        idle.moved(side == Side::Backend, sent);
    }
    Ok(())
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of its length; MSG_NOSIGNAL turns EPIPE into an error
    // instead of killing the process.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
