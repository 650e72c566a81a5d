//! The service port's admission policy and the sessions table, against
//! datagrams from a few peers (two addresses, a few ports each).
//!
//! The target carries out every decision as a shard does (tests/simulation.rs
//! and src/shard/admit.rs): Accept builds a session and inserts it, Replace
//! retires the old one first, Repeat passes the request to the session;
//! sessions get packets on their own TID and timeouts, a session that has
//! ended is retired, and a retired one is released when "its I/O settles"
//! (when the input says so). The table's own invariants are debug-asserted
//! inside `Sessions` (this target is built with debug assertions); on top:
//!
//! - Accept only for a peer without a live session, Replace only of the
//!   peer's own live session, Repeat only to the peer's unverified session
//!   with the very same request bytes, StaleRepeat only for a verified one;
//! - nothing is admitted while draining, the session and per-client limits
//!   hold after every admission, and an admitted request always finds a slot.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uftpd::proto::budget::SourceLimits;
use uftpd::proto::endpoint::{Decision, Endpoint, EndpointConfig, Ignored};
use uftpd::proto::options::NegotiationLimits;
use uftpd::proto::server::{Event, ServerConfig, ServerSession};
use uftpd::proto::sessions::{SessionId, Sessions, Stage};
use uftpd::proto::transfer::{Outcome, TimerConfig};
use uftpd::proto::wire::{Packet, RequestKind};

/// Requests the peers pick from: plain, with options, a WRQ, a refused one.
const REQUESTS: &[&[u8]] = &[
    b"\x00\x01boot.img\x00octet\x00",
    b"\x00\x01boot.img\x00octet\x00tsize\x000\x00",
    b"\x00\x01other.img\x00octet\x00blksize\x001432\x00windowsize\x004\x00",
    b"\x00\x02upload.bin\x00octet\x00",
    b"\x00\x02upload.bin\x00octet\x00tsize\x00999999999999\x00",
    b"\x00\x01small\x00netascii\x00blksize\x004\x00",
    b"\x00\x01small\x00mail\x00",
];

#[derive(Arbitrary, Debug)]
enum Datagram {
    Request(u8),
    /// The exact request of the peer's live session, if it has one.
    Repeat,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A datagram on the service port from peer `from`.
    Service {
        from: u8,
        datagram: Datagram,
        truncated: bool,
    },
    /// A packet on the TID of peer `from`'s live session.
    Ack {
        from: u8,
        block: u16,
    },
    Data {
        from: u8,
        block: u16,
        len: u16,
    },
    Error {
        from: u8,
    },
    Wait(u16),
    /// The I/O of the `n`-th retired session settles: release it.
    Release(u8),
    Drain,
}

#[derive(Arbitrary, Debug)]
struct Input {
    sessions_max: u8,
    spare_slots: u8,
    per_client_max: u8,
    restart_after_silence_ms: u16,
    ops: Vec<Op>,
}

fn peer(n: u8) -> SocketAddr {
    let host = if n & 1 == 0 { 1 } else { 2 };
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, host), 1000 + u16::from(n % 6)))
}

struct Shard {
    endpoint: Endpoint,
    sessions: Sessions<()>,
    config: ServerConfig,
    base: Instant,
    now_ms: u64,
}

impl Shard {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    /// Sends what the session wants (into the void) and retires it once it
    /// has ended, as `Shard::pump` does.
    fn pump(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.get_mut(id) else {
            return;
        };
        if !entry.is_live() {
            return;
        }
        while entry.session.poll_transmit().is_some() {}
        if let Some(outcome) = entry.session.outcome() {
            assert!(self.sessions.retire(id, outcome));
        }
    }

    fn open(&mut self, from: SocketAddr, raw: &[u8]) {
        let Ok(Packet::Request(request)) = Packet::parse(raw) else {
            panic!("admitted a datagram that is not a request")
        };
        let now = self.now();
        let session = match request.kind {
            RequestKind::Read => ServerSession::read(&request, 3000, true, &self.config, now),
            RequestKind::Write => ServerSession::write(&request, &self.config, now),
        };
        let Ok(session) = session else {
            return; // refused with an ERROR
        };
        let id = self
            .sessions
            .insert(from, raw, session, (), now)
            .expect("an admitted request finds a slot");
        self.pump(id);
    }

    fn service(&mut self, from: SocketAddr, raw: &[u8], truncated: bool) {
        let now = self.now();
        let live_before = self.sessions.by_peer(from);
        let decision = self
            .endpoint
            .decide(&mut self.sessions, from, raw, truncated, now);
        if matches!(decision, Decision::Accept { .. }) {
            assert!(!self.endpoint.is_draining(), "admitted while draining");
            assert!(!truncated);
        }
        match decision {
            Decision::Accept {
                replace, evict, ..
            } => {
                assert_eq!(replace, live_before, "Replace of another peer's session");
                if let Some(old) = replace {
                    let entry = self.sessions.get(old).expect("Replace of a gone session");
                    let outcome = entry.session.outcome_if_replaced();
                    assert!(self.sessions.retire(old, outcome));
                }
                if let Some(victim) = evict {
                    assert_ne!(Some(victim), replace);
                    let entry = self.sessions.get(victim).expect("Evict of a gone session");
                    assert!(entry.is_live() && !entry.is_verified(), "evicted a verified session");
                    assert!(self.sessions.retire(victim, Outcome::Evicted));
                }
                self.open(from, raw);
            }
            Decision::Repeat(id) => {
                assert_eq!(Some(id), live_before);
                let entry = self.sessions.get_mut(id).expect("Repeat of a gone session");
                assert_eq!(entry.peer, from);
                assert_eq!(entry.request(), raw);
                assert!(!entry.session.is_verified(), "Repeat to a verified session");
                entry.session.handle_duplicate_request(now);
                self.pump(id);
            }
            Decision::Ignore(Ignored::StaleRepeat) => {
                let id = live_before.expect("a stale repeat of no session");
                let entry = self.sessions.get(id).unwrap();
                assert_eq!(entry.request(), raw);
                assert!(entry.session.is_verified());
            }
            Decision::Ignore(Ignored::Truncated) => assert!(truncated),
            Decision::Ignore(Ignored::Draining) => assert!(self.endpoint.is_draining()),
            Decision::Ignore(_) | Decision::Refuse(_) => {}
        }
        let limits = *self.endpoint.config();
        assert!(self.sessions.live() <= limits.sessions_max);
        for host in [1, 2] {
            let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, host));
            assert!(self.sessions.from_client(ip) <= limits.sessions_per_client_max);
            assert!(self.sessions.unverified_from_client(ip) <= limits.unverified_per_client_max);
        }
        assert!(self.sessions.occupied() <= self.sessions.capacity());
    }

    fn on_transfer_packet(&mut self, from: SocketAddr, packet: &Packet<'_>) {
        let Some(id) = self.sessions.by_peer(from) else {
            return;
        };
        let now = self.now();
        let entry = self.sessions.get(id).unwrap();
        assert!(entry.is_live() && entry.peer == from);
        // Through the table, as the shard does: it notes verification.
        if let Some(Event::Store { last: true, .. }) = self.sessions.handle(id, packet, now) {
            self.sessions.get_mut(id).unwrap().session.commit_done(now);
        }
        self.pump(id);
    }

    fn wait(&mut self, ms: u16) {
        self.now_ms += u64::from(ms);
        let now = self.now();
        let ids: Vec<_> = self.sessions.ids().collect();
        for id in ids {
            let entry = self.sessions.get_mut(id).unwrap();
            if !entry.is_live() {
                continue;
            }
            if entry.session.poll_timeout().is_some_and(|d| d <= now) {
                entry.session.handle_timeout(now);
                self.pump(id);
            }
        }
    }

    fn release(&mut self, n: u8) {
        let retired: Vec<_> = self
            .sessions
            .ids()
            .filter(|&id| {
                matches!(
                    self.sessions.get(id).map(|e| e.stage()),
                    Some(Stage::Retired(_))
                )
            })
            .collect();
        if retired.is_empty() {
            return;
        }
        let id = retired[usize::from(n) % retired.len()];
        assert!(self.sessions.release(id).is_some());
        assert!(
            self.sessions.get(id).is_none(),
            "a released id still resolves"
        );
    }
}

fuzz_target!(|input: Input| {
    let sessions_max = 1 + usize::from(input.sessions_max % 6);
    // New limits come from bits of the existing fields, so the checked-in
    // seeds keep their meaning.
    let config = EndpointConfig {
        sessions_max,
        sessions_per_client_max: 1 + u32::from(input.per_client_max % 4),
        unverified_per_client_max: 1 + u32::from((input.per_client_max >> 2) % 4),
        restart_after_silence_ms: u64::from(input.restart_after_silence_ms),
        sources: SourceLimits {
            sessions_per_s: 1 + u64::from((input.spare_slots >> 2) % 8),
            sessions_burst: 1 + u64::from(input.spare_slots >> 5),
            unverified_bytes_per_s: 4096,
            unverified_bytes_burst: 8192,
        },
        sources_max: 1 + usize::from((input.per_client_max >> 4) % 4),
        unverified_bytes_per_s: 8192,
        unverified_bytes_burst: 16384,
    };
    let base = Instant::now();
    let mut shard = Shard {
        endpoint: Endpoint::new(config, base),
        sessions: Sessions::new(sessions_max + usize::from(input.spare_slots % 3)),
        config: ServerConfig {
            negotiation: NegotiationLimits {
                blksize_max: 1468,
                windowsize_max: 8,
                upload_bytes_max: 1 << 20,
                refused: uftpd::proto::options::Refused::NONE,
            },
            timer: TimerConfig {
                retransmit_ms: 1000,
                retries_max: 2,
                backoff: true,
                unverified_resends_max: Some(1),
                unverified_quiet_waits: 1,
                unverified_retransmit_ms: 1000,
            },
            dally_ms: 2000,
        },
        base,
        now_ms: 0,
    };
    for op in input.ops.iter().take(2048) {
        match op {
            Op::Service {
                from,
                datagram,
                truncated,
            } => {
                let from = peer(*from);
                let raw: Vec<u8> = match datagram {
                    Datagram::Request(i) => REQUESTS[usize::from(*i) % REQUESTS.len()].to_vec(),
                    Datagram::Repeat => match shard.sessions.by_peer(from) {
                        Some(id) => shard.sessions.get(id).unwrap().request().to_vec(),
                        None => continue,
                    },
                    Datagram::Raw(bytes) => bytes.clone(),
                };
                shard.service(from, &raw, *truncated);
            }
            Op::Ack { from, block } => {
                shard.on_transfer_packet(peer(*from), &Packet::Ack { block: *block })
            }
            Op::Data { from, block, len } => {
                let payload = vec![0x5a; usize::from(*len % 1500)];
                shard.on_transfer_packet(
                    peer(*from),
                    &Packet::Data {
                        block: *block,
                        payload: &payload,
                    },
                )
            }
            Op::Error { from } => shard.on_transfer_packet(
                peer(*from),
                &Packet::Error {
                    code: 0,
                    message: b"bye",
                },
            ),
            Op::Wait(ms) => shard.wait(*ms),
            Op::Release(n) => shard.release(*n),
            Op::Drain => shard.endpoint.start_draining(),
        }
    }
});
