//! Idle timeouts for thousands of connections without a timer each, and the per-connection
//! record the relays keep on the way (bytes each way).
//!
//! A monoio timer is 640 bytes; one per connection was most of an idle connection's memory.
//! Instead each core keeps a slab of last-activity times and one sweeper task that wakes the
//! connections idle for longer than the timeout. The same slab lets a stopping worker cut every
//! open connection at its deadline ([`IdleTimer::cut_all`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// Why a connection was cut from outside its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// No byte in either direction for the idle timeout.
    Idle,
    /// The worker's shutdown deadline.
    Shutdown,
    /// Older than its maximum lifetime, and quiet for a moment: a clean close.
    Lifetime,
    /// Its backend's drain deadline passed.
    Drained,
}

/// Told of a connection's first byte each way, by whichever relay moves them: how a latency
/// measure (the worker's time to first byte) learns of them without a timer or a relay of its
/// own. Each method is called at most once per connection.
pub trait FirstBytes {
    /// The first byte from the client went to the backend at `now`.
    fn sent(&self, now: Instant);
    /// The first byte from the backend went to the client at `now`.
    fn answered(&self, now: Instant);
}

/// A connection past its lifetime is closed once it has been quiet this long, so that a close
/// does not cut a request in flight.
pub const LIFETIME_QUIET: Duration = Duration::from_secs(1);

struct Entry {
    last: Instant,
    /// This connection's idle timeout (services may differ).
    timeout: Duration,
    /// When it is past its lifetime (None: no limit).
    retire_at: Option<Instant>,
    cut: Option<Cut>,
    waker: Option<Waker>,
    /// Bytes relayed so far, to the backend and to the client: known however the relay ends.
    to_backend: u64,
    to_client: u64,
    /// Which side's EOF came first (for the access log's client_fin / backend_fin).
    first_eof: Option<bool>,
    /// Its backend (an identity, see [`IdleGuard::for_backend`]), for a drain's deadline.
    backend: usize,
    /// Told of the first byte each way (dropped once the backend answered).
    probe: Option<Rc<dyn FirstBytes>>,
    sent: bool,
}

/// One per core.
pub struct IdleTimer {
    /// The shortest timeout registered so far: the sweeper looks often enough for it.
    shortest: Cell<Duration>,
    entries: RefCell<Slab<Entry>>,
    sweeping: Cell<bool>,
}

impl IdleTimer {
    pub fn new() -> Rc<IdleTimer> {
        Rc::new(IdleTimer {
            shortest: Cell::new(Duration::MAX),
            entries: RefCell::new(Slab::new()),
            sweeping: Cell::new(false),
        })
    }

    /// Registers a connection that is closed after `timeout` without a byte; it is idle from now
    /// on until touched. Starts the sweeper on first use (it must run inside the runtime).
    pub fn register(self: &Rc<Self>, timeout: Duration) -> IdleGuard {
        self.register_with_lifetime(timeout, None)
    }

    /// Like [`IdleTimer::register`], and closed cleanly once older than `lifetime` and quiet for
    /// [`LIFETIME_QUIET`].
    pub fn register_with_lifetime(
        self: &Rc<Self>,
        timeout: Duration,
        lifetime: Option<Duration>,
    ) -> IdleGuard {
        let shortest = match lifetime {
            Some(_) => timeout.min(LIFETIME_QUIET),
            None => timeout,
        };
        if shortest < self.shortest.get() {
            self.shortest.set(shortest);
        }
        let now = Instant::now();
        let key = self.entries.borrow_mut().insert(Entry {
            timeout,
            retire_at: lifetime.map(|l| now + l),
            last: now,
            cut: None,
            waker: None,
            to_backend: 0,
            to_client: 0,
            first_eof: None,
            backend: 0,
            probe: None,
            sent: false,
        });
        if !self.sweeping.replace(true) {
            lb_common::task::spawn_guarded("idle-sweeper", sweep(self.clone()));
        }
        IdleGuard {
            timer: self.clone(),
            key,
        }
    }

    /// Cuts every registered connection (a stop's deadline); returns how many.
    pub fn cut_all(&self) -> usize {
        let mut due = Vec::new();
        let mut n = 0;
        for (_, e) in self.entries.borrow_mut().iter_mut() {
            if e.cut.is_none() {
                e.cut = Some(Cut::Shutdown);
                due.extend(e.waker.take());
                n += 1;
            }
        }
        due.into_iter().for_each(Waker::wake);
        n
    }

    /// Bytes relayed so far by the connection registered as `key`: (to the backend, to the
    /// client).
    pub fn bytes_of(&self, key: usize) -> (u64, u64) {
        self.entries
            .borrow()
            .get(key)
            .map_or((0, 0), |e| (e.to_backend, e.to_client))
    }

    /// Cuts every connection to `backend` (its drain deadline passed); returns how many.
    pub fn cut_backend(&self, backend: usize) -> usize {
        let mut due = Vec::new();
        for (_, e) in self.entries.borrow_mut().iter_mut() {
            if e.backend == backend && e.cut.is_none() {
                e.cut = Some(Cut::Drained);
                due.extend(e.waker.take());
            }
        }
        let n = due.len();
        due.into_iter().for_each(Waker::wake);
        n
    }

    /// How often the sweeper looks: a timeout fires at most this much late.
    fn tick(&self) -> Duration {
        (self.shortest.get() / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

async fn sweep(timer: Rc<IdleTimer>) {
    loop {
        monoio::time::sleep(timer.tick()).await;
        let now = Instant::now();
        let mut due = Vec::new();
        for (_, e) in timer.entries.borrow_mut().iter_mut() {
            if e.cut.is_some() {
                continue;
            }
            let quiet = now.duration_since(e.last);
            if quiet >= e.timeout {
                e.cut = Some(Cut::Idle);
                due.extend(e.waker.take());
            } else if e.retire_at.is_some_and(|t| now >= t) && quiet >= LIFETIME_QUIET {
                e.cut = Some(Cut::Lifetime);
                due.extend(e.waker.take());
            }
        }
        // Wake outside the borrow: a woken task may run and touch the slab.
        due.into_iter().for_each(Waker::wake);
    }
}

/// A connection's registration; dropping it unregisters.
pub struct IdleGuard {
    timer: Rc<IdleTimer>,
    key: usize,
}

impl IdleGuard {
    /// Bytes moved: the connection is not idle.
    pub fn touch(&self) {
        if let Some(e) = self.timer.entries.borrow_mut().get_mut(self.key) {
            e.last = Instant::now();
        }
    }

    /// `n` bytes went to the backend (or to the client): counted, and not idle.
    pub fn moved(&self, to_backend: bool, n: usize) {
        let mut probe = None;
        if let Some(e) = self.timer.entries.borrow_mut().get_mut(self.key) {
            let now = Instant::now();
            e.last = now;
            if to_backend {
                e.to_backend += n as u64;
                if n > 0 && !e.sent {
                    e.sent = true;
                    probe = e.probe.clone().map(|p| (p, true, now));
                }
            } else {
                e.to_client += n as u64;
                if n > 0 {
                    probe = e.probe.take().map(|p| (p, false, now));
                }
            }
        }
        // Outside the borrow: a probe is free to look at anything.
        match probe {
            Some((p, true, now)) => p.sent(now),
            Some((p, false, now)) => p.answered(now),
            None => {}
        }
    }

    /// Tells `probe` of this connection's first byte each way from now on.
    pub fn set_probe(&self, probe: Rc<dyn FirstBytes>) {
        if let Some(e) = self.timer.entries.borrow_mut().get_mut(self.key) {
            e.probe = Some(probe);
        }
    }

    /// Bytes relayed so far: (to the backend, to the client).
    pub fn bytes(&self) -> (u64, u64) {
        self.timer.bytes_of(self.key)
    }

    /// The connection relays to `backend` (any identity unique among backends, e.g. the
    /// address of its counters): [`IdleTimer::cut_backend`] cuts it.
    pub fn for_backend(&self, backend: usize) {
        if let Some(e) = self.timer.entries.borrow_mut().get_mut(self.key) {
            e.backend = backend;
        }
    }

    /// This connection's key in its core's timer.
    pub fn key(&self) -> usize {
        self.key
    }

    /// One side sent its EOF (`from_client`: the client's); the first one is kept.
    pub fn eof(&self, from_client: bool) {
        if let Some(e) = self.timer.entries.borrow_mut().get_mut(self.key) {
            e.first_eof.get_or_insert(from_client);
        }
    }

    /// Whose EOF came first: Some(true) the client's, Some(false) the backend's.
    pub fn first_eof(&self) -> Option<bool> {
        self.timer
            .entries
            .borrow()
            .get(self.key)
            .and_then(|e| e.first_eof)
    }

    /// Resolves once the connection has been idle for the timeout, or was cut.
    pub fn expired(&self) -> Expired<'_> {
        Expired { guard: self }
    }
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.timer.entries.borrow_mut().try_remove(self.key);
    }
}

pub struct Expired<'a> {
    guard: &'a IdleGuard,
}

impl Future for Expired<'_> {
    type Output = Cut;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cut> {
        let mut entries = self.guard.timer.entries.borrow_mut();
        let Some(e) = entries.get_mut(self.guard.key) else {
            return Poll::Ready(Cut::Idle);
        };
        if let Some(cut) = e.cut {
            return Poll::Ready(cut);
        }
        if !e.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            e.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Polls `work` until it ends, or until `stop` resolves first (then `work` is dropped, which
/// cancels its pending I/O). Hand-written so that it adds nothing to the connection's size.
pub struct Until<F, S> {
    work: F,
    stop: S,
}

impl<F: Future, S: Future> Until<F, S> {
    pub fn new(work: F, stop: S) -> Self {
        Until { work, stop }
    }
}

/// `Ok` with `work`'s output, or `Err` with `stop`'s.
impl<F: Future, S: Future> Future for Until<F, S> {
    type Output = Result<F::Output, S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning; neither field is moved out while pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let work = unsafe { Pin::new_unchecked(&mut this.work) };
        if let Poll::Ready(v) = work.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let stop = unsafe { Pin::new_unchecked(&mut this.stop) };
        stop.poll(cx).map(Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untouched_connection_expires_and_a_touched_one_does_not() {
        let (idle_fired, busy_fired) = lb_common::runtime::block_on(|| async {
            let timer = IdleTimer::new();
            let idle = timer.register(Duration::from_millis(100));
            let busy = timer.register(Duration::from_millis(100));
            let busy_fired = Rc::new(Cell::new(false));
            let bf = busy_fired.clone();
            let start = Instant::now();
            // Keep `busy` active for 300 ms while `idle` sits still.
            let work = async {
                while start.elapsed() < Duration::from_millis(300) {
                    busy.touch();
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let r = Until::new(work, async {
                busy.expired().await;
                bf.set(true);
            })
            .await;
            assert!(r.is_ok());
            let waited =
                Until::new(monoio::time::sleep(Duration::from_secs(5)), idle.expired()).await;
            (waited == Err(Cut::Idle), busy_fired.get())
        });
        assert!(
            idle_fired,
            "the idle connection must expire well before 5 s"
        );
        assert!(
            !busy_fired,
            "a connection touched every 20 ms must not expire"
        );
    }

    #[test]
    fn cut_all_ends_every_connection_at_once_and_bytes_are_kept_per_connection() {
        lb_common::runtime::block_on(|| async {
            let timer = IdleTimer::new();
            let (a, b) = (
                timer.register(Duration::from_secs(60)),
                timer.register(Duration::from_secs(60)),
            );
            a.moved(true, 10);
            a.moved(false, 7);
            b.moved(false, 1);
            assert_eq!((a.bytes(), b.bytes()), ((10, 7), (0, 1)));
            assert_eq!(timer.cut_all(), 2);
            assert_eq!(timer.cut_all(), 0, "already cut");
            assert_eq!(a.expired().await, Cut::Shutdown);
            assert_eq!(b.expired().await, Cut::Shutdown);
        });
    }

    #[test]
    fn dropping_a_guard_unregisters_it() {
        lb_common::runtime::block_on(|| async {
            let timer = IdleTimer::new();
            let a = timer.register(Duration::from_secs(60));
            drop(a);
            assert_eq!(timer.entries.borrow().len(), 0);
        });
    }
}
