//! What the sender and receiver state machines share: the transmit and
//! outcome vocabulary, and the retransmission timer.

use std::time::{Duration, Instant};

use super::refusal::{Cause, Refusal};
use super::wire::ErrorCode;

/// A packet a state machine wants sent. Data is described, not copied: the
/// I/O layer slices the blocks straight out of the mapped file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// The client's RRQ/WRQ.
    Request,
    /// The server's OACK.
    Oack,
    Ack {
        block: u16,
    },
    /// Blocks `first ..= first + count - 1` (64-bit indices), in order.
    Data {
        first: u64,
        count: u16,
    },
    Error {
        code: ErrorCode,
        message: &'static str,
    },
}

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every block was delivered and acknowledged.
    Complete,
    /// Every block was sent, the final ACK never came: not an error (RFC 1350).
    CompleteUnconfirmed,
    /// The peer sent ERROR with this code.
    PeerError(u16),
    /// The peer read our OACK and ended with ERROR 8 before any data: how
    /// UEFI (EDK II) learns a file's size (tsize) before asking again.
    SizeProbe,
    /// The peer stopped answering within the retry budget.
    TimedOut,
    /// The peer never answered our first reply, which we resent only once:
    /// a spoofed request must not make us a reflector.
    NoResponse,
    /// We ended the transfer with an ERROR of our own, for this reason.
    Aborted(Refusal),
    /// ICMP said the peer's port is closed (the client went away).
    Unreachable,
    /// A different request from the peer's address and port took its place
    /// (the client restarted, or moved on).
    Replaced,
    /// The peer never answered, and its place in a full table was given to
    /// a new request.
    Evicted,
}

/// Why a transfer did not complete: the `reason` of logs, JSON and the
/// `uftpd_transfers_failed_total` metric (a contract: keep the labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The peer stopped answering within the retry budget.
    Timeout,
    /// The peer never answered our first reply.
    NoResponse,
    /// The peer ended it with an ERROR (other than a size probe).
    ClientError,
    /// UEFI's tsize probe: OACK read, then ERROR 8 (expected, not a fault).
    UefiProbe,
    /// ICMP port unreachable from the peer.
    Unreachable,
    /// A write or fsync of an upload failed, or the disk is full.
    Disk,
    /// The file being sent changed or shrank under its map.
    FileChanged,
    /// An upload's size differed from its announced tsize.
    SizeMismatch,
    /// Ended by the server's shutdown.
    Shutdown,
    /// The peer broke the protocol (oversized DATA, a bad OACK).
    Protocol,
    /// A new request from the peer's port took its place.
    Replaced,
    /// Never answered; its place in a full table went to a new request.
    Evicted,
    /// Anything else.
    Internal,
}

impl Failure {
    pub const ALL: [Failure; 13] = [
        Failure::Timeout,
        Failure::NoResponse,
        Failure::ClientError,
        Failure::UefiProbe,
        Failure::Unreachable,
        Failure::Disk,
        Failure::FileChanged,
        Failure::SizeMismatch,
        Failure::Shutdown,
        Failure::Protocol,
        Failure::Replaced,
        Failure::Evicted,
        Failure::Internal,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::NoResponse => "no_response",
            Failure::ClientError => "client_error",
            Failure::UefiProbe => "uefi_probe",
            Failure::Unreachable => "unreachable",
            Failure::Disk => "disk",
            Failure::FileChanged => "file_changed",
            Failure::SizeMismatch => "size_mismatch",
            Failure::Shutdown => "shutdown",
            Failure::Protocol => "protocol",
            Failure::Replaced => "replaced",
            Failure::Evicted => "evicted",
            Failure::Internal => "internal",
        }
    }
}

impl Outcome {
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Complete | Outcome::CompleteUnconfirmed)
    }

    /// Why it failed; `None` for a completed transfer.
    pub fn failure(self) -> Option<Failure> {
        Some(match self {
            Outcome::Complete | Outcome::CompleteUnconfirmed => return None,
            Outcome::PeerError(_) => Failure::ClientError,
            Outcome::SizeProbe => Failure::UefiProbe,
            Outcome::TimedOut => Failure::Timeout,
            Outcome::NoResponse => Failure::NoResponse,
            Outcome::Unreachable => Failure::Unreachable,
            Outcome::Replaced => Failure::Replaced,
            Outcome::Evicted => Failure::Evicted,
            Outcome::Aborted(r) => match r.cause {
                Cause::Disk => Failure::Disk,
                Cause::FileChanged => Failure::FileChanged,
                Cause::SizeMismatch => Failure::SizeMismatch,
                Cause::Shutdown => Failure::Shutdown,
                Cause::Malformed | Cause::Option => Failure::Protocol,
                Cause::NotFound | Cause::Access | Cause::Limit | Cause::Busy | Cause::Internal => {
                    Failure::Internal
                }
            },
        })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Complete => f.write_str("complete"),
            Outcome::CompleteUnconfirmed => f.write_str("complete (final ACK missing)"),
            Outcome::PeerError(code) => write!(f, "ended by peer ERROR {code}"),
            Outcome::SizeProbe => f.write_str("size probe (peer ended after the OACK)"),
            Outcome::TimedOut => f.write_str("failed: peer stopped answering"),
            Outcome::NoResponse => f.write_str("failed: peer never answered"),
            Outcome::Aborted(r) => {
                write!(f, "aborted with ERROR {}: {}", r.code as u16, r.message)
            }
            Outcome::Unreachable => f.write_str("failed: peer's port closed"),
            Outcome::Replaced => f.write_str("replaced by a new request"),
            Outcome::Evicted => {
                f.write_str("failed: peer never answered (place given to a new request)")
            }
        }
    }
}

/// Retransmission policy of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    pub retransmit_ms: u64,
    /// Timeouts in a row before the transfer is given up.
    pub retries_max: u32,
    /// Double the timeout after each retransmit (off when the peer asked for
    /// a fixed `timeout` option).
    pub backoff: bool,
    /// How many times the first reply is resent to a peer that has not yet
    /// answered at all; `None` for the full budget (the client side).
    pub unverified_resends_max: Option<u32>,
    /// After those resends, how many more timeouts to keep listening
    /// without sending: a real peer whose answers were lost still gets
    /// through, and a spoofed address still draws nothing more.
    pub unverified_quiet_waits: u32,
    /// The first timeout while the peer has not answered, doubling each
    /// time: the server's own, whatever `timeout` the request asked for, so
    /// a spoofed request cannot hold a session for 4 × 255 s.
    pub unverified_retransmit_ms: u64,
}

/// Backoff stops doubling here (but never below the base timeout).
pub const RETRANSMIT_CEILING_MS: u64 = 32_000;

impl TimerConfig {
    /// Applies a negotiated RFC 2349 `timeout`: that many seconds, no
    /// backoff, once the peer has answered (until then the server's own
    /// timeout rules: see `unverified_retransmit_ms`).
    pub fn with_peer_timeout(self, timeout_s: Option<u8>) -> TimerConfig {
        match timeout_s {
            Some(s) => TimerConfig {
                retransmit_ms: u64::from(s) * 1000,
                backoff: false,
                ..self
            },
            None => self,
        }
    }
}

/// One retransmission timer with backoff and a retry cap.
#[derive(Clone, Debug)]
pub struct RetransmitTimer {
    config: TimerConfig,
    rto_ms: u64,
    retries: u32,
    unverified_resends: u32,
    quiet_waits: u32,
    deadline: Option<Instant>,
}

/// What a due timer asks of its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerVerdict {
    NotDue,
    Resend,
    GiveUp,
    /// The peer never answered and its one resend is spent.
    GiveUpUnverified,
    /// An unverified peer's resend is spent: keep listening, send nothing.
    HoldQuiet,
}

impl RetransmitTimer {
    pub fn new(config: TimerConfig) -> Self {
        debug_assert!(config.retransmit_ms > 0 && config.unverified_retransmit_ms > 0);
        RetransmitTimer {
            config,
            rto_ms: config.unverified_retransmit_ms,
            retries: 0,
            unverified_resends: 0,
            quiet_waits: 0,
            deadline: None,
        }
    }

    pub fn arm(&mut self, now: Instant) {
        self.deadline = Some(now + Duration::from_millis(self.rto_ms));
    }

    pub fn arm_for(&mut self, now: Instant, ms: u64) {
        self.deadline = Some(now + Duration::from_millis(ms));
    }

    /// The peer made progress: a fresh budget and the base timeout.
    pub fn progress(&mut self, now: Instant) {
        self.retries = 0;
        self.rto_ms = self.config.retransmit_ms;
        self.arm(now);
    }

    pub fn stop(&mut self) {
        self.deadline = None;
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn retransmit_ms(&self) -> u64 {
        self.config.retransmit_ms
    }

    /// Call on `handle_timeout`; re-arms itself when it says `Resend`.
    pub fn on_timeout(&mut self, now: Instant, peer_verified: bool) -> TimerVerdict {
        match self.deadline {
            Some(d) if now >= d => {}
            _ => return TimerVerdict::NotDue,
        }
        if !peer_verified && let Some(max) = self.config.unverified_resends_max {
            if self.unverified_resends >= max {
                if self.quiet_waits >= self.config.unverified_quiet_waits {
                    self.deadline = None;
                    return TimerVerdict::GiveUpUnverified;
                }
                self.quiet_waits += 1;
                self.back_off_and_arm(now, true);
                return TimerVerdict::HoldQuiet;
            }
            self.unverified_resends += 1;
        }
        self.retries += 1;
        if self.retries > self.config.retries_max {
            self.deadline = None;
            return TimerVerdict::GiveUp;
        }
        self.back_off_and_arm(now, !peer_verified);
        TimerVerdict::Resend
    }

    /// A repeat of the request while the peer has not answered: may the
    /// first reply go out again? Draws on the same budget as the timer's
    /// resends, so a peer that never answers gets at most one first reply
    /// plus `unverified_resends_max` more, however often its request comes.
    pub fn take_repeat_resend(&mut self, peer_verified: bool) -> bool {
        if peer_verified {
            return false;
        }
        match self.config.unverified_resends_max {
            None => true,
            Some(max) if self.unverified_resends < max => {
                self.unverified_resends += 1;
                true
            }
            Some(_) => false,
        }
    }

    fn back_off_and_arm(&mut self, now: Instant, unverified: bool) {
        // Before the peer answers the server's own timeout doubles; after,
        // the configured policy (a peer's `timeout` option: fixed).
        if unverified || self.config.backoff {
            let ceiling = RETRANSMIT_CEILING_MS
                .max(self.config.retransmit_ms)
                .max(self.config.unverified_retransmit_ms);
            self.rto_ms = self.rto_ms.saturating_mul(2).min(ceiling);
        }
        self.arm(now);
    }
}

/// The server's default policy, for tests across the protocol core.
#[cfg(test)]
pub(crate) const TEST_TIMER: TimerConfig = TimerConfig {
    retransmit_ms: 1000,
    retries_max: 5,
    backoff: true,
    unverified_resends_max: Some(1),
    unverified_quiet_waits: 2,
    unverified_retransmit_ms: 1000,
};

#[cfg(test)]
mod tests {
    use super::TEST_TIMER as CFG;
    use super::*;

    #[test]
    fn tftpd_hpa_like_schedule_then_give_up() {
        let t0 = Instant::now();
        let mut t = RetransmitTimer::new(CFG);
        t.arm(t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        loop {
            let d = t.deadline().unwrap();
            gaps.push((d - now).as_millis());
            now = d;
            match t.on_timeout(now, true) {
                TimerVerdict::Resend => {}
                TimerVerdict::GiveUp => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(gaps, vec![1000, 2000, 4000, 8000, 16000, 32000]);
        assert_eq!(now - t0, Duration::from_secs(63));
    }

    #[test]
    fn unverified_peer_gets_one_resend() {
        let t0 = Instant::now();
        let mut t = RetransmitTimer::new(CFG);
        t.arm(t0);
        assert_eq!(t.on_timeout(t0, false), TimerVerdict::NotDue);
        let d = t.deadline().unwrap();
        assert_eq!(t.on_timeout(d, false), TimerVerdict::Resend);
        // Then two silent waits (2 s and 4 s) before giving up at 1+2+4+8 s.
        let d = t.deadline().unwrap();
        assert_eq!(t.on_timeout(d, false), TimerVerdict::HoldQuiet);
        let d = t.deadline().unwrap();
        assert_eq!(t.on_timeout(d, false), TimerVerdict::HoldQuiet);
        let d = t.deadline().unwrap();
        assert_eq!(t.on_timeout(d, false), TimerVerdict::GiveUpUnverified);
        assert_eq!(d - t0, Duration::from_secs(15));
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn peer_timeout_is_fixed_once_the_peer_answered() {
        let cfg = CFG.with_peer_timeout(Some(3));
        let t0 = Instant::now();
        let mut t = RetransmitTimer::new(cfg);
        t.progress(t0);
        let d1 = t.deadline().unwrap();
        assert_eq!(d1 - t0, Duration::from_secs(3));
        t.on_timeout(d1, true);
        assert_eq!(t.deadline().unwrap() - d1, Duration::from_secs(3));
    }

    #[test]
    fn an_unverified_hold_is_the_servers_whatever_timeout_was_asked() {
        // `timeout 255` used to hold a spoofed request's session for
        // 1 + 2 silent waits at 255 s each (17 minutes).
        let cfg = CFG.with_peer_timeout(Some(255));
        let t0 = Instant::now();
        let mut t = RetransmitTimer::new(cfg);
        t.arm(t0);
        let mut verdicts = Vec::new();
        while let Some(d) = t.deadline() {
            verdicts.push(t.on_timeout(d, false));
            assert!(verdicts.len() < 10);
        }
        assert_eq!(
            verdicts,
            [
                TimerVerdict::Resend,
                TimerVerdict::HoldQuiet,
                TimerVerdict::HoldQuiet,
                TimerVerdict::GiveUpUnverified
            ]
        );
        // 1 + 2 + 4 + 8 s, the same as without the option.
        let mut t = RetransmitTimer::new(cfg);
        t.arm(t0);
        let mut at = t0;
        while let Some(d) = t.deadline() {
            at = d;
            t.on_timeout(d, false);
        }
        assert_eq!(at - t0, Duration::from_secs(15));
    }

    #[test]
    fn repeats_of_the_request_share_the_resend_budget() {
        let t0 = Instant::now();
        let mut t = RetransmitTimer::new(CFG);
        t.arm(t0);
        assert!(t.take_repeat_resend(false), "the one resend");
        assert!(!t.take_repeat_resend(false), "and no more");
        assert!(!t.take_repeat_resend(true), "never once verified");
        let d = t.deadline().unwrap();
        assert_eq!(
            t.on_timeout(d, false),
            TimerVerdict::HoldQuiet,
            "spent by the repeat"
        );
    }
}
