//! How big a ring, its buffer rings and its send pool are, what that costs
//! in locked memory, and how many completions can be outstanding at once.
//!
//! The completion queue is sized from that worst case, so it cannot
//! overflow: every completion that can be pending at one time is one of
//! - a send (at most one per send slot),
//! - a received datagram holding a provided buffer (at most one per buffer),
//! - per owner, the final completion of its multishot receive, of a cancel
//!   of that receive, and of one fsync, read-ahead or wake read
//!   ([`OPS_PER_OWNER`]).
//!
//! (An overflow would still not lose completions on Linux 5.5+, but it
//! ends multishot receives and costs kernel memory; it is counted.)

/// Completions other than sends and buffered datagrams that one owner can
/// have outstanding at once: its receive's final completion, a cancel of
/// that receive, and one fsync (an upload commits one step at a time) or
/// one read-ahead advice (a download asks once).
pub const OPS_PER_OWNER: u32 = 3;
/// Linux's limit on completion-queue entries (IORING_MAX_CQ_ENTRIES).
pub const CQ_ENTRIES_MAX: u32 = 65_536;
const PAGE_BYTES: u64 = 4096;
/// `struct io_rings` before the CQE array, rounded up generously.
const RING_HEADER_BYTES: u64 = 512;
const SQE_BYTES: u64 = 64;
const CQE_BYTES: u64 = 16;
const BUF_RING_ENTRY_BYTES: u64 = 16;

/// Sizes of one ring and what hangs off it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSizes {
    pub sq_entries: u32,
    /// Provided buffers for requests on service sockets.
    pub request_buffers: u16,
    /// Provided buffers for transfer sockets whose datagrams are small
    /// (every RRQ's ACKs, uploads with small blocks).
    pub transfer_buffers: u16,
    /// Provided buffers large enough for any DATA (big-block uploads).
    pub upload_buffers: u16,
    /// `sendmsg` operations in flight at once.
    pub send_slots: u32,
}

/// Full size: the default when locked memory allows.
pub const RING_FULL: RingSizes = RingSizes {
    sq_entries: 512,
    request_buffers: 512,
    transfer_buffers: 1024,
    upload_buffers: 64,
    send_slots: 1024,
};

/// What a shard falls back to under a low memlock limit: less batching,
/// fewer sessions, same behaviour.
pub const RING_REDUCED: RingSizes = RingSizes {
    sq_entries: 64,
    request_buffers: 64,
    transfer_buffers: 128,
    upload_buffers: 16,
    send_slots: 128,
};

fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

impl RingSizes {
    fn buffers(&self) -> u32 {
        u32::from(self.request_buffers)
            + u32::from(self.transfer_buffers)
            + u32::from(self.upload_buffers)
    }

    /// The most completions that can be pending at once with `owners`
    /// owners (see the module comment).
    pub fn completions_bound(&self, owners: u32) -> u64 {
        u64::from(self.send_slots)
            + u64::from(self.buffers())
            + u64::from(OPS_PER_OWNER) * u64::from(owners)
    }

    /// Completion-queue entries for `owners` owners: the bound, rounded up
    /// to a power of two; `None` if that is more than Linux allows.
    pub fn cq_entries(&self, owners: u32) -> Option<u32> {
        let n = self
            .completions_bound(owners)
            .max(u64::from(self.sq_entries) * 2)
            .next_power_of_two();
        (n <= u64::from(CQ_ENTRIES_MAX)).then_some(n as u32)
    }

    /// The largest owner count whose completions fit the biggest CQ.
    pub fn owners_max(&self) -> u32 {
        let fixed = u64::from(self.send_slots) + u64::from(self.buffers());
        (u64::from(CQ_ENTRIES_MAX).saturating_sub(fixed) / u64::from(OPS_PER_OWNER)) as u32
    }

    /// Locked memory the kernel charges for one ring with `owners` owners:
    /// the SQE array, the ring region (header, CQEs, SQ index array) and
    /// the three provided-buffer rings, each rounded up to whole pages.
    /// (Receive buffers and the send pool are ordinary memory.)
    pub fn memlock_bytes(&self, owners: u32) -> Option<u64> {
        let cq = u64::from(self.cq_entries(owners)?);
        let sq = u64::from(self.sq_entries);
        let rings = pages(RING_HEADER_BYTES + cq * CQE_BYTES + sq * 4);
        let sqes = pages(sq * SQE_BYTES);
        let buf_rings: u64 = [
            self.request_buffers,
            self.transfer_buffers,
            self.upload_buffers,
        ]
        .iter()
        .map(|&n| pages(u64::from(n) * BUF_RING_ENTRY_BYTES))
        .sum();
        Some(rings + sqes + buf_rings)
    }
}

/// The ring sizes and owners that fit a locked-memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub sizes: RingSizes,
    /// Owners per ring that fit.
    pub owners: u32,
    pub reduced: bool,
}

/// Picks sizes for `rings` rings of `owners` owners each within
/// `budget_bytes` of locked memory (`None`: unlimited). Prefers full size;
/// falls back to reduced sizes, and then to fewer owners, down to
/// `owners_min`. `Err` gives the budget that would be needed.
pub fn plan(
    rings: u32,
    owners: u32,
    owners_min: u32,
    budget_bytes: Option<u64>,
) -> Result<Plan, u64> {
    let rings = u64::from(rings.max(1));
    let fits = |sizes: &RingSizes, owners: u32| match (sizes.memlock_bytes(owners), budget_bytes) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(need), Some(budget)) => need * rings <= budget,
    };
    let full_owners = owners.min(RING_FULL.owners_max());
    if fits(&RING_FULL, full_owners) {
        return Ok(Plan {
            sizes: RING_FULL,
            owners: full_owners,
            reduced: false,
        });
    }
    // The largest owner count in owners_min ..= owners that fits reduced.
    let (mut lo, mut hi) = (owners_min, owners.min(RING_REDUCED.owners_max()));
    if lo <= hi && fits(&RING_REDUCED, lo) {
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(&RING_REDUCED, mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        return Ok(Plan {
            sizes: RING_REDUCED,
            owners: lo,
            reduced: true,
        });
    }
    Err(RING_REDUCED
        .memlock_bytes(owners_min)
        .unwrap_or(u64::MAX)
        .saturating_mul(rings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cq_holds_every_completion_that_can_be_outstanding() {
        // The defaults: 4096 sessions over 2 shards, 1 service socket, a wake.
        for sizes in [RING_FULL, RING_REDUCED] {
            for owners in [1, 3, 2050, 10_000] {
                let Some(cq) = sizes.cq_entries(owners) else {
                    continue;
                };
                let worst = u64::from(sizes.send_slots)
                    + u64::from(sizes.request_buffers)
                    + u64::from(sizes.transfer_buffers)
                    + u64::from(sizes.upload_buffers)
                    + 3 * u64::from(owners);
                assert!(u64::from(cq) >= worst, "{sizes:?} {owners}: {cq} < {worst}");
                assert!(cq >= 2 * sizes.sq_entries);
            }
        }
        // Four times the SQ, as before, is far too small for the defaults.
        assert!(RING_FULL.completions_bound(2050) > u64::from(4 * RING_FULL.sq_entries));
    }

    #[test]
    fn owners_max_is_the_largest_that_fits() {
        for sizes in [RING_FULL, RING_REDUCED] {
            let max = sizes.owners_max();
            assert!(sizes.cq_entries(max).is_some());
            assert!(sizes.cq_entries(max + 1).is_none());
        }
    }

    #[test]
    fn plans_fall_back_to_reduced_then_to_fewer_owners() {
        let unlimited = plan(2, 2050, 16, None).unwrap();
        assert_eq!(unlimited.sizes, RING_FULL);
        assert_eq!(unlimited.owners, 2050);
        let eight_mib = plan(2, 2050, 16, Some(8 << 20)).unwrap();
        assert!(!eight_mib.reduced);
        let small = plan(2, 2050, 16, Some(64 << 10)).unwrap();
        assert!(small.reduced);
        assert!(small.owners >= 16 && small.owners < 2050);
        assert!(small.sizes.memlock_bytes(small.owners).unwrap() * 2 <= 64 << 10);
        let need = plan(2, 2050, 16, Some(8 << 10)).unwrap_err();
        assert!(need > 8 << 10);
    }
}
