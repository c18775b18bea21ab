//! The process-wide health flag behind `/health`, flipped by the admin paths and by signals
//! (SIGUSR1: unhealthy, SIGUSR2: healthy).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// A health flag shared by every core. Relaxed ordering is enough: it guards no other data.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
}

impl Health {
    pub const fn new() -> Self {
        Health {
            healthy: AtomicBool::new(true),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the flag and returns the previous value.
    pub fn set(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// The flag the server and the signal handlers use.
pub static HEALTH: Health = Health::new();

extern "C" fn on_sigusr1(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    HEALTH.healthy.store(false, Ordering::Relaxed);
}

extern "C" fn on_sigusr2(_: libc::c_int) {
    HEALTH.healthy.store(true, Ordering::Relaxed);
}

/// Installs SIGUSR1 (unhealthy) and SIGUSR2 (healthy) handlers for the whole process.
pub fn install_signal_handlers() -> io::Result<()> {
    install(libc::SIGUSR1, on_sigusr1)?;
    install(libc::SIGUSR2, on_sigusr2)
}

/// Makes one dedicated thread receive SIGUSR1/SIGUSR2: call on the main thread before starting
/// the workers. The calling thread blocks both signals, and so do the threads it creates later.
///
/// With one receiving thread, signals are handled one at a time (two threads could run the
/// handlers of a quick USR1, USR2 in either order), and no worker's `io_uring_enter` or
/// `epoll_wait` is interrupted. Standard signals do not queue: when both are pending at once,
/// SIGUSR1 is handled first, so wait for one to take effect before sending the other.
pub fn route_signals_to_one_thread() -> io::Result<()> {
    // Created before the mask changes, so this thread keeps the signals unblocked.
    std::thread::Builder::new()
        .name("backend-signals".into())
        .spawn(|| loop {
            std::thread::park();
        })?;
    // SAFETY: plain sigset manipulation on a zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: sigaction is plain data; the handler only performs an atomic store.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        // Each handler blocks the other: when both signals are pending, the kernel would
        // otherwise nest the second handler inside the first, so that the earlier signal's
        // store lands last.
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaddset(&mut action.sa_mask, libc::SIGUSR1);
        libc::sigaddset(&mut action.sa_mask, libc::SIGUSR2);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_flag_is_healthy_and_set_returns_the_previous_state() {
        let h = Health::new();
        assert!(h.is_healthy());
        assert!(h.set(false));
        assert!(!h.is_healthy());
        assert!(!h.set(true));
        assert!(h.is_healthy());
    }

    #[test]
    fn signals_flip_the_process_flag() {
        install_signal_handlers().unwrap();
        // SAFETY: raise delivers to this thread; the handlers only store an atomic.
        unsafe { libc::raise(libc::SIGUSR1) };
        assert!(!HEALTH.is_healthy());
        unsafe { libc::raise(libc::SIGUSR2) };
        assert!(HEALTH.is_healthy());
    }
}
