//! What a shard keeps for one session besides its protocol state: where the
//! data goes, how it is received and sent, and a transmit that is waiting
//! for a send slot. The session's life (live, retired) is the sessions
//! table's; an upload's commit progress is its receiver's.

use crate::cache::Upload;
use crate::log::Published;
use crate::proto::netascii;
use crate::proto::transfer::Transmit;
use crate::uring::Group;

/// Where a transfer's bytes come from or go to.
pub(super) enum Store {
    /// An RRQ: the file map is attached to the session's owner in the ring,
    /// which keeps it alive until the last send that points into it is done.
    Read,
    /// A WRQ. The upload is dropped (its staging file discarded unless it
    /// was published) once its commit is over, or when the slot is
    /// released; never while an fsync of its files is in flight.
    Write {
        upload: Option<Upload>,
        netascii: Option<netascii::Decoder>,
    },
}

pub(super) struct Slot {
    pub store: Store,
    /// The buffer group the transfer socket receives into.
    pub group: Group,
    /// Windows go out as UDP GSO sends; off after the kernel refused one.
    pub gso: bool,
    /// The file was not all in the page cache at admission: until it is,
    /// a window whose pages are not resident is sent from an io-wq worker
    /// (a page fault there must not stall the shard).
    pub cold: bool,
    /// A transmit the session asked for that did not (wholly) fit the send
    /// pool: it goes out before the session is asked for anything else,
    /// unless the session has something newer, which supersedes it.
    pub owed: Option<Transmit>,
    /// In the shard's queue of sessions waiting for send slots.
    pub waiting: bool,
    /// For the transfer's log line (taken when it is written).
    pub filename: Box<[u8]>,
    /// The transfer's outcome was counted and logged already: an upload is
    /// reported when its final ACK goes out, not after its dally.
    pub reported: bool,
    /// An upload's commit put its file in place: created or replaced.
    pub published: Option<Published>,
}

/// Fsync steps of an upload's commit, carried in the completion.
pub(super) const COMMIT_FILE: u32 = 1;
pub(super) const COMMIT_DIR: u32 = 2;
