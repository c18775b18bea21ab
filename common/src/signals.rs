//! Signals delivered to one thread that waits for them, instead of interrupting workers.

use std::io;

/// Blocks `signals` in the calling thread, so in every thread it spawns afterwards (call it
/// before starting workers), and starts a thread that takes them with `sigwait` and calls `on`.
pub fn spawn_signal_thread(
    name: &str,
    signals: &[libc::c_int],
    mut on: impl FnMut(libc::c_int) + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    // SAFETY: sigset_t is plain data filled by sigemptyset/sigaddset.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set; sigwait writes one int.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                on(sig);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// In a test binary other threads do not block the signal, so a process-directed one could
    /// land there; direct it at the handler thread, which sigwait takes the same way.
    #[test]
    fn a_signal_reaches_the_handler_thread() {
        use std::os::unix::thread::JoinHandleExt;
        let (tx, rx) = mpsc::channel();
        let handle = spawn_signal_thread("t-signals", &[libc::SIGUSR2], move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        // SAFETY: a live thread of this process that blocks SIGUSR2 and waits for it.
        unsafe { libc::pthread_kill(handle.as_pthread_t(), libc::SIGUSR2) };
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got, libc::SIGUSR2);
    }
}
