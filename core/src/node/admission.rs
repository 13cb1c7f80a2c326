//! Who may connect: per-IP misbehaviour scores, an expiring ban table, the NetProtect rate
//! limiter of the Hub (spec §7), and an allow-list.

use super::bounded::{List, Map};
use crate::score::Score;
use crate::time::Instant;
use core::net::IpAddr;
use core::time::Duration;

/// Capacities of the tables without `alloc`.
pub(crate) const FIXED_BANS: usize = 32;
pub(crate) const FIXED_SCORES: usize = 32;
pub(crate) const FIXED_RATE_LOG: usize = 64;
pub(crate) const FIXED_ALLOWED: usize = 8;

/// A ban as plain data, to persist across restarts: the address and when the ban ends, in
/// seconds since the Unix epoch (wall-clock time, unlike the node's own clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BanRecord {
    /// The banned address (all its ports).
    pub ip: IpAddr,
    /// When the ban ends, in seconds since 1970-01-01 UTC.
    pub until_unix_secs: u64,
}

/// Addresses normalised for comparison (IPv4-mapped IPv6 counts as IPv4).
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// What [`Bans::ban`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BanChange {
    /// A new ban; a ban ending sooner may have made room (its address, and whether the same
    /// import added it).
    Added { evicted: Option<Evicted> },
    /// The address was banned already; the ban ends at the later of the two times.
    Extended,
    /// The table is full of bans ending later; this one was not kept.
    Dropped,
}

/// A ban pushed out of a full table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// Its address.
    pub(crate) ip: IpAddr,
    /// Added by the import that pushed it out (the caller never heard of it as a ban).
    pub(crate) same_import: bool,
}

/// One ban: when it ends, and which import added it (0: not an import).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ban {
    until: Instant,
    import: u32,
}

/// Banned addresses and when their bans end. Bounded: when full, the ban ending soonest
/// makes room.
pub(crate) struct Bans {
    map: Map<IpAddr, Ban, FIXED_BANS>,
    /// The last import's number (imports are numbered from 1).
    imports: u32,
}

impl Bans {
    pub(crate) fn new(max: usize) -> Self {
        Bans {
            map: Map::new(max),
            imports: 0,
        }
    }

    /// When the ban on `ip` ends, if it is banned at `now`.
    pub(crate) fn banned_until(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        self.map
            .get(&canonical(ip))
            .map(|b| b.until)
            .filter(|&until| until > now)
    }

    /// Bans `ip` until `until`, or longer if it is banned longer already. When the table is
    /// full, the ban ending soonest (which may be this one) goes. Returns what changed.
    pub(crate) fn ban(&mut self, ip: IpAddr, until: Instant) -> BanChange {
        self.ban_from(ip, until, 0)
    }

    /// [`Bans::ban`] for import number `import` (0: not an import).
    fn ban_from(&mut self, ip: IpAddr, until: Instant, import: u32) -> BanChange {
        let ip = canonical(ip);
        if let Some(current) = self.map.get_mut(&ip) {
            current.until = current.until.max(until);
            return BanChange::Extended;
        }
        let mut evicted = None;
        if self.map.is_full() {
            match self.map.min_by_key(|b| b.until) {
                Some(soonest) => match self.map.get(&soonest).copied() {
                    Some(old) if old.until < until => {
                        self.map.remove(&soonest);
                        evicted = Some(Evicted {
                            ip: soonest,
                            same_import: import != 0 && old.import == import,
                        });
                    }
                    _ => return BanChange::Dropped,
                },
                None => return BanChange::Dropped,
            }
        }
        let _ = self.map.insert(ip, Ban { until, import });
        BanChange::Added { evicted }
    }

    pub(crate) fn unban(&mut self, ip: IpAddr) -> bool {
        self.map.remove(&canonical(ip)).is_some()
    }

    /// Removes bans that ended at or before `now`, telling `ended` about each.
    pub(crate) fn expire(&mut self, now: Instant, mut ended: impl FnMut(IpAddr)) {
        self.map.retain(|ip, ban| {
            let keep = ban.until > now;
            if !keep {
                ended(*ip);
            }
            keep
        });
    }

    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.map.iter().map(|(_, ban)| ban.until).min()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The bans still running at `now`, with wall-clock ends computed from `unix_now`.
    pub(crate) fn export(&self, now: Instant, unix_now: u64) -> impl Iterator<Item = BanRecord> {
        self.map
            .iter()
            .filter(move |(_, ban)| ban.until > now)
            .map(move |(ip, ban)| BanRecord {
                ip: *ip,
                // Rounded up, so a restored ban never ends early.
                until_unix_secs: unix_now.saturating_add(
                    ban.until
                        .as_millis()
                        .saturating_sub(now.as_millis())
                        .div_ceil(1000),
                ),
            })
    }

    /// Whether import number `import` added the ban on `ip` (still in the table).
    pub(crate) fn added_by(&self, ip: IpAddr, import: u32) -> bool {
        self.map
            .get(&canonical(ip))
            .is_some_and(|b| b.import == import)
    }

    /// Starts an import of saved bans; returns its number for [`Bans::import`].
    pub(crate) fn begin_import(&mut self) -> u32 {
        self.imports = self.imports.wrapping_add(1).max(1);
        self.imports
    }

    /// Takes one ban saved by [`Bans::export`], as part of import `import`; `None` if it is
    /// over already. A ban never gets shorter.
    pub(crate) fn import(
        &mut self,
        now: Instant,
        unix_now: u64,
        record: BanRecord,
        import: u32,
    ) -> Option<BanChange> {
        let left = record.until_unix_secs.checked_sub(unix_now)?;
        if left == 0 {
            return None;
        }
        Some(self.ban_from(record.ip, now + Duration::from_secs(left), import))
    }
}

/// Per-IP misbehaviour scores, decaying over time. Bounded: when full, the lowest score
/// makes room.
pub(crate) struct Scores {
    map: Map<IpAddr, Score, FIXED_SCORES>,
    decay_per_hour: u32,
}

impl Scores {
    pub(crate) fn new(max: usize, decay_per_hour: u32) -> Self {
        Scores {
            map: Map::new(max),
            decay_per_hour,
        }
    }

    /// Adds points to `ip`; returns its score.
    pub(crate) fn add(&mut self, ip: IpAddr, now: Instant, points: u32) -> u32 {
        let ip = canonical(ip);
        let decay = self.decay_per_hour;
        if let Some(score) = self.map.get_mut(&ip) {
            return score.add(now, points, decay);
        }
        if self.map.is_full() {
            if let Some(lowest) = self.map.min_by_key(|s| s.at(now, decay)) {
                self.map.remove(&lowest);
            }
        }
        let mut score = Score::new(now);
        let total = score.add(now, points, decay);
        let _ = self.map.insert(ip, score);
        total
    }

    /// The score of `ip` at `now`.
    pub(crate) fn get(&self, ip: IpAddr, now: Instant) -> u32 {
        self.map
            .get(&canonical(ip))
            .map_or(0, |s| s.at(now, self.decay_per_hour))
    }

    pub(crate) fn forget(&mut self, ip: IpAddr) {
        self.map.remove(&canonical(ip));
    }

    /// Drops scores that decayed to zero.
    pub(crate) fn prune(&mut self, now: Instant) {
        let decay = self.decay_per_hour;
        self.map.retain(|_, s| s.at(now, decay) > 0);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The Hub's NetProtect: a sliding log of accepted connections per IP (spec §7.3).
pub(crate) struct RateLimiter {
    log: List<(IpAddr, Instant), FIXED_RATE_LOG>,
}

/// Entries older than this are forgotten.
const LOG_WINDOW: Duration = Duration::from_secs(300);

impl RateLimiter {
    pub(crate) fn new(max: usize) -> Self {
        RateLimiter {
            log: List::new(max),
        }
    }

    /// Whether a new connection from `ip` at `now` may be accepted: accepted if there was none
    /// in the last 10 s, or exactly one in the last 10 s, at most one 10–29 s ago and at most
    /// two 30–89 s ago.
    pub(crate) fn allows(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical(ip);
        self.log
            .retain(|(_, t)| now.saturating_duration_since(*t) <= LOG_WINDOW);
        let (mut tier1, mut tier2, mut tier3) = (0u32, 0u32, 0u32);
        for (_, t) in self.log.iter().filter(|(i, _)| *i == ip) {
            match now.saturating_duration_since(*t).as_secs() {
                0..=9 => tier1 += 1,
                10..=29 => tier2 += 1,
                30..=89 => tier3 += 1,
                _ => {}
            }
        }
        tier1 == 0 || (tier1 == 1 && tier2 <= 1 && tier3 <= 2)
    }

    /// Logs an accepted connection. When the log is full the oldest entry goes.
    pub(crate) fn record(&mut self, ip: IpAddr, now: Instant) {
        if self.log.is_full() {
            if let Some(oldest) = (0..self.log.len()).min_by_key(|&i| self.log.get(i).map(|e| e.1))
            {
                self.log.swap_remove(oldest);
            }
        }
        let _ = self.log.push((canonical(ip), now));
    }

    pub(crate) fn len(&self) -> usize {
        self.log.len()
    }
}

/// Addresses exempt from bans and rate limits.
pub(crate) struct AllowList {
    list: List<IpAddr, FIXED_ALLOWED>,
}

impl AllowList {
    pub(crate) fn new(max: usize) -> Self {
        AllowList {
            list: List::new(max),
        }
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.list.iter().any(|a| *a == ip)
    }

    pub(crate) fn add(&mut self, ip: IpAddr) -> bool {
        self.contains(ip) || self.list.push(canonical(ip)).is_ok()
    }

    pub(crate) fn remove(&mut self, ip: IpAddr) {
        let ip = canonical(ip);
        self.list.retain(|a| *a != ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn net_protect_example_of_the_spec() {
        let mut r = RateLimiter::new(100);
        let mut at = |s: u64| {
            let now = Instant::from_secs(s);
            let ok = r.allows(ip(1), now);
            if ok {
                r.record(ip(1), now);
            }
            ok
        };
        assert!(at(0));
        assert!(at(5));
        assert!(at(12));
        assert!(!at(19));
        assert!(at(23));
    }

    #[test]
    fn bans_expire_and_travel_as_wall_clock_data() {
        let mut b = Bans::new(2);
        let now = Instant::from_secs(100);
        b.ban(ip(1), now + Duration::from_secs(3600));
        b.ban(ip(2), now + Duration::from_secs(60));
        assert_eq!(b.banned_until(ip(1), now), Some(Instant::from_secs(3700)));
        // Full: the ban ending soonest makes room, and a ban never gets shorter.
        assert_eq!(
            b.ban(ip(3), now + Duration::from_secs(600)),
            BanChange::Added {
                evicted: Some(Evicted {
                    ip: ip(2),
                    same_import: false
                })
            }
        );
        assert_eq!(b.banned_until(ip(2), now), None);
        assert_eq!(
            b.ban(ip(4), now + Duration::from_secs(1)),
            BanChange::Dropped
        );
        assert_eq!(
            b.ban(ip(1), now + Duration::from_secs(1)),
            BanChange::Extended
        );
        assert_eq!(b.banned_until(ip(1), now), Some(Instant::from_secs(3700)));
        let saved: Vec<BanRecord> = b.export(now, 1_700_000_000).collect();
        assert_eq!(saved.len(), 2);
        let mut fresh = Bans::new(10);
        let later = Instant::from_secs(5);
        let import = fresh.begin_import();
        let added = saved
            .iter()
            .filter_map(|r| fresh.import(later, 1_700_000_000 + 100, *r, import))
            .filter(|c| matches!(c, BanChange::Added { .. }))
            .count();
        assert_eq!(added, 2);
        assert_eq!(
            fresh.banned_until(ip(3), later),
            Some(later + Duration::from_secs(500))
        );
        let mut ended = Vec::new();
        fresh.expire(later + Duration::from_secs(500), |ip| ended.push(ip));
        assert_eq!(ended, vec![ip(3)]);
        assert_eq!(fresh.next_expiry(), Some(later + Duration::from_secs(3500)));
    }

    #[test]
    fn scores_are_per_ip_and_decay() {
        let mut s = Scores::new(2, 100);
        let t0 = Instant::ZERO;
        assert_eq!(s.add(ip(1), t0, 500), 500);
        assert_eq!(s.add(ip(1), t0, 400), 900);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(s.get(mapped, t0), 900);
        assert_eq!(s.get(ip(1), Instant::from_secs(7200)), 700);
        s.add(ip(2), t0, 10);
        s.add(ip(3), t0, 20);
        assert_eq!(s.get(ip(2), t0), 0, "lowest evicted when full");
        assert_eq!(s.len(), 2);
    }
}
