//! SIGTERM and SIGINT: stop accepting without resetting the queued clients, let the open
//! connections finish within a grace period, exit 0. As PID 1 of a container a signal without a
//! handler is ignored, so without this `docker stop` (and a compose scale-down) waited its whole
//! timeout and then SIGKILLed the backend, resetting whatever request it was answering.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Open connections over every core. Written once per connection, never per request.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Accept loops that saw their listener shut down: every connection they accepted is counted in
/// [`OPEN`] by then.
static ACCEPT_ENDED: AtomicUsize = AtomicUsize::new(0);

/// How often the stop thread looks at the open-connection count while it waits.
const POLL: Duration = Duration::from_millis(10);
/// The longest wait for the accept queues to empty once new clients are held.
const QUIESCE_MAX: Duration = Duration::from_secs(1);

/// Counts one open connection for as long as it lives.
pub struct Open(());

impl Open {
    pub fn new() -> Open {
        OPEN.fetch_add(1, Ordering::Relaxed);
        Open(())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Open {
    fn default() -> Self {
        Open::new()
    }
}

/// True once SIGTERM or SIGINT arrived: accept errors are then expected, not worth a warning.
pub fn is_stopping() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

/// An accept loop calls this once, when its accept fails after the stop.
pub fn accept_ended() {
    ACCEPT_ENDED.fetch_add(1, Ordering::Relaxed);
}

/// Blocks SIGTERM and SIGINT in the calling thread and so in every thread it starts later: call
/// it first on the main thread, so that only the stop thread ([`spawn_stop_thread`]) takes them
/// (a thread that left them unblocked would get the default action: death, or nothing as PID 1).
pub fn block_stop_signals() -> io::Result<()> {
    // SAFETY: plain sigset manipulation on a zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// Starts the thread that takes SIGTERM and SIGINT (after [`block_stop_signals`]; a signal that
/// came in between waits for it). `listeners`: the listening sockets, one accept loop each. On
/// the signal new clients are held (not answered), the queued ones accepted
/// ([`lb_common::quiesce`]), then the listeners shut down, so that new connections are refused
/// (a balancer in front retries them elsewhere) while open ones carry on.
pub fn spawn_stop_thread(listeners: Vec<RawFd>, grace: Duration) -> io::Result<()> {
    lb_common::signals::spawn_signal_thread(
        "backend-stop",
        &[libc::SIGTERM, libc::SIGINT],
        move |signal| {
            if STOPPING.swap(true, Ordering::Relaxed) {
                return;
            }
            let deadline = Instant::now() + grace;
            // The accept loops keep taking the queue meanwhile; at most 1 s of the grace.
            let q = lb_common::quiesce::quiesce(&listeners, grace.min(QUIESCE_MAX));
            if q.not_held > 0 || q.left > 0 {
                tracing::warn!(
                    not_held = q.not_held,
                    left = q.left,
                    "stopping: some queued clients will be reset"
                );
            }
            for &fd in &listeners {
                // SAFETY: shutdown(2) on a listening socket this process owns until it exits;
                // it stops listening, and a pending accept on any core fails with EINVAL.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            }
            // An accept that completed just before the shutdown is counted once its loop sees
            // the failure that follows it.
            while ACCEPT_ENDED.load(Ordering::Relaxed) < listeners.len()
                && Instant::now() < deadline
            {
                std::thread::sleep(POLL);
            }
            let open = OPEN.load(Ordering::Relaxed);
            tracing::info!(
                signal,
                open,
                grace_ms = grace.as_millis() as u64,
                "stopping: no new connections, waiting for the open ones"
            );
            while OPEN.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            tracing::info!(still_open = OPEN.load(Ordering::Relaxed), "stopped");
            std::process::exit(0);
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_connection_counts_until_it_is_dropped() {
        let before = OPEN.load(Ordering::Relaxed);
        let a = Open::new();
        let b = Open::new();
        assert_eq!(OPEN.load(Ordering::Relaxed), before + 2);
        drop(a);
        drop(b);
        assert_eq!(OPEN.load(Ordering::Relaxed), before);
    }
}
