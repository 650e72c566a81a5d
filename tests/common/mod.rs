//! Shared harness for the integration tests that run the real `uftpd`
//! binary on loopback against real TFTP clients and raw UDP sockets.
//!
//! Nothing here depends on the server's library code: the TFTP packet
//! builder/parser below is an independent implementation.
//!
//! Environment variables:
//! * `CI` — when set, a missing client binary FAILS the test instead of
//!   skipping it (the CI script installs the clients).
//! * `UFTPD_TEST_SERVER=tftpd-hpa` — run `/usr/sbin/in.tftpd` instead of
//!   uftpd (a development stand-in; tests of uftpd-only features skip).
//! * `UFTPD_TEST_VERBOSE=1` — pass `-v` to uftpd.
//! * `UFTPD_TEST_KEEP=1` — keep temp directories.

#![allow(dead_code)]

pub mod relay;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Temp directories
// ---------------------------------------------------------------------------

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A uniquely named directory under `std::env::temp_dir()`, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "uftpd-test-{}-{}-{}-{}",
            tag,
            std::process::id(),
            n,
            nanos
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join<P: AsRef<Path>>(&self, p: P) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("UFTPD_TEST_KEEP").is_some() {
            eprintln!("keeping temp dir {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Names of the entries of a directory (non-recursive), sorted.
pub fn dir_entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Assert that `dir` contains exactly `expected` (e.g. no temp files left).
pub fn assert_dir_exactly(dir: &Path, expected: &[&str]) {
    let got = dir_entries(dir);
    let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        got,
        want,
        "directory {} should contain exactly {:?} (stray/temp files are a failure)",
        dir.display(),
        want
    );
}

// ---------------------------------------------------------------------------
// Deterministic content
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0xD1B5_4A32_D192_ED03)
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic printable text with LF line endings (lines of varying
/// length, so CR/LF pairs straddle block boundaries in netascii mode).
pub fn pseudo_random_text(seed: u64, approx_len: usize) -> Vec<u8> {
    let raw = pseudo_random_bytes(seed, approx_len * 2 + 64);
    let mut out = Vec::with_capacity(approx_len + 128);
    let mut i = 0;
    while out.len() < approx_len && i + 1 < raw.len() {
        let line_len = (raw[i] % 90) as usize;
        i += 1;
        for _ in 0..line_len {
            if i >= raw.len() {
                break;
            }
            out.push(b' ' + (raw[i] % 95));
            i += 1;
        }
        out.push(b'\n');
    }
    out
}

/// Write `len` pseudo-random bytes to `path` and return them.
pub fn write_random_file(path: &Path, seed: u64, len: usize) -> Vec<u8> {
    let data = pseudo_random_bytes(seed, len);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    data
}

/// Compare two byte strings, with a readable message on mismatch.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: content differs: got {} bytes, want {} bytes, first difference at offset {} \
         (block {} at blksize 512)",
        got.len(),
        want.len(),
        first_diff,
        first_diff / 512 + 1
    );
}

/// Read a file the client wrote and compare it with the expected content.
pub fn assert_file_eq(path: &Path, want: &[u8], what: &str) {
    let got = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", path.display()));
    assert_same_bytes(&got, want, what);
}

// ---------------------------------------------------------------------------
// Client binaries
// ---------------------------------------------------------------------------

pub fn find_in_path(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

/// Returns true when the test should be skipped because `binary` is not
/// installed. When the `CI` environment variable is set a missing binary is
/// a test failure instead (CI installs the clients via .ci/install-clients.sh).
pub fn skip_if_missing(binary: &str) -> bool {
    if find_in_path(binary).is_some() {
        return false;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "required TFTP client `{binary}` is not installed, and CI is set: \
             run .ci/install-clients.sh"
        );
    }
    eprintln!();
    eprintln!("################################################################");
    eprintln!("## SKIPPING TEST: client `{binary}` is not installed.");
    eprintln!("## Install it with .ci/install-clients.sh (CI would FAIL here).");
    eprintln!("################################################################");
    eprintln!();
    true
}

/// True when the tests run against the tftpd-hpa stand-in.
pub fn using_tftpd_hpa() -> bool {
    std::env::var("UFTPD_TEST_SERVER")
        .map(|v| v == "tftpd-hpa")
        .unwrap_or(false)
}

/// Returns true (and prints why) when a test checks a uftpd-only behaviour
/// that the tftpd-hpa stand-in does not have.
pub fn skip_on_stand_in(why: &str) -> bool {
    if using_tftpd_hpa() {
        eprintln!("SKIPPING under UFTPD_TEST_SERVER=tftpd-hpa: {why}");
        return true;
    }
    false
}

pub struct ClientOutput {
    /// None when the client was killed because of the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub cmdline: String,
}

impl ClientOutput {
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {:?} (timed out: {}, elapsed {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, self.timed_out, self.elapsed, self.stdout, self.stderr
        )
    }

    /// Combined stdout + stderr.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

fn cmdline_of(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Run a client command with stdin closed, capturing stdout/stderr; kill it
/// (SIGKILL) if it has not finished within `timeout`.
pub fn run_client(cmd: &mut Command, timeout: Duration) -> ClientOutput {
    run_client_with_input(cmd, None, timeout)
}

/// Like [`run_client`], with `input` written to the client's stdin (the
/// commands of an interactive client such as tftp-hpa's `tftp`).
pub fn run_client_with_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> ClientOutput {
    let cmdline = cmdline_of(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{cmdline}`: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        let _ = stdin.write_all(input);
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = start + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => panic!("wait `{cmdline}`: {e}"),
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    ClientOutput {
        status,
        stdout,
        stderr,
        timed_out,
        elapsed: start.elapsed(),
        cmdline,
    }
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

pub struct Server {
    child: Option<Child>,
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// tftpd-hpa forks a child per transfer: kill the whole process group.
    kill_group: bool,
    exited: Option<ExitStatus>,
}

fn default_listen() -> &'static str {
    "127.0.0.1:0"
}

/// Pick a currently free UDP port on `ip` (only for the tftpd-hpa stand-in,
/// which cannot report an ephemeral port).
fn free_udp_port(ip: &str) -> u16 {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind probe socket");
    s.local_addr().unwrap().port()
}

impl Server {
    /// Start the server serving `root`. `extra_args` are passed through;
    /// `--listen 127.0.0.1:0` and `--cores 2` are added unless given.
    pub fn start(root: &Path, extra_args: &[&str]) -> Server {
        if using_tftpd_hpa() {
            return Server::start_tftpd_hpa(root, extra_args);
        }
        let exe = env!("CARGO_BIN_EXE_uftpd");
        let mut cmd = Command::new(exe);
        let mut listens = extra_args.iter().filter(|a| **a == "--listen").count();
        if listens == 0 {
            cmd.args(["--listen", default_listen()]);
            listens = 1;
        }
        if !extra_args.contains(&"--cores") {
            cmd.args(["--cores", "2"]);
        }
        // Tests run side by side: each server's stats on a port of its own.
        if !extra_args
            .iter()
            .any(|a| *a == "--stats" || *a == "--no-stats")
        {
            cmd.args(["--stats", "127.0.0.1:0"]);
        }
        if std::env::var_os("UFTPD_TEST_VERBOSE").is_some() {
            cmd.arg("-v");
        }
        // The tests run as root: uploads there must be allowed explicitly
        // (server_behaviour.rs checks the refusal itself).
        if extra_args
            .iter()
            .any(|a| *a == "--create" || *a == "--overwrite")
            && !extra_args.contains(&"--user")
        {
            cmd.arg("--allow-root-uploads");
        }
        cmd.args(extra_args);
        cmd.arg(root);
        Server::spawn_and_wait(cmd, listens, false, None)
    }

    /// The tftpd-hpa development stand-in. Supported translations:
    /// `--listen ADDR:0`, `--create` (-c), `--retransmit-ms N` (-T N*1000),
    /// `--blksize-max N` (-B N). Everything else is ignored.
    fn start_tftpd_hpa(root: &Path, extra_args: &[&str]) -> Server {
        let mut listen: Option<String> = None;
        let mut args: Vec<String> = Vec::new();
        let mut it = extra_args.iter();
        while let Some(a) = it.next() {
            match *a {
                "--listen" => listen = it.next().map(|s| s.to_string()),
                "--create" => args.push("-c".into()),
                "--retransmit-ms" => {
                    let ms: u64 = it.next().unwrap().parse().unwrap();
                    args.push("-T".into());
                    args.push((ms * 1000).to_string());
                }
                "--blksize-max" => {
                    args.push("-B".into());
                    args.push(it.next().unwrap().to_string());
                }
                "--cores" | "--windowsize-max" | "--retries" | "--max-sessions" => {
                    it.next();
                }
                _ => {}
            }
        }
        let listen = listen.unwrap_or_else(|| default_listen().to_string());
        let (ip, _port) = listen.rsplit_once(':').unwrap();
        let port = free_udp_port(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let mut cmd = Command::new("/usr/sbin/in.tftpd");
        cmd.args(["-L", "-v", "-p", "-u", "root", "-s"]);
        cmd.arg(root);
        cmd.arg("-a").arg(addr.to_string());
        cmd.args(&args);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Server::spawn_and_wait(cmd, 1, true, Some(addr))
    }

    /// Start a server from a command line of the test's own (in.tftpd's
    /// flags, say) and wait for its `listening on` lines.
    pub fn start_command(cmd: Command, listens: usize) -> Server {
        Server::spawn_and_wait(cmd, listens, false, None)
    }

    /// [`Server::start_command`] with `socket` on standard input, as inetd
    /// starts a server (`wait` mode).
    pub fn start_inetd(cmd: Command, socket: UdpSocket) -> Server {
        let stdin = Stdio::from(std::os::fd::OwnedFd::from(socket));
        Server::spawn_with(cmd, 1, false, None, stdin)
    }

    fn spawn_and_wait(
        cmd: Command,
        listens: usize,
        kill_group: bool,
        known_addr: Option<SocketAddr>,
    ) -> Server {
        Server::spawn_with(cmd, listens, kill_group, known_addr, Stdio::null())
    }

    fn spawn_with(
        mut cmd: Command,
        listens: usize,
        kill_group: bool,
        known_addr: Option<SocketAddr>,
        stdin: Stdio,
    ) -> Server {
        let cmdline = cmdline_of(&cmd);
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn server `{cmdline}`: {e}"));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(format!("$ {cmdline}\n")));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
            // Drains stderr for the whole life of the process so the pipe
            // never fills; keeps everything for failure reports.
            thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            log.lock().unwrap().push_str(&line);
                            let _ = tx.send(line.trim_end().to_string());
                        }
                    }
                }
            });
        }
        let mut server = Server {
            child: Some(child),
            addrs: Vec::new(),
            log,
            kill_group,
            exited: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(addr) = known_addr {
            // in.tftpd prints nothing: wait until the port is taken.
            loop {
                if UdpSocket::bind(addr).is_err() {
                    break;
                }
                if let Some(st) = server.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("server exited early with {st}:\n{}", server.log());
                }
                if Instant::now() >= deadline {
                    panic!("server did not bind {addr} within 10 s:\n{}", server.log());
                }
                thread::sleep(Duration::from_millis(10));
            }
            server.addrs.push(addr);
            return server;
        }
        while server.addrs.len() < listens {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "server did not print `uftpd: listening on ADDR` ({} of {listens} seen) within 10 s\n\
                     --- server stderr ---\n{}",
                    server.addrs.len(),
                    server.log()
                );
            }
            match rx.recv_timeout((deadline - now).min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        // Text or JSON logs: the address ends at a quote or a space.
                        let a = rest
                            .split(|c: char| c == '"' || c.is_whitespace())
                            .next()
                            .unwrap_or_default();
                        let addr: SocketAddr = a.parse().unwrap_or_else(|e| {
                            panic!("cannot parse listen address {a:?} from {line:?}: {e}")
                        });
                        assert_ne!(addr.port(), 0, "server printed port 0: {line:?}");
                        server.addrs.push(addr);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(st) = server.child.as_mut().unwrap().try_wait().unwrap() {
                        thread::sleep(Duration::from_millis(50)); // let the log drain
                        panic!(
                            "server exited before listening ({st})\n--- server stderr ---\n{}",
                            server.log()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = server.child.as_mut().unwrap().wait().ok();
                    panic!(
                        "server closed stderr before listening (exit {st:?})\n--- server stderr ---\n{}",
                        server.log()
                    );
                }
            }
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The stats endpoint, from the server's `stats on ADDR ...` line.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.log().lines().find_map(|l| {
                l.split("stats on ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|a| a.parse().ok())
            });
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// Host part as a client wants it on its command line (`127.0.0.1`, `::1`).
    pub fn host(&self) -> String {
        self.addr().ip().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends signal `sig` (as `kill` spells it: "-HUP") to the server.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            self.log
                .lock()
                .unwrap()
                .push_str(&format!("[test harness] kill {sig} {}\n", c.id()));
            let target = if self.kill_group {
                format!("-{}", c.id())
            } else {
                c.id().to_string()
            };
            let _ = Command::new("kill")
                .args([sig, "--", &target])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Send SIGTERM to the server (not waiting).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Wait up to `timeout` for the server to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.exited = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Is the server process still running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server that died on its own during the test is a failure
        // (unless the test is already failing).
        let mut died: Option<ExitStatus> = None;
        if self.exited.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.exited = Some(st);
            died = Some(st);
        }
        if self.child.is_some() && self.exited.is_none() {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(2)).is_none() {
                self.signal("-KILL");
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        if self.kill_group {
            // tftpd-hpa's per-transfer children may outlive the parent.
            self.signal("-KILL");
        }
        let panicked_in_log = !self.kill_group && self.log().contains("panicked");
        if !thread::panicking() && (died.is_some() || panicked_in_log) {
            thread::sleep(Duration::from_millis(50)); // let the log drain
            panic!(
                "the server {} during the test\n--- server stderr ---\n{}",
                match died {
                    Some(st) => format!("exited on its own ({st})"),
                    None => "panicked (a thread panicked)".to_string(),
                },
                self.log()
            );
        }
        if thread::panicking() {
            eprintln!(
                "---------------- server stderr ({}) ----------------\n{}\n----------------------------------------------",
                self.addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Raw TFTP packets (independent of the server's code)
// ---------------------------------------------------------------------------

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

fn request(op: u16, name: &[u8], mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    p.extend_from_slice(name);
    p.push(0);
    p.extend_from_slice(mode.as_bytes());
    p.push(0);
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

pub fn rrq(name: &[u8], mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    request(OP_RRQ, name, mode, opts)
}

pub fn wrq(name: &[u8], mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    request(OP_WRQ, name, mode, opts)
}

pub fn ack(block: u16) -> Vec<u8> {
    let mut p = OP_ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = OP_DATA.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = OP_ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

#[derive(Clone, PartialEq, Eq)]
pub enum Packet {
    Data { block: u16, data: Vec<u8> },
    Ack { block: u16 },
    Error { code: u16, msg: String },
    Oack { opts: Vec<(String, String)> },
    Request { op: u16, fields: Vec<Vec<u8>> },
    Other { op: Option<u16>, raw: Vec<u8> },
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Packet::Data { block, data } => write!(f, "DATA(block {block}, {} bytes)", data.len()),
            Packet::Ack { block } => write!(f, "ACK({block})"),
            Packet::Error { code, msg } => write!(f, "ERROR({code}, {msg:?})"),
            Packet::Oack { opts } => write!(f, "OACK({opts:?})"),
            Packet::Request { op, fields } => write!(
                f,
                "REQ(op {op}, {:?})",
                fields
                    .iter()
                    .map(|x| String::from_utf8_lossy(x).into_owned())
                    .collect::<Vec<_>>()
            ),
            Packet::Other { op, raw } => write!(f, "OTHER(op {op:?}, {} bytes)", raw.len()),
        }
    }
}

impl Packet {
    pub fn opcode(&self) -> Option<u16> {
        match self {
            Packet::Data { .. } => Some(OP_DATA),
            Packet::Ack { .. } => Some(OP_ACK),
            Packet::Error { .. } => Some(OP_ERROR),
            Packet::Oack { .. } => Some(OP_OACK),
            Packet::Request { op, .. } => Some(*op),
            Packet::Other { op, .. } => *op,
        }
    }

    pub fn oack_opt(&self, key: &str) -> Option<String> {
        match self {
            Packet::Oack { opts } => opts
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }
}

fn split_nul(b: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = b.split(|c| *c == 0).map(|s| s.to_vec()).collect();
    if b.last() == Some(&0) {
        v.pop();
    }
    v
}

pub fn parse(b: &[u8]) -> Packet {
    if b.len() < 2 {
        return Packet::Other {
            op: None,
            raw: b.to_vec(),
        };
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    match op {
        OP_DATA if b.len() >= 4 => Packet::Data {
            block: u16::from_be_bytes([b[2], b[3]]),
            data: b[4..].to_vec(),
        },
        OP_ACK if b.len() >= 4 => Packet::Ack {
            block: u16::from_be_bytes([b[2], b[3]]),
        },
        OP_ERROR if b.len() >= 4 => {
            let msg = &b[4..];
            let msg = msg.split(|c| *c == 0).next().unwrap_or(&[]);
            Packet::Error {
                code: u16::from_be_bytes([b[2], b[3]]),
                msg: String::from_utf8_lossy(msg).into_owned(),
            }
        }
        OP_OACK => {
            let f = split_nul(&b[2..]);
            let opts = f
                .chunks(2)
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv[0]).into_owned(),
                        kv.get(1)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            Packet::Oack { opts }
        }
        OP_RRQ | OP_WRQ => Packet::Request {
            op,
            fields: split_nul(&b[2..]),
        },
        _ => Packet::Other {
            op: Some(op),
            raw: b.to_vec(),
        },
    }
}

/// A loopback UDP socket of the same family as `server`.
pub fn client_socket(server: SocketAddr) -> UdpSocket {
    let bind = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    UdpSocket::bind(bind).expect("bind client socket")
}

/// Receive one packet with a timeout. None on timeout.
pub fn recv_packet(sock: &UdpSocket, timeout: Duration) -> Option<(Packet, SocketAddr, usize)> {
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = vec![0u8; 70000];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((parse(&buf[..n]), from, n)),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            None
        }
        Err(e) => panic!("recv_from: {e}"),
    }
}

/// Collect every packet arriving within `window`.
pub fn drain_packets(sock: &UdpSocket, window: Duration) -> Vec<(Packet, SocketAddr)> {
    let deadline = Instant::now() + window;
    let mut v = Vec::new();
    while v.len() < 10_000 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match recv_packet(sock, deadline - now) {
            Some((p, from, _)) => v.push((p, from)),
            None => break,
        }
    }
    v
}

#[derive(Debug, Clone)]
pub struct RawGet {
    pub data: Vec<u8>,
    pub oack: Option<Vec<(String, String)>>,
    /// The server's transfer address (TID), set by the first reply.
    pub tid: Option<SocketAddr>,
    /// DATA blocks accepted so far.
    pub blocks: u64,
    pub blksize: usize,
    pub windowsize: u64,
    /// Largest payload seen.
    pub max_payload: usize,
    /// Time from sending the request to the first reply.
    pub first_reply_after: Option<Duration>,
    /// Packets that came from an address other than the TID (each was
    /// answered with ERROR 5, as RFC 1350 asks).
    pub strays: Vec<(SocketAddr, Packet)>,
    /// Block numbers seen right after block 65535 (to observe the wrap).
    pub after_65535: Vec<u16>,
}

impl Default for RawGet {
    fn default() -> Self {
        RawGet {
            data: Vec::new(),
            oack: None,
            tid: None,
            blocks: 0,
            blksize: 512,
            windowsize: 1,
            max_payload: 0,
            first_reply_after: None,
            strays: Vec::new(),
            after_65535: Vec::new(),
        }
    }
}

/// Download `name` with a raw socket. Handles OACK, blksize, windowsize
/// (ACKs every `windowsize` blocks) and 16-bit block-number wrap (65535 -> 0).
/// Errors are returned as text.
pub fn raw_get_on(
    sock: &UdpSocket,
    server: SocketAddr,
    name: &[u8],
    mode: &str,
    opts: &[(&str, &str)],
    overall: Duration,
) -> Result<RawGet, String> {
    sock.send_to(&rrq(name, mode, opts), server)
        .map_err(|e| e.to_string())?;
    raw_receive(sock, RawGet::default(), Instant::now(), overall)
}

/// Continue (or start) receiving a download. `state.tid` None means the
/// request was just sent; otherwise the caller has already ACKed block
/// `state.blocks` (or 0 after an OACK) to `state.tid`.
pub fn raw_receive(
    sock: &UdpSocket,
    mut res: RawGet,
    sent_at: Instant,
    overall: Duration,
) -> Result<RawGet, String> {
    let deadline = Instant::now() + overall;
    let mut expected: u16 = (res.blocks as u16).wrapping_add(1);
    let mut since_ack = 0u64;
    let mut last_ack: Option<Vec<u8>> = res.tid.map(|_| ack(res.blocks as u16));
    let mut timeouts = 0;
    let mut prev_block: Option<u16> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "raw get timed out after {overall:?} ({} bytes received)",
                res.data.len()
            ));
        }
        let Some((p, from, _)) = recv_packet(sock, Duration::from_millis(1500)) else {
            timeouts += 1;
            if timeouts > 5 {
                return Err(format!(
                    "no reply from server (got {} bytes so far)",
                    res.data.len()
                ));
            }
            if let (Some(a), Some(t)) = (&last_ack, res.tid) {
                sock.send_to(a, t).map_err(|e| e.to_string())?;
            }
            continue;
        };
        timeouts = 0;
        match res.tid {
            None => {
                res.tid = Some(from);
                res.first_reply_after = Some(sent_at.elapsed());
            }
            Some(t) if t != from => {
                // Packet from an unknown TID: RFC 1350 says reply ERROR 5.
                let _ = sock.send_to(&error(5, "Unknown transfer ID"), from);
                res.strays.push((from, p));
                continue;
            }
            _ => {}
        }
        let tid = res.tid.unwrap();
        match p {
            Packet::Oack { opts } if res.blocks == 0 && res.oack.is_none() => {
                for (k, v) in &opts {
                    if k.eq_ignore_ascii_case("blksize") {
                        res.blksize = v.parse().map_err(|_| format!("bad blksize {v}"))?;
                    }
                    if k.eq_ignore_ascii_case("windowsize") {
                        res.windowsize = v.parse().map_err(|_| format!("bad windowsize {v}"))?;
                    }
                }
                res.oack = Some(opts);
                let a = ack(0);
                sock.send_to(&a, tid).map_err(|e| e.to_string())?;
                last_ack = Some(a);
            }
            Packet::Data { block, data } => {
                if prev_block == Some(65535) {
                    res.after_65535.push(block);
                }
                prev_block = Some(block);
                if block == expected {
                    if data.len() > res.blksize {
                        return Err(format!(
                            "DATA block {block} has {} bytes > blksize {}",
                            data.len(),
                            res.blksize
                        ));
                    }
                    res.max_payload = res.max_payload.max(data.len());
                    res.data.extend_from_slice(&data);
                    res.blocks += 1;
                    since_ack += 1;
                    let last = data.len() < res.blksize;
                    if last || since_ack >= res.windowsize {
                        let a = ack(block);
                        sock.send_to(&a, tid).map_err(|e| e.to_string())?;
                        last_ack = Some(a);
                        since_ack = 0;
                    }
                    expected = expected.wrapping_add(1);
                    if last {
                        return Ok(res);
                    }
                } else {
                    // Duplicate or out of order: (re-)ACK the last in-order block.
                    let a = ack(expected.wrapping_sub(1));
                    sock.send_to(&a, tid).map_err(|e| e.to_string())?;
                    last_ack = Some(a);
                    since_ack = 0;
                }
            }
            Packet::Error { code, msg } => {
                return Err(format!(
                    "ERROR {code} {msg:?} after {} bytes",
                    res.data.len()
                ));
            }
            other => {
                return Err(format!(
                    "unexpected packet {other:?} (after {} blocks)",
                    res.blocks
                ));
            }
        }
    }
}

pub fn raw_get(
    server: SocketAddr,
    name: &[u8],
    mode: &str,
    opts: &[(&str, &str)],
) -> Result<RawGet, String> {
    let sock = client_socket(server);
    raw_get_on(&sock, server, name, mode, opts, Duration::from_secs(60))
}

/// Send a request from a fresh socket and return the first reply (or None
/// within `timeout`).
pub fn request_first_reply(
    server: SocketAddr,
    pkt: &[u8],
    timeout: Duration,
) -> Option<(Packet, SocketAddr)> {
    let sock = client_socket(server);
    sock.send_to(pkt, server).unwrap();
    recv_packet(&sock, timeout).map(|(p, a, _)| (p, a))
}

// ---------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------

/// The real TFTP clients exercised by the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// tftp-hpa 5.2 `tftp` (no blksize/windowsize options).
    TftpHpa,
    /// atftp 0.8.0 (`--option "blksize N"`, `--option "windowsize N"`).
    Atftp,
    /// curl's tftp:// (`--tftp-blksize N`).
    Curl,
    /// `busybox tftp` (`-b N`).
    Busybox,
}

impl Client {
    pub const ALL: [Client; 4] = [
        Client::TftpHpa,
        Client::Atftp,
        Client::Curl,
        Client::Busybox,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Client::TftpHpa => "tftp",
            Client::Atftp => "atftp",
            Client::Curl => "curl",
            Client::Busybox => "busybox",
        }
    }
}

/// Options for one client run.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientOpts {
    pub blksize: Option<u32>,
    pub windowsize: Option<u32>,
    /// netascii instead of octet (tftp-hpa only).
    pub ascii: bool,
    /// curl only: `--tftp-no-options` (no tsize/blksize in the request).
    pub no_options: bool,
}

fn host_arg(addr: SocketAddr) -> String {
    addr.ip().to_string()
}

fn curl_url(addr: SocketAddr, remote: &str) -> String {
    // `remote` must not start with '/': curl strips one leading slash of
    // the URL path. --path-as-is keeps `..` segments as typed.
    match addr {
        SocketAddr::V4(a) => format!("tftp://{}:{}/{}", a.ip(), a.port(), remote),
        SocketAddr::V6(a) => format!("tftp://[{}]:{}/{}", a.ip(), a.port(), remote),
    }
}

/// Build the command line that downloads `remote` into `local`.
pub fn get_command(
    client: Client,
    addr: SocketAddr,
    remote: &str,
    local: &Path,
    o: ClientOpts,
) -> Command {
    let mut c;
    match client {
        Client::TftpHpa => {
            assert!(
                o.blksize.is_none() && o.windowsize.is_none(),
                "tftp-hpa has no blksize/windowsize"
            );
            c = Command::new("tftp");
            if addr.is_ipv6() {
                c.arg("-6");
            }
            c.arg(host_arg(addr)).arg(addr.port().to_string());
            c.args(["-m", if o.ascii { "netascii" } else { "octet" }]);
            c.args(["-c", "get", remote]).arg(local);
        }
        Client::Atftp => {
            assert!(!o.ascii);
            c = Command::new("atftp");
            if let Some(b) = o.blksize {
                c.arg("--option").arg(format!("blksize {b}"));
            }
            if let Some(w) = o.windowsize {
                c.arg("--option").arg(format!("windowsize {w}"));
            }
            c.args(["-g", "-r", remote, "-l"]).arg(local);
            c.arg(host_arg(addr)).arg(addr.port().to_string());
        }
        Client::Curl => {
            assert!(!o.ascii && o.windowsize.is_none());
            c = Command::new("curl");
            c.args(["-sS", "--path-as-is", "-g"]);
            if let Some(b) = o.blksize {
                c.arg("--tftp-blksize").arg(b.to_string());
            }
            if o.no_options {
                c.arg("--tftp-no-options");
            }
            c.arg(curl_url(addr, remote)).arg("-o").arg(local);
        }
        Client::Busybox => {
            assert!(!o.ascii && o.windowsize.is_none());
            c = Command::new("busybox");
            c.arg("tftp");
            if let Some(b) = o.blksize {
                c.arg("-b").arg(b.to_string());
            }
            c.args(["-g", "-r", remote, "-l"]).arg(local);
            c.arg(host_arg(addr)).arg(addr.port().to_string());
        }
    }
    c
}

/// Build the command line that uploads `local` as `remote`.
pub fn put_command(
    client: Client,
    addr: SocketAddr,
    local: &Path,
    remote: &str,
    o: ClientOpts,
) -> Command {
    let mut c;
    match client {
        Client::TftpHpa => {
            c = Command::new("tftp");
            if addr.is_ipv6() {
                c.arg("-6");
            }
            c.arg(host_arg(addr)).arg(addr.port().to_string());
            c.args(["-m", if o.ascii { "netascii" } else { "octet" }]);
            c.args(["-c", "put"]).arg(local).arg(remote);
        }
        Client::Atftp => {
            c = Command::new("atftp");
            if let Some(b) = o.blksize {
                c.arg("--option").arg(format!("blksize {b}"));
            }
            if let Some(w) = o.windowsize {
                c.arg("--option").arg(format!("windowsize {w}"));
            }
            c.args(["-p", "-r", remote, "-l"]).arg(local);
            c.arg(host_arg(addr)).arg(addr.port().to_string());
        }
        Client::Curl => {
            c = Command::new("curl");
            c.args(["-sS", "--path-as-is", "-g"]);
            if let Some(b) = o.blksize {
                c.arg("--tftp-blksize").arg(b.to_string());
            }
            c.arg("-T").arg(local).arg(curl_url(addr, remote));
        }
        Client::Busybox => {
            c = Command::new("busybox");
            c.arg("tftp");
            if let Some(b) = o.blksize {
                c.arg("-b").arg(b.to_string());
            }
            c.args(["-p", "-r", remote, "-l"]).arg(local);
            c.arg(host_arg(addr)).arg(addr.port().to_string());
        }
    }
    c
}

/// Did the client report success? tftp-hpa exits 0 even when the server
/// sent an ERROR or the transfer timed out, so its output is checked too.
pub fn client_succeeded(client: Client, out: &ClientOutput) -> bool {
    if !out.success() {
        return false;
    }
    match client {
        Client::TftpHpa => {
            let all = out.all_output();
            !(all.contains("Error code") || all.contains("timed out") || all.contains("tftp:"))
        }
        Client::Atftp => !out.all_output().contains("error received from server"),
        _ => true,
    }
}

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Run a download and assert the local file equals `want`.
pub fn client_get_ok(
    client: Client,
    server: &Server,
    remote: &str,
    local: &Path,
    o: ClientOpts,
    want: &[u8],
) {
    let out = run_client(
        &mut get_command(client, server.addr(), remote, local, o),
        CLIENT_TIMEOUT,
    );
    assert!(
        client_succeeded(client, &out),
        "{client:?} get of {remote:?} ({} bytes, {o:?}) failed\n{}",
        want.len(),
        out.describe()
    );
    assert_file_eq(
        local,
        want,
        &format!("{client:?} get of {remote:?} ({o:?})"),
    );
}

/// Run an upload and assert it succeeded (content is checked by the caller).
pub fn client_put_ok(client: Client, server: &Server, local: &Path, remote: &str, o: ClientOpts) {
    let out = run_client(
        &mut put_command(client, server.addr(), local, remote, o),
        CLIENT_TIMEOUT,
    );
    assert!(
        client_succeeded(client, &out),
        "{client:?} put of {remote:?} ({o:?}) failed\n{}",
        out.describe()
    );
}

/// The local file a failed download left: must be missing or empty.
pub fn assert_no_content(local: &Path, what: &str) {
    if let Ok(b) = std::fs::read(local) {
        assert!(
            b.is_empty(),
            "{what}: client received {} bytes but the request must have been refused: {:?}",
            b.len(),
            String::from_utf8_lossy(&b[..b.len().min(200)])
        );
    }
}
