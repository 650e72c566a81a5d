//! One shard: a pinned thread, one io_uring, its share of the service
//! sockets (SO_REUSEPORT), and the transfers it accepted, each on its own
//! socket. The loop only moves bytes and time; `proto` decides everything.
//!
//! Packet path, in order: `run` waits on the ring → `on_completion` routes by
//! [`Tag`] → `on_service_datagram` (a new request: `admit`) or
//! `on_transfer_datagram` (a packet for a running transfer) → the session's
//! `handle` → `pump` turns its transmits into `sendmsg` SQEs, all submitted
//! together at the top of the next turn.

pub mod net;
pub mod ring;
pub mod send;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::cache::{FileCache, PathRefusal, Root, Source, Upload, UploadError, filemap};
use crate::config::sizes;
use crate::proto::netascii;
use crate::proto::server::{Event, ServerConfig, ServerSession};
use crate::proto::transfer::{Outcome, Transmit};
use crate::proto::wire::{self, ErrorCode, Mode, Packet, Request, RequestKind};
use crate::stats::ShardCounters;

use ring::{BufferRing, Tag};
use send::{Owner, SendPool};

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

/// Why a shard could not start; `main` turns it into one line.
#[derive(Debug)]
pub enum StartError {
    Ring(io::Error),
    Buffers(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Ring(e) => write!(f, "{}", describe_ring_error(e)),
            StartError::Buffers(e) if e.raw_os_error() == Some(libc::ENOMEM) => write!(
                f,
                "cannot register io_uring receive buffers: the locked-memory limit is too low \
                 (RLIMIT_MEMLOCK is {}); raise it with `ulimit -l unlimited`, \
                 LimitMEMLOCK=infinity in the systemd unit, or fewer --cores",
                memlock_limit()
            ),
            StartError::Buffers(e) => write!(f, "cannot register io_uring receive buffers: {e}"),
        }
    }
}

/// The one-line explanation for a failed io_uring setup.
pub fn describe_ring_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "io_uring is not permitted ({e}): check `sysctl kernel.io_uring_disabled` \
             (must be 0, or 1 with this user in kernel.io_uring_group) and the container's \
             seccomp profile, which blocks io_uring by default in Docker and Podman"
        ),
        Some(libc::ENOSYS) => {
            format!("this kernel has no io_uring ({e}): Linux 6.1 or later is needed")
        }
        Some(libc::ENOMEM) => format!(
            "cannot create an io_uring ({e}): the locked-memory limit (RLIMIT_MEMLOCK is {}) \
             may be too low; raise it with `ulimit -l unlimited` or LimitMEMLOCK=infinity",
            memlock_limit()
        ),
        _ => format!("cannot create an io_uring: {e}"),
    }
}

fn memlock_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    }
}

/// Ring and receive-buffer sizes. io_uring pins these pages and charges
/// them to RLIMIT_MEMLOCK (unless CAP_IPC_LOCK): about 120 KiB per shard at
/// full size, about 20 KiB reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSizes {
    sq_entries: u32,
    small_buffers: u16,
    large_buffers: u16,
    /// Locked memory one shard needs at these sizes (measured, rounded up).
    pub memlock_bytes: u64,
}

pub const RING_FULL: RingSizes = RingSizes {
    sq_entries: 512,
    small_buffers: sizes::SMALL_BUFFERS,
    large_buffers: sizes::LARGE_BUFFERS,
    memlock_bytes: 128 << 10,
};
/// What a shard falls back to under a low memlock limit: less batching,
/// same behaviour.
pub const RING_REDUCED: RingSizes = RingSizes {
    sq_entries: 64,
    small_buffers: 128,
    large_buffers: 16,
    memlock_bytes: 32 << 10,
};

/// The locked-memory budget of this process: `None` when unlimited (no
/// limit, or CAP_IPC_LOCK, which exempts io_uring from it).
pub fn memlock_budget_bytes() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
        || has_cap_ipc_lock()
    {
        return None;
    }
    Some(lim.rlim_cur)
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Picks ring sizes that fit `shards` shards in the memlock budget, or
/// explains what to raise.
pub fn choose_ring_sizes(shards: usize) -> Result<RingSizes, String> {
    let Some(budget) = memlock_budget_bytes() else {
        return Ok(RING_FULL);
    };
    let shards = shards.max(1) as u64;
    if budget / shards >= RING_FULL.memlock_bytes {
        return Ok(RING_FULL);
    }
    if budget / shards >= RING_REDUCED.memlock_bytes {
        eprintln!(
            "uftpd: warning: RLIMIT_MEMLOCK is {} KiB, below the {} KiB that {shards} shard(s) \
             need for full-size rings; running with reduced batching (see tuning.md)",
            budget / 1024,
            RING_FULL.memlock_bytes * shards / 1024
        );
        return Ok(RING_REDUCED);
    }
    Err(format!(
        "the locked-memory limit is too low for io_uring: RLIMIT_MEMLOCK is {} KiB, {shards} \
         shard(s) need at least {} KiB ({} KiB for full speed); raise it with `ulimit -l \
         unlimited` or LimitMEMLOCK=infinity in the systemd unit, or use fewer --cores",
        budget / 1024,
        RING_REDUCED.memlock_bytes * shards / 1024,
        RING_FULL.memlock_bytes * shards / 1024
    ))
}

fn new_ring(sq_entries: u32) -> io::Result<IoUring> {
    let cq_entries = sq_entries * 4;
    let mut builder = IoUring::builder();
    // One thread submits and reaps: the kernel can skip cross-thread work
    // (measured 15-20 % less CPU per packet). Fall back for older kernels.
    builder
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(cq_entries);
    match builder.build(sq_entries) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(cq_entries)
            .build(sq_entries),
        Err(e) => Err(e),
    }
}

fn build_rings(sizes: RingSizes) -> Result<(IoUring, BufferRing, BufferRing), StartError> {
    let ring = new_ring(sizes.sq_entries).map_err(StartError::Ring)?;
    let small = BufferRing::new(
        &ring,
        GROUP_SMALL,
        sizes.small_buffers,
        sizes::SMALL_BUFFER_BYTES,
    )
    .map_err(StartError::Buffers)?;
    let large = BufferRing::new(&ring, GROUP_LARGE, sizes.large_buffers, LARGE_BUFFER_BYTES)
        .map_err(StartError::Buffers)?;
    Ok((ring, small, large))
}

fn recv_msghdr(control_bytes: usize) -> Box<libc::msghdr> {
    // SAFETY: zero is a valid empty msghdr.
    let mut m: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    m.msg_controllen = control_bytes;
    m
}

fn request_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
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

    // ----- service sockets: new requests --------------------------------

    fn on_service_recv(&mut self, index: usize, result: i32, flags: u32, now: Instant) {
        let more = cqueue::more(flags);
        if result >= 0 {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.on_service_datagram(index, bid, result as usize, now);
                self.small.recycle(bid);
            }
        } else if result == -libc::ENOBUFS {
            self.setup.counters.receive_buffers_exhausted.inc();
        }
        if !more {
            if let Some(s) = self.service.get_mut(index) {
                s.armed = false;
            }
            if self.draining_since.is_none() {
                self.arm_service(index);
            }
        }
    }

    fn on_service_datagram(&mut self, index: usize, bid: u16, len: usize, now: Instant) {
        let counters = Arc::clone(&self.setup.counters);
        let Some(buf) = self.small.buffer(bid, len) else {
            return;
        };
        let Ok(msg) = io_uring::types::RecvMsgOut::parse(buf, &self.service_msghdr) else {
            return;
        };
        let Some(peer) = net::parse_sockaddr(msg.name_data()) else {
            return;
        };
        let Some(service) = self.service.get(index) else {
            return;
        };
        let local =
            net::parse_pktinfo(msg.control_data(), service.addr.port()).unwrap_or(service.addr);
        counters.packets_received.inc();
        counters.bytes_received.add(msg.payload_data().len() as u64);
        if msg.is_payload_truncated() {
            counters.requests_malformed.inc();
            return;
        }
        // Copy the request out of the receive buffer (into scratch space
        // allocated at start-up) so `admit` can use the whole shard.
        let mut payload = std::mem::take(&mut self.request_scratch);
        payload.clear();
        payload.extend_from_slice(msg.payload_data());
        match Packet::parse(&payload) {
            Ok(Packet::Request(request)) => self.admit(index, peer, local, &request, &payload, now),
            Ok(_) => counters.requests_malformed.inc(), // not a request: ignore, never reflect
            Err(e) => {
                counters.requests_malformed.inc();
                // Answer only what looks like a request; garbage gets nothing.
                if matches!(payload.get(..2), Some([0, 1]) | Some([0, 2])) {
                    self.refuse(index, peer, local, e.error_code(), e.message());
                }
            }
        }
        self.request_scratch = payload;
    }

    /// ERROR from the service socket, from the address the request came to.
    fn refuse(
        &mut self,
        index: usize,
        peer: SocketAddr,
        local: SocketAddr,
        code: ErrorCode,
        message: &str,
    ) {
        if self.setup.verbose >= 2 {
            eprintln!("uftpd: refused {peer}: {message}");
        }
        let Some(service) = self.service.get(index) else {
            return;
        };
        let fd = service.fd.as_raw_fd();
        let source = service.addr.ip().is_unspecified().then_some(local.ip());
        let Some(send_slot) = self.pool.take() else {
            self.setup.counters.send_pool_exhausted.inc();
            return;
        };
        match self
            .pool
            .prepare_control(send_slot, peer, source, None, |buf| {
                wire::encode_error(buf, code, message)
            }) {
            Some(msg) => {
                let sqe = opcode::SendMsg::new(types::Fd(fd), msg)
                    .build()
                    .user_data(Tag::Send { send_slot }.encode());
                self.push_send(sqe);
            }
            None => {
                self.pool.release(send_slot);
            }
        }
    }

    fn admit(
        &mut self,
        index: usize,
        peer: SocketAddr,
        local: SocketAddr,
        request: &Request<'_>,
        raw: &[u8],
        now: Instant,
    ) {
        let counters = Arc::clone(&self.setup.counters);
        match request.kind {
            RequestKind::Read => counters.requests_read.inc(),
            RequestKind::Write => counters.requests_write.inc(),
        }
        let hash = request_hash(raw);
        // A repeat from the same client port: the session that is still
        // waiting for this peer answers it. Anything else from that port
        // replaces the old session (the client has moved on).
        if let Some(&existing) = self.by_peer.get(&peer) {
            if let Some(Some(slot)) = self.slots.get_mut(existing as usize)
                && slot.request_hash == hash
                && !slot.session.is_verified()
            {
                counters.requests_duplicate.inc();
                slot.session.handle_duplicate_request();
                self.pump(existing);
                return;
            }
            self.end_session(existing, None);
        }
        if self.draining_since.is_some() {
            return;
        }
        if self.free_slots.is_empty() {
            counters.sessions_refused_limit.inc();
            self.refuse(
                index,
                peer,
                local,
                ErrorCode::NotDefined,
                "Server busy, try again",
            );
            return;
        }
        let from_client = self.per_client.get(&peer.ip()).copied().unwrap_or(0);
        if from_client >= self.setup.sessions_per_client_max {
            counters.sessions_refused_limit.inc();
            self.refuse(
                index,
                peer,
                local,
                ErrorCode::NotDefined,
                "Too many transfers from this address",
            );
            return;
        }
        let prepared = match request.kind {
            RequestKind::Read => self.prepare_read(request, now),
            RequestKind::Write => self.prepare_write(request, now),
        };
        let (session, store) = match prepared {
            Ok(p) => p,
            Err((code, message)) => {
                counters.sessions_refused.inc();
                self.refuse(index, peer, local, code, message);
                return;
            }
        };
        let socket = match net::transfer_socket(local) {
            Ok(s) => s,
            Err(_) => {
                counters.sessions_refused.inc();
                self.refuse(
                    index,
                    peer,
                    local,
                    ErrorCode::NotDefined,
                    "Cannot open a transfer port",
                );
                return;
            }
        };
        let large_buffers =
            RECV_OVERHEAD_BYTES + wire::HEADER_BYTES + usize::from(session.negotiated().blksize)
                > sizes::SMALL_BUFFER_BYTES;
        let Some(slot_index) = self.free_slots.pop() else {
            return;
        };
        let generation = {
            let g = &mut self.generations[slot_index as usize];
            *g = g.wrapping_add(1);
            *g
        };
        self.slots[slot_index as usize] = Some(Slot {
            generation,
            session,
            socket,
            peer,
            store,
            request_hash: hash,
            recv_armed: false,
            closing: false,
            gso: true,
            large_buffers,
            started: now,
            filename: request.filename.into(),
        });
        self.active += 1;
        self.by_peer.insert(peer, slot_index);
        *self.per_client.entry(peer.ip()).or_insert(0) += 1;
        counters.sessions_accepted.inc();
        self.arm_transfer(slot_index);
        self.pump(slot_index);
    }

    fn prepare_read(
        &mut self,
        request: &Request<'_>,
        now: Instant,
    ) -> Result<(ServerSession, Store), (ErrorCode, &'static str)> {
        let file = self
            .setup
            .root
            .open_read(request.filename, &mut self.name_scratch)
            .map_err(path_error)?;
        let source = match request.mode {
            Mode::Octet => self
                .setup
                .cache
                .get(&file)
                .map_err(|_| (ErrorCode::AccessViolation, "Cannot read file"))?,
            Mode::Netascii => {
                let host = filemap::read_bounded(&file, self.setup.netascii_bytes_max)
                    .map_err(|_| (ErrorCode::AccessViolation, "Cannot read file"))?
                    .ok_or((
                        ErrorCode::NotDefined,
                        "File too large for netascii; use octet",
                    ))?;
                let mut converted = Vec::new();
                netascii::encode(&host, &mut converted);
                Arc::new(Source::Owned(converted))
            }
        };
        let session = ServerSession::read(
            request,
            source.len(),
            request.mode == Mode::Octet,
            &self.setup.server,
            now,
        )
        .map_err(|r| (r.code, r.message))?;
        Ok((session, Store::Read(source)))
    }

    fn prepare_write(
        &mut self,
        request: &Request<'_>,
        now: Instant,
    ) -> Result<(ServerSession, Store), (ErrorCode, &'static str)> {
        if !self.setup.allow_create {
            return Err((ErrorCode::AccessViolation, "Uploads are disabled"));
        }
        // Negotiate first: a tsize over the limit is refused before any file exists.
        let session = ServerSession::write(request, &self.setup.server, now)
            .map_err(|r| (r.code, r.message))?;
        let upload = Upload::begin(
            &self.setup.root,
            request.filename,
            self.setup.server.negotiation.upload_bytes_max,
        )
        .map_err(|e| match e {
            UploadError::Refused(r) => path_error(r),
            UploadError::DiskFull => (ErrorCode::DiskFull, "Disk full or allocation exceeded"),
            UploadError::Io(_) => (ErrorCode::AccessViolation, "Cannot create file"),
        })?;
        let netascii = (request.mode == Mode::Netascii).then(netascii::Decoder::default);
        Ok((
            session,
            Store::Write {
                upload: Some(upload),
                netascii,
            },
        ))
    }

    // ----- transfer sockets ---------------------------------------------

    fn on_transfer_recv(
        &mut self,
        slot_index: u32,
        generation: u32,
        large: bool,
        result: i32,
        flags: u32,
        now: Instant,
    ) {
        let more = cqueue::more(flags);
        let live = matches!(self.slots.get(slot_index as usize), Some(Some(s)) if s.generation == generation);
        if result >= 0 && live {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.on_transfer_datagram(slot_index, bid, large, result as usize, now);
            }
        } else if result == -libc::ENOBUFS {
            self.setup.counters.receive_buffers_exhausted.inc();
        } else if result == -libc::ECONNREFUSED && live {
            self.check_unreachable(slot_index);
        }
        self.recycle(flags, large);
        if !more && live {
            let closing = match self.slots.get_mut(slot_index as usize) {
                Some(Some(slot)) => {
                    slot.recv_armed = false;
                    slot.closing
                }
                _ => return,
            };
            if closing {
                self.free_slot(slot_index);
            } else {
                self.arm_transfer(slot_index);
            }
        }
    }

    fn on_transfer_datagram(
        &mut self,
        slot_index: u32,
        bid: u16,
        large: bool,
        len: usize,
        now: Instant,
    ) {
        let counters = Arc::clone(&self.setup.counters);
        let ring = if large { &self.large } else { &self.small };
        let Some(buf) = ring.buffer(bid, len) else {
            return;
        };
        let Ok(msg) = io_uring::types::RecvMsgOut::parse(buf, &self.transfer_msghdr) else {
            return;
        };
        let Some(from) = net::parse_sockaddr(msg.name_data()) else {
            return;
        };
        let payload = msg.payload_data();
        counters.packets_received.inc();
        counters.bytes_received.add(payload.len() as u64);
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        if slot.closing {
            return;
        }
        let packet = Packet::parse(payload);
        if from != slot.peer {
            // RFC 1350 §4: a stray TID gets ERROR 5; the transfer goes on.
            counters.stray_packets.inc();
            if !matches!(packet, Ok(Packet::Error { .. })) {
                let fd = slot.socket.as_raw_fd();
                let owner = Owner {
                    slot: slot_index,
                    generation: slot.generation,
                };
                self.send_control(
                    fd,
                    from,
                    owner,
                    Transmit::Error {
                        code: ErrorCode::UnknownTid,
                        message: "Unknown transfer ID",
                    },
                );
            }
            return;
        }
        let Ok(packet) = packet else {
            return; // malformed from the peer: ignore, its retransmit will do
        };
        if msg.is_payload_truncated() {
            return;
        }
        let before = duplicates(&slot.session);
        let event = slot.session.handle(&packet, now);
        let after = duplicates(&slot.session);
        counters
            .duplicates_ignored
            .add(after.saturating_sub(before));
        if let (Event::Store { last, .. }, Packet::Data { payload, .. }) = (event, packet)
            && let Err((code, message)) = store_block(slot, payload, last, &mut self.decode_scratch)
        {
            slot.session.abort(code, message);
        }
        self.pump(slot_index);
    }

    fn send_control(&mut self, fd: i32, dest: SocketAddr, owner: Owner, transmit: Transmit) {
        let Some(send_slot) = self.pool.take() else {
            self.setup.counters.send_pool_exhausted.inc();
            return;
        };
        let prepared = self
            .pool
            .prepare_control(send_slot, dest, None, Some(owner), |buf| match transmit {
                Transmit::Error { code, message } => wire::encode_error(buf, code, message),
                Transmit::Ack { block } => wire::encode_ack(buf, block),
                _ => None,
            });
        self.submit_send(fd, send_slot, prepared);
    }

    fn submit_send(&mut self, fd: i32, send_slot: u32, prepared: Option<*const libc::msghdr>) {
        match prepared {
            Some(msg) => {
                let sqe = opcode::SendMsg::new(types::Fd(fd), msg)
                    .build()
                    .user_data(Tag::Send { send_slot }.encode());
                self.push_send(sqe);
            }
            None => {
                self.pool.release(send_slot);
            }
        }
    }

    /// Turns everything the session wants sent into SQEs, then retires the
    /// session if it has ended.
    fn pump(&mut self, slot_index: u32) {
        for _ in 0..4 {
            let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
                return;
            };
            let Some(transmit) = slot.session.poll_transmit() else {
                break;
            };
            let fd = slot.socket.as_raw_fd();
            let peer = slot.peer;
            let owner = Owner {
                slot: slot_index,
                generation: slot.generation,
            };
            match transmit {
                Transmit::Data { first, count } => {
                    let Store::Read(source) = &slot.store else {
                        continue;
                    };
                    let source = Arc::clone(source);
                    let blksize = slot.session.negotiated().blksize;
                    let gso = slot.gso;
                    self.send_blocks(fd, peer, owner, &source, blksize, first, count, gso);
                }
                other => {
                    let Some(send_slot) = self.pool.take() else {
                        self.setup.counters.send_pool_exhausted.inc();
                        continue;
                    };
                    let prepared = {
                        let Some(Some(slot)) = self.slots.get(slot_index as usize) else {
                            return;
                        };
                        self.pool
                            .prepare_control(send_slot, peer, None, Some(owner), |buf| {
                                slot.session.encode_control(other, buf)
                            })
                    };
                    self.submit_send(fd, send_slot, prepared);
                }
            }
        }
        let Some(Some(slot)) = self.slots.get(slot_index as usize) else {
            return;
        };
        if let Some(deadline) = slot.session.poll_timeout() {
            self.next_timer_scan = self.next_timer_scan.min(deadline);
        }
        if let Some(outcome) = slot.session.outcome() {
            self.end_session(slot_index, Some(outcome));
        }
    }

    /// DATA blocks as GSO sends of up to `gso_segments` blocks each (or one
    /// datagram per send when GSO is off for this session).
    #[allow(clippy::too_many_arguments)]
    fn send_blocks(
        &mut self,
        fd: i32,
        peer: SocketAddr,
        owner: Owner,
        source: &Arc<Source>,
        blksize: u16,
        first: u64,
        count: u16,
        gso: bool,
    ) {
        let per_send = if gso {
            send::gso_segments(blksize) as u64
        } else {
            1
        };
        let end = first + u64::from(count);
        let mut at = first;
        while at < end {
            let n = (end - at).min(per_send) as u16;
            let Some(send_slot) = self.pool.take() else {
                // Treated as loss: the retransmit timer covers it.
                self.setup.counters.send_pool_exhausted.inc();
                return;
            };
            let prepared = self
                .pool
                .prepare_data(send_slot, peer, owner, source, blksize, at, n);
            self.submit_send(fd, send_slot, prepared);
            at += u64::from(n);
        }
    }

    fn on_send_done(&mut self, send_slot: u32, result: i32) {
        let counters = Arc::clone(&self.setup.counters);
        let Some(slot) = self.pool.get(send_slot) else {
            return;
        };
        let (owner, blocks, gso, bytes) = (slot.owner, slot.blocks, slot.gso, slot.bytes);
        self.pool.release(send_slot);
        if result >= 0 {
            counters
                .packets_sent
                .add(blocks.map_or(1, |(_, n)| u64::from(n)));
            counters.bytes_sent.add(bytes as u64);
            return;
        }
        counters.send_errors.inc();
        let Some(owner) = owner else { return };
        let Some(Some(slot)) = self.slots.get_mut(owner.slot as usize) else {
            return;
        };
        if slot.generation != owner.generation || slot.closing {
            return;
        }
        match -result {
            // The segment is larger than the path MTU or the device cannot
            // offload: resend these blocks one datagram at a time from now on.
            libc::EINVAL | libc::EIO | libc::EMSGSIZE if gso => {
                slot.gso = false;
                if let (Some((first, count)), Store::Read(source)) = (blocks, &slot.store) {
                    let source = Arc::clone(source);
                    let (fd, peer, blksize) = (
                        slot.socket.as_raw_fd(),
                        slot.peer,
                        slot.session.negotiated().blksize,
                    );
                    self.send_blocks(fd, peer, owner, &source, blksize, first, count, false);
                }
            }
            // An ICMP error is pending on the socket: see whose it is.
            libc::ECONNREFUSED => self.check_unreachable(owner.slot),
            // The file shrank under its map: the kernel's copy faulted.
            libc::EFAULT => {
                slot.session
                    .abort(ErrorCode::NotDefined, "File changed during transfer");
                self.pump(owner.slot);
            }
            // Anything else (ENOBUFS, ECONNREFUSED...) is loss; timers cover it.
            _ => {}
        }
    }

    /// ICMP errors queued on a transfer socket (IP_RECVERR): if one says the
    /// peer's own port is closed, the client has gone and the session ends
    /// now rather than after its whole retry schedule. Errors for other
    /// addresses (an ERROR 5 we sent to a stray port) are discarded.
    fn check_unreachable(&mut self, slot_index: u32) {
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        if slot.closing || !net::peer_port_unreachable(&slot.socket, slot.peer) {
            return;
        }
        slot.session.handle_unreachable();
        self.pump(slot_index);
    }

    // ----- timers and endings -------------------------------------------

    fn scan_timers(&mut self, now: Instant) {
        self.next_timer_scan = now + Duration::from_millis(IDLE_WAKE_MS);
        for index in 0..self.slots.len() as u32 {
            let due = match self.slots.get(index as usize) {
                Some(Some(slot)) if !slot.closing => slot.session.poll_timeout(),
                _ => continue,
            };
            match due {
                Some(deadline) if deadline <= now => {
                    if let Some(Some(slot)) = self.slots.get_mut(index as usize) {
                        slot.session.handle_timeout(now);
                    }
                    self.pump(index);
                }
                Some(deadline) => self.next_timer_scan = self.next_timer_scan.min(deadline),
                None => {}
            }
        }
    }

    /// Retires a session: counts its outcome, settles its upload, and
    /// cancels its receive; the socket closes when the cancel completes.
    fn end_session(&mut self, slot_index: u32, outcome: Option<Outcome>) {
        let counters = Arc::clone(&self.setup.counters);
        let verbose = self.setup.verbose;
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        if slot.closing {
            return;
        }
        slot.closing = true;
        match outcome {
            Some(Outcome::Complete) => counters.transfers_completed.inc(),
            Some(Outcome::CompleteUnconfirmed) => counters.transfers_unconfirmed.inc(),
            Some(Outcome::TimedOut) => counters.failed_timeout.inc(),
            Some(Outcome::NoResponse) => counters.failed_no_response.inc(),
            Some(Outcome::PeerError(_)) => counters.failed_peer_error.inc(),
            Some(Outcome::Unreachable) => counters.failed_unreachable.inc(),
            Some(Outcome::Aborted(_)) | None => counters.failed_aborted.inc(),
        }
        if let Some(sender) = slot.session.sender() {
            counters.blocks_resent.add(sender.counters().blocks_resent);
        }
        if let Store::Write { upload, .. } = &mut slot.store {
            // Dropping an uncommitted upload discards it.
            upload.take();
        }
        if verbose >= 1 {
            eprintln!(
                "uftpd: {} {} {} {}: {} after {} ms",
                match slot.session.kind() {
                    RequestKind::Read => "RRQ",
                    RequestKind::Write => "WRQ",
                },
                String::from_utf8_lossy(&slot.filename),
                if slot.session.kind() == RequestKind::Read {
                    "to"
                } else {
                    "from"
                },
                slot.peer,
                outcome.map_or_else(
                    || "replaced by a new request".to_string(),
                    |o| o.to_string()
                ),
                slot.started.elapsed().as_millis()
            );
        }
        let peer = slot.peer;
        let recv_armed = slot.recv_armed;
        let generation = slot.generation;
        let large = slot.large_buffers;
        if self.by_peer.get(&peer) == Some(&slot_index) {
            self.by_peer.remove(&peer);
        }
        if let Some(n) = self.per_client.get_mut(&peer.ip()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&peer.ip());
            }
        }
        if recv_armed {
            // Cancel before close: the fd must not be reused under a live op.
            let target = Tag::TransferRecv {
                slot: slot_index,
                generation,
                large,
            }
            .encode();
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(Tag::Cancel.encode());
            self.push(sqe);
        } else {
            self.free_slot(slot_index);
        }
    }

    fn free_slot(&mut self, slot_index: u32) {
        if let Some(entry) = self.slots.get_mut(slot_index as usize)
            && entry.take().is_some()
        {
            self.active -= 1;
            self.free_slots.push(slot_index);
        }
    }

    /// Shutdown: stop taking requests, let transfers finish within the
    /// grace period, then end the rest. Returns true when the shard may exit.
    fn drain(&mut self, now: Instant) -> bool {
        let since = *self.draining_since.get_or_insert(now);
        if since == now {
            // Closing the service sockets takes us out of the REUSEPORT group.
            for i in 0..self.service.len() {
                let target = Tag::ServiceRecv { socket: i as u32 }.encode();
                let sqe = opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(Tag::Cancel.encode());
                self.push(sqe);
            }
        }
        // Finished uploads only dally; their files are already in place.
        for index in 0..self.slots.len() as u32 {
            if matches!(self.slots.get(index as usize), Some(Some(s)) if !s.closing && s.session.is_dallying())
            {
                self.end_session(index, Some(Outcome::Complete));
            }
        }
        let live = self.slots.iter().flatten().filter(|s| !s.closing).count();
        if live == 0 {
            return self.active == 0 || now.duration_since(since) > Duration::from_millis(500);
        }
        if now.duration_since(since) > Duration::from_millis(self.setup.grace_ms) {
            for index in 0..self.slots.len() as u32 {
                if let Some(Some(slot)) = self.slots.get_mut(index as usize)
                    && !slot.closing
                {
                    slot.session
                        .abort(ErrorCode::NotDefined, "Server shutting down");
                    self.pump(index);
                }
            }
            return true;
        }
        false
    }
}

fn duplicates(session: &ServerSession) -> u64 {
    session.sender().map_or(0, |s| s.counters().duplicate_acks)
        + session
            .receiver()
            .map_or(0, |r| r.counters().duplicate_blocks)
}

fn path_error(r: PathRefusal) -> (ErrorCode, &'static str) {
    match r {
        PathRefusal::NotFound => (ErrorCode::FileNotFound, "File not found"),
        PathRefusal::AccessViolation => (ErrorCode::AccessViolation, "Access violation"),
    }
}

/// Writes an accepted DATA payload of an upload; commits on the last block.
fn store_block(
    slot: &mut Slot,
    payload: &[u8],
    last: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), (ErrorCode, &'static str)> {
    let Store::Write { upload, netascii } = &mut slot.store else {
        return Ok(());
    };
    let Some(up) = upload.as_mut() else {
        return Ok(());
    };
    let disk_error = |e: UploadError| match e {
        UploadError::DiskFull => (ErrorCode::DiskFull, "Disk full or allocation exceeded"),
        _ => (ErrorCode::NotDefined, "Write failed"),
    };
    match netascii {
        Some(decoder) => {
            decoder.decode(payload, scratch);
            up.write(scratch).map_err(disk_error)?;
            if last {
                decoder.finish(scratch);
                up.write(scratch).map_err(disk_error)?;
            }
        }
        None => up.write(payload).map_err(disk_error)?,
    }
    if last && let Some(up) = upload.take() {
        up.commit().map_err(disk_error)?;
    }
    Ok(())
}
