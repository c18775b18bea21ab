//! Joins the two relay directions: both must finish, and the first error ends both.
//!
//! Hand-written instead of `monoio::try_join!` because that keeps each future and its output
//! side by side, doubling the size every idle connection carries.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

enum Half<F> {
    Running(F),
    Done(u64),
}

pub struct TryJoin<A, B> {
    a: Half<A>,
    b: Half<B>,
}

pub fn try_join<A, B, E>(a: A, b: B) -> TryJoin<A, B>
where
    A: Future<Output = Result<u64, E>>,
    B: Future<Output = Result<u64, E>>,
{
    TryJoin {
        a: Half::Running(a),
        b: Half::Running(b),
    }
}

/// Polls one half; `Some(Err)` ends the join.
fn poll_half<F, E>(half: &mut Half<F>, cx: &mut Context<'_>) -> Option<E>
where
    F: Future<Output = Result<u64, E>>,
{
    if let Half::Running(f) = half {
        // SAFETY: the future stays in place until it is replaced by `Done` after completing.
        match unsafe { Pin::new_unchecked(f) }.poll(cx) {
            Poll::Ready(Ok(n)) => *half = Half::Done(n),
            Poll::Ready(Err(e)) => return Some(e),
            Poll::Pending => {}
        }
    }
    None
}

impl<A, B, E> Future for TryJoin<A, B>
where
    A: Future<Output = Result<u64, E>>,
    B: Future<Output = Result<u64, E>>,
{
    type Output = Result<(u64, u64), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of both fields; they are never moved while running.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(e) = poll_half(&mut this.a, cx) {
            return Poll::Ready(Err(e));
        }
        if let Some(e) = poll_half(&mut this.b, cx) {
            return Poll::Ready(Err(e));
        }
        match (&this.a, &this.b) {
            (Half::Done(a), Half::Done(b)) => Poll::Ready(Ok((*a, *b))),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_results_come_back_and_the_first_error_wins() {
        lb_common::runtime::block_on(|| async {
            let ok = try_join(async { Ok::<u64, &str>(1) }, async {
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(2)
            })
            .await;
            assert_eq!(ok, Ok((1, 2)));
            let err = try_join(
                async {
                    monoio::time::sleep(std::time::Duration::from_secs(5)).await;
                    Ok::<u64, &str>(1)
                },
                async { Err("boom") },
            )
            .await;
            assert_eq!(err, Err("boom"));
        });
    }
}
