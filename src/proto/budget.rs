//! Token buckets, and a bounded table of them per source, for the
//! admission policy: how many new sessions a source may open, and how many
//! bytes may go to peers that have not proven their address yet. Pure
//! code: the caller passes the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// A token bucket: `rate_per_s` tokens a second, holding at most `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    rate_per_s: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate_per_s: u64, burst: u64, now: Instant) -> Bucket {
        let burst = (burst.max(1)) as f64;
        Bucket {
            tokens: burst,
            rate_per_s: rate_per_s as f64,
            burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate_per_s).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Takes `n` tokens if there are that many.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Whether `n` tokens are there (takes none).
    pub fn has(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }

    /// Full again: the source has been idle long enough to forget.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Sources are counted per IPv4 address and per IPv6 /64 (one host or one
/// subnet's worth of privacy addresses).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct SourceKey(u128);

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(u128::from(u32::from(v4))),
                None => SourceKey((u128::from(v6) & !0xffff_ffff_ffff_ffff) | (1 << 32)),
            },
        }
    }
}

/// Rates of the per-source buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    pub sessions_per_s: u64,
    pub sessions_burst: u64,
    pub unverified_bytes_per_s: u64,
    pub unverified_bytes_burst: u64,
}

#[derive(Clone, Copy, Debug)]
struct SourceState {
    sessions: Bucket,
    bytes: Bucket,
}

/// At most `capacity` sources are tracked. When full, sources that have
/// been idle (both buckets full again) are forgotten; if none has, a new
/// source is not tracked (it passes, and the global byte budget still
/// bounds what unproven peers get): a spoofed flood from random addresses
/// can neither grow the table nor lock real clients out through it.
#[derive(Debug)]
pub struct Sources {
    limits: SourceLimits,
    capacity: usize,
    table: HashMap<SourceKey, SourceState>,
}

impl Sources {
    pub fn new(limits: SourceLimits, capacity: usize) -> Sources {
        Sources {
            limits,
            capacity: capacity.max(1),
            table: HashMap::with_capacity(capacity.min(1 << 16)),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn state(&mut self, ip: IpAddr, now: Instant) -> Option<&mut SourceState> {
        let key = SourceKey::of(ip);
        if !self.table.contains_key(&key) {
            if self.table.len() >= self.capacity {
                self.table
                    .retain(|_, s| !(s.sessions.is_full(now) && s.bytes.is_full(now)));
                if self.table.len() >= self.capacity {
                    return None;
                }
            }
            let l = self.limits;
            self.table.insert(
                key,
                SourceState {
                    sessions: Bucket::new(l.sessions_per_s, l.sessions_burst, now),
                    bytes: Bucket::new(l.unverified_bytes_per_s, l.unverified_bytes_burst, now),
                },
            );
        }
        self.table.get_mut(&key)
    }

    /// A new session from `ip`: within its rate? (Untracked sources pass.)
    pub fn take_session(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.state(ip, now).is_none_or(|s| s.sessions.take(1, now))
    }

    /// `bytes` to an unproven peer at `ip`: within its budget? Takes them
    /// only if `also` (the global budget) allows it too.
    pub fn take_bytes(
        &mut self,
        ip: IpAddr,
        bytes: u64,
        now: Instant,
        global: &mut Bucket,
    ) -> bool {
        match self.state(ip, now) {
            Some(s) => {
                if !s.bytes.has(bytes, now) || !global.take(bytes, now) {
                    return false;
                }
                s.bytes.take(bytes, now)
            }
            None => global.take(bytes, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(b.take(1, t0));
        }
        assert!(!b.take(1, t0));
        assert!(b.take(1, t0 + Duration::from_millis(100)));
        assert!(!b.take(1, t0 + Duration::from_millis(100)));
        assert!(b.is_full(t0 + Duration::from_secs(10)));
        assert!(
            !b.take(6, t0 + Duration::from_secs(10)),
            "never more than the burst"
        );
    }

    #[test]
    fn sources_are_v4_addresses_and_v6_slash_64s() {
        let k = |s: &str| SourceKey::of(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::5"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::5"), k("2001:db8:1:3::5"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
    }

    #[test]
    fn a_full_table_forgets_idle_sources_and_passes_the_rest() {
        let t0 = Instant::now();
        let limits = SourceLimits {
            sessions_per_s: 1,
            sessions_burst: 1,
            unverified_bytes_per_s: 100,
            unverified_bytes_burst: 100,
        };
        let mut s = Sources::new(limits, 2);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        assert!(s.take_session(ip(1), t0));
        assert!(!s.take_session(ip(1), t0), "over its rate");
        assert!(s.take_session(ip(2), t0));
        // Full, nobody idle: a third source is not tracked, and passes.
        assert!(s.take_session(ip(3), t0));
        assert!(s.take_session(ip(3), t0));
        assert_eq!(s.len(), 2);
        // Later the first two are idle again and make room.
        let later = t0 + Duration::from_secs(5);
        assert!(s.take_session(ip(3), later));
        assert!(!s.take_session(ip(3), later), "tracked now");
        let mut global = Bucket::new(1000, 150, t0);
        assert!(s.take_bytes(ip(1), 100, later, &mut global));
        assert!(
            !s.take_bytes(ip(1), 1, later, &mut global),
            "its own budget"
        );
        assert!(
            !s.take_bytes(ip(2), 100, later, &mut global),
            "the global one"
        );
    }
}
