//! One shard run in-process with ring sizes far below the defaults, to
//! force the paths that only show under pressure: a full submission queue,
//! an exhausted send pool, empty buffer groups. The shard's counters are
//! read directly. Traffic goes to 127.0.0.1 only; every wait is bounded.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uftpd::shard::Control;

use clap::Parser;

use common::{TempDir, raw_get_on, write_random_file};
use uftpd::cache::{FileCache, Root, Roots};
use uftpd::config::Args;
use uftpd::shard::{Faults, Shard, ShardSetup};
use uftpd::stats::{ShardCounters, Snapshot};
use uftpd::sys::net;
use uftpd::sys::process::EventFd;
use uftpd::uring::{RING_FULL, RingSizes};

struct InProcess {
    addr: SocketAddr,
    counters: Arc<ShardCounters>,
    control: Arc<Control>,
    wake: EventFd,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    fn start(root: &Path, sizes: RingSizes, extra_args: &[&str]) -> InProcess {
        Self::start_with(root, sizes, extra_args, Faults::default())
    }

    fn start_with(root: &Path, sizes: RingSizes, extra_args: &[&str], faults: Faults) -> InProcess {
        let mut argv = vec!["uftpd"];
        argv.extend_from_slice(extra_args);
        let root_arg = root.to_str().unwrap();
        argv.push(root_arg);
        let args = Args::try_parse_from(argv).unwrap();
        let fd = net::service_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = net::local_addr(&fd).unwrap();
        let counters = Arc::new(ShardCounters::default());
        let control = Arc::new(Control::default());
        let wake = EventFd::new().unwrap();
        let setup = ShardSetup {
            index: 0,
            service_sockets: vec![(fd, addr)],
            root: Arc::new(Roots::One(Root::open(root).unwrap())),
            cache: Arc::new(FileCache::new(64)),
            counters: Arc::clone(&counters),
            control: Arc::clone(&control),
            server: args.server_config(),
            endpoint: args.endpoint_config(1, args.max_sessions as usize),
            upload: args.upload_policy().unwrap(),
            upload_locks: Default::default(),
            names: Default::default(),
            permissive: args.permissive,
            gso: !args.no_gso,
            connect_transfers: !args.stray_errors,
            mtu_cap: args.blksize_max.is_none(),
            per_client_root: args.per_client_root,
            port_range: args.port_range,
            netascii_bytes_max: args.max_netascii_bytes,
            grace_ms: 1000,
            logger: uftpd::log::Logger::off(),
            ring_sizes: sizes,
            wake: wake.try_clone().unwrap(),
            faults,
        };
        let thread =
            std::thread::spawn(move || Shard::new(setup).map_err(std::io::Error::other)?.run());
        InProcess {
            addr,
            counters,
            control,
            wake,
            thread: Some(thread),
        }
    }

    /// Stops the shard (bounded by its grace period) and returns its counters.
    fn stop(mut self) -> Snapshot {
        self.control.drain();
        self.wake.notify(1).unwrap();
        let result = self.thread.take().unwrap().join().expect("shard panicked");
        result.expect("shard failed");
        self.counters.snapshot()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.control.hurry();
            let _ = self.wake.notify(1);
            let _ = t.join();
        }
    }
}

fn sizes(f: impl FnOnce(&mut RingSizes)) -> RingSizes {
    let mut s = RING_FULL;
    f(&mut s);
    s
}

fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// A client that can hold a whole window of 64 KiB blocks (1 MiB at
/// windowsize 16) without dropping any: the default 208 KiB cannot.
fn client_with_room() -> UdpSocket {
    let s = client();
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    s
}

#[test]
fn a_window_larger_than_the_send_pool_goes_out_whole() {
    // 16 send slots: a session may hold 2, and a window of 16 blocks of
    // 65464 bytes needs 16 sends. The old shard dropped the blocks that
    // found no slot, though its sender counted them as sent: every window
    // then waited a retransmit timeout (1 s) for its missing blocks.
    let root = TempDir::new("shard-pool");
    let want = write_random_file(&root.join("big.bin"), 1, 8 << 20);
    // A 5 s retransmit timeout: one dropped block would show as a 5 s stall.
    let shard = InProcess::start(
        root.path(),
        sizes(|s| s.send_slots = 16),
        &["--retransmit-ms", "5000"],
    );
    // The shard borrows its counters: nothing on the packet path clones
    // the Arc (two locked instructions per completion in the old shard).
    // References: the harness, the shard, the sampler's own.
    let baseline = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (counters, stop) = (Arc::clone(&shard.counters), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut most = 0;
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                most = most.max(Arc::strong_count(&counters));
                // Sample, do not spin: the shard and the client need the CPUs.
                std::thread::sleep(Duration::from_micros(50));
            }
            most
        })
    };
    let started = Instant::now();
    let got = raw_get_on(
        &client_with_room(),
        shard.addr,
        b"big.bin",
        "octet",
        &[("blksize", "65464"), ("windowsize", "16")],
        Duration::from_secs(30),
    )
    .unwrap();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(got.data, want);
    assert_eq!(got.windowsize, 16);
    assert!(
        elapsed < Duration::from_secs(3),
        "{elapsed:?}: 9 windows should take no retransmit timeout at all"
    );
    assert_eq!(
        sampler.join().unwrap(),
        baseline,
        "a clone on the packet path"
    );
    let c = shard.stop();
    assert!(c.sends_deferred > 0, "the pool never ran short: {c:?}");
    assert_eq!(c.blocks_resent, 0, "{c:?}");
    assert_eq!(c.transfers_completed, 1);
}

#[test]
fn a_tiny_submission_queue_still_answers_every_request_in_a_burst() {
    // A 4-entry SQ and 100 requests at once: the old push() dropped what
    // did not fit after one early submit (a dropped re-arm left the service
    // socket deaf for good). Every request must get its first reply.
    let root = TempDir::new("shard-sq");
    write_random_file(&root.join("small.bin"), 2, 100);
    let shard = InProcess::start(root.path(), sizes(|s| s.sq_entries = 4), &[]);
    let clients: Vec<UdpSocket> = (0..100).map(|_| client()).collect();
    let rrq = common::rrq(b"small.bin", "octet", &[]);
    for c in &clients {
        c.send_to(&rrq, shard.addr).unwrap();
    }
    for (i, c) in clients.iter().enumerate() {
        let reply = common::recv_packet(c, Duration::from_secs(3));
        assert!(
            matches!(reply, Some((common::Packet::Data { block: 1, .. }, _, _))),
            "client {i}: {reply:?}"
        );
    }
    // And the service socket still listens afterwards.
    let late = client();
    let got = raw_get_on(
        &late,
        shard.addr,
        b"small.bin",
        "octet",
        &[],
        Duration::from_secs(5),
    );
    assert!(got.is_ok(), "{got:?}");
    let c = shard.stop();
    assert!(c.sq_full_submits > 0, "the SQ never filled: {c:?}");
    assert_eq!((c.cq_lost, c.ring_misuse), (0, 0));
}

#[test]
fn a_request_flood_does_not_take_the_buffers_of_running_transfers() {
    // Four buffers for requests, plenty for transfers: a flood of garbage
    // to the service port runs the request group dry, while the running
    // transfer's ACKs arrive in their own group and never find it empty.
    // (One group was shared before.)
    let root = TempDir::new("shard-flood");
    let want = write_random_file(&root.join("f.bin"), 3, 300 * 512);
    let shard = InProcess::start(root.path(), sizes(|s| s.request_buffers = 4), &[]);
    let addr = shard.addr;
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = Arc::clone(&flooding);
        std::thread::spawn(move || {
            let s = client();
            let mut sent = 0u32;
            while flooding.load(Ordering::Relaxed) && sent < 200_000 {
                let _ = s.send_to(b"\xff\xffgarbage", addr);
                sent += 1;
            }
            sent
        })
    };
    let got = raw_get_on(
        &client(),
        addr,
        b"f.bin",
        "octet",
        &[],
        Duration::from_secs(30),
    );
    flooding.store(false, Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert_eq!(got.unwrap().data, want);
    let c = shard.stop();
    assert!(sent > 1000);
    assert_eq!(c.buffers_exhausted_transfers, 0, "{c:?}");
    assert_eq!(c.transfers_completed, 1);
}

#[test]
fn rrq_acks_never_use_the_upload_buffers_whatever_the_blksize() {
    // One buffer for big-block uploads: 20 concurrent readers with blksize
    // 8192 all get their ACKs into small buffers (the old shard put them in
    // the 64 upload buffers, sized for DATA).
    let root = TempDir::new("shard-groups");
    let want = write_random_file(&root.join("f.bin"), 4, 256 << 10);
    let shard = InProcess::start(root.path(), sizes(|s| s.upload_buffers = 1), &[]);
    let addr = shard.addr;
    let readers: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                raw_get_on(
                    &client(),
                    addr,
                    b"f.bin",
                    "octet",
                    &[("blksize", "8192")],
                    Duration::from_secs(30),
                )
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap().unwrap().data, want);
    }
    let c = shard.stop();
    assert_eq!(c.transfers_completed, 20);
    assert_eq!(c.buffers_exhausted_uploads, 0, "{c:?}");
}

#[test]
fn an_upload_replaced_while_it_commits_is_discarded_and_says_nothing_more() {
    // The disk takes 300 ms per fsync. Upload A's last block arrives, its
    // commit starts, and a new request from the same port replaces A before
    // the fsync completes. The old shard acted on that completion anyway
    // (it queued ERROR "Write failed" from A's port, or published A after
    // its client had moved on). A retired session's commit step must do
    // nothing: no packet from A's port, and A never appears.
    let root = TempDir::new("shard-commit");
    let faults = Faults {
        fsync_delay: Duration::from_millis(300),
    };
    let shard = InProcess::start_with(root.path(), RING_FULL, &["--create"], faults);
    let sock = client();
    sock.send_to(&common::wrq(b"a.bin", "octet", &[]), shard.addr)
        .unwrap();
    let (p, tid_a, _) = common::recv_packet(&sock, Duration::from_secs(2)).expect("ACK 0");
    assert_eq!(p, common::Packet::Ack { block: 0 });
    sock.send_to(&common::data(1, &[0x5a; 512]), tid_a).unwrap();
    let (p, _, _) = common::recv_packet(&sock, Duration::from_secs(2)).expect("ACK 1");
    assert_eq!(p, common::Packet::Ack { block: 1 });
    sock.send_to(&common::data(2, b"end"), tid_a).unwrap();
    // The final ACK waits for the commit: nothing comes yet.
    assert!(common::recv_packet(&sock, Duration::from_millis(100)).is_none());
    // A new request from the same port, refused before it opens a file.
    sock.send_to(&common::wrq(b"../b.bin", "octet", &[]), shard.addr)
        .unwrap();
    let got = common::drain_packets(&sock, Duration::from_millis(800));
    assert!(
        matches!(got.as_slice(), [(common::Packet::Error { code: 2, .. }, from)] if *from == shard.addr),
        "only the refusal, from the service port: {got:?}"
    );
    assert!(
        !root.join("a.bin").exists(),
        "a replaced upload was published"
    );
    let c = shard.stop();
    assert_eq!(c.failed_replaced, 1, "{c:?}");
}

#[test]
fn a_file_evicted_from_the_page_cache_is_read_ahead_and_sent_from_workers() {
    // Pages not in memory fault inside sendmsg; on the shard's thread that
    // stalls every transfer of the shard while the disk reads. A cold file
    // is read ahead at admission, and its windows not yet in memory go out
    // from io-wq workers.
    let root = TempDir::new("shard-cold");
    let path = root.join("cold.bin");
    let want = write_random_file(&path, 5, 16 << 20);
    let file = std::fs::File::open(&path).unwrap();
    file.sync_all().unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain advice on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    let shard = InProcess::start(root.path(), RING_FULL, &[]);
    let got = raw_get_on(
        &client_with_room(),
        shard.addr,
        b"cold.bin",
        "octet",
        &[("blksize", "1468"), ("windowsize", "8")],
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(got.data, want);
    let c = shard.stop();
    if c.cold_files == 0 {
        // tmpfs and friends keep every page in memory: nothing to test.
        eprintln!(
            "SKIP: the file stayed in the page cache ({})",
            root.path().display()
        );
        return;
    }
    assert_eq!(c.cold_files, 1);
    assert!(c.sends_in_worker > 0, "{c:?}");
    assert_eq!(c.transfers_completed, 1);
}
