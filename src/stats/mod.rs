//! Per-shard counters. Each shard is the only writer of its own block, so an
//! increment is a plain relaxed load + store (no locked instruction on the
//! packet path); any other thread may read a consistent-enough snapshot.
//! The shard reaches its block through a plain borrow, never a clone of its
//! `Arc`, so counting costs no atomic read-modify-write either.

pub mod eas0;

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One shard's counters, on their own cache lines.
        #[repr(align(128))]
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $($(#[$doc])* pub $name: Counter,)*
        }

        /// A plain copy of [`ShardCounters`] for reporting and summing.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot {
            $(pub $name: u64,)*
        }

        impl ShardCounters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.get(),)* }
            }
        }

        impl Snapshot {
            pub fn add(&mut self, other: &Snapshot) {
                $(self.$name += other.$name;)*
            }

            /// (name, value) pairs in declaration order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name)),*].into_iter()
            }
        }
    };
}

counters! {
    requests_read,
    requests_write,
    /// Datagrams to the service port that were not a valid request.
    requests_malformed,
    /// Repeats of a request whose session was still waiting for the peer
    /// (answered by that session).
    requests_duplicate,
    /// Delayed copies of a request whose session was under way (ignored).
    requests_stale,
    /// Requests ignored because the server was shutting down.
    requests_ignored,
    /// Requests ignored because their source opened sessions faster than
    /// --client-rate allows.
    requests_rate_limited,
    sessions_accepted,
    /// Refused for a file, path or option reason (ERROR 1, 2, 3, 8).
    sessions_refused,
    /// Refused because the per-client limit was reached.
    sessions_refused_limit,
    /// Refused because no session slot or descriptor was free.
    sessions_refused_busy,
    transfers_completed,
    /// Completed but the final ACK never came.
    transfers_unconfirmed,
    failed_timeout,
    /// The peer never answered the first reply (possibly spoofed).
    failed_no_response,
    failed_peer_error,
    /// The peer's port closed mid-transfer (ICMP port unreachable).
    failed_unreachable,
    failed_aborted,
    /// Ended because a new request from the peer's port took their place.
    transfers_replaced,
    /// Never answered, and their place in a full table went to a new request.
    failed_evicted,
    /// Uploads whose size differed from the tsize their client announced
    /// (refused, not stored).
    uploads_size_mismatch,
    /// First replies (and resends) to peers that had not answered, not sent
    /// because the unproven-bytes budget (per source or in all) was spent.
    unverified_sends_withheld,
    packets_received,
    packets_sent,
    bytes_received,
    bytes_sent,
    /// DATA blocks sent again after a timeout.
    blocks_resent,
    /// Duplicate ACKs and DATA that were counted and ignored.
    duplicates_ignored,
    /// Packets to a transfer port from the wrong TID (answered with ERROR 5).
    stray_packets,
    /// Transmits that waited for a send slot (back-pressure; none is lost).
    sends_deferred,
    /// RRQs of files not all in the page cache (read ahead at admission).
    cold_files,
    /// Windows of such files sent from an io-wq worker because their pages
    /// were not in memory yet (the shard does not wait for the disk).
    sends_in_worker,
    /// Refusals and ERROR 5s not sent for want of a send slot.
    refusals_dropped,
    /// Sends the kernel refused (errno on completion).
    send_errors,
    /// Multishot receives that found their buffer group empty and were
    /// re-armed (the datagrams wait in the socket), by group.
    buffers_exhausted_requests,
    buffers_exhausted_transfers,
    buffers_exhausted_uploads,
    /// Pushes that found the submission queue full and submitted early.
    sq_full_submits,
    /// Reaps that found completions held back by the kernel because the
    /// completion queue was full (0 unless a bug: it is sized for the
    /// worst case), and completions it dropped (0 unless out of memory).
    cq_overflows,
    cq_lost,
    /// Buffer ownership violations and unknown completions (0 unless a bug).
    ring_misuse,
}

impl ShardCounters {
    /// Copies the ring's own totals in (they are already totals: set, not add).
    pub fn record_ring(&self, r: &crate::uring::RingStats) {
        self.buffers_exhausted_requests.set(r.buffers_exhausted[0]);
        self.buffers_exhausted_transfers.set(r.buffers_exhausted[1]);
        self.buffers_exhausted_uploads.set(r.buffers_exhausted[2]);
        self.sq_full_submits.set(r.sq_full_submits);
        self.cq_overflows.set(r.cq_overflows);
        self.cq_lost.set(r.cq_lost);
        self.ring_misuse
            .set(r.buffer_misuse + r.unknown_completions);
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Single-writer increment: only the owning shard calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Single-writer store of a total kept elsewhere.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
