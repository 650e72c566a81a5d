//! 10,000 concurrent sessions on one machine: every one admitted and
//! answered, memory and descriptors bounded, and a clean exit. The figures
//! (bytes and descriptors per session) are printed for SECURITY.md; the
//! bounds asserted are generous. Loopback only, bounded in time.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{Packet, Server, TempDir, ack, parse, rrq};

const SESSIONS: usize = 10_000;

fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getters/setters on our own limits, valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The "mem" of /proc/net/sockstat's UDP line: pages of socket buffers.
fn udp_mem_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("UDP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "mem")?;
            words.get(at + 1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn ten_thousand_concurrent_sessions_are_held_in_bounded_memory() {
    raise_own_nofile();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain getter with a valid pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if (lim.rlim_cur as usize) < SESSIONS + 200 {
        eprintln!(
            "SKIP: RLIMIT_NOFILE {} is too low for {SESSIONS} client sockets",
            lim.rlim_cur
        );
        return;
    }
    let dir = TempDir::new("capacity");
    common::write_random_file(&dir.join("f.bin"), 1, 64 * 1024);
    // Loopback clients share one address: lift the per-source rate and
    // the per-source count of unanswered sessions for the storm (every
    // RRQ is sent before the first ACK; a real farm's clients have
    // addresses of their own). The session limit
    // is split evenly between the 2 shards and the kernel's hash spreads
    // clients unevenly: 12,000 leaves room for 10,000 in one storm.
    let mut server = Server::start(
        dir.path(),
        &[
            "--max-sessions",
            "12000",
            "--client-burst",
            "20000",
            "--max-unverified-per-client",
            "20000",
            "--retransmit-ms",
            "5000",
        ],
    );
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = status_kib(pid, "VmRSS:");
    let fds_idle = fds(pid);
    let udp_pages_idle = udp_mem_pages();

    let started = Instant::now();
    let clients: Vec<UdpSocket> = (0..SESSIONS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let request = rrq(b"f.bin", "octet", &[]);
    for (i, s) in clients.iter().enumerate() {
        s.send_to(&request, server.addr()).unwrap();
        if i % 500 == 499 {
            std::thread::sleep(Duration::from_millis(2)); // let the socket buffers drain
        }
    }
    // Every client gets DATA 1 and ACKs it (its session is then verified
    // and holds its place), then falls silent.
    let mut answered = vec![false; SESSIONS];
    let mut left = SESSIONS;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    while left > 0 && Instant::now() < deadline {
        let mut progress = false;
        for (i, s) in clients.iter().enumerate() {
            if answered[i] {
                continue;
            }
            if let Ok((n, tid)) = s.recv_from(&mut buf) {
                match parse(&buf[..n]) {
                    Packet::Data { block: 1, .. } => {
                        s.send_to(&ack(1), tid).unwrap();
                        answered[i] = true;
                        left -= 1;
                        progress = true;
                    }
                    other => panic!("client {i}: {other:?}"),
                }
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(
        left, 0,
        "{left} of {SESSIONS} clients got no DATA 1 within 30 s"
    );
    let ramp = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.is_running());
    let rss_full = status_kib(pid, "VmRSS:");
    let fds_full = fds(pid);
    let per_session_bytes = rss_full.saturating_sub(rss_idle) * 1024 / SESSIONS as u64;
    // Socket buffers are kernel memory: counted for all UDP sockets (the
    // test's clients too, whose queues are empty by now).
    let kernel_per_session =
        udp_mem_pages().saturating_sub(udp_pages_idle) * 4096 / SESSIONS as u64;
    eprintln!(
        "{SESSIONS} sessions in {ramp:?}: server RSS {rss_idle} -> {rss_full} KiB \
         ({per_session_bytes} bytes per session), descriptors {fds_idle} -> {fds_full}, \
         UDP socket buffers in the kernel {kernel_per_session} bytes per session"
    );
    assert!(fds_full >= fds_idle + SESSIONS, "one socket per session");
    assert!(
        fds_full <= fds_idle + SESSIONS + 64,
        "and nothing else grows"
    );
    assert!(
        per_session_bytes < 16 * 1024,
        "{per_session_bytes} bytes per session"
    );

    // A second SIGTERM ends them all at once; the server exits cleanly.
    server.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert!(status.success(), "{status}\n{}", server.log());
}
