//! Misbehaviour scores that decay over time (spec §7.1: 100 points an hour).

use crate::time::Instant;

const HOUR_MS: u64 = 3_600_000;

/// Points, and the time from which they decay.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Score {
    points: u32,
    since: Instant,
}

impl Score {
    pub(crate) fn new(now: Instant) -> Self {
        Score {
            points: 0,
            since: now,
        }
    }

    /// Adds points at `now`; returns the score.
    pub(crate) fn add(&mut self, now: Instant, points: u32, per_hour: u32) -> u32 {
        self.decay(now, per_hour);
        self.points = self.points.saturating_add(points);
        self.points
    }

    /// The score at `now`, without updating it.
    pub(crate) fn at(mut self, now: Instant, per_hour: u32) -> u32 {
        self.decay(now, per_hour);
        self.points
    }

    fn decay(&mut self, now: Instant, per_hour: u32) {
        if per_hour == 0 || self.points == 0 || now <= self.since {
            self.since = self.since.max(now);
            return;
        }
        let elapsed = now.as_millis() - self.since.as_millis();
        let lost = elapsed.saturating_mul(u64::from(per_hour)) / HOUR_MS;
        if lost > 0 {
            self.points = self
                .points
                .saturating_sub(u32::try_from(lost).unwrap_or(u32::MAX));
            // Keep the remainder, so frequent updates decay as fast as rare ones.
            self.since = Instant::from_millis(
                self.since.as_millis() + lost.saturating_mul(HOUR_MS) / u64::from(per_hour),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decays_100_an_hour_without_drift() {
        let mut s = Score::new(Instant::ZERO);
        assert_eq!(s.add(Instant::ZERO, 500, 100), 500);
        // Many small steps lose as much as one big one.
        for m in 1..=60 {
            s.add(Instant::from_secs(m * 60), 0, 100);
        }
        assert_eq!(s.at(Instant::from_secs(3600), 100), 400);
        assert_eq!(s.at(Instant::from_secs(3600 * 10), 100), 0);
        assert_eq!(s.at(Instant::MAX, u32::MAX), 0);
        assert_eq!(
            Score::new(Instant::MAX).add(Instant::ZERO, u32::MAX, 100),
            u32::MAX
        );
    }
}
