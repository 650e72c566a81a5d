//! Socket activation: uftpd serves the UDP socket systemd passes
//! (LISTEN_FDS/LISTEN_PID, fd 3), under systemd-socket-activate and with a
//! socket this test passes itself. Loopback only; every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A free UDP port on loopback below the kernel's ephemeral range, so no
/// other test's socket takes it while this test runs.
fn free_port_outside_ephemeral_range(salt: u16) -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(10_000).max(1);
    let seed = (std::process::id() as u16).wrapping_add(salt.wrapping_mul(7919));
    for i in 0..200u16 {
        let port = 10_000 + seed.wrapping_add(i.wrapping_mul(97)) % span;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

/// Fetches `name` from `server`, resending the request every 200 ms until
/// the first reply (the server may not have started yet: the request that
/// wakes systemd-socket-activate waits in the socket for uftpd).
fn get_when_up(server: SocketAddr, name: &[u8], within: Duration) -> Result<RawGet, String> {
    let sock = client_socket(server);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        sock.send_to(&rrq(name, "octet", &[]), server)
            .map_err(|e| e.to_string())?;
        let Some((p, from, _)) = recv_packet(&sock, Duration::from_millis(200)) else {
            continue;
        };
        let Packet::Data { block: 1, data } = p else {
            return Err(format!("first reply {p:?}"));
        };
        sock.send_to(&ack(1), from).map_err(|e| e.to_string())?;
        assert!(data.len() < 512, "the test file fits one block");
        return Ok(RawGet {
            data,
            tid: Some(from),
            ..RawGet::default()
        });
    }
    Err("no reply".into())
}

/// Shards whose transfers the JSON log shows.
fn shards_in_log(log: &str) -> BTreeSet<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "transfer")
        .filter_map(|v| v["shard"].as_u64())
        .collect()
}

/// Transfers from many client ports, until both shards have served one
/// (the kernel spreads clients over the SO_REUSEPORT group by port).
fn assert_both_shards_serve(server: &Server) {
    for _ in 0..64 {
        let got = raw_get(server.addr(), b"boot.txt", "octet", &[])
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert_eq!(got.data, b"booted\n");
        if shards_in_log(&server.log()).len() == 2 {
            return;
        }
    }
    // Let the last log lines arrive.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        shards_in_log(&server.log()).len(),
        2,
        "only one shard served 64 clients\n{}",
        server.log()
    );
}

#[test]
fn systemd_socket_activate_starts_uftpd_on_its_socket() {
    if skip_on_stand_in("uftpd's socket activation") || skip_if_missing("systemd-socket-activate") {
        return;
    }
    let dir = TempDir::new("activate");
    std::fs::write(dir.join("boot.txt"), b"booted\n").unwrap();
    let port = free_port_outside_ephemeral_range(1);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["--datagram", "-l", &addr.to_string()])
        .arg(env!("CARGO_BIN_EXE_uftpd"))
        .args([
            "--cores",
            "2",
            "--stats",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg(dir.path());
    // systemd-socket-activate starts uftpd on the first datagram: send it
    // from a thread while the harness waits for the `listening on` line.
    let first = std::thread::spawn(move || get_when_up(addr, b"boot.txt", Duration::from_secs(10)));
    let server = Server::start_command(cmd, 1);
    assert_eq!(server.addr(), addr);
    assert!(
        server.log().contains("(socket from systemd)"),
        "{}",
        server.log()
    );
    let got = first
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(got.data, b"booted\n");
    assert_both_shards_serve(&server);
    assert!(!server.log().contains("\"warn\""), "{}", server.log());
}

/// `uftpd ARGS` with `socket` as fd 3 and LISTEN_FDS=`fds`, LISTEN_PID
/// its own pid (through sh, whose pid exec keeps).
fn with_passed_socket(socket: &impl AsRawFd, fds: &str, args: &[&str], root: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("LISTEN_FDS={fds} LISTEN_PID=$$ exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_uftpd"))
        .args(args)
        .arg(root);
    let raw = socket.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2,
    // fcntl, close); dup2 to 3 leaves the copy inheritable.
    unsafe {
        cmd.pre_exec(move || {
            if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing else passed: fd 4 must be closed (LISTEN_FDS=2 case).
            libc::close(4);
            Ok(())
        });
    }
    cmd
}

#[test]
fn a_socket_passed_on_fd_3_is_served_by_every_shard() {
    if skip_on_stand_in("uftpd's socket activation") {
        return;
    }
    let dir = TempDir::new("passed-fd");
    std::fs::write(dir.join("boot.txt"), b"booted\n").unwrap();
    let root = dir.path().to_str().unwrap();
    // Bound without SO_REUSEPORT, as systemd does without ReusePort=yes.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let args = [
        "--cores",
        "2",
        "--stats",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ];
    let server = Server::start_command(with_passed_socket(&socket, "1", &args, root), 1);
    drop(socket); // the server holds its copy
    assert_eq!(server.addr(), addr);
    assert_both_shards_serve(&server);
}

#[test]
fn bad_socket_activation_is_one_line_and_exit_2() {
    if skip_on_stand_in("uftpd's socket activation") {
        return;
    }
    let dir = TempDir::new("passed-bad");
    let root = dir.path().to_str().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cases: [(Command, &str); 4] = [
        (
            with_passed_socket(&udp, "1", &["--listen", "127.0.0.1:0"], root),
            "--listen and socket activation",
        ),
        (
            with_passed_socket(&udp, "2", &[], root),
            "descriptor 4 is not open",
        ),
        (with_passed_socket(&udp, "lots", &[], root), "not a number"),
        (
            with_passed_socket(&tcp, "1", &[], root),
            "not a datagram socket",
        ),
    ];
    for (mut cmd, says) in cases {
        let out = run_client(&mut cmd, Duration::from_secs(10));
        let err = &out.stderr;
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(2),
            "{says}: {}",
            out.describe()
        );
        assert_eq!(err.lines().count(), 1, "{says}: {err}");
        assert!(err.contains(says), "{says}: {err}");
    }
}

/// dist/'s units pass `systemd-analyze verify` (the binary path pointed at
/// the one under test), and keep the settings README documents.
#[test]
fn the_shipped_units_verify() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let service = std::fs::read_to_string(dist.join("uftpd.service")).unwrap();
    let socket = std::fs::read_to_string(dist.join("uftpd.socket")).unwrap();
    for setting in [
        "LimitMEMLOCK=infinity",
        "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "--user tftp",
    ] {
        assert!(service.contains(setting), "uftpd.service lacks {setting}");
    }
    for setting in [
        "ReusePort=yes",
        "BindIPv6Only=ipv6-only",
        "ListenDatagram=0.0.0.0:69",
    ] {
        assert!(socket.contains(setting), "uftpd.socket lacks {setting}");
    }
    if skip_if_missing("systemd-analyze") {
        return;
    }
    let dir = TempDir::new("units");
    let exe = env!("CARGO_BIN_EXE_uftpd");
    std::fs::write(
        dir.join("uftpd.service"),
        service.replace("/usr/sbin/uftpd", exe),
    )
    .unwrap();
    std::fs::write(dir.join("uftpd.socket"), &socket).unwrap();
    let out = run_client(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.join("uftpd.socket"))
            .arg(dir.join("uftpd.service")),
        Duration::from_secs(30),
    );
    assert!(
        out.success() && out.stderr.trim().is_empty(),
        "{}",
        out.describe()
    );
}

#[test]
fn inetd_mode_without_a_socket_on_stdin_is_one_line_and_exit_2() {
    if skip_on_stand_in("uftpd's --inetd") {
        return;
    }
    let dir = TempDir::new("inetd-bad");
    let out = run_client(
        Command::new(env!("CARGO_BIN_EXE_uftpd"))
            .arg("--inetd")
            .arg(dir.path()),
        Duration::from_secs(10),
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(2),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("standard input is not a socket"),
        "{}",
        out.stderr
    );
}

/// Native `--inetd`: the socket on standard input is served by every
/// shard, and `--idle-exit-secs` ends the server once nothing happens.
#[test]
fn inetd_mode_serves_the_socket_on_stdin_with_every_shard() {
    if skip_on_stand_in("uftpd's --inetd") {
        return;
    }
    let dir = TempDir::new("inetd");
    std::fs::write(dir.join("boot.txt"), b"booted\n").unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uftpd"));
    cmd.args([
        "--inetd",
        "--idle-exit-secs",
        "5",
        "--cores",
        "2",
        "--stats",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .arg(dir.path());
    let mut server = Server::start_inetd(cmd, socket);
    assert_eq!(server.addr(), addr);
    assert_both_shards_serve(&server);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.log()
    );
}
