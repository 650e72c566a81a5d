//! uftpd-load against real servers on loopback: the real `uftpd` binary
//! (built beside this one by `cargo test --workspace`) and, when present,
//! tftpd-hpa. Checks the contract: exit status, the JSON report's fields,
//! and that failures are classified by reason.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_uftpd-load");

/// The server binary, from the same target directory.
fn uftpd_bin() -> PathBuf {
    let path = Path::new(LOAD).with_file_name("uftpd");
    assert!(
        path.exists(),
        "{} not built: run the workspace's tests (cargo test --workspace) or cargo build -p uftpd",
        path.display()
    );
    path
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!(
            "uftpd-load-test-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes that are different at every offset (a misplaced block shows).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A free UDP port on loopback (bound, then released for the server).
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn uftpd(root: &Path, extra: &[&str]) -> Server {
        Server::spawn(
            uftpd_bin().as_path(),
            |addr| {
                let mut args = vec![
                    "--cores",
                    "1",
                    "--listen",
                    addr,
                    "--stats",
                    "127.0.0.1:0",
                    "-q",
                ];
                args.extend_from_slice(extra);
                args.iter().map(|a| a.to_string()).collect()
            },
            root,
        )
    }

    fn hpa(binary: &Path, root: &Path, extra: &[&str]) -> Server {
        Server::spawn(
            binary,
            |addr| {
                let mut args = vec!["-L", "-a", addr, "-s"];
                args.extend_from_slice(extra);
                args.iter().map(|a| a.to_string()).collect()
            },
            root,
        )
    }

    /// Starts `binary` with the arguments `args` gives for a free loopback
    /// address, then ROOT, and waits until it answers.
    fn spawn(binary: &Path, args: impl FnOnce(&str) -> Vec<String>, root: &Path) -> Server {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(binary)
            .args(args(&addr.to_string()))
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let server = Server { child, addr };
        server.wait_ready();
        server
    }

    /// Ready once an RRQ for a missing file draws an answer (bounded).
    fn wait_ready(&self) {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let rrq = b"\x00\x01no-such-file\x00octet\x00";
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let _ = s.send_to(rrq, self.addr);
            let mut buf = [0u8; 600];
            if s.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("server on {} did not answer within 10 s", self.addr);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs uftpd-load with `args` plus `--json -`, bounded by `--duration`-free
/// runs finishing on their own; returns the exit code and the report.
fn load(server: SocketAddr, args: &[&str]) -> (i32, Value, Output) {
    let out = Command::new(LOAD)
        .args(["--server", &server.to_string(), "--json", "-", "-q"])
        .args(args)
        .output()
        .expect("run uftpd-load");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report, out)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path.display().to_string()
}

#[test]
fn downloads_are_verified_and_reported() {
    let root = Dir::new("rrq");
    let small = write(&root.0, "small.bin", &content(65_536, 1));
    let large = write(&root.0, "large.bin", &content(1 << 20, 2));
    let server = Server::uftpd(&root.0, &[]);
    let (code, r, out) = load(
        server.addr,
        &[
            "--file",
            "small.bin",
            "--file",
            "large.bin",
            "--expect-file",
            &small,
            "--expect-file",
            &large,
            "--sessions",
            "4",
            "--transfers",
            "24",
            "--blksize",
            "1432",
            "--windowsize",
            "4",
            "--tsize",
        ],
    );
    assert_eq!(code, 0, "{r:#}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r["transfers_ok"], 24);
    assert_eq!(r["transfers_failed"], 0);
    assert_eq!(r["transfers_aborted"], 0);
    assert_eq!(r["bytes"], 12 * 65_536 + 12 * (1 << 20));
    for key in ["goodput_mbit_s", "transfers_per_s", "cpu_s"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r:#}");
    }
    for key in ["latency_ms", "first_block_ms", "window_rtt_ms"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                r[key][p].as_f64().is_some_and(|v| v > 0.0),
                "{key}.{p}: {r:#}"
            );
        }
        assert!(r[key]["p50"].as_f64() <= r[key]["max"].as_f64());
    }
    assert_eq!(r["latency_ms"]["count"], 24);
    assert!(r["failures"].as_object().is_some_and(|f| f.is_empty()));
}

#[test]
fn without_an_expected_file_every_copy_must_hash_alike() {
    let root = Dir::new("hash");
    write(&root.0, "f.bin", &content(200_000, 3));
    let server = Server::uftpd(&root.0, &[]);
    let (code, r, _) = load(
        server.addr,
        &["--file", "f.bin", "--sessions", "8", "--transfers", "16"],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["transfers_ok"], 16);
}

#[test]
fn failures_are_classified_and_fail_the_run() {
    let root = Dir::new("fail");
    write(&root.0, "f.bin", &content(10_000, 4));
    let other = Dir::new("fail-expect");
    let wrong = write(&other.0, "f.bin", &content(10_000, 6));
    let short = write(&other.0, "short.bin", &content(9_000, 4));
    let server = Server::uftpd(&root.0, &[]);

    let (code, r, _) = load(server.addr, &["--file", "missing", "--sessions", "2"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["transfers_failed"], 2);
    assert_eq!(r["failures"]["server_error_1"], 2, "{r:#}");

    let (code, r, _) = load(server.addr, &["--file", "f.bin", "--expect-file", &wrong]);
    assert_eq!(code, 1);
    assert_eq!(r["failures"]["hash_mismatch"], 1, "{r:#}");

    let (code, r, _) = load(server.addr, &["--file", "f.bin", "--expect-file", &short]);
    assert_eq!(code, 1);
    assert_eq!(r["failures"]["size_mismatch"], 1, "{r:#}");
}

#[test]
fn a_silent_server_is_a_timeout() {
    // Bound and never read: requests vanish, no ICMP comes back.
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sink.local_addr().expect("addr");
    let started = Instant::now();
    let (code, r, _) = load(
        addr,
        &[
            "--file",
            "f",
            "--sessions",
            "3",
            "--retransmit-ms",
            "50",
            "--retries",
            "2",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(r["failures"]["timeout"], 3, "{r:#}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn no_server_at_all_is_unreachable() {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (code, r, _) = load(addr, &["--file", "f", "--retransmit-ms", "200"]);
    assert_eq!(code, 1);
    assert_eq!(r["failures"]["unreachable"], 1, "{r:#}");
}

#[test]
fn a_duration_cuts_transfers_off_without_failing_them() {
    let root = Dir::new("duration");
    write(&root.0, "big.bin", &content(64 << 20, 6));
    let server = Server::uftpd(&root.0, &[]);
    let started = Instant::now();
    // 512-byte lock-step: 64 MiB takes far longer than half a second.
    let (code, r, _) = load(
        server.addr,
        &["--file", "big.bin", "--sessions", "2", "--duration", "0.5"],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["transfers_failed"], 0);
    assert_eq!(r["transfers_aborted"], 2, "{r:#}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn uploads_land_whole() {
    let root = Dir::new("wrq");
    std::fs::create_dir_all(root.0.join("up")).expect("mkdir");
    let src = Dir::new("wrq-src");
    let bytes = content(300_000, 7);
    let file = write(&src.0, "image", &bytes);
    let server = Server::uftpd(&root.0, &["--create", "--allow-root-uploads"]);
    let (code, r, _) = load(
        server.addr,
        &[
            "--write",
            "--file",
            "up/w{n}",
            "--expect-file",
            &file,
            "--sessions",
            "4",
            "--transfers",
            "8",
            "--blksize",
            "1428",
            "--tsize",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["transfers_ok"], 8);
    assert_eq!(r["bytes"], 8 * 300_000);
    for n in 0..8 {
        let got = std::fs::read(root.0.join(format!("up/w{n}"))).expect("uploaded file");
        assert!(got == bytes, "upload {n} differs");
    }
}

#[test]
fn a_bad_command_line_is_one_line_and_exit_2() {
    let out = Command::new(LOAD)
        .args(["--server", "not-an-address", "--file", "f"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--server"), "{err}");
}

/// The same generator against a real tftpd-hpa: it is a generic client.
#[test]
fn drives_tftpd_hpa_too() {
    let candidates = [
        "/usr/sbin/in.tftpd",
        "/opt/uftpd-peers/tftpd-hpa/usr/sbin/in.tftpd",
    ];
    let Some(binary) = candidates.iter().map(Path::new).find(|p| p.exists()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "tftpd-hpa missing under CI (.ci/install-clients.sh extracts it)"
        );
        eprintln!("skipped: tftpd-hpa not installed");
        return;
    };
    let root = Dir::new("hpa");
    let file = write(&root.0, "f.bin", &content(100_000, 8));
    let server = Server::hpa(binary, &root.0, &[]);
    let (code, r, _) = load(
        server.addr,
        &[
            "--file",
            "f.bin",
            "--expect-file",
            &file,
            "--sessions",
            "4",
            "--transfers",
            "8",
            "--blksize",
            "1432",
            "--tsize",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["transfers_ok"], 8);
}
