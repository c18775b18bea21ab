//! What kernel mode's control loop (`control::kernel`) publishes for the admin API: whether
//! netfilter forwards each kernel-mode service now, why not when it does not, and the counters
//! per backend that nftables keeps. The admin API asks for fresh counters at a scrape; the loop,
//! which owns every `nft` call, reads them and wakes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// One backend's traffic through netfilter, as nftables counted it: packets and bytes in both
/// directions, and new flows (connections) DNATed to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NftCounters {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}

/// A kernel-mode service as netfilter forwards it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelService {
    /// netfilter forwards its new flows now (its map is programmed). False: lb relays them.
    pub active: bool,
    /// Slots in its map.
    pub slots: usize,
    /// The backend set generation the map was programmed from.
    pub generation: u64,
    /// Counters by backend address, summed over the life of the process.
    pub backends: HashMap<SocketAddr, NftCounters>,
}

/// Everything the loop publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelView {
    /// The nftables table lb programs (`ip lb`), once kernel mode is in use.
    pub table: Option<String>,
    /// Why netfilter does not forward (no CAP_NET_ADMIN, no `nft`, a failed transaction).
    pub unavailable: Option<String>,
    /// By service name.
    pub services: HashMap<String, KernelService>,
}

#[derive(Default)]
struct Inner {
    view: KernelView,
    /// Counter reads asked for, and done (each a running number).
    asked: u64,
    done: u64,
    /// The loop has stopped (after a stop: its flows finished or the deadline passed, and its
    /// table is gone).
    stopped: bool,
}

/// Written by the kernel loop only; read by the admin API.
#[derive(Default)]
pub struct KernelStatus {
    inner: Mutex<Inner>,
    wake: Condvar,
}

impl KernelStatus {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> KernelView {
        self.lock().view.clone()
    }

    /// The loop's write.
    pub fn update(&self, f: impl FnOnce(&mut KernelView)) {
        f(&mut self.lock().view)
    }

    /// Whether any kernel-mode service is configured (the loop then serves counter reads).
    pub fn in_use(&self) -> bool {
        self.lock().view.table.is_some()
    }

    /// Asks the loop for fresh counters; the number to wait for with [`KernelStatus::read_done`].
    pub fn ask_read(&self) -> u64 {
        let mut g = self.lock();
        g.asked += 1;
        let n = g.asked;
        drop(g);
        self.wake.notify_all();
        n
    }

    /// Whether the read numbered `n` (or a later one) has been done.
    pub fn read_done(&self, n: u64) -> bool {
        self.lock().done >= n
    }

    /// The loop: waits up to `limit` for a counter read to be asked for; the number to report
    /// with [`KernelStatus::mark_read`] when one is, None on the timeout.
    pub fn wait_for_ask(&self, limit: Duration) -> Option<u64> {
        let g = self.lock();
        let (g, _) = self
            .wake
            .wait_timeout_while(g, limit, |i| i.asked <= i.done)
            .unwrap_or_else(|p| p.into_inner());
        (g.asked > g.done).then_some(g.asked)
    }

    /// The loop is done: the process may exit.
    pub fn mark_stopped(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }

    /// Waits up to `limit` for [`KernelStatus::mark_stopped`]; whether it came.
    pub fn wait_stopped(&self, limit: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .wake
            .wait_timeout_while(g, limit, |i| !i.stopped)
            .unwrap_or_else(|p| p.into_inner());
        g.stopped
    }

    /// The loop read the counters asked for up to `n`.
    pub fn mark_read(&self, n: u64) {
        let mut g = self.lock();
        g.done = g.done.max(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_asked_for_is_seen_by_the_loop_and_done_once_marked() {
        let s = KernelStatus::default();
        assert_eq!(s.wait_for_ask(Duration::from_millis(1)), None);
        let n = s.ask_read();
        assert!(!s.read_done(n));
        assert_eq!(s.wait_for_ask(Duration::from_millis(1)), Some(n));
        s.mark_read(n);
        assert!(s.read_done(n));
        assert_eq!(s.wait_for_ask(Duration::from_millis(1)), None);
    }
}
