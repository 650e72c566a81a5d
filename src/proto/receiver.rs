//! The receiving side of a transfer (server WRQ, client RRQ): accepts blocks
//! in order, ACKs the last block of each window (RFC 7440), a gap, or the
//! short final block, and dallies afterwards to re-ACK a repeated final block.

use std::time::Instant;

use super::block;
use super::transfer::{Outcome, RetransmitTimer, TimerConfig, TimerVerdict, Transmit};
use super::wire::ErrorCode;

/// The control packet that opens the transfer and is resent until DATA 1
/// arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Client: our RRQ.
    Request,
    /// Server: our OACK.
    Oack,
    /// Server: ACK 0 to a WRQ without accepted options; client: ACK 0 to the
    /// server's OACK.
    Ack0,
}

/// What the caller should do with the payload of a DATA packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataVerdict {
    /// New, in-order block with this index: store the payload. `last` means
    /// the transfer's data is complete (commit it now; the receiver dallies).
    Accept { index: u64, last: bool },
    /// Already received, or out of order: drop the payload.
    Ignore,
    /// Larger than blksize: the transfer was aborted.
    Reject,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverCounters {
    pub blocks_received: u64,
    pub duplicate_blocks: u64,
    pub out_of_order_blocks: u64,
    pub acks_sent: u64,
}

#[derive(Debug)]
pub struct Receiver {
    blksize: u16,
    windowsize: u16,
    handshake: Option<Handshake>,
    /// Highest in-order block index received (0: none).
    received: u64,
    last_ack: u64,
    last_ack_at: Option<Instant>,
    final_index: Option<u64>,
    dally_ms: u64,
    verified: bool,
    timer: RetransmitTimer,
    pending: Option<Transmit>,
    outcome: Option<Outcome>,
    counters: ReceiverCounters,
}

/// A repeated ACK is held back for this long after the same ACK went out: a
/// burst of duplicated DATA draws one ACK, not one each.
pub const REACK_HOLDOFF_MS_MAX: u64 = 250;

impl Receiver {
    pub fn new(
        blksize: u16,
        windowsize: u16,
        handshake: Handshake,
        timer: TimerConfig,
        dally_ms: u64,
        now: Instant,
    ) -> Receiver {
        assert!(blksize >= 1 && windowsize >= 1);
        let mut r = Receiver {
            blksize,
            windowsize,
            handshake: Some(handshake),
            received: 0,
            last_ack: 0,
            last_ack_at: None,
            final_index: None,
            dally_ms,
            verified: false,
            timer: RetransmitTimer::new(timer),
            pending: None,
            outcome: None,
            counters: ReceiverCounters::default(),
        };
        r.queue_handshake();
        r.timer.arm(now);
        r
    }

    /// Client: the server answered our RRQ with an OACK; adopt its values and
    /// acknowledge it with ACK 0.
    pub fn accept_oack(&mut self, blksize: u16, windowsize: u16, now: Instant) {
        if self.handshake != Some(Handshake::Request) || blksize == 0 || windowsize == 0 {
            return;
        }
        self.blksize = blksize;
        self.windowsize = windowsize;
        self.handshake = Some(Handshake::Ack0);
        self.verified = true;
        self.timer.progress(now);
        self.queue_handshake();
    }

    pub fn handle_data(
        &mut self,
        wire_block: u16,
        payload_len: usize,
        now: Instant,
    ) -> DataVerdict {
        if self.outcome.is_some() {
            return DataVerdict::Ignore;
        }
        if let Some(final_index) = self.final_index {
            // Dallying: the sender missed our final ACK.
            if block::unwrap(wire_block, final_index) == final_index {
                self.counters.duplicate_blocks += 1;
                self.maybe_reack(now);
            }
            return DataVerdict::Ignore;
        }
        if payload_len > usize::from(self.blksize) {
            self.pending = Some(Transmit::Error {
                code: ErrorCode::IllegalOperation,
                message: "DATA larger than the negotiated blksize",
            });
            self.outcome = Some(Outcome::Aborted(ErrorCode::IllegalOperation));
            self.timer.stop();
            return DataVerdict::Reject;
        }
        let index = block::unwrap(wire_block, self.received);
        if index == self.received + 1 {
            self.handshake = None;
            self.verified = true;
            self.received = index;
            self.counters.blocks_received += 1;
            self.timer.progress(now);
            let last = payload_len < usize::from(self.blksize);
            if last {
                self.final_index = Some(index);
                self.send_ack(now);
                // Dally well past the sender's retransmit timeout.
                self.timer.arm_for(now, self.dally_ms);
            } else if index - self.last_ack >= u64::from(self.windowsize) {
                self.send_ack(now);
            }
            DataVerdict::Accept { index, last }
        } else {
            // Any DATA on our TID proves the peer got our reply.
            self.verified = true;
            if index <= self.received {
                self.counters.duplicate_blocks += 1;
                if index > self.last_ack {
                    // Received since our last ACK, so no ACK of ours was lost:
                    // a network duplicate. ACKing it would restart the
                    // sender's window over blocks still in flight.
                    return DataVerdict::Ignore;
                }
            } else {
                self.counters.out_of_order_blocks += 1;
            }
            // A repeat means our ACK was lost; a gap means a block was lost.
            // Either way the sender needs our position, but only once.
            if self.handshake.is_none() {
                self.maybe_reack(now);
            } else if self.pending.is_none() {
                // Nothing in order yet: the handshake reply is what's missing.
                self.queue_handshake();
            }
            DataVerdict::Ignore
        }
    }

    pub fn handle_error(&mut self, code: u16) {
        if self.outcome.is_none() {
            self.outcome = Some(if self.final_index.is_some() {
                Outcome::Complete
            } else {
                Outcome::PeerError(code)
            });
            self.pending = None;
            self.timer.stop();
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if self.final_index.is_some() {
            if self.timer.deadline().is_some_and(|d| now >= d) {
                self.timer.stop();
                self.outcome = Some(Outcome::Complete);
            }
            return;
        }
        match self.timer.on_timeout(now, self.verified) {
            TimerVerdict::NotDue | TimerVerdict::HoldQuiet => {}
            TimerVerdict::Resend => {
                if self.handshake.is_some() {
                    self.queue_handshake();
                } else {
                    self.send_ack(now);
                }
            }
            TimerVerdict::GiveUpUnverified => self.finish(Outcome::NoResponse),
            TimerVerdict::GiveUp => self.finish(Outcome::TimedOut),
        }
    }

    /// The peer's port is closed (ICMP port unreachable). A finished upload
    /// stays finished; anything else has lost its sender.
    pub fn handle_unreachable(&mut self) {
        if self.outcome.is_none() {
            self.finish(if self.final_index.is_some() {
                Outcome::Complete
            } else {
                Outcome::Unreachable
            });
        }
    }

    /// A duplicate of the request that opened this transfer.
    pub fn handle_duplicate_request(&mut self) {
        if self.outcome.is_none() && !self.verified && self.pending.is_none() {
            self.queue_handshake();
        }
    }

    /// Ends the transfer with an ERROR of ours (disk full, write failure).
    pub fn abort(&mut self, code: ErrorCode, message: &'static str) {
        if self.outcome.is_none() {
            self.pending = Some(Transmit::Error { code, message });
            self.outcome = Some(Outcome::Aborted(code));
            self.final_index = None;
            self.timer.stop();
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.pending.take()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            None
        } else {
            self.timer.deadline()
        }
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// All data has arrived (the receiver may still be dallying).
    pub fn is_complete(&self) -> bool {
        self.final_index.is_some()
    }

    pub fn blksize(&self) -> u16 {
        self.blksize
    }

    pub fn windowsize(&self) -> u16 {
        self.windowsize
    }

    pub fn received_blocks(&self) -> u64 {
        self.received
    }

    pub fn counters(&self) -> ReceiverCounters {
        self.counters
    }

    fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.pending = None;
        self.timer.stop();
    }

    fn queue_handshake(&mut self) {
        self.pending = match self.handshake {
            Some(Handshake::Request) => Some(Transmit::Request),
            Some(Handshake::Oack) => Some(Transmit::Oack),
            Some(Handshake::Ack0) => Some(Transmit::Ack { block: 0 }),
            None => return,
        };
    }

    fn send_ack(&mut self, now: Instant) {
        self.last_ack = self.received;
        self.last_ack_at = Some(now);
        self.counters.acks_sent += 1;
        self.pending = Some(Transmit::Ack {
            block: block::wire(self.received),
        });
    }

    fn maybe_reack(&mut self, now: Instant) {
        let holdoff_ms = (self.timer.retransmit_ms() / 4).min(REACK_HOLDOFF_MS_MAX);
        let recent = self.last_ack == self.received
            && self.last_ack_at.is_some_and(|at| {
                now.saturating_duration_since(at).as_millis() < u128::from(holdoff_ms)
            });
        if !recent {
            self.send_ack(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::transfer::TEST_TIMER as TIMER;

    #[test]
    fn a_finished_upload_stays_finished_when_the_peer_leaves() {
        let now = Instant::now();
        let mut r = Receiver::new(512, 1, Handshake::Ack0, TIMER, 10_000, now);
        assert_eq!(r.poll_transmit(), Some(Transmit::Ack { block: 0 }));
        assert_eq!(
            r.handle_data(1, 10, now),
            DataVerdict::Accept {
                index: 1,
                last: true
            }
        );
        r.handle_unreachable();
        assert_eq!(r.outcome(), Some(Outcome::Complete));

        let mut r = Receiver::new(512, 1, Handshake::Ack0, TIMER, 10_000, now);
        assert_eq!(
            r.handle_data(1, 512, now),
            DataVerdict::Accept {
                index: 1,
                last: false
            }
        );
        r.handle_unreachable();
        assert_eq!(r.outcome(), Some(Outcome::Unreachable));
    }

    #[test]
    fn a_window_is_acked_once_at_its_end_and_a_gap_once() {
        let now = Instant::now();
        let mut r = Receiver::new(512, 4, Handshake::Oack, TIMER, 10_000, now);
        assert_eq!(r.poll_transmit(), Some(Transmit::Oack));
        for block in 1..=3 {
            assert!(matches!(
                r.handle_data(block, 512, now),
                DataVerdict::Accept { .. }
            ));
            assert_eq!(r.poll_transmit(), None);
        }
        r.handle_data(4, 512, now);
        assert_eq!(r.poll_transmit(), Some(Transmit::Ack { block: 4 }));
        // Block 5 lost: 6 and 7 draw one ACK 4, not two.
        assert_eq!(r.handle_data(6, 512, now), DataVerdict::Ignore);
        assert_eq!(r.handle_data(7, 512, now), DataVerdict::Ignore);
        assert_eq!(r.poll_transmit(), None, "ACK 4 was just sent: held back");
    }
}
