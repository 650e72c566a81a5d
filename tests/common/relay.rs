//! A seeded UDP fault relay: `tc qdisc … netem` in-process, for kernels
//! without the netem qdisc.
//!
//! The client talks to [`Relay::addr`] as if it were the server. Each client
//! address gets its own server-facing socket, so the server sees one peer per
//! client port. The relay follows the server's new TID (RFC 1350: the server
//! answers from a new port): for each server address that answers on a
//! server-facing socket it opens a client-facing socket, so the client also
//! sees a distinct TID, and what the client sends to that socket goes to that
//! server address through the matching server-facing socket. Replies from the
//! service address itself come back from [`Relay::addr`].
//!
//! Faults are drawn per datagram and direction, as netem does: duplication
//! (the copy gets its own loss, delay and reorder draws, as a netem clone goes
//! through the qdisc again), loss, a delay of base ± jitter (uniform) and,
//! with the reorder probability, an extra hold of one to two maximal delays so
//! the datagram lands after the ones sent after it. Every flow (client
//! address, server address) and direction has its own splitmix64 stream,
//! seeded from the relay's seed and the flow's number in order of creation:
//! the k-th datagram of a flow always gets the same draws, whatever the
//! interleaving with other flows, so a seed replays well.
//!
//! Everything runs on plain threads and std sockets bound to 127.0.0.1: one
//! receiving thread per socket (blocking reads with a short timeout) and one
//! delivering thread. Every loop is bounded in iterations and in time
//! ([`RelayConfig::max_lifetime`]); dropping the relay stops and joins them.
//!
//! The relay keeps a trace of every datagram it received, lost and delivered
//! (time, direction, flow, packet; what it receives from the server is what
//! the server emitted, timed within the relay's scheduling delay), and
//! [`Relay::sa_check`] classifies from it every DATA the server emitted, the
//! way tests/simulation.rs labels triggers. A DATA, or a window of them
//! sent back to back, is a first send, or a resend that answers a new ACK
//! delivered to the server (ACK k, answered by a burst from block k + 1), a
//! repeat of the request, or the server's timer (at least 3/4 of its current
//! timeout since the timer was last started, backoff followed from the
//! trace). Any other resend within [`RelayConfig::sa_window`] of a duplicate
//! ACK delivered to the server is a Sorcerer's Apprentice resend (RFC 1123
//! 4.2.3.1); one that nothing explains is reported as unexplained.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{OP_ACK, OP_DATA, OP_OACK, OP_RRQ, OP_WRQ, Packet, parse};

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Sockets (and receiving threads) one relay may open.
const MAX_SOCKETS: usize = 64;
/// SO_RCVBUF asked for each relay socket.
const RECV_BUFFER: usize = 4 << 20;
/// Largest UDP payload on IPv4 loopback.
const MAX_DATAGRAM: usize = 65_507;
/// Bytes of a DATA packet kept in the trace (its header); other packets are
/// kept up to this many bytes.
const TRACE_HEAD_OTHER: usize = 600;

// ---------------------------------------------------------------------------
// PRNG and fault profiles
// ---------------------------------------------------------------------------

/// splitmix64, as in tests/simulation.rs.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    /// Uniform in `lo ..= hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Per-datagram faults of one direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
}

impl Faults {
    /// `netem delay 100ms 50ms loss 20% duplicate 20% reorder 20%`, the
    /// profile of ../shared/reference/tftp-fault-test.txt.
    pub const REFERENCE: Faults = Faults {
        delay: Duration::from_millis(100),
        jitter: Duration::from_millis(50),
        loss: 0.20,
        duplicate: 0.20,
        reorder: 0.20,
    };

    /// Nothing lost, duplicated, delayed or reordered.
    pub const NONE: Faults = Faults {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
    };

    /// The same faults with another delay and jitter.
    pub fn with_delay(self, delay: Duration, jitter: Duration) -> Faults {
        assert!(jitter <= delay, "jitter must not exceed the delay");
        Faults {
            delay,
            jitter,
            ..self
        }
    }

    fn max_delay(&self) -> Duration {
        self.delay + self.jitter
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay {}ms ±{}ms loss {}% dup {}% reorder {}%",
            self.delay.as_millis(),
            self.jitter.as_millis(),
            self.loss * 100.0,
            self.duplicate * 100.0,
            self.reorder * 100.0
        )
    }
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub seed: u64,
    pub to_server: Faults,
    pub to_client: Faults,
    /// The server's base retransmit timeout (its `--retransmit-ms`), which
    /// doubles after each timeout and returns to the base on a new ACK; a
    /// `timeout` option in the server's OACK replaces it (fixed, no
    /// backoff). The SA check follows that timer from the trace and takes a
    /// resend at least 3/4 of the current timeout after the server's
    /// previous DATA on that TID for a timeout resend.
    pub server_rto: Duration,
    /// A resend this soon after a duplicate ACK reached the server (and no
    /// timeout elapsed) answers that duplicate: Sorcerer's Apprentice.
    pub sa_window: Duration,
    /// The relay stops by itself after this long ...
    pub max_lifetime: Duration,
    /// ... or after receiving this many datagrams.
    pub max_datagrams: u64,
}

impl RelayConfig {
    /// The reference profile both ways.
    pub fn reference(seed: u64, server_rto: Duration) -> RelayConfig {
        RelayConfig::symmetric(seed, Faults::REFERENCE, server_rto)
    }

    pub fn symmetric(seed: u64, faults: Faults, server_rto: Duration) -> RelayConfig {
        RelayConfig {
            seed,
            to_server: faults,
            to_client: faults,
            server_rto,
            sa_window: Duration::from_millis(50),
            max_lifetime: Duration::from_secs(600),
            max_datagrams: 5_000_000,
        }
    }

    fn faults(&self, dir: Dir) -> &Faults {
        match dir {
            Dir::ToServer => &self.to_server,
            Dir::ToClient => &self.to_client,
        }
    }
}

// ---------------------------------------------------------------------------
// Trace and counters
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::ToServer => 0,
            Dir::ToClient => 1,
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::ToServer => "C->S",
            Dir::ToClient => "S->C",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Happened {
    /// The relay read it from its sender (for `ToClient`: what the server
    /// emitted, at the moment it emitted it, give or take scheduling).
    Received,
    /// One copy was dropped.
    Lost,
    /// One copy was sent on to its destination.
    Delivered,
}

/// One line of the relay's trace.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    /// Since the relay started.
    pub at: Duration,
    pub dir: Dir,
    pub what: Happened,
    /// Flow number, in order of creation (0 is the first client's requests).
    pub flow: usize,
    /// The client's address and the server's (service address or TID).
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Whole datagram length.
    pub len: usize,
    /// The datagram's first bytes: the header of a DATA, most of anything else.
    pub head: Vec<u8>,
    /// For `Delivered`: the copy was held back to be reordered.
    pub reordered: bool,
}

impl TraceEvent {
    pub fn opcode(&self) -> Option<u16> {
        (self.head.len() >= 2).then(|| u16::from_be_bytes([self.head[0], self.head[1]]))
    }

    /// Block number of a DATA or ACK.
    pub fn block(&self) -> Option<u16> {
        match self.opcode() {
            Some(OP_DATA | OP_ACK) if self.head.len() >= 4 => {
                Some(u16::from_be_bytes([self.head[2], self.head[3]]))
            }
            _ => None,
        }
    }

    /// The packet, parsed from the kept bytes (a DATA has an empty payload;
    /// see `len`).
    pub fn packet(&self) -> Packet {
        parse(&self.head)
    }

    pub fn describe_packet(&self) -> String {
        match self.opcode() {
            Some(OP_DATA) => format!(
                "DATA({}, {} bytes)",
                self.block().unwrap_or(0),
                self.len.saturating_sub(4)
            ),
            _ => format!("{:?}", self.packet()),
        }
    }
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9.3} ms {} flow {} {:<9} {}{}",
            self.at.as_secs_f64() * 1000.0,
            self.dir,
            self.flow,
            format!("{:?}", self.what).to_lowercase(),
            self.describe_packet(),
            if self.reordered { " (reordered)" } else { "" }
        )
    }
}

/// Counts of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirCounters {
    /// Datagrams read from the sender.
    pub received: u64,
    /// Copies sent on (duplicates included).
    pub delivered: u64,
    /// Copies dropped.
    pub lost: u64,
    /// Datagrams that got a second copy.
    pub duplicated: u64,
    /// Copies held back to land after later ones.
    pub reordered: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub to_server: DirCounters,
    pub to_client: DirCounters,
    /// Datagrams that could not be relayed (socket errors, limits).
    pub errors: u64,
}

impl Counters {
    fn dir_mut(&mut self, dir: Dir) -> &mut DirCounters {
        match dir {
            Dir::ToServer => &mut self.to_server,
            Dir::ToClient => &mut self.to_client,
        }
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = |c: &DirCounters| {
            format!(
                "{} in, {} delivered, {} lost, {} dup, {} reord",
                c.received, c.delivered, c.lost, c.duplicated, c.reordered
            )
        };
        write!(
            f,
            "C->S [{}] S->C [{}]",
            one(&self.to_server),
            one(&self.to_client)
        )?;
        if self.errors > 0 {
            write!(f, " {} relay errors", self.errors)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The Sorcerer's Apprentice check
// ---------------------------------------------------------------------------

/// What made the server emit a DATA, judged from the relay's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataTrigger {
    /// A block never emitted before on that TID.
    First,
    /// A resend after the server's timeout could have elapsed.
    Timeout,
    /// A resend after a new ACK reached the server (RFC 7440: a window
    /// restarts after the block the receiver acknowledged).
    NewAck,
    /// A resend after a repeat of the client's request reached the server
    /// (the first reply again, for a peer that has not answered yet).
    Request,
    /// A resend soon after a duplicate ACK, with no timeout elapsed.
    Sorcerer,
    /// An early resend that none of the above explains.
    Unexplained,
}

/// The result of [`Relay::sa_check`].
#[derive(Clone, Debug, Default)]
pub struct SaReport {
    pub first: u64,
    pub timeout: u64,
    pub new_ack: u64,
    pub request: u64,
    /// Sorcerer's Apprentice resends, each described with the trace around it.
    pub sorcerer: Vec<String>,
    /// Early resends nothing explains (reported, not a failure by
    /// themselves: scheduling delays on a loaded machine can make a
    /// timeout look early).
    pub unexplained: Vec<String>,
}

impl SaReport {
    pub fn passed(&self) -> bool {
        self.sorcerer.is_empty()
    }

    pub fn resent(&self) -> u64 {
        self.timeout
            + self.new_ack
            + self.request
            + self.sorcerer.len() as u64
            + self.unexplained.len() as u64
    }
}

impl fmt::Display for SaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server DATA: {} first, resent {} (timeout {}, new ACK {}, request {}, \
             duplicate ACK {}, unexplained {})",
            self.first,
            self.resent(),
            self.timeout,
            self.new_ack,
            self.request,
            self.sorcerer.len(),
            self.unexplained.len()
        )
    }
}

/// Nearest 64-bit index for a 16-bit block number (blocks wrap 65535 -> 0).
fn unwrap_block(wire: u16, reference: u64) -> u64 {
    let here = (reference & !0xFFFF) | u64::from(wire);
    let mut best = here;
    for c in [here.checked_sub(0x1_0000), Some(here + 0x1_0000)]
        .into_iter()
        .flatten()
    {
        if c.abs_diff(reference) < best.abs_diff(reference) {
            best = c;
        }
    }
    best
}

/// The value of option `key` in an OACK's raw bytes.
fn oack_option(head: &[u8], key: &str) -> Option<String> {
    match parse(head) {
        p @ Packet::Oack { .. } => p.oack_opt(key),
        _ => None,
    }
}

/// The server's backoff stops doubling here (src/proto/transfer.rs).
const RTO_CEILING: Duration = Duration::from_secs(32);

#[derive(Default)]
struct FlowCheck {
    /// The negotiated timeout, if any (fixed, no backoff).
    fixed_rto: Option<Duration>,
    /// The timeout the server's timer runs now, as inferred from the trace.
    rto_now: Option<Duration>,
    /// Highest index acknowledged by an ACK delivered to the server.
    acked: Option<u64>,
    sent_max: Option<u64>,
    last_emit: Option<Duration>,
    /// When the server's timer was last started, as far as the trace shows:
    /// its first DATA, its answer to a new ACK, a timeout resend. (A resend
    /// answering a repeated request leaves the timer running.)
    armed: Option<Duration>,
    /// New ACKs delivered and not answered yet: index and time. ACK k is
    /// answered by a burst starting at block k + 1; the server may fire a
    /// timeout (a burst starting lower) before it gets to the ACK.
    unanswered_acks: Vec<(u64, Duration)>,
    /// Last duplicate ACK delivered to the server on this TID: time and
    /// index in the trace.
    last_dup_ack: Option<(Duration, usize)>,
    /// The burst being emitted: next index and its trigger.
    burst: Option<(u64, DataTrigger)>,
}

fn check_trace(trace: &[TraceEvent], cfg: &RelayConfig, service: SocketAddr) -> SaReport {
    let mut report = SaReport::default();
    let mut flows: HashMap<usize, FlowCheck> = HashMap::new();
    // Per client address: when a request last reached the server.
    let mut last_request: HashMap<SocketAddr, Duration> = HashMap::new();
    for (i, ev) in trace.iter().enumerate() {
        if ev.server == service {
            if ev.dir == Dir::ToServer
                && ev.what == Happened::Delivered
                && matches!(ev.opcode(), Some(OP_RRQ | OP_WRQ))
            {
                last_request.insert(ev.client, ev.at);
            }
            continue;
        }
        let fc = flows.entry(ev.flow).or_default();
        match (ev.dir, ev.what, ev.opcode()) {
            (Dir::ToServer, Happened::Delivered, Some(OP_ACK)) => {
                let index = unwrap_block(ev.block().unwrap(), fc.sent_max.unwrap_or(0));
                let duplicate = fc.acked.is_some_and(|a| index <= a);
                if !duplicate && fc.sent_max.is_some_and(|m| index <= m) {
                    fc.acked = Some(index);
                    if fc.unanswered_acks.len() < 64 {
                        fc.unanswered_acks.push((index, ev.at));
                    }
                }
                if duplicate {
                    fc.last_dup_ack = Some((ev.at, i));
                }
            }
            (Dir::ToClient, Happened::Received, Some(OP_OACK)) => {
                // ACK 0 answers the OACK; a negotiated timeout replaces the
                // server's own (without backoff).
                if fc.sent_max.is_none() {
                    fc.sent_max = Some(0);
                }
                if let Some(s) = oack_option(&ev.head, "timeout").and_then(|v| v.parse().ok()) {
                    fc.fixed_rto = Some(Duration::from_secs(s));
                }
            }
            (Dir::ToClient, Happened::Received, Some(OP_DATA)) => {
                let index = unwrap_block(ev.block().unwrap(), fc.sent_max.unwrap_or(0));
                let base = fc.fixed_rto.unwrap_or(cfg.server_rto);
                let rto = fc.rto_now.unwrap_or(base);
                let since = ev.at - fc.armed.or(fc.last_emit).unwrap_or_default();
                let timed_out = since >= rto * 3 / 4;
                // The next block of the window being sent, with no timeout
                // in between: the same burst (a window may leave in pieces
                // when the server is busy). A resend answering some packet
                // starts over at that packet's block + 1 instead.
                let in_burst = fc.burst.is_some_and(|(next, _)| next == index) && !timed_out;
                let resend = fc.sent_max.is_some_and(|m| index <= m);
                let answered = (!in_burst)
                    .then(|| fc.unanswered_acks.iter().find(|(k, _)| k + 1 == index))
                    .flatten()
                    .copied();
                if let Some((_, at)) = answered {
                    // Progress: the server's timer restarted at its base
                    // when the ACK came in.
                    fc.unanswered_acks.retain(|(k, _)| k + 1 > index);
                    fc.rto_now = None;
                    fc.armed = Some(at);
                }
                let trigger = if in_burst {
                    fc.burst.unwrap().1
                } else if !resend {
                    DataTrigger::First
                } else if answered.is_some() {
                    DataTrigger::NewAck
                } else if last_request
                    .get(&ev.client)
                    .is_some_and(|t| fc.last_emit.is_none_or(|e| *t >= e))
                {
                    DataTrigger::Request
                } else if timed_out {
                    if fc.fixed_rto.is_none() {
                        fc.rto_now = Some((rto * 2).min(RTO_CEILING.max(base)));
                    }
                    DataTrigger::Timeout
                } else if fc
                    .last_dup_ack
                    .is_some_and(|(t, _)| ev.at - t <= cfg.sa_window)
                {
                    DataTrigger::Sorcerer
                } else {
                    DataTrigger::Unexplained
                };
                fc.burst = Some((index + 1, trigger));
                if fc.armed.is_none()
                    || matches!(trigger, DataTrigger::First | DataTrigger::Timeout)
                {
                    fc.armed = Some(ev.at);
                }
                fc.last_emit = Some(ev.at);
                if !resend {
                    fc.sent_max = Some(index);
                    report.first += 1;
                    continue;
                }
                let context = || {
                    let from = fc.last_dup_ack.map_or(i, |(_, j)| j).min(i);
                    let from = from.saturating_sub(6);
                    let lines: Vec<String> = trace[from..=i]
                        .iter()
                        .filter(|e| e.flow == ev.flow)
                        .map(|e| format!("    {e}"))
                        .collect();
                    let lines = &lines[lines.len().saturating_sub(40)..];
                    format!(
                        "DATA {} resent at {:.3} ms on flow {} (TID {}); trace of the flow before it:\n{}",
                        index,
                        ev.at.as_secs_f64() * 1000.0,
                        ev.flow,
                        ev.server,
                        lines.join("\n")
                    )
                };
                match trigger {
                    DataTrigger::First => report.first += 1,
                    DataTrigger::Timeout => report.timeout += 1,
                    DataTrigger::NewAck => report.new_ack += 1,
                    DataTrigger::Request => report.request += 1,
                    DataTrigger::Sorcerer => report.sorcerer.push(context()),
                    DataTrigger::Unexplained => report.unexplained.push(context()),
                }
            }
            _ => {}
        }
    }
    report
}

// ---------------------------------------------------------------------------
// The relay
// ---------------------------------------------------------------------------

struct Scheduled {
    due: Instant,
    seq: u64,
    sock: Arc<UdpSocket>,
    dest: SocketAddr,
    bytes: Arc<Vec<u8>>,
    dir: Dir,
    flow: usize,
    reordered: bool,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Flow {
    client: SocketAddr,
    server: SocketAddr,
    rng: [SplitMix64; 2],
}

struct State {
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    flows: Vec<Flow>,
    flow_of: HashMap<(SocketAddr, SocketAddr), usize>,
    /// Server-facing socket of each client address.
    upstream: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Client-facing socket of each (client, server address).
    downstream: HashMap<(SocketAddr, SocketAddr), Arc<UdpSocket>>,
    sockets: usize,
    trace: Vec<TraceEvent>,
    counters: Counters,
    datagrams: u64,
    problems: Vec<String>,
}

struct Shared {
    start: Instant,
    cfg: RelayConfig,
    service: SocketAddr,
    main: Arc<UdpSocket>,
    stop: AtomicBool,
    state: Mutex<State>,
    wake: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// What a receiving socket is for.
#[derive(Clone, Copy)]
enum Role {
    /// The relay's public address: requests from clients.
    Main,
    /// Faces the server on behalf of this client.
    Upstream { client: SocketAddr },
    /// Faces this client on behalf of this server address.
    Downstream { server: SocketAddr },
}

pub struct Relay {
    shared: Arc<Shared>,
    scheduler: Option<JoinHandle<()>>,
}

fn bind_loopback() -> std::io::Result<Arc<UdpSocket>> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    s.set_read_timeout(Some(POLL))?;
    // Room for a server's whole window (up to 64 datagrams of 64 KiB in a
    // GSO burst) while the receiving thread waits for the relay's lock: a
    // datagram the kernel drops here would be a fault nobody drew. (Capped
    // by net.core.rmem_max; best effort.)
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(RECV_BUFFER);
    Ok(Arc::new(s))
}

impl Shared {
    fn expired(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.start.elapsed() >= self.cfg.max_lifetime
    }

    fn event(
        &self,
        st: &mut State,
        dir: Dir,
        what: Happened,
        flow: usize,
        bytes: &[u8],
        reordered: bool,
    ) {
        let keep = if bytes.len() >= 2 && u16::from_be_bytes([bytes[0], bytes[1]]) == OP_DATA {
            4
        } else {
            TRACE_HEAD_OTHER
        };
        let f = &st.flows[flow];
        let ev = TraceEvent {
            at: self.start.elapsed(),
            dir,
            what,
            flow,
            client: f.client,
            server: f.server,
            len: bytes.len(),
            head: bytes[..bytes.len().min(keep)].to_vec(),
            reordered,
        };
        st.trace.push(ev);
    }

    fn flow(&self, st: &mut State, client: SocketAddr, server: SocketAddr) -> usize {
        if let Some(&f) = st.flow_of.get(&(client, server)) {
            return f;
        }
        let n = st.flows.len();
        let mut mix = SplitMix64::new(self.cfg.seed);
        mix.0 ^= n as u64;
        let a = mix.next_u64();
        let b = mix.next_u64();
        st.flows.push(Flow {
            client,
            server,
            rng: [SplitMix64::new(a), SplitMix64::new(b)],
        });
        st.flow_of.insert((client, server), n);
        n
    }

    /// Opens a socket and its receiving thread, within the socket budget.
    fn open(self: &Arc<Self>, st: &mut State, role: Role) -> Option<Arc<UdpSocket>> {
        if st.sockets >= MAX_SOCKETS {
            st.problems
                .push(format!("socket limit ({MAX_SOCKETS}) reached"));
            return None;
        }
        let sock = match bind_loopback() {
            Ok(s) => s,
            Err(e) => {
                st.problems.push(format!("bind: {e}"));
                return None;
            }
        };
        st.sockets += 1;
        let shared = self.clone();
        let s = sock.clone();
        let handle = thread::Builder::new()
            .name("relay-recv".into())
            .spawn(move || shared.receive_loop(&s, role))
            .expect("spawn relay thread");
        self.threads.lock().unwrap().push(handle);
        Some(sock)
    }

    fn upstream(self: &Arc<Self>, st: &mut State, client: SocketAddr) -> Option<Arc<UdpSocket>> {
        if let Some(s) = st.upstream.get(&client) {
            return Some(s.clone());
        }
        let s = self.open(st, Role::Upstream { client })?;
        st.upstream.insert(client, s.clone());
        Some(s)
    }

    fn downstream(
        self: &Arc<Self>,
        st: &mut State,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Option<Arc<UdpSocket>> {
        if server == self.service {
            return Some(self.main.clone());
        }
        if let Some(s) = st.downstream.get(&(client, server)) {
            return Some(s.clone());
        }
        let s = self.open(st, Role::Downstream { server })?;
        st.downstream.insert((client, server), s.clone());
        Some(s)
    }

    fn receive_loop(self: Arc<Self>, sock: &UdpSocket, role: Role) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        // Bounded: at most one iteration per datagram or per POLL.
        let max_iterations = self.cfg.max_datagrams
            + self.cfg.max_lifetime.as_millis() as u64 / POLL.as_millis() as u64
            + 16;
        for _ in 0..max_iterations {
            if self.expired() {
                return;
            }
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) => {
                    // E.g. ECONNREFUSED after sending to a port that closed
                    // (a client that has finished): not fatal to a relay.
                    let mut st = self.state.lock().unwrap();
                    st.counters.errors += 1;
                    if st.problems.len() < 20 {
                        st.problems.push(format!("recv: {e}"));
                    }
                    drop(st);
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            let bytes = &buf[..n];
            let mut st = self.state.lock().unwrap();
            st.datagrams += 1;
            if st.datagrams > self.cfg.max_datagrams {
                drop(st);
                self.stop.store(true, Ordering::Relaxed);
                self.wake.notify_all();
                return;
            }
            let route = match role {
                Role::Main => self
                    .upstream(&mut st, from)
                    .map(|s| (Dir::ToServer, from, self.service, s, self.service)),
                Role::Downstream { server } => self
                    .upstream(&mut st, from)
                    .map(|s| (Dir::ToServer, from, server, s, server)),
                Role::Upstream { client } => self
                    .downstream(&mut st, client, from)
                    .map(|s| (Dir::ToClient, client, from, s, client)),
            };
            match route {
                Some((dir, client, server, out, dest)) => {
                    let flow = self.flow(&mut st, client, server);
                    self.schedule(&mut st, dir, flow, out, dest, bytes);
                    drop(st);
                    self.wake.notify_all();
                }
                None => st.counters.errors += 1,
            }
        }
    }

    /// Applies the faults to one datagram and queues its copies.
    fn schedule(
        &self,
        st: &mut State,
        dir: Dir,
        flow: usize,
        out: Arc<UdpSocket>,
        dest: SocketAddr,
        bytes: &[u8],
    ) {
        self.event(st, dir, Happened::Received, flow, bytes, false);
        st.counters.dir_mut(dir).received += 1;
        let f = *self.cfg.faults(dir);
        let rng = &mut st.flows[flow].rng[dir.index()];
        let copies = if rng.chance(f.duplicate) { 2 } else { 1 };
        let mut plan = Vec::with_capacity(2);
        for _ in 0..copies {
            if rng.chance(f.loss) {
                plan.push(None);
                continue;
            }
            let lo = (f.delay - f.jitter).as_micros() as u64;
            let hi = (f.delay + f.jitter).as_micros() as u64;
            let mut delay = rng.range(lo, hi);
            let reordered = rng.chance(f.reorder);
            if reordered {
                // Lands after everything sent up to one maximal delay later.
                let max = f.max_delay().as_micros() as u64;
                delay += rng.range(max, 2 * max).max(1_000);
            }
            plan.push(Some((Duration::from_micros(delay), reordered)));
        }
        let c = st.counters.dir_mut(dir);
        if copies == 2 {
            c.duplicated += 1;
        }
        let now = Instant::now();
        let shared_bytes = Arc::new(bytes.to_vec());
        for p in plan {
            match p {
                None => {
                    st.counters.dir_mut(dir).lost += 1;
                    self.event(st, dir, Happened::Lost, flow, bytes, false);
                }
                Some((delay, reordered)) => {
                    if reordered {
                        st.counters.dir_mut(dir).reordered += 1;
                    }
                    st.seq += 1;
                    let seq = st.seq;
                    st.queue.push(Reverse(Scheduled {
                        due: now + delay,
                        seq,
                        sock: out.clone(),
                        dest,
                        bytes: shared_bytes.clone(),
                        dir,
                        flow,
                        reordered,
                    }));
                }
            }
        }
    }

    fn deliver_loop(self: Arc<Self>) {
        let max_iterations = 4 * self.cfg.max_datagrams
            + self.cfg.max_lifetime.as_millis() as u64 / POLL.as_millis() as u64
            + 16;
        let mut st = self.state.lock().unwrap();
        for _ in 0..max_iterations {
            if self.expired() {
                return;
            }
            let now = Instant::now();
            while st.queue.peek().is_some_and(|Reverse(s)| s.due <= now) {
                let Reverse(s) = st.queue.pop().unwrap();
                match s.sock.send_to(&s.bytes, s.dest) {
                    Ok(_) => {
                        st.counters.dir_mut(s.dir).delivered += 1;
                        self.event(
                            &mut st,
                            s.dir,
                            Happened::Delivered,
                            s.flow,
                            &s.bytes,
                            s.reordered,
                        );
                    }
                    Err(e) => {
                        st.counters.errors += 1;
                        if st.problems.len() < 20 {
                            st.problems.push(format!("send to {}: {e}", s.dest));
                        }
                    }
                }
            }
            let wait = st
                .queue
                .peek()
                .map_or(POLL, |Reverse(s)| s.due.saturating_duration_since(now))
                .min(POLL);
            st = self.wake.wait_timeout(st, wait).unwrap().0;
        }
    }
}

impl Relay {
    /// Starts a relay in front of the server's service address `server`.
    pub fn start(server: SocketAddr, cfg: RelayConfig) -> Relay {
        assert!(server.is_ipv4(), "the relay binds 127.0.0.1 only");
        let main = bind_loopback().expect("bind relay socket");
        let shared = Arc::new(Shared {
            start: Instant::now(),
            cfg,
            service: server,
            main: main.clone(),
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                queue: BinaryHeap::new(),
                seq: 0,
                flows: Vec::new(),
                flow_of: HashMap::new(),
                upstream: HashMap::new(),
                downstream: HashMap::new(),
                sockets: 1,
                trace: Vec::new(),
                counters: Counters::default(),
                datagrams: 0,
                problems: Vec::new(),
            }),
            wake: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        });
        {
            let s = shared.clone();
            let m = main.clone();
            let h = thread::Builder::new()
                .name("relay-main".into())
                .spawn(move || s.receive_loop(&m, Role::Main))
                .expect("spawn relay thread");
            shared.threads.lock().unwrap().push(h);
        }
        let s = shared.clone();
        let scheduler = thread::Builder::new()
            .name("relay-deliver".into())
            .spawn(move || s.deliver_loop())
            .expect("spawn relay thread");
        Relay {
            shared,
            scheduler: Some(scheduler),
        }
    }

    /// Where clients send their requests.
    pub fn addr(&self) -> SocketAddr {
        self.shared.main.local_addr().unwrap()
    }

    pub fn config(&self) -> &RelayConfig {
        &self.shared.cfg
    }

    pub fn counters(&self) -> Counters {
        self.shared.state.lock().unwrap().counters
    }

    pub fn trace(&self) -> Vec<TraceEvent> {
        self.shared.state.lock().unwrap().trace.clone()
    }

    /// Socket errors and limits met (empty on a clean run).
    pub fn problems(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().problems.clone()
    }

    /// The trace, one event per line.
    pub fn trace_text(&self) -> String {
        let st = self.shared.state.lock().unwrap();
        let mut out = String::new();
        for f in st.flows.iter().enumerate() {
            out.push_str(&format!(
                "# flow {}: client {} <-> server {}\n",
                f.0, f.1.client, f.1.server
            ));
        }
        for ev in &st.trace {
            out.push_str(&ev.to_string());
            out.push('\n');
        }
        out
    }

    /// Classifies every DATA the server emitted (see the module docs).
    pub fn sa_check(&self) -> SaReport {
        let trace = self.trace();
        check_trace(&trace, &self.shared.cfg, self.shared.service)
    }

    /// Stops and joins every thread (also done on drop).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(h) = self.scheduler.take() {
            let _ = h.join();
        }
        // Receiving threads wake within POLL; sockets opened while we join
        // see the stop flag at once.
        for _ in 0..MAX_SOCKETS + 1 {
            let Some(h) = self.shared.threads.lock().unwrap().pop() else {
                break;
            };
            let _ = h.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}
