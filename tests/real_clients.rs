//! Integration tests: the real `uftpd` binary on loopback, driven by real
//! TFTP clients (tftp-hpa `tftp`, `atftp`, `curl`, `busybox tftp`) and by
//! raw UDP sockets.
//!
//! Each test makes its own temp root and its own server. Clients run with a
//! timeout; the server is killed when the `Server` guard drops.
//!
//! Client quirks found while writing these (Debian 12 packages):
//! * tftp-hpa 5.2 `tftp HOST PORT -m octet -c get REMOTE LOCAL` exits 0 even
//!   when the server answers ERROR ("Error code 1: File not found" on stdout)
//!   and leaves an EMPTY local file; failure is detected from its output.
//!   It has no blksize/windowsize/tsize options (plain RFC 1350 client).
//! * atftp 0.8.0 exits 255 on a server ERROR ("tftp: error received from
//!   server <...>" on stderr) and also leaves an empty local file. It sends
//!   `--option "blksize N"` / `--option "windowsize N"` and falls back to
//!   plain transfers when the server ignores them.
//! * curl 7.88 exits 68 on a TFTP ERROR and creates no output file. It
//!   normalizes `..` in URLs unless `--path-as-is` is given. It always sends
//!   tsize (and blksize with --tftp-blksize) and treats "tsize 0" in an OACK
//!   as an error (exit 71), so a 0-byte file needs `--tftp-no-options`.
//! * busybox 1.35 `tftp` exits 1 on ERROR and removes the local file.
//! * Block-number wrap: all four clients download a 33 MiB + 17 byte file
//!   at blksize 512 (67585 blocks, past 65535) from tftpd-hpa, which wraps
//!   65535 -> 0; none of them fails there.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn client_available(c: Client) -> bool {
    !skip_if_missing(c.binary())
}

/// A server root with one pseudo-random file, a client dir, and the server.
struct Setup {
    root: TempDir,
    local: TempDir,
    server: Server,
}

fn setup(extra_args: &[&str]) -> Setup {
    let root = TempDir::new("root");
    let local = TempDir::new("client");
    let server = Server::start(root.path(), extra_args);
    Setup {
        root,
        local,
        server,
    }
}

fn octet() -> ClientOpts {
    ClientOpts::default()
}

fn blk(n: u32) -> ClientOpts {
    ClientOpts {
        blksize: Some(n),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// RRQ with each client
// ---------------------------------------------------------------------------

fn rrq_with(client: Client, o: ClientOpts, size: usize) {
    if !client_available(client) {
        return;
    }
    let s = setup(&[]);
    let want = write_random_file(&s.root.join("file.bin"), 7, size);
    client_get_ok(
        client,
        &s.server,
        "file.bin",
        &s.local.join("out"),
        o,
        &want,
    );
}

#[test]
fn rrq_tftp_hpa_octet_matches() {
    rrq_with(Client::TftpHpa, octet(), 200_003);
}

#[test]
fn rrq_atftp_default_blksize_matches() {
    rrq_with(Client::Atftp, octet(), 200_003);
}

#[test]
fn rrq_atftp_blksize_1428_exact_multiple_matches() {
    // An exact multiple of the block size needs a final empty DATA block.
    rrq_with(Client::Atftp, blk(1428), 1428 * 100);
}

#[test]
fn rrq_atftp_windowsize_8_matches() {
    rrq_with(
        Client::Atftp,
        ClientOpts {
            windowsize: Some(8),
            ..Default::default()
        },
        300_007,
    );
}

#[test]
fn rrq_atftp_blksize_1428_windowsize_8_matches() {
    rrq_with(
        Client::Atftp,
        ClientOpts {
            blksize: Some(1428),
            windowsize: Some(8),
            ..Default::default()
        },
        1_000_001,
    );
}

#[test]
fn rrq_curl_default_matches() {
    rrq_with(Client::Curl, octet(), 200_003);
}

#[test]
fn rrq_curl_blksize_1468_exact_multiple_matches() {
    rrq_with(Client::Curl, blk(1468), 1468 * 100);
}

#[test]
fn rrq_busybox_default_matches() {
    rrq_with(Client::Busybox, octet(), 200_003);
}

#[test]
fn rrq_busybox_blksize_1468_matches() {
    rrq_with(Client::Busybox, blk(1468), 1468 * 77 + 5);
}

// ---------------------------------------------------------------------------
// File sizes
// ---------------------------------------------------------------------------

const EDGE_SIZES: [usize; 6] = [0, 1, 511, 512, 513, MIB];

fn rrq_edge_sizes(client: Client) {
    if !client_available(client) {
        return;
    }
    let s = setup(&[]);
    let mut files = Vec::new();
    for (i, size) in EDGE_SIZES.iter().enumerate() {
        let name = format!("size_{size}.bin");
        let want = write_random_file(&s.root.join(&name), 100 + i as u64, *size);
        files.push((name, want));
    }
    for (name, want) in &files {
        let mut o = octet();
        if client == Client::Curl && want.is_empty() {
            // curl 7.88 always asks for tsize and then rejects "tsize 0" in
            // the OACK ("invalid tsize -:0:- value in OACK packet", exit 71),
            // so it cannot fetch an empty file from a server that honours
            // tsize (tftpd-hpa included). Ask without options instead.
            o.no_options = true;
        }
        client_get_ok(client, &s.server, name, &s.local.join(name), o, want);
    }
}

#[test]
fn rrq_sizes_0_1_511_512_513_1mib_tftp_hpa() {
    rrq_edge_sizes(Client::TftpHpa);
}

#[test]
fn rrq_sizes_0_1_511_512_513_1mib_atftp() {
    rrq_edge_sizes(Client::Atftp);
}

#[test]
fn rrq_sizes_0_1_511_512_513_1mib_curl() {
    rrq_edge_sizes(Client::Curl);
}

#[test]
fn rrq_sizes_0_1_511_512_513_1mib_busybox() {
    rrq_edge_sizes(Client::Busybox);
}

#[test]
fn rrq_sizes_0_1_511_512_513_1mib_raw_socket() {
    let s = setup(&[]);
    for (i, size) in EDGE_SIZES.iter().enumerate() {
        let name = format!("raw_{size}");
        let want = write_random_file(&s.root.join(&name), 200 + i as u64, *size);
        let got = raw_get(s.server.addr(), name.as_bytes(), "octet", &[])
            .unwrap_or_else(|e| panic!("raw get of {size}-byte file: {e}"));
        assert_same_bytes(&got.data, &want, &format!("raw get of {size}-byte file"));
        assert_eq!(
            got.blocks,
            (*size / 512 + 1) as u64,
            "number of DATA blocks for {size} bytes"
        );
    }
}

/// 33 MiB + 17 bytes at blksize 512 = 67585 blocks: block numbers wrap.
const BIG: usize = 33 * MIB + 17;

fn rrq_big_wraps(client: Client) {
    if !client_available(client) {
        return;
    }
    let s = setup(&[]);
    let want = write_random_file(&s.root.join("big.bin"), 33, BIG);
    let local = s.local.join("big.out");
    let out = run_client(
        &mut get_command(client, s.server.addr(), "big.bin", &local, octet()),
        Duration::from_secs(90),
    );
    assert!(
        client_succeeded(client, &out),
        "{client:?} get of 33 MiB file failed\n{}",
        out.describe()
    );
    assert_file_eq(
        &local,
        &want,
        &format!("{client:?} 33 MiB get (block numbers wrap)"),
    );
    eprintln!("{client:?}: 33 MiB at blksize 512 took {:?}", out.elapsed);
}

#[test]
fn rrq_33mib_blksize_512_block_wrap_tftp_hpa() {
    rrq_big_wraps(Client::TftpHpa);
}

#[test]
fn rrq_33mib_blksize_512_block_wrap_atftp() {
    rrq_big_wraps(Client::Atftp);
}

#[test]
fn rrq_33mib_blksize_512_block_wrap_curl() {
    rrq_big_wraps(Client::Curl);
}

#[test]
fn rrq_33mib_blksize_512_block_wrap_raw_socket_wraps_to_0() {
    let s = setup(&[]);
    let want = write_random_file(&s.root.join("big.bin"), 34, BIG);
    let sock = client_socket(s.server.addr());
    let got = raw_get_on(
        &sock,
        s.server.addr(),
        b"big.bin",
        "octet",
        &[],
        Duration::from_secs(90),
    )
    .unwrap_or_else(|e| panic!("raw 33 MiB get: {e}"));
    assert_same_bytes(&got.data, &want, "raw 33 MiB get");
    assert_eq!(got.blocks, (BIG / 512 + 1) as u64);
    // The de-facto convention (tftpd-hpa, most clients): 65535 wraps to 0.
    assert_eq!(
        got.after_65535.first().copied(),
        Some(0),
        "block after 65535 should be 0 (saw {:?})",
        got.after_65535
    );
}

// ---------------------------------------------------------------------------
// WRQ
// ---------------------------------------------------------------------------

fn wrq_with(client: Client, o: ClientOpts, size: usize) {
    if !client_available(client) {
        return;
    }
    let s = setup(&["--create"]);
    std::fs::write(s.root.join("existing.txt"), b"keep me").unwrap();
    let src = s.local.join("src.bin");
    let want = write_random_file(&src, 11, size);
    client_put_ok(client, &s.server, &src, "uploaded.bin", o);
    assert_file_eq(
        &s.root.join("uploaded.bin"),
        &want,
        &format!("{client:?} put ({o:?})"),
    );
    assert_dir_exactly(s.root.path(), &["existing.txt", "uploaded.bin"]);
}

#[test]
fn wrq_tftp_hpa_with_create_stores_exact_bytes() {
    wrq_with(Client::TftpHpa, octet(), 150_001);
}

#[test]
fn wrq_atftp_with_create_stores_exact_bytes() {
    wrq_with(Client::Atftp, octet(), 150_001);
}

#[test]
fn wrq_atftp_blksize_1428_with_create_stores_exact_bytes() {
    wrq_with(Client::Atftp, blk(1428), 1428 * 60);
}

#[test]
fn wrq_atftp_windowsize_8_with_create_stores_exact_bytes() {
    wrq_with(
        Client::Atftp,
        ClientOpts {
            windowsize: Some(8),
            ..Default::default()
        },
        200_001,
    );
}

#[test]
fn wrq_curl_with_create_stores_exact_bytes() {
    wrq_with(Client::Curl, octet(), 150_001);
}

#[test]
fn wrq_curl_blksize_1468_with_create_stores_exact_bytes() {
    wrq_with(Client::Curl, blk(1468), 1468 * 60);
}

#[test]
fn wrq_busybox_with_create_stores_exact_bytes() {
    wrq_with(Client::Busybox, octet(), 150_001);
}

#[test]
fn wrq_busybox_blksize_1468_with_create_stores_exact_bytes() {
    wrq_with(Client::Busybox, blk(1468), 1468 * 33 + 1);
}

#[test]
fn wrq_sizes_0_512_513_1mib_tftp_hpa_and_no_temp_files() {
    if !client_available(Client::TftpHpa) {
        return;
    }
    let s = setup(&["--create"]);
    let mut names = Vec::new();
    for (i, size) in [0usize, 512, 513, MIB].iter().enumerate() {
        let src = s.local.join(format!("src{i}"));
        let want = write_random_file(&src, 300 + i as u64, *size);
        let name = format!("up_{size}");
        client_put_ok(Client::TftpHpa, &s.server, &src, &name, octet());
        assert_file_eq(
            &s.root.join(&name),
            &want,
            &format!("tftp-hpa put of {size} bytes"),
        );
        names.push(name);
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        assert_dir_exactly(s.root.path(), &refs);
    }
}

#[test]
fn wrq_without_create_is_refused_by_every_client_and_leaves_no_file() {
    let s = setup(&[]);
    std::fs::write(s.root.join("existing.txt"), b"keep me").unwrap();
    let src = s.local.join("src.bin");
    write_random_file(&src, 12, 5000);
    let mut ran = 0;
    for client in Client::ALL {
        if !client_available(client) {
            continue;
        }
        ran += 1;
        let name = format!("new_{}", client.binary());
        let out = run_client(
            &mut put_command(client, s.server.addr(), &src, &name, octet()),
            CLIENT_TIMEOUT,
        );
        assert!(
            !client_succeeded(client, &out),
            "{client:?} put of a NEW file without --create must fail\n{}",
            out.describe()
        );
        assert!(
            !out.timed_out,
            "{client:?} should get an ERROR, not time out\n{}",
            out.describe()
        );
        assert_dir_exactly(s.root.path(), &["existing.txt"]);
    }
    assert_eq!(
        std::fs::read(s.root.join("existing.txt")).unwrap(),
        b"keep me"
    );
    eprintln!("{ran} clients checked");
}

#[test]
fn wrq_without_create_raw_gets_error_2() {
    let s = setup(&[]);
    let reply = request_first_reply(
        s.server.addr(),
        &wrq(b"newfile", "octet", &[]),
        Duration::from_secs(3),
    );
    match reply {
        Some((Packet::Error { code, msg }, _)) => {
            assert_eq!(
                code, 2,
                "WRQ of a missing file without --create: want ERROR 2 (access violation), got {code} {msg:?}"
            )
        }
        other => panic!("WRQ of a missing file without --create: want ERROR 2, got {other:?}"),
    }
    assert_dir_exactly(s.root.path(), &[]);
}

#[test]
fn wrq_with_overwrite_replaces_existing_file_and_truncates() {
    if !client_available(Client::TftpHpa) {
        return;
    }
    let s = setup(&["--overwrite"]);
    write_random_file(&s.root.join("target.bin"), 13, 100_000);
    let src = s.local.join("src.bin");
    let want = write_random_file(&src, 14, 3_333);
    client_put_ok(Client::TftpHpa, &s.server, &src, "target.bin", octet());
    assert_file_eq(
        &s.root.join("target.bin"),
        &want,
        "overwrite with shorter content",
    );
    assert_dir_exactly(s.root.path(), &["target.bin"]);
}

#[test]
fn wrq_without_create_to_existing_file_is_refused_and_file_unchanged() {
    // uftpd --help: "--create: Allow WRQ uploads (create or replace files).
    // Without it every WRQ gets ERROR 2." (tftpd-hpa without -c overwrites.)
    if skip_on_stand_in("tftpd-hpa without -c still overwrites existing files") {
        return;
    }
    let s = setup(&[]);
    let old = write_random_file(&s.root.join("existing.bin"), 16, 10_000);
    match request_first_reply(
        s.server.addr(),
        &wrq(b"existing.bin", "octet", &[]),
        Duration::from_secs(3),
    ) {
        Some((Packet::Error { code, msg }, _)) => {
            assert_eq!(
                code, 2,
                "WRQ without --create: want ERROR 2, got {code} {msg:?}"
            )
        }
        other => panic!("WRQ of an existing file without --create: want ERROR 2, got {other:?}"),
    }
    if client_available(Client::TftpHpa) {
        let src = s.local.join("src.bin");
        write_random_file(&src, 17, 3000);
        let out = run_client(
            &mut put_command(
                Client::TftpHpa,
                s.server.addr(),
                &src,
                "existing.bin",
                octet(),
            ),
            CLIENT_TIMEOUT,
        );
        assert!(
            !client_succeeded(Client::TftpHpa, &out),
            "put without --create must fail\n{}",
            out.describe()
        );
    }
    assert_file_eq(
        &s.root.join("existing.bin"),
        &old,
        "existing file after refused WRQs",
    );
    assert_dir_exactly(s.root.path(), &["existing.bin"]);
}

/// Start a raw WRQ and send `blocks` full DATA blocks; returns (socket, TID).
fn raw_partial_upload(server: SocketAddr, name: &[u8], blocks: u16) -> (UdpSocket, SocketAddr) {
    let sock = client_socket(server);
    sock.send_to(&wrq(name, "octet", &[]), server).unwrap();
    let (p, tid, _) = recv_packet(&sock, Duration::from_secs(3)).expect("reply to WRQ");
    assert_eq!(
        p,
        Packet::Ack { block: 0 },
        "WRQ should be answered by ACK 0"
    );
    for b in 1..=blocks {
        sock.send_to(&data(b, &pseudo_random_bytes(b as u64, 512)), tid)
            .unwrap();
        let (p, from, _) = recv_packet(&sock, Duration::from_secs(3)).expect("ACK for DATA");
        assert_eq!(from, tid);
        assert_eq!(p, Packet::Ack { block: b });
    }
    (sock, tid)
}

/// Poll (bounded) until the root holds exactly `expected`.
fn wait_dir_exactly(dir: &Path, expected: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = dir_entries(dir);
        if got.iter().map(|s| s.as_str()).collect::<Vec<_>>() == expected {
            return;
        }
        if Instant::now() >= deadline {
            assert_dir_exactly(dir, expected);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn wrq_aborted_by_client_error_leaves_no_file_and_no_temp() {
    if skip_on_stand_in("tftpd-hpa writes straight into the target file") {
        return;
    }
    let s = setup(&["--create", "--retransmit-ms", "300", "--retries", "2"]);
    let (sock, tid) = raw_partial_upload(s.server.addr(), b"aborted.bin", 5);
    sock.send_to(&error(0, "client gave up"), tid).unwrap();
    wait_dir_exactly(s.root.path(), &[], Duration::from_secs(3));
    let more = drain_packets(&sock, Duration::from_millis(800));
    assert!(
        more.is_empty(),
        "server kept sending after the client's ERROR: {more:?}"
    );
}

#[test]
fn wrq_aborted_overwrite_keeps_old_content() {
    if skip_on_stand_in("tftpd-hpa truncates the target before the upload completes") {
        return;
    }
    let s = setup(&["--overwrite", "--retransmit-ms", "300", "--retries", "2"]);
    let old = write_random_file(&s.root.join("keep.bin"), 15, 20_000);
    let (sock, tid) = raw_partial_upload(s.server.addr(), b"keep.bin", 3);
    sock.send_to(&error(0, "client gave up"), tid).unwrap();
    wait_dir_exactly(s.root.path(), &["keep.bin"], Duration::from_secs(3));
    assert_file_eq(
        &s.root.join("keep.bin"),
        &old,
        "file after an aborted overwrite",
    );
}

#[test]
fn wrq_abandoned_by_client_times_out_and_removes_temp() {
    if skip_on_stand_in("tftpd-hpa writes straight into the target file") {
        return;
    }
    let s = setup(&["--create", "--retransmit-ms", "200", "--retries", "2"]);
    let (sock, tid) = raw_partial_upload(s.server.addr(), b"abandoned.bin", 2);
    // Say nothing more: the server retransmits ACK 2 a bounded number of times.
    let pkts = drain_packets(&sock, Duration::from_millis(2500));
    assert!(
        pkts.iter().all(|(p, from)| *from == tid
            && matches!(p, Packet::Ack { block: 2 } | Packet::Error { .. })),
        "only ACK 2 retransmissions (or a final ERROR) expected, got {pkts:?}"
    );
    assert!(
        pkts.iter().any(|(p, _)| *p == Packet::Ack { block: 2 }),
        "ACK 2 should be retransmitted"
    );
    wait_dir_exactly(s.root.path(), &[], Duration::from_secs(3));
}

// ---------------------------------------------------------------------------
// netascii
// ---------------------------------------------------------------------------

#[test]
fn netascii_get_tftp_hpa_reproduces_lf_text_file() {
    if !client_available(Client::TftpHpa) {
        return;
    }
    let s = setup(&[]);
    let text = pseudo_random_text(21, 20_000);
    std::fs::write(s.root.join("notes.txt"), &text).unwrap();
    let o = ClientOpts {
        ascii: true,
        ..Default::default()
    };
    client_get_ok(
        Client::TftpHpa,
        &s.server,
        "notes.txt",
        &s.local.join("notes.txt"),
        o,
        &text,
    );
}

#[test]
fn netascii_put_tftp_hpa_stores_lf_text_file() {
    if !client_available(Client::TftpHpa) {
        return;
    }
    let s = setup(&["--create"]);
    let text = pseudo_random_text(22, 20_000);
    let src = s.local.join("up.txt");
    std::fs::write(&src, &text).unwrap();
    let o = ClientOpts {
        ascii: true,
        ..Default::default()
    };
    client_put_ok(Client::TftpHpa, &s.server, &src, "up.txt", o);
    assert_file_eq(&s.root.join("up.txt"), &text, "netascii put");
    assert_dir_exactly(s.root.path(), &["up.txt"]);
}

#[test]
fn netascii_raw_rrq_sends_crlf_and_cr_nul_on_the_wire() {
    let s = setup(&[]);
    // 511 bytes then LF: the CR ends block 1 and the LF starts block 2.
    let mut text = vec![b'a'; 511];
    text.extend_from_slice(b"\nline\rcr\n");
    std::fs::write(s.root.join("t.txt"), &text).unwrap();
    let got = raw_get(s.server.addr(), b"t.txt", "netascii", &[])
        .unwrap_or_else(|e| panic!("netascii raw get: {e}"));
    let mut want = vec![b'a'; 511];
    want.extend_from_slice(b"\r\nline\r\0cr\r\n");
    assert_eq!(
        String::from_utf8_lossy(&got.data),
        String::from_utf8_lossy(&want),
        "netascii wire form (LF -> CR LF, CR -> CR NUL)"
    );
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

fn escape_root() -> (TempDir, TempDir, Server) {
    let root = TempDir::new("root");
    let local = TempDir::new("client");
    std::fs::write(root.join("ok.txt"), b"inside the root\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd_link")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc_link")).unwrap();
    let server = Server::start(root.path(), &[]);
    (root, local, server)
}

const ESCAPES: [&str; 7] = [
    "../etc/passwd",
    "/../../etc/passwd",
    "..",
    "../../../../../../../../etc/passwd",
    "passwd_link",
    "etc_link/passwd",
    "/etc/passwd",
];

#[test]
fn path_escapes_are_refused_raw_with_error_1_or_2() {
    let (_root, _local, server) = escape_root();
    for name in ESCAPES {
        let sock = client_socket(server.addr());
        sock.send_to(&rrq(name.as_bytes(), "octet", &[]), server.addr())
            .unwrap();
        let (p, _, _) = recv_packet(&sock, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no reply to RRQ {name:?} (want ERROR 1 or 2)"));
        match p {
            Packet::Error { code: 1 | 2, .. } => {}
            other => panic!("RRQ {name:?} must be refused with ERROR 1 or 2, got {other:?}"),
        }
        let more = drain_packets(&sock, Duration::from_millis(200));
        assert!(
            !more.iter().any(|(p, _)| matches!(p, Packet::Data { .. })),
            "RRQ {name:?}: DATA after the ERROR: {more:?}"
        );
    }
}

#[test]
fn path_escapes_are_refused_tftp_hpa_client_gets_no_content() {
    if !client_available(Client::TftpHpa) {
        return;
    }
    let (_root, local, server) = escape_root();
    for (i, name) in ESCAPES.iter().enumerate() {
        let out_path = local.join(format!("out{i}"));
        let out = run_client(
            &mut get_command(Client::TftpHpa, server.addr(), name, &out_path, octet()),
            CLIENT_TIMEOUT,
        );
        assert!(
            !client_succeeded(Client::TftpHpa, &out),
            "get {name:?} must fail\n{}",
            out.describe()
        );
        assert!(
            !out.timed_out,
            "get {name:?}: want an ERROR, not a timeout\n{}",
            out.describe()
        );
        assert_no_content(&out_path, &format!("tftp-hpa get {name:?}"));
    }
}

#[test]
fn path_escapes_are_refused_curl_path_as_is_gets_no_content() {
    if !client_available(Client::Curl) {
        return;
    }
    let (_root, local, server) = escape_root();
    // curl cannot send a leading '/' (it strips one) so those are covered above.
    for (i, name) in ["../etc/passwd", "..", "passwd_link", "etc_link/passwd"]
        .iter()
        .enumerate()
    {
        let out_path = local.join(format!("out{i}"));
        let out = run_client(
            &mut get_command(Client::Curl, server.addr(), name, &out_path, octet()),
            CLIENT_TIMEOUT,
        );
        assert!(
            !out.success(),
            "curl get {name:?} must fail\n{}",
            out.describe()
        );
        assert!(
            !out.timed_out,
            "curl get {name:?}: want an ERROR, not a timeout\n{}",
            out.describe()
        );
        assert_no_content(&out_path, &format!("curl get {name:?}"));
    }
}

/// A `..` that stays inside the root resolves, as tftpd-hpa serves it
/// (PXELINUX path-prefix layouts: `pxelinux.cfg/../pxelinux.0`,
/// `bios/../images/vmlinuz`), through every real client; one that climbs
/// out says so.
#[test]
fn dot_dot_inside_the_root_is_served_by_every_client() {
    let root = TempDir::new("dotdot");
    let local = TempDir::new("dotdot-local");
    std::fs::create_dir_all(root.join("pxelinux.cfg")).unwrap();
    std::fs::create_dir_all(root.join("bios")).unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::write(root.join("pxelinux.0"), b"pxelinux\n").unwrap();
    std::fs::write(root.join("images/vmlinuz"), b"kernel\n").unwrap();
    let server = Server::start(root.path(), &[]);
    let wants: [(&str, &[u8]); 2] = [
        ("pxelinux.cfg/../pxelinux.0", b"pxelinux\n"),
        ("bios/../images/vmlinuz", b"kernel\n"),
    ];
    for (name, want) in wants {
        let got = raw_get(server.addr(), name.as_bytes(), "octet", &[])
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.log()));
        assert_eq!(got.data, want, "{name}");
        for client in [
            Client::TftpHpa,
            Client::Atftp,
            Client::Busybox,
            Client::Curl,
        ] {
            if !client_available(client) {
                continue;
            }
            let out_path = local.join(format!("{client:?}"));
            let _ = std::fs::remove_file(&out_path);
            let out = run_client(
                &mut get_command(client, server.addr(), name, &out_path, octet()),
                CLIENT_TIMEOUT,
            );
            assert!(
                client_succeeded(client, &out),
                "{client:?} get {name}\n{}",
                out.describe()
            );
            assert_file_eq(&out_path, want, &format!("{client:?} get {name}"));
        }
    }
    match request_first_reply(
        server.addr(),
        &rrq(b"bios/../../pxelinux.0", "octet", &[]),
        Duration::from_secs(5),
    ) {
        Some((Packet::Error { code: 2, msg }, _)) => {
            assert_eq!(msg, "Outside the served directory")
        }
        other => panic!("a .. out of the root got {other:?}"),
    }
}

#[test]
fn wrq_path_escapes_are_refused_and_write_nothing_outside_root() {
    // parent/{root/, outside.txt}; links in the root point at the parent.
    let parent = TempDir::new("parent");
    let root = parent.join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(parent.join("outside.txt"), b"outside, must stay").unwrap();
    std::os::unix::fs::symlink(parent.join("outside.txt"), root.join("out_link")).unwrap();
    std::os::unix::fs::symlink(parent.path(), root.join("dir_link")).unwrap();
    let server = Server::start(&root, &["--create"]);
    for name in [
        "../escaped.txt",
        "/../escaped.txt",
        "dir_link/escaped.txt",
        "out_link",
        "../outside.txt",
        "dir_link/outside.txt",
    ] {
        let sock = client_socket(server.addr());
        sock.send_to(&wrq(name.as_bytes(), "octet", &[]), server.addr())
            .unwrap();
        let reply = recv_packet(&sock, Duration::from_secs(3));
        if let Some((Packet::Ack { .. }, tid, _)) = &reply {
            let _ = sock.send_to(&error(0, "test aborts"), *tid);
        }
        match reply {
            Some((Packet::Error { code: 1 | 2, .. }, _, _)) => {}
            other => panic!(
                "WRQ {name:?} escaping the root must be refused with ERROR 1 or 2, got {other:?}"
            ),
        }
    }
    assert_dir_exactly(parent.path(), &["outside.txt", "root"]);
    assert_dir_exactly(&root, &["dir_link", "out_link"]);
    assert_eq!(
        std::fs::read(parent.join("outside.txt")).unwrap(),
        b"outside, must stay"
    );
}

#[test]
fn control_character_in_name_is_refused() {
    let root = TempDir::new("root");
    // Even an existing file whose name has a control character is not served.
    std::fs::write(root.join("bad\x01name"), b"secret").unwrap();
    let server = Server::start(root.path(), &[]);
    for name in [&b"bad\x01name"[..], b"bad\x1bname", b"x\x7f"] {
        let sock = client_socket(server.addr());
        sock.send_to(&rrq(name, "octet", &[]), server.addr())
            .unwrap();
        let (p, _, _) = recv_packet(&sock, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no reply to RRQ {name:?}"));
        assert!(
            matches!(p, Packet::Error { .. }),
            "RRQ for a name with a control character {:?} must get an ERROR, got {p:?}",
            String::from_utf8_lossy(name)
        );
        let more = drain_packets(&sock, Duration::from_millis(200));
        assert!(
            !more.iter().any(|(p, _)| matches!(p, Packet::Data { .. })),
            "DATA after ERROR: {more:?}"
        );
    }
}

#[test]
fn leading_slash_and_subdirectories_are_served_from_root() {
    let s = setup(&[]);
    let want = write_random_file(&s.root.join("name.bin"), 31, 4000);
    std::fs::create_dir_all(s.root.join("sub/dir")).unwrap();
    let want_sub = write_random_file(&s.root.join("sub/dir/deep.bin"), 32, 1500);
    for name in ["/name.bin", "name.bin"] {
        let got = raw_get(s.server.addr(), name.as_bytes(), "octet", &[])
            .unwrap_or_else(|e| panic!("raw get {name:?}: {e}"));
        assert_same_bytes(&got.data, &want, &format!("raw get {name:?}"));
    }
    for name in ["/sub/dir/deep.bin", "sub/dir/deep.bin"] {
        let got = raw_get(s.server.addr(), name.as_bytes(), "octet", &[])
            .unwrap_or_else(|e| panic!("raw get {name:?}: {e}"));
        assert_same_bytes(&got.data, &want_sub, &format!("raw get {name:?}"));
    }
    if client_available(Client::TftpHpa) {
        client_get_ok(
            Client::TftpHpa,
            &s.server,
            "/name.bin",
            &s.local.join("o1"),
            octet(),
            &want,
        );
        client_get_ok(
            Client::TftpHpa,
            &s.server,
            "/sub/dir/deep.bin",
            &s.local.join("o2"),
            octet(),
            &want_sub,
        );
    }
}

#[test]
fn rrq_missing_file_gets_error_1_and_clients_fail() {
    let s = setup(&[]);
    match request_first_reply(
        s.server.addr(),
        &rrq(b"does-not-exist", "octet", &[]),
        Duration::from_secs(3),
    ) {
        Some((Packet::Error { code, msg }, _)) => {
            assert_eq!(code, 1, "missing file: want ERROR 1, got {code} {msg:?}")
        }
        other => panic!("missing file: want ERROR 1, got {other:?}"),
    }
    for client in Client::ALL {
        if !client_available(client) {
            continue;
        }
        let local = s.local.join(format!("missing_{}", client.binary()));
        let out = run_client(
            &mut get_command(client, s.server.addr(), "does-not-exist", &local, octet()),
            CLIENT_TIMEOUT,
        );
        assert!(
            !client_succeeded(client, &out),
            "{client:?} get of a missing file must fail\n{}",
            out.describe()
        );
        assert!(
            !out.timed_out,
            "{client:?}: want an ERROR, not a timeout\n{}",
            out.describe()
        );
        assert_no_content(&local, &format!("{client:?} get of a missing file"));
    }
}

// ---------------------------------------------------------------------------
// Malformed packets
// ---------------------------------------------------------------------------

#[test]
fn malformed_packets_get_error_or_nothing_and_server_keeps_serving() {
    let mut s = setup(&[]);
    let want = write_random_file(&s.root.join("file.bin"), 41, 30_000);
    let mut random = pseudo_random_bytes(42, 2000);
    random[0] = 0xAB; // opcode 0xABxx: not a TFTP opcode
    let mut no_nul = rrq(b"file.bin", "octet", &[]);
    no_nul.pop();
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("empty datagram", vec![], None),
        ("1 byte", vec![0], None),
        ("opcode 9", vec![0, 9, b'x', 0, b'y', 0], None),
        ("RRQ without trailing NUL", no_nul, Some(4)),
        (
            "RRQ with mode \"bogus\"",
            rrq(b"file.bin", "bogus", &[]),
            Some(4),
        ),
        ("2000 random bytes", random, None),
        ("ACK to the service port", ack(1), None),
        ("DATA to the service port", data(1, b"hello"), None),
        ("ERROR to the service port", error(0, "x"), None),
        (
            "OACK to the service port",
            vec![0, 6, b'b', 0, b'1', 0],
            None,
        ),
    ];
    for (what, pkt, want_code) in &cases {
        let sock = client_socket(s.server.addr());
        sock.send_to(pkt, s.server.addr()).unwrap();
        let window = if want_code.is_some() {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(300)
        };
        let first = recv_packet(&sock, window);
        match (want_code, &first) {
            (Some(code), Some((Packet::Error { code: c, .. }, _, _))) => {
                assert_eq!(c, code, "{what}: want ERROR {code}, got {first:?}")
            }
            (Some(code), other) => panic!("{what}: want ERROR {code}, got {other:?}"),
            (None, None) => {}
            (None, Some((p, _, _))) => {
                assert_eq!(
                    p.opcode(),
                    Some(OP_ERROR),
                    "{what}: the only acceptable reply is an ERROR, got {p:?}"
                )
            }
        }
        let more = drain_packets(&sock, Duration::from_millis(150));
        assert!(
            more.iter().all(|(p, _)| p.opcode() == Some(OP_ERROR)),
            "{what}: unexpected further packets {more:?}"
        );
        assert!(s.server.is_running(), "server died after {what}");
    }
    let got = raw_get(s.server.addr(), b"file.bin", "octet", &[])
        .unwrap_or_else(|e| panic!("raw get after garbage: {e}"));
    assert_same_bytes(&got.data, &want, "raw get after garbage");
    if client_available(Client::TftpHpa) {
        client_get_ok(
            Client::TftpHpa,
            &s.server,
            "file.bin",
            &s.local.join("o"),
            octet(),
            &want,
        );
    }
}

// ---------------------------------------------------------------------------
// Options, UEFI probe, TIDs
// ---------------------------------------------------------------------------

#[test]
fn uefi_tsize_probe_abort_then_plain_rrq_from_same_port() {
    let s = setup(&["--retransmit-ms", "300"]);
    let size = 123_457usize;
    let want = write_random_file(&s.root.join("bootx64.efi"), 51, size);
    let addr = s.server.addr();
    let sock = client_socket(addr);

    // 1. Probe: RRQ with tsize 0 + blksize 1468, expect OACK with the size.
    sock.send_to(
        &rrq(
            b"bootx64.efi",
            "octet",
            &[("tsize", "0"), ("blksize", "1468")],
        ),
        addr,
    )
    .unwrap();
    let (p, t, _) =
        recv_packet(&sock, Duration::from_secs(3)).expect("no reply to the tsize probe");
    assert_eq!(
        p.opcode(),
        Some(OP_OACK),
        "probe must be answered by an OACK, got {p:?}"
    );
    assert_ne!(
        t, addr,
        "OACK should come from a transfer port, not the service port"
    );
    assert_eq!(
        p.oack_opt("tsize").as_deref(),
        Some(size.to_string().as_str()),
        "OACK tsize in {p:?}"
    );
    assert_eq!(
        p.oack_opt("blksize").as_deref(),
        Some("1468"),
        "OACK blksize in {p:?}"
    );

    // 2. Abort like UEFI does.
    sock.send_to(&error(8, "User aborted the transfer"), t)
        .unwrap();

    // 3. Plain RRQ from the SAME source port: DATA 1 within 1 s.
    let sent = Instant::now();
    let got = raw_get_on(
        &sock,
        addr,
        b"bootx64.efi",
        "octet",
        &[],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("plain RRQ after the aborted probe: {e}"));
    assert!(
        got.oack.is_none(),
        "plain RRQ must not get an OACK: {:?}",
        got.oack
    );
    let first = got.first_reply_after.unwrap();
    assert!(
        first < Duration::from_secs(1),
        "DATA 1 took {first:?} (want < 1 s)"
    );
    assert!(
        got.strays.is_empty(),
        "packets from other ports during the transfer (old TID {t}): {:?}",
        got.strays
    );
    assert_same_bytes(&got.data, &want, "plain RRQ after probe");
    assert!(sent.elapsed() < Duration::from_secs(10));

    // 4. Nothing more from anyone (the aborted session must not retransmit).
    let late = drain_packets(&sock, Duration::from_millis(1500));
    assert!(
        late.is_empty(),
        "packets after ERROR 8 / after the final ACK (old TID {t}): {late:?}"
    );
}

#[test]
fn client_error_stops_oack_retransmission() {
    let s = setup(&["--retransmit-ms", "300"]);
    write_random_file(&s.root.join("f"), 52, 10_000);
    let sock = client_socket(s.server.addr());
    sock.send_to(&rrq(b"f", "octet", &[("tsize", "0")]), s.server.addr())
        .unwrap();
    let (p, t, _) = recv_packet(&sock, Duration::from_secs(3)).expect("OACK");
    assert_eq!(p.opcode(), Some(OP_OACK), "{p:?}");
    sock.send_to(&error(8, "User aborted the transfer"), t)
        .unwrap();
    let late = drain_packets(&sock, Duration::from_millis(1500));
    assert!(
        late.is_empty(),
        "server kept sending from {t} after ERROR 8: {late:?}"
    );
}

#[test]
fn unacked_data_is_retransmitted_then_abandoned() {
    let s = setup(&["--retransmit-ms", "200", "--retries", "2"]);
    write_random_file(&s.root.join("f"), 53, 10_000);
    let sock = client_socket(s.server.addr());
    sock.send_to(&rrq(b"f", "octet", &[]), s.server.addr())
        .unwrap();
    let pkts = drain_packets(&sock, Duration::from_secs(4));
    let data1 = pkts
        .iter()
        .filter(|(p, _)| matches!(p, Packet::Data { block: 1, .. }))
        .count();
    assert!(
        data1 >= 2,
        "DATA 1 should be retransmitted when not ACKed, got {pkts:?}"
    );
    assert!(
        pkts.iter()
            .all(|(p, _)| matches!(p, Packet::Data { block: 1, .. } | Packet::Error { .. })),
        "only DATA 1 (and a final ERROR) expected: {pkts:?}"
    );
    if !using_tftpd_hpa() {
        // 1 + retries transmissions at most.
        assert!(
            data1 <= 3,
            "--retries 2 allows at most 3 transmissions of DATA 1, got {data1}"
        );
        let late = drain_packets(&sock, Duration::from_millis(800));
        assert!(late.is_empty(), "still sending after giving up: {late:?}");
    }
}

#[test]
fn blksize_is_capped_by_blksize_max_and_tsize_reported() {
    let s = setup(&["--blksize-max", "1024"]);
    let want = write_random_file(&s.root.join("f"), 54, 50_000);
    let got = raw_get(
        s.server.addr(),
        b"f",
        "octet",
        &[("blksize", "1468"), ("tsize", "0")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let oack = got.oack.clone().expect("OACK expected");
    let get = |k: &str| {
        oack.iter()
            .find(|(kk, _)| kk.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("blksize").as_deref(),
        Some("1024"),
        "blksize capped by --blksize-max 1024: {oack:?}"
    );
    assert_eq!(get("tsize").as_deref(), Some("50000"), "tsize: {oack:?}");
    assert_eq!(got.max_payload, 1024);
    assert_same_bytes(&got.data, &want, "blksize 1024 get");
}

#[test]
fn windowsize_raw_rrq_sends_a_window_before_each_ack() {
    if skip_on_stand_in("tftpd-hpa 5.2 does not implement windowsize") {
        return;
    }
    let s = setup(&[]);
    let want = write_random_file(&s.root.join("f"), 55, 512 * 40 + 3);
    let sock = client_socket(s.server.addr());
    sock.send_to(&rrq(b"f", "octet", &[("windowsize", "4")]), s.server.addr())
        .unwrap();
    let (p, t, _) = recv_packet(&sock, Duration::from_secs(3)).expect("OACK");
    assert_eq!(p.oack_opt("windowsize").as_deref(), Some("4"), "{p:?}");
    sock.send_to(&ack(0), t).unwrap();
    // Four DATA blocks must arrive without further ACKs.
    for b in 1..=4u16 {
        let (p, from, _) = recv_packet(&sock, Duration::from_secs(2)).unwrap_or_else(|| {
            panic!("DATA {b} of the first window did not arrive without an ACK")
        });
        assert_eq!(from, t);
        assert!(
            matches!(p, Packet::Data { block, .. } if block == b),
            "want DATA {b}, got {p:?}"
        );
    }
    let res = RawGet {
        data: Vec::new(),
        tid: Some(t),
        blocks: 4,
        windowsize: 4,
        ..Default::default()
    };
    sock.send_to(&ack(4), t).unwrap();
    let rest = raw_receive(&sock, res, Instant::now(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_same_bytes(
        &rest.data,
        &want[4 * 512..],
        "rest of the windowed transfer",
    );
}

#[test]
fn stray_tid_gets_error_5_with_stray_errors_and_transfer_completes() {
    if skip_on_stand_in(
        "tftpd-hpa connect()s its transfer socket, so the kernel drops stray packets silently",
    ) {
        return;
    }
    stray_tid_case(&["--stray-errors"], true);
}

#[test]
fn stray_tid_gets_no_tftp_answer_by_default_and_transfer_completes() {
    // Connected transfer sockets: the kernel answers the stray with ICMP
    // port unreachable (as for tftpd-hpa and atftpd), the transfer goes on.
    stray_tid_case(&[], false);
}

fn stray_tid_case(flags: &[&str], want_error_5: bool) {
    let s = setup(flags);
    let want = write_random_file(&s.root.join("f"), 61, 100_000);
    let sock = client_socket(s.server.addr());
    sock.send_to(&rrq(b"f", "octet", &[]), s.server.addr())
        .unwrap();
    let (p, t, _) = recv_packet(&sock, Duration::from_secs(3)).expect("DATA 1");
    let Packet::Data {
        block: 1,
        data: first,
    } = p
    else {
        panic!("want DATA 1, got {p:?}")
    };

    let intruder = client_socket(s.server.addr());
    intruder.send_to(&ack(1), t).unwrap();
    let answer = recv_packet(
        &intruder,
        Duration::from_secs(if want_error_5 { 2 } else { 1 }),
    );
    match answer {
        Some((Packet::Error { code, .. }, from, _)) if want_error_5 => {
            assert_eq!(code, 5, "stray TID: want ERROR 5 (unknown transfer ID)");
            assert_eq!(from, t);
        }
        None if !want_error_5 => {}
        other => panic!(
            "stray ACK to the transfer port: want {}, got {other:?}",
            if want_error_5 {
                "ERROR 5"
            } else {
                "no TFTP answer"
            }
        ),
    }

    sock.send_to(&ack(1), t).unwrap();
    let res = RawGet {
        data: first,
        tid: Some(t),
        blocks: 1,
        ..Default::default()
    };
    let got = raw_receive(&sock, res, Instant::now(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("original transfer after the stray packet: {e}"));
    assert_same_bytes(&got.data, &want, "transfer with a stray TID");
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

#[test]
fn fifty_concurrent_gets_of_1mib_all_match() {
    let s = setup(&[]);
    let want = std::sync::Arc::new(write_random_file(&s.root.join("one.bin"), 71, MIB));
    // A missing client fails under CI; otherwise raw sockets replace it.
    let have_curl = !skip_if_missing("curl");
    let have_hpa = !skip_if_missing("tftp");
    let addr = s.server.addr();
    let local = s.local.path().to_path_buf();
    let start = Instant::now();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let want = want.clone();
            let local = local.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let out_path = local.join(format!("out{i}"));
                let kind = i % 3;
                if kind == 0 && have_curl || kind == 1 && have_hpa {
                    let (client, o) = if kind == 0 {
                        (Client::Curl, blk(1468))
                    } else {
                        (Client::TftpHpa, octet())
                    };
                    let out = run_client(
                        &mut get_command(client, addr, "one.bin", &out_path, o),
                        Duration::from_secs(90),
                    );
                    if !client_succeeded(client, &out) {
                        return Err(format!("#{i} {client:?} failed\n{}", out.describe()));
                    }
                    let got = std::fs::read(&out_path).map_err(|e| format!("#{i}: {e}"))?;
                    if got != *want {
                        return Err(format!(
                            "#{i} {client:?}: content differs ({} bytes)",
                            got.len()
                        ));
                    }
                } else {
                    let sock = client_socket(addr);
                    let got = raw_get_on(
                        &sock,
                        addr,
                        b"one.bin",
                        "octet",
                        &[("blksize", "1024")],
                        Duration::from_secs(90),
                    )
                    .map_err(|e| format!("#{i} raw: {e}"))?;
                    if got.data != *want {
                        return Err(format!(
                            "#{i} raw: content differs ({} bytes)",
                            got.data.len()
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("thread panicked".into()))
                .err()
        })
        .collect();
    assert!(
        errors.is_empty(),
        "{} of 50 concurrent gets failed:\n{}",
        errors.len(),
        errors.join("\n")
    );
    eprintln!("50 concurrent 1 MiB gets took {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------
// IPv6, listening, signals
// ---------------------------------------------------------------------------

fn ipv6_available() -> bool {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPING: ::1 is not available on this machine");
        return false;
    }
    true
}

#[test]
fn ipv6_get_via_loopback() {
    if !ipv6_available() {
        return;
    }
    let s = setup(&["--listen", "[::1]:0"]);
    assert!(
        s.server.addr().is_ipv6(),
        "listening on {}",
        s.server.addr()
    );
    let want = write_random_file(&s.root.join("six.bin"), 81, 70_001);
    let got = raw_get(s.server.addr(), b"six.bin", "octet", &[])
        .unwrap_or_else(|e| panic!("raw IPv6 get: {e}"));
    assert_same_bytes(&got.data, &want, "raw IPv6 get");
    for client in [Client::TftpHpa, Client::Curl, Client::Atftp] {
        if client_available(client) {
            client_get_ok(
                client,
                &s.server,
                "six.bin",
                &s.local.join(format!("o_{}", client.binary())),
                octet(),
                &want,
            );
        }
    }
}

#[test]
fn two_listen_addresses_print_two_lines_and_both_serve() {
    if skip_on_stand_in("the stand-in listens on one address") || !ipv6_available() {
        return;
    }
    let s = setup(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
    assert_eq!(s.server.addrs().len(), 2, "{:?}", s.server.addrs());
    let want = write_random_file(&s.root.join("f"), 82, 5000);
    for a in s.server.addrs() {
        let got = raw_get(*a, b"f", "octet", &[]).unwrap_or_else(|e| panic!("get via {a}: {e}"));
        assert_same_bytes(&got.data, &want, &format!("get via {a}"));
    }
}

#[test]
fn sigterm_on_idle_server_exits_0() {
    if skip_on_stand_in("in.tftpd dies from SIGTERM") {
        return;
    }
    let mut s = setup(&[]);
    s.server.sigterm();
    let st = s
        .server
        .wait_exit(Duration::from_secs(10))
        .expect("server did not exit within 10 s of SIGTERM");
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {st:?}");
}

#[test]
fn sigterm_lets_a_running_transfer_finish_then_exits_0() {
    if skip_on_stand_in("in.tftpd dies from SIGTERM") {
        return;
    }
    let mut s = setup(&[]);
    let want = write_random_file(&s.root.join("f"), 91, 300_000);
    let sock = client_socket(s.server.addr());
    sock.send_to(&rrq(b"f", "octet", &[]), s.server.addr())
        .unwrap();
    let (p, t, _) = recv_packet(&sock, Duration::from_secs(3)).expect("DATA 1");
    let Packet::Data {
        block: 1,
        data: first,
    } = p
    else {
        panic!("want DATA 1, got {p:?}")
    };
    s.server.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    sock.send_to(&ack(1), t).unwrap();
    let res = RawGet {
        data: first,
        tid: Some(t),
        blocks: 1,
        ..Default::default()
    };
    let got = raw_receive(&sock, res, Instant::now(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("transfer running at SIGTERM should finish: {e}"));
    assert_same_bytes(&got.data, &want, "transfer across SIGTERM");
    let st = s
        .server
        .wait_exit(Duration::from_secs(10))
        .expect("server did not exit after the transfer");
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {st:?}");
}
