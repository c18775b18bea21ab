//! Signals delivered to one thread that waits for them, instead of interrupting workers.

use std::io;

/// Blocks `signals` in the calling thread, so in every thread it spawns afterwards (call it
/// before starting workers), and starts a thread that takes them with `sigwait` and calls `on`.
pub fn spawn_signal_thread(
    name: &str,
    signals: &[libc::c_int],
    mut on: impl FnMut(libc::c_int) + Send + 'static,
) -> io::Result<()> {
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
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_raised_signal_reaches_the_handler_thread() {
        let (tx, rx) = mpsc::channel();
        spawn_signal_thread("t-signals", &[libc::SIGUSR2], move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        // SAFETY: signals our own process; SIGUSR2 is blocked here and taken by sigwait.
        unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got, libc::SIGUSR2);
    }
}
