//! How transfers end: timer scans, retiring a session (counting its
//! outcome, settling its upload, cancelling its receive before its socket
//! closes), and the shutdown drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::opcode;

use crate::proto::transfer::Outcome;
use crate::proto::wire::{ErrorCode, RequestKind};

use super::ring::Tag;
use super::{IDLE_WAKE_MS, Shard, Store};

impl Shard {
    pub(super) fn scan_timers(&mut self, now: Instant) {
        self.next_timer_scan = now + Duration::from_millis(IDLE_WAKE_MS);
        for index in 0..self.slots.len() as u32 {
            let due = match self.slots.get(index as usize) {
                Some(Some(slot)) if !slot.closing => slot.session.poll_timeout(),
                _ => continue,
            };
            match due {
                Some(deadline) if deadline <= now => {
                    if let Some(Some(slot)) = self.slots.get_mut(index as usize) {
                        slot.session.handle_timeout(now);
                    }
                    self.pump(index);
                }
                Some(deadline) => self.next_timer_scan = self.next_timer_scan.min(deadline),
                None => {}
            }
        }
    }

    /// Retires a session: counts its outcome, settles its upload, and
    /// cancels its receive; the socket closes when the cancel completes.
    pub(super) fn end_session(&mut self, slot_index: u32, outcome: Option<Outcome>) {
        let counters = Arc::clone(&self.setup.counters);
        let verbose = self.setup.verbose;
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        if slot.closing {
            return;
        }
        slot.closing = true;
        match outcome {
            Some(Outcome::Complete) => counters.transfers_completed.inc(),
            Some(Outcome::CompleteUnconfirmed) => counters.transfers_unconfirmed.inc(),
            Some(Outcome::TimedOut) => counters.failed_timeout.inc(),
            Some(Outcome::NoResponse) => counters.failed_no_response.inc(),
            Some(Outcome::PeerError(_)) => counters.failed_peer_error.inc(),
            Some(Outcome::Unreachable) => counters.failed_unreachable.inc(),
            Some(Outcome::Aborted(_)) | None => counters.failed_aborted.inc(),
        }
        if let Some(sender) = slot.session.sender() {
            counters.blocks_resent.add(sender.counters().blocks_resent);
        }
        if let Store::Write { upload, .. } = &mut slot.store {
            // Dropping an uncommitted upload discards it.
            upload.take();
        }
        if verbose >= 1 {
            eprintln!(
                "uftpd: {} {} {} {}: {} after {} ms",
                match slot.session.kind() {
                    RequestKind::Read => "RRQ",
                    RequestKind::Write => "WRQ",
                },
                String::from_utf8_lossy(&slot.filename),
                if slot.session.kind() == RequestKind::Read {
                    "to"
                } else {
                    "from"
                },
                slot.peer,
                outcome.map_or_else(
                    || "replaced by a new request".to_string(),
                    |o| o.to_string()
                ),
                slot.started.elapsed().as_millis()
            );
        }
        let peer = slot.peer;
        let recv_armed = slot.recv_armed;
        let generation = slot.generation;
        let large = slot.large_buffers;
        if self.by_peer.get(&peer) == Some(&slot_index) {
            self.by_peer.remove(&peer);
        }
        if let Some(n) = self.per_client.get_mut(&peer.ip()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&peer.ip());
            }
        }
        if recv_armed {
            // Cancel before close: the fd must not be reused under a live op.
            let target = Tag::TransferRecv {
                slot: slot_index,
                generation,
                large,
            }
            .encode();
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(Tag::Cancel.encode());
            self.push(sqe);
        } else {
            self.free_slot(slot_index);
        }
    }

    pub(super) fn free_slot(&mut self, slot_index: u32) {
        if let Some(entry) = self.slots.get_mut(slot_index as usize)
            && entry.take().is_some()
        {
            self.active -= 1;
            self.free_slots.push(slot_index);
        }
    }

    /// Shutdown: stop taking requests, let transfers finish within the
    /// grace period, then end the rest. Returns true when the shard may exit.
    pub(super) fn drain(&mut self, now: Instant) -> bool {
        let since = *self.draining_since.get_or_insert(now);
        if since == now {
            // Closing the service sockets takes us out of the REUSEPORT group.
            for i in 0..self.service.len() {
                let target = Tag::ServiceRecv { socket: i as u32 }.encode();
                let sqe = opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(Tag::Cancel.encode());
                self.push(sqe);
            }
        }
        // Finished uploads only dally; their files are already in place.
        for index in 0..self.slots.len() as u32 {
            if matches!(self.slots.get(index as usize), Some(Some(s)) if !s.closing && !s.committing && s.session.is_dallying())
            {
                self.end_session(index, Some(Outcome::Complete));
            }
        }
        let live = self.slots.iter().flatten().filter(|s| !s.closing).count();
        if live == 0 {
            return self.active == 0 || now.duration_since(since) > Duration::from_millis(500);
        }
        if now.duration_since(since) > Duration::from_millis(self.setup.grace_ms) {
            for index in 0..self.slots.len() as u32 {
                if let Some(Some(slot)) = self.slots.get_mut(index as usize)
                    && !slot.closing
                {
                    slot.session
                        .abort(ErrorCode::NotDefined, "Server shutting down");
                    self.pump(index);
                }
            }
            return true;
        }
        false
    }
}
