//! The sessions table of one shard: a fixed slab of entries, each a server
//! session with the I/O state `T` its shard keeps for it, found by id or by
//! the peer's address.
//!
//! An entry lives in two stages. While **live** it is in the peer index and
//! counts against the limits. [`Sessions::retire`] takes it out of both at
//! once, so the peer can start over; the entry itself stays (holding its
//! socket and file) until the I/O layer says every operation on it has
//! completed and calls [`Sessions::release`]. Ids carry a generation, so an
//! id kept across a release never reaches the slot's next occupant.
//!
//! The table also knows which live sessions have not heard their peer yet
//! (*unverified*: maybe a spoofed address). Packets reach a session through
//! [`Sessions::handle`], which notes the moment its peer first answers; the
//! admission policy limits unverified sessions per client and, when the
//! table is full, gives the oldest unverified one's place to a new request.
//!
//! Invariants, checked in debug builds after every change: the live count
//! equals the peer index's size and the sum of the per-client counts; the
//! unverified counts match the entries; free plus occupied slots equal the
//! capacity.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::server::{Event, ServerSession};
use super::transfer::Outcome;
use super::wire::Packet;

/// A slot index and the generation of its occupant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId {
    index: u32,
    generation: u32,
}

impl SessionId {
    pub fn index(self) -> u32 {
        self.index
    }
}

/// Where an entry is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// In the peer index, counted against the limits.
    Live,
    /// Out of the index, ended with this outcome; its I/O is settling.
    Retired(Outcome),
}

#[derive(Debug)]
pub struct Entry<T> {
    pub peer: SocketAddr,
    /// The request datagram that opened the session, to recognise repeats.
    request: Box<[u8]>,
    pub session: ServerSession,
    pub io: T,
    pub started: Instant,
    stage: Stage,
    /// The table has counted this session's peer as having answered.
    verified: bool,
}

impl<T> Entry<T> {
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn is_live(&self) -> bool {
        self.stage == Stage::Live
    }

    /// The peer has answered (its address is not spoofed).
    pub fn is_verified(&self) -> bool {
        self.verified
    }
}

/// Why [`Sessions::insert`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    Full,
    PeerHasSession,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    entry: Option<Entry<T>>,
}

#[derive(Debug)]
pub struct Sessions<T> {
    slots: Box<[Slot<T>]>,
    /// Free slot indices, most recently freed last.
    free: Vec<u32>,
    by_peer: HashMap<SocketAddr, u32>,
    per_client: HashMap<IpAddr, u32>,
    live: usize,
    /// Live sessions whose peer has not answered, in all and per client.
    unverified: usize,
    unverified_per_client: HashMap<IpAddr, u32>,
    /// Sessions in the order they were inserted, to find the oldest
    /// unverified one; entries that were verified or retired since are
    /// skipped (and dropped) lazily.
    unverified_order: VecDeque<SessionId>,
}

impl<T> Sessions<T> {
    pub fn new(capacity: usize) -> Sessions<T> {
        let capacity = capacity.max(1);
        Sessions {
            slots: (0..capacity)
                .map(|_| Slot {
                    generation: 0,
                    entry: None,
                })
                .collect(),
            free: (0..capacity as u32).rev().collect(),
            by_peer: HashMap::with_capacity(capacity),
            per_client: HashMap::with_capacity(capacity),
            live: 0,
            unverified: 0,
            unverified_per_client: HashMap::with_capacity(capacity),
            unverified_order: VecDeque::with_capacity(capacity),
        }
    }

    /// Live sessions whose peer has not answered yet.
    pub fn unverified(&self) -> usize {
        self.unverified
    }

    /// Live unverified sessions from this client address.
    pub fn unverified_from_client(&self, ip: IpAddr) -> u32 {
        self.unverified_per_client.get(&ip).copied().unwrap_or(0)
    }

    /// The live unverified session inserted longest ago.
    pub fn oldest_unverified(&mut self) -> Option<SessionId> {
        while let Some(&id) = self.unverified_order.front() {
            if self.get(id).is_some_and(|e| e.is_live() && !e.verified) {
                return Some(id);
            }
            self.unverified_order.pop_front();
        }
        None
    }

    /// Hands a packet from the peer to session `id` (see
    /// [`ServerSession::handle`]), noting when its peer first answers.
    pub fn handle(&mut self, id: SessionId, packet: &Packet<'_>, now: Instant) -> Option<Event> {
        let entry = self.get_mut(id)?;
        let event = entry.session.handle(packet, now);
        if !entry.verified && entry.is_live() && entry.session.is_verified() {
            entry.verified = true;
            let ip = entry.peer.ip();
            self.forget_unverified(ip);
            self.check();
        }
        Some(event)
    }

    fn forget_unverified(&mut self, ip: IpAddr) {
        self.unverified -= 1;
        if let Some(n) = self.unverified_per_client.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.unverified_per_client.remove(&ip);
            }
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Live sessions (in the index).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Slots in use: live sessions and retired ones still settling.
    pub fn occupied(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// A slot is free for [`Sessions::insert`].
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Live sessions from this client address.
    pub fn from_client(&self, ip: IpAddr) -> u32 {
        self.per_client.get(&ip).copied().unwrap_or(0)
    }

    /// The live session of this peer (address and port), if any.
    pub fn by_peer(&self, peer: SocketAddr) -> Option<SessionId> {
        let index = *self.by_peer.get(&peer)?;
        self.id_at(index)
    }

    /// The id of the slot's current occupant.
    pub fn id_at(&self, index: u32) -> Option<SessionId> {
        let slot = self.slots.get(index as usize)?;
        slot.entry.as_ref().map(|_| SessionId {
            index,
            generation: slot.generation,
        })
    }

    pub fn get(&self, id: SessionId) -> Option<&Entry<T>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_ref()
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Entry<T>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_mut()
    }

    /// Every occupied slot's id, in slot order.
    pub fn ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            slot.entry.as_ref().map(|_| SessionId {
                index: i as u32,
                generation: slot.generation,
            })
        })
    }

    /// Adds a live session for `peer`. Fails when no slot is free or the
    /// peer already has a live session (retire that one first).
    pub fn insert(
        &mut self,
        peer: SocketAddr,
        request: &[u8],
        session: ServerSession,
        io: T,
        now: Instant,
    ) -> Result<SessionId, InsertError> {
        if self.by_peer.contains_key(&peer) {
            return Err(InsertError::PeerHasSession);
        }
        let Some(index) = self.free.pop() else {
            return Err(InsertError::Full);
        };
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.entry.is_none());
        slot.generation = slot.generation.wrapping_add(1);
        slot.entry = Some(Entry {
            peer,
            request: request.into(),
            session,
            io,
            started: now,
            stage: Stage::Live,
            verified: false,
        });
        let id = SessionId {
            index,
            generation: slot.generation,
        };
        self.by_peer.insert(peer, index);
        *self.per_client.entry(peer.ip()).or_insert(0) += 1;
        self.live += 1;
        self.unverified += 1;
        *self.unverified_per_client.entry(peer.ip()).or_insert(0) += 1;
        if self.unverified_order.len() >= 2 * self.slots.len() {
            // Mostly stale ids (verified or gone): keep the ones that count.
            let slots = &self.slots;
            self.unverified_order.retain(|id| {
                slots.get(id.index as usize).is_some_and(|s| {
                    s.generation == id.generation
                        && s.entry.as_ref().is_some_and(|e| e.is_live() && !e.verified)
                })
            });
        }
        self.unverified_order.push_back(id);
        self.check();
        Ok(id)
    }

    /// Takes a live session out of the index and the limits, recording how
    /// it ended. False if it was not live (already retired, or gone).
    pub fn retire(&mut self, id: SessionId, outcome: Outcome) -> bool {
        let Some(entry) = self.get_mut(id) else {
            return false;
        };
        if entry.stage != Stage::Live {
            return false;
        }
        entry.stage = Stage::Retired(outcome);
        let peer = entry.peer;
        if !entry.verified {
            self.forget_unverified(peer.ip());
        }
        if self.by_peer.get(&peer) == Some(&id.index) {
            self.by_peer.remove(&peer);
        }
        if let Some(n) = self.per_client.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&peer.ip());
            }
        }
        self.live -= 1;
        self.check();
        true
    }

    /// Frees the slot (retiring the session first if it was live) and hands
    /// back its entry.
    pub fn release(&mut self, id: SessionId) -> Option<Entry<T>> {
        if self.get(id).is_some_and(|e| e.is_live()) {
            self.retire(id, Outcome::Aborted(super::refusal::Refusal::INTERNAL));
        }
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let entry = slot.entry.take()?;
        self.free.push(id.index);
        self.check();
        Some(entry)
    }

    #[cfg(debug_assertions)]
    fn check(&self) {
        assert_eq!(self.live, self.by_peer.len());
        assert_eq!(
            self.live as u64,
            self.per_client.values().map(|&n| u64::from(n)).sum::<u64>()
        );
        let occupied = self.slots.iter().filter(|s| s.entry.is_some()).count();
        let live = self
            .slots
            .iter()
            .filter(|s| s.entry.as_ref().is_some_and(|e| e.is_live()))
            .count();
        let unverified = self
            .slots
            .iter()
            .filter(|s| s.entry.as_ref().is_some_and(|e| e.is_live() && !e.verified))
            .count();
        assert_eq!(occupied + self.free.len(), self.slots.len());
        assert_eq!(live, self.live);
        assert_eq!(unverified, self.unverified);
        assert_eq!(
            self.unverified as u64,
            self.unverified_per_client
                .values()
                .map(|&n| u64::from(n))
                .sum::<u64>()
        );
    }

    #[cfg(not(debug_assertions))]
    fn check(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::options::NegotiationLimits;
    use crate::proto::server::ServerConfig;
    use crate::proto::transfer::TEST_TIMER;
    use crate::proto::wire::{Mode, Request, RequestKind};

    fn session(now: Instant) -> ServerSession {
        let config = ServerConfig {
            negotiation: NegotiationLimits {
                blksize_max: 1468,
                windowsize_max: 8,
                upload_bytes_max: 1 << 20,
                refused: crate::proto::options::Refused::NONE,
            },
            timer: TEST_TIMER,
            dally_ms: 1000,
        };
        let request = Request {
            kind: RequestKind::Read,
            filename: b"f",
            mode: Mode::Octet,
            options: b"",
        };
        ServerSession::read(&request, 100, true, &config, now).unwrap()
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn insert_retire_release_keep_the_index_and_counts_straight() {
        let now = Instant::now();
        let mut t: Sessions<u8> = Sessions::new(2);
        let a = t.insert(peer(1), b"a", session(now), 1, now).unwrap();
        assert!(
            t.insert(peer(1), b"a", session(now), 9, now).is_err(),
            "one live session per peer"
        );
        let b = t.insert(peer(2), b"b", session(now), 2, now).unwrap();
        assert!(
            t.insert(peer(3), b"c", session(now), 3, now).is_err(),
            "full"
        );
        assert_eq!(t.from_client(peer(1).ip()), 2);
        assert_eq!(t.by_peer(peer(1)), Some(a));

        assert!(t.retire(a, Outcome::Complete));
        assert!(!t.retire(a, Outcome::Complete), "retired once");
        assert_eq!((t.live(), t.occupied()), (1, 2));
        assert_eq!(t.by_peer(peer(1)), None, "the peer may start over at once");
        assert_eq!(t.from_client(peer(1).ip()), 1);
        assert!(
            !t.has_room(),
            "the retired entry keeps its slot until released"
        );
        assert_eq!(
            t.get(a).map(|e| e.stage()),
            Some(Stage::Retired(Outcome::Complete))
        );

        assert_eq!(t.release(a).map(|e| e.io), Some(1));
        assert!(t.get(a).is_none());
        let c = t.insert(peer(1), b"c", session(now), 3, now).unwrap();
        assert_eq!(c.index(), a.index(), "the slot is reused");
        assert!(t.get(a).is_none(), "under a new generation");
        assert_eq!(
            t.release(b).map(|e| e.io),
            Some(2),
            "release retires a live one"
        );
        assert_eq!((t.live(), t.occupied()), (1, 1));
        assert_eq!(t.ids().collect::<Vec<_>>(), vec![c]);
    }
}
