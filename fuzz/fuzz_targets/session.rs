//! One server transfer against a hostile peer.
//!
//! The input sets up an RRQ (of a file whose size, after netascii, the
//! target knows) or a WRQ, with options, limits and a timer policy, then
//! plays a sequence of events against the `ServerSession`, as a shard
//! would: datagrams from the peer's TID (ACKs, DATA, ERRORs, any bytes,
//! all through `Packet::parse`; runs of in-order DATA and ACKs of the last
//! window for long transfers), timeouts at increasing virtual times,
//! repeats of the request, ICMP unreachable, and for an upload the commit
//! completing or failing and a write failing. After the input it lets the
//! timers run: every session must end.
//!
//! Checked after every event, from what the session emits:
//! - nothing at all once `outcome()` is Some, and then no timer either; a
//!   live session always has a timer, unless an upload is committing;
//! - RRQ: DATA only on the start, a new ACK, a timeout, or a repeated
//!   request while the peer is unverified — never on a duplicate ACK
//!   (RFC 1123 4.2.3.1) or anything else; a window starts right after the
//!   highest ACK, lies within [1, last block] and within that ACK plus the
//!   windowsize; windows cover the file's bytes in order, full blocks but
//!   for a short last one; a new ACK below the last block always draws the
//!   next window; `Complete` only after the ACK of the last block;
//! - WRQ: a DATA is stored exactly when it is the next block, within
//!   blksize, before the last block and while the transfer runs (no bytes
//!   invented or lost); Store indices run 1, 2, 3... and stop at `last`; an
//!   ACK never names a block not yet received; no ACK while the commit
//!   runs, the final ACK right after it; `Complete` only after the last
//!   block and its commit;
//! - every control transmit encodes and parses back.

#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uftpd::proto::block;
use uftpd::proto::options::{NegotiationLimits, negotiate};
use uftpd::proto::refusal::Refusal;
use uftpd::proto::server::{Event, ServerConfig, ServerSession};
use uftpd::proto::transfer::{Outcome, TimerConfig, Transmit};
use uftpd::proto::wire::{self, ErrorCode, Mode, OptionValues, Packet, RequestKind};

#[derive(Arbitrary, Debug)]
struct Setup {
    write: bool,
    netascii: bool,
    blksize: Option<u16>,
    windowsize: Option<u16>,
    timeout: Option<u8>,
    tsize: Option<u64>,
    blksize_max: u16,
    windowsize_max: u16,
    upload_bytes_max: u64,
    retransmit_ms: u16,
    retries_max: u8,
    backoff: bool,
    unverified_resends_max: Option<u8>,
    unverified_quiet_waits: u8,
    dally_ms: u16,
    size: Size,
}

#[derive(Arbitrary, Debug)]
enum Size {
    Bytes(u16),
    /// `blocks` whole blocks of the negotiated blksize and `rem` bytes.
    Blocks {
        blocks: u32,
        rem: u16,
    },
}

#[derive(Arbitrary, Debug)]
enum Len {
    Full,
    Short(u16),
    Over(u8),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// ACK of a raw wire block number.
    Ack(u16),
    /// ACK of the highest acknowledged block plus this many.
    AckAhead(u16),
    /// ACK of the highest acknowledged block minus this many.
    AckBack(u16),
    /// DATA of the next expected block plus `ahead` (negative: a repeat).
    Data {
        ahead: i16,
        len: Len,
    },
    Error(u16),
    /// Any datagram from the peer's TID.
    Raw(Vec<u8>),
    /// Jump to the session's deadline and let it fire.
    Fire,
    /// Let this many ms pass; fire the timer if it is due.
    Wait(u16),
    DuplicateRequest,
    Unreachable,
    /// WRQ: the commit (fsyncs, rename) completes / fails.
    Commit,
    CommitFail,
    /// WRQ: writing the next stored block fails (the shard aborts).
    StoreFail,
    /// RRQ: the file changed under the transfer (the shard aborts).
    Abort,
    /// ACK of the highest block sent (the end of the last window).
    AckSent,
    /// WRQ: this many full blocks in order from the next one (long
    /// uploads: 257 of them cross the block-number wrap). Short runs keep
    /// the executions fast: with u16 counts the fuzzer favoured long ones
    /// and ran 100 inputs a second instead of 40 000.
    DataRun(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    steps: Vec<Step>,
}

/// What led to an emission, as the harness sees it from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    NewAck,
    DuplicateAck,
    Timeout,
    DuplicateRequest,
    Commit,
    Other,
}

/// Fires after the input before a session must have ended: far above any
/// budget the setup can give (retries ≤ 7, unverified resends ≤ 3, quiet
/// waits ≤ 2, one dally).
const FIRES_TO_END_MAX: usize = 64;

/// Datagrams one input may deliver (DataRun sends many per step).
const PACKETS_MAX: u64 = 100_000;

struct Harness {
    session: ServerSession,
    kind: RequestKind,
    base: Instant,
    now_ms: u64,
    blksize: u16,
    windowsize: u16,
    /// An ERROR of ours may follow (abort, rejected DATA, failed commit).
    error_expected: bool,
    peer_error: Option<u16>,

    // RRQ, from the wire.
    size: u64,
    last: u64,
    /// The OACK went out and ACK 0 has not come.
    handshake: bool,
    acked: u64,
    sent_max: u64,
    verified: bool,
    /// Blocks (and their bytes) the windows covered in order so far.
    covered_blocks: u64,
    covered_bytes: u64,

    // WRQ.
    stored: u64,
    /// Bytes of the blocks that were due, and of those the shard wrote.
    due_bytes: u64,
    written_bytes: u64,
    got_last: bool,
    committing: bool,
    committed: bool,
    store_fails: bool,
    /// A DATA datagram of any length: the header is rewritten per packet,
    /// the payload is what the buffer holds (no per-packet fill).
    data_buf: Vec<u8>,
    packets: u64,
}

impl Harness {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    /// Drains the session's transmits after an event; `before` is its
    /// outcome before the event.
    fn drain(&mut self, trigger: Trigger, before: Option<Outcome>) {
        let mut emitted_data = false;
        let mut emitted_final_ack = false;
        for _ in 0..4 {
            let Some(t) = self.session.poll_transmit() else {
                break;
            };
            assert!(
                before.is_none(),
                "{t:?} emitted after the outcome {before:?} ({trigger:?})"
            );
            match t {
                Transmit::Data { first, count } => {
                    self.on_data(trigger, first, count);
                    emitted_data = true;
                }
                Transmit::Ack { block: b } => {
                    assert_eq!(self.kind, RequestKind::Write, "the RRQ sender sent ACK");
                    assert!(
                        block::unwrap(b, self.stored) <= self.stored,
                        "ACK {b} for a block not received (have {})",
                        self.stored
                    );
                    assert!(
                        !self.committing,
                        "ACK {b} while the commit runs ({trigger:?})"
                    );
                    if self.got_last && b == block::wire(self.stored) {
                        assert!(self.committed, "final ACK before the commit");
                        emitted_final_ack = true;
                    }
                    self.check_control(t);
                }
                Transmit::Oack => {
                    match self.kind {
                        RequestKind::Read => assert!(self.handshake, "OACK after ACK 0"),
                        RequestKind::Write => assert_eq!(self.stored, 0, "OACK after DATA"),
                    }
                    // The receiver also repeats it for a DATA other than
                    // block 1 (the peer seems to have missed it).
                    assert!(
                        matches!(
                            trigger,
                            Trigger::Start | Trigger::Timeout | Trigger::DuplicateRequest
                        ) || (self.kind == RequestKind::Write && trigger == Trigger::Other),
                        "OACK on {trigger:?}"
                    );
                    self.check_control(t);
                }
                Transmit::Error { code, .. } => {
                    assert!(self.error_expected, "ERROR {code:?} out of nowhere");
                    self.check_control(t);
                }
                Transmit::Request => panic!("a server sent a request"),
            }
        }
        assert_eq!(self.session.poll_transmit(), None, "transmits pile up");

        // What an event must have led to.
        if self.kind == RequestKind::Read
            && trigger == Trigger::NewAck
            && before.is_none()
            && self.acked < self.last
        {
            assert!(emitted_data, "a new ACK {} drew no window", self.acked);
        }
        if trigger == Trigger::Commit && before.is_none() && self.session.outcome().is_none() {
            assert!(emitted_final_ack, "the commit released no final ACK");
        }

        let outcome = self.session.outcome();
        if let Some(o) = outcome {
            assert_eq!(self.session.poll_timeout(), None, "a timer after {o:?}");
            if before.is_none() {
                self.check_outcome(o);
            }
        } else if !self.session.is_committing() {
            assert!(
                self.session.poll_timeout().is_some(),
                "a live session without a timer would never end"
            );
        }
        if before.is_some() {
            assert_eq!(outcome, before, "the outcome changed");
        }
    }

    fn check_outcome(&self, o: Outcome) {
        match (self.kind, o) {
            (RequestKind::Read, Outcome::Complete) => {
                assert_eq!(self.acked, self.last, "Complete before the last ACK")
            }
            (RequestKind::Read, Outcome::CompleteUnconfirmed) => {
                assert!(!self.handshake && self.sent_max == self.last)
            }
            (RequestKind::Write, Outcome::Complete | Outcome::CompleteUnconfirmed) => {
                assert!(self.got_last && self.committed, "{o:?} before the commit")
            }
            (_, Outcome::PeerError(code)) => assert_eq!(Some(code), self.peer_error),
            // ERROR 8 in answer to the OACK, before any data (UEFI's probe).
            (_, Outcome::SizeProbe) => {
                assert!(self.peer_error == Some(8) && self.handshake, "{o:?}")
            }
            (_, Outcome::NoResponse) => assert!(!self.session.is_verified()),
            _ => {}
        }
    }

    fn check_control(&self, t: Transmit) {
        let mut buf = [0u8; 512];
        let n = self
            .session
            .encode_control(t, &mut buf)
            .unwrap_or_else(|| panic!("{t:?} does not encode"));
        let p = Packet::parse(&buf[..n]).expect("our own packet parses");
        match (t, p) {
            (Transmit::Ack { block: a }, Packet::Ack { block: b }) => assert_eq!(a, b),
            (Transmit::Oack, Packet::Oack { options }) => assert!(!options.is_empty()),
            (
                Transmit::Error { code, message },
                Packet::Error {
                    code: c,
                    message: m,
                },
            ) => {
                assert_eq!((code as u16, message.as_bytes()), (c, m))
            }
            (t, p) => panic!("{t:?} encoded as {p:?}"),
        }
    }

    fn on_data(&mut self, trigger: Trigger, first: u64, count: u16) {
        assert_eq!(self.kind, RequestKind::Read, "the WRQ receiver sent DATA");
        assert!(!self.handshake, "DATA before ACK 0 of the OACK");
        match trigger {
            Trigger::Start | Trigger::NewAck | Trigger::Timeout => {}
            Trigger::DuplicateRequest => assert!(
                !self.verified,
                "DATA for a repeated request from a verified peer"
            ),
            other => panic!(
                "DATA {first}+{count} in response to {other:?} (highest ACK {})",
                self.acked
            ),
        }
        assert!(count >= 1, "an empty window");
        let end = first + u64::from(count) - 1;
        assert_eq!(first, self.acked + 1, "a window not after the highest ACK");
        assert!(
            end <= self.last,
            "DATA {end} beyond the last block {}",
            self.last
        );
        assert!(
            end <= self.acked + u64::from(self.windowsize),
            "DATA {end} beyond ACK {} + window {}",
            self.acked,
            self.windowsize
        );
        self.sent_max = self.sent_max.max(end);
        // The windows tile the file: block i starts where i - 1 ended.
        if end > self.covered_blocks {
            assert!(first <= self.covered_blocks + 1, "a block was skipped");
            let blk = u64::from(self.blksize);
            let (start, len) = block::byte_range(first, self.blksize, self.size);
            assert_eq!(start, (first - 1) * blk);
            let (start, len_end) = block::byte_range(end, self.blksize, self.size);
            assert_eq!(start, (end - 1) * blk);
            for (i, l) in [(first, len), (end, len_end)] {
                if i < self.last {
                    assert_eq!(l, usize::from(self.blksize), "a short block {i} mid-file");
                } else {
                    assert!(l < usize::from(self.blksize), "a full last block");
                }
            }
            self.covered_blocks = end;
            self.covered_bytes = start + len_end as u64;
            assert!(self.covered_bytes <= self.size);
            if end == self.last {
                assert_eq!(self.covered_bytes, self.size, "bytes lost at the end");
            }
        }
    }

    /// How the data sender must read an ACK: the largest block index with
    /// that wire number that was sent (a peer only acknowledges what it got).
    fn classify_ack(&mut self, wire_block: u16) -> Trigger {
        if self.kind != RequestKind::Read || self.session.outcome().is_some() {
            return Trigger::Other;
        }
        if self.handshake {
            if wire_block == 0 {
                self.handshake = false;
                self.verified = true;
                return Trigger::NewAck;
            }
            return Trigger::Other;
        }
        let below = u64::from(wire_block);
        if below > self.sent_max {
            return Trigger::Other;
        }
        let index = self.sent_max - ((self.sent_max - below) & 0xffff);
        if index > self.acked {
            self.acked = index;
            self.verified = true;
            Trigger::NewAck
        } else {
            Trigger::DuplicateAck
        }
    }

    fn deliver(&mut self, bytes: &[u8]) {
        self.packets += 1;
        // A shard drops what does not parse ("its retransmit will do").
        let Ok(packet) = Packet::parse(bytes) else {
            return;
        };
        let before = self.session.outcome();
        let trigger = match packet {
            Packet::Ack { block } => self.classify_ack(block),
            _ => Trigger::Other,
        };
        if let Packet::Error { code, .. } = packet
            && before.is_none()
        {
            self.peer_error = Some(code);
        }
        // A WRQ block is due exactly when it is the next one, fits, and the
        // transfer still takes blocks.
        let due = match packet {
            Packet::Data { block: b, payload } if self.kind == RequestKind::Write => {
                if payload.len() > usize::from(self.blksize) && before.is_none() && !self.got_last {
                    self.error_expected = true; // rejected: ERROR 4
                }
                before.is_none()
                    && !self.got_last
                    && b == block::wire(self.stored + 1)
                    && payload.len() <= usize::from(self.blksize)
            }
            _ => false,
        };
        let now = self.now();
        let event = self.session.handle(&packet, now);
        match (event, packet) {
            (Event::Store { index, last }, Packet::Data { payload, .. }) => {
                assert!(due, "stored a block that was not due: bytes invented");
                assert_eq!(index, self.stored + 1, "Store out of order");
                assert_eq!(last, payload.len() < usize::from(self.blksize));
                self.stored = index;
                self.due_bytes += payload.len() as u64;
                if self.store_fails {
                    self.store_fails = false;
                    self.error_expected = true;
                    self.session.abort(Refusal::DISK_FULL);
                } else {
                    self.written_bytes += payload.len() as u64;
                    if last {
                        self.got_last = true;
                        self.committing = true;
                    }
                }
            }
            (Event::Store { .. }, p) => panic!("Store for {p:?}"),
            (Event::Nothing, _) => assert!(!due, "a due block was dropped: bytes lost"),
        }
        self.drain(trigger, before);
    }

    fn fire(&mut self) {
        if let Some(deadline) = self.session.poll_timeout() {
            let at = u64::try_from(deadline.saturating_duration_since(self.base).as_millis())
                .expect("deadline within u64 ms");
            self.now_ms = self.now_ms.max(at);
            self.timeout();
        }
    }

    /// As the shard's timer scan: only a due deadline fires.
    fn timeout(&mut self) {
        let now = self.now();
        if self.session.poll_timeout().is_some_and(|d| d <= now) {
            let before = self.session.outcome();
            self.session.handle_timeout(now);
            self.drain(Trigger::Timeout, before);
        }
    }

    fn commit(&mut self, ok: bool) {
        if !self.committing {
            return;
        }
        assert!(
            self.session.is_committing(),
            "the upload stopped committing on its own"
        );
        self.committing = false;
        let before = self.session.outcome();
        let now = self.now();
        if ok {
            self.committed = true;
            self.session.commit_done(now);
        } else {
            self.error_expected = true;
            self.session.commit_failed(Refusal::DISK_FULL);
        }
        self.drain(Trigger::Commit, before);
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Ack(b) => self.ack(*b),
            Step::AckAhead(k) => self.ack(block::wire(self.acked.wrapping_add(u64::from(*k)))),
            Step::AckBack(k) => self.ack(block::wire(self.acked.wrapping_sub(u64::from(*k)))),
            Step::Data { ahead, len } => {
                let index = (self.stored as i64 + 1 + i64::from(*ahead)).max(0) as u64;
                let blk = usize::from(self.blksize);
                let len = match len {
                    Len::Full => blk,
                    Len::Short(n) => usize::from(*n) % blk,
                    Len::Over(n) => blk + 1 + usize::from(*n % 16),
                };
                self.data(index, len);
            }
            Step::AckSent => self.ack(block::wire(self.sent_max)),
            Step::DataRun(blocks) => {
                for _ in 0..*blocks {
                    if self.session.outcome().is_some()
                        || self.got_last
                        || self.packets >= PACKETS_MAX
                    {
                        break;
                    }
                    self.data(self.stored + 1, usize::from(self.blksize));
                }
            }
            Step::Error(code) => {
                let mut dgram = [0u8; 9];
                wire::encode_error(&mut dgram, ErrorCode::NotDefined, "peer").unwrap();
                dgram[2..4].copy_from_slice(&code.to_be_bytes());
                self.deliver(&dgram);
            }
            Step::Raw(bytes) => self.deliver(bytes),
            Step::Fire => self.fire(),
            Step::Wait(ms) => {
                self.now_ms += u64::from(*ms);
                self.timeout();
            }
            Step::DuplicateRequest => {
                let before = self.session.outcome();
                // The endpoint passes a repeat on only while unverified.
                if !self.session.is_verified() {
                    let now = self.now();
                    self.session.handle_duplicate_request(now);
                }
                self.drain(Trigger::DuplicateRequest, before);
            }
            Step::Unreachable => {
                let before = self.session.outcome();
                self.session.handle_unreachable();
                self.drain(Trigger::Other, before);
            }
            Step::Commit => self.commit(true),
            Step::CommitFail => self.commit(false),
            Step::StoreFail => self.store_fails = true,
            Step::Abort => {
                if self.kind == RequestKind::Read {
                    let before = self.session.outcome();
                    self.error_expected = true;
                    self.session.abort(Refusal::FILE_CHANGED);
                    self.drain(Trigger::Other, before);
                }
            }
        }
    }

    fn data(&mut self, index: u64, len: usize) {
        let mut dgram = std::mem::take(&mut self.data_buf);
        wire::encode_data_header(&mut dgram, block::wire(index)).unwrap();
        self.deliver(&dgram[..wire::HEADER_BYTES + len]);
        self.data_buf = dgram;
    }

    fn ack(&mut self, b: u16) {
        let mut buf = [0u8; 4];
        let n = wire::encode_ack(&mut buf, b).unwrap();
        self.deliver(&buf[..n]);
    }
}

fuzz_target!(|input: Input| {
    let s = &input.setup;
    let kind = if s.write {
        RequestKind::Write
    } else {
        RequestKind::Read
    };
    let mode = if s.netascii {
        Mode::Netascii
    } else {
        Mode::Octet
    };
    let options = OptionValues {
        blksize: s.blksize,
        timeout_s: s.timeout,
        tsize_bytes: s.tsize,
        windowsize: s.windowsize,
    };
    let mut request_bytes = [0u8; 256];
    let n = wire::encode_request(&mut request_bytes, kind, b"boot/image", mode, &options)
        .expect("the request fits");
    let Ok(Packet::Request(request)) = Packet::parse(&request_bytes[..n]) else {
        panic!("our request does not parse")
    };
    let config = ServerConfig {
        negotiation: NegotiationLimits {
            blksize_max: s.blksize_max.max(wire::BLKSIZE_MIN),
            windowsize_max: s.windowsize_max.max(1),
            upload_bytes_max: s.upload_bytes_max,
            refused: uftpd::proto::options::Refused::NONE,
        },
        timer: TimerConfig {
            retransmit_ms: 1 + u64::from(s.retransmit_ms % 5000),
            retries_max: u32::from(s.retries_max % 8),
            backoff: s.backoff,
            unverified_resends_max: s.unverified_resends_max.map(|n| u32::from(n % 4)),
            unverified_quiet_waits: u32::from(s.unverified_quiet_waits % 3),
            // The server's base timeout for unproven peers: the same as
            // `retransmit_ms` unless the request's `timeout` changes that.
            unverified_retransmit_ms: 1 + u64::from(s.retransmit_ms % 5000),
        },
        dally_ms: u64::from(s.dally_ms),
    };
    let base = Instant::now();
    // The blksize the request will get, to size the file in whole blocks.
    let Ok(pre) = negotiate(&request, None, &config.negotiation) else {
        return;
    };
    let size = match s.size {
        Size::Bytes(n) => u64::from(n),
        Size::Blocks { blocks, rem } => {
            let blk = u64::from(pre.blksize);
            u64::from(blocks % 200_000) * blk + u64::from(rem) % blk
        }
    };
    // netascii: converted in memory, so the size is not announced.
    let known = mode == Mode::Octet;
    let session = match kind {
        RequestKind::Read => ServerSession::read(&request, size, known, &config, base),
        RequestKind::Write => ServerSession::write(&request, &config, base),
    };
    let Ok(session) = session else {
        return; // refused: the shard answers with an ERROR from the service port
    };
    let n = *session.negotiated();
    let mut h = Harness {
        session,
        kind,
        base,
        now_ms: 0,
        blksize: n.blksize,
        windowsize: n.windowsize,
        error_expected: false,
        peer_error: None,
        size,
        last: block::last_index(size, n.blksize),
        handshake: kind == RequestKind::Read && n.oack != OptionValues::default(),
        acked: 0,
        sent_max: 0,
        verified: false,
        covered_blocks: 0,
        covered_bytes: 0,
        stored: 0,
        due_bytes: 0,
        written_bytes: 0,
        got_last: false,
        committing: false,
        committed: false,
        store_fails: false,
        data_buf: vec![0x5a; wire::HEADER_BYTES + usize::from(n.blksize) + 16],
        packets: 0,
    };
    h.drain(Trigger::Start, None);
    for step in input.steps.iter().take(4096) {
        h.step(step);
    }
    // As the shard does: the commit completes, and the timers run out.
    h.commit(true);
    for _ in 0..FIRES_TO_END_MAX {
        if h.session.outcome().is_some() {
            break;
        }
        h.fire();
    }
    assert!(
        h.session.outcome().is_some(),
        "the session never ended on its own"
    );
    if kind == RequestKind::Write {
        // Every due block was written, but for one whose write failed.
        let failed = h.due_bytes - h.written_bytes;
        assert!(failed <= u64::from(h.blksize));
    }
    if report_states() {
        // What the input reached, one line each, to tally over a corpus:
        // UFTPD_FUZZ_STATES=1 .../session -runs=0 DIR 2>&1 | grep ^state | sort | uniq -c
        let blocks = match kind {
            RequestKind::Read => h.acked,
            RequestKind::Write => h.stored,
        };
        let outcome = match h.session.outcome().unwrap() {
            Outcome::PeerError(_) => "PeerError".to_string(),
            other => format!("{other:?}"),
        };
        eprintln!(
            "state {:?} {} window>1={} past-wrap={} blocks>={}",
            kind,
            outcome,
            h.windowsize > 1,
            blocks > 65_535,
            [0u64, 1, 10, 100, 1000, 65_536]
                .into_iter()
                .rev()
                .find(|&b| blocks >= b)
                .unwrap_or(0)
        );
    }
});

fn report_states() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UFTPD_FUZZ_STATES").is_some())
}
