//! The clock the client runs on: a reading of the time and a way to sleep until a deadline.

use flowee_proto::Instant;

/// A monotonic clock in milliseconds, and a timer, as the platform has them (for example
/// `embassy_time::Instant::now()` and `embassy_time::Timer::at`).
///
/// The client never trusts the timer: after [`Clock::sleep_until`] returns it compares
/// [`Clock::now`] with the deadline, so a timer that fires early or late only costs a loop
/// turn. The futures it returns are dropped unfinished whenever the socket is ready first.
// The client awaits these futures in place; it never needs them to be `Send`.
#[allow(async_fn_in_trait)]
pub trait Clock {
    /// The time now, on a scale that never goes backwards (its epoch is the clock's choice).
    fn now(&self) -> Instant;

    /// Completes at `at` or soon after, at once if `at` has passed (early is allowed, but
    /// wastes a wake-up). Must be safe to drop before it completes.
    async fn sleep_until(&self, at: Instant);
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }

    async fn sleep_until(&self, at: Instant) {
        (**self).sleep_until(at).await
    }
}
