//! One core's FIFO of clients waiting for a backend slot: every eligible backend of their
//! service is at its `max_connections`. The head waits for a slot to free (a connection closing
//! on this core wakes it at once; one closing on another core is seen at the next look, every
//! few ms); the others wait for their turn. A waiter past the queue's timeout gives up.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often the head looks again for a slot freed on another core.
pub const LOOK_AGAIN: Duration = Duration::from_millis(2);

/// One core's queue of one service.
#[derive(Default)]
pub struct CoreQueue {
    waiters: RefCell<VecDeque<(u64, Option<Waker>)>>,
    next_id: Cell<u64>,
}

/// A place in the queue; leaves it when dropped (served, timed out or cancelled), waking the
/// next one.
pub struct Place {
    queue: Rc<CoreQueue>,
    id: u64,
}

impl CoreQueue {
    pub fn len(&self) -> usize {
        self.waiters.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the end of the queue, unless `max` are waiting already.
    pub fn join(self: &Rc<Self>, max: usize) -> Option<Place> {
        let mut w = self.waiters.borrow_mut();
        if w.len() >= max {
            return None;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        w.push_back((id, None));
        Some(Place {
            queue: self.clone(),
            id,
        })
    }

    /// A slot may have freed: the head looks again.
    pub fn notify(&self) {
        let w = self.waiters.borrow();
        if let Some((_, Some(waker))) = w.front() {
            waker.wake_by_ref();
        }
    }
}

impl Place {
    fn is_head(&self) -> bool {
        self.queue
            .waiters
            .borrow()
            .front()
            .is_some_and(|(id, _)| *id == self.id)
    }

    /// Resolves when this place is at the head and a slot may be free: at once when it is the
    /// head already and `first`, else on a notify or after [`LOOK_AGAIN`]; false at `deadline`.
    pub async fn turn(&self, deadline: Instant) -> bool {
        loop {
            if Instant::now() >= deadline {
                return false;
            }
            let look = (deadline - Instant::now()).min(LOOK_AGAIN);
            let woken = Cell::new(false);
            let wait = poll_fn(|cx| {
                if woken.get() {
                    return Poll::Ready(());
                }
                let mut w = self.queue.waiters.borrow_mut();
                if let Some(e) = w.iter_mut().find(|(id, _)| *id == self.id) {
                    e.1 = Some(cx.waker().clone());
                }
                woken.set(true);
                Poll::Pending
            });
            let _ = monoio::time::timeout(look, wait).await;
            if self.is_head() {
                return true;
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut w = self.queue.waiters.borrow_mut();
        if let Some(i) = w.iter().position(|(id, _)| *id == self.id) {
            w.remove(i);
        }
        // The next one is the head now: let it look.
        if let Some((_, Some(waker))) = w.front() {
            waker.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_and_first_in_first_out() {
        lb_common::runtime::block_on(|| async {
            let q = Rc::new(CoreQueue::default());
            let a = q.join(2).unwrap();
            let b = q.join(2).unwrap();
            assert!(q.join(2).is_none(), "bounded");
            assert!(a.is_head() && !b.is_head());
            let soon = Instant::now() + Duration::from_millis(50);
            assert!(a.turn(soon).await);
            drop(a);
            assert!(b.is_head());
            assert!(b.turn(Instant::now() + Duration::from_millis(50)).await);
            drop(b);
            assert!(q.is_empty());
            // A waiter that never reaches the head gives up at its deadline.
            let head = q.join(8).unwrap();
            let tail = q.join(8).unwrap();
            let t0 = Instant::now();
            assert!(!tail.turn(t0 + Duration::from_millis(20)).await);
            assert!(t0.elapsed() >= Duration::from_millis(20));
            drop((head, tail));
        });
    }
}
