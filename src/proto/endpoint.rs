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
//! - Then the limits: sessions per shard, and per client address (the
//!   session being replaced no longer counts).

use std::net::SocketAddr;
use std::time::Instant;

use super::refusal::Refusal;
use super::sessions::{SessionId, Sessions};
use super::wire::{Packet, Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Live sessions at once.
    pub sessions_max: usize,
    /// Live sessions from one client address at once.
    pub sessions_per_client_max: u32,
    /// A verified session whose peer has been silent this long is replaced
    /// by a repeat of its request (the client restarted); a repeat arriving
    /// sooner is a stale copy and ignored. The server's base retransmit
    /// timeout: far longer than any reordering delay.
    pub restart_after_silence_ms: u64,
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
}

/// What to do with a datagram on the service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Serve it: resolve the file, build the session, insert it.
    Accept(Request<'a>),
    /// Retire `old` (its peer has moved on), then serve the request.
    Replace {
        old: SessionId,
        request: Request<'a>,
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
}

impl Endpoint {
    pub fn new(config: EndpointConfig) -> Endpoint {
        Endpoint {
            config,
            draining: false,
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

    /// Decides what to do with `datagram` from `peer`.
    pub fn decide<'a, T>(
        &self,
        sessions: &Sessions<T>,
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
        if let Some(id) = existing
            && let Some(entry) = sessions.get(id)
            && entry.request() == datagram
        {
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
        if self.draining {
            return Decision::Ignore(Ignored::Draining);
        }
        let replacing = u32::from(existing.is_some());
        let live = sessions.live() - replacing as usize;
        if live >= self.config.sessions_max || !sessions.has_room() {
            return Decision::Refuse(Refusal::BUSY);
        }
        if sessions.from_client(peer.ip()) - replacing >= self.config.sessions_per_client_max {
            return Decision::Refuse(Refusal::CLIENT_LIMIT);
        }
        match existing {
            Some(old) => Decision::Replace { old, request },
            None => Decision::Accept(request),
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
        restart_after_silence_ms: 1000,
    };
    const RRQ: &[u8] = b"\x00\x01boot.img\x00octet\x00";
    const RRQ_OTHER: &[u8] = b"\x00\x01other.img\x00octet\x00";

    fn peer(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, host], port))
    }

    /// Carries out an Accept the way a shard does, for a file of 10 blocks.
    fn admit(
        t: &mut Sessions<()>,
        e: &Endpoint,
        from: SocketAddr,
        dgram: &[u8],
        now: Instant,
    ) -> SessionId {
        let request = match e.decide(t, from, dgram, false, now) {
            Decision::Accept(r) => r,
            Decision::Replace { old, request } => {
                t.retire(old, Outcome::Replaced);
                request
            }
            other => panic!("not admitted: {other:?}"),
        };
        let config = ServerConfig {
            negotiation: NegotiationLimits {
                blksize_max: 512,
                windowsize_max: 1,
                upload_bytes_max: 0,
            },
            timer: TEST_TIMER,
            dally_ms: 1000,
        };
        let s = ServerSession::read(&request, 5120, true, &config, now).unwrap();
        t.insert(from, dgram, s, (), now).unwrap()
    }

    #[test]
    fn garbage_is_ignored_and_malformed_requests_refused() {
        let t: Sessions<()> = Sessions::new(4);
        let e = Endpoint::new(CONFIG);
        let now = Instant::now();
        let d = |bytes: &'static [u8]| e.decide(&t, peer(1, 1), bytes, false, now);
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
        assert_eq!(
            e.decide(&t, peer(1, 1), RRQ, true, now),
            Decision::Ignore(Ignored::Truncated)
        );
        assert!(matches!(d(RRQ), Decision::Accept(_)));
    }

    #[test]
    fn a_repeat_is_answered_before_verification_and_ignored_after() {
        let mut t: Sessions<()> = Sessions::new(4);
        let e = Endpoint::new(CONFIG);
        let t0 = Instant::now();
        let id = admit(&mut t, &e, peer(1, 1000), RRQ, t0);
        assert_eq!(
            e.decide(&t, peer(1, 1000), RRQ, false, t0),
            Decision::Repeat(id)
        );
        // The peer ACKs block 1: verified.
        let at = t0 + Duration::from_millis(20);
        t.get_mut(id)
            .unwrap()
            .session
            .handle(&Packet::Ack { block: 1 }, at);
        // A copy of the RRQ delayed in the network arrives now: ignored,
        // the transfer goes on on its TID.
        let later = at + Duration::from_millis(300);
        assert_eq!(
            e.decide(&t, peer(1, 1000), RRQ, false, later),
            Decision::Ignore(Ignored::StaleRepeat)
        );
        // The peer has been silent for a retransmit timeout and asks again:
        // it restarted with the same port, so it gets a new session.
        let rebooted = at + Duration::from_millis(1000);
        assert!(matches!(
            e.decide(&t, peer(1, 1000), RRQ, false, rebooted),
            Decision::Replace { old, .. } if old == id
        ));
        // Another request from that port replaces the session at once.
        assert!(matches!(
            e.decide(&t, peer(1, 1000), RRQ_OTHER, false, later),
            Decision::Replace { old, .. } if old == id
        ));
        // From another port it is just another session.
        assert!(matches!(
            e.decide(&t, peer(1, 1001), RRQ, false, later),
            Decision::Accept(_)
        ));
    }

    #[test]
    fn the_same_upload_again_waits_for_the_finished_one_to_fall_silent() {
        const WRQ: &[u8] = b"\x00\x02up.bin\x00octet\x00";
        let mut t: Sessions<()> = Sessions::new(4);
        let e = Endpoint::new(CONFIG);
        let t0 = Instant::now();
        let config = ServerConfig {
            negotiation: NegotiationLimits {
                blksize_max: 512,
                windowsize_max: 1,
                upload_bytes_max: 1 << 20,
            },
            timer: TEST_TIMER,
            dally_ms: 10_000,
        };
        let Decision::Accept(request) = e.decide(&t, peer(1, 7), WRQ, false, t0) else {
            panic!()
        };
        let s = ServerSession::write(&request, &config, t0).unwrap();
        let id = t.insert(peer(1, 7), WRQ, s, (), t0).unwrap();
        let session = &mut t.get_mut(id).unwrap().session;
        session.handle(
            &Packet::Data {
                block: 1,
                payload: b"tiny",
            },
            t0,
        );
        // While committing, a copy is stale as for any verified session.
        assert_eq!(
            e.decide(&t, peer(1, 7), WRQ, false, t0),
            Decision::Ignore(Ignored::StaleRepeat)
        );
        t.get_mut(id).unwrap().session.commit_done(t0);
        assert!(t.get(id).unwrap().session.is_dallying());
        // Dallying: a copy soon after the last block may be a delayed one,
        // and the client may still be sending the last block again.
        assert_eq!(
            e.decide(&t, peer(1, 7), WRQ, false, t0 + Duration::from_millis(10)),
            Decision::Ignore(Ignored::StaleRepeat)
        );
        // A new `put` of the same name from the same port, a second later.
        assert!(matches!(
            e.decide(&t, peer(1, 7), WRQ, false, t0 + Duration::from_millis(1000)),
            Decision::Replace { old, .. } if old == id
        ));
    }

    #[test]
    fn limits_per_shard_and_per_client_with_the_replaced_session_not_counted() {
        let mut t: Sessions<()> = Sessions::new(8);
        let e = Endpoint::new(CONFIG);
        let now = Instant::now();
        admit(&mut t, &e, peer(1, 1), RRQ, now);
        admit(&mut t, &e, peer(1, 2), RRQ, now);
        assert_eq!(
            e.decide(&t, peer(1, 3), RRQ, false, now),
            Decision::Refuse(Refusal::CLIENT_LIMIT)
        );
        // The same client replacing one of its own sessions is within its limit.
        assert!(matches!(
            e.decide(&t, peer(1, 2), RRQ_OTHER, false, now),
            Decision::Replace { .. }
        ));
        admit(&mut t, &e, peer(2, 1), RRQ, now);
        assert_eq!(
            e.decide(&t, peer(3, 1), RRQ, false, now),
            Decision::Refuse(Refusal::BUSY)
        );
        assert!(matches!(
            e.decide(&t, peer(2, 1), RRQ_OTHER, false, now),
            Decision::Replace { .. }
        ));
    }

    #[test]
    fn a_full_table_of_settling_sessions_is_busy_and_draining_ignores() {
        let mut t: Sessions<()> = Sessions::new(1);
        let mut e = Endpoint::new(CONFIG);
        let now = Instant::now();
        let id = admit(&mut t, &e, peer(1, 1), RRQ, now);
        t.retire(id, Outcome::Complete);
        // Retired but not yet released: no slot to put a new session in.
        assert_eq!(
            e.decide(&t, peer(2, 1), RRQ, false, now),
            Decision::Refuse(Refusal::BUSY)
        );
        t.release(id);
        e.start_draining();
        assert_eq!(
            e.decide(&t, peer(2, 1), RRQ, false, now),
            Decision::Ignore(Ignored::Draining)
        );
    }
}
