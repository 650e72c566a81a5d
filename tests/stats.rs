//! The stats endpoint and the transfer logs, end to end: the real binary,
//! real transfers on loopback, then the eAS0 report (through the real
//! `uftpd-stat`), `/metrics`, `/stats.json`, the status page in a real
//! headless browser, and the log lines, all checked against what was done.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Packet, Server, TempDir, client_socket, data, recv_packet, rrq, wrq};

const SHORT: Duration = Duration::from_secs(3);

fn skip_stand_in() -> bool {
    common::skip_on_stand_in("the stats endpoint is uftpd's")
}

/// A whole HTTP exchange: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the stats port");
    s.set_read_timeout(Some(SHORT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

fn stats_json(addr: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(addr, "/stats.json");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/stats.json: {e}\n{body}"))
}

/// /stats.json, or `None` if the endpoint closed on us (it was full: it
/// may refuse by closing, or reset a connection it had no room for).
fn try_stats_json(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(SHORT)).ok()?;
    write!(s, "GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let ok = head.split(' ').nth(1) == Some("200");
    ok.then(|| serde_json::from_str(body).expect("/stats.json parses"))
}

fn total(doc: &serde_json::Value, field: &str) -> u64 {
    doc["total"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no total.{field} in {doc}"))
}

/// Polls /stats.json until `done` holds (counters settle a moment after
/// the client's last packet), or panics after 5 s.
fn wait_for(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let doc = try_stats_json(addr);
        if let Some(doc) = doc.as_ref().filter(|d| done(d)) {
            return doc.clone();
        }
        assert!(Instant::now() < deadline, "never {what}: {doc:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sum of a metric's samples whose labels contain `labels` (all shards).
fn metric_sum(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name) && series.contains(labels))
        .map(|(_, v)| v.parse::<u64>().unwrap_or_else(|_| panic!("{name}: {v}")))
        .sum()
}

/// The `uftpd-stat` binary of this workspace, built if need be.
fn uftpd_stat() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/stats-HASH → target/debug/uftpd-stat
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("uftpd-stat"))
        .unwrap();
    if !bin.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "uftpd-stat"])
            .status()
            .expect("cargo build -p uftpd-stat");
        assert!(built.success());
    }
    bin
}

fn stat(args: &[&str]) -> Output {
    Command::new(uftpd_stat())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run uftpd-stat")
}

/// One lock-step upload of `bytes` (under 512), as a raw client.
fn upload(server: SocketAddr, name: &[u8], bytes: &[u8]) {
    let sock = client_socket(server);
    sock.send_to(&wrq(name, "octet", &[]), server).unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("ACK 0");
    assert_eq!(p, Packet::Ack { block: 0 });
    sock.send_to(&data(1, bytes), tid).unwrap();
    let (p, _, _) = recv_packet(&sock, SHORT).expect("ACK 1");
    assert_eq!(p, Packet::Ack { block: 1 });
}

fn miss(server: SocketAddr, name: &[u8]) {
    let reply = common::request_first_reply(server, &rrq(name, "octet", &[]), SHORT);
    assert!(
        matches!(reply, Some((Packet::Error { code: 1, .. }, _))),
        "{reply:?}"
    );
}

#[test]
fn n_transfers_show_exactly_n_in_the_report_the_metrics_and_the_json() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-count");
    let want = common::write_random_file(&dir.join("f.bin"), 1, 3000);
    // A short dally: finished uploads then leave the open-session gauge.
    let server = Server::start(dir.path(), &["--create", "--dally-ms", "300"]);
    let stats = server.stats_addr().expect("a stats line");
    const GETS: u64 = 12;
    const MISSES: u64 = 3;
    const UPLOADS: u64 = 2;
    for _ in 0..GETS {
        let got = common::raw_get(server.addr(), b"f.bin", "octet", &[("blksize", "1024")]);
        assert_eq!(got.map(|g| g.data).as_ref(), Ok(&want));
    }
    for i in 0..MISSES {
        miss(server.addr(), format!("missing-{i}").as_bytes());
    }
    for i in 0..UPLOADS {
        upload(
            server.addr(),
            format!("up-{i}").as_bytes(),
            b"uploaded bytes",
        );
    }
    let done = GETS + UPLOADS;
    let doc = wait_for(stats, "all transfers counted", |d| {
        total(d, "transfers_completed") == done && total(d, "sessions_active") == 0
    });
    assert_eq!(total(&doc, "requests_read"), GETS + MISSES);
    assert_eq!(total(&doc, "requests_write"), UPLOADS);
    assert_eq!(total(&doc, "requests_malformed"), 0);
    assert_eq!(total(&doc, "sessions_accepted"), done);
    assert_eq!(total(&doc, "refused_not_found"), MISSES);
    assert_eq!(total(&doc, "payload_bytes_sent"), GETS * 3000);
    assert_eq!(total(&doc, "payload_bytes_received"), UPLOADS * 14);
    assert_eq!(
        total(&doc, "cache_misses") + total(&doc, "cache_hits"),
        GETS
    );
    let failed: u64 = doc["total"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("failed_"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(failed, 0, "{doc}");
    // The shards' own rows add up to the totals.
    let shards = doc["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let per_shard: u64 = shards
        .iter()
        .map(|s| s["counters"]["transfers_completed"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, done);

    let (status, metrics) = http_get(stats, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric_sum(&metrics, "uftpd_requests_total", "kind=\"rrq\""),
        GETS + MISSES
    );
    assert_eq!(
        metric_sum(&metrics, "uftpd_requests_total", "kind=\"wrq\""),
        UPLOADS
    );
    assert_eq!(
        metric_sum(&metrics, "uftpd_transfers_completed_total", ""),
        done
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "uftpd_requests_refused_total",
            "reason=\"not_found\""
        ),
        MISSES
    );
    assert_eq!(metric_sum(&metrics, "uftpd_transfers_failed_total", ""), 0);
    assert_eq!(
        metric_sum(&metrics, "uftpd_bytes_sent_total", ""),
        total(&doc, "bytes_sent")
    );
    assert!(metrics.contains("# TYPE uftpd_sessions_active gauge\n"));
    assert!(metrics.contains("uftpd_sessions_active{shard=\"1\"} 0\n"));
    if let Some(promtool) = common::find_in_path("promtool") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The report, through the real client.
    let out = stat(&[&stats.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("REQ: [LOGIN Tag:001] [USER ")
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("RPL: [WELCOME Tag:001] [SESSION ")
    );
    assert_eq!(lines.next(), Some("REQ: [COMMAND Tag:002] [report]"));
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("RPL: [STS: OK Tag:002] [")
    );
    assert_eq!(lines.next(), Some("REQ: [CLOSE Tag:003]"));
    assert_eq!(lines.next(), Some("RPL: [CLOSE Tag:003]"));
    let after = stats_json(stats);
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "eAss---Srvr: CommandCnt: {} ReplyCnt: {done} RepliesPosted: {} ReplyPolls: {} \
                 Accepts: {done} Connections: 0",
                GETS + MISSES + UPLOADS,
                total(&after, "packets_sent"),
                total(&after, "packets_received"),
            )
            .as_str()
        ),
        "{text}"
    );
    let rate = lines.next().unwrap();
    assert!(
        rate.starts_with("Rate: ") && rate.ends_with(" Mbits/s"),
        "{rate}"
    );
    assert!(lines.next().unwrap().starts_with("Shard 0: CommandCnt: "));
    // --json is the same document as /stats.json.
    let out = stat(&["--json", &stats.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(total(&doc, "transfers_completed"), done);
    assert_eq!(doc["stats_endpoint"]["eas0_logins"].as_u64(), Some(2));
    // --watch, bounded.
    let out = stat(&[
        "--watch",
        "--count",
        "2",
        "--interval-ms",
        "100",
        &stats.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(screen.matches("SHARD").count(), 2, "{screen}");
    assert!(screen.contains(&format!("Completed: {done}")), "{screen}");
}

fn secret_file(dir: &TempDir, name: &str, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A frame by hand (docs/eas0.md "Frames"), independent of the codec.
fn frame(tag: u16, body: &[u8]) -> Vec<u8> {
    let mut f = b"eAS0".to_vec();
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(body);
    f
}

fn read_frame(s: &mut TcpStream) -> Option<(u16, Vec<u8>)> {
    let mut head = [0u8; 10];
    s.read_exact(&mut head).ok()?;
    assert_eq!(&head[..4], b"eAS0");
    let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
    let tag = u16::from_le_bytes(head[8..10].try_into().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((tag, body))
}

#[test]
fn wrong_secrets_and_echoed_nonces_are_refused() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-auth");
    let keys = TempDir::new("stats-keys");
    let good = secret_file(&keys, "good", "correct horse battery staple 42");
    let bad = secret_file(&keys, "bad", "incorrect horse battery staple 4");
    let server = Server::start(dir.path(), &["--stats-secret-file", good.to_str().unwrap()]);
    let stats = server.stats_addr().unwrap().to_string();

    let out = stat(&["--secret-file", good.to_str().unwrap(), &stats]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("AUTH yes]"), "{text}");
    assert!(text.contains("\neAss---Srvr: CommandCnt: 0 "), "{text}");

    let out = stat(&["--secret-file", bad.to_str().unwrap(), &stats]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong secret?"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = stat(&[&stats]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires a secret"),
        "{out:?}"
    );

    // An AUTH that hands the server its own nonce back (a reflection: the
    // proof it would need is one the server itself computes).
    let mut s = TcpStream::connect(server.stats_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(SHORT)).unwrap();
    let mut login = vec![0x01, 0x01, 3, 0, 0, 0];
    login.extend_from_slice(b"ops");
    s.write_all(&frame(1, &login)).unwrap();
    let (tag, challenge) = read_frame(&mut s).expect("CHALLENGE");
    assert_eq!((tag, challenge[0], challenge.len()), (1, 0x02, 33));
    let mut auth = vec![0x03];
    auth.extend_from_slice(&challenge[1..33]); // the server's nonce
    auth.extend_from_slice(&[0u8; 32]);
    s.write_all(&frame(2, &auth)).unwrap();
    let (_, error) = read_frame(&mut s).expect("ERROR");
    assert_eq!(error[0], 0x07, "{error:?}");
    assert_eq!(u16::from_le_bytes([error[1], error[2]]), 5, "NONCE_REUSED");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "closed after it");

    // A frame that is not eAS0 after the magic, and an oversized one.
    for bad in [
        b"eAS0\xff\xff\xff\xff\x01\x00".to_vec(),
        b"eAS0\x01\x00\x00\x00\x01\x00\xee".to_vec(),
    ] {
        let mut s = TcpStream::connect(server.stats_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(SHORT)).unwrap();
        s.write_all(&bad).unwrap();
        let (_, error) = read_frame(&mut s).expect("an ERROR");
        assert_eq!(error[0], 0x07, "{error:?}");
    }
    let log = server.log();
    assert!(log.contains("refused eAS0 login from 127.0.0.1:"), "{log}");
    let (_, metrics) = http_get(server.stats_addr().unwrap(), "/metrics");
    assert!(metric_sum(&metrics, "uftpd_stats_logins_refused_total", "") >= 4);
}

#[test]
fn the_stats_never_listen_beyond_loopback_without_a_secret() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-exposure");
    let out = Command::new(env!("CARGO_BIN_EXE_uftpd"))
        .args(["--listen", "127.0.0.1:0", "--stats", "0.0.0.0:0"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let keys = TempDir::new("stats-exposure-keys");
    let loose = secret_file(&keys, "loose", "a secret that others can read");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_uftpd"))
        .args(["--listen", "127.0.0.1:0", "--stats-secret-file"])
        .arg(&loose)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by others"), "{err}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_thousand_stats_connections_opened_and_dropped_leak_nothing() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-leak");
    let server = Server::start(dir.path(), &["--stats-idle-ms", "300"]);
    let stats = server.stats_addr().unwrap();
    let _ = stats_json(stats);
    std::thread::sleep(Duration::from_millis(100));
    let before = open_fds(server.pid());
    for i in 0..1000 {
        let mut s = TcpStream::connect(stats).expect("connect");
        match i % 5 {
            0 => {}
            1 => {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
            }
            2 => {
                let _ = s.write_all(b"eAS0\x20\x00");
            }
            3 => {
                let _ = s.write_all(b"\xff\xfe garbage");
            }
            _ => {
                let _ = s.write_all(b"GET / HTTP/1.1\r\n");
            }
        }
        drop(s);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Up to 64 dropped connections may still hold their places for
        // --stats-idle-ms: a full endpoint turns this one away. Try again.
        let Some(doc) = try_stats_json(stats) else {
            assert!(
                Instant::now() < deadline,
                "the stats endpoint stayed full for 5 s"
            );
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let open = doc["stats_endpoint"]["connections_open"].as_u64().unwrap();
        let fds = open_fds(server.pid());
        // This request's own connection may still be counted.
        if open <= 1 && fds <= before {
            let accepted = doc["stats_endpoint"]["connections_accepted"].as_u64();
            assert!(accepted.is_some_and(|n| n > 1000), "{doc}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections and {fds} descriptors (were {before}) after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readers_that_never_read_do_not_slow_transfers() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-stuck");
    let want = common::write_random_file(&dir.join("f.bin"), 3, 64 * 1024);
    let server = Server::start(dir.path(), &[]);
    let stats = server.stats_addr().unwrap();
    let transfers = |n: usize| {
        let started = Instant::now();
        for _ in 0..n {
            let got = common::raw_get(server.addr(), b"f.bin", "octet", &[("blksize", "1428")]);
            assert_eq!(got.map(|g| g.data).as_ref(), Ok(&want));
        }
        started.elapsed()
    };
    let alone = transfers(20);
    // One eAS0 session that floods commands without reading a reply (its
    // thread blocks writing), then every other connection slot taken by an
    // HTTP client that never finishes its request (each thread waits to read).
    let flood = std::thread::spawn(move || {
        let mut s = TcpStream::connect(stats).unwrap();
        let mut login = vec![0x01, 0x01, 3, 0, 0, 0];
        login.extend_from_slice(b"ops");
        let _ = s.write_all(&frame(1, &login));
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut command = vec![0x05, 6, 0, 0, 0];
        command.extend_from_slice(b"report");
        for tag in 2..5000u16 {
            if s.write_all(&frame(tag, &command)).is_err() {
                break;
            }
        }
        s
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut stuck = Vec::new();
    for _ in 0..70 {
        let mut s = TcpStream::connect(stats).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
        stuck.push(s);
    }
    let during = transfers(20);
    let flood = flood.join().unwrap();
    // Not a speed test: a stall would cost seconds per transfer.
    assert!(
        during < alone * 4 + Duration::from_secs(2),
        "20 transfers took {during:?} beside stuck stats readers, {alone:?} alone"
    );
    drop(stuck);
    drop(flood);
    // The endpoint was full indeed: the connections beyond its cap (64)
    // were closed at once. Its threads end as their peers go.
    let doc = wait_for(stats, "the stuck connections closed", |d| {
        d["stats_endpoint"]["connections_open"].as_u64() == Some(1)
    });
    let refused = doc["stats_endpoint"]["connections_refused"]
        .as_u64()
        .unwrap();
    assert!(refused >= 70 + 1 - 64, "{refused} refused");
}

/// The JSON lines of the server's stderr (the harness adds a few lines of
/// its own, which start with `$` or `[`).
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn json_logs_parse_and_say_which_file() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-jsonlog");
    let want = common::write_random_file(&dir.join("boot.efi"), 4, 5000);
    let server = Server::start(dir.path(), &["--log-format", "json", "-v", "--create"]);
    let got = common::raw_get(
        server.addr(),
        b"boot.efi",
        "octet",
        &[("tsize", "0"), ("blksize", "1024")],
    );
    assert_eq!(got.map(|g| g.data).as_ref(), Ok(&want));
    // A name built to break a log line (refused: control characters).
    let reply =
        common::request_first_reply(server.addr(), &rrq(b"evil\n\"name\\", "octet", &[]), SHORT);
    assert!(
        matches!(reply, Some((Packet::Error { .. }, _))),
        "{reply:?}"
    );
    upload(server.addr(), b"new.txt", b"hello");
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = json_lines(&server.log());
        let transfers = lines.iter().filter(|l| l["event"] == "transfer").count();
        if transfers == 2 {
            break lines;
        }
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    for l in &lines {
        assert!(l["ts"].as_str().unwrap().ends_with('Z'), "{l}");
        assert!(l["level"].is_string(), "{l}");
    }
    let request = lines
        .iter()
        .find(|l| l["event"] == "request" && l["file"] == "boot.efi")
        .expect("a request line at -v");
    assert_eq!(request["level"], "debug");
    assert_eq!(request["options"]["tsize"], "0");
    assert_eq!(request["options"]["blksize"], "1024");
    let refused = lines
        .iter()
        .find(|l| l["event"] == "refused")
        .expect("a refused line");
    assert_eq!(refused["file"], "evil\n\"name\\");
    assert!(
        matches!(
            (refused["reason"].as_str(), refused["code"].as_u64()),
            (Some("not_found"), Some(1)) | (Some("access"), Some(2))
        ),
        "{refused}"
    );
    assert_eq!(refused["level"], "info");
    let sent = lines
        .iter()
        .find(|l| l["event"] == "transfer" && l["kind"] == "rrq")
        .unwrap();
    assert_eq!(sent["file"], "boot.efi");
    assert_eq!(sent["bytes"], 5000);
    assert_eq!(sent["size"], 5000);
    assert_eq!(sent["blksize"], 1024);
    assert_eq!(sent["windowsize"], 1);
    assert_eq!(sent["outcome"], "complete");
    assert_eq!(sent["retransmissions"], 0);
    assert!(sent["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(sent["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let received = lines
        .iter()
        .find(|l| l["event"] == "transfer" && l["kind"] == "wrq")
        .unwrap();
    assert_eq!(received["file"], "new.txt");
    assert_eq!(received["upload"], "created");
    assert_eq!(received["bytes"], 5);
    // Timed to the final ACK, not after the dally (30 s by default).
    assert!(
        received["duration_ms"].as_f64().unwrap() < 5000.0,
        "{received}"
    );
}

#[test]
fn the_default_text_log_names_misses_and_uefi_probes_stay_quiet() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-textlog");
    common::write_random_file(&dir.join("bootx64.efi"), 5, 3000);
    let server = Server::start(dir.path(), &[]);
    miss(server.addr(), b"pxelinux.cfg/01-aa-bb");
    // EDK II's size probe: OACK read, then ERROR 8.
    let sock = client_socket(server.addr());
    sock.send_to(
        &rrq(b"bootx64.efi", "octet", &[("tsize", "0")]),
        server.addr(),
    )
    .unwrap();
    let (p, tid, _) = recv_packet(&sock, SHORT).expect("OACK");
    assert!(matches!(p, Packet::Oack { .. }), "{p:?}");
    sock.send_to(&common::error(8, "User aborted the transfer"), tid)
        .unwrap();
    let got = common::raw_get(server.addr(), b"bootx64.efi", "octet", &[]);
    assert!(got.is_ok());
    let stats = server.stats_addr().unwrap();
    wait_for(stats, "the probe counted", |d| {
        total(d, "failed_uefi_probe") == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log();
    assert!(
        log.contains("info: refused RRQ \"pxelinux.cfg/01-aa-bb\" from 127.0.0.1:"),
        "{log}"
    );
    assert!(log.contains(": File not found (not_found)"), "{log}");
    assert!(
        log.contains("info: sent \"bootx64.efi\" to 127.0.0.1:"),
        "{log}"
    );
    assert!(log.contains(": complete, 3000 bytes in "), "{log}");
    // The probe is not a failure worth a line at the default level.
    assert!(!log.contains("uefi_probe"), "{log}");
    assert_eq!(log.matches("bootx64.efi").count(), 1, "{log}");
}

/// Two free ports on loopback (UDP for TFTP, TCP for the stats).
fn free_ports() -> (u16, u16) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        udp.local_addr().unwrap().port(),
        tcp.local_addr().unwrap().port(),
    )
}

#[test]
fn a_log_pipe_nobody_reads_drops_lines_but_no_transfer() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-stalled-log");
    let want = common::write_random_file(&dir.join("f.bin"), 6, 100);
    let (udp, tcp) = free_ports();
    let tftp: SocketAddr = format!("127.0.0.1:{udp}").parse().unwrap();
    let stats: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    // stderr is a pipe this test never reads: once its 64 KiB are full
    // the logging thread blocks, and the shards must not notice.
    let mut child = Command::new(env!("CARGO_BIN_EXE_uftpd"))
        .args(["--cores", "2", "--log-queue-records", "16", "-v"])
        .args(["--listen", &tftp.to_string(), "--stats", &stats.to_string()])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(stats).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    const TRANSFERS: u64 = 800;
    let started = Instant::now();
    for i in 0..TRANSFERS {
        let got = common::raw_get(tftp, b"f.bin", "octet", &[]);
        assert_eq!(got.map(|g| g.data).as_ref(), Ok(&want), "transfer {i}");
    }
    let elapsed = started.elapsed();
    let doc = wait_for(stats, "all counted", |d| {
        total(d, "transfers_completed") == TRANSFERS
    });
    assert!(total(&doc, "log_events_dropped") > 0, "{doc}");
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "{TRANSFERS} transfers in {elapsed:?} with a stalled log; {} records dropped",
        total(&doc, "log_events_dropped")
    );
}

#[test]
fn http_errors_are_answered_not_hung() {
    if skip_stand_in() {
        return;
    }
    let dir = TempDir::new("stats-http");
    let server = Server::start(dir.path(), &[]);
    let stats = server.stats_addr().unwrap();
    assert_eq!(http_get(stats, "/nope").0, 404);
    let (status, page) = http_get(stats, "/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!DOCTYPE html>"));
    let mut s = TcpStream::connect(stats).unwrap();
    s.set_read_timeout(Some(SHORT)).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    let mut s = TcpStream::connect(stats).unwrap();
    s.set_read_timeout(Some(SHORT)).unwrap();
    let _ = s.write_all(&vec![b'A'; 9000]);
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
}

fn browser() -> Option<PathBuf> {
    ["chromium-headless-shell", "chromium", "chromium-browser"]
        .iter()
        .find_map(|b| common::find_in_path(b))
}

#[test]
fn the_status_page_renders_in_a_real_browser() {
    if skip_stand_in() {
        return;
    }
    let Some(chromium) = browser() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs chromium-headless-shell (.ci/install-clients.sh)"
        );
        eprintln!("SKIP: no headless Chromium");
        return;
    };
    let dir = TempDir::new("stats-page");
    let want = common::write_random_file(&dir.join("f.bin"), 7, 20_000);
    let server = Server::start(dir.path(), &[]);
    let stats = server.stats_addr().unwrap();
    for _ in 0..3 {
        let got = common::raw_get(server.addr(), b"f.bin", "octet", &[]);
        assert_eq!(got.map(|g| g.data).as_ref(), Ok(&want));
    }
    wait_for(stats, "3 completions", |d| {
        total(d, "transfers_completed") == 3
    });
    let profile = TempDir::new("stats-page-profile");
    let url = format!("http://{stats}/");
    let run = |extra: &[&str]| {
        let out = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .expect("run chromium");
        assert!(out.status.success(), "{out:?}");
        out
    };
    // The DOM after the script ran: it fetched /stats.json and filled in
    // the numbers (the served page says "served", the script "updated").
    let dom = String::from_utf8_lossy(&run(&["--dump-dom"]).stdout).into_owned();
    assert!(dom.contains("id=\"completed\">3<"), "{dom}");
    assert!(dom.contains("id=\"status\" class=\"\">updated "), "{dom}");
    assert!(dom.contains("<polyline"), "{dom}");
    let shot = std::env::temp_dir().join(format!("uftpd-status-page-{}.png", std::process::id()));
    run(&[
        "--window-size=1000,560",
        &format!("--screenshot={}", shot.display()),
    ]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let _ = std::fs::remove_file(&shot);
}
