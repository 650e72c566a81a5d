//! The io_uring layer on its own, through its public API: submissions are
//! never lost, an owner's descriptor and payload outlive every operation
//! queued for it, and buffers cannot be handed to the kernel twice.
//! Traffic goes to 127.0.0.1 only; every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uftpd::uring::bufring::BufRing;
use uftpd::uring::{Completion, Group, Op, Owner, Payload, RingSizes, SendError, Unsent, Uring};

/// Tiny everything: a 4-entry SQ fills after four pushes.
const TINY: RingSizes = RingSizes {
    sq_entries: 4,
    request_buffers: 4,
    transfer_buffers: 4,
    upload_buffers: 1,
    // Two per owner (an eighth), two kept for control packets (a sixteenth).
    send_slots: 16,
};

/// Runs `f`; in debug builds a panic from a debug assertion counts as the
/// refusal, in release builds `f` must return an error.
fn refused<T, E>(f: impl FnOnce() -> Result<T, E>) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Err(_) => cfg!(debug_assertions),
        Ok(r) => r.is_err(),
    }
}

fn reap_until(
    ring: &mut Uring,
    mut done: impl FnMut(&Completion) -> bool,
    what: &str,
) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    let mut batch = Vec::new();
    loop {
        ring.submit_and_wait(Duration::from_millis(20), false)
            .unwrap();
        ring.reap(&mut batch, 64);
        let mut finished = false;
        for mut c in batch.drain(..) {
            finished |= done(&c);
            if let Some(b) = c.buffer.take() {
                ring.recycle(b);
            }
            all.push(c);
        }
        if finished {
            return all;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

#[test]
fn a_full_submission_queue_never_loses_a_submission() {
    // 1000 operations through a 4-entry SQ and a CQ far smaller than what
    // is pushed: the old push() gave up after one early submit and dropped
    // the entry without a word. Every one must complete, exactly once.
    let mut ring = Uring::new(TINY, 2).unwrap();
    let owner = Owner::new(1);
    for _ in 0..1000 {
        ring.nop(owner);
    }
    assert!(ring.stats().sq_full_submits > 0, "the SQ filled up");
    let mut seen = 0;
    reap_until(
        &mut ring,
        |c| {
            assert_eq!((c.owner, c.op), (owner, Op::Nop));
            seen += 1;
            seen == 1000
        },
        "1000 no-ops",
    );
    assert_eq!(ring.in_flight(), 0);
    // 1000 completions for a 32-entry CQ: the kernel held the rest back,
    // and the ring saw it (none was lost).
    assert!(ring.cq_entries() < 1000);
    assert!(ring.stats().cq_overflows > 0, "{:?}", ring.stats());
    assert_eq!(ring.stats().cq_lost, 0);
    let mut batch = Vec::new();
    ring.submit_and_wait(Duration::from_millis(10), false)
        .unwrap();
    ring.reap(&mut batch, 64);
    assert!(batch.is_empty(), "a completion twice: {batch:?}");
    assert!(ring.take_fatal().is_none());
}

#[test]
fn a_submission_the_kernel_pushes_back_is_retried_not_dropped() {
    // The old push() submitted once when the SQ was full and, if the SQ
    // was still full (the kernel took nothing: EAGAIN, EINTR), dropped the
    // entry without a word. Here the kernel refuses the next three submits.
    let mut ring = Uring::new(TINY, 2).unwrap();
    let owner = Owner::new(0);
    for _ in 0..4 {
        ring.nop(owner);
    }
    ring.inject_submit_refusals(3);
    for _ in 0..4 {
        ring.nop(owner);
    }
    assert!(ring.stats().stashes >= 3, "{:?}", ring.stats());
    let mut seen = 0;
    reap_until(
        &mut ring,
        |_| {
            seen += 1;
            seen == 8
        },
        "eight no-ops",
    );
    assert_eq!(ring.in_flight(), 0);
    assert!(ring.take_fatal().is_none());
}

fn udp_pair() -> (OwnedFd, SocketAddr, UdpSocket) {
    let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ours_addr = ours.local_addr().unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (OwnedFd::from(ours), ours_addr, peer)
}

#[test]
fn a_retired_owner_keeps_its_socket_until_its_queued_send_completes() {
    // The old shard closed a transfer socket while the ERROR it had just
    // queued was unsubmitted; a socket opened in the same batch could take
    // the same fd number, and the ERROR left from another transfer's port.
    let mut ring = Uring::new(TINY, 4).unwrap();
    let (a_fd, a_addr, peer) = udp_pair();
    let peer_addr = peer.local_addr().unwrap();
    let a = Owner::new(0);
    ring.install(a, a_fd).unwrap();
    ring.send_control(a, peer_addr, None, |buf| {
        buf[..5].copy_from_slice(b"hello");
        Some(5)
    })
    .unwrap();
    ring.retire(a);
    let mut released = Vec::new();
    ring.release_settled(&mut released);
    assert!(released.is_empty(), "released with a send still queued");
    // A new socket in the same batch, before anything was submitted.
    let (b_fd, b_addr, _b_peer) = udp_pair();
    let b = Owner::new(1);
    ring.install(b, b_fd).unwrap();
    reap_until(
        &mut ring,
        |c| c.owner == a && matches!(c.op, Op::Send(_)),
        "the send",
    );
    let mut buf = [0u8; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(
        from, a_addr,
        "left from the retired owner's own socket, not {b_addr}"
    );
    ring.release_settled(&mut released);
    assert_eq!(released, vec![a]);
    assert!(ring.file(a).is_none(), "closed once settled");
    // The index is free for a new occupant now.
    let (c_fd, _, _) = udp_pair();
    ring.install(a, c_fd).unwrap();
}

struct Bytes(Vec<u8>);

// SAFETY: the Vec is owned, never resized, and reported as it is.
unsafe impl Payload for Bytes {
    fn base(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn len_bytes(&self) -> u64 {
        self.0.len() as u64
    }
}

#[test]
fn data_sends_point_into_the_owners_payload_without_a_reference_each() {
    // The old pool cloned the file map's Arc twice per send: four locked
    // read-modify-writes on one cache line that every shard serving the
    // same file writes. The owner holds the one reference now.
    let mut ring = Uring::new(TINY, 2).unwrap();
    let (fd, _, peer) = udp_pair();
    let peer_addr = peer.local_addr().unwrap();
    let owner = Owner::new(0);
    ring.install(owner, fd).unwrap();
    let file: Arc<Bytes> = Arc::new(Bytes((0..2000u32).map(|i| i as u8).collect()));
    ring.attach_payload(owner, Arc::clone(&file) as Arc<dyn Payload>);
    assert_eq!(Arc::strong_count(&file), 2);
    // Blocks 1-3 of 512 bytes in one GSO send, block 4 (464 bytes) alone.
    ring.send_data(owner, peer_addr, 512, 1, 3, false).unwrap();
    ring.send_data(owner, peer_addr, 512, 4, 1, false).unwrap();
    assert_eq!(Arc::strong_count(&file), 2, "no reference per send");
    let mut sent = 0;
    reap_until(
        &mut ring,
        |c| {
            if let Op::Send(done) = c.op {
                assert!(c.result > 0, "send failed: {}", c.result);
                sent += done.datagrams;
            }
            sent == 4
        },
        "the sends",
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    for block in 1..=4u16 {
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..4], &[0, 3, 0, block as u8]);
        got.extend_from_slice(&buf[4..n]);
    }
    assert_eq!(got, file.0);
    ring.retire(owner);
    let mut released = Vec::new();
    ring.release_settled(&mut released);
    assert_eq!(released, vec![owner]);
    assert_eq!(Arc::strong_count(&file), 1, "dropped once settled");
}

#[test]
fn data_sends_keep_a_reserve_for_control_packets_and_a_cap_per_owner() {
    let mut ring = Uring::new(TINY, 8).unwrap();
    let (_, _, peer) = udp_pair();
    let peer_addr = peer.local_addr().unwrap();
    let mut keep = Vec::new();
    for i in 0..8 {
        let (fd, _, p) = udp_pair();
        keep.push(p);
        ring.install(Owner::new(i), fd).unwrap();
        ring.attach_payload(
            Owner::new(i),
            Arc::new(Bytes(vec![7; 10_000])) as Arc<dyn Payload>,
        );
    }
    // One owner may not take more than its share of the pool.
    ring.send_data(Owner::new(0), peer_addr, 512, 1, 1, false)
        .unwrap();
    ring.send_data(Owner::new(0), peer_addr, 512, 2, 1, false)
        .unwrap();
    assert_eq!(
        ring.send_data(Owner::new(0), peer_addr, 512, 3, 1, false),
        Err(SendError::NoSlot)
    );
    // Six more owners take two each: 14 of 16 slots, the last two are kept.
    for i in 1..7 {
        for block in 1..=2 {
            ring.send_data(Owner::new(i), peer_addr, 512, block, 1, false)
                .unwrap();
        }
    }
    assert_eq!(ring.sends_available(), 2);
    assert_eq!(
        ring.send_data(Owner::new(7), peer_addr, 512, 1, 1, false),
        Err(SendError::NoSlot)
    );
    // An ERROR still finds a slot.
    ring.send_control(Owner::new(7), peer_addr, None, |b| {
        b[..4].copy_from_slice(b"\0\x05\0\0");
        Some(4)
    })
    .expect("control packets have a reserve");
}

#[test]
fn a_window_is_split_into_sends_and_what_does_not_fit_is_handed_back() {
    let mut ring = Uring::new(TINY, 2).unwrap();
    let (fd, _, peer) = udp_pair();
    let peer_addr = peer.local_addr().unwrap();
    let owner = Owner::new(0);
    ring.install(owner, fd).unwrap();
    ring.attach_payload(owner, Arc::new(Bytes(vec![1; 10_000])) as Arc<dyn Payload>);
    // Blocks 1-10, three per send: the owner's cap of two sends takes 1-3
    // and 4-6; 7-10 come back, to be sent when slots free up.
    assert_eq!(
        ring.send_window(owner, peer_addr, 512, 1, 10, 3, false),
        Err(Unsent {
            first: 7,
            count: 4,
            error: SendError::NoSlot
        })
    );
    assert_eq!(ring.owner_sends(owner), 2);
    // No payload: nothing is queued and the whole window comes back.
    let (fd, _, _) = udp_pair();
    ring.install(Owner::new(1), fd).unwrap();
    assert_eq!(
        ring.send_window(Owner::new(1), peer_addr, 512, 5, 2, 3, false),
        Err(Unsent {
            first: 5,
            count: 2,
            error: SendError::NoFile
        })
    );
}

#[test]
fn a_buffer_goes_to_the_kernel_once_and_rings_unregister() {
    let ring = io_uring::IoUring::new(8).unwrap();
    let mut bufs = BufRing::new(&ring, 5, 4, 256).unwrap();
    assert_eq!(bufs.kernel_held(), 4);
    // Buffer 2 is the kernel's: taking it (a completion named it) makes it
    // ours, and handing it back twice is refused.
    bufs.take(2).unwrap();
    assert_eq!(bufs.kernel_held(), 3);
    assert!(refused(|| bufs.take(2)), "not the kernel's any more");
    bufs.recycle(2).unwrap();
    assert!(
        refused(|| bufs.recycle(2)),
        "a second recycle must be refused"
    );
    assert_eq!(bufs.kernel_held(), 4);
    assert!(bufs.recycle(9).is_err(), "out of range");
    // Unregistered for real: the same group id can be registered again.
    bufs.unregister(&ring).unwrap();
    assert!(!bufs.is_registered());
    let again = BufRing::new(&ring, 5, 4, 256);
    assert!(again.is_ok(), "group 5 still registered: {:?}", again.err());
}

#[test]
fn a_multishot_receive_reports_its_buffer_and_dropping_the_ring_drains_it() {
    let mut ring = Uring::new(TINY, 2).unwrap();
    let (fd, addr, peer) = udp_pair();
    let owner = Owner::new(0);
    ring.install(owner, fd).unwrap();
    ring.arm_recv(owner, Group::Transfers);
    assert!(ring.recv_armed(owner));
    peer.send_to(b"\0\x04\0\x01", addr).unwrap();
    let mut stays_armed = false;
    reap_until(
        &mut ring,
        |c| {
            stays_armed = c.more;
            c.buffer.is_some()
        },
        "the datagram",
    );
    assert!(stays_armed, "still armed after a datagram");
    // The buffer was recycled by reap_until; the ring held them all again.
    assert_eq!(
        ring.buffers_in_kernel(Group::Transfers),
        u32::from(TINY.transfer_buffers)
    );
    // Tearing down a ring with a receive armed cancels it and waits for
    // its final completion before the buffers are unregistered and freed.
    assert!(ring.recv_armed(owner));
    assert!(ring.shutdown(), "an operation outlived the teardown");
}

#[test]
fn a_connected_owner_sends_to_its_peer_and_hears_only_from_it() {
    // Connected transfer sockets send without a name (the kernel's cached
    // route); the datagrams must still reach the peer, DATA and control
    // alike, and a stranger's packets must no longer reach the socket.
    let mut ring = Uring::new(TINY, 2).unwrap();
    let (fd, ours, peer) = udp_pair();
    let peer_addr = peer.local_addr().unwrap();
    let owner = Owner::new(0);
    ring.install(owner, fd).unwrap();
    ring.connect(owner, peer_addr).unwrap();
    ring.attach_payload(owner, Arc::new(Bytes(vec![7u8; 1000])) as Arc<dyn Payload>);
    ring.send_control(owner, peer_addr, None, |buf| {
        buf[..5].copy_from_slice(b"hello");
        Some(5)
    })
    .unwrap();
    ring.send_data(owner, peer_addr, 512, 1, 2, false).unwrap();
    let mut sends = 0;
    reap_until(
        &mut ring,
        |c| {
            if matches!(c.op, Op::Send(_)) {
                assert!(c.result > 0, "send failed: {}", c.result);
                sends += 1;
            }
            sends == 2
        },
        "two sends",
    );
    let mut buf = [0u8; 2048];
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(from, ours);
        sizes.push(n);
    }
    assert_eq!(sizes, vec![5, 516, 492]);

    ring.arm_recv(owner, Group::Transfers);
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"stray", ours).unwrap();
    peer.send_to(b"mine", ours).unwrap();
    // Everything that arrives within 200 ms (bounded): the peer's only.
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut received = Vec::new();
    let mut batch = Vec::new();
    while Instant::now() < deadline {
        ring.submit_and_wait(Duration::from_millis(20), false)
            .unwrap();
        ring.reap(&mut batch, 64);
        for mut c in batch.drain(..) {
            if let Some(b) = c.buffer.take() {
                let d = ring.datagram(&b).map(|d| (d.peer, d.payload.to_vec()));
                received.push(d);
                ring.recycle(b);
            }
        }
    }
    assert_eq!(received, vec![Some((Some(peer_addr), b"mine".to_vec()))]);
}
