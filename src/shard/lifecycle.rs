//! How sessions end: timer scans, retiring a session (counting its outcome,
//! logging it, handing its owner back to the ring), releasing its slot once
//! the ring says its I/O has settled, and the shutdown drain.

use std::time::{Duration, Instant, SystemTime};

use crate::log::{Body, Record, TransferLog};

use crate::proto::refusal::Refusal;
use crate::proto::sessions::SessionId;
use crate::proto::transfer::Outcome;
use crate::uring::Owner;

use super::{IDLE_WAKE_MS, Role, Shard};

/// After the grace period, how long aborted sessions may take to send
/// their ERROR and settle before the shard stops anyway.
const SETTLE_AFTER_GRACE_MS: u64 = 1000;
/// With no session left, how long to wait for the service sockets and the
/// last sends to settle.
const SETTLE_IDLE_MS: u64 = 500;

impl Shard {
    pub(super) fn scan_timers(&mut self, now: Instant) {
        self.next_timer_scan = now + Duration::from_millis(IDLE_WAKE_MS);
        for index in 0..self.sessions.capacity() as u32 {
            let Some(id) = self.sessions.id_at(index) else {
                continue;
            };
            let Some(entry) = self.sessions.get_mut(id) else {
                continue;
            };
            if !entry.is_live() {
                continue;
            }
            match entry.session.poll_timeout() {
                Some(deadline) if deadline <= now => {
                    entry.session.handle_timeout(now);
                    self.pump(id);
                }
                Some(deadline) => self.next_timer_scan = self.next_timer_scan.min(deadline),
                None => {}
            }
        }
    }

    /// Ends a live session: counts and logs its outcome, takes it out of the
    /// table's index (its peer may start over at once) and retires its ring
    /// owner. Its slot, socket and files stay until the ring reports that
    /// every operation on them has completed ([`Shard::release_settled`]).
    pub(super) fn retire(&mut self, id: SessionId, outcome: Outcome) {
        let Some(entry) = self.sessions.get(id) else {
            return;
        };
        if !entry.is_live() {
            return;
        }
        self.report(id, outcome);
        self.sessions.retire(id, outcome);
        self.io.retire(Owner::new(id.index()));
    }

    /// Counts and logs how a transfer ended, once: when it ends, or for an
    /// upload when its final ACK is released (the dally that follows, for
    /// a lost final ACK, is not part of the transfer).
    pub(super) fn report(&mut self, id: SessionId, outcome: Outcome) {
        let Shard { sessions, ctx, .. } = self;
        let Some(entry) = sessions.get_mut(id) else {
            return;
        };
        if entry.io.reported {
            return;
        }
        entry.io.reported = true;
        let c = &ctx.counters;
        c.record_outcome(outcome);
        let session = &entry.session;
        c.blocks_resent
            .add(session.sender().map_or(0, |s| s.counters().blocks_resent));
        let negotiated = session.negotiated();
        let log = TransferLog {
            peer: entry.peer,
            kind: session.kind(),
            filename: std::mem::take(&mut entry.io.filename),
            mode: session.mode(),
            bytes: session.bytes_delivered(),
            size_bytes: match session.sender() {
                Some(s) => Some(s.size_bytes()),
                None => negotiated.oack.tsize_bytes,
            },
            duration_us: entry.started.elapsed().as_micros() as u64,
            blksize: negotiated.blksize,
            windowsize: negotiated.windowsize,
            retransmissions: session.retransmissions(),
            outcome,
            published: entry.io.published,
        };
        let level = log.level();
        if ctx.logger.enabled(level) {
            let record = Record {
                at: SystemTime::now(),
                level,
                shard: Some(ctx.shard),
                body: Body::Transfer(log),
            };
            if ctx.logger.send(record).is_err() {
                c.log_events_dropped.inc();
            }
        }
    }

    /// Frees the slots of sessions whose ring owners have settled: their
    /// sockets are closed and maps dropped by the ring; uploads that were
    /// never published vanish here.
    pub(super) fn release_settled(&mut self) {
        let mut released = std::mem::take(&mut self.released);
        self.io.release_settled(&mut released);
        for &owner in &released {
            match self.owners.role(owner) {
                Role::Session(index) => {
                    if let Some(id) = self.sessions.id_at(index) {
                        debug_assert!(self.sessions.get(id).is_some_and(|e| !e.is_live()));
                        self.sessions.release(id);
                    }
                }
                Role::Service(i) => {
                    if let Some(s) = self.services.get_mut(i) {
                        s.open = false;
                    }
                }
                Role::Wake => {}
            }
        }
        self.released = released;
    }

    /// Shutdown: stop taking requests, let transfers finish within the
    /// grace period (none when `hurry`: a second signal), then end the rest.
    /// Returns true when the shard may exit.
    pub(super) fn drain(&mut self, now: Instant, hurry: bool) -> bool {
        let since = match self.draining_since {
            Some(t) => t,
            None => {
                self.draining_since = Some(now);
                self.endpoint.start_draining();
                // Close the service sockets now: the kernel then hands new
                // requests to the sockets that are still read (a server
                // started beside us), not to a queue nobody reads.
                for i in 0..self.services.len() {
                    self.io.retire(self.owners.service(i));
                }
                now
            }
        };
        let elapsed = now.duration_since(since);
        // Finished uploads only dally; their files are already in place.
        for index in 0..self.sessions.capacity() as u32 {
            if let Some(id) = self.sessions.id_at(index)
                && self
                    .sessions
                    .get(id)
                    .is_some_and(|e| e.is_live() && e.session.is_dallying())
            {
                self.retire(id, Outcome::Complete);
            }
        }
        let services_open = self.services.iter().any(|s| s.open);
        if self.sessions.live() == 0 {
            let settled = self.sessions.occupied() == 0 && !services_open;
            return settled || elapsed > Duration::from_millis(SETTLE_IDLE_MS);
        }
        let grace = if hurry {
            Duration::ZERO
        } else {
            Duration::from_millis(self.ctx.grace_ms)
        };
        if elapsed > grace {
            for index in 0..self.sessions.capacity() as u32 {
                let Some(id) = self.sessions.id_at(index) else {
                    continue;
                };
                // An upload whose commit is under way keeps its last second:
                // an ERROR now could tell its client it failed while the
                // rename makes it whole.
                if let Some(entry) = self.sessions.get_mut(id)
                    && entry.is_live()
                    && !entry.session.is_committing()
                {
                    entry.session.abort(Refusal::SHUTTING_DOWN);
                    self.pump(id);
                }
            }
            return elapsed > grace + Duration::from_millis(SETTLE_AFTER_GRACE_MS);
        }
        false
    }
}
