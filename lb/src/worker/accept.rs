//! Accepting on one listener of one core: readiness, then non-blocking `accept4` in batches that
//! grow under a burst; each accepted connection becomes a task on this core.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lb_common::logging::RateLimited;
use lb_common::task::spawn_guarded;
use monoio::net::TcpStream;

use super::connection::handle;
use super::Core;
use crate::shared::routing::listener_counter;
use crate::shared::Listener;

/// How often a loop paused for descriptors looks again: resumes within this of a close.
const FD_PAUSE: Duration = Duration::from_millis(2);
/// How often an idle accept loop looks at the lifecycle flags.
pub(super) const ACCEPT_TICK: Duration = Duration::from_millis(100);
/// Connections taken per readiness event before yielding to the connections themselves...
const ACCEPT_BATCH: usize = 64;
/// ...doubled after each batch that found the queue still non-empty, up to this: a burst of
/// thousands of clients onto a busy core is taken in a few turns instead of 64 per pass over
/// every ready connection (measured before: ~2,000 accepts/s at saturation, a 4,096 burst
/// waiting ~1.9 s). 1,024 accepts stall the core's connections for a few ms at most.
const ACCEPT_BATCH_MAX: usize = 1024;

/// The next turn's batch: larger while the queue outlasts each batch, back to the base once a
/// turn empties it.
fn next_accept_batch(batch: usize, emptied: bool) -> usize {
    if emptied {
        ACCEPT_BATCH
    } else {
        (batch * 2).min(ACCEPT_BATCH_MAX)
    }
}

/// Waits for readiness (cancellable at no cost) and accepts with non-blocking `accept4`, so that
/// a stop never cancels an accept that already took a connection: during a binary upgrade the
/// old and the new process share these sockets, and a lost connection would be a reset.
pub(super) async fn accept_loop(socket: std::net::TcpListener, lst: Arc<Listener>, core: Rc<Core>) {
    let fd = socket.as_raw_fd();
    let _ = socket.set_nonblocking(true);
    let listener = match monoio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = core.index, error = %e, "cannot register listener with the runtime");
            return;
        }
    };
    core.shared.ready.fetch_add(1, Ordering::SeqCst);
    let lifecycle = &core.shared.lifecycle;
    let warn = RateLimited::default();
    let mut batch = ACCEPT_BATCH;
    while !lifecycle.stopping() && !lst.is_closed() {
        // At max_connections (the listener's or the whole process's): leave the clients in the
        // kernel's queue until some connections close; never accept only to close.
        if at_limit(&lst, &core) {
            lst.counters
                .add(core.index, listener_counter::LIMIT_PAUSES, 1);
            monoio::time::sleep(FD_PAUSE).await;
            continue;
        }
        // No descriptors for another client and its backend: likewise.
        let fds = &core.shared.fds;
        if !fds.has_room(core.shared.cores.active_total()) {
            fds.paused();
            warn.warn(|suppressed| {
                tracing::warn!(worker = core.index, limit = fds.limit, connections = fds.capacity(), suppressed,
                    "file descriptor limit reached: accepting paused until connections close (raise `ulimit -n`)")
            });
            monoio::time::sleep(FD_PAUSE).await;
            continue;
        }
        let ready = monoio::select! {
            r = listener.readable(false) => Some(r),
            _ = monoio::time::sleep(ACCEPT_TICK) => None,
        };
        if ready.is_none() {
            continue;
        }
        let mut emptied = false;
        for _ in 0..batch {
            if !core.shared.fds.has_room(core.shared.cores.active_total()) || at_limit(&lst, &core)
            {
                break;
            }
            match accept(fd) {
                Ok((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        core.shared.cores.accepted(core.index);
                        lst.counters.add(core.index, listener_counter::ACCEPTED, 1);
                        lst.counters.add(core.index, listener_counter::ACTIVE, 1);
                        spawn_guarded(
                            "connection",
                            handle(stream, peer, lst.clone(), core.clone()),
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register accepted connection"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    emptied = true;
                    break;
                }
                Err(e) => {
                    emptied = true;
                    // Out of file descriptors (taken by something the budget does not see) or
                    // memory: back off briefly instead of spinning.
                    warn.warn(|suppressed| {
                        tracing::warn!(worker = core.index, error = %e, suppressed, "accept failed")
                    });
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
        batch = next_accept_batch(batch, emptied);
    }
    // Dropping the listener here closes only this process's descriptor: after a takeover the
    // new process still holds the socket and its queue.
    tracing::debug!(worker = core.index, listener = %lst.name, "accept loop stopped");
}

/// Whether the listener, or the whole process, has as many connections open as it may.
fn at_limit(lst: &Listener, core: &Core) -> bool {
    let listener_max = lst.config.load().limits.max_connections;
    listener_max.is_some_and(|m| lst.counters.sum(listener_counter::ACTIVE) >= m)
        || core
            .shared
            .live
            .load()
            .max_connections
            .is_some_and(|m| core.shared.cores.active_total() >= m)
}

fn accept(fd: RawFd) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    let (owned, peer) = lb_common::net::accept_cloexec(fd)?;
    let peer = peer
        .as_socket()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok((std::net::TcpStream::from(owned), peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_batch_grows_while_the_queue_outlasts_it_and_resets_when_emptied() {
        let mut b = ACCEPT_BATCH;
        let mut turns = 0;
        let mut taken = 0;
        // A burst of 4,096 waiting connections, never emptied until the last turn.
        while taken < 4096 {
            taken += b;
            turns += 1;
            b = next_accept_batch(b, false);
        }
        assert!(turns <= 8, "{turns} turns for a 4,096 burst");
        assert_eq!(b, ACCEPT_BATCH_MAX);
        assert_eq!(next_accept_batch(ACCEPT_BATCH_MAX, true), ACCEPT_BATCH);
        assert_eq!(next_accept_batch(ACCEPT_BATCH, true), ACCEPT_BATCH);
    }
}
