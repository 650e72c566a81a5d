//! One shard: a thread (pinned with --pin), one io_uring, its share of the service
//! sockets (SO_REUSEPORT), and the transfers it accepted, each on its own
//! socket. The loop only moves bytes and time; `proto` decides everything.
//!
//! The packet path, in order:
//! 1. [`Shard::run`] submits what the last turn queued and waits on the ring;
//! 2. `on_completion` (here) routes each completion by its owner;
//! 3. a datagram on a service socket goes to `admit.rs`, where the
//!    [`Endpoint`] decides (accept, replace, repeat, refuse, ignore) and the
//!    shard carries it out; a datagram on a transfer socket goes to
//!    `transfer.rs` and its session's `handle`;
//! 4. `pump` (transfer.rs) turns the session's transmits into sends — GSO
//!    windows straight from the file map — queued for the next submission;
//!    a transmit that finds no send slot waits in `waiting` and resumes
//!    after the next completions.
//!
//! `lifecycle.rs` ends sessions (timers, outcomes, release, shutdown);
//! `setup.rs` sizes the ring; `slot.rs` is the per-session I/O state;
//! `mtu.rs` remembers interface MTUs for the blksize cap. All
//! io_uring work goes through [`crate::uring`].

mod admit;
mod lifecycle;
mod mtu;
mod setup;
mod slot;
mod transfer;

pub use setup::{
    SESSIONS_MIN, ShardPlan, StartError, capacity_for, describe_ring_error, memlock_budget_bytes,
    owners_for, plan,
};

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::cache::{FileCache, Roots, UploadLocks, UploadPolicy};
use crate::log::Logger;
use crate::proto::endpoint::{Endpoint, EndpointConfig};
use crate::proto::server::ServerConfig;
use crate::proto::sessions::Sessions;
use crate::proto::wire;
use crate::remap::{NameMap, SharedNames};
use crate::stats::ShardCounters;
use crate::sys::net::{PortPicker, PortRange};
use crate::sys::process::EventFd;
use crate::uring::{Completion, Group, Op, Owner, RingSizes, Uring};

use slot::Slot;

/// Everything a shard needs, built by `main` before the threads start.
pub struct ShardSetup {
    pub index: usize,
    pub service_sockets: Vec<(OwnedFd, SocketAddr)>,
    pub root: Arc<Roots>,
    pub cache: Arc<FileCache>,
    pub counters: Arc<ShardCounters>,
    pub control: Arc<Control>,
    pub server: ServerConfig,
    /// The admission policy, its limits and budgets (`sessions_max` sizes
    /// the shard's tables).
    pub endpoint: EndpointConfig,
    /// What uploads may do; `None`: every WRQ is refused.
    pub upload: Option<UploadPolicy>,
    /// Names being uploaded, shared by all shards.
    pub upload_locks: Arc<UploadLocks>,
    /// What requested names go through before resolution (remap rules,
    /// clean-ups), shared read-only by all shards; `None`: nothing.
    pub names: Arc<SharedNames>,
    /// Serve files without the o+r bit too (`--permissive`).
    pub permissive: bool,
    /// Send windows as UDP GSO batches (`--no-gso` turns it off).
    pub gso: bool,
    /// Connect each transfer socket to its peer (`--stray-errors` turns
    /// it off, so that strays reach the socket and get ERROR 5).
    pub connect_transfers: bool,
    /// Cap blksize to the MTU of the interface each request came in on
    /// (no `--blksize-max` given).
    pub mtu_cap: bool,
    /// Serve a client from ROOT/ADDRESS/ when it exists (`--per-client-root`).
    pub per_client_root: bool,
    /// Ports transfer sockets bind (`--port-range`); `None`: the kernel's.
    pub port_range: Option<PortRange>,
    pub netascii_bytes_max: u64,
    pub grace_ms: u64,
    /// Where transfer, refusal and request records go (never waited for).
    pub logger: Logger,
    pub ring_sizes: RingSizes,
    /// This shard's own eventfd: `main` writes it after changing the
    /// control state; the shard keeps one read armed on it.
    pub wake: EventFd,
    /// Faults to inject (tests only; `Faults::default()` injects none).
    #[doc(hidden)]
    pub faults: Faults,
}

/// What `main` tells the shards: run, drain (stop taking requests and let
/// transfers finish within the grace period), or hurry (end the grace
/// period now: a second SIGINT/SIGTERM). Shards read it once per turn;
/// after changing it, wake them through their eventfd.
#[derive(Debug, Default)]
pub struct Control(AtomicU8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Draining,
    Hurrying,
}

impl Control {
    pub fn drain(&self) {
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn hurry(&self) {
        self.0.store(2, Ordering::Relaxed);
    }

    pub fn state(&self) -> RunState {
        match self.0.load(Ordering::Relaxed) {
            0 => RunState::Running,
            1 => RunState::Draining,
            _ => RunState::Hurrying,
        }
    }
}

/// Faults a test can make the shard's ring inject.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Hold every fsync completion back this long (a slow disk).
    pub fsync_delay: Duration,
}

/// Completions handled per batch; between batches settled sessions are
/// released and waiting sends resumed.
pub const COMPLETIONS_PER_BATCH: usize = 512;
/// Batches per loop turn, so timers and shutdown are looked at even when
/// completions keep coming.
const BATCHES_PER_TURN_MAX: usize = 16;
/// An idle shard still wakes this often (timers are scanned then); a
/// shutdown wakes it at once through the eventfd.
const IDLE_WAKE_MS: u64 = 1000;
/// Transmits taken from one session per pump (a session queues at most one
/// at a time, so this only bounds the loop).
const PUMP_TRANSMITS_MAX: usize = 4;

/// Which owner index is what: session slots first, then the service
/// sockets, then the wake eventfd.
#[derive(Clone, Copy, Debug)]
struct Owners {
    sessions: u32,
    services: u32,
}

enum Role {
    Session(u32),
    Service(usize),
    Wake,
}

impl Owners {
    fn service(self, i: usize) -> Owner {
        Owner::new(self.sessions + i as u32)
    }

    fn wake(self) -> Owner {
        Owner::new(self.sessions + self.services)
    }

    fn total(self) -> u32 {
        self.sessions + self.services + 1
    }

    fn role(self, owner: Owner) -> Role {
        let i = owner.index();
        if i < self.sessions {
            Role::Session(i)
        } else if i < self.sessions + self.services {
            Role::Service((i - self.sessions) as usize)
        } else {
            Role::Wake
        }
    }
}

struct Service {
    addr: SocketAddr,
    /// Its socket is still open (closed once retired and settled).
    open: bool,
}

/// What does not change while the shard runs, and its counters.
struct Context {
    root: Arc<Roots>,
    cache: Arc<FileCache>,
    counters: Arc<ShardCounters>,
    control: Arc<Control>,
    server: ServerConfig,
    upload: Option<UploadPolicy>,
    upload_locks: Arc<UploadLocks>,
    /// The map in force, refreshed from `names_shared` when its
    /// generation moves (SIGHUP).
    names: Option<Arc<NameMap>>,
    names_generation: u64,
    names_shared: Arc<SharedNames>,
    permissive: bool,
    gso: bool,
    connect_transfers: bool,
    /// Interface MTUs, when blksize follows them (`None`: `--blksize-max`).
    mtus: Option<mtu::MtuCache>,
    per_client_root: bool,
    /// Where the next transfer socket's port comes from (`--port-range`).
    ports: Option<PortPicker>,
    netascii_bytes_max: u64,
    grace_ms: u64,
    logger: Logger,
    /// This shard's index, in its log records.
    shard: u16,
}

/// Buffers allocated at start-up and reused for every request.
struct Scratch {
    name: Vec<u8>,
    request: Vec<u8>,
    decode: Vec<u8>,
}

pub struct Shard {
    io: Uring,
    sessions: Sessions<Slot>,
    endpoint: Endpoint,
    owners: Owners,
    services: Vec<Service>,
    ctx: Context,
    scratch: Scratch,
    /// Sessions owed sends (see `Slot::owed`), in the order they stalled.
    waiting: VecDeque<crate::proto::sessions::SessionId>,
    batch: Vec<Completion>,
    released: Vec<Owner>,
    next_timer_scan: Instant,
    draining_since: Option<Instant>,
}

/// How long a ring that cannot get its locked memory is retried: a ring
/// closed a moment ago (this server's previous instance) gives its pinned
/// pages back asynchronously.
const RING_RETRY_MS: u64 = 2000;

fn new_ring_retrying(sizes: RingSizes, owners: u32) -> Result<Uring, StartError> {
    let deadline = Instant::now() + Duration::from_millis(RING_RETRY_MS);
    loop {
        match Uring::new(sizes, owners).map_err(StartError::from) {
            Err(StartError::Ring(e) | StartError::Buffers(e))
                if e.raw_os_error() == Some(libc::ENOMEM) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A seed for a shard's [`PortPicker`]: from the kernel's pool, or, if
/// that fails, from the clock and the shard's index (ports then are only
/// less unpredictable, never wrong).
fn port_seed(index: usize) -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (index as u64).rotate_left(32)
    })
}

impl Shard {
    /// Builds the ring and installs the sockets, on the calling (shard) thread.
    pub fn new(setup: ShardSetup) -> Result<Shard, StartError> {
        let capacity = capacity_for(setup.endpoint.sessions_max.max(1));
        let owners = Owners {
            sessions: capacity as u32,
            services: setup.service_sockets.len() as u32,
        };
        let mut io = new_ring_retrying(setup.ring_sizes, owners.total())?;
        io.inject_fsync_delay(setup.faults.fsync_delay);
        let mut services = Vec::with_capacity(setup.service_sockets.len());
        for (i, (fd, addr)) in setup.service_sockets.into_iter().enumerate() {
            io.install(owners.service(i), fd)
                .map_err(StartError::Files)?;
            services.push(Service { addr, open: true });
        }
        let wake: OwnedFd = setup.wake.into();
        io.install(owners.wake(), wake).map_err(StartError::Files)?;
        let endpoint = Endpoint::new(setup.endpoint, Instant::now());
        Ok(Shard {
            io,
            sessions: Sessions::new(capacity),
            endpoint,
            owners,
            services,
            ctx: Context {
                root: setup.root,
                cache: setup.cache,
                counters: setup.counters,
                control: setup.control,
                server: setup.server,
                upload: setup.upload,
                upload_locks: setup.upload_locks,
                // Taken at the first request (no generation is u64::MAX).
                names: None,
                names_generation: u64::MAX,
                names_shared: setup.names,
                permissive: setup.permissive,
                gso: setup.gso,
                connect_transfers: setup.connect_transfers,
                mtus: setup.mtu_cap.then(mtu::MtuCache::new),
                per_client_root: setup.per_client_root,
                ports: setup
                    .port_range
                    .map(|range| PortPicker::new(range, port_seed(setup.index))),
                netascii_bytes_max: setup.netascii_bytes_max,
                grace_ms: setup.grace_ms,
                logger: setup.logger,
                shard: setup.index as u16,
            },
            scratch: Scratch {
                name: Vec::with_capacity(1024),
                request: Vec::with_capacity(crate::uring::SMALL_BUFFER_BYTES),
                decode: Vec::with_capacity(usize::from(wire::BLKSIZE_MAX) + 1),
            },
            waiting: VecDeque::with_capacity(capacity),
            batch: Vec::with_capacity(COMPLETIONS_PER_BATCH),
            released: Vec::with_capacity(capacity),
            next_timer_scan: Instant::now() + Duration::from_millis(IDLE_WAKE_MS),
            draining_since: None,
        })
    }

    /// Sessions this shard holds at once (live), as sized at start.
    pub fn sessions_max(&self) -> usize {
        self.endpoint.config().sessions_max
    }

    /// Runs until shutdown and the grace period are over.
    pub fn run(mut self) -> io::Result<()> {
        for i in 0..self.services.len() {
            self.io.arm_recv(self.owners.service(i), Group::Requests);
        }
        self.io.arm_wake(self.owners.wake());
        loop {
            let now = Instant::now();
            if now >= self.next_timer_scan {
                self.scan_timers(now);
            }
            let done = match self.ctx.control.state() {
                RunState::Running => false,
                RunState::Draining => self.drain(now, false),
                RunState::Hurrying => self.drain(now, true),
            };
            if done {
                break;
            }
            let wait = self.next_timer_scan.saturating_duration_since(now).clamp(
                Duration::from_millis(1),
                Duration::from_millis(IDLE_WAKE_MS),
            );
            // Sessions waiting for send slots resume as soon as sends complete.
            self.io.submit_and_wait(wait, !self.waiting.is_empty())?;
            self.reap();
            if let Some(e) = self.io.take_fatal() {
                return Err(e);
            }
        }
        // Anything still queued leaves now; dropping the ring then waits
        // for every operation to finish before freeing its memory.
        self.io.submit()?;
        Ok(())
    }

    /// Handles completions in bounded batches; after each, releases the
    /// sessions whose I/O settled and resumes sends that were waiting.
    fn reap(&mut self) {
        for _ in 0..BATCHES_PER_TURN_MAX {
            let mut batch = std::mem::take(&mut self.batch);
            self.io.reap(&mut batch, COMPLETIONS_PER_BATCH);
            let done = batch.is_empty();
            let now = Instant::now();
            for c in batch.drain(..) {
                self.on_completion(c, now);
            }
            self.batch = batch;
            self.release_settled();
            self.resume_waiting();
            if done {
                break;
            }
        }
        let c = &self.ctx.counters;
        c.record_ring(&self.io.stats());
        c.sessions_active.set(self.sessions.live() as u64);
        c.sessions_unverified.set(self.sessions.unverified() as u64);
    }

    fn on_completion(&mut self, c: Completion, now: Instant) {
        match c.op {
            Op::Recv(_) => {
                if let Some(buffer) = c.buffer {
                    match self.owners.role(c.owner) {
                        Role::Service(i) => self.on_service_datagram(i, &buffer, now),
                        Role::Session(_) => self.on_transfer_datagram(c.owner, &buffer, now),
                        Role::Wake => {}
                    }
                    self.io.recycle(buffer);
                } else if c.result < 0 && !matches!(-c.result, libc::ENOBUFS | libc::ECANCELED) {
                    // With IP_RECVERR an ICMP error ends the receive with
                    // its errno (ECONNREFUSED, EHOSTUNREACH...); drain the
                    // error queue, and end the session if it was its peer.
                    self.on_icmp_error(c.owner);
                }
                if !c.more {
                    self.rearm(c.owner);
                }
            }
            Op::Send(done) => self.on_send_done(c.owner, done, c.result),
            Op::Fsync(step) => self.on_commit_step(c.owner, step, c.result, now),
            Op::Advise => self.on_readahead_done(c.owner),
            // A wake only ends the wait; the loop then reads the control
            // state. Armed again for the next one (a second signal).
            Op::Wake => self.io.arm_wake(self.owners.wake()),
            Op::Cancel | Op::Nop => {}
        }
    }

    /// A multishot receive ended (buffers ran out, an error, a cancel):
    /// arm it again unless its owner is done.
    fn rearm(&mut self, owner: Owner) {
        match self.owners.role(owner) {
            Role::Service(_) if self.endpoint.is_draining() => {}
            Role::Service(_) => self.io.arm_recv(owner, Group::Requests),
            Role::Session(index) => {
                let Some(id) = self.sessions.id_at(index) else {
                    return;
                };
                if let Some(entry) = self.sessions.get(id)
                    && entry.is_live()
                {
                    let group = entry.io.group;
                    self.io.arm_recv(owner, group);
                }
            }
            Role::Wake => {}
        }
    }
}
