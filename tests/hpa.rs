//! tftpd-hpa's command line in the real binary (invoked as `in.tftpd`),
//! and the native flags behind it: --user, --pidfile, --umask and the
//! world-readable check. Loopback and high ports only.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

fn error_reply(server: &Server, request: &[u8]) -> (u16, String) {
    match request_first_reply(server.addr(), request, Duration::from_secs(5)) {
        Some((Packet::Error { code, msg }, _)) => (code, msg),
        other => panic!("expected an ERROR, got {other:?}\n{}", server.log()),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The real uid of a process, from /proc.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn debian_style_in_tftpd_serves_as_the_user_it_names() {
    if skip_on_stand_in("uftpd's in.tftpd") {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPING: switching users needs root");
        return;
    }
    let dir = TempDir::new("hpa-debian");
    let root = dir.join("srv");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("pxelinux.0"), b"boot\n").unwrap();
    let private = root.join("private");
    std::fs::write(&private, b"no\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.join("in.tftpd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_uftpd"), &link).unwrap();
    let pidfile = dir.join("tftpd.pid");
    // Debian's line, on a loopback port of the kernel's choosing.
    let mut cmd = Command::new(&link);
    cmd.args([
        "--listen",
        "--user",
        "nobody",
        "--address",
        "127.0.0.1:0",
        "--secure",
    ])
    .arg("-P")
    .arg(&pidfile)
    .arg(&root);
    let server = Server::start_command(cmd, 1);
    let got = raw_get(server.addr(), b"pxelinux.0", "octet", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(got.data, b"boot\n");
    // Not world-readable and no -p: refused, as tftpd-hpa does.
    let (code, msg) = error_reply(&server, &rrq(b"private", "octet", &[]));
    assert_eq!((code, msg.as_str()), (2, "Permission denied"));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, server.pid());
    assert_eq!(uid_of(pid), Some(65534), "{}", server.log());
    assert!(
        server.log().contains("running as user nobody"),
        "{}",
        server.log()
    );
}

/// RHEL's `in.tftpd -s DIR` without -l, as inetd or systemd's tftp.socket
/// (`StandardInput=socket`) start it: the socket on standard input,
/// served as `nobody` (no -u, started as root), and an exit after -t
/// seconds without a request, not before.
#[test]
fn rhel_style_in_tftpd_serves_the_socket_on_stdin_and_exits_when_idle() {
    if skip_on_stand_in("uftpd's in.tftpd") {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPING: switching users needs root");
        return;
    }
    let dir = TempDir::new("hpa-rhel");
    let root = dir.join("tftpboot");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("pxelinux.0"), b"boot\n").unwrap();
    let link = dir.join("in.tftpd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_uftpd"), &link).unwrap();
    // The socket inetd would have bound, with the request that woke it
    // already waiting.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let early = client_socket(addr);
    early
        .send_to(&rrq(b"pxelinux.0", "octet", &[]), addr)
        .unwrap();
    let mut cmd = Command::new(&link);
    cmd.args(["-t", "3", "-s"]).arg(&root);
    let started = std::time::Instant::now();
    let mut server = Server::start_inetd(cmd, socket);
    assert_eq!(server.addr(), addr);
    assert!(
        server.log().contains("(socket from inetd)"),
        "{}",
        server.log()
    );
    match recv_packet(&early, Duration::from_secs(5)) {
        Some((Packet::Data { block: 1, data }, from, _)) => {
            assert_eq!(data, b"boot\n");
            early.send_to(&ack(1), from).unwrap();
        }
        other => panic!("the waiting request got {other:?}\n{}", server.log()),
    }
    assert_eq!(uid_of(server.pid()), Some(65534), "{}", server.log());
    // Requests 0.5 s apart keep a server with -t 3 running past 3 s.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(500));
        let got = raw_get(addr, b"pxelinux.0", "octet", &[])
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert_eq!(got.data, b"boot\n");
    }
    assert!(started.elapsed() > Duration::from_millis(3_500));
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.log()
    );
    assert!(
        server.log().contains("idle for 3 s: exiting"),
        "{}",
        server.log()
    );
}

/// tftpd-hpa without -s: names are absolute and must lie under one of
/// the directories given; uftpd serves them the same way, through real
/// clients, and refuses relative names and names under no directory.
#[test]
fn in_tftpd_without_secure_serves_absolute_names_under_its_directories() {
    if skip_on_stand_in("uftpd's in.tftpd") {
        return;
    }
    let dir = TempDir::new("hpa-absolute");
    let first = dir.join("tftpboot");
    let second = dir.join("images");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(first.join("pxelinux.0"), b"pxe\n").unwrap();
    std::fs::write(second.join("vmlinuz"), b"kernel\n").unwrap();
    std::fs::write(dir.join("secret"), b"no\n").unwrap();
    let link = dir.join("in.tftpd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_uftpd"), &link).unwrap();
    let mut cmd = Command::new(&link);
    // -u root keeps the test's own temporary directory readable.
    cmd.args(["-l", "-u", "root", "-a", "127.0.0.1:0"])
        .arg(&first)
        .arg(&second);
    let server = Server::start_command(cmd, 1);
    let name = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let kernel = name(&second.join("vmlinuz"));
    let got = raw_get(
        server.addr(),
        name(&first.join("pxelinux.0")).as_bytes(),
        "octet",
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(got.data, b"pxe\n");
    if !skip_if_missing("tftp") {
        let out_path = dir.join("got-kernel");
        let out = run_client(
            Command::new("tftp")
                .args([
                    "-m",
                    "binary",
                    &server.host(),
                    &server.port().to_string(),
                    "-c",
                    "get",
                ])
                .arg(&kernel)
                .arg(&out_path),
            Duration::from_secs(20),
        );
        assert!(out.success(), "{}", out.describe());
        assert_file_eq(&out_path, b"kernel\n", "tftp-hpa get of an absolute name");
    }
    for (request, says) in [
        ("pxelinux.0".to_string(), "Only absolute filenames allowed"),
        (name(&dir.join("secret")), "Outside the served directory"),
        (
            format!("{}/../secret", name(&first)),
            "Outside the served directory",
        ),
    ] {
        let (code, msg) = error_reply(&server, &rrq(request.as_bytes(), "octet", &[]));
        assert_eq!((code, msg.as_str()), (2, says), "{request}");
    }
}

#[test]
fn in_tftpd_refuses_what_uftpd_cannot_do_in_one_line() {
    let dir = TempDir::new("hpa-refuse");
    let link = dir.join("in.tftpd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_uftpd"), &link).unwrap();
    let root = dir.path().to_str().unwrap();
    for (args, says) in [
        // No -l: inetd mode, and standard input is no socket here.
        (vec!["-s", root], "standard input is not a socket"),
        (vec!["-l", "-R", "8191:4096", "-s", root], "-R/--port-range"),
        (vec!["-l", "-r", "mtu", "-s", root], "-r/--refuse"),
        (vec!["-l", "-a", "127.0.0.1:0", "srv"], "must be absolute"),
    ] {
        let out = Command::new(&link).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // --compat hpa is the same as the symlink.
    let out = Command::new(env!("CARGO_BIN_EXE_uftpd"))
        .args(["--compat", "hpa", "-V"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("uftpd "));
}

#[test]
fn permissive_serves_files_others_may_not_read() {
    if skip_on_stand_in("uftpd's --permissive") {
        return;
    }
    let dir = TempDir::new("hpa-permissive");
    let f = dir.join("secret");
    std::fs::write(&f, b"s\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let strict = Server::start(dir.path(), &[]);
    let (code, _) = error_reply(&strict, &rrq(b"secret", "octet", &[]));
    assert_eq!(code, 2);
    drop(strict);
    let server = Server::start(dir.path(), &["--permissive"]);
    let got = raw_get(server.addr(), b"secret", "octet", &[]).unwrap();
    assert_eq!(got.data, b"s\n");
}

#[test]
fn umask_sets_the_mode_of_uploads() {
    if skip_on_stand_in("uftpd's --umask") {
        return;
    }
    let dir = TempDir::new("hpa-umask");
    let pidfile = dir.join("uftpd.pid");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut server = Server::start(
        &root,
        &[
            "--create",
            "--umask",
            "077",
            "--pidfile",
            pidfile.to_str().unwrap(),
        ],
    );
    let sock = client_socket(server.addr());
    sock.send_to(&wrq(b"up.bin", "octet", &[]), server.addr())
        .unwrap();
    let Some((Packet::Ack { block: 0 }, tid, _)) = recv_packet(&sock, Duration::from_secs(5))
    else {
        panic!("no ACK 0\n{}", server.log());
    };
    sock.send_to(&data(1, b"hello"), tid).unwrap();
    let Some((Packet::Ack { block: 1 }, _, _)) = recv_packet(&sock, Duration::from_secs(5)) else {
        panic!("no ACK 1\n{}", server.log());
    };
    let mode = std::fs::metadata(root.join("up.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The pid file goes away with the server.
    assert!(pidfile.exists());
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    assert!(!pidfile.exists(), "{}", server.log());
}
