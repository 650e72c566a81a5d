//! Admission and demultiplexing for the service port: what to do with each
//! datagram that arrives there. Like quinn-proto's `Endpoint`, this decides
//! and the shard carries the decision out; the simulation tests apply the
//! same policy, so what they validate is what the server does.
//!
//! The rules, in order:
//! - A truncated datagram, or one that is not a request, is ignored; a
//!   malformed request (opcode 1 or 2) is refused with ERROR 4, other
//!   garbage gets nothing (never reflect what is not a request).
//! - The same request again from a peer with a live session:
//!   - while the session has not heard its peer, the session answers it
//!     (it resends its first reply within its own budget);
//!   - once verified, a repeat is a stale copy (the network delayed or
//!     duplicated it) and is ignored, unless the peer has been silent for
//!     at least `restart_after_silence_ms`: then the client has restarted
//!     (a ROM that rebooted reuses its port) and the request replaces the
//!     session. This holds for a finished upload that is dallying too: its
//!     final ACK may have been lost, and a delayed copy of its WRQ that
//!     replaced it would close the TID its client is still retransmitting
//!     the last block to (the simulation finds that case). tftp-hpa's
//!     `put a` twice from one port is therefore served once the first
//!     upload has been silent for `restart_after_silence_ms`.
//! - Any other request from that peer replaces its session (the UEFI probe
//!   sends ERROR 8 and a new RRQ from the same port; tftp-hpa's `put a`
//!   then `put b` reuses its port).
//! - While draining, new requests are ignored: the service sockets are
//!   closing and a restarted server takes the client's retransmission.
//! - A source (an IPv4 address, an IPv6 /64) opening sessions faster than
//!   its token bucket allows gets no answer: its own retransmission is the
//!   back-off, where an ERROR would end a ROM's boot attempt and give a
//!   spoofer a reflector.
//! - Then the limits: live sessions from one client address, and
//!   unverified ones (the cap bounds what a spoofer can hold, not clients
//!   that answered; a NAT or a load test proves itself at once). The
//!   session being replaced no longer counts.
//! - A full table gives the place of its oldest unverified session (it has
//!   proven nothing) to the new request, so a spoofed flood only churns
//!   among itself while a real client gets in; only a table full of
//!   sessions whose peers answered refuses, at once, with "Server busy".
//!
//! Unproven peers also have a byte budget, per source and in all
//! ([`Endpoint::spend_unverified`]): what a spoofed address can be sent is
//! bounded whatever arrives.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::budget::{Bucket, SourceLimits, Sources};
use super::refusal::Refusal;
use super::sessions::{SessionId, Sessions};
use super::wire::{Packet, Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Live sessions at once.
    pub sessions_max: usize,
    /// Live sessions from one client address at once.
    pub sessions_per_client_max: u32,
    /// Live sessions from one client address whose peer has not answered.
    pub unverified_per_client_max: u32,
    /// A verified session whose peer has been silent this long is replaced
    /// by a repeat of its request (the client restarted); a repeat arriving
    /// sooner is a stale copy and ignored. The server's base retransmit
    /// timeout: far longer than any reordering delay.
    pub restart_after_silence_ms: u64,
    /// New sessions and unproven bytes per source.
    pub sources: SourceLimits,
    /// Sources tracked at once (see [`Sources`]).
    pub sources_max: usize,
    /// Bytes to unproven peers, all sources together.
    pub unverified_bytes_per_s: u64,
    pub unverified_bytes_burst: u64,
}

/// Why a datagram is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Longer than the receive buffer.
    Truncated,
    /// A well-formed TFTP packet that is not a request (DATA, ACK, ERROR,
    /// OACK sent to the service port).
    NotARequest,
    /// Not TFTP at all.
    Garbage,
    /// A delayed copy of the request of a session that is under way.
    StaleRepeat,
    /// The server is shutting down.
    Draining,
    /// The source opens sessions faster than its rate.
    RateLimited,
}

/// What to do with a datagram on the service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Serve it: resolve the file, build the session, insert it — after
    /// retiring `replace` (the peer's own session: it moved on) and `evict`
    /// (the oldest unverified session, whose place is needed).
    Accept {
        request: Request<'a>,
        replace: Option<SessionId>,
        evict: Option<SessionId>,
    },
    /// A repeat of `id`'s request while it waits for its peer: pass it to
    /// the session's `handle_duplicate_request`.
    Repeat(SessionId),
    /// Answer with this ERROR from the service port.
    Refuse(Refusal),
    Ignore(Ignored),
}

#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    draining: bool,
    sources: Sources,
    unverified_bytes: Bucket,
}

impl Endpoint {
    pub fn new(config: EndpointConfig, now: Instant) -> Endpoint {
        Endpoint {
            config,
            draining: false,
            sources: Sources::new(config.sources, config.sources_max),
            unverified_bytes: Bucket::new(
                config.unverified_bytes_per_s,
                config.unverified_bytes_burst,
                now,
            ),
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// From now on new requests are ignored.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// May `bytes` go to the unproven peer at `ip` now? Takes them from its
    /// source's budget and the global one; a transmit refused here is not
    /// sent (for the session it is as if the network lost it).
    pub fn spend_unverified(&mut self, ip: IpAddr, bytes: u64, now: Instant) -> bool {
        self.sources
            .take_bytes(ip, bytes, now, &mut self.unverified_bytes)
    }

    /// Decides what to do with `datagram` from `peer`.
    pub fn decide<'a, T>(
        &mut self,
        sessions: &mut Sessions<T>,
        peer: SocketAddr,
        datagram: &'a [u8],
        truncated: bool,
        now: Instant,
    ) -> Decision<'a> {
        if truncated {
            return Decision::Ignore(Ignored::Truncated);
        }
        let request = match Packet::parse(datagram) {
            Ok(Packet::Request(r)) => r,
            Ok(_) => return Decision::Ignore(Ignored::NotARequest),
            Err(e) if matches!(datagram.get(..2), Some([0, 1]) | Some([0, 2])) => {
                return Decision::Refuse(e.refusal());
            }
            Err(_) => return Decision::Ignore(Ignored::Garbage),
        };
        let existing = sessions.by_peer(peer);
        let mut existing_unverified = false;
        if let Some(id) = existing
            && let Some(entry) = sessions.get(id)
        {
            existing_unverified = !entry.is_verified();
            if entry.request() == datagram {
                if !entry.session.is_verified() {
                    return Decision::Repeat(id);
                }
                let silent_ms = entry.session.last_heard().map_or(u64::MAX, |t| {
                    u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
                });
                if silent_ms < self.config.restart_after_silence_ms {
                    return Decision::Ignore(Ignored::StaleRepeat);
                }
            }
        }
        if self.draining {
            return Decision::Ignore(Ignored::Draining);
        }
        if !self.sources.take_session(peer.ip(), now) {
            return Decision::Ignore(Ignored::RateLimited);
        }
        let replacing = u32::from(existing.is_some());
        let ip = peer.ip();
        if sessions.from_client(ip) - replacing >= self.config.sessions_per_client_max {
            return Decision::Refuse(Refusal::CLIENT_LIMIT);
        }
        if sessions.unverified_from_client(ip) - u32::from(existing_unverified)
            >= self.config.unverified_per_client_max
        {
            return Decision::Refuse(Refusal::CLIENT_LIMIT);
        }
        let live = sessions.live() - replacing as usize;
        let mut evict = None;
        if live >= self.config.sessions_max || !sessions.has_room() {
            // Room only if an unproven session gives its place (and it is
            // not the one being replaced, whose slot is still settling).
            match sessions.oldest_unverified() {
                Some(victim) if Some(victim) != existing && sessions.has_room() => {
                    evict = Some(victim);
                }
                _ => return Decision::Refuse(Refusal::BUSY),
            }
        }
        Decision::Accept {
            request,
            replace: existing,
            evict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::options::NegotiationLimits;
    use crate::proto::refusal::Cause;
    use crate::proto::server::{ServerConfig, ServerSession};
    use crate::proto::transfer::{Outcome, TEST_TIMER};
    use crate::proto::wire::{ErrorCode, Packet};
    use std::time::Duration;

    const CONFIG: EndpointConfig = EndpointConfig {
        sessions_max: 3,
        sessions_per_client_max: 2,
        unverified_per_client_max: 2,
        restart_after_silence_ms: 1000,
        sources: SourceLimits {
            sessions_per_s: 1000,
            sessions_burst: 1000,
            unverified_bytes_per_s: 1 << 20,
            unverified_bytes_burst: 1 << 20,
        },
        sources_max: 64,
        unverified_bytes_per_s: 1 << 20,
        unverified_bytes_burst: 1 << 20,
    };
    const RRQ: &[u8] = b"\x00\x01boot.img\x00octet\x00";
    const RRQ_OTHER: &[u8] = b"\x00\x01other.img\x00octet\x00";

    fn peer(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, host], port))
    }

    fn config() -> ServerConfig {
        ServerConfig {
            negotiation: NegotiationLimits {
                blksize_max: 512,
                windowsize_max: 1,
                upload_bytes_max: 1 << 20,
                refused: crate::proto::options::Refused::NONE,
            },
            timer: TEST_TIMER,
            dally_ms: 10_000,
        }
    }

    /// Carries out an Accept the way a shard does, for a file of 10 blocks.
    fn admit(
        t: &mut Sessions<()>,
        e: &mut Endpoint,
        from: SocketAddr,
        dgram: &[u8],
        now: Instant,
    ) -> SessionId {
        let Decision::Accept {
            request,
            replace,
            evict,
        } = e.decide(t, from, dgram, false, now)
        else {
            panic!("not admitted")
        };
        for (old, outcome) in [(replace, Outcome::Replaced), (evict, Outcome::NoResponse)] {
            if let Some(old) = old {
                t.retire(old, outcome);
            }
        }
        let s = ServerSession::read(&request, 5120, true, &config(), now).unwrap();
        t.insert(from, dgram, s, (), now).unwrap()
    }

    fn verify(t: &mut Sessions<()>, id: SessionId, now: Instant) {
        t.handle(id, &Packet::Ack { block: 1 }, now);
        assert!(t.get(id).unwrap().is_verified());
    }

    fn is_accept(d: &Decision<'_>) -> bool {
        matches!(
            d,
            Decision::Accept {
                replace: None,
                evict: None,
                ..
            }
        )
    }

    fn replaces(d: &Decision<'_>) -> Option<SessionId> {
        match d {
            Decision::Accept { replace, .. } => *replace,
            _ => None,
        }
    }

    #[test]
    fn garbage_is_ignored_and_malformed_requests_refused() {
        let mut t: Sessions<()> = Sessions::new(4);
        let now = Instant::now();
        let mut e = Endpoint::new(CONFIG, now);
        let mut d = |bytes: &'static [u8]| e.decide(&mut t, peer(1, 1), bytes, false, now);
        assert_eq!(d(b"\xff\xff junk"), Decision::Ignore(Ignored::Garbage));
        assert_eq!(d(b""), Decision::Ignore(Ignored::Garbage));
        assert_eq!(
            d(b"\x00\x04\x00\x01"),
            Decision::Ignore(Ignored::NotARequest)
        );
        assert_eq!(
            d(b"\x00\x05\x00\x01x\x00"),
            Decision::Ignore(Ignored::NotARequest)
        );
        let Decision::Refuse(r) = d(b"\x00\x01f\x00mail\x00") else {
            panic!()
        };
        assert_eq!(
            (r.code, r.cause),
            (ErrorCode::IllegalOperation, Cause::Malformed)
        );
        assert!(matches!(d(b"\x00\x02unterminated"), Decision::Refuse(_)));
        assert!(is_accept(&d(RRQ)));
        assert_eq!(
            e.decide(&mut t, peer(1, 1), RRQ, true, now),
            Decision::Ignore(Ignored::Truncated)
        );
    }

    #[test]
    fn a_repeat_is_answered_before_verification_and_ignored_after() {
        let mut t: Sessions<()> = Sessions::new(4);
        let t0 = Instant::now();
        let mut e = Endpoint::new(CONFIG, t0);
        let id = admit(&mut t, &mut e, peer(1, 1000), RRQ, t0);
        assert_eq!(
            e.decide(&mut t, peer(1, 1000), RRQ, false, t0),
            Decision::Repeat(id)
        );
        // The peer ACKs block 1: verified.
        let at = t0 + Duration::from_millis(20);
        verify(&mut t, id, at);
        // A copy of the RRQ delayed in the network arrives now: ignored,
        // the transfer goes on on its TID.
        let later = at + Duration::from_millis(300);
        assert_eq!(
            e.decide(&mut t, peer(1, 1000), RRQ, false, later),
            Decision::Ignore(Ignored::StaleRepeat)
        );
        // The peer has been silent for a retransmit timeout and asks again:
        // it restarted with the same port, so it gets a new session.
        let rebooted = at + Duration::from_millis(1000);
        assert_eq!(
            replaces(&e.decide(&mut t, peer(1, 1000), RRQ, false, rebooted)),
            Some(id)
        );
        // Another request from that port replaces the session at once.
        assert_eq!(
            replaces(&e.decide(&mut t, peer(1, 1000), RRQ_OTHER, false, later)),
            Some(id)
        );
        // From another port it is just another session.
        assert!(is_accept(&e.decide(
            &mut t,
            peer(1, 1001),
            RRQ,
            false,
            later
        )));
    }

    #[test]
    fn the_same_upload_again_waits_for_the_finished_one_to_fall_silent() {
        const WRQ: &[u8] = b"\x00\x02up.bin\x00octet\x00";
        let mut t: Sessions<()> = Sessions::new(4);
        let t0 = Instant::now();
        let mut e = Endpoint::new(CONFIG, t0);
        let Decision::Accept { request, .. } = e.decide(&mut t, peer(1, 7), WRQ, false, t0) else {
            panic!()
        };
        let s = ServerSession::write(&request, &config(), t0).unwrap();
        let id = t.insert(peer(1, 7), WRQ, s, (), t0).unwrap();
        t.handle(
            id,
            &Packet::Data {
                block: 1,
                payload: b"tiny",
            },
            t0,
        );
        // While committing, a copy is stale as for any verified session.
        assert_eq!(
            e.decide(&mut t, peer(1, 7), WRQ, false, t0),
            Decision::Ignore(Ignored::StaleRepeat)
        );
        t.get_mut(id).unwrap().session.commit_done(t0);
        assert!(t.get(id).unwrap().session.is_dallying());
        // Dallying: a copy soon after the last block may be a delayed one,
        // and the client may still be sending the last block again.
        assert_eq!(
            e.decide(
                &mut t,
                peer(1, 7),
                WRQ,
                false,
                t0 + Duration::from_millis(10)
            ),
            Decision::Ignore(Ignored::StaleRepeat)
        );
        // A new `put` of the same name from the same port, a second later.
        let again = e.decide(
            &mut t,
            peer(1, 7),
            WRQ,
            false,
            t0 + Duration::from_millis(1000),
        );
        assert_eq!(replaces(&again), Some(id));
    }

    #[test]
    fn limits_per_client_count_live_and_unverified_sessions_but_not_the_replaced_one() {
        let mut t: Sessions<()> = Sessions::new(8);
        let now = Instant::now();
        let mut e = Endpoint::new(
            EndpointConfig {
                sessions_max: 8,
                sessions_per_client_max: 3,
                unverified_per_client_max: 2,
                ..CONFIG
            },
            now,
        );
        let a = admit(&mut t, &mut e, peer(1, 1), RRQ, now);
        admit(&mut t, &mut e, peer(1, 2), RRQ, now);
        // Two unproven sessions from one address: the cap.
        assert_eq!(
            e.decide(&mut t, peer(1, 3), RRQ, false, now),
            Decision::Refuse(Refusal::CLIENT_LIMIT)
        );
        // One of them answers: room for another unproven one.
        verify(&mut t, a, now);
        admit(&mut t, &mut e, peer(1, 3), RRQ, now);
        // Three live from one address: the other cap.
        assert_eq!(
            e.decide(&mut t, peer(1, 4), RRQ, false, now),
            Decision::Refuse(Refusal::CLIENT_LIMIT)
        );
        // Replacing one of its own sessions stays within both.
        assert!(replaces(&e.decide(&mut t, peer(1, 2), RRQ_OTHER, false, now)).is_some());
    }

    #[test]
    fn a_full_table_gives_the_oldest_unverified_place_to_a_new_request() {
        let mut t: Sessions<()> = Sessions::new(5);
        let now = Instant::now();
        let mut e = Endpoint::new(CONFIG, now);
        let first = admit(&mut t, &mut e, peer(1, 1), RRQ, now);
        let second = admit(&mut t, &mut e, peer(2, 1), RRQ, now);
        let third = admit(&mut t, &mut e, peer(3, 1), RRQ, now);
        verify(&mut t, first, now);
        // Full (3 live). The oldest unproven session is the second.
        let d = e.decide(&mut t, peer(4, 1), RRQ, false, now);
        assert!(
            matches!(d, Decision::Accept { evict: Some(v), replace: None, .. } if v == second),
            "{d:?}"
        );
        admit(&mut t, &mut e, peer(4, 1), RRQ, now);
        assert!(t.get(second).is_some_and(|e| !e.is_live()));
        // Then the third, then the newcomer (oldest first).
        let d = e.decide(&mut t, peer(5, 1), RRQ, false, now);
        assert!(
            matches!(d, Decision::Accept { evict: Some(v), .. } if v == third),
            "{d:?}"
        );
        // All verified: a full table refuses at once.
        let mut t: Sessions<()> = Sessions::new(5);
        for host in 1..=3 {
            let id = admit(&mut t, &mut e, peer(host, 9), RRQ, now);
            verify(&mut t, id, now);
        }
        assert_eq!(
            e.decide(&mut t, peer(6, 1), RRQ, false, now),
            Decision::Refuse(Refusal::BUSY)
        );
    }

    #[test]
    fn a_table_full_of_settling_sessions_is_busy_and_draining_ignores() {
        let mut t: Sessions<()> = Sessions::new(1);
        let now = Instant::now();
        let mut e = Endpoint::new(CONFIG, now);
        let id = admit(&mut t, &mut e, peer(1, 1), RRQ, now);
        t.retire(id, Outcome::Complete);
        // Retired but not yet released: no slot to put a new session in.
        assert_eq!(
            e.decide(&mut t, peer(2, 1), RRQ, false, now),
            Decision::Refuse(Refusal::BUSY)
        );
        t.release(id);
        e.start_draining();
        assert_eq!(
            e.decide(&mut t, peer(2, 1), RRQ, false, now),
            Decision::Ignore(Ignored::Draining)
        );
    }

    #[test]
    fn a_source_over_its_rate_gets_silence_and_unproven_bytes_are_budgeted() {
        let mut t: Sessions<()> = Sessions::new(64);
        let t0 = Instant::now();
        let limits = SourceLimits {
            sessions_per_s: 2,
            sessions_burst: 3,
            unverified_bytes_per_s: 1000,
            unverified_bytes_burst: 1500,
        };
        let mut e = Endpoint::new(
            EndpointConfig {
                sessions_max: 50,
                sessions_per_client_max: 50,
                unverified_per_client_max: 50,
                sources: limits,
                unverified_bytes_burst: 2000,
                ..CONFIG
            },
            t0,
        );
        for port in 1..=3 {
            admit(&mut t, &mut e, peer(1, port), RRQ, t0);
        }
        assert_eq!(
            e.decide(&mut t, peer(1, 4), RRQ, false, t0),
            Decision::Ignore(Ignored::RateLimited)
        );
        assert!(
            is_accept(&e.decide(&mut t, peer(2, 4), RRQ, false, t0)),
            "another source"
        );
        let later = t0 + Duration::from_millis(500);
        assert!(
            is_accept(&e.decide(&mut t, peer(1, 5), RRQ, false, later)),
            "refilled"
        );
        // 1500 bytes for one source, 2000 for all.
        let ip = |n| IpAddr::from([10, 0, 0, n]);
        assert!(e.spend_unverified(ip(1), 1000, t0));
        assert!(!e.spend_unverified(ip(1), 1000, t0), "its own budget");
        assert!(e.spend_unverified(ip(2), 1000, t0));
        assert!(!e.spend_unverified(ip(3), 500, t0), "the global budget");
    }
}
