//! The server side of one transfer: turns an admitted request into a sender
//! (RRQ) or receiver (WRQ) with negotiated parameters, routes the peer's
//! packets to it, and encodes its control packets.

use std::time::Instant;

use super::options::{Negotiated, NegotiationLimits, negotiate};
use super::receiver::{self, DataVerdict, FinalAck, Receiver};
use super::refusal::Refusal;
use super::sender::{self, Sender};
use super::transfer::{Outcome, TimerConfig, Transmit};
use super::wire::{self, Mode, Packet, Request, RequestKind};

#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub negotiation: NegotiationLimits,
    pub timer: TimerConfig,
    /// How long a finished upload keeps re-ACKing a repeated final block.
    pub dally_ms: u64,
}

#[derive(Debug)]
enum Machine {
    Read(Sender),
    Write(Receiver),
}

/// What the I/O layer must do after [`ServerSession::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Nothing,
    /// Store this DATA payload (WRQ): see [`DataVerdict::Accept`].
    Store {
        index: u64,
        last: bool,
    },
}

#[derive(Debug)]
pub struct ServerSession {
    negotiated: Negotiated,
    mode: Mode,
    machine: Machine,
    /// When a packet from the peer's TID last arrived.
    last_heard: Option<Instant>,
}

impl ServerSession {
    /// An RRQ for a file of `size_bytes` (after any netascii conversion).
    /// `size_known_up_front` is false for netascii, whose tsize we leave out.
    pub fn read(
        request: &Request<'_>,
        size_bytes: u64,
        size_known_up_front: bool,
        config: &ServerConfig,
        now: Instant,
    ) -> Result<ServerSession, Refusal> {
        debug_assert_eq!(request.kind, RequestKind::Read);
        let announced = size_known_up_front.then_some(size_bytes);
        let negotiated = negotiate(request, announced, &config.negotiation)?;
        let handshake = (!negotiated.oack.is_empty()).then_some(sender::Handshake::Oack);
        let timer = config.timer.with_peer_timeout(negotiated.timeout_s);
        let s = Sender::new(
            negotiated.blksize,
            negotiated.windowsize,
            size_bytes,
            handshake,
            timer,
            now,
        );
        Ok(ServerSession {
            negotiated,
            mode: request.mode,
            machine: Machine::Read(s),
            last_heard: None,
        })
    }

    /// A WRQ the caller has already authorised (path, --create, space).
    pub fn write(
        request: &Request<'_>,
        config: &ServerConfig,
        now: Instant,
    ) -> Result<ServerSession, Refusal> {
        debug_assert_eq!(request.kind, RequestKind::Write);
        let negotiated = negotiate(request, None, &config.negotiation)?;
        let handshake = if negotiated.oack.is_empty() {
            receiver::Handshake::Ack0
        } else {
            receiver::Handshake::Oack
        };
        let timer = config.timer.with_peer_timeout(negotiated.timeout_s);
        let r = Receiver::new(
            negotiated.blksize,
            negotiated.windowsize,
            handshake,
            timer,
            // The final ACK says the file is in place: it waits for the commit.
            FinalAck::AfterCommit,
            config.dally_ms,
            now,
        );
        Ok(ServerSession {
            negotiated,
            mode: request.mode,
            machine: Machine::Write(r),
            last_heard: None,
        })
    }

    /// A packet from the peer's TID.
    pub fn handle(&mut self, packet: &Packet<'_>, now: Instant) -> Event {
        self.last_heard = Some(now);
        match (&mut self.machine, packet) {
            (Machine::Read(s), Packet::Ack { block }) => s.handle_ack(*block, now),
            (Machine::Write(r), Packet::Data { block, payload }) => {
                if let DataVerdict::Accept { index, last } =
                    r.handle_data(*block, payload.len(), now)
                {
                    return Event::Store { index, last };
                }
            }
            (Machine::Read(s), Packet::Error { code, .. }) => s.handle_error(*code),
            (Machine::Write(r), Packet::Error { code, .. }) => r.handle_error(*code),
            // Anything else from the peer (a DATA to a reader, a request on
            // the transfer port) is not ours to act on.
            _ => {}
        }
        Event::Nothing
    }

    /// An upload's data is durable: release the final ACK (WRQ only).
    pub fn commit_done(&mut self, now: Instant) {
        if let Machine::Write(r) = &mut self.machine {
            r.commit_done(now);
        }
    }

    /// An upload's data could not be made durable: end with this ERROR.
    pub fn commit_failed(&mut self, refusal: Refusal) {
        if let Machine::Write(r) = &mut self.machine {
            r.commit_failed(refusal);
        }
    }

    /// When a packet from the peer's TID last arrived (`None`: never).
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// How this session counts if a new request from its peer's port
    /// replaces it: a finished upload that was only dallying is complete.
    pub fn outcome_if_replaced(&self) -> Outcome {
        self.outcome().unwrap_or(if self.is_dallying() {
            Outcome::Complete
        } else {
            Outcome::Replaced
        })
    }

    /// The peer repeated the request that started this session.
    pub fn handle_duplicate_request(&mut self, now: Instant) {
        match &mut self.machine {
            Machine::Read(s) => s.handle_duplicate_request(now),
            Machine::Write(r) => r.handle_duplicate_request(now),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.machine {
            Machine::Read(s) => s.handle_timeout(now),
            Machine::Write(r) => r.handle_timeout(now),
        }
    }

    /// ICMP port unreachable from the peer's address and port.
    pub fn handle_unreachable(&mut self) {
        match &mut self.machine {
            Machine::Read(s) => s.handle_unreachable(),
            Machine::Write(r) => r.handle_unreachable(),
        }
    }

    /// Ends the transfer with an ERROR of ours.
    pub fn abort(&mut self, refusal: Refusal) {
        match &mut self.machine {
            Machine::Read(s) => s.abort(refusal),
            Machine::Write(r) => r.abort(refusal),
        }
    }

    /// File bytes delivered so far: acknowledged by the peer (RRQ) or
    /// received in order (WRQ).
    pub fn bytes_delivered(&self) -> u64 {
        match &self.machine {
            Machine::Read(s) => s.bytes_acked(),
            Machine::Write(r) => r.counters().payload_bytes,
        }
    }

    /// Blocks sent again (RRQ) or ACKs repeated (WRQ) after a timeout.
    pub fn retransmissions(&self) -> u64 {
        match &self.machine {
            Machine::Read(s) => s.counters().blocks_resent,
            Machine::Write(r) => r.counters().acks_resent,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match &mut self.machine {
            Machine::Read(s) => s.poll_transmit(),
            Machine::Write(r) => r.poll_transmit(),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.machine {
            Machine::Read(s) => s.poll_timeout(),
            Machine::Write(r) => r.poll_timeout(),
        }
    }

    pub fn outcome(&self) -> Option<Outcome> {
        match &self.machine {
            Machine::Read(s) => s.outcome(),
            Machine::Write(r) => r.outcome(),
        }
    }

    /// The peer has answered at least once (its address is not spoofed).
    pub fn is_verified(&self) -> bool {
        match &self.machine {
            Machine::Read(s) => s.is_verified(),
            Machine::Write(r) => r.received_blocks() > 0,
        }
    }

    /// An upload whose data is all in and committed, now only dallying to
    /// re-ACK a repeated last block: safe to end at shutdown.
    pub fn is_dallying(&self) -> bool {
        self.receiver().is_some_and(|r| r.is_dallying())
    }

    /// An upload whose data is all in, waiting for [`Self::commit_done`].
    pub fn is_committing(&self) -> bool {
        self.receiver().is_some_and(|r| r.is_committing())
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn kind(&self) -> RequestKind {
        match self.machine {
            Machine::Read(_) => RequestKind::Read,
            Machine::Write(_) => RequestKind::Write,
        }
    }

    pub fn sender(&self) -> Option<&Sender> {
        match &self.machine {
            Machine::Read(s) => Some(s),
            Machine::Write(_) => None,
        }
    }

    pub fn receiver(&self) -> Option<&Receiver> {
        match &self.machine {
            Machine::Read(_) => None,
            Machine::Write(r) => Some(r),
        }
    }

    /// Encodes a control transmit (everything but DATA) into `buf`.
    pub fn encode_control(&self, transmit: Transmit, buf: &mut [u8]) -> Option<usize> {
        match transmit {
            Transmit::Oack => wire::encode_oack(buf, &self.negotiated.oack),
            Transmit::Ack { block } => wire::encode_ack(buf, block),
            Transmit::Error { code, message } => wire::encode_error(buf, code, message),
            Transmit::Request | Transmit::Data { .. } => None,
        }
    }
}
