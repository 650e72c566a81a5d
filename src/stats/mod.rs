//! Per-shard counters. Each shard is the only writer of its own block, so an
//! increment is a plain relaxed load + store (no locked instruction on the
//! packet path); any other thread may read a consistent-enough snapshot.

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
    /// Repeats of a request whose session was still waiting for the peer.
    requests_duplicate,
    sessions_accepted,
    /// Refused for a file or path reason (ERROR 1, 2, 4, 8).
    sessions_refused,
    /// Refused because a session or per-client limit was reached.
    sessions_refused_limit,
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
    /// Sends dropped because the send pool was exhausted.
    send_pool_exhausted,
    /// Sends the kernel refused (errno on completion).
    send_errors,
    /// Receives lost because every provided buffer was in use.
    receive_buffers_exhausted,
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

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
