//! The memory a core lets its head peeks hold at once (HTTP heads now, TLS and PROXY headers
//! later): clients on the data port are untrusted, and without a cap a crowd of slow clients each
//! sending most of a `relay.max_head` head would make lb allocate for all of them at once.

use std::cell::Cell;

/// One core's peek memory.
pub struct PeekBudget {
    cap: usize,
    used: Cell<usize>,
}

impl PeekBudget {
    pub fn new(cap: usize) -> PeekBudget {
        PeekBudget {
            cap,
            used: Cell::new(0),
        }
    }

    /// A lease for one peek: holds nothing until it grows.
    pub fn lease(&self) -> PeekLease<'_> {
        PeekLease {
            budget: self,
            held: 0,
        }
    }

    /// Bytes leased now.
    pub fn used(&self) -> usize {
        self.used.get()
    }
}

/// What one peek holds of its core's budget; given back when dropped.
pub struct PeekLease<'a> {
    budget: &'a PeekBudget,
    held: usize,
}

impl PeekLease<'_> {
    /// Holds `bytes` in all for this peek, if the core's budget has room: false, and nothing
    /// changed, when it has not.
    pub fn hold(&mut self, bytes: usize) -> bool {
        if bytes <= self.held {
            return true;
        }
        let more = bytes - self.held;
        let used = self.budget.used.get();
        if used + more > self.budget.cap {
            return false;
        }
        self.budget.used.set(used + more);
        self.held = bytes;
        true
    }
}

impl Drop for PeekLease<'_> {
    fn drop(&mut self) {
        self.budget
            .used
            .set(self.budget.used.get().saturating_sub(self.held));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_share_the_cap_and_give_back_on_drop() {
        let b = PeekBudget::new(100);
        let mut x = b.lease();
        assert!(x.hold(60));
        assert!(x.hold(40), "shrinking keeps what is held");
        let mut y = b.lease();
        assert!(!y.hold(41));
        assert!(y.hold(40));
        assert_eq!(b.used(), 100);
        drop(x);
        assert_eq!(b.used(), 40);
        assert!(y.hold(100));
        drop(y);
        assert_eq!(b.used(), 0);
    }
}
