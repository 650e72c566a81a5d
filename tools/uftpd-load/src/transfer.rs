//! One transfer as the generator sees it: the protocol core's
//! `ClientSession` plus what a benchmark needs around it — locking onto
//! the server's TID, verifying every byte, and the times that make the
//! histograms. Pure: packets and a clock in, verdicts out; the worker
//! moves the bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uftpd::proto::client::{ClientEvent, ClientSession};
use uftpd::proto::refusal::Cause;
use uftpd::proto::transfer::{Outcome, Transmit};
use uftpd::proto::wire::{Mode, Packet};
use xxhash_rust::xxh3::Xxh3;

use crate::plan::Shared;

/// How received bytes are checked.
enum Verify {
    /// Against the expected file, in place (exact, and cheaper than a hash).
    Expected(Arc<[u8]>),
    /// A running hash, compared with the other transfers of the same file.
    Hash(Box<Xxh3>),
    /// Uploads: the server's ACKs are all there is to check.
    Upload,
}

/// Why a transfer failed: the keys of the report's `failures`.
pub fn failure_reason(outcome: Outcome) -> String {
    match outcome {
        Outcome::TimedOut | Outcome::NoResponse => "timeout".into(),
        Outcome::PeerError(code) => format!("server_error_{code}"),
        Outcome::SizeProbe => "server_error_8".into(),
        Outcome::Unreachable => "unreachable".into(),
        Outcome::Aborted(r) if r.cause == Cause::Option => "bad_oack".into(),
        Outcome::Aborted(r) if r.cause == Cause::Malformed => "protocol".into(),
        Outcome::Aborted(_) => "aborted".into(),
        Outcome::Replaced | Outcome::Evicted => "other".into(),
        Outcome::Complete | Outcome::CompleteUnconfirmed => "none".into(),
    }
}

/// How a transfer ended, for the statistics.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ok {
        bytes: u64,
        latency: Duration,
        first_block: Option<Duration>,
    },
    Failed(String),
}

pub struct Transfer {
    pub session: ClientSession,
    pub file: usize,
    pub server: SocketAddr,
    /// The server's transfer port, once its first reply came.
    pub tid: Option<SocketAddr>,
    requested_at: Instant,
    first_at: Option<Instant>,
    /// When the last ACK (RRQ) or window (WRQ) went out, until the answer.
    window_sent_at: Option<Instant>,
    bytes: u64,
    verify: Verify,
    mismatch: bool,
    /// A transmit that found no send slot; it goes out first.
    pub owed: Option<Transmit>,
    pub waiting: bool,
    /// The verdict is given; only owed sends remain before retiring.
    pub finished: bool,
}

/// What handling one datagram produced.
pub struct Handled {
    /// A window round trip completed.
    pub window_rtt: Option<Duration>,
}

impl Transfer {
    pub fn new(shared: &Shared, n: u64, now: Instant) -> Transfer {
        let plan = &shared.plan;
        let file = shared.file_of(n);
        let spec = &plan.files[file];
        let name = spec.name.replace("{n}", &n.to_string());
        let session = if plan.write {
            let size = spec.content.as_ref().map_or(0, |c| c.len());
            let mut options = plan.options;
            if options.tsize_bytes.is_some() {
                options.tsize_bytes = Some(size);
            }
            ClientSession::write(name.as_bytes(), Mode::Octet, options, size, plan.timer, now)
        } else {
            // A dally of 0: the final ACK goes out and the transfer is
            // done (a lost one is the server's to time out).
            ClientSession::read(
                name.as_bytes(),
                Mode::Octet,
                plan.options,
                plan.timer,
                0,
                now,
            )
        };
        let verify = if plan.write {
            Verify::Upload
        } else {
            match &spec.expected {
                Some(bytes) => Verify::Expected(Arc::clone(bytes)),
                None => Verify::Hash(Box::new(Xxh3::new())),
            }
        };
        Transfer {
            session,
            file,
            server: plan.server,
            tid: None,
            requested_at: now,
            first_at: None,
            window_sent_at: None,
            bytes: 0,
            verify,
            mismatch: false,
            owed: None,
            waiting: false,
            finished: false,
        }
    }

    /// Where a transmit goes: the request to the service port, the rest
    /// to the server's TID.
    pub fn dest(&self, t: &Transmit) -> SocketAddr {
        match t {
            Transmit::Request => self.server,
            _ => self.tid.unwrap_or(self.server),
        }
    }

    /// Notes that a transmit went out: ACKs (RRQ) and DATA windows (WRQ)
    /// start a window round trip.
    pub fn sent(&mut self, t: &Transmit, now: Instant) {
        if matches!(t, Transmit::Ack { .. } | Transmit::Data { .. }) && !self.finished {
            self.window_sent_at = Some(now);
        }
    }

    /// A datagram from `from` on this transfer's socket. Returns `None`
    /// when it was not for us (another port: a stray, ignored).
    pub fn handle(&mut self, from: SocketAddr, payload: &[u8], now: Instant) -> Option<Handled> {
        match self.tid {
            None if from.ip() == self.server.ip() => self.tid = Some(from),
            None => return None,
            Some(tid) if tid != from => return None,
            Some(_) => {}
        }
        let packet = Packet::parse(payload).ok()?;
        let reply = matches!(
            packet,
            Packet::Data { .. } | Packet::Ack { .. } | Packet::Oack { .. }
        );
        if reply && self.first_at.is_none() && !matches!(packet, Packet::Oack { .. }) {
            self.first_at = Some(now);
        }
        let window_rtt = match packet {
            Packet::Data { .. } | Packet::Ack { .. } if reply => {
                self.window_sent_at.take().map(|t| now.duration_since(t))
            }
            _ => None,
        };
        let blksize = u64::from(self.session.blksize());
        if let ClientEvent::Store { index, .. } = self.session.handle(&packet, now)
            && let Packet::Data { payload, .. } = packet
        {
            let offset = (index - 1) * blksize;
            self.store(offset, payload);
        }
        Some(Handled { window_rtt })
    }

    fn store(&mut self, offset: u64, payload: &[u8]) {
        self.bytes += payload.len() as u64;
        match &mut self.verify {
            Verify::Expected(want) => {
                let start = offset as usize;
                let same = want
                    .get(start..start + payload.len())
                    .is_some_and(|w| w == payload);
                self.mismatch |= !same;
            }
            Verify::Hash(h) => h.update(payload),
            Verify::Upload => {}
        }
    }

    /// The verdict, once there is one (then `finished` is set).
    pub fn verdict(&mut self, shared: &Shared, now: Instant) -> Option<Verdict> {
        if self.finished {
            return None;
        }
        let done = if shared.plan.write {
            self.session.outcome() == Some(Outcome::Complete)
        } else {
            self.session.is_data_complete()
        };
        let verdict = if done {
            let latency = now.duration_since(self.requested_at);
            let first_block = self.first_at.map(|t| t.duration_since(self.requested_at));
            let wrong = match &self.verify {
                Verify::Expected(want) if self.bytes != want.len() as u64 => {
                    Some("size_mismatch".to_string())
                }
                Verify::Expected(_) => self.mismatch.then(|| "hash_mismatch".to_string()),
                Verify::Hash(h) => {
                    let announced = self.session.announced_size_bytes();
                    if announced.is_some_and(|a| a != self.bytes) {
                        Some("size_mismatch".to_string())
                    } else if !shared.check_hash(self.file, self.bytes, h.digest()) {
                        Some("hash_mismatch".to_string())
                    } else {
                        None
                    }
                }
                Verify::Upload => None,
            };
            let bytes = if shared.plan.write {
                self.session.sender().map_or(0, |s| s.size_bytes())
            } else {
                self.bytes
            };
            match wrong {
                Some(reason) => Verdict::Failed(reason),
                None => Verdict::Ok {
                    bytes,
                    latency,
                    first_block,
                },
            }
        } else {
            match self.session.outcome() {
                Some(o) if !o.is_success() => Verdict::Failed(failure_reason(o)),
                _ => return None,
            }
        };
        self.finished = true;
        Some(verdict)
    }

    /// Retransmissions this transfer made (ACKs or DATA sent again).
    pub fn retransmissions(&self) -> u64 {
        self.session
            .receiver()
            .map_or(0, |r| r.counters().acks_resent)
            + self
                .session
                .sender()
                .map_or(0, |s| s.counters().blocks_resent)
    }
}
