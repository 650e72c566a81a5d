//! Per-shard counters. Each shard is the only writer of its own block, so an
//! increment is a plain relaxed load + store (no locked instruction on the
//! packet path); any other thread may read a consistent-enough snapshot.
//! The shard reaches its block through a plain borrow, never a clone of its
//! `Arc`, so counting costs no atomic read-modify-write either.
//!
//! The rest of this module is the stats endpoint, off the packet path:
//! [`view`] sums the shards and keeps rates; [`report`], [`prometheus`],
//! [`json`] and [`page`] render a view; [`http`] and `eas0` are the two
//! protocols of the stats port, sans-I/O; `server` is its listener thread.

pub mod allow;

pub mod http;
pub mod json;
pub mod page;
pub mod prometheus;
pub mod report;
pub mod server;
mod session;
pub mod view;

pub mod eas0;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::refusal::Cause;
use crate::proto::transfer::{Failure, Outcome};

macro_rules! counters {
    (
        counters { $($(#[$doc:meta])* $name:ident),* $(,)? }
        gauges { $($(#[$gdoc:meta])* $gauge:ident),* $(,)? }
    ) => {
        /// One shard's counters, on their own cache lines.
        #[repr(align(128))]
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $($(#[$doc])* pub $name: Counter,)*
            $($(#[$gdoc])* pub $gauge: Counter,)*
        }

        /// A plain copy of [`ShardCounters`] for reporting and summing.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot {
            $(pub $name: u64,)*
            $(pub $gauge: u64,)*
        }

        impl ShardCounters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.get(),)*
                    $($gauge: self.$gauge.get(),)*
                }
            }
        }

        impl Snapshot {
            /// Adds another shard's values (gauges too: the sum is the total).
            pub fn add(&mut self, other: &Snapshot) {
                $(self.$name += other.$name;)*
                $(self.$gauge += other.$gauge;)*
            }

            /// (name, value, kind) for every field, in declaration order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64, Kind)> {
                [
                    $((stringify!($name), self.$name, Kind::Counter),)*
                    $((stringify!($gauge), self.$gauge, Kind::Gauge),)*
                ]
                .into_iter()
            }
        }
    };
}

/// A counter only grows (since start); a gauge is a level now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

counters! {
    counters {
        /// Well-formed RRQs and WRQs to the service port, repeats included.
        requests_read,
        requests_write,
        /// Datagrams to the service port that were not a well-formed
        /// request (ignored, or answered with ERROR 4). With the two above,
        /// every datagram to the service port counts exactly once.
        requests_malformed,
        /// Well-formed TFTP packets to the service port that are not
        /// requests (DATA, ACK, ERROR, OACK), ignored.
        service_packets_ignored,
        /// Repeats of a request whose session was still waiting for the
        /// peer (answered by that session).
        requests_duplicate,
        /// Delayed copies of a request whose session was under way (ignored).
        requests_stale,
        /// Requests ignored because the server was shutting down.
        requests_ignored,
        /// Requests ignored because their source opened sessions faster
        /// than --client-rate allows.
        requests_rate_limited,
        sessions_accepted,
        /// Refusals by cause (see `proto::refusal::Cause`).
        refused_not_found,
        refused_access,
        refused_limit,
        refused_busy,
        refused_malformed,
        refused_option,
        refused_disk,
        refused_internal,
        /// Every block delivered (including `transfers_unconfirmed`).
        transfers_completed,
        /// Completed, but the final ACK never came (not an error).
        transfers_unconfirmed,
        /// Transfers that did not complete, by `proto::transfer::Failure`.
        failed_timeout,
        failed_no_response,
        failed_client_error,
        failed_uefi_probe,
        failed_unreachable,
        failed_disk,
        failed_file_changed,
        failed_size_mismatch,
        failed_shutdown,
        failed_protocol,
        failed_replaced,
        failed_evicted,
        failed_internal,
        /// First replies (and resends) to peers that had not answered, not
        /// sent because the unproven-bytes budget (per source or in all)
        /// was spent.
        unverified_sends_withheld,
        packets_received,
        packets_sent,
        /// UDP payload bytes, headers of TFTP included.
        bytes_received,
        bytes_sent,
        /// File bytes in DATA sent (resends included) and in DATA received
        /// in order: the payload rate each way.
        payload_bytes_sent,
        payload_bytes_received,
        /// DATA blocks sent again after a timeout.
        blocks_resent,
        /// Duplicate ACKs and DATA that were counted and ignored.
        duplicates_ignored,
        /// Packets to a transfer port from the wrong TID (answered with
        /// ERROR 5).
        stray_packets,
        /// Transmits that waited for a send slot (back-pressure; none is
        /// lost).
        sends_deferred,
        /// RRQs of files not all in the page cache (read ahead at admission).
        cold_files,
        /// Windows of such files sent from an io-wq worker because their
        /// pages were not in memory yet (the shard does not wait for the disk).
        sends_in_worker,
        /// RRQs served from a map already held, and those that mapped the file.
        cache_hits,
        cache_misses,
        /// Refusals and ERROR 5s not sent for want of a send slot.
        refusals_dropped,
        /// Sends the kernel refused (errno on completion).
        send_errors,
        /// Log events dropped because the logging thread was behind (the
        /// shard never waits for it).
        log_events_dropped,
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
    gauges {
        /// Sessions under way now (transfers and requests being answered).
        sessions_active,
        /// Of those, sessions whose peer has not answered yet.
        sessions_unverified,
    }
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

    /// The counter for refusals with this cause.
    pub fn refused(&self, cause: Cause) -> &Counter {
        match cause {
            Cause::NotFound => &self.refused_not_found,
            Cause::Access => &self.refused_access,
            Cause::Limit => &self.refused_limit,
            Cause::Busy => &self.refused_busy,
            Cause::Malformed => &self.refused_malformed,
            Cause::Option => &self.refused_option,
            Cause::Disk => &self.refused_disk,
            Cause::Internal | Cause::FileChanged | Cause::SizeMismatch | Cause::Shutdown => {
                &self.refused_internal
            }
        }
    }

    /// The counter for transfers that failed this way.
    pub fn failed(&self, failure: Failure) -> &Counter {
        match failure {
            Failure::Timeout => &self.failed_timeout,
            Failure::NoResponse => &self.failed_no_response,
            Failure::ClientError => &self.failed_client_error,
            Failure::UefiProbe => &self.failed_uefi_probe,
            Failure::Unreachable => &self.failed_unreachable,
            Failure::Disk => &self.failed_disk,
            Failure::FileChanged => &self.failed_file_changed,
            Failure::SizeMismatch => &self.failed_size_mismatch,
            Failure::Shutdown => &self.failed_shutdown,
            Failure::Protocol => &self.failed_protocol,
            Failure::Replaced => &self.failed_replaced,
            Failure::Evicted => &self.failed_evicted,
            Failure::Internal => &self.failed_internal,
        }
    }

    /// Counts a finished transfer by its outcome.
    pub fn record_outcome(&self, outcome: Outcome) {
        match outcome.failure() {
            None => {
                self.transfers_completed.inc();
                if outcome == Outcome::CompleteUnconfirmed {
                    self.transfers_unconfirmed.inc();
                }
            }
            Some(f) => self.failed(f).inc(),
        }
    }
}

impl Snapshot {
    /// Refusals with this cause (as [`ShardCounters::refused`]).
    pub fn refused(&self, cause: Cause) -> u64 {
        match cause {
            Cause::NotFound => self.refused_not_found,
            Cause::Access => self.refused_access,
            Cause::Limit => self.refused_limit,
            Cause::Busy => self.refused_busy,
            Cause::Malformed => self.refused_malformed,
            Cause::Option => self.refused_option,
            Cause::Disk => self.refused_disk,
            Cause::Internal | Cause::FileChanged | Cause::SizeMismatch | Cause::Shutdown => {
                self.refused_internal
            }
        }
    }

    /// Transfers that failed this way.
    pub fn failed(&self, failure: Failure) -> u64 {
        match failure {
            Failure::Timeout => self.failed_timeout,
            Failure::NoResponse => self.failed_no_response,
            Failure::ClientError => self.failed_client_error,
            Failure::UefiProbe => self.failed_uefi_probe,
            Failure::Unreachable => self.failed_unreachable,
            Failure::Disk => self.failed_disk,
            Failure::FileChanged => self.failed_file_changed,
            Failure::SizeMismatch => self.failed_size_mismatch,
            Failure::Shutdown => self.failed_shutdown,
            Failure::Protocol => self.failed_protocol,
            Failure::Replaced => self.failed_replaced,
            Failure::Evicted => self.failed_evicted,
            Failure::Internal => self.failed_internal,
        }
    }

    pub fn refused_total(&self) -> u64 {
        REFUSAL_CAUSES.iter().map(|&c| self.refused(c)).sum()
    }

    pub fn failed_total(&self) -> u64 {
        Failure::ALL.iter().map(|&f| self.failed(f)).sum()
    }

    pub fn requests_total(&self) -> u64 {
        self.requests_read + self.requests_write + self.requests_malformed
    }
}

/// The causes refusals are counted by (the rest count as `internal`).
pub const REFUSAL_CAUSES: [Cause; 8] = [
    Cause::NotFound,
    Cause::Access,
    Cause::Limit,
    Cause::Busy,
    Cause::Malformed,
    Cause::Option,
    Cause::Disk,
    Cause::Internal,
];

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
