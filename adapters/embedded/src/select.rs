//! The two small future combinators the client needs, so it depends on no executor crate.

use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;

/// Which of two futures finished first.
pub(crate) enum Either<A, B> {
    /// The first one (it is polled first, so it wins ties).
    First(A),
    /// The second one.
    Second(B),
}

/// Waits for the first of two futures and drops the other.
pub(crate) async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::First(out));
        }
        if let Poll::Ready(out) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Second(out));
        }
        Poll::Pending
    })
    .await
}

/// Gives the executor one turn, so a socket that is always ready cannot starve other tasks.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
