//! The io_uring layer: one ring with its provided-buffer rings, send pool and
//! fixed-file table, behind a safe API. Every `unsafe` the packet path needs
//! lives in this module, with its safety argument next to it; the shard (and
//! the load generator) only call safe methods.
//!
//! # Owners: why nothing is freed under the kernel
//!
//! Every operation is pushed on behalf of an [`Owner`], a small index that
//! is also the owner's slot in the ring's fixed-file table. The ring counts
//! each owner's operations from the moment they are queued until their final
//! completion is reaped. An owner that is done is [retired](Uring::retire):
//! its receive is cancelled, and only when its count reaches zero is it
//! *settled* — its fixed file cleared, its socket closed, its payload
//! dropped — and reported by [`Uring::release_settled`]. So:
//!
//! - no descriptor is closed (or its number reused) while an SQE naming it is
//!   queued or in flight, and a queued ERROR can never leave from another
//!   transfer's socket;
//! - the bytes a DATA send points into (the owner's payload, a file map)
//!   outlive the send without a reference count per send;
//! - a completion always belongs to the owner's current occupant, so it
//!   needs no generation.
//!
//! # Submissions are never lost
//!
//! `Uring::push` (behind every operation) submits early when the submission queue is full, and if
//! the kernel pushes back (EBUSY/EAGAIN) it moves completions out of the
//! completion queue into a bounded stash, handed out by [`Uring::reap`]
//! before newer ones. The completion queue is sized for every completion
//! that can be outstanding ([`sizes`]), and overflows are counted.
//!
//! # Teardown
//!
//! Dropping a `Uring` cancels every operation, waits (bounded) until each has
//! completed, unregisters the buffer rings, and only then frees memory the
//! kernel wrote into. If an operation never completes, its memory is leaked
//! rather than freed under the kernel.

pub mod bufring;
pub mod send;
pub mod sizes;
pub mod tag;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fixed, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

use crate::proto::wire;
use crate::sys::net::{self, PKTINFO_CONTROL_BYTES};

pub use bufring::{BufRing, BufferMisuse};
pub use send::{GSO_SEGMENTS_MAX, SendDone, gso_segments};
pub use sizes::{Plan, RING_FULL, RING_REDUCED, RingSizes};
use tag::{OpKind, Tag};

/// An index the ring tracks operations for; also its fixed-file slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(u32);

impl Owner {
    pub const fn new(index: u32) -> Owner {
        Owner(index)
    }

    pub const fn index(self) -> u32 {
        self.0
    }
}

/// The provided-buffer groups, one per use, so one use cannot starve
/// another (a request flood cannot take the buffers running transfers
/// receive their ACKs into).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Requests on service sockets (received with packet info).
    Requests = 0,
    /// Transfer sockets whose datagrams are small: every RRQ's ACKs and
    /// ERRORs, and uploads with small blocks.
    Transfers = 1,
    /// Uploads whose DATA does not fit a small buffer.
    Uploads = 2,
}

impl Group {
    const ALL: [Group; 3] = [Group::Requests, Group::Transfers, Group::Uploads];

    fn from_aux(aux: u32) -> Option<Group> {
        Group::ALL.get(aux as usize).copied()
    }

    /// Receives into this group carry the destination address (packet info).
    fn with_pktinfo(self) -> bool {
        self == Group::Requests
    }

    fn overhead_bytes(self) -> usize {
        RECVMSG_OUT_BYTES
            + NAME_BYTES
            + if self.with_pktinfo() {
                PKTINFO_CONTROL_BYTES
            } else {
                0
            }
    }
}

/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags (u32 each).
const RECVMSG_OUT_BYTES: usize = 16;
const NAME_BYTES: usize = std::mem::size_of::<libc::sockaddr_storage>();
/// Requests and small transfer datagrams.
pub const SMALL_BUFFER_BYTES: usize = 2048;
/// Big enough for any DATA, after the receive header.
pub const LARGE_BUFFER_BYTES: usize = RECVMSG_OUT_BYTES + NAME_BYTES + wire::DATAGRAM_BYTES_MAX;
const _: () = assert!(SMALL_BUFFER_BYTES > RECVMSG_OUT_BYTES + NAME_BYTES + 64 + 516);

/// The group a transfer socket receives into when its peer's datagrams are
/// at most `datagram_bytes` long.
pub fn transfer_group(datagram_bytes: usize) -> Group {
    if Group::Transfers.overhead_bytes() + datagram_bytes <= SMALL_BUFFER_BYTES {
        Group::Transfers
    } else {
        Group::Uploads
    }
}

/// Bytes a DATA send points into. Only the address and length are used:
/// the I/O layer never reads them, only the kernel does (see
/// `crate::cache::filemap` for why that matters).
///
/// # Safety
///
/// `base()` must point to `len_bytes()` bytes that stay mapped (readable by
/// the kernel, or at worst faulting into EFAULT) for as long as the value
/// lives, at the same address every time it is asked.
pub unsafe trait Payload: Send + Sync {
    fn base(&self) -> *const u8;
    fn len_bytes(&self) -> u64;

    /// Whether bytes `offset .. offset + len` can be sent without waiting on
    /// a disk (memory always can; a file map asks the page cache).
    fn is_resident(&self, _offset: u64, _len: u64) -> bool {
        true
    }
}

/// Read-ahead asked for a payload at most (an SQE carries a 32-bit length;
/// a boot image's first 128 MiB is what its client reads first).
pub const READAHEAD_BYTES_MAX: u64 = 128 << 20;

/// A received buffer: ours until it is handed back with [`Uring::recycle`],
/// which consumes it. Not `Copy`: it cannot be read after it went back.
#[derive(Debug, PartialEq, Eq)]
pub struct Buffer {
    group: Group,
    id: u16,
    len: usize,
}

impl Buffer {
    pub fn group(&self) -> Group {
        self.group
    }

    /// Bytes the kernel wrote (header, address, control, payload).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Recv(Group),
    Send(SendDone),
    /// The caller's step number.
    Fsync(u32),
    Cancel,
    Wake,
    Nop,
    /// The read-ahead advice for the owner's payload was taken.
    Advise,
}

/// One completion, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    pub owner: Owner,
    pub op: Op,
    pub result: i32,
    /// A multishot receive stays armed (more completions will follow).
    pub more: bool,
    pub buffer: Option<Buffer>,
}

/// A received datagram, parsed in place in its buffer.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub peer: Option<SocketAddr>,
    pub control: &'a [u8],
    pub payload: &'a [u8],
    pub truncated: bool,
}

/// Why a send was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No send slot for it now: retry after completions are reaped.
    NoSlot,
    /// The packet could not be encoded (it is never sent).
    Encode,
    /// The owner has no file installed.
    NoFile,
}

/// The part of a window [`Uring::send_window`] could not queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsent {
    pub first: u64,
    pub count: u16,
    pub error: SendError,
}

/// What the ring saw, for the shard's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Pushes that found the submission queue full and submitted early.
    pub sq_full_submits: u64,
    /// Times the kernel pushed back and completions were stashed.
    pub stashes: u64,
    /// Reaps that found completions held back in the kernel because the
    /// completion queue was full (they are delivered later, in order).
    pub cq_overflows: u64,
    /// Completions the kernel dropped for want of memory to hold them back.
    pub cq_lost: u64,
    /// Receives that found their buffer group empty, by group.
    pub buffers_exhausted: [u64; 3],
    /// Buffer ownership violations caught (always 0 unless a bug).
    pub buffer_misuse: u64,
    /// Completions whose tag made no sense (always 0 unless a bug).
    pub unknown_completions: u64,
    /// Cancels of a receive that had to be asked again.
    pub cancel_retries: u64,
}

#[derive(Default)]
struct OwnerState {
    /// Operations queued or in flight, until their final completion.
    in_flight: u32,
    /// Sends among them.
    sends: u32,
    /// The group of the armed multishot receive.
    recv: Option<Group>,
    retiring: bool,
    file: Option<OwnedFd>,
    payload: Option<Arc<dyn Payload>>,
    /// Descriptors that queued operations name (fsyncs), closed on settle.
    kept: Vec<OwnedFd>,
    /// The peer the file is connected to: sends to it go without a name.
    connected: Option<SocketAddr>,
}

#[derive(Clone, Copy)]
struct RawCqe {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// Pushes retried (each after an early submit) before the ring is declared stuck.
const PUSH_ATTEMPTS_MAX: u32 = 1000;
/// How long teardown waits for cancelled operations to complete.
const TEARDOWN_MS_MAX: u64 = 2000;

pub struct Uring {
    ring: IoUring,
    owners: Box<[OwnerState]>,
    bufs: [BufRing; 3],
    sends: send::SendPool,
    /// The msghdrs multishot receives read their name/control lengths from
    /// (boxed: the kernel reads them at prep time, by address).
    recv_hdr_pktinfo: Box<libc::msghdr>,
    recv_hdr_plain: Box<libc::msghdr>,
    /// Where the armed read of the wake eventfd lands.
    wake_buf: Box<u64>,
    /// Completions taken out of the CQ early, handed out before newer ones.
    stash: VecDeque<RawCqe>,
    stash_max: usize,
    scratch: Vec<RawCqe>,
    in_flight: u64,
    queued_sends: usize,
    overflow_seen: u32,
    settled: Vec<u32>,
    stats: RingStats,
    fatal: Option<io::Error>,
    cq_entries: u32,
    sizes: RingSizes,
    /// Fault injection: early submits still to be refused as if the kernel
    /// said EAGAIN (see [`Uring::inject_submit_refusals`]).
    refuse_submits: u32,
    /// Fault injection: fsync completions are held back this long.
    fsync_delay: Duration,
    held: VecDeque<(Instant, RawCqe)>,
    torn_down: bool,
}

/// Why a ring could not be set up.
#[derive(Debug)]
pub enum SetupError {
    Ring(io::Error),
    Files(io::Error),
    Buffers(io::Error),
    /// More owners than the completion queue can be sized for.
    TooManyOwners(u32),
}

fn recv_msghdr(control_bytes: usize) -> Box<libc::msghdr> {
    // SAFETY: zero is a valid empty msghdr.
    let mut m: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    m.msg_namelen = NAME_BYTES as libc::socklen_t;
    m.msg_controllen = control_bytes;
    m
}

fn new_ring(sq_entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    // One thread submits and reaps: the kernel can skip cross-thread work
    // (measured 15-20 % less CPU per packet). SUBMIT_ALL: one bad SQE does
    // not stop the rest of the batch. Fall back for older kernels.
    builder
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_submit_all()
        .setup_cqsize(cq_entries);
    match builder.build(sq_entries) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(cq_entries)
            .build(sq_entries),
        Err(e) => Err(e),
    }
}

impl Uring {
    /// A ring for `owners` owners at `sizes`.
    pub fn new(sizes: RingSizes, owners: u32) -> Result<Uring, SetupError> {
        if owners == 0 || owners >= tag::OWNERS_MAX {
            return Err(SetupError::TooManyOwners(owners));
        }
        let cq_entries = sizes
            .cq_entries(owners)
            .ok_or(SetupError::TooManyOwners(owners))?;
        let ring = new_ring(sizes.sq_entries, cq_entries).map_err(SetupError::Ring)?;
        ring.submitter()
            .register_files_sparse(owners)
            .map_err(SetupError::Files)?;
        let buf = |group: Group, count: u16, bytes: usize| {
            BufRing::new(&ring, group as u16, count, bytes).map_err(SetupError::Buffers)
        };
        let bufs = [
            buf(Group::Requests, sizes.request_buffers, SMALL_BUFFER_BYTES)?,
            buf(Group::Transfers, sizes.transfer_buffers, SMALL_BUFFER_BYTES)?,
            buf(Group::Uploads, sizes.upload_buffers, LARGE_BUFFER_BYTES)?,
        ];
        let stash_max = cq_entries as usize;
        Ok(Uring {
            ring,
            owners: (0..owners).map(|_| OwnerState::default()).collect(),
            bufs,
            sends: send::SendPool::new(sizes.send_slots),
            recv_hdr_pktinfo: recv_msghdr(PKTINFO_CONTROL_BYTES),
            recv_hdr_plain: recv_msghdr(0),
            wake_buf: Box::new(0),
            stash: VecDeque::with_capacity(stash_max),
            stash_max,
            scratch: Vec::with_capacity(cq_entries as usize),
            in_flight: 0,
            queued_sends: 0,
            overflow_seen: 0,
            settled: Vec::with_capacity(owners as usize),
            stats: RingStats::default(),
            fatal: None,
            cq_entries,
            sizes,
            refuse_submits: 0,
            fsync_delay: Duration::ZERO,
            held: VecDeque::new(),
            torn_down: false,
        })
    }

    pub fn sizes(&self) -> RingSizes {
        self.sizes
    }

    pub fn cq_entries(&self) -> u32 {
        self.cq_entries
    }

    pub fn owners(&self) -> u32 {
        self.owners.len() as u32
    }

    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Operations queued or in flight, all owners together.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// An error that stopped the ring from taking submissions; the owner of
    /// the ring must stop.
    pub fn take_fatal(&mut self) -> Option<io::Error> {
        self.fatal.take()
    }

    fn owner(&self, owner: Owner) -> Option<&OwnerState> {
        self.owners.get(owner.0 as usize)
    }

    fn owner_mut(&mut self, owner: Owner) -> Option<&mut OwnerState> {
        self.owners.get_mut(owner.0 as usize)
    }

    // ----- owners ---------------------------------------------------------

    /// Installs `file` as `owner`'s fixed file. The owner must be free: no
    /// file, nothing in flight, not retiring.
    pub fn install(&mut self, owner: Owner, file: OwnedFd) -> io::Result<()> {
        let Some(state) = self.owner(owner) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        if state.file.is_some() || state.in_flight > 0 || state.retiring {
            debug_assert!(false, "install on busy owner {owner:?}");
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.ring
            .submitter()
            .register_files_update(owner.0, &[file.as_raw_fd()])?;
        if let Some(state) = self.owner_mut(owner) {
            state.file = Some(file);
        }
        Ok(())
    }

    /// Connects `owner`'s installed socket to `peer`: the kernel caches the
    /// route (no lookup per send, early demux on receive) and sends to
    /// `peer` go without a name. Packets from anyone else no longer reach
    /// the socket.
    pub fn connect(&mut self, owner: Owner, peer: SocketAddr) -> io::Result<()> {
        let Some(state) = self.owner_mut(owner) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let Some(file) = &state.file else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        net::connect(file, peer)?;
        state.connected = Some(peer);
        Ok(())
    }

    /// The payload `owner`'s DATA sends point into, kept until it settles.
    pub fn attach_payload(&mut self, owner: Owner, payload: Arc<dyn Payload>) {
        if let Some(state) = self.owner_mut(owner) {
            state.payload = Some(payload);
        }
    }

    /// `owner`'s installed file, for synchronous calls (error queue, options).
    pub fn file(&self, owner: Owner) -> Option<BorrowedFd<'_>> {
        self.owner(owner)?.file.as_ref().map(|f| f.as_fd())
    }

    pub fn is_retiring(&self, owner: Owner) -> bool {
        self.owner(owner).is_some_and(|s| s.retiring)
    }

    pub fn recv_armed(&self, owner: Owner) -> bool {
        self.owner(owner).is_some_and(|s| s.recv.is_some())
    }

    /// Sends of `owner` queued or in flight.
    pub fn owner_sends(&self, owner: Owner) -> u32 {
        self.owner(owner).map_or(0, |s| s.sends)
    }

    /// Ends `owner`: cancels its receive; once its last operation has
    /// completed it settles (see [`Uring::release_settled`]). Sends may
    /// still be queued for it until then (a final ERROR).
    pub fn retire(&mut self, owner: Owner) {
        let Some(state) = self.owner_mut(owner) else {
            return;
        };
        if state.retiring {
            return;
        }
        state.retiring = true;
        let armed = state.recv;
        let idle = state.in_flight == 0;
        if let Some(group) = armed {
            self.cancel_recv(owner, group);
        } else if idle {
            self.settled.push(owner.0);
        }
    }

    fn cancel_recv(&mut self, owner: Owner, group: Group) {
        let target = Tag {
            kind: OpKind::Recv,
            owner: owner.0,
            aux: group as u32,
        };
        let sqe = opcode::AsyncCancel::new(target.encode()).build();
        let _ = self.push(owner, OpKind::Cancel, group as u32, sqe);
    }

    /// Owners whose last operation completed since the last call: their
    /// files are closed and payloads dropped now, and each is free for a new
    /// occupant. Call after handling a batch of completions.
    pub fn release_settled(&mut self, out: &mut Vec<Owner>) {
        out.clear();
        while let Some(index) = self.settled.pop() {
            let Some(state) = self.owners.get_mut(index as usize) else {
                continue;
            };
            // Settled, then given another send in the same batch (it will be
            // listed again when that completes), or listed twice.
            if !state.retiring || state.in_flight > 0 {
                continue;
            }
            if state.file.is_some() {
                // -1 clears the slot; the kernel drops its reference now.
                if let Err(e) = self.ring.submitter().register_files_update(index, &[-1]) {
                    self.fatal.get_or_insert(e);
                }
            }
            *state = OwnerState::default();
            out.push(Owner(index));
        }
    }

    // ----- operations -----------------------------------------------------

    /// Queues `sqe` for `owner`; never drops it (see the module comment).
    /// False only once the ring is stuck (`take_fatal` says why): then
    /// nothing was queued and the caller must not account for it.
    #[must_use]
    fn push(&mut self, owner: Owner, kind: OpKind, aux: u32, sqe: squeue::Entry) -> bool {
        if self.fatal.is_some() {
            return false;
        }
        let sqe = sqe.user_data(
            Tag {
                kind,
                owner: owner.0,
                aux,
            }
            .encode(),
        );
        let mut attempts = 0u32;
        loop {
            // SAFETY: every entry is built by this module, and every pointer
            // it carries points into memory owned by `self` (send slots,
            // msghdrs, buffer rings, the wake buffer) or by the owner's
            // attached payload. None of it is freed before the operation's
            // final completion is reaped: owners settle only at zero
            // operations in flight, and teardown drains the ring first.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                break;
            }
            attempts += 1;
            self.stats.sq_full_submits += 1;
            if attempts > PUSH_ATTEMPTS_MAX {
                self.fatal = Some(io::Error::other(
                    "io_uring submission queue stays full; the kernel takes no submissions",
                ));
                return false;
            }
            self.submit_early();
            if self.fatal.is_some() {
                return false;
            }
        }
        self.in_flight += 1;
        if let Some(state) = self.owner_mut(owner) {
            state.in_flight += 1;
            if kind == OpKind::Send {
                state.sends += 1;
            }
        }
        if kind == OpKind::Send {
            self.queued_sends += 1;
        }
        true
    }

    /// Fault injection for tests: the next `n` early submits (from a push
    /// that found the SQ full) act as if the kernel took nothing and said
    /// EAGAIN, as it does under memory pressure.
    #[doc(hidden)]
    pub fn inject_submit_refusals(&mut self, n: u32) {
        self.refuse_submits = n;
    }

    /// Fault injection for tests: every fsync completion is handed out
    /// `delay` after it arrived, as if the disk were that slow.
    #[doc(hidden)]
    pub fn inject_fsync_delay(&mut self, delay: Duration) {
        self.fsync_delay = delay;
    }

    /// The SQ is full: submit what is there. If the kernel pushes back
    /// because completions are piling up, move them to the stash.
    fn submit_early(&mut self) {
        if self.refuse_submits > 0 {
            // Injected: the kernel took nothing. The push loop tries again.
            self.refuse_submits -= 1;
            self.stats.stashes += 1;
            self.stash_completions();
            return;
        }
        let result = self.ring.submit();
        self.queued_sends = 0;
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                self.stats.stashes += 1;
                self.stash_completions();
                // Let the kernel run its deferred work and post what it can.
                let ts = Timespec::new().nsec(1_000_000);
                let args = SubmitArgs::new().timespec(&ts);
                let _ = self.ring.submitter().submit_with_args(1, &args);
                self.stash_completions();
            }
            Err(e) => self.fatal = Some(e),
        }
    }

    fn stash_completions(&mut self) {
        let room = self.stash_max.saturating_sub(self.stash.len());
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in cq.by_ref().take(room) {
            self.stash.push_back(RawCqe {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// Arms `owner`'s multishot receive into `group`. No-op if one is armed
    /// or the owner is retiring (a cancel is on its way).
    pub fn arm_recv(&mut self, owner: Owner, group: Group) {
        let Some(state) = self.owner(owner) else {
            return;
        };
        if state.recv.is_some() || state.retiring || state.file.is_none() {
            return;
        }
        let hdr: *const libc::msghdr = if group.with_pktinfo() {
            &*self.recv_hdr_pktinfo
        } else {
            &*self.recv_hdr_plain
        };
        let sqe = opcode::RecvMsgMulti::new(Fixed(owner.0), hdr, group as u16).build();
        if self.push(owner, OpKind::Recv, group as u32, sqe)
            && let Some(state) = self.owner_mut(owner)
        {
            state.recv = Some(group);
        }
    }

    /// Sends available to take now.
    pub fn sends_available(&self) -> usize {
        self.sends.available()
    }

    /// Slots kept for control packets: DATA may not take the last of them,
    /// so ACKs, OACKs and ERRORs always find one.
    pub fn control_reserve(&self) -> usize {
        (self.sends.capacity() / 16).max(2)
    }

    /// The most sends one owner may have in flight (a huge window must not
    /// take the whole pool from everyone else).
    pub fn sends_per_owner_max(&self) -> u32 {
        ((self.sends.capacity() / 8).max(1)) as u32
    }

    /// Queues a control packet written by `encode`. `source` sets the source
    /// address of a reply from a wildcard-bound socket.
    pub fn send_control(
        &mut self,
        owner: Owner,
        dest: SocketAddr,
        source: Option<IpAddr>,
        encode: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        if self.owner(owner).is_none_or(|s| s.file.is_none()) {
            return Err(SendError::NoFile);
        }
        let name = self.name_for(owner, dest);
        let slot = self.sends.take().ok_or(SendError::NoSlot)?;
        let Some(msg) = self
            .sends
            .prepare_control(slot, owner.0, name, source, encode)
        else {
            self.sends.untake(slot);
            return Err(SendError::Encode);
        };
        let sqe = opcode::SendMsg::new(Fixed(owner.0), msg).build();
        if !self.push(owner, OpKind::Send, slot, sqe) {
            self.sends.untake(slot);
            return Err(SendError::NoSlot);
        }
        Ok(())
    }

    /// The name a send to `dest` carries: none on a socket connected to it.
    fn name_for(&self, owner: Owner, dest: SocketAddr) -> Option<SocketAddr> {
        let connected = self.owner(owner).and_then(|s| s.connected);
        (connected != Some(dest)).then_some(dest)
    }

    /// Whether `owner`'s payload bytes `offset .. offset + len` are in memory.
    pub fn payload_resident(&self, owner: Owner, offset: u64, len: u64) -> bool {
        self.owner(owner)
            .and_then(|s| s.payload.as_ref())
            .is_none_or(|p| p.is_resident(offset, len))
    }

    /// Asks the kernel to read `owner`'s payload into the page cache, from an
    /// io-wq worker (the shard does not wait for the disk).
    pub fn readahead(&mut self, owner: Owner) {
        let Some(payload) = self.owner(owner).and_then(|s| s.payload.as_ref()) else {
            return;
        };
        let len = payload.len_bytes().min(READAHEAD_BYTES_MAX);
        if len == 0 {
            return;
        }
        let sqe = opcode::Madvise::new(
            payload.base().cast(),
            len as libc::off_t,
            libc::MADV_WILLNEED,
        )
        .build();
        let _ = self.push(owner, OpKind::Advise, 0, sqe);
    }

    /// Queues DATA blocks `first .. first + count` of `owner`'s payload in one
    /// sendmsg (UDP GSO when `count > 1`; at most [`GSO_SEGMENTS_MAX`]).
    /// `in_worker`: the blocks may not be in memory yet, so the send runs
    /// in an io-wq worker (IOSQE_ASYNC) and a page fault there blocks that
    /// worker instead of the ring's thread.
    pub fn send_data(
        &mut self,
        owner: Owner,
        dest: SocketAddr,
        blksize: u16,
        first: u64,
        count: u16,
        in_worker: bool,
    ) -> Result<(), SendError> {
        let reserve = self.control_reserve();
        let per_owner = self.sends_per_owner_max();
        let Some(state) = self.owner(owner) else {
            return Err(SendError::NoFile);
        };
        let (Some(_), Some(payload)) = (&state.file, &state.payload) else {
            return Err(SendError::NoFile);
        };
        if self.sends.available() <= reserve || state.sends >= per_owner {
            return Err(SendError::NoSlot);
        }
        let (base, size) = (payload.base(), payload.len_bytes());
        let name = self.name_for(owner, dest);
        let slot = self.sends.take().ok_or(SendError::NoSlot)?;
        let Some(msg) = self
            .sends
            .prepare_data(slot, owner.0, name, base, size, blksize, first, count)
        else {
            self.sends.untake(slot);
            return Err(SendError::Encode);
        };
        let mut sqe = opcode::SendMsg::new(Fixed(owner.0), msg).build();
        if in_worker {
            sqe = sqe.flags(squeue::Flags::ASYNC);
        }
        if !self.push(owner, OpKind::Send, slot, sqe) {
            self.sends.untake(slot);
            return Err(SendError::NoSlot);
        }
        Ok(())
    }

    /// Queues the window `first .. first + count` as sends of at most
    /// `per_send` blocks each (one GSO `sendmsg` apiece, see
    /// [`Uring::send_data`]). `Err` names the blocks not queued, from the
    /// first that failed, and why.
    #[allow(clippy::too_many_arguments)]
    pub fn send_window(
        &mut self,
        owner: Owner,
        dest: SocketAddr,
        blksize: u16,
        first: u64,
        count: u16,
        per_send: u16,
        in_worker: bool,
    ) -> Result<(), Unsent> {
        let end = first + u64::from(count);
        let per_send = u64::from(per_send.max(1));
        let mut at = first;
        while at < end {
            let n = (end - at).min(per_send) as u16;
            if let Err(error) = self.send_data(owner, dest, blksize, at, n, in_worker) {
                return Err(Unsent {
                    first: at,
                    count: (end - at) as u16,
                    error,
                });
            }
            at += u64::from(n);
        }
        Ok(())
    }

    /// Queues an fsync of `fd` for `owner`; its completion reports `step`.
    /// The ring keeps `fd` (a duplicate of the caller's, say) open until the
    /// owner settles, so the descriptor the SQE names cannot be closed or
    /// reused under it, whatever the caller does with its own.
    pub fn fsync(&mut self, owner: Owner, fd: OwnedFd, step: u32) {
        let sqe = opcode::Fsync::new(io_uring::types::Fd(fd.as_raw_fd())).build();
        if self.push(owner, OpKind::Fsync, step, sqe)
            && let Some(state) = self.owner_mut(owner)
        {
            state.kept.push(fd);
        }
    }

    /// Arms an 8-byte read of the eventfd installed at `owner`.
    pub fn arm_wake(&mut self, owner: Owner) {
        if self.owner(owner).is_none_or(|s| s.file.is_none()) {
            return;
        }
        let buf: *mut u64 = &mut *self.wake_buf;
        // Offset -1: an eventfd has no position to read at.
        let sqe = opcode::Read::new(Fixed(owner.0), buf.cast(), 8)
            .offset(u64::MAX)
            .build();
        let _ = self.push(owner, OpKind::Wake, 0, sqe);
    }

    /// Queues a no-op (tests use it to fill the queues).
    pub fn nop(&mut self, owner: Owner) {
        let _ = self.push(owner, OpKind::Nop, 0, opcode::Nop::new().build());
    }

    /// Sends queued since the last submission.
    pub fn queued_sends(&self) -> usize {
        self.queued_sends
    }

    /// Submits everything queued and waits up to `timeout` for at least one
    /// completion beyond the sends just queued: sends that complete inline
    /// must not end the wait, or a lock-step block would cost two
    /// `io_uring_enter` calls instead of one. With `sends_only` the wait
    /// ends as soon as the sends (or any one completion) are done: a caller
    /// with transmits waiting for send slots must not sleep past them.
    pub fn submit_and_wait(&mut self, timeout: Duration, sends_only: bool) -> io::Result<()> {
        if !self.stash.is_empty() {
            // Completions are waiting already: do not sleep.
            return self.submit();
        }
        let timeout = match self.held.front() {
            Some(&(due, _)) => timeout.min(due.saturating_duration_since(Instant::now())),
            None => timeout,
        };
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        let want = if sends_only {
            self.queued_sends.max(1)
        } else {
            1 + self.queued_sends
        };
        self.queued_sends = 0;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Submits everything queued without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.queued_sends = 0;
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Up to `max` completions into `out` (cleared first): stashed ones
    /// first, then the completion queue. Received buffers are the caller's
    /// until [`Uring::recycle`].
    pub fn reap(&mut self, out: &mut Vec<Completion>, max: usize) {
        out.clear();
        let now = Instant::now();
        while out.len() < max && self.held.front().is_some_and(|&(due, _)| due <= now) {
            if let Some((_, raw)) = self.held.pop_front()
                && let Some(c) = self.complete(raw)
            {
                out.push(c);
            }
        }
        while out.len() < max {
            let Some(raw) = self.stash.pop_front() else {
                break;
            };
            if let Some(c) = self.complete(raw) {
                out.push(c);
            }
        }
        if out.len() >= max {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        if self.ring.submission().cq_overflow() {
            self.stats.cq_overflows += 1;
        }
        {
            let mut cq = self.ring.completion();
            cq.sync();
            let overflow = cq.overflow();
            for cqe in cq.by_ref().take(max - out.len()) {
                scratch.push(RawCqe {
                    user_data: cqe.user_data(),
                    result: cqe.result(),
                    flags: cqe.flags(),
                });
            }
            self.stats.cq_lost += u64::from(overflow.wrapping_sub(self.overflow_seen));
            self.overflow_seen = overflow;
        }
        for &raw in &scratch {
            if !self.fsync_delay.is_zero()
                && Tag::decode(raw.user_data).is_some_and(|t| t.kind == OpKind::Fsync)
            {
                self.held.push_back((now + self.fsync_delay, raw));
                continue;
            }
            if let Some(c) = self.complete(raw) {
                out.push(c);
            }
        }
        self.scratch = scratch;
    }

    /// Accounts one raw completion and decodes it.
    fn complete(&mut self, raw: RawCqe) -> Option<Completion> {
        let Some(tag) = Tag::decode(raw.user_data) else {
            self.stats.unknown_completions += 1;
            return None;
        };
        let more = cqueue::more(raw.flags);
        if tag.kind == OpKind::CancelAll {
            self.in_flight = self.in_flight.saturating_sub(1);
            return None;
        }
        let owner = Owner(tag.owner);
        if !more {
            self.in_flight = self.in_flight.saturating_sub(1);
            let Some(state) = self.owners.get_mut(tag.owner as usize) else {
                self.stats.unknown_completions += 1;
                return None;
            };
            debug_assert!(state.in_flight > 0, "completion for idle owner {owner:?}");
            state.in_flight = state.in_flight.saturating_sub(1);
            if tag.kind == OpKind::Recv {
                state.recv = None;
            }
            if state.retiring && state.in_flight == 0 {
                self.settled.push(tag.owner);
            }
        }
        let op = match tag.kind {
            OpKind::Recv => {
                let Some(group) = Group::from_aux(tag.aux) else {
                    self.stats.unknown_completions += 1;
                    return None;
                };
                if raw.result == -libc::ENOBUFS {
                    self.stats.buffers_exhausted[group as usize] += 1;
                }
                let buffer = cqueue::buffer_select(raw.flags).and_then(|id| {
                    let ring = &mut self.bufs[group as usize];
                    if ring.take(id).is_err() {
                        self.stats.buffer_misuse += 1;
                        return None;
                    }
                    if raw.result < 0 {
                        // No datagram in it: straight back to the kernel.
                        let _ = ring.recycle(id);
                        return None;
                    }
                    Some(Buffer {
                        group,
                        id,
                        len: raw.result as usize,
                    })
                });
                return Some(Completion {
                    owner,
                    op: Op::Recv(group),
                    result: raw.result,
                    more,
                    buffer,
                });
            }
            OpKind::Send => {
                let Some((slot_owner, done)) = self.sends.release(tag.aux) else {
                    self.stats.unknown_completions += 1;
                    return None;
                };
                debug_assert_eq!(slot_owner, tag.owner);
                if let Some(state) = self.owners.get_mut(tag.owner as usize) {
                    state.sends = state.sends.saturating_sub(1);
                }
                Op::Send(done)
            }
            OpKind::Fsync => Op::Fsync(tag.aux),
            OpKind::Cancel => {
                // The cancel found nothing (ENOENT) or raced the receive's
                // own ending (EALREADY). If the receive is still armed, its
                // final completion has not come yet: ask again, or the
                // owner would never settle.
                let still_armed = self
                    .owners
                    .get(tag.owner as usize)
                    .and_then(|s| s.recv)
                    .filter(|_| raw.result < 0 && raw.result != -libc::EALREADY);
                if let Some(group) = still_armed {
                    self.stats.cancel_retries += 1;
                    self.cancel_recv(owner, group);
                }
                Op::Cancel
            }
            OpKind::Wake => Op::Wake,
            OpKind::Nop => Op::Nop,
            OpKind::Advise => Op::Advise,
            OpKind::CancelAll => return None,
        };
        Some(Completion {
            owner,
            op,
            result: raw.result,
            more,
            buffer: None,
        })
    }

    /// The datagram in a received buffer, parsed in place.
    pub fn datagram(&self, buffer: &Buffer) -> Option<Datagram<'_>> {
        let bytes = self.bufs[buffer.group as usize].bytes(buffer.id, buffer.len)?;
        let control_space = if buffer.group.with_pktinfo() {
            PKTINFO_CONTROL_BYTES
        } else {
            0
        };
        parse_recvmsg_out(bytes, NAME_BYTES, control_space)
    }

    /// Gives a received buffer back to the kernel.
    pub fn recycle(&mut self, buffer: Buffer) {
        if self.bufs[buffer.group as usize].recycle(buffer.id).is_err() {
            self.stats.buffer_misuse += 1;
        }
    }

    /// Buffers of `group` the kernel holds now.
    pub fn buffers_in_kernel(&self, group: Group) -> u32 {
        self.bufs[group as usize].kernel_held()
    }

    // ----- teardown -------------------------------------------------------

    /// Cancels everything and waits until every operation has completed or
    /// `TEARDOWN_MS_MAX` has passed. True when nothing is left in flight.
    fn drain(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(TEARDOWN_MS_MAX);
        let mut cancelled = false;
        let mut batch = Vec::with_capacity(256);
        while self.in_flight > 0 && Instant::now() < deadline {
            if !cancelled {
                // Submit what is queued first, so the cancel finds room and
                // comes after everything it is to cancel.
                let _ = self.ring.submit();
                let sqe = opcode::AsyncCancel2::new(CancelBuilder::any())
                    .build()
                    .user_data(
                        Tag {
                            kind: OpKind::CancelAll,
                            owner: 0,
                            aux: 0,
                        }
                        .encode(),
                    );
                // SAFETY: a cancel carries no pointer.
                cancelled = unsafe { self.ring.submission().push(&sqe) }.is_ok();
                if cancelled {
                    self.in_flight += 1;
                }
            }
            let ts = Timespec::new().nsec(10_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap(&mut batch, 256);
            for c in batch.drain(..) {
                if let Some(b) = c.buffer {
                    self.recycle(b);
                }
            }
        }
        self.in_flight == 0
    }

    /// Tears the ring down now (what dropping it does): cancels and drains
    /// every operation, then unregisters the buffer rings. False if
    /// something was still in flight after the bounded wait, in which case
    /// the memory it may use is leaked rather than freed.
    pub fn shutdown(mut self) -> bool {
        self.teardown()
    }

    fn teardown(&mut self) -> bool {
        if self.torn_down {
            return true;
        }
        self.torn_down = true;
        if self.drain() {
            for b in &mut self.bufs {
                let _ = b.unregister(&self.ring);
            }
            return true;
        }
        // Something is still in flight and may write into or read from our
        // memory: leak it rather than free it under the kernel. (Buffer
        // rings left registered leak themselves in their Drop.)
        std::mem::forget(std::mem::replace(&mut self.sends, send::SendPool::new(0)));
        for state in self.owners.iter_mut() {
            std::mem::forget(state.payload.take());
            std::mem::forget(std::mem::take(&mut state.kept));
        }
        std::mem::forget(std::mem::replace(&mut self.recv_hdr_plain, recv_msghdr(0)));
        std::mem::forget(std::mem::replace(
            &mut self.recv_hdr_pktinfo,
            recv_msghdr(0),
        ));
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        false
    }
}

/// A multishot `recvmsg` buffer: the `io_uring_recvmsg_out` header, then
/// `name_space` bytes for the source address, `control_space` bytes of
/// control messages, then the payload. Every length the kernel wrote is
/// checked against the buffer.
fn parse_recvmsg_out(buf: &[u8], name_space: usize, control_space: usize) -> Option<Datagram<'_>> {
    let field = |i: usize| -> Option<usize> {
        let raw: [u8; 4] = buf.get(4 * i..4 * i + 4)?.try_into().ok()?;
        usize::try_from(u32::from_ne_bytes(raw)).ok()
    };
    let (name_len, control_len, payload_len, flags) = (field(0)?, field(1)?, field(2)?, field(3)?);
    let name_at = RECVMSG_OUT_BYTES;
    let control_at = name_at + name_space;
    let payload_at = control_at + control_space;
    let name = buf.get(name_at..name_at + name_len.min(name_space))?;
    let control = buf.get(control_at..control_at + control_len.min(control_space))?;
    let room = buf.len().checked_sub(payload_at)?;
    let payload = buf.get(payload_at..payload_at + payload_len.min(room))?;
    Some(Datagram {
        peer: net::parse_sockaddr(name),
        control,
        payload,
        truncated: payload_len > room || flags & (libc::MSG_TRUNC as usize) != 0,
    })
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.teardown();
        // Then the fields drop in order: the ring first (closing it drops
        // the fixed files), then the buffer rings and the rest.
    }
}
