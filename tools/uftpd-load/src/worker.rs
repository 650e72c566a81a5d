//! One worker thread: one io_uring (the server's own layer, `uftpd::uring`)
//! driving up to `sessions_per_thread` transfers, each on its own socket
//! installed as a fixed file. The loop only moves bytes and time: what to
//! send and when is the protocol core's (`Transfer` around `ClientSession`).
//!
//! Each turn: submit every queued send and wait for one completion (one
//! `io_uring_enter` for many sessions' sends), hand each received datagram
//! to its transfer, pump what the transfers want sent, fire due timers,
//! retire finished transfers and start new ones.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uftpd::proto::refusal::{Cause, Refusal};
use uftpd::proto::transfer::Transmit;
use uftpd::proto::wire::ErrorCode;
use uftpd::uring::{self, Completion, Group, Op, Owner, RingSizes, SendError, Unsent, Uring};

use crate::plan::Shared;
use crate::stats::Stats;
use crate::transfer::{Transfer, Verdict};

/// What a transfer cut off by the end of `--duration` (or Ctrl-C) sends
/// the server, so it frees the session at once instead of timing out.
const CANCELLED: Refusal = Refusal::new(ErrorCode::NotDefined, "Load test over", Cause::Shutdown);

/// Transmits one pump may queue for one transfer (a window is one).
const PUMP_TRANSMITS_MAX: usize = 8;
/// Completions handled per reap.
const COMPLETIONS_PER_BATCH: usize = 1024;
/// The longest the loop sleeps: it also checks the deadline and Ctrl-C.
const WAIT_MS_MAX: u64 = 50;
/// After the last transfer, how long retired sockets may take to settle.
const SETTLE_MS_MAX: u64 = 2000;

/// Ring sizes for a worker of `sessions` sessions receiving datagrams of
/// up to `datagram_bytes`.
pub fn ring_sizes(sessions: usize, datagram_bytes: usize) -> RingSizes {
    let sessions = sessions.max(1) as u32;
    let big = uring::transfer_group(datagram_bytes) == Group::Uploads;
    // Enough receive buffers for every session's window in flight, within
    // what a buffer ring takes (a u16 count, a power of two).
    let buffers = |want: u32| want.clamp(64, 32_768).next_power_of_two() as u16;
    let mut sizes = RingSizes {
        sq_entries: (sessions * 2).clamp(256, 4096).next_power_of_two(),
        request_buffers: 8,
        transfer_buffers: if big { 64 } else { buffers(sessions * 4) },
        upload_buffers: if big {
            buffers(sessions * 2).min(4096)
        } else {
            8
        },
        send_slots: (sessions * 2).clamp(256, 8192),
    };
    // Every buffer, send slot and owner needs room in the completion queue,
    // which Linux caps at 65,536 entries: for 10,000 sessions on one thread
    // the receive buffers give way (halved, to no fewer than 64), not the
    // sessions. Bounded: at most 10 halvings from 32,768.
    let owners = owners_for(sessions as usize);
    for _ in 0..10 {
        if sizes.cq_entries(owners).is_some() {
            break;
        }
        if sizes.transfer_buffers > 64 {
            sizes.transfer_buffers /= 2;
        }
        if sizes.upload_buffers > 64 {
            sizes.upload_buffers /= 2;
        }
    }
    sizes
}

/// Owners a worker of `sessions` sessions needs: one per live transfer
/// plus room for retired ones whose last operations are still completing.
pub fn owners_for(sessions: usize) -> u32 {
    (sessions + (sessions / 8).max(64)) as u32
}

enum Slot {
    Free,
    Live(Box<Transfer>),
    /// Retired; its socket closes once its operations have completed.
    Settling,
}

pub struct Worker {
    shared: Arc<Shared>,
    io: Uring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Transfers that found no send slot, in the order they stalled.
    waiting: VecDeque<u32>,
    stats: Stats,
    next_scan: Instant,
    next_start: Instant,
    start_interval: Option<Duration>,
    batch: Vec<Completion>,
    settled: Vec<Owner>,
    /// Where transfer sockets bind: `--bind` addresses in turn, or the
    /// unspecified address.
    locals: Vec<SocketAddr>,
    next_local: usize,
    datagram_bytes: usize,
}

impl Worker {
    pub fn new(shared: Arc<Shared>) -> Result<Worker, String> {
        let plan = &shared.plan;
        let sessions = plan.sessions_per_thread.max(1);
        let blksize = usize::from(plan.options.blksize.unwrap_or(512));
        let datagram_bytes = blksize + 4;
        let owners = owners_for(sessions);
        let io = Uring::new(ring_sizes(sessions, datagram_bytes), owners).map_err(|e| {
            format!(
                "cannot set up io_uring: {e:?} (raise RLIMIT_MEMLOCK, or spread --sessions over more --threads)"
            )
        })?;
        let locals = if plan.bind.is_empty() {
            vec![match plan.server {
                SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            }]
        } else {
            plan.bind.iter().map(|ip| SocketAddr::new(*ip, 0)).collect()
        };
        let start_interval = plan
            .rate_per_thread
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        let now = Instant::now();
        Ok(Worker {
            io,
            slots: (0..owners).map(|_| Slot::Free).collect(),
            free: (0..owners).rev().collect(),
            live: 0,
            waiting: VecDeque::new(),
            stats: Stats::default(),
            next_scan: now,
            next_start: now,
            start_interval,
            batch: Vec::with_capacity(COMPLETIONS_PER_BATCH),
            settled: Vec::new(),
            locals,
            next_local: 0,
            datagram_bytes,
            shared,
        })
    }

    /// Runs until every transfer is done (or cut off); returns what it measured.
    pub fn run(mut self) -> Result<Stats, String> {
        let sessions = self.shared.plan.sessions_per_thread.max(1);
        loop {
            let now = Instant::now();
            if self.cut_off(now) {
                self.abort_all();
            }
            self.start_transfers(now, sessions);
            if now >= self.next_scan {
                self.scan_timers(now);
            }
            if self.live == 0 && self.shared.exhausted(now) {
                break;
            }
            let wake = self
                .next_scan
                .min(if self.free.is_empty() || self.live >= sessions {
                    now + Duration::from_millis(WAIT_MS_MAX)
                } else {
                    self.next_start
                });
            let wait = wake.saturating_duration_since(now).clamp(
                Duration::from_micros(100),
                Duration::from_millis(WAIT_MS_MAX),
            );
            self.io
                .submit_and_wait(wait, !self.waiting.is_empty())
                .map_err(|e| format!("io_uring: {e}"))?;
            self.reap();
            if let Some(e) = self.io.take_fatal() {
                return Err(format!("io_uring: {e}"));
            }
        }
        self.stats.finished_at = Some(Instant::now());
        self.settle();
        let ring = self.io.stats();
        self.stats.buffers_exhausted += ring.buffers_exhausted.iter().sum::<u64>();
        let Worker { io, stats, .. } = self;
        io.shutdown();
        Ok(stats)
    }

    /// The end of `--duration`, or Ctrl-C: running transfers stop.
    fn cut_off(&self, now: Instant) -> bool {
        self.shared.stop.load(Ordering::Relaxed) || self.shared.deadline.is_some_and(|d| now >= d)
    }

    fn start_transfers(&mut self, now: Instant, sessions: usize) {
        while self.live < sessions && !self.free.is_empty() && now >= self.next_start {
            let Some(n) = self.shared.take(now) else {
                return;
            };
            if let Some(interval) = self.start_interval {
                // Paced: the next start is due one interval after this one
                // was (not after now), so a late turn catches up.
                self.next_start = (self.next_start + interval).max(now - interval);
            }
            let Some(index) = self.free.pop() else {
                return;
            };
            let transfer = Transfer::new(&self.shared, n, now);
            if let Err(e) = self.open(index, &transfer) {
                // Out of descriptors or buffers: a failure of this transfer,
                // named, not of the run.
                self.free.push(index);
                self.stats.fail(format!("local_{}", errno_name(&e)));
                self.shared.progress_failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.slots[index as usize] = Slot::Live(Box::new(transfer));
            self.live += 1;
            self.pump(index, now);
        }
    }

    /// A socket for transfer `index`, installed and receiving.
    fn open(&mut self, index: u32, transfer: &Transfer) -> io::Result<()> {
        let owner = Owner::new(index);
        let local = self.locals[self.next_local % self.locals.len()];
        self.next_local = self.next_local.wrapping_add(1);
        let fd = uftpd::sys::net::transfer_socket(local, None)?;
        self.io.install(owner, fd)?;
        if let Some(content) = &self.shared.plan.files[transfer.file].content
            && self.shared.plan.write
        {
            self.io
                .attach_payload(owner, Arc::clone(content) as Arc<dyn uring::Payload>);
        }
        self.io
            .arm_recv(owner, uring::transfer_group(self.datagram_bytes));
        Ok(())
    }

    fn reap(&mut self) {
        for _ in 0..64 {
            let mut batch = std::mem::take(&mut self.batch);
            self.io.reap(&mut batch, COMPLETIONS_PER_BATCH);
            let done = batch.is_empty();
            let now = Instant::now();
            for c in batch.drain(..) {
                self.on_completion(c, now);
            }
            self.batch = batch;
            self.release_settled();
            self.resume_waiting(now);
            if done {
                break;
            }
        }
    }

    fn on_completion(&mut self, c: Completion, now: Instant) {
        let index = c.owner.index();
        match c.op {
            Op::Recv(group) => {
                if let Some(buffer) = c.buffer {
                    self.on_datagram(index, &buffer, now);
                    self.io.recycle(buffer);
                } else if c.result == -libc::ECONNREFUSED {
                    // ICMP port unreachable: the server (or its transfer
                    // port) is not there.
                    if let Some(Slot::Live(t)) = self.slots.get_mut(index as usize) {
                        t.session.handle_unreachable();
                        self.pump(index, now);
                    }
                }
                if !c.more && matches!(self.slots.get(index as usize), Some(Slot::Live(_))) {
                    self.io.arm_recv(c.owner, group);
                }
            }
            Op::Send(_) if c.result < 0 => {
                // Loss as far as the protocol is concerned: the timer resends.
                self.stats.send_errors += 1;
            }
            _ => {}
        }
    }

    fn on_datagram(&mut self, index: u32, buffer: &uring::Buffer, now: Instant) {
        let Some(Slot::Live(t)) = self.slots.get_mut(index as usize) else {
            return;
        };
        let Some(dgram) = self.io.datagram(buffer) else {
            return;
        };
        let (Some(from), false) = (dgram.peer, dgram.truncated) else {
            return;
        };
        let unlocked = t.tid.is_none();
        if let Some(handled) = t.handle(from, dgram.payload, now)
            && let Some(rtt) = handled.window_rtt
        {
            Stats::record(&mut self.stats.window_rtt, rtt);
        }
        // Locked onto the server's TID: connect to it, so the kernel keeps
        // the route (no lookup per send, early demux per receive) and drops
        // strays before they wake us. Best effort: unconnected works too.
        if unlocked && let Some(tid) = t.tid {
            let _ = self.io.connect(Owner::new(index), tid);
        }
        self.pump(index, now);
    }

    /// Queues what transfer `index` wants sent; gives its verdict and
    /// retires it once it has ended and owes nothing.
    fn pump(&mut self, index: u32, now: Instant) {
        let Some(Slot::Live(t)) = self.slots.get_mut(index as usize) else {
            return;
        };
        let owner = Owner::new(index);
        for _ in 0..PUMP_TRANSMITS_MAX {
            let next = match t.session.poll_transmit() {
                Some(transmit) => {
                    t.owed = None;
                    transmit
                }
                None => match t.owed.take() {
                    Some(transmit) => transmit,
                    None => break,
                },
            };
            match send(&mut self.io, owner, t, next) {
                Ok(()) => t.sent(&next, now),
                Err(rest) => {
                    t.owed = Some(rest);
                    self.stats.sends_deferred += 1;
                    if !t.waiting {
                        t.waiting = true;
                        self.waiting.push_back(index);
                    }
                    break;
                }
            }
        }
        if let Some(deadline) = t.session.poll_timeout() {
            self.next_scan = self.next_scan.min(deadline);
        }
        let verdict = t
            .verdict(&self.shared, now)
            .map(|v| (v, t.retransmissions()));
        let retire = t.finished && t.owed.is_none();
        if let Some((verdict, retransmissions)) = verdict {
            self.account(verdict, retransmissions);
        }
        if retire {
            self.retire(index);
        }
    }

    fn account(&mut self, verdict: Verdict, retransmissions: u64) {
        self.stats.retransmissions += retransmissions;
        match verdict {
            Verdict::Ok {
                bytes,
                latency,
                first_block,
            } => {
                self.stats.ok += 1;
                self.stats.bytes += bytes;
                Stats::record(&mut self.stats.latency, latency);
                if let Some(first) = first_block {
                    Stats::record(&mut self.stats.first_block, first);
                }
                self.shared.progress_ok.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .progress_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
            }
            Verdict::Failed(reason) => {
                self.stats.fail(reason);
                self.shared.progress_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn retire(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(index as usize)
            && matches!(slot, Slot::Live(_))
        {
            *slot = Slot::Settling;
            self.live -= 1;
            self.io.retire(Owner::new(index));
        }
    }

    fn release_settled(&mut self) {
        let mut settled = std::mem::take(&mut self.settled);
        self.io.release_settled(&mut settled);
        for owner in settled.drain(..) {
            let index = owner.index();
            if let Some(slot) = self.slots.get_mut(index as usize)
                && matches!(slot, Slot::Settling)
            {
                *slot = Slot::Free;
                self.free.push(index);
            }
        }
        self.settled = settled;
    }

    fn resume_waiting(&mut self, now: Instant) {
        for _ in 0..self.waiting.len() {
            if self.io.sends_available() <= self.io.control_reserve() {
                break;
            }
            let Some(index) = self.waiting.pop_front() else {
                break;
            };
            if let Some(Slot::Live(t)) = self.slots.get_mut(index as usize) {
                t.waiting = false;
                self.pump(index, now);
            }
        }
    }

    /// Fires due timers and finds the next deadline. O(sessions) per scan,
    /// and scans happen at most at the earliest deadline.
    fn scan_timers(&mut self, now: Instant) {
        let mut next = now + Duration::from_millis(WAIT_MS_MAX);
        for index in 0..self.slots.len() as u32 {
            let Some(Slot::Live(t)) = self.slots.get_mut(index as usize) else {
                continue;
            };
            match t.session.poll_timeout() {
                Some(deadline) if deadline <= now => {
                    t.session.handle_timeout(now);
                    self.pump(index, now);
                }
                _ => {}
            }
            if let Some(Slot::Live(t)) = self.slots.get(index as usize)
                && let Some(deadline) = t.session.poll_timeout()
            {
                next = next.min(deadline);
            }
        }
        self.next_scan = next;
    }

    /// Ends every running transfer with an ERROR to the server; they count
    /// as aborted, not failed.
    fn abort_all(&mut self) {
        for index in 0..self.slots.len() as u32 {
            let Some(Slot::Live(t)) = self.slots.get_mut(index as usize) else {
                continue;
            };
            if !t.finished {
                t.finished = true;
                self.stats.aborted += 1;
                t.session.abort(CANCELLED);
            }
            // The ERROR goes out if a slot is free; either way it retires.
            if let Some(transmit) = t.session.poll_transmit() {
                let _ = send(&mut self.io, Owner::new(index), t, transmit);
            }
            t.owed = None;
            self.retire(index);
        }
        self.waiting.clear();
    }

    /// Waits, boundedly, for retired sockets' operations to complete.
    fn settle(&mut self) {
        let until = Instant::now() + Duration::from_millis(SETTLE_MS_MAX);
        while self.slots.iter().any(|s| matches!(s, Slot::Settling)) && Instant::now() < until {
            if self
                .io
                .submit_and_wait(Duration::from_millis(10), true)
                .is_err()
            {
                break;
            }
            let mut batch = std::mem::take(&mut self.batch);
            self.io.reap(&mut batch, COMPLETIONS_PER_BATCH);
            for c in batch.drain(..) {
                if let Some(buffer) = c.buffer {
                    self.io.recycle(buffer);
                }
            }
            self.batch = batch;
            self.release_settled();
        }
    }
}

/// Queues one transmit of `t`; `Err` is what found no send slot.
fn send(io: &mut Uring, owner: Owner, t: &Transfer, transmit: Transmit) -> Result<(), Transmit> {
    let dest = t.dest(&transmit);
    match transmit {
        Transmit::Data { first, count } => {
            let blksize = t.session.blksize();
            let per_send = uring::gso_segments(blksize) as u16;
            match io.send_window(owner, dest, blksize, first, count, per_send, false) {
                Ok(()) => Ok(()),
                Err(Unsent {
                    first,
                    count,
                    error: SendError::NoSlot,
                }) => Err(Transmit::Data { first, count }),
                // The timer resends.
                Err(_) => Ok(()),
            }
        }
        control => match io.send_control(owner, dest, None, |buf| {
            t.session.encode_control(control, buf)
        }) {
            Ok(()) => Ok(()),
            Err(SendError::NoSlot) => Err(control),
            Err(SendError::Encode | SendError::NoFile) => Ok(()),
        },
    }
}

/// A short name for an errno, for the failure table.
fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => "emfile",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "enomem",
        Some(libc::EADDRINUSE) | Some(libc::EADDRNOTAVAIL) => "eaddrinuse",
        _ => "socket",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_fit_the_completion_queue_up_to_ten_thousand_sessions_per_thread() {
        // 10,000 sessions on one thread used to ask for a 74,526-entry CQ
        // and fail at setup (S7 with --threads 1).
        for sessions in [1, 64, 1_000, 4_096, 10_000, 12_000] {
            for datagram_bytes in [516, 1436, 65_468] {
                let sizes = ring_sizes(sessions, datagram_bytes);
                assert!(
                    sizes.cq_entries(owners_for(sessions)).is_some(),
                    "{sessions} sessions of {datagram_bytes}-byte datagrams: {sizes:?}"
                );
                assert!(sizes.transfer_buffers >= 64);
            }
        }
    }
}
