//! The receiving side of a transfer (server WRQ, client RRQ): accepts blocks
//! in order, ACKs the last block of each window (RFC 7440), a gap, or the
//! short final block, and dallies afterwards to re-ACK a repeated final block.
//!
//! A server's final ACK tells the client its file is in place, so it waits
//! for the caller to make the data durable ([`FinalAck::AfterCommit`],
//! [`Receiver::commit_done`]); the dally is timed from that ACK.

use std::time::Instant;

use super::block;
use super::refusal::Refusal;
use super::transfer::{Outcome, RetransmitTimer, TimerConfig, TimerVerdict, Transmit};

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
    /// First replies and ACKs sent again after a timeout.
    pub acks_resent: u64,
    /// Payload bytes of the blocks accepted in order (what was delivered).
    pub payload_bytes: u64,
}

/// When the last block is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalAck {
    /// At once (a client keeping the data in memory).
    Immediate,
    /// Once the caller reports the data durable with
    /// [`Receiver::commit_done`] (a server writing a file).
    AfterCommit,
}

/// Where the receiver is after the last block arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Blocks are still coming.
    Receiving,
    /// The data is complete; the caller is making it durable. No ACK goes
    /// out and no timer runs until it says how that went.
    Committing {
        /// The peer sent ERROR or went away meanwhile: no final ACK then.
        peer_gone: bool,
    },
    /// The final ACK went out; re-ACK a repeated last block until the dally ends.
    Dallying,
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
    final_ack: FinalAck,
    ending: Ending,
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
        final_ack: FinalAck,
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
            final_ack,
            ending: Ending::Receiving,
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
            // The sender missed our final ACK, or (committing) has not had it yet.
            if block::unwrap(wire_block, final_index) == final_index {
                self.counters.duplicate_blocks += 1;
                if self.ending == Ending::Dallying {
                    self.maybe_reack(now);
                }
            }
            return DataVerdict::Ignore;
        }
        if payload_len > usize::from(self.blksize) {
            self.abort(Refusal::OVERSIZED_DATA);
            return DataVerdict::Reject;
        }
        let index = block::unwrap(wire_block, self.received);
        if index == self.received + 1 {
            self.handshake = None;
            self.verified = true;
            self.received = index;
            self.counters.blocks_received += 1;
            self.counters.payload_bytes += payload_len as u64;
            self.timer.progress(now);
            let last = payload_len < usize::from(self.blksize);
            if last {
                self.final_index = Some(index);
                match self.final_ack {
                    FinalAck::Immediate => self.start_dally(now),
                    FinalAck::AfterCommit => {
                        self.ending = Ending::Committing { peer_gone: false };
                        self.timer.stop();
                    }
                }
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
            if self.handshake == Some(Handshake::Oack) {
                // DATA on our TID after our OACK: the peer has the OACK, and
                // it is DATA 1 that was lost. Answering with the OACK again
                // (atftp takes it as leave to send its next block, and never
                // goes back) would ping-pong forever; ACK 0 asks for block 1.
                self.handshake = None;
                self.maybe_reack(now);
            } else if self.handshake.is_none() {
                self.maybe_reack(now);
            } else if self.pending.is_none() {
                // Nothing in order yet: the handshake reply is what's missing.
                self.queue_handshake();
            }
            DataVerdict::Ignore
        }
    }

    pub fn handle_error(&mut self, code: u16) {
        if self.outcome.is_some() {
            return;
        }
        match self.ending {
            // The outcome waits for the commit (the data is all here).
            Ending::Committing { .. } => self.ending = Ending::Committing { peer_gone: true },
            Ending::Dallying => self.finish(Outcome::Complete),
            Ending::Receiving => self.finish(Outcome::PeerError(code)),
        }
    }

    /// The data is durable (the caller committed it): send the final ACK and
    /// dally from now, well past the sender's retransmit timeout.
    pub fn commit_done(&mut self, now: Instant) {
        if let Ending::Committing { peer_gone } = self.ending {
            if peer_gone {
                self.ending = Ending::Dallying;
                self.finish(Outcome::Complete);
            } else {
                self.start_dally(now);
            }
        }
    }

    /// The data could not be made durable: end with this ERROR.
    pub fn commit_failed(&mut self, refusal: Refusal) {
        if matches!(self.ending, Ending::Committing { .. }) {
            self.ending = Ending::Receiving;
            self.abort(refusal);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        match self.ending {
            Ending::Committing { .. } => return,
            Ending::Dallying => {
                if self.timer.deadline().is_some_and(|d| now >= d) {
                    self.finish(Outcome::Complete);
                }
                return;
            }
            Ending::Receiving => {}
        }
        match self.timer.on_timeout(now, self.verified) {
            TimerVerdict::NotDue | TimerVerdict::HoldQuiet => {}
            TimerVerdict::Resend => {
                self.counters.acks_resent += 1;
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
        if self.outcome.is_some() {
            return;
        }
        match self.ending {
            Ending::Committing { .. } => self.ending = Ending::Committing { peer_gone: true },
            Ending::Dallying => self.finish(Outcome::Complete),
            Ending::Receiving => self.finish(Outcome::Unreachable),
        }
    }

    /// A duplicate of the request that opened this transfer: the first
    /// reply again while the peer has not answered, within the timer's
    /// resend budget.
    pub fn handle_duplicate_request(&mut self, now: Instant) {
        if self.outcome.is_none()
            && self.pending.is_none()
            && self.timer.take_repeat_resend(self.verified)
        {
            self.queue_handshake();
            // A whole timeout for the answer to be answered (once at most).
            self.timer.arm(now);
        }
    }

    /// Ends the transfer with an ERROR of ours (disk full, write failure).
    pub fn abort(&mut self, refusal: Refusal) {
        if self.outcome.is_none() {
            self.pending = Some(Transmit::Error {
                code: refusal.code,
                message: refusal.message,
            });
            self.outcome = Some(Outcome::Aborted(refusal));
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

    /// All data has arrived (it may still be committing or dallying).
    pub fn is_complete(&self) -> bool {
        self.final_index.is_some()
    }

    /// All data has arrived and the caller is making it durable.
    pub fn is_committing(&self) -> bool {
        matches!(self.ending, Ending::Committing { .. }) && self.outcome.is_none()
    }

    /// The final ACK went out; only re-ACKs of a repeated last block remain.
    pub fn is_dallying(&self) -> bool {
        self.ending == Ending::Dallying && self.outcome.is_none()
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

    fn start_dally(&mut self, now: Instant) {
        self.ending = Ending::Dallying;
        self.send_ack(now);
        self.timer.arm_for(now, self.dally_ms);
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
    use crate::proto::wire::ErrorCode;
    use std::time::Duration;

    const IMMEDIATE: FinalAck = FinalAck::Immediate;
    const DALLY_MS: u64 = 10_000;

    fn ms(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    #[test]
    fn the_final_ack_waits_for_the_commit_and_the_dally_starts_there() {
        // A commit that takes longer than the dally: with the dally timed
        // from the last DATA, nothing would be left of it.
        let t0 = Instant::now();
        let mut r = Receiver::new(
            512,
            1,
            Handshake::Ack0,
            TIMER,
            FinalAck::AfterCommit,
            DALLY_MS,
            t0,
        );
        assert_eq!(r.poll_transmit(), Some(Transmit::Ack { block: 0 }));
        assert_eq!(
            r.handle_data(1, 100, t0),
            DataVerdict::Accept {
                index: 1,
                last: true
            }
        );
        assert_eq!(r.poll_transmit(), None, "no final ACK before the commit");
        assert!(r.is_committing());
        assert_eq!(r.poll_timeout(), None, "no timer runs while committing");
        // The client repeats the last block: still no ACK.
        r.handle_data(1, 100, ms(t0, 5_000));
        assert_eq!(r.poll_transmit(), None);
        r.handle_timeout(ms(t0, 15_000));
        assert_eq!(r.outcome(), None);
        let committed = ms(t0, 20_000);
        r.commit_done(committed);
        assert_eq!(r.poll_transmit(), Some(Transmit::Ack { block: 1 }));
        assert!(r.is_dallying());
        assert_eq!(r.poll_timeout(), Some(ms(committed, DALLY_MS)));
        // Well into the dally, a repeat is re-ACKed.
        r.handle_data(1, 100, ms(committed, 5_000));
        assert_eq!(r.poll_transmit(), Some(Transmit::Ack { block: 1 }));
        r.handle_timeout(ms(committed, DALLY_MS));
        assert_eq!(r.outcome(), Some(Outcome::Complete));
    }

    #[test]
    fn data_after_our_oack_without_block_1_gets_ack_0_not_the_oack_again() {
        // DATA 1 of an upload with options is lost and DATA 2 arrives: the
        // client has our OACK. Answering with the OACK again made atftp
        // send its next block, forever; ACK 0 sends it back to block 1.
        let t0 = Instant::now();
        let mut r = Receiver::new(
            512,
            4,
            Handshake::Oack,
            TIMER,
            FinalAck::AfterCommit,
            DALLY_MS,
            t0,
        );
        assert_eq!(r.poll_transmit(), Some(Transmit::Oack));
        assert_eq!(r.handle_data(2, 512, t0), DataVerdict::Ignore);
        assert_eq!(r.poll_transmit(), Some(Transmit::Ack { block: 0 }));
        // Held back for the rest of that burst, as any re-ACK.
        assert_eq!(r.handle_data(3, 512, t0), DataVerdict::Ignore);
        assert_eq!(r.poll_transmit(), None);
        // The timer, too, asks for block 1 now, not with the OACK.
        r.handle_timeout(r.poll_timeout().unwrap());
        assert_eq!(r.poll_transmit(), Some(Transmit::Ack { block: 0 }));
        assert!(matches!(
            r.handle_data(1, 512, t0),
            DataVerdict::Accept { index: 1, .. }
        ));
    }

    #[test]
    fn a_failed_commit_ends_with_its_error_and_a_peer_that_left_gets_no_ack() {
        let t0 = Instant::now();
        let mut r = Receiver::new(
            512,
            1,
            Handshake::Ack0,
            TIMER,
            FinalAck::AfterCommit,
            DALLY_MS,
            t0,
        );
        r.poll_transmit();
        r.handle_data(1, 0, t0);
        r.commit_failed(Refusal::DISK_FULL);
        assert_eq!(
            r.poll_transmit(),
            Some(Transmit::Error {
                code: ErrorCode::DiskFull,
                message: Refusal::DISK_FULL.message
            })
        );
        assert_eq!(r.outcome(), Some(Outcome::Aborted(Refusal::DISK_FULL)));

        let mut r = Receiver::new(
            512,
            1,
            Handshake::Ack0,
            TIMER,
            FinalAck::AfterCommit,
            DALLY_MS,
            t0,
        );
        r.poll_transmit();
        r.handle_data(1, 0, t0);
        r.handle_error(0);
        assert_eq!(r.outcome(), None, "the outcome waits for the commit");
        r.commit_done(ms(t0, 10));
        assert_eq!(r.poll_transmit(), None);
        assert_eq!(r.outcome(), Some(Outcome::Complete));
    }

    #[test]
    fn a_finished_upload_stays_finished_when_the_peer_leaves() {
        let now = Instant::now();
        let mut r = Receiver::new(512, 1, Handshake::Ack0, TIMER, IMMEDIATE, 10_000, now);
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

        let mut r = Receiver::new(512, 1, Handshake::Ack0, TIMER, IMMEDIATE, 10_000, now);
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
        let mut r = Receiver::new(512, 4, Handshake::Oack, TIMER, IMMEDIATE, 10_000, now);
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
