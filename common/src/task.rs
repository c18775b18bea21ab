//! Panic isolation for per-connection tasks: monoio does not catch panics, and one escaping a task
//! would take down every connection of its core.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Resolves to `Err(payload)` instead of unwinding when the inner future panics.
pub struct CatchUnwind<F>(F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field; it is never moved out.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

pub fn catch_unwind_future<F: Future>(fut: F) -> CatchUnwind<F> {
    CatchUnwind(fut)
}

/// Text of a panic payload, for logs.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

/// Spawns a task on the current core whose panic is logged and contained: the task ends, its
/// resources are dropped (sockets close), and the core keeps serving everything else.
pub fn spawn_guarded<F>(what: &'static str, fut: F)
where
    F: Future<Output = ()> + 'static,
{
    monoio::spawn(guarded(what, fut));
}

/// `fut` with its panic caught and logged: a future type of its own rather than an `async`
/// block, because a block keeps what it captured beside what it builds from it. Wrapping the
/// connection future (952 bytes) that way held it twice in every task: 4.39 KiB of RSS per idle
/// proxied connection (bench/proxies.py --only memory), 3.46 KiB once it held it once.
pub fn guarded<F: Future<Output = ()>>(what: &'static str, fut: F) -> Guarded<F> {
    Guarded {
        inner: CatchUnwind(fut),
        what,
    }
}

/// See [`guarded`].
pub struct Guarded<F> {
    inner: CatchUnwind<F>,
    what: &'static str,
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: structural pinning of `inner`, never moved out; `what` is a plain reference.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: `inner` lives inside the pinned `Guarded` and is never moved.
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        match inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(payload)) => {
                tracing::error!(
                    task = this.what,
                    panic = panic_message(&*payload),
                    "task panicked; only this task was dropped"
                );
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_guarded_future_is_its_inner_future_and_little_more() {
        // The async block it replaced kept the inner future twice (what it captured, and the
        // CatchUnwind built from it): 2 x 1,024 + 16 bytes for this one.
        let inner = async {
            let pad = [0u8; 1024];
            std::future::ready(()).await;
            std::hint::black_box(pad);
        };
        let inner_size = std::mem::size_of_val(&inner);
        let g = guarded("size", inner);
        assert!(
            std::mem::size_of_val(&g) <= inner_size + 32,
            "guarded {} bytes around an inner future of {inner_size}",
            std::mem::size_of_val(&g)
        );
        crate::runtime::block_on(|| g);
    }

    #[test]
    fn a_panicking_task_does_not_stop_its_neighbours() {
        let done = crate::runtime::block_on(|| async {
            let done = Rc::new(Cell::new(0));
            spawn_guarded("boom", async { panic!("deliberate test panic") });
            for _ in 0..3 {
                let d = done.clone();
                spawn_guarded("ok", async move {
                    monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                    d.set(d.get() + 1);
                });
            }
            // Bounded wait: the machine may be busy, so poll rather than sleep a fixed time.
            for _ in 0..500 {
                if done.get() == 3 {
                    break;
                }
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            done.get()
        });
        assert_eq!(done, 3);
    }

    #[test]
    fn panic_messages_are_readable() {
        let p = std::panic::catch_unwind(|| panic!("x = {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "x = 1");
    }
}
