//! The sending side of a transfer (server RRQ, client WRQ): sliding windows
//! (RFC 7440) over a byte source of known size, driven by ACKs and timeouts.
//!
//! Retransmission happens only on timeout, from the first unacknowledged
//! block; a duplicate ACK is counted and ignored (RFC 1123 4.2.3.1, no
//! Sorcerer's Apprentice).

use std::time::Instant;

use super::block;
use super::refusal::Refusal;
use super::transfer::{Outcome, RetransmitTimer, TimerConfig, TimerVerdict, Transmit};
use super::wire::ErrorCode;

/// The control packet that opens the transfer and is resent until the peer's
/// ACK 0 arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Server: our OACK, waiting for ACK 0.
    Oack,
    /// Client: our WRQ, waiting for ACK 0 (or an OACK the caller unpacks).
    Request,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderCounters {
    pub blocks_sent: u64,
    pub blocks_resent: u64,
    pub duplicate_acks: u64,
    pub invalid_acks: u64,
}

#[derive(Debug)]
pub struct Sender {
    blksize: u16,
    windowsize: u16,
    size_bytes: u64,
    last: u64,
    handshake: Option<Handshake>,
    /// Highest block index the peer acknowledged (0: none yet).
    acked: u64,
    /// Highest block index ever sent.
    sent_max: u64,
    /// The peer has answered at least once, so it is not a spoofed address.
    verified: bool,
    timer: RetransmitTimer,
    pending: Option<Transmit>,
    outcome: Option<Outcome>,
    counters: SenderCounters,
}

impl Sender {
    /// A sender of `size_bytes`; the first transmit is the handshake, or
    /// window 1 if there is none (a server RRQ without options).
    pub fn new(
        blksize: u16,
        windowsize: u16,
        size_bytes: u64,
        handshake: Option<Handshake>,
        timer: TimerConfig,
        now: Instant,
    ) -> Sender {
        assert!(blksize >= 1 && windowsize >= 1);
        debug_assert!(windowsize <= super::options::WINDOWSIZE_MAX);
        let mut s = Sender {
            blksize,
            windowsize,
            size_bytes,
            last: block::last_index(size_bytes, blksize),
            handshake,
            acked: 0,
            sent_max: 0,
            verified: false,
            timer: RetransmitTimer::new(timer),
            pending: None,
            outcome: None,
            counters: SenderCounters::default(),
        };
        match handshake {
            Some(Handshake::Oack) => s.pending = Some(Transmit::Oack),
            Some(Handshake::Request) => s.pending = Some(Transmit::Request),
            None => s.queue_window(),
        }
        s.timer.arm(now);
        s
    }

    /// The client's WRQ was answered by an OACK: adopt its parameters and
    /// treat it as ACK 0.
    pub fn accept_oack(&mut self, blksize: u16, windowsize: u16, now: Instant) {
        if self.handshake != Some(Handshake::Request) || blksize == 0 || windowsize == 0 {
            return;
        }
        self.blksize = blksize;
        self.windowsize = windowsize;
        self.last = block::last_index(self.size_bytes, blksize);
        self.handle_ack(0, now);
    }

    pub fn handle_ack(&mut self, wire_block: u16, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if self.handshake.is_some() {
            if wire_block == 0 {
                self.handshake = None;
                self.verified = true;
                self.timer.progress(now);
                self.queue_window();
            } else {
                self.counters.invalid_acks += 1;
            }
            return;
        }
        // Against the highest block sent, not the last ACK: a whole window
        // (up to 32768 blocks) may lie between the two.
        let index = block::unwrap(wire_block, self.sent_max);
        if index > self.acked && index <= self.sent_max {
            self.acked = index;
            self.verified = true;
            if index == self.last {
                self.timer.stop();
                self.outcome = Some(Outcome::Complete);
                self.pending = None;
                return;
            }
            self.timer.progress(now);
            self.queue_window();
        } else if index <= self.acked {
            // Never answer a duplicate ACK with data: only a timeout resends.
            self.counters.duplicate_acks += 1;
        } else {
            self.counters.invalid_acks += 1;
        }
    }

    pub fn handle_error(&mut self, code: u16) {
        if self.outcome.is_none() {
            // ERROR 8 in answer to our OACK: the peer only wanted the
            // negotiated values (UEFI reads tsize this way, then asks again).
            let probe =
                code == ErrorCode::OptionRefused as u16 && self.handshake == Some(Handshake::Oack);
            self.outcome = Some(if probe {
                Outcome::SizeProbe
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
        match self.timer.on_timeout(now, self.verified) {
            TimerVerdict::NotDue | TimerVerdict::HoldQuiet => {}
            TimerVerdict::Resend => self.queue_resend(),
            TimerVerdict::GiveUpUnverified => self.finish(Outcome::NoResponse),
            TimerVerdict::GiveUp => self.finish_unless_only_final_ack_missing(Outcome::TimedOut),
        }
    }

    /// The peer's port is closed (ICMP port unreachable for our packets to
    /// it): nobody is there to retransmit to.
    pub fn handle_unreachable(&mut self) {
        if self.outcome.is_none() {
            self.finish_unless_only_final_ack_missing(Outcome::Unreachable);
        }
    }

    /// Everything but the last window acknowledged and the last block sent:
    /// only the final ACK is missing, which is not an error (RFC 1350).
    fn finish_unless_only_final_ack_missing(&mut self, failure: Outcome) {
        let last_window_sent =
            self.sent_max == self.last && self.acked + u64::from(self.windowsize) >= self.last;
        self.finish(if self.handshake.is_none() && last_window_sent {
            Outcome::CompleteUnconfirmed
        } else {
            failure
        });
    }

    /// A duplicate of the request that opened this transfer: answer it with
    /// the first reply again while the peer has not answered, within the
    /// same budget as timeout resends (a flood of repeats draws no more);
    /// ignore it afterwards.
    pub fn handle_duplicate_request(&mut self, now: Instant) {
        if self.outcome.is_none()
            && self.pending.is_none()
            && self.timer.take_repeat_resend(self.verified)
        {
            self.queue_resend();
            // The answer gets a whole timeout to be answered (at most once:
            // the resend budget allows one), or a repeat near the end of the
            // hold would be answered just before giving up.
            self.timer.arm(now);
        }
    }

    /// Ends the transfer with an ERROR of ours (e.g. the file went away).
    pub fn abort(&mut self, refusal: Refusal) {
        if self.outcome.is_none() {
            self.pending = Some(Transmit::Error {
                code: refusal.code,
                message: refusal.message,
            });
            self.outcome = Some(Outcome::Aborted(refusal));
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

    pub fn blksize(&self) -> u16 {
        self.blksize
    }

    pub fn windowsize(&self) -> u16 {
        self.windowsize
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Bytes the peer has acknowledged (all of them once complete).
    pub fn bytes_acked(&self) -> u64 {
        self.acked
            .saturating_mul(u64::from(self.blksize))
            .min(self.size_bytes)
    }

    pub fn is_verified(&self) -> bool {
        self.verified
    }

    pub fn counters(&self) -> SenderCounters {
        self.counters
    }

    fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.pending = None;
        self.timer.stop();
    }

    fn queue_resend(&mut self) {
        match self.handshake {
            Some(Handshake::Oack) => self.pending = Some(Transmit::Oack),
            Some(Handshake::Request) => self.pending = Some(Transmit::Request),
            None => self.queue_window(),
        }
    }

    /// The window after the last acknowledged block.
    fn queue_window(&mut self) {
        debug_assert!(self.acked < self.last);
        let first = self.acked + 1;
        let count = (self.last - self.acked).min(u64::from(self.windowsize)) as u16;
        let end = first + u64::from(count) - 1;
        let fresh = end.saturating_sub(self.sent_max);
        self.counters.blocks_sent += u64::from(count);
        self.counters.blocks_resent += u64::from(count) - fresh.min(u64::from(count));
        self.sent_max = self.sent_max.max(end);
        self.pending = Some(Transmit::Data { first, count });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::transfer::TEST_TIMER as TIMER;

    #[test]
    fn unreachable_mid_transfer_fails_but_after_the_last_block_completes() {
        let now = Instant::now();
        let mut s = Sender::new(512, 1, 2000, None, TIMER, now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data { first: 1, count: 1 })
        );
        s.handle_ack(1, now);
        s.handle_unreachable();
        assert_eq!(s.outcome(), Some(Outcome::Unreachable));

        let mut s = Sender::new(512, 1, 700, None, TIMER, now);
        s.handle_ack(1, now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data { first: 2, count: 1 })
        );
        s.handle_unreachable(); // the client left after the last block
        assert_eq!(s.outcome(), Some(Outcome::CompleteUnconfirmed));
        assert_eq!(s.poll_transmit(), None);
    }

    #[test]
    fn a_window_of_32768_blocks_is_acked_across_the_wrap() {
        // With ACKs unwrapped against the last ACK, the ACK of the second
        // window (wire 0 = block 65536) is as far from block 32768 as from
        // block 0, and read as a duplicate: the transfer then times out.
        let now = Instant::now();
        let mut s = Sender::new(8, 32_768, 8 * 100_000, None, TIMER, now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data {
                first: 1,
                count: 32_768
            })
        );
        s.handle_ack(block::wire(32_768), now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data {
                first: 32_769,
                count: 32_768
            })
        );
        s.handle_ack(block::wire(65_536), now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data {
                first: 65_537,
                count: 32_768
            })
        );
        assert_eq!(s.counters().duplicate_acks, 0);
        s.handle_ack(block::wire(98_304), now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data {
                first: 98_305,
                count: 1_697
            })
        );
        s.handle_ack(block::wire(100_001), now);
        assert_eq!(s.outcome(), Some(Outcome::Complete));
        // A stale ACK from the first window is a duplicate, not progress.
        let mut s = Sender::new(8, 16, 8 * 100_000, None, TIMER, now);
        s.handle_ack(16, now);
        s.handle_ack(16, now);
        assert_eq!(s.counters().duplicate_acks, 1);
    }

    #[test]
    fn an_answer_to_a_repeated_request_gets_a_whole_timeout() {
        // Answered near the end of the hold, the repeat used to be followed
        // by the old give-up before its client's ACK could arrive.
        let t0 = Instant::now();
        let mut s = Sender::new(512, 1, 5000, None, TIMER, t0);
        s.poll_transmit();
        let mut at = t0;
        // Spend the hold but its last wait (resend, then one quiet wait).
        for _ in 0..2 {
            at = s.poll_timeout().unwrap();
            s.handle_timeout(at);
            s.poll_transmit();
        }
        let repeat_at = at + std::time::Duration::from_millis(10);
        s.handle_duplicate_request(repeat_at);
        // The resend budget went to the timer's resend: nothing more...
        assert_eq!(s.poll_transmit(), None);
        let mut s = Sender::new(512, 1, 5000, None, TIMER, t0);
        s.poll_transmit();
        let late = t0 + std::time::Duration::from_millis(900);
        s.handle_duplicate_request(late);
        // ...but a repeat that gets the resend also gets a whole timeout.
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data { first: 1, count: 1 })
        );
        assert_eq!(
            s.poll_timeout(),
            Some(late + std::time::Duration::from_millis(1000))
        );
        s.handle_ack(1, late + std::time::Duration::from_millis(950));
        assert!(s.is_verified());
    }

    #[test]
    fn duplicate_acks_are_counted_never_answered() {
        let now = Instant::now();
        let mut s = Sender::new(512, 4, 10_000, None, TIMER, now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data { first: 1, count: 4 })
        );
        s.handle_ack(4, now);
        assert_eq!(
            s.poll_transmit(),
            Some(Transmit::Data { first: 5, count: 4 })
        );
        for _ in 0..3 {
            s.handle_ack(4, now);
            assert_eq!(s.poll_transmit(), None);
        }
        assert_eq!(s.counters().duplicate_acks, 3);
        s.handle_ack(9, now); // never sent
        assert_eq!(s.poll_transmit(), None);
        assert_eq!(s.counters().invalid_acks, 1);
    }
}
