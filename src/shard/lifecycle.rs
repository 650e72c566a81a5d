//! How sessions end: timer scans, retiring a session (counting its outcome,
//! logging it, handing its owner back to the ring), releasing its slot once
//! the ring says its I/O has settled, and the shutdown drain.

use std::time::{Duration, Instant};

use crate::proto::sessions::SessionId;
use crate::proto::transfer::Outcome;
use crate::proto::wire::{ErrorCode, RequestKind};
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
        let c = &self.ctx.counters;
        match outcome {
            Outcome::Complete => c.transfers_completed.inc(),
            Outcome::CompleteUnconfirmed => c.transfers_unconfirmed.inc(),
            Outcome::TimedOut => c.failed_timeout.inc(),
            Outcome::NoResponse => c.failed_no_response.inc(),
            Outcome::PeerError(_) => c.failed_peer_error.inc(),
            Outcome::Unreachable => c.failed_unreachable.inc(),
            Outcome::Aborted(_) => c.failed_aborted.inc(),
            Outcome::Replaced => c.transfers_replaced.inc(),
            Outcome::Evicted => c.failed_evicted.inc(),
        }
        if let Some(sender) = entry.session.sender() {
            c.blocks_resent.add(sender.counters().blocks_resent);
        }
        if self.ctx.verbose >= 1 {
            let read = entry.session.kind() == RequestKind::Read;
            crate::log!(
                "uftpd: {} {} {} {}: {} after {} ms",
                if read { "RRQ" } else { "WRQ" },
                String::from_utf8_lossy(&entry.io.filename),
                if read { "to" } else { "from" },
                entry.peer,
                outcome,
                entry.started.elapsed().as_millis()
            );
        }
        self.sessions.retire(id, outcome);
        self.io.retire(Owner::new(id.index()));
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
                    entry
                        .session
                        .abort(ErrorCode::NotDefined, "Server shutting down");
                    self.pump(id);
                }
            }
            return elapsed > grace + Duration::from_millis(SETTLE_AFTER_GRACE_MS);
        }
        false
    }
}
