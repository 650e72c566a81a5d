//! Operators' flags on the real binary: `--refuse` (options left out of
//! negotiation) and `--port-range` (where transfer sockets bind).
//! Loopback only; every wait is bounded.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn refused_options_are_left_out_of_the_oack() {
    if skip_on_stand_in("uftpd's --refuse") {
        return;
    }
    let dir = TempDir::new("refuse");
    let body = write_random_file(&dir.join("f.bin"), 7, 3000);
    let server = Server::start(dir.path(), &["--refuse", "tsize", "--refuse", "BLKSIZE"]);
    let opts = [("tsize", "0"), ("blksize", "1024"), ("windowsize", "2")];
    let got = raw_get(server.addr(), b"f.bin", "octet", &opts)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_same_bytes(&got.data, &body, "f.bin");
    let oack = got.oack.unwrap_or_default();
    assert_eq!(oack, [("windowsize".to_string(), "2".to_string())]);
    assert_eq!(got.max_payload, 512, "blksize was not negotiated");
    // Only refused options: no OACK at all, DATA 1 straight away.
    match request_first_reply(
        server.addr(),
        &rrq(b"f.bin", "octet", &[("tsize", "0")]),
        Duration::from_secs(5),
    ) {
        Some((Packet::Data { block: 1, .. }, _)) => {}
        other => panic!("expected DATA 1, got {other:?}\n{}", server.log()),
    }
    // A bad name is one line and exit 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uftpd"))
        .args(["--refuse", "mtu", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// A free UDP port on loopback below the kernel's ephemeral range, so no
/// other test's socket takes it while this test runs.
fn port_outside_ephemeral_range() -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(10_000).max(1);
    let seed = std::process::id() as u16;
    for i in 0..200u16 {
        let port = 10_000 + (seed.wrapping_add(i.wrapping_mul(97))) % span;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

#[test]
fn transfer_sockets_bind_in_the_port_range_and_refuse_when_it_is_full() {
    if skip_on_stand_in("uftpd's --port-range") {
        return;
    }
    let dir = TempDir::new("port-range");
    std::fs::write(dir.join("small"), b"tiny\n").unwrap();
    let port = port_outside_ephemeral_range();
    let range = format!("{port}:{port}");
    let server = Server::start(dir.path(), &["--port-range", &range]);

    // The first transfer takes the range's only port, and keeps it while
    // its DATA 1 is not acknowledged.
    let first = client_socket(server.addr());
    first
        .send_to(&rrq(b"small", "octet", &[]), server.addr())
        .unwrap();
    let Some((Packet::Data { block: 1, .. }, tid, _)) = recv_packet(&first, Duration::from_secs(5))
    else {
        panic!("no DATA 1\n{}", server.log());
    };
    assert_eq!(tid.port(), port, "{}", server.log());

    // No port left: an ERROR from the service port, not silence.
    match request_first_reply(
        server.addr(),
        &rrq(b"small", "octet", &[]),
        Duration::from_secs(5),
    ) {
        Some((Packet::Error { code: 0, msg }, from)) => {
            assert!(msg.contains("No free transfer port"), "{msg}");
            assert_eq!(from, server.addr());
        }
        other => panic!("expected ERROR 0, got {other:?}\n{}", server.log()),
    }

    // Once the first transfer is done the port serves again.
    first.send_to(&ack(1), tid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let served: SocketAddr = loop {
        assert!(
            Instant::now() < deadline,
            "port not reused\n{}",
            server.log()
        );
        let sock = client_socket(server.addr());
        match raw_get_on(
            &sock,
            server.addr(),
            b"small",
            "octet",
            &[],
            Duration::from_secs(5),
        ) {
            Ok(got) => {
                assert_eq!(got.data, b"tiny\n");
                break got.tid.unwrap();
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_eq!(served.port(), port);
    assert!(
        server.log().contains("No free transfer port"),
        "the refusal is logged\n{}",
        server.log()
    );
}

#[test]
fn listen_takes_addresses_as_operators_write_them() {
    if skip_on_stand_in("uftpd's --listen forms") {
        return;
    }
    let dir = TempDir::new("listen-forms");
    std::fs::write(dir.join("f"), b"x\n").unwrap();
    let server = Server::start(dir.path(), &["--listen", "localhost:0"]);
    assert!(server.addr().ip().is_loopback(), "{}", server.log());
    let got = raw_get(server.addr(), b"f", "octet", &[]).unwrap();
    assert_eq!(got.data, b"x\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uftpd"))
        .args(["--listen", "pxe.example:69", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("IP address"), "{err}");
}
