//! The MTU of the interfaces requests come in on, for the blksize cap
//! (when the operator set no `--blksize-max`): each interface is looked up
//! at most once per [`MTU_REFRESH_MS`], in a table of fixed size, so a
//! changed MTU is seen within seconds and a flood costs no lookups.

use std::time::{Duration, Instant};

/// Interfaces remembered per shard; beyond it the oldest entry goes.
pub(super) const MTU_ENTRIES_MAX: usize = 32;
/// How long a looked-up MTU is trusted.
pub(super) const MTU_REFRESH_MS: u64 = 10_000;

struct Entry {
    ifindex: u32,
    /// `None`: the lookup failed (no cap for that interface).
    mtu_bytes: Option<u32>,
    fetched: Instant,
}

pub(super) struct MtuCache {
    entries: Vec<Entry>,
}

impl MtuCache {
    pub(super) fn new() -> MtuCache {
        MtuCache {
            entries: Vec::with_capacity(MTU_ENTRIES_MAX),
        }
    }

    /// The MTU of `ifindex` (0: unknown, no cap), from the table or from
    /// `lookup` when the entry is missing or stale.
    pub(super) fn mtu(
        &mut self,
        ifindex: u32,
        now: Instant,
        lookup: impl FnOnce(u32) -> std::io::Result<u32>,
    ) -> Option<u32> {
        if ifindex == 0 {
            return None;
        }
        let refresh = Duration::from_millis(MTU_REFRESH_MS);
        let entry = self.entries.iter_mut().find(|e| e.ifindex == ifindex);
        if let Some(e) = &entry
            && now.saturating_duration_since(e.fetched) < refresh
        {
            return e.mtu_bytes;
        }
        let looked_up = match lookup(ifindex) {
            Ok(mtu) => Some(mtu),
            // Out of descriptors or memory says nothing about the
            // interface: keep what was known, remember nothing new.
            Err(e) if is_transient(&e) => return entry.and_then(|e| e.mtu_bytes),
            Err(_) => None,
        };
        if let Some(e) = entry {
            e.mtu_bytes = looked_up;
            e.fetched = now;
            return looked_up;
        }
        let entry = Entry {
            ifindex,
            mtu_bytes: looked_up,
            fetched: now,
        };
        let mtu = entry.mtu_bytes;
        if self.entries.len() < MTU_ENTRIES_MAX {
            self.entries.push(entry);
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|e| e.fetched) {
            *oldest = entry;
        }
        debug_assert!(self.entries.len() <= MTU_ENTRIES_MAX);
        mtu
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn looks_up_once_per_interval_and_stays_bounded() {
        let mut cache = MtuCache::new();
        let calls = Cell::new(0);
        let lookup = |i: u32| {
            calls.set(calls.get() + 1);
            if i == 99 {
                Err(std::io::Error::from_raw_os_error(libc::ENODEV))
            } else {
                Ok(1000 + i)
            }
        };
        let t0 = Instant::now();
        assert_eq!(cache.mtu(0, t0, lookup), None);
        assert_eq!(calls.get(), 0);
        assert_eq!(cache.mtu(2, t0, lookup), Some(1002));
        assert_eq!(
            cache.mtu(2, t0 + Duration::from_secs(9), lookup),
            Some(1002)
        );
        assert_eq!(calls.get(), 1);
        assert_eq!(
            cache.mtu(2, t0 + Duration::from_secs(10), lookup),
            Some(1002)
        );
        assert_eq!(calls.get(), 2);
        assert_eq!(cache.mtu(99, t0, lookup), None);
        // Running out of descriptors is not remembered as "no MTU".
        let emfile = |_| Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(cache.mtu(7, t0, emfile), None);
        assert_eq!(cache.mtu(7, t0, lookup), Some(1007));
        let later = t0 + Duration::from_secs(20);
        assert_eq!(cache.mtu(7, later, emfile), Some(1007));
        for i in 0..(MTU_ENTRIES_MAX as u32 * 2) {
            cache.mtu(100 + i, t0 + Duration::from_millis(u64::from(i)), lookup);
        }
        assert_eq!(cache.entries.len(), MTU_ENTRIES_MAX);
    }
}
