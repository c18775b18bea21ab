//! The file descriptor budget: accept only connections lb has the descriptors to serve.
//!
//! A client connection needs two descriptors (the client's and the backend's). Without a budget,
//! lb accepted clients until `socket()` failed with EMFILE for their backends, closed them as if
//! no backend were up, and (before that was fixed) ejected every healthy backend: under
//! `prlimit --nofile=256`, 917 of 1,000 clients were refused while 82 descriptors were free.
//! With it, the accept loops pause while the open connections use up the descriptors (the
//! kernel's queue holds the waiting clients) and resume as soon as some close.

use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptors per client connection: the client's and the backend's.
const PER_CONNECTION: u64 = 2;

pub struct FdBudget {
    /// RLIMIT_NOFILE, after raising the soft limit to the hard one.
    pub limit: u64,
    /// Open when the budget was made (listeners, admin, logging, ...).
    pub baseline: u64,
    /// Kept for everything that is not a client connection.
    pub reserve: u64,
    /// Times an accept loop paused for descriptors.
    pub pauses: AtomicU64,
}

impl FdBudget {
    /// Raises the soft descriptor limit to the hard one (as nginx's `worker_rlimit_nofile` or Go
    /// do), then counts what is open now.
    pub fn new(reserve: u64) -> FdBudget {
        let limit = raise_nofile_limit();
        let baseline = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(64);
        if limit < baseline + reserve + 64 * PER_CONNECTION {
            tracing::warn!(
                limit,
                baseline,
                reserve,
                "few file descriptors: lb can serve only a handful of connections at once (raise `ulimit -n`)"
            );
        }
        FdBudget {
            limit,
            baseline,
            reserve,
            pauses: AtomicU64::new(0),
        }
    }

    /// A budget for tests: `limit` descriptors, none in use yet.
    pub fn fixed(limit: u64, baseline: u64, reserve: u64) -> FdBudget {
        FdBudget {
            limit,
            baseline,
            reserve,
            pauses: AtomicU64::new(0),
        }
    }

    /// Whether one more client connection fits beside `open` ones.
    pub fn has_room(&self, open: u64) -> bool {
        self.baseline + self.reserve + (open + 1) * PER_CONNECTION <= self.limit
    }

    /// Client connections that fit at once.
    pub fn capacity(&self) -> u64 {
        self.limit.saturating_sub(self.baseline + self.reserve) / PER_CONNECTION
    }

    pub fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }
}

fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_counts_two_descriptors_per_connection_beside_the_reserve() {
        let b = FdBudget::fixed(256, 20, 100);
        assert_eq!(b.capacity(), 68);
        assert!(b.has_room(67));
        assert!(!b.has_room(68));
        assert!(!FdBudget::fixed(100, 20, 100).has_room(0));
    }
}
