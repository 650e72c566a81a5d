//! One shard: a pinned thread, one io_uring, its share of the service
//! sockets (SO_REUSEPORT), and the transfers it accepted, each on its own
//! socket. The loop only moves bytes and time; `proto` decides everything.
//!
//! Packet path, in order: `run` (here) waits on the ring → `on_completion`
//! routes by [`Tag`] → `admit.rs` for a new request on a service socket, or
//! `transfer.rs` for a packet to a running transfer → the session's `handle`
//! → `pump` (transfer.rs) turns its transmits into `sendmsg` SQEs, all
//! submitted together on the next turn. `lifecycle.rs` ends transfers
//! (timers, outcomes, shutdown); `setup.rs` sizes the ring; `ring.rs`,
//! `send.rs` and `net.rs` are the buffer rings, the send pool and sockets.

mod admit;
mod lifecycle;
pub mod net;
pub mod ring;
pub mod send;
mod setup;
mod transfer;

pub use setup::{
    RING_FULL, RING_REDUCED, RingSizes, StartError, choose_ring_sizes, describe_ring_error,
    memlock_budget_bytes,
};

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::cache::{FileCache, Root, Source, Upload};
use crate::config::sizes;
use crate::proto::netascii;
use crate::proto::server::{ServerConfig, ServerSession};
use crate::proto::wire;
use crate::stats::ShardCounters;

use ring::{BufferRing, Tag};
use send::SendPool;
use setup::build_rings;

/// Everything a shard needs, built by `main` before the threads start.
pub struct ShardSetup {
    pub index: usize,
    pub service_sockets: Vec<(OwnedFd, SocketAddr)>,
    pub root: Arc<Root>,
    pub cache: Arc<FileCache>,
    pub counters: Arc<ShardCounters>,
    pub shutdown: Arc<AtomicBool>,
    pub server: ServerConfig,
    pub sessions_max: usize,
    pub sessions_per_client_max: u32,
    pub allow_create: bool,
    pub netascii_bytes_max: u64,
    pub grace_ms: u64,
    pub verbose: u8,
    pub ring_sizes: RingSizes,
    /// An eventfd (semaphore mode) that `main` writes once per shard at
    /// shutdown; each shard keeps one read armed on it.
    pub wake_fd: RawFd,
}

const GROUP_SMALL: u16 = 0;
const GROUP_LARGE: u16 = 1;
/// recvmsg_out header + sockaddr_storage + control, before the payload.
const RECV_OVERHEAD_BYTES: usize = 16 + 128 + net::PKTINFO_CONTROL_BYTES;
const LARGE_BUFFER_BYTES: usize = RECV_OVERHEAD_BYTES + wire::DATAGRAM_BYTES_MAX;
const _: () = assert!(sizes::SMALL_BUFFER_BYTES > RECV_OVERHEAD_BYTES + 516);
/// An idle shard still wakes this often (timers are scanned then); a
/// shutdown wakes it at once through the eventfd.
const IDLE_WAKE_MS: u64 = 1000;

struct ServiceSocket {
    fd: OwnedFd,
    addr: SocketAddr,
    armed: bool,
}

/// Where a transfer reads from or writes to.
enum Store {
    Read(Arc<Source>),
    Write {
        upload: Option<Upload>,
        netascii: Option<netascii::Decoder>,
    },
}

struct Slot {
    generation: u32,
    session: ServerSession,
    socket: OwnedFd,
    peer: SocketAddr,
    store: Store,
    request_hash: u64,
    recv_armed: bool,
    /// Ended: waiting for the receive to be cancelled before closing.
    closing: bool,
    gso: bool,
    /// DATA may exceed a small receive buffer: receive from the large group.
    large_buffers: bool,
    /// The upload's fsyncs are in flight; its final ACK waits for them.
    committing: bool,
    started: Instant,
    filename: Box<[u8]>,
}

pub struct Shard {
    // Field order matters: the ring must drop before the buffer rings it
    // registered.
    ring: IoUring,
    small: BufferRing,
    large: BufferRing,
    pool: SendPool,
    service: Vec<ServiceSocket>,
    service_msghdr: Box<libc::msghdr>,
    transfer_msghdr: Box<libc::msghdr>,
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    active: usize,
    by_peer: HashMap<SocketAddr, u32>,
    per_client: HashMap<IpAddr, u32>,
    next_timer_scan: Instant,
    setup: ShardSetup,
    name_scratch: Vec<u8>,
    request_scratch: Vec<u8>,
    decode_scratch: Vec<u8>,
    cqe_batch: Vec<(u64, i32, u32)>,
    draining_since: Option<Instant>,
    /// Sends queued since the last submission.
    sends_queued: usize,
    /// Where the armed read of the shutdown eventfd lands.
    wake_buf: Box<u64>,
}

fn recv_msghdr(control_bytes: usize) -> Box<libc::msghdr> {
    // SAFETY: zero is a valid empty msghdr.
    let mut m: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    m.msg_controllen = control_bytes;
    m
}

impl Shard {
    /// Builds the ring and buffers on the calling (shard) thread.
    pub fn new(mut setup: ShardSetup) -> Result<Shard, StartError> {
        let (ring, small, large) = build_rings(setup.ring_sizes)?;
        let sessions_max = setup.sessions_max.max(1);
        let service = setup
            .service_sockets
            .drain(..)
            .map(|(fd, addr)| ServiceSocket {
                fd,
                addr,
                armed: false,
            })
            .collect();
        Ok(Shard {
            ring,
            small,
            large,
            pool: SendPool::new(sizes::SEND_SLOTS_PER_SHARD),
            service,
            service_msghdr: recv_msghdr(net::PKTINFO_CONTROL_BYTES),
            transfer_msghdr: recv_msghdr(0),
            slots: (0..sessions_max).map(|_| None).collect(),
            generations: vec![0; sessions_max],
            free_slots: (0..sessions_max as u32).rev().collect(),
            active: 0,
            by_peer: HashMap::with_capacity(sessions_max),
            per_client: HashMap::with_capacity(sessions_max),
            next_timer_scan: Instant::now() + Duration::from_millis(IDLE_WAKE_MS),
            setup,
            name_scratch: Vec::with_capacity(1024),
            request_scratch: Vec::with_capacity(sizes::SMALL_BUFFER_BYTES),
            decode_scratch: Vec::with_capacity(usize::from(wire::BLKSIZE_MAX) + 1),
            cqe_batch: Vec::with_capacity(sizes::COMPLETIONS_PER_TURN),
            draining_since: None,
            sends_queued: 0,
            wake_buf: Box::new(0),
        })
    }

    /// Runs until shutdown and the grace period are over.
    pub fn run(mut self) -> io::Result<()> {
        for i in 0..self.service.len() {
            self.arm_service(i);
        }
        let wake_buf: *mut u64 = &mut *self.wake_buf;
        // Offset -1: an eventfd has no position to read at.
        let sqe = opcode::Read::new(types::Fd(self.setup.wake_fd), wake_buf.cast(), 8)
            .offset(u64::MAX)
            .build()
            .user_data(Tag::Wake.encode());
        self.push(sqe);
        loop {
            let now = Instant::now();
            if now >= self.next_timer_scan {
                self.scan_timers(now);
            }
            if self.setup.shutdown.load(Ordering::Relaxed) && self.drain(now) {
                break;
            }
            let wait = self.next_timer_scan.saturating_duration_since(now).clamp(
                Duration::from_millis(1),
                Duration::from_millis(IDLE_WAKE_MS),
            );
            let ts = types::Timespec::new()
                .sec(wait.as_secs())
                .nsec(wait.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            let want = 1 + self.sends_queued;
            self.sends_queued = 0;
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.reap();
        }
        // Let the last ERRORs and ACKs leave.
        let _ = self.ring.submit();
        Ok(())
    }

    /// Handles completions in bounded batches until the queue is empty.
    fn reap(&mut self) {
        loop {
            self.cqe_batch.clear();
            {
                let mut cq = self.ring.completion();
                cq.sync();
                for cqe in cq.by_ref().take(sizes::COMPLETIONS_PER_TURN) {
                    self.cqe_batch
                        .push((cqe.user_data(), cqe.result(), cqe.flags()));
                }
            }
            if self.cqe_batch.is_empty() {
                return;
            }
            let now = Instant::now();
            let batch = std::mem::take(&mut self.cqe_batch);
            for &(user_data, result, flags) in &batch {
                self.on_completion(user_data, result, flags, now);
            }
            self.cqe_batch = batch;
        }
    }

    fn on_completion(&mut self, user_data: u64, result: i32, flags: u32, now: Instant) {
        match Tag::decode(user_data) {
            Some(Tag::ServiceRecv { socket }) => {
                self.on_service_recv(socket as usize, result, flags, now)
            }
            Some(Tag::TransferRecv {
                slot,
                generation,
                large,
            }) => self.on_transfer_recv(slot, generation, large, result, flags, now),
            Some(Tag::Send { send_slot }) => self.on_send_done(send_slot, result),
            Some(Tag::Commit { slot, generation }) => self.on_commit_step(slot, generation, result),
            // A wake only ends the wait; the loop then sees the shutdown flag.
            Some(Tag::Cancel) | Some(Tag::Wake) | None => {}
        }
    }

    // ----- submission helpers -------------------------------------------

    fn push(&mut self, sqe: squeue::Entry) {
        // The SQ is only full when a turn queues more than its entries
        // operations; then submit what is there and go on.
        for _ in 0..2 {
            // SAFETY: every pointer in `sqe` refers to memory that outlives
            // the operation (send slots, boxed msghdrs, buffer rings).
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
            // What was queued is in flight now; its completions may be
            // reaped before the next wait.
            self.sends_queued = 0;
        }
    }

    /// Queues a send. Counted so the next wait asks for one completion more
    /// than the queued sends will produce: a send that completes inline must
    /// not end the wait (that would cost a second io_uring_enter per block).
    fn push_send(&mut self, sqe: squeue::Entry) {
        self.push(sqe);
        self.sends_queued += 1;
    }

    fn arm_service(&mut self, index: usize) {
        let Some(s) = self.service.get_mut(index) else {
            return;
        };
        let sqe = opcode::RecvMsgMulti::new(
            types::Fd(s.fd.as_raw_fd()),
            &*self.service_msghdr,
            GROUP_SMALL,
        )
        .build()
        .user_data(
            Tag::ServiceRecv {
                socket: index as u32,
            }
            .encode(),
        );
        s.armed = true;
        self.push(sqe);
    }

    fn arm_transfer(&mut self, slot_index: u32) {
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        let large = slot.large_buffers;
        let group = if large {
            self.large.group()
        } else {
            self.small.group()
        };
        let tag = Tag::TransferRecv {
            slot: slot_index,
            generation: slot.generation,
            large,
        };
        let sqe = opcode::RecvMsgMulti::new(
            types::Fd(slot.socket.as_raw_fd()),
            &*self.transfer_msghdr,
            group,
        )
        .build()
        .user_data(tag.encode());
        slot.recv_armed = true;
        self.push(sqe);
    }

    /// Returns buffer `bid` of whichever group the completion drew from.
    fn recycle(&mut self, flags: u32, large: bool) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            if large {
                self.large.recycle(bid);
            } else {
                self.small.recycle(bid);
            }
        }
    }
}
