//! The connection's deadlines: a fixed table, one slot per kind of timer (quinn's `TimerTable`).

use crate::time::Instant;

/// A kind of deadline a connection keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timer {
    /// Connecting side: time to send the next ping.
    Ping,
    /// Connecting side: a ping went unanswered for too long.
    PongDeadline,
    /// Accepting side: the peer must ping before this.
    PingDeadline,
    /// Accepting side: the peer must send its first message before this.
    Introduction,
    /// Buffers idle since this long may give their memory back.
    ReleaseBuffers,
}

impl Timer {
    const ALL: [Timer; 5] = [
        Timer::Ping,
        Timer::PongDeadline,
        Timer::PingDeadline,
        Timer::Introduction,
        Timer::ReleaseBuffers,
    ];
}

/// One optional deadline per [`Timer`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TimerTable([Option<Instant>; 5]);

impl TimerTable {
    /// Arms `timer`. A deadline at [`Instant::MAX`] means "never" (the clock cannot pass it),
    /// so it is not armed: at the end of time nothing may be due for ever.
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = (at < Instant::MAX).then_some(at);
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    pub(crate) fn clear_all(&mut self) {
        self.0 = [None; 5];
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The earliest timer that is due at `now`, cleared from the table.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let timer = Timer::ALL
            .into_iter()
            .filter(|&t| self.get(t).is_some_and(|at| at <= now))
            .min_by_key(|&t| self.get(t))?;
        self.clear(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::PingDeadline, Instant::from_secs(150));
        t.set(Timer::Ping, Instant::from_secs(90));
        assert_eq!(t.next(), Some(Instant::from_secs(90)));
        assert_eq!(t.pop_expired(Instant::from_secs(89)), None);
        assert_eq!(t.pop_expired(Instant::from_secs(200)), Some(Timer::Ping));
        assert_eq!(
            t.pop_expired(Instant::from_secs(200)),
            Some(Timer::PingDeadline)
        );
        assert_eq!(t.pop_expired(Instant::from_secs(200)), None);
        t.set(Timer::Introduction, Instant::MAX);
        assert_eq!(t.get(Timer::Introduction), None);
        t.set(Timer::Introduction, Instant::ZERO);
        t.clear_all();
        assert_eq!(t.next(), None);
    }
}
