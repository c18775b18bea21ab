//! Open-connection counts per backend, visible to every core without a lock.
//!
//! Each core writes only its own slot (one writer, so a relaxed load+store is enough and no
//! read-modify-write is needed) and readers sum the slots. Slots are padded to a cache line so
//! that two cores never bounce the same line.

use std::sync::atomic::{AtomicU64, Ordering};

#[repr(align(64))]
#[derive(Default)]
struct Slot {
    active: AtomicU64,
    total: AtomicU64,
}

/// Counts for `backends x cores`.
pub struct LoadBoard {
    cores: usize,
    slots: Vec<Slot>,
}

impl LoadBoard {
    pub fn new(backends: usize, cores: usize) -> LoadBoard {
        LoadBoard {
            cores,
            slots: (0..backends * cores).map(|_| Slot::default()).collect(),
        }
    }

    fn slot(&self, backend: usize, core: usize) -> &Slot {
        &self.slots[backend * self.cores + core]
    }

    /// Called by `core` only: one more open connection to `backend`.
    pub fn opened(&self, backend: usize, core: usize) {
        let s = self.slot(backend, core);
        s.active
            .store(s.active.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        s.total
            .store(s.total.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Called by `core` only: a connection to `backend` ended.
    pub fn closed(&self, backend: usize, core: usize) {
        let s = self.slot(backend, core);
        s.active.store(
            s.active.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Open connections to `backend` over all cores. Another core's count may be a moment old.
    pub fn active(&self, backend: usize) -> u64 {
        (0..self.cores)
            .map(|c| self.slot(backend, c).active.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections ever opened to `backend` over all cores.
    pub fn total(&self, backend: usize) -> u64 {
        (0..self.cores)
            .map(|c| self.slot(backend, c).total.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_all_cores_add_up() {
        let b = LoadBoard::new(2, 3);
        b.opened(1, 0);
        b.opened(1, 2);
        b.opened(1, 2);
        b.opened(0, 1);
        b.closed(1, 2);
        assert_eq!(b.active(1), 2);
        assert_eq!(b.total(1), 3);
        assert_eq!(b.active(0), 1);
    }

    #[test]
    fn closing_more_than_opened_does_not_wrap() {
        let b = LoadBoard::new(1, 1);
        b.closed(0, 0);
        assert_eq!(b.active(0), 0);
    }
}
