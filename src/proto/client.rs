//! The client side of one transfer, built from the same sender and receiver
//! as the server: the load generator and the simulation tests drive it.

use std::time::Instant;

use super::options::parse_decimal;
use super::receiver::{self, DataVerdict, FinalAck, Receiver};
use super::refusal::Refusal;
use super::sender::{self, Sender};
use super::transfer::{Outcome, TimerConfig, Transmit};
use super::wire::{
    self, BLKSIZE_DEFAULT, BLKSIZE_MAX, BLKSIZE_MIN, Mode, OptionIter, OptionValues, Packet,
    RequestKind,
};

#[derive(Debug)]
enum Machine {
    Read(Receiver),
    Write(Sender),
}

/// What the caller must do after [`ClientSession::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Nothing,
    /// RRQ: store this DATA payload.
    Store {
        index: u64,
        last: bool,
    },
}

#[derive(Debug)]
pub struct ClientSession<'n> {
    filename: &'n [u8],
    mode: Mode,
    requested: OptionValues,
    /// The server's tsize from its OACK, if any.
    announced_size_bytes: Option<u64>,
    machine: Machine,
}

impl<'n> ClientSession<'n> {
    /// Fetch `filename`, asking for `options`.
    pub fn read(
        filename: &'n [u8],
        mode: Mode,
        options: OptionValues,
        timer: TimerConfig,
        dally_ms: u64,
        now: Instant,
    ) -> Self {
        // Until an OACK says otherwise the server uses RFC 1350 defaults.
        let r = Receiver::new(
            BLKSIZE_DEFAULT,
            1,
            receiver::Handshake::Request,
            timer,
            FinalAck::Immediate,
            dally_ms,
            now,
        );
        ClientSession {
            filename,
            mode,
            requested: options,
            announced_size_bytes: None,
            machine: Machine::Read(r),
        }
    }

    /// Upload `size_bytes` as `filename`, asking for `options`.
    pub fn write(
        filename: &'n [u8],
        mode: Mode,
        options: OptionValues,
        size_bytes: u64,
        timer: TimerConfig,
        now: Instant,
    ) -> Self {
        let s = Sender::new(
            BLKSIZE_DEFAULT,
            1,
            size_bytes,
            Some(sender::Handshake::Request),
            timer,
            now,
        );
        ClientSession {
            filename,
            mode,
            requested: options,
            announced_size_bytes: None,
            machine: Machine::Write(s),
        }
    }

    /// A packet from the server (the caller locks onto the server's TID).
    pub fn handle(&mut self, packet: &Packet<'_>, now: Instant) -> ClientEvent {
        if let Packet::Oack { options } = packet {
            let Some((blksize, windowsize, tsize)) = self.accept_oack(options) else {
                self.abort(Refusal::BAD_OACK);
                return ClientEvent::Nothing;
            };
            self.announced_size_bytes = tsize;
            match &mut self.machine {
                Machine::Read(r) => r.accept_oack(blksize, windowsize, now),
                Machine::Write(s) => s.accept_oack(blksize, windowsize, now),
            }
            return ClientEvent::Nothing;
        }
        match (&mut self.machine, packet) {
            (Machine::Read(r), Packet::Data { block, payload }) => {
                if let DataVerdict::Accept { index, last } =
                    r.handle_data(*block, payload.len(), now)
                {
                    return ClientEvent::Store { index, last };
                }
            }
            (Machine::Write(s), Packet::Ack { block }) => s.handle_ack(*block, now),
            (Machine::Read(r), Packet::Error { code, .. }) => r.handle_error(*code),
            (Machine::Write(s), Packet::Error { code, .. }) => s.handle_error(*code),
            _ => {}
        }
        ClientEvent::Nothing
    }

    /// Values the server may not exceed: what we asked for (RFC 2347).
    fn accept_oack(&self, options: &[u8]) -> Option<(u16, u16, Option<u64>)> {
        let mut blksize = BLKSIZE_DEFAULT;
        let mut windowsize = 1u16;
        let mut tsize = None;
        for (name, value) in OptionIter::new(options) {
            let v = parse_decimal(value)?;
            if name.eq_ignore_ascii_case(b"blksize") {
                let asked = self.requested.blksize?;
                if v < u64::from(BLKSIZE_MIN) || v > u64::from(asked.min(BLKSIZE_MAX)) {
                    return None;
                }
                blksize = v as u16;
            } else if name.eq_ignore_ascii_case(b"windowsize") {
                let asked = self.requested.windowsize?;
                if v < 1 || v > u64::from(asked) {
                    return None;
                }
                windowsize = v as u16;
            } else if name.eq_ignore_ascii_case(b"tsize") {
                tsize = Some(v);
            }
        }
        Some((blksize, windowsize, tsize))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.machine {
            Machine::Read(r) => r.handle_timeout(now),
            Machine::Write(s) => s.handle_timeout(now),
        }
    }

    /// ICMP port unreachable from the server's transfer port.
    pub fn handle_unreachable(&mut self) {
        match &mut self.machine {
            Machine::Read(r) => r.handle_unreachable(),
            Machine::Write(s) => s.handle_unreachable(),
        }
    }

    pub fn abort(&mut self, refusal: Refusal) {
        match &mut self.machine {
            Machine::Read(r) => r.abort(refusal),
            Machine::Write(s) => s.abort(refusal),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match &mut self.machine {
            Machine::Read(r) => r.poll_transmit(),
            Machine::Write(s) => s.poll_transmit(),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.machine {
            Machine::Read(r) => r.poll_timeout(),
            Machine::Write(s) => s.poll_timeout(),
        }
    }

    pub fn outcome(&self) -> Option<Outcome> {
        match &self.machine {
            Machine::Read(r) => r.outcome(),
            Machine::Write(s) => s.outcome(),
        }
    }

    /// All data has arrived (RRQ) — the receiver may still dally.
    pub fn is_data_complete(&self) -> bool {
        match &self.machine {
            Machine::Read(r) => r.is_complete(),
            Machine::Write(s) => s.outcome() == Some(Outcome::Complete),
        }
    }

    pub fn announced_size_bytes(&self) -> Option<u64> {
        self.announced_size_bytes
    }

    /// The blksize in force (after any OACK).
    pub fn blksize(&self) -> u16 {
        match &self.machine {
            Machine::Read(r) => r.blksize(),
            Machine::Write(s) => s.blksize(),
        }
    }

    pub fn sender(&self) -> Option<&Sender> {
        match &self.machine {
            Machine::Write(s) => Some(s),
            Machine::Read(_) => None,
        }
    }

    pub fn receiver(&self) -> Option<&Receiver> {
        match &self.machine {
            Machine::Read(r) => Some(r),
            Machine::Write(_) => None,
        }
    }

    /// Encodes a control transmit (everything but DATA) into `buf`.
    pub fn encode_control(&self, transmit: Transmit, buf: &mut [u8]) -> Option<usize> {
        match transmit {
            Transmit::Request => {
                let kind = match self.machine {
                    Machine::Read(_) => RequestKind::Read,
                    Machine::Write(_) => RequestKind::Write,
                };
                wire::encode_request(buf, kind, self.filename, self.mode, &self.requested)
            }
            Transmit::Ack { block } => wire::encode_ack(buf, block),
            Transmit::Error { code, message } => wire::encode_error(buf, code, message),
            Transmit::Oack | Transmit::Data { .. } => None,
        }
    }
}
