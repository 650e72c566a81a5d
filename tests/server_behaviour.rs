//! The server binary's own behaviour on loopback, driven by raw sockets:
//! start-up errors, shutdown, retransmission limits, and file safety.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Packet, Server, TempDir, ack, client_socket, data, recv_packet, rrq, wrq};

const SHORT: Duration = Duration::from_millis(1500);

fn uftpd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uftpd"))
}

/// Runs the binary expecting a start-up failure; returns its stderr.
fn startup_failure(args: &[&str]) -> String {
    let out = uftpd().args(args).output().expect("run uftpd");
    assert!(!out.status.success(), "expected failure for {args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line expected, got: {stderr}"
    );
    stderr
}

#[test]
fn startup_errors_are_one_clear_line() {
    let dir = TempDir::new("startup");
    let missing = dir.join("missing");
    let e = startup_failure(&["--listen", "127.0.0.1:0", missing.to_str().unwrap()]);
    assert!(e.contains("root") && e.contains("No such file"), "{e}");

    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = startup_failure(&["--listen", "127.0.0.1:0", file.to_str().unwrap()]);
    assert!(e.contains("root") && e.contains("directory"), "{e}");

    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let e = startup_failure(&["--listen", &taken, dir.path().to_str().unwrap()]);
    assert!(e.contains("port in use"), "{e}");

    // As root, uploads need --user or an explicit --allow-root-uploads.
    if uftpd::sys::process::effective_uid() == 0 {
        let root = dir.path().to_str().unwrap();
        let e = startup_failure(&["--listen", "127.0.0.1:0", "--create", root]);
        assert!(
            e.contains("--allow-root-uploads") && e.contains("--user"),
            "{e}"
        );
        let e = startup_failure(&["--listen", "127.0.0.1:0", "--overwrite", root]);
        assert!(e.contains("as root"), "{e}");
    }
}

#[test]
fn help_documents_every_flag_with_its_default() {
    let out = uftpd().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cores",
        "--listen",
        "--create",
        "--blksize-max",
        "--windowsize-max",
        "--retransmit-ms",
        "--retries",
        "--max-sessions",
        "--max-sessions-per-client",
        "--max-upload-bytes",
        "--max-netascii-bytes",
        "--dally-ms",
        "--grace-ms",
        "--verbose",
        "--map-file",
        "--map-test",
        "--lowercase",
        "--strip-trailing-garbage",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    for default in [
        "[default: 65464, capped to each interface's MTU",
        "[default: 64]",
        "[default: 1000]",
        "[default: 5]",
        "[default: 4096]",
    ] {
        assert!(help.contains(default), "--help lacks {default}:\n{help}");
    }
}

/// `--per-client-root` (dnsmasq's --tftp-unique-root): a client whose
/// ROOT/ADDRESS/ exists is served from there, everyone else from ROOT, and
/// the client's directory is no way out of the root.
#[test]
fn per_client_root_serves_a_clients_own_directory_when_it_exists() {
    if common::skip_on_stand_in("uftpd's --per-client-root") {
        return;
    }
    let root = TempDir::new("per-client");
    std::fs::create_dir_all(root.join("127.0.0.1")).unwrap();
    std::fs::write(root.join("127.0.0.1/boot.cfg"), b"mine\n").unwrap();
    std::fs::write(root.join("boot.cfg"), b"everyone\n").unwrap();
    std::fs::write(root.join("shared.bin"), b"shared\n").unwrap();
    let server = Server::start(root.path(), &["--per-client-root"]);
    let from = |ip: &str, name: &[u8]| {
        let sock = std::net::UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        common::raw_get_on(
            &sock,
            server.addr(),
            name,
            "octet",
            &[],
            Duration::from_secs(10),
        )
    };
    let mine = from("127.0.0.1", b"boot.cfg").unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(mine.data, b"mine\n");
    let other = from("127.0.0.2", b"boot.cfg").unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(other.data, b"everyone\n");
    // As in dnsmasq, the directory replaces the root for its client:
    // files only in ROOT are not found there.
    match from("127.0.0.1", b"shared.bin") {
        Err(e) => assert!(e.contains("File not found"), "{e}"),
        Ok(got) => panic!("served {:?} from ROOT", got.data),
    }
    match from("127.0.0.1", b"../boot.cfg") {
        Err(e) => assert!(e.contains("Outside the served directory"), "{e}"),
        Ok(got) => panic!("served {:?} from above the client's directory", got.data),
    }
}

/// Reads DATA blocks in lock-step, ACKing each, until a short block.
fn finish_rrq(sock: &UdpSocket, tid: std::net::SocketAddr, mut next: u16, out: &mut Vec<u8>) {
    for _ in 0..100_000 {
        let Some((p, from, _)) = recv_packet(sock, Duration::from_secs(3)) else {
            panic!("transfer stalled at block {next}");
        };
        assert_eq!(from, tid);
        let Packet::Data { block, data } = p else {
            panic!("unexpected {p:?}")
        };
        if block != next {
            continue;
        }
        out.extend_from_slice(&data);
        sock.send_to(&ack(block), tid).unwrap();
        if data.len() < 512 {
            return;
        }
        next = next.wrapping_add(1);
    }
    panic!("too many blocks");
}

#[test]
fn sigterm_lets_a_running_transfer_finish_then_exits_zero() {
    let dir = TempDir::new("sigterm");
    let want = common::write_random_file(&dir.join("f.bin"), 7, 100 * 512 + 3);
    let mut server = Server::start(dir.path(), &["--grace-ms", "5000"]);
    let sock = client_socket(server.addr());
    sock.send_to(&rrq(b"f.bin", "octet", &[]), server.addr())
        .unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("DATA 1");
    let Packet::Data { block: 1, data } = p else {
        panic!("{p:?}")
    };
    let mut got = data;
    server.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    // New requests are no longer taken...
    let other = client_socket(server.addr());
    other
        .send_to(&rrq(b"f.bin", "octet", &[]), server.addr())
        .unwrap();
    // ...but the running transfer completes.
    sock.send_to(&ack(1), tid).unwrap();
    let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        finish_rrq(&sock, tid, 2, &mut got)
    }));
    assert!(
        finished.is_ok(),
        "transfer across SIGTERM:\n{}",
        server.log()
    );
    common::assert_same_bytes(&got, &want, "transfer across SIGTERM");
    assert!(
        recv_packet(&other, Duration::from_millis(100)).is_none(),
        "served a request after SIGTERM"
    );
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("server did not exit");
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
}

#[test]
fn a_file_truncated_under_its_map_aborts_only_that_transfer() {
    let dir = TempDir::new("truncate");
    let path = dir.join("shrinks.bin");
    common::write_random_file(&path, 1, 1 << 20);
    let other = common::write_random_file(&dir.join("other.bin"), 2, 5000);
    let mut server = Server::start(dir.path(), &[]);
    let sock = client_socket(server.addr());
    sock.send_to(&rrq(b"shrinks.bin", "octet", &[]), server.addr())
        .unwrap();
    let (_, tid, _) = recv_packet(&sock, SHORT).expect("DATA 1");
    // Shrink the file in place while the transfer holds its map.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let mut ended_with = None;
    for block in 1..=64u16 {
        sock.send_to(&ack(block), tid).unwrap();
        match recv_packet(&sock, SHORT) {
            Some((Packet::Data { .. }, _, _)) => {}
            Some((Packet::Error { code, msg }, _, _)) => {
                ended_with = Some((code, msg));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Blocks in the page that still holds EOF read as zeros; the first
    // block past it faults in the kernel and ends the transfer.
    let (code, msg) = ended_with.expect("no ERROR after truncation");
    assert_eq!(code, 0, "{msg}");
    assert!(server.is_running(), "server died:\n{}", server.log());
    let fresh = client_socket(server.addr());
    fresh
        .send_to(&rrq(b"other.bin", "octet", &[]), server.addr())
        .unwrap();
    let (p, tid, _) = recv_packet(&fresh, SHORT).expect("DATA 1 of other.bin");
    let Packet::Data { block: 1, data } = p else {
        panic!("{p:?}")
    };
    let mut got = data;
    fresh.send_to(&ack(1), tid).unwrap();
    finish_rrq(&fresh, tid, 2, &mut got);
    common::assert_same_bytes(&got, &other, "transfer after a truncation");
}

#[test]
fn an_interrupted_upload_leaves_no_file_and_keeps_the_old_one() {
    let dir = TempDir::new("interrupted");
    std::fs::write(dir.join("keep.bin"), b"old contents").unwrap();
    let server = Server::start(
        dir.path(),
        &["--overwrite", "--retransmit-ms", "100", "--retries", "1"],
    );
    for name in ["new.bin", "keep.bin"] {
        let sock = client_socket(server.addr());
        sock.send_to(&wrq(name.as_bytes(), "octet", &[]), server.addr())
            .unwrap();
        let (p, tid, _) = recv_packet(&sock, SHORT).expect("ACK 0");
        assert_eq!(p, Packet::Ack { block: 0 });
        for block in 1..=3u16 {
            sock.send_to(&data(block, &[0xab; 512]), tid).unwrap();
            let (p, _, _) = recv_packet(&sock, SHORT).expect("ACK");
            assert_eq!(p, Packet::Ack { block });
        }
        // Go silent: the server gives up after its retries.
    }
    std::thread::sleep(Duration::from_millis(1500));
    common::assert_dir_exactly(dir.path(), &["keep.bin"]);
    assert_eq!(
        std::fs::read(dir.join("keep.bin")).unwrap(),
        b"old contents"
    );
}

#[test]
fn uploads_are_refused_without_create() {
    let dir = TempDir::new("nocreate");
    let server = Server::start(dir.path(), &[]);
    let sock = client_socket(server.addr());
    sock.send_to(&wrq(b"x.bin", "octet", &[]), server.addr())
        .unwrap();
    let (p, _, _) = recv_packet(&sock, SHORT).expect("an answer");
    assert!(matches!(p, Packet::Error { code: 2, .. }), "{p:?}");
    common::assert_dir_exactly(dir.path(), &[]);
}

/// Counts the packets that arrive within `window`.
fn count_arrivals(sock: &UdpSocket, window: Duration) -> Vec<Packet> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match recv_packet(sock, left) {
            Some((p, _, _)) => seen.push(p),
            None => break,
        }
    }
    seen
}

#[test]
fn a_peer_that_never_answers_gets_its_first_reply_resent_once() {
    let dir = TempDir::new("reflector");
    common::write_random_file(&dir.join("f.bin"), 3, 10_000);
    let server = Server::start(dir.path(), &["--retransmit-ms", "200", "--retries", "5"]);
    for options in [&[][..], &[("blksize", "1428"), ("windowsize", "4")][..]] {
        let sock = client_socket(server.addr());
        sock.send_to(&rrq(b"f.bin", "octet", options), server.addr())
            .unwrap();
        let seen = count_arrivals(&sock, Duration::from_millis(2000));
        assert_eq!(
            seen.len(),
            2,
            "first reply + one resend expected, got {seen:?}"
        );
    }
}

#[test]
fn a_peer_that_acked_once_gets_the_full_retry_budget() {
    let dir = TempDir::new("budget");
    common::write_random_file(&dir.join("f.bin"), 4, 10_000);
    let server = Server::start(dir.path(), &["--retransmit-ms", "100", "--retries", "3"]);
    let sock = client_socket(server.addr());
    sock.send_to(&rrq(b"f.bin", "octet", &[]), server.addr())
        .unwrap();
    let (_, tid, _) = recv_packet(&sock, SHORT).expect("DATA 1");
    sock.send_to(&ack(1), tid).unwrap();
    // 100 + 200 + 400 + 800 ms of backoff: DATA 2 once and 3 resends.
    let seen = count_arrivals(&sock, Duration::from_millis(3000));
    assert_eq!(
        seen,
        vec![
            Packet::Data {
                block: 2,
                data: seen_data(&seen)
            };
            4
        ]
    );
}

fn seen_data(seen: &[Packet]) -> Vec<u8> {
    match seen.first() {
        Some(Packet::Data { data, .. }) => data.clone(),
        _ => Vec::new(),
    }
}

#[test]
fn a_repeated_request_is_answered_by_the_waiting_session() {
    let dir = TempDir::new("duprrq");
    let want = common::write_random_file(&dir.join("f.bin"), 5, 3000);
    let server = Server::start(dir.path(), &["--retransmit-ms", "5000"]);
    let sock = client_socket(server.addr());
    let request = rrq(b"f.bin", "octet", &[]);
    sock.send_to(&request, server.addr()).unwrap();
    sock.send_to(&request, server.addr()).unwrap();
    let (p1, tid1, _) = recv_packet(&sock, SHORT).expect("first DATA 1");
    let (p2, tid2, _) = recv_packet(&sock, SHORT).expect("second DATA 1");
    assert_eq!(tid1, tid2, "a second session answered the repeat");
    assert_eq!(p1, p2);
    let Packet::Data { data, .. } = p1 else {
        panic!()
    };
    let mut got = data;
    sock.send_to(&ack(1), tid1).unwrap();
    finish_rrq(&sock, tid1, 2, &mut got);
    common::assert_same_bytes(&got, &want, "after a repeated request");
}

#[test]
fn duplicate_acks_never_draw_duplicate_data() {
    let dir = TempDir::new("dupack");
    let want = common::write_random_file(&dir.join("f.bin"), 6, 40 * 1024);
    let server = Server::start(dir.path(), &["--retransmit-ms", "5000"]);
    for window in ["1", "4"] {
        let sock = client_socket(server.addr());
        let options = [("windowsize", window)];
        sock.send_to(&rrq(b"f.bin", "octet", &options), server.addr())
            .unwrap();
        let (p, tid, _) = recv_packet(&sock, SHORT).expect("OACK");
        assert!(matches!(p, Packet::Oack { .. }), "{p:?}");
        let w: u16 = window.parse().unwrap();
        let mut got = Vec::new();
        let mut sends = 0usize;
        let mut acked = 0u16;
        'transfer: for _ in 0..1000 {
            // Every ACK three times: only the first may move the window.
            for _ in 0..3 {
                sock.send_to(&ack(acked), tid).unwrap();
            }
            for _ in 0..w {
                let Some((Packet::Data { block, data }, _, _)) = recv_packet(&sock, SHORT) else {
                    panic!("stalled after ACK {acked}");
                };
                sends += 1;
                assert_eq!(block, acked + 1, "out-of-order or repeated DATA");
                acked = block;
                let last = data.len() < 512;
                got.extend_from_slice(&data);
                if last {
                    sock.send_to(&ack(acked), tid).unwrap();
                    break 'transfer;
                }
            }
        }
        assert!(
            count_arrivals(&sock, Duration::from_millis(300)).is_empty(),
            "extra DATA after the end"
        );
        assert_eq!(
            sends,
            want.len() / 512 + 1,
            "window {window}: one DATA per block"
        );
        common::assert_same_bytes(&got, &want, "duplicate ACKs");
    }
}

/// Runs uftpd as `nobody` with RLIMIT_MEMLOCK at `limit_kib`; returns
/// (exit status or None if still running after the wait, stderr so far).
fn run_as_nobody_with_memlock(
    root: &std::path::Path,
    limit_kib: u32,
) -> (Option<std::process::ExitStatus>, String) {
    run_as_nobody_with_memlock_until(root, limit_kib, Duration::from_secs(3), None)
}

/// The same, killing the server (SIGKILL: no teardown) after `wait`, or as
/// soon as its stderr shows `until`.
fn run_as_nobody_with_memlock_until(
    root: &std::path::Path,
    limit_kib: u32,
    wait: Duration,
    until: Option<&str>,
) -> (Option<std::process::ExitStatus>, String) {
    let script = format!(
        "ulimit -l {limit_kib} && exec {} --no-stats --listen 127.0.0.1:0 --cores 2 {}",
        env!("CARGO_BIN_EXE_uftpd"),
        root.display()
    );
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "bash",
            "-c",
            &script,
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("setpriv");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut e = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let deadline = Instant::now() + wait;
    let mut status = None;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        if until.is_some_and(|u| seen.lock().unwrap().contains(u)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    // Reaps the child in every case (std keeps the status of a reaped one).
    let _ = child.wait();
    let _ = reader.join();
    let stderr = seen.lock().unwrap().clone();
    (status, stderr)
}

#[test]
fn a_low_memlock_limit_gets_reduced_rings_or_a_clear_message() {
    // Root holds CAP_IPC_LOCK, which exempts io_uring from the limit: the
    // check needs an unprivileged user (setpriv from util-linux).
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 || common::find_in_path("setpriv").is_none() {
        eprintln!("SKIP: needs root and setpriv to run as an unprivileged user");
        return;
    }
    let dir = TempDir::new("memlock");
    // The binary and root must be reachable by `nobody`.
    let mut reachable = std::path::PathBuf::from(env!("CARGO_BIN_EXE_uftpd"));
    while reachable.pop() {
        let Ok(meta) = std::fs::metadata(&reachable) else {
            break;
        };
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o005 != 0o005 {
            eprintln!("SKIP: {} is not reachable by nobody", reachable.display());
            return;
        }
    }
    let (status, stderr) = run_as_nobody_with_memlock(dir.path(), 16);
    let status = status.expect("should have exited");
    assert!(!status.success());
    assert!(
        stderr.contains("RLIMIT_MEMLOCK is 16 KiB") && stderr.contains("ulimit -l"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (status, stderr) = run_as_nobody_with_memlock(dir.path(), 64);
    assert!(status.is_none(), "should keep running: {stderr}");
    assert!(
        stderr.contains("reduced batching") && stderr.contains("listening on"),
        "{stderr}"
    );

    // Killed and started again at once, six times: the killed instance's
    // pinned pages are released asynchronously, and 4 of 6 such starts
    // used to fail with "Cannot allocate memory".
    for round in 0..6 {
        let (status, stderr) = run_as_nobody_with_memlock_until(
            dir.path(),
            64,
            Duration::from_secs(4),
            Some("listening on"),
        );
        assert!(
            status.is_none() && stderr.contains("listening on"),
            "restart {round}: {status:?} {stderr}"
        );
    }
}

/// Uploads `blocks` full blocks then a short one; returns the first ERROR
/// the server sent, if any.
fn upload_until_error(
    server: &Server,
    name: &str,
    options: &[(&str, &str)],
    blocks: u16,
) -> Option<(u16, String)> {
    let sock = client_socket(server.addr());
    sock.send_to(&wrq(name.as_bytes(), "octet", options), server.addr())
        .unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("a reply to the WRQ");
    match p {
        Packet::Error { code, msg } => return Some((code, msg)),
        Packet::Ack { block: 0 } | Packet::Oack { .. } => {}
        other => panic!("unexpected {other:?}"),
    }
    for block in 1..=blocks + 1 {
        let payload = if block > blocks {
            &[1u8; 7][..]
        } else {
            &[0x5a; 512][..]
        };
        sock.send_to(&data(block, payload), tid).unwrap();
        match recv_packet(&sock, SHORT) {
            Some((Packet::Ack { block: b }, _, _)) if b == block => {}
            Some((Packet::Error { code, msg }, _, _)) => return Some((code, msg)),
            other => panic!("block {block}: unexpected {other:?}"),
        }
    }
    None
}

#[test]
fn uploads_over_the_size_limit_get_error_3_and_leave_nothing() {
    let dir = TempDir::new("limit");
    let server = Server::start(dir.path(), &["--create", "--max-upload-bytes", "10000"]);
    // Announced too big: refused before any file exists.
    let refused = upload_until_error(&server, "a.bin", &[("tsize", "20000")], 40);
    assert_eq!(refused.map(|(c, _)| c), Some(3));
    // Not announced: refused when the data passes the limit.
    let refused = upload_until_error(&server, "b.bin", &[], 40);
    assert_eq!(refused.map(|(c, _)| c), Some(3));
    // Within the limit: fine.
    assert_eq!(
        upload_until_error(&server, "c.bin", &[("tsize", "5127")], 10),
        None
    );
    std::thread::sleep(Duration::from_millis(200));
    common::assert_dir_exactly(dir.path(), &["c.bin"]);
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gets_error_3_and_leaves_nothing() {
    let dir = TempDir::new("diskfull");
    let mount_point = dir.join("disk");
    std::fs::create_dir(&mount_point).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mount_point)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _disk = SmallDisk(mount_point.clone());
    std::fs::write(mount_point.join("keep.bin"), b"old").unwrap();
    let server = Server::start(&mount_point, &["--overwrite"]);
    let refused = upload_until_error(&server, "keep.bin", &[], 400);
    let (code, msg) = refused.expect("a 200 KiB upload to a 64 KiB disk must fail");
    assert_eq!(code, 3, "{msg}");
    std::thread::sleep(Duration::from_millis(200));
    common::assert_dir_exactly(&mount_point, &["keep.bin"]);
    assert_eq!(std::fs::read(mount_point.join("keep.bin")).unwrap(), b"old");
    drop(server);
}

/// Polls the server's log for `needle` until `deadline`.
fn log_shows(server: &Server, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if server.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_client_that_goes_away_ends_its_session_at_the_first_retransmit() {
    let dir = TempDir::new("goneaway");
    common::write_random_file(&dir.join("f.bin"), 8, 100_000);
    // Without the ICMP check this would take 0.3+0.6+1.2+2.4+4.8+9.6 s.
    let server = Server::start(dir.path(), &["-v", "--retransmit-ms", "300"]);
    for acked in [false, true] {
        let sock = client_socket(server.addr());
        sock.send_to(&rrq(b"f.bin", "octet", &[]), server.addr())
            .unwrap();
        let (_, tid, _) = recv_packet(&sock, SHORT).expect("DATA 1");
        if acked {
            sock.send_to(&ack(1), tid).unwrap();
            recv_packet(&sock, SHORT).expect("DATA 2");
        }
        let client = sock.local_addr().unwrap();
        drop(sock); // the client's port closes: ICMP port unreachable
        let line = format!("to {client}: failed (unreachable): peer's port closed");
        assert!(
            log_shows(&server, &line, Duration::from_secs(3)),
            "no '{line}' in:\n{}",
            server.log()
        );
    }
}

#[test]
fn an_error_5_bouncing_off_a_closed_stray_port_does_not_end_the_transfer() {
    let dir = TempDir::new("straybounce");
    let want = common::write_random_file(&dir.join("f.bin"), 9, 20_000);
    // Only unconnected transfer sockets answer strays.
    let server = Server::start(
        dir.path(),
        &["-v", "--retransmit-ms", "2000", "--stray-errors"],
    );
    let sock = client_socket(server.addr());
    sock.send_to(&rrq(b"f.bin", "octet", &[]), server.addr())
        .unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("DATA 1");
    let Packet::Data { data, .. } = p else {
        panic!("{p:?}")
    };
    {
        let stray = client_socket(server.addr());
        stray.send_to(&ack(1), tid).unwrap();
    } // closed at once: our ERROR 5 to it bounces as ICMP port unreachable
    std::thread::sleep(Duration::from_millis(300));
    let mut got = data;
    sock.send_to(&ack(1), tid).unwrap();
    finish_rrq(&sock, tid, 2, &mut got);
    common::assert_same_bytes(&got, &want, "transfer after a stray bounce");
    assert!(!server.log().contains("port closed"), "{}", server.log());
}

#[test]
fn the_final_ack_of_an_upload_means_the_file_is_in_place() {
    let dir = TempDir::new("finalack");
    let server = Server::start(dir.path(), &["--create"]);
    for (round, size) in [(0u64, 0usize), (1, 511), (2, 512), (3, 40_000)] {
        let name = format!("up{round}.bin");
        let want = common::pseudo_random_bytes(round, size);
        let sock = client_socket(server.addr());
        sock.send_to(&wrq(name.as_bytes(), "octet", &[]), server.addr())
            .unwrap();
        let (p, tid, _) = recv_packet(&sock, SHORT).expect("ACK 0");
        assert_eq!(p, Packet::Ack { block: 0 });
        let blocks: Vec<&[u8]> = want
            .chunks(512)
            .chain(
                // A size that is a multiple of 512 (or 0) ends with an empty block.
                (size % 512 == 0).then_some(&[][..]),
            )
            .collect();
        for (i, chunk) in blocks.iter().enumerate() {
            let block = (i + 1) as u16;
            sock.send_to(&data(block, chunk), tid).unwrap();
            let (p, _, _) = recv_packet(&sock, SHORT).expect("ACK");
            assert_eq!(p, Packet::Ack { block });
        }
        // No waiting: the ACK of the last block is only sent once the file
        // is fsynced and renamed into place. (A fast local fsync cannot show
        // an ACK that overtakes the commit; this catches a commit that is
        // missing or publishes the wrong bytes.)
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), want, "{name}");
    }
}

#[test]
fn a_stale_copy_of_a_request_does_not_restart_a_running_transfer() {
    // A copy of the RRQ delayed in the network arrives after the client
    // ACKed block 1. The old shard took it for a new request from that
    // port: it ended the session and started over on a new TID, so the
    // client, locked onto the first TID, failed.
    let dir = TempDir::new("stale-rrq");
    let want = common::write_random_file(&dir.join("f.bin"), 8, 20 * 512 + 1);
    let server = Server::start(dir.path(), &[]);
    let sock = client_socket(server.addr());
    let request = rrq(b"f.bin", "octet", &[]);
    sock.send_to(&request, server.addr()).unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("DATA 1");
    let Packet::Data { block: 1, data } = p else {
        panic!("unexpected {p:?}")
    };
    let mut got = data;
    sock.send_to(&ack(1), tid).unwrap();
    let (p, from, _) = recv_packet(&sock, SHORT).expect("DATA 2");
    assert_eq!(
        (from, matches!(p, Packet::Data { block: 2, .. })),
        (tid, true)
    );
    let Packet::Data { data, .. } = p else {
        unreachable!()
    };
    got.extend_from_slice(&data);
    // The stale copy, then the transfer goes on.
    sock.send_to(&request, server.addr()).unwrap();
    sock.send_to(&ack(2), tid).unwrap();
    finish_rrq(&sock, tid, 3, &mut got);
    common::assert_same_bytes(&got, &want, "after a stale copy of the request");
    let strays = common::drain_packets(&sock, Duration::from_millis(300));
    assert!(strays.is_empty(), "packets after the end: {strays:?}");
}

#[test]
fn windows_are_capped_at_32768_blocks() {
    let dir = TempDir::new("window-cap");
    let e = startup_failure(&[
        "--listen",
        "127.0.0.1:0",
        "--windowsize-max",
        "40000",
        dir.path().to_str().unwrap(),
    ]);
    assert!(e.contains("40000") && e.contains("32768"), "{e}");
}

#[test]
fn special_files_are_refused_at_once_and_the_shard_keeps_serving() {
    // An RRQ of a FIFO used to block the shard inside open() until some
    // writer came; every later request to that shard went unanswered.
    let dir = TempDir::new("special");
    let want = common::write_random_file(&dir.join("ok.bin"), 9, 3000);
    let made = |cmd: &mut Command| cmd.status().is_ok_and(|s| s.success());
    assert!(made(Command::new("mkfifo").arg(dir.join("pipe"))));
    std::os::unix::fs::symlink("pipe", dir.join("link-to-pipe")).unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    // A device node needs root; a character device is the worst case.
    let device = made(
        Command::new("mknod")
            .arg(dir.join("null"))
            .args(["c", "1", "3"]),
    );
    let server = Server::start(dir.path(), &["--cores", "1", "--create"]);
    let mut cases = vec![
        (&b"pipe"[..], "Not a regular file"),
        (b"link-to-pipe", "Not a regular file"),
        (b"subdir", "Is a directory"),
    ];
    if device {
        cases.push((b"null", "Not a regular file"));
    }
    for (name, message) in cases {
        let started = Instant::now();
        let reply = common::request_first_reply(server.addr(), &rrq(name, "octet", &[]), SHORT);
        let Some((Packet::Error { code, msg }, _)) = reply else {
            panic!("{}: {reply:?}", String::from_utf8_lossy(name));
        };
        assert_eq!((code, msg.as_str()), (2, message));
        assert!(started.elapsed() < Duration::from_millis(500));
        let reply = common::request_first_reply(server.addr(), &wrq(name, "octet", &[]), SHORT);
        assert!(
            matches!(reply, Some((Packet::Error { code: 2, .. }, _))),
            "WRQ {}: {reply:?}",
            String::from_utf8_lossy(name)
        );
    }
    let got = common::raw_get(server.addr(), b"ok.bin", "octet", &[]).unwrap();
    common::assert_same_bytes(&got.data, &want, "after the special files");
    let long = vec![b'x'; 1100];
    let reply = common::request_first_reply(server.addr(), &rrq(&long, "octet", &[]), SHORT);
    assert!(
        matches!(&reply, Some((Packet::Error { code: 2, msg }, _)) if msg == "File name too long"),
        "{reply:?}"
    );
}

/// Uploads `payload` as `name` (lock-step, 512-byte blocks); the first
/// ERROR the server sent, or None once the final ACK came.
fn upload(server: &Server, name: &str, payload: &[u8]) -> Option<(u16, String)> {
    let sock = client_socket(server.addr());
    sock.send_to(&wrq(name.as_bytes(), "octet", &[]), server.addr())
        .unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("a reply to the WRQ");
    match p {
        Packet::Error { code, msg } => return Some((code, msg)),
        Packet::Ack { block: 0 } => {}
        other => panic!("unexpected {other:?}"),
    }
    let blocks: Vec<&[u8]> = payload.chunks(512).collect();
    let n = blocks.len() as u16 + u16::from(payload.len().is_multiple_of(512));
    for block in 1..=n {
        let chunk = blocks.get(usize::from(block) - 1).copied().unwrap_or(&[]);
        sock.send_to(&data(block, chunk), tid).unwrap();
        match recv_packet(&sock, Duration::from_secs(3)) {
            Some((Packet::Ack { block: b }, _, _)) if b == block => {}
            Some((Packet::Error { code, msg }, _, _)) => return Some((code, msg)),
            other => panic!("block {block}: unexpected {other:?}"),
        }
    }
    None
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn create_makes_new_files_and_replaces_only_world_writable_ones() {
    // --create used to let any client replace any file: pxelinux.0, a
    // kernel, a 0000 file (which then became a readable root:root 0644).
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("create-rules");
    std::fs::write(dir.join("pxelinux.0"), b"boot loader").unwrap();
    std::fs::set_permissions(
        dir.join("pxelinux.0"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(dir.join("shared.txt"), b"anyone may write").unwrap();
    std::fs::set_permissions(
        dir.join("shared.txt"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--create"]);
    assert_eq!(
        upload(&server, "pxelinux.0", b"EVIL"),
        Some((6, "File already exists".to_string()))
    );
    assert_eq!(
        std::fs::read(dir.join("pxelinux.0")).unwrap(),
        b"boot loader"
    );
    assert_eq!(upload(&server, "shared.txt", b"replaced"), None);
    assert_eq!(std::fs::read(dir.join("shared.txt")).unwrap(), b"replaced");
    assert_eq!(
        mode_of(&dir.join("shared.txt")),
        0o666,
        "a replaced file keeps its mode"
    );
    assert_eq!(upload(&server, "new.bin", &[7u8; 1000]), None);
    assert_eq!(std::fs::read(dir.join("new.bin")).unwrap(), vec![7u8; 1000]);
}

#[test]
fn overwrite_replaces_any_file_keeping_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("overwrite");
    std::fs::write(dir.join("grubx64.efi"), b"old").unwrap();
    std::fs::set_permissions(
        dir.join("grubx64.efi"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--overwrite"]);
    assert_eq!(upload(&server, "grubx64.efi", &[1u8; 1500]), None);
    assert_eq!(
        std::fs::read(dir.join("grubx64.efi")).unwrap(),
        vec![1u8; 1500]
    );
    assert_eq!(mode_of(&dir.join("grubx64.efi")), 0o640);
}

#[test]
fn uploads_can_be_confined_to_a_directory() {
    let dir = TempDir::new("upload-dir");
    std::fs::create_dir(dir.join("incoming")).unwrap();
    let server = Server::start(dir.path(), &["--create", "--upload-dir", "incoming"]);
    assert_eq!(upload(&server, "incoming/log.txt", b"hello"), None);
    assert_eq!(
        std::fs::read(dir.join("incoming/log.txt")).unwrap(),
        b"hello"
    );
    let refused = upload(&server, "elsewhere.txt", b"no");
    assert!(
        matches!(&refused, Some((2, msg)) if msg.contains("upload directory")),
        "{refused:?}"
    );
    assert!(upload(&server, "incomingx/a", b"no").is_some());
    assert!(!dir.join("elsewhere.txt").exists());
}

#[test]
fn two_uploads_of_one_name_at_once_one_wins_whole() {
    let dir = TempDir::new("two-uploads");
    let server = Server::start(dir.path(), &["--create"]);
    // The first upload is under way (block 1 ACKed)...
    let first = client_socket(server.addr());
    first
        .send_to(&wrq(b"same.bin", "octet", &[]), server.addr())
        .unwrap();
    let (_, tid, _) = recv_packet(&first, SHORT).expect("ACK 0");
    first.send_to(&data(1, &[b'A'; 512]), tid).unwrap();
    assert!(matches!(
        recv_packet(&first, SHORT),
        Some((Packet::Ack { block: 1 }, _, _))
    ));
    // ...when a second one of the same name starts: refused at once.
    let second = upload(&server, "same.bin", &[b'B'; 700]);
    assert!(
        matches!(&second, Some((0, msg)) if msg.contains("being written")),
        "{second:?}"
    );
    first.send_to(&data(2, b"end"), tid).unwrap();
    assert!(matches!(
        recv_packet(&first, SHORT),
        Some((Packet::Ack { block: 2 }, _, _))
    ));
    let mut want = vec![b'A'; 512];
    want.extend_from_slice(b"end");
    assert_eq!(std::fs::read(dir.join("same.bin")).unwrap(), want);
    // Once it is done the name is free again (it exists now: only a
    // world-writable one could be replaced under --create).
    assert_eq!(
        upload(&server, "same.bin", b"x"),
        Some((6, "File already exists".into()))
    );
}

#[test]
fn a_file_replaced_by_rename_mid_transfer_is_sent_whole_as_it_was() {
    // The running transfer keeps the map of the version it started with;
    // a new request gets the new file. (`cp` over a served file rewrites it
    // in place instead: README says to replace files by rename.)
    let dir = TempDir::new("renamed");
    let old = common::write_random_file(&dir.join("f.bin"), 10, 300 * 512 + 7);
    let server = Server::start(dir.path(), &[]);
    let sock = client_socket(server.addr());
    sock.send_to(&rrq(b"f.bin", "octet", &[]), server.addr())
        .unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("DATA 1");
    let Packet::Data { block: 1, data } = p else {
        panic!("{p:?}")
    };
    let mut got = data;
    let new = common::write_random_file(&dir.join("f.bin.new"), 11, 1000);
    std::fs::rename(dir.join("f.bin.new"), dir.join("f.bin")).unwrap();
    sock.send_to(&ack(1), tid).unwrap();
    finish_rrq(&sock, tid, 2, &mut got);
    common::assert_same_bytes(&got, &old, "the version the transfer started with");
    let fresh = common::raw_get(server.addr(), b"f.bin", "octet", &[]).unwrap();
    common::assert_same_bytes(&fresh.data, &new, "a new request gets the new file");
}
