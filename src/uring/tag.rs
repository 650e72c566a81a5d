//! What a completion belongs to, packed into the 64-bit `user_data`:
//! `kind (8 bits) | owner (24 bits) | aux (32 bits)`. No generation is
//! needed: an owner index is never reused while an operation of its
//! previous occupant is queued or in flight (see [`super::Uring`]).

/// The kind of operation a completion reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Multishot `recvmsg`; aux is the buffer group.
    Recv = 1,
    /// `sendmsg`; aux is the send slot.
    Send = 2,
    /// `fsync`; aux is the caller's step number.
    Fsync = 3,
    /// `AsyncCancel` of the owner's receive.
    Cancel = 4,
    /// The read armed on the shutdown eventfd.
    Wake = 5,
    /// A no-op (tests use it to fill the queues).
    Nop = 6,
    /// Cancel of every operation, at teardown.
    CancelAll = 7,
    /// `madvise(WILLNEED)` of the owner's payload (read-ahead).
    Advise = 8,
}

const KIND_SHIFT: u32 = 56;
const OWNER_SHIFT: u32 = 32;
/// Owners are 24-bit indices.
pub const OWNERS_MAX: u32 = 1 << 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub kind: OpKind,
    pub owner: u32,
    pub aux: u32,
}

impl Tag {
    pub fn encode(self) -> u64 {
        debug_assert!(self.owner < OWNERS_MAX);
        ((self.kind as u64) << KIND_SHIFT)
            | (u64::from(self.owner & (OWNERS_MAX - 1)) << OWNER_SHIFT)
            | u64::from(self.aux)
    }

    pub fn decode(raw: u64) -> Option<Tag> {
        let kind = match raw >> KIND_SHIFT {
            1 => OpKind::Recv,
            2 => OpKind::Send,
            3 => OpKind::Fsync,
            4 => OpKind::Cancel,
            5 => OpKind::Wake,
            6 => OpKind::Nop,
            7 => OpKind::CancelAll,
            8 => OpKind::Advise,
            _ => return None,
        };
        Some(Tag {
            kind,
            owner: ((raw >> OWNER_SHIFT) as u32) & (OWNERS_MAX - 1),
            aux: raw as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for kind in [
            OpKind::Recv,
            OpKind::Send,
            OpKind::Fsync,
            OpKind::Cancel,
            OpKind::Wake,
            OpKind::Nop,
            OpKind::CancelAll,
            OpKind::Advise,
        ] {
            for (owner, aux) in [(0, 0), (OWNERS_MAX - 1, u32::MAX), (12345, 7)] {
                let tag = Tag { kind, owner, aux };
                assert_eq!(Tag::decode(tag.encode()), Some(tag));
            }
        }
        assert_eq!(Tag::decode(0), None);
        assert_eq!(Tag::decode(u64::MAX), None);
    }
}
