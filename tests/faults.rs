//! Real fault runs (issue 9, "Real fault runs"): the fault test of
//! ../shared/reference/tftp-fault-test.txt — `tc qdisc add dev lo root netem
//! delay 100ms 50ms loss 20% duplicate 20% reorder 20%`, random files, sha256
//! on both ends — with real clients, RRQ and WRQ, against uftpd. This kernel
//! has no netem qdisc, so the faults come from the seeded relay of
//! tests/common/relay.rs, which the client talks to as if it were the server.
//!
//! The matrix: tftp-hpa, atftp lock-step, atftp with windowsize 8 and 16,
//! curl; RRQ and WRQ; an empty file, 24 × 512 bytes (ends with an empty
//! DATA), the reference's 20,000 bytes and about 1 MiB. Every run has its own
//! server, relay and fixed seed, and all runs go at once: the matrix takes
//! as long as its slowest run (about 75 s on the 2-core development
//! machine), not their sum. For every run, the sha256 of what the client
//! received (RRQ) or of what landed in the server's root (WRQ) equals the
//! source's, nothing else is left in the root, the client reports success,
//! and no DATA from the server is a resend caused by a duplicate ACK
//! (`Relay::sa_check`). Each run prints one summary line (client, direction,
//! size, seed, time, relay counters, server DATA by trigger; see
//! `-- --nocapture`).
//!
//! Replay: every failure names the run and its seed.
//! `UFTPD_FAULTS_ONLY='atftp-w8 RRQ 20000 B' UFTPD_FAULTS_SEED=1202 cargo test
//! --test faults real_clients -- --nocapture` runs the runs whose name
//! contains the filter, with that seed. A failed run's relay trace is
//! written to the file its failure names (`UFTPD_FAULTS_TRACE=1` writes
//! every run's). The relay draws each flow's faults from its own stream, so
//! a seed replays the same fault pattern as long as the endpoints send the
//! same datagrams; timing-dependent client behaviour can still differ.
//!
//! Settings, chosen so that every client survives 20 % loss each way and the
//! runs stay short (each is explained where it is set, in `server_args` and
//! `client_command`):
//! * uftpd: `--retransmit-ms 400` (a quarter of the default), `--retries 10`,
//!   `--dally-ms 60000`, `--cores 1`, `-v`, `--create` for uploads.
//! * tftp-hpa 5.2: `rexmt 1` and `timeout 60` on stdin.
//! * atftp 0.8.0: `--tftp-timeout 1`.
//! * curl 7.88: `--max-time 150`; `--tftp-no-options` but for the 1 MiB
//!   files.
//!
//! What the clients cannot do here:
//! * atftp 0.8.0 aborts a download with "unexpected OACK" when a second OACK
//!   arrives: a network duplicate, or the server's resend after a lost ACK 0
//!   (tftp_file.c: `if (oacks > 1)`), so about a third of its downloads with
//!   options fail under these faults whatever the server does.
//! * atftp 0.8.0 uploads: an old ACK that arrives after the last DATA went
//!   out makes it forget where the file ends; it sends one more, empty, DATA
//!   after the final ACK and waits for an ACK of it until it gives up. The
//!   file is stored whole.
//! * curl 7.88 uploads with options: each OACK it gets (a duplicate, or the
//!   server's resend) makes it send the *next* blksize bytes of its input as
//!   DATA 1, so a block of the file never leaves curl and the stored file is
//!   short by that much (uftpd stores what it was sent; it does not hold it
//!   against the `tsize` curl announced).
//! * tftp-hpa has no blksize option, so its 1 MiB runs are 2,049 lock-step
//!   exchanges: at the reference delay (a 200 ms round trip) they would take
//!   ten minutes. Its 1 MiB download runs on a fast link instead (3 ms ± 1 ms,
//!   the same loss, duplication and reordering, `--retransmit-ms 40`). Its
//!   1 MiB upload is not run: tftp-hpa resends a lost DATA only on its own
//!   timer (whole seconds, at least 1 s, restarted by every packet it gets),
//!   so at 20 % loss each way that is 600+ one-second stalls.
//!
//! uftpd failures these runs found, each with a reproducer below (they
//! failed until fixed, and now guard the fixes):
//! * `rrq_session_answering_a_repeated_request_waits_for_the_answer`: an
//!   unverified RRQ session answered a repeated request and then gave up at
//!   its old deadline, before the client's ACK of that answer arrived.
//! * `wrq_with_options_losing_data_1_completes_with_atftp`: an upload with
//!   options that lost DATA 1 never completed with atftp (uftpd repeated its
//!   OACK for every later DATA, atftp took each as leave to go on; now an
//!   ACK 0 sends it back to block 1).
//! * `curl_wrq_outlives_the_default_dally`: the default `--dally-ms` (then
//!   10 s) covered one resend of curl's last DATA; it is 30 s now.
//!
//! A failure with a known *client* cause (recognised from the client's
//! output, the server's log and the relay's trace: `explain`) is repeated
//! with another seed, at most `ATTEMPTS` times, and the summary line names
//! the seeds and causes; a watchdog stops a client as soon as a known
//! failure shows, instead of at its own limit. A known *uftpd* failure
//! fails the run at once (`UFTPD_FAULTS_LENIENT=1` retries it instead, to
//! see what else a run finds).

mod common;

use common::relay::{Dir, Faults, Happened, Relay, RelayConfig, TraceEvent};
use common::*;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), so the check is the reference's `sha256sum`
// ---------------------------------------------------------------------------

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256(data: &[u8]) -> String {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(SHA256_K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_matches_known_digests_and_sha256sum() {
    assert_eq!(
        sha256(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    if find_in_path("sha256sum").is_none() {
        return;
    }
    let dir = TempDir::new("sha");
    let path = dir.join("f");
    let data = write_random_file(&path, 5, 1_000_003);
    let out = Command::new("sha256sum").arg(&path).output().unwrap();
    let theirs = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        theirs.split_whitespace().next(),
        Some(sha256(&data).as_str())
    );
}

// ---------------------------------------------------------------------------
// The runs
// ---------------------------------------------------------------------------

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Exactly 24 blocks of 512: the transfer ends with an empty DATA.
const BLOCKS_EXACT: usize = 512 * 24;
/// The reference test's file size (`dd bs=100B count=200`).
const REFERENCE_SIZE: usize = 20_000;
/// About 1 MiB, not a multiple of any block size used.
const LARGE: usize = MIB + 4_321;
const SIZES: [usize; 4] = [0, BLOCKS_EXACT, REFERENCE_SIZE, LARGE];

/// Attempts of a run whose failures have a known cause (`Known`).
const ATTEMPTS: u64 = 6;
/// Time each client gets (the slowest run takes about 75 s).
const CLIENT_LIMIT: Duration = Duration::from_secs(160);
/// After the client exits: late copies still in the relay reach the server
/// and whatever it answers is in the trace (twice the longest delay of a
/// reordered datagram).
const SETTLE: Duration = Duration::from_millis(1_000);

/// The client under test and how it is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// tftp-hpa 5.2 `tftp`: lock-step, 512-byte blocks, no options.
    TftpHpa,
    /// atftp 0.8.0 without options: lock-step, 512-byte blocks.
    Atftp,
    /// atftp 0.8.0 with `windowsize N` (RFC 7440).
    AtftpWindow(u32),
    /// curl 7.88 tftp://.
    Curl,
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::TftpHpa => "tftp-hpa".into(),
            Who::Atftp => "atftp".into(),
            Who::AtftpWindow(w) => format!("atftp-w{w}"),
            Who::Curl => "curl".into(),
        }
    }

    fn client(self) -> Client {
        match self {
            Who::TftpHpa => Client::TftpHpa,
            Who::Atftp | Who::AtftpWindow(_) => Client::Atftp,
            Who::Curl => Client::Curl,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Rrq,
    Wrq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// The reference profile both ways.
    Reference,
    /// The reference's loss, duplication and reordering at 3 ms ± 1 ms.
    Fast,
}

impl Link {
    fn faults(self) -> Faults {
        match self {
            Link::Reference => Faults::REFERENCE,
            Link::Fast => {
                Faults::REFERENCE.with_delay(Duration::from_millis(3), Duration::from_millis(1))
            }
        }
    }

    /// The server's `--retransmit-ms`.
    fn server_rto(self) -> Duration {
        match self {
            // A quarter of the default (runs stay short) and above the
            // link's usual round trip (100–300 ms), so that most timeouts
            // are real losses rather than late answers.
            Link::Reference => Duration::from_millis(400),
            // The same reasoning at 3 ms ± 1 ms each way.
            Link::Fast => Duration::from_millis(40),
        }
    }
}

/// One run of the matrix.
#[derive(Clone, Debug)]
struct Spec {
    who: Who,
    dir: Direction,
    size: usize,
    seed: u64,
    link: Link,
    /// Requested blksize (None: the client's 512, or no options at all).
    blksize: Option<u32>,
    /// `--dally-ms` for the server (None: the matrix's 60 s).
    dally_ms: Option<u64>,
}

impl Spec {
    fn name(&self) -> String {
        let mut s = format!(
            "{} {} {} B",
            self.who.name(),
            match self.dir {
                Direction::Rrq => "RRQ",
                Direction::Wrq => "WRQ",
            },
            self.size
        );
        if let Some(b) = self.blksize {
            s.push_str(&format!(" blksize {b}"));
        }
        if self.link == Link::Fast {
            s.push_str(" fast-link");
        }
        s
    }

    fn uses_options(&self) -> bool {
        self.blksize.is_some() || matches!(self.who, Who::AtftpWindow(_))
    }
}

/// The matrix: every client, both directions, every size, each with a fixed
/// seed of its own. None where the client cannot do it here (module docs).
fn plan(who: Who, dir: Direction, size: usize, seed: u64) -> Option<Spec> {
    let mut spec = Spec {
        who,
        dir,
        size,
        seed,
        link: Link::Reference,
        blksize: None,
        dally_ms: None,
    };
    if size == LARGE {
        match who {
            Who::TftpHpa if dir == Direction::Wrq => return None,
            Who::TftpHpa => spec.link = Link::Fast,
            // Lock-step still, but 17 blocks instead of 2,049.
            Who::Atftp | Who::Curl => spec.blksize = Some(65_464),
            // Windows of 8 × 4 KiB and 16 × 8 KiB: with 1428-byte blocks a
            // window restarts after every lost block (go-back-N), and 735
            // such blocks take over two minutes at this delay.
            Who::AtftpWindow(8) => spec.blksize = Some(4_096),
            Who::AtftpWindow(_) => spec.blksize = Some(8_192),
        }
    }
    Some(spec)
}

fn matrix() -> Vec<Spec> {
    let whos = [
        Who::TftpHpa,
        Who::Atftp,
        Who::AtftpWindow(8),
        Who::AtftpWindow(16),
        Who::Curl,
    ];
    let mut specs = Vec::new();
    for (w, who) in whos.iter().enumerate() {
        for (d, dir) in [Direction::Rrq, Direction::Wrq].iter().enumerate() {
            for (s, size) in SIZES.iter().enumerate() {
                let seed = 1_000 + 100 * w as u64 + 10 * d as u64 + s as u64;
                specs.extend(plan(*who, *dir, *size, seed));
            }
        }
    }
    specs
}

fn server_args(spec: &Spec) -> Vec<String> {
    let mut args: Vec<String> = vec![
        // Forty servers share two cores; one shard each is plenty.
        "--cores".into(),
        "1".into(),
        "--retransmit-ms".into(),
        spec.link.server_rto().as_millis().to_string(),
        // A lock-step exchange fails 31 % of the time here (each way a
        // datagram gets through with p = 0.8 + 0.2 × 0.2 × 0.8 ≈ 0.83, with
        // its duplicate), and only the server's timer recovers a lost DATA
        // (a correct server ignores the client's repeated ACKs). The default
        // 5 retries give up after 6 failures in a row: p ≈ 0.001 per block,
        // about two abandoned transfers per 2,049-block run. 10: p ≈ 3e-6.
        "--retries".into(),
        "10".into(),
        // A finished upload re-ACKs a repeated last DATA for this long.
        // curl resends its last DATA every 5–6 s (--max-time / 30); the
        // default, 30 s, covers about five resends (it was 10 s, one: see
        // `curl_wrq_outlives_the_default_dally`). The matrix gives 60 s, so
        // that six lost answers in a row (p ≈ 0.002) do not fail a run.
        "--dally-ms".into(),
        spec.dally_ms.unwrap_or(60_000).to_string(),
    ];
    if spec.dir == Direction::Wrq {
        args.push("--create".into());
    }
    // One line per transfer and its outcome, for the failure reports (and
    // for `explain`). The harness adds it itself under UFTPD_TEST_VERBOSE.
    if std::env::var_os("UFTPD_TEST_VERBOSE").is_none() {
        args.push("-v".into());
    }
    args
}

const REMOTE_RRQ: &str = "file.bin";
const REMOTE_WRQ: &str = "up.bin";

/// The client's command line (and its stdin) for one run.
fn client_command(
    spec: &Spec,
    relay: SocketAddr,
    src: &Path,
    dst: &Path,
) -> (Command, Option<String>) {
    let host = relay.ip().to_string();
    let port = relay.port().to_string();
    match spec.who {
        Who::TftpHpa => {
            // tftp-hpa 5.2 resends on its own timer only: `rexmt` seconds
            // (default 5), restarted by every packet it gets, and gives up
            // on a block after `timeout` seconds of resends (default 25).
            // `rexmt 1` is the shortest (whole seconds; 0 would disable
            // the alarm), and `timeout 60` outlasts the server's backoff.
            // They are interactive commands, hence stdin.
            let mut c = Command::new("tftp");
            c.arg(&host).arg(&port);
            let action = match spec.dir {
                Direction::Rrq => format!("get {REMOTE_RRQ} {}", dst.display()),
                Direction::Wrq => format!("put {} {REMOTE_WRQ}", src.display()),
            };
            let script = format!("mode octet\nrexmt 1\ntimeout 60\n{action}\nquit\n");
            (c, Some(script))
        }
        Who::Atftp | Who::AtftpWindow(_) => {
            // atftp resends after --tftp-timeout seconds (default 5) and
            // aborts after 5 timeouts in a row. 1 s: the shortest, and
            // 5 s of silence is far beyond the server's retransmits. (The
            // `timeout` option would also fix the server's timer at whole
            // seconds, without backoff: not sent.)
            let mut c = Command::new("atftp");
            c.args(["--tftp-timeout", "1"]);
            if let Who::AtftpWindow(w) = spec.who {
                c.arg("--option").arg(format!("windowsize {w}"));
            }
            if let Some(b) = spec.blksize {
                c.arg("--option").arg(format!("blksize {b}"));
            }
            match spec.dir {
                Direction::Rrq => c.args(["-g", "-r", REMOTE_RRQ, "-l"]).arg(dst),
                Direction::Wrq => c.args(["-p", "-r", REMOTE_WRQ, "-l"]).arg(src),
            };
            c.arg(&host).arg(&port);
            (c, None)
        }
        Who::Curl => {
            // curl 7.88 derives its timers from its overall limits
            // (lib/tftp.c, tftp_set_timeouts): before the first reply it
            // resends the request every connect-timeout / 50 s (300 s by
            // default: every 6 s, 50 times) and sends that figure as the
            // `timeout` option, which fixes the server's timer at it
            // without backoff; afterwards it resends every
            // max-time / (max-time / 5) s, about 5 s, at most 30 times for
            // --max-time 150 (without --max-time: every 72 s).
            //
            // --tftp-no-options leaves the `timeout` option out, so the
            // server's own 400 ms timer with backoff does the recovery;
            // that costs the blksize option (and tsize, which curl cannot
            // take as 0 for an empty file anyway), so the 1 MiB runs ask
            // for blksize 65464 and live with the server resending every
            // 6 s (17 blocks). A shorter --connect-timeout would lower that
            // figure, but leaves 3 requests: under these faults all three
            // are lost or unanswered in about 3 % of runs.
            let mut c = Command::new("curl");
            c.args(["-sS", "--max-time", "150"]);
            match spec.blksize {
                Some(b) => c.arg("--tftp-blksize").arg(b.to_string()),
                None => c.arg("--tftp-no-options"),
            };
            let url = format!("tftp://{host}:{port}/");
            match spec.dir {
                Direction::Rrq => c.arg(format!("{url}{REMOTE_RRQ}")).arg("-o").arg(dst),
                Direction::Wrq => c.arg("-T").arg(src).arg(format!("{url}{REMOTE_WRQ}")),
            };
            (c, None)
        }
    }
}

/// `run_client` with an optional stdin script, and a watchdog: `stop` is
/// asked twice a second and kills the client when it says so.
fn run_watched(
    cmd: &mut Command,
    input: Option<&str>,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
) -> ClientOutput {
    let cmdline = match input {
        Some(i) => format!("{cmd:?} <<< {i:?}"),
        None => format!("{cmd:?}"),
    };
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
    let stdin = child.stdin.take();
    let input = input.unwrap_or_default().to_string();
    let t_in = thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(input.as_bytes());
        }
    });
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
    let mut polls = 0u64;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap_or(None) {
            break Some(st);
        }
        polls += 1;
        if Instant::now() >= deadline || (polls.is_multiple_of(50) && stop()) {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = t_in.join();
    ClientOutput {
        status,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
        timed_out,
        elapsed: start.elapsed(),
        cmdline,
    }
}

/// What one attempt of a run came to.
struct Attempt {
    seed: u64,
    elapsed: Duration,
    summary: String,
    /// None: passed. Some((why, message)): failed; `why` is set when a
    /// known cause explains the failure.
    failure: Option<(Option<Known>, String)>,
}

/// A known cause of a failed attempt, recognised from the client's output,
/// the server's log and the relay's trace. A client's is repeated with
/// another seed, and the summary says so.
#[derive(Clone, Debug)]
enum Known {
    /// A bug of the client (module docs).
    Client(String),
    /// A uftpd failure found by these runs, with its own reproducer
    /// (named); it fails the run (`UFTPD_FAULTS_LENIENT=1` retries it).
    Server { test: &'static str, what: String },
}

impl fmt::Display for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Known::Client(what) => write!(f, "client limitation: {what}"),
            Known::Server { test, what } => {
                write!(f, "KNOWN uftpd FAILURE: {what} (reproducer: `{test}`)")
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The flow of the transfer proper (the first one on a server TID).
fn transfer_flow(trace: &[TraceEvent], service: SocketAddr) -> Option<usize> {
    trace.iter().find(|e| e.server != service).map(|e| e.flow)
}

/// `out` is None while the client runs (the watchdog): then only uftpd
/// failures that cannot recover are recognised.
fn explain(
    spec: &Spec,
    out: Option<&ClientOutput>,
    trace: &[TraceEvent],
    service: SocketAddr,
    server_log: &str,
    content_ok: bool,
    stored: Option<usize>,
) -> Option<Known> {
    let client = spec.who.client();
    let flow = transfer_flow(trace, service);
    let on_flow = |dir: Dir, what: Happened| {
        trace
            .iter()
            .filter(move |e| Some(e.flow) == flow && e.dir == dir && e.what == what)
    };
    let is_data =
        |e: &TraceEvent, block: u16| e.opcode() == Some(OP_DATA) && e.block() == Some(block);

    // atftp 0.8.0, tftp_file.c, tftp_receive_file: `if (oacks > 1)` ...
    // "tftp: unexpected OACK", abort. A duplicate OACK, or the server's
    // resend after a lost ACK 0, both legitimate.
    let atftp_second_oack = || {
        if client != Client::Atftp
            || spec.dir != Direction::Rrq
            || !out.is_some_and(|o| o.stderr.contains("unexpected OACK"))
        {
            return None;
        }
        let second = on_flow(Dir::ToClient, Happened::Delivered)
            .filter(|e| e.opcode() == Some(OP_OACK))
            .nth(1)?;
        Some(Known::Client(format!(
            "atftp aborted on a second OACK (one delivered at {:.0} ms)",
            ms(second.at)
        )))
    };

    // atftp 0.8.0, tftp_send_file: an ACK older than the last block that
    // arrives after the last DATA went out resets `last_block`, so after
    // the final ACK atftp sends one more, empty, DATA past the end of the
    // file and waits for its ACK until it gives up. The file is complete.
    let atftp_past_the_end = || {
        if client != Client::Atftp || spec.dir != Direction::Wrq || out.is_none() || !content_ok {
            return None;
        }
        let blksize = spec.blksize.unwrap_or(512) as usize;
        let last = (spec.size / blksize + 1) as u64;
        if last >= 65_535 {
            return None;
        }
        let past = on_flow(Dir::ToServer, Happened::Received).find(|e| {
            e.opcode() == Some(OP_DATA) && e.block().is_some_and(|b| u64::from(b) > last)
        })?;
        Some(Known::Client(format!(
            "atftp sent DATA {} past the last block {last} after an old ACK ({:.0} ms)",
            past.block().unwrap(),
            ms(past.at)
        )))
    };

    // curl 7.88, lib/tftp.c, tftp_tx: every OACK sets block 1 and reads
    // the *next* blksize bytes of the input as DATA 1, so a duplicated or
    // resent OACK makes curl skip a block of its file; uftpd stores what
    // it was sent.
    let curl_second_oack = || {
        if client != Client::Curl || spec.dir != Direction::Wrq || out.is_none() || content_ok {
            return None;
        }
        let blksize = spec.blksize? as usize;
        let short = spec.size.checked_sub(stored?)?;
        let oacks = on_flow(Dir::ToClient, Happened::Delivered)
            .filter(|e| e.opcode() == Some(OP_OACK))
            .count();
        (short > 0 && short % blksize == 0 && oacks >= 2).then(|| {
            Known::Client(format!(
                "curl got {oacks} OACKs and sent a new DATA 1 for each: {} bytes of its file \
                 never left it",
                short
            ))
        })
    };

    // uftpd: an unverified RRQ session answers a repeat of the request
    // with its first DATA again, yet gives up at the deadline it already
    // had: the client's ACK of that DATA finds the TID closed.
    let give_up_after_answering = || {
        if spec.dir != Direction::Rrq || !server_log.contains("peer never answered") {
            return None;
        }
        let last_emit = on_flow(Dir::ToClient, Happened::Received).next_back()?.at;
        let last_request = trace
            .iter()
            .rfind(|e| {
                e.server == service
                    && e.dir == Dir::ToServer
                    && e.what == Happened::Delivered
                    && e.at <= last_emit
            })?
            .at;
        let late_ack = on_flow(Dir::ToServer, Happened::Delivered)
            .find(|e| e.at > last_emit && e.opcode() == Some(OP_ACK))?;
        (last_emit - last_request < Duration::from_millis(50)).then(|| Known::Server {
            test: "rrq_session_answering_a_repeated_request_waits_for_the_answer",
            what: format!(
                "the server answered a repeated RRQ at {:.0} ms, then gave up (\"peer never \
                 answered\"); the client's ACK reached the closed TID at {:.0} ms",
                ms(last_emit),
                ms(late_ack.at)
            ),
        })
    };

    // uftpd (with atftp): an upload with options whose DATA 1 is lost gets
    // an OACK for every later DATA (the handshake reply, repeated without
    // limit); atftp takes each as leave to go on, never sends DATA 1 again.
    let oack_ping_pong = || {
        if spec.dir != Direction::Wrq || !spec.uses_options() {
            return None;
        }
        let data1 = on_flow(Dir::ToServer, Happened::Delivered).any(|e| is_data(e, 1));
        let emitted: Vec<&TraceEvent> = on_flow(Dir::ToClient, Happened::Received).collect();
        let count = |op| emitted.iter().filter(|e| e.opcode() == Some(op)).count();
        let (oacks, acks) = (count(OP_OACK), count(OP_ACK));
        // DATA 1 may just be late (a reordered copy lands up to 450 ms
        // after the rest, each later DATA drawing an OACK meanwhile), or
        // the client may send it again: only when it has not for seconds,
        // dozens of OACKs later, is this the ping-pong.
        let end = trace.last().map_or(Duration::ZERO, |e| e.at);
        let data1_sent = on_flow(Dir::ToServer, Happened::Received)
            .filter(|e| is_data(e, 1))
            .map(|e| e.at)
            .next_back();
        let quiet = data1_sent.is_none_or(|t| end - t >= Duration::from_secs(3));
        (!data1 && acks == 0 && oacks >= 30 && quiet).then(|| Known::Server {
            test: "wrq_with_options_losing_data_1_completes_with_atftp",
            what: format!(
                "DATA 1 never reached the server; it answered {oacks} OACKs and no ACK 0 to \
                 the later DATA"
            ),
        })
    };

    // uftpd default: a stored upload re-ACKs a repeated last DATA for
    // --dally-ms only; the client resent it after that, unanswered.
    let dally_over = || {
        if spec.dir != Direction::Wrq || out.is_none() || !content_ok {
            return None;
        }
        let last_answer = on_flow(Dir::ToClient, Happened::Received).next_back()?.at;
        let unanswered: Vec<&TraceEvent> = on_flow(Dir::ToServer, Happened::Delivered)
            .filter(|e| e.opcode() == Some(OP_DATA) && e.at > last_answer + Duration::from_secs(1))
            .collect();
        let first = unanswered.first()?;
        Some(Known::Server {
            test: "curl_wrq_outlives_the_default_dally",
            what: format!(
                "the upload was stored and the server's last answer went out at {:.0} ms; \
                 {} resends of DATA {} from {:.0} ms on got none (--dally-ms {})",
                ms(last_answer),
                unanswered.len(),
                first.block().unwrap_or(0),
                ms(first.at),
                spec.dally_ms.unwrap_or(60_000)
            ),
        })
    };

    atftp_second_oack()
        .or_else(atftp_past_the_end)
        .or_else(curl_second_oack)
        .or_else(give_up_after_answering)
        .or_else(oack_ping_pong)
        .or_else(dally_over)
}

fn trace_path(spec: &Spec, seed: u64) -> PathBuf {
    let name: String = spec
        .name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::env::temp_dir().join(format!("uftpd-faults-{name}-seed{seed}.trace"))
}

fn attempt(spec: &Spec, seed: u64) -> Attempt {
    let root = TempDir::new("faults-root");
    let local = TempDir::new("faults-client");
    let (src, dst, stored) = match spec.dir {
        Direction::Rrq => (root.join(REMOTE_RRQ), local.join("got.bin"), REMOTE_RRQ),
        Direction::Wrq => (local.join("src.bin"), root.join(REMOTE_WRQ), REMOTE_WRQ),
    };
    let source = write_random_file(&src, seed ^ spec.size as u64, spec.size);
    let want = sha256(&source);
    let args = server_args(spec);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let server = Server::start(root.path(), &args);
    let mut relay = Relay::start(
        server.addr(),
        RelayConfig::symmetric(seed, spec.link.faults(), spec.link.server_rto()),
    );
    let start = Instant::now();
    let (mut cmd, stdin) = client_command(spec, relay.addr(), &src, &dst);
    // A known uftpd failure never recovers: stop the client at once rather
    // than at its own limit (minutes), so a repeat fits the time budget.
    let stopped: std::cell::RefCell<Option<Known>> = Default::default();
    let watch = || {
        let known = explain(
            spec,
            None,
            &relay.trace(),
            server.addr(),
            &server.log(),
            false,
            None,
        );
        let server_failure = matches!(known, Some(Known::Server { .. }));
        if server_failure {
            *stopped.borrow_mut() = known;
        }
        server_failure
    };
    let out = run_watched(&mut cmd, stdin.as_deref(), CLIENT_LIMIT, &watch);
    let stopped = stopped.into_inner();
    let elapsed = start.elapsed();
    thread::sleep(SETTLE);
    let sa = relay.sa_check();
    let counters = relay.counters();
    let got = std::fs::read(&dst).ok();
    let got_sha = got.as_deref().map(sha256);
    let summary = format!(
        "{:<38} seed {:>6} {:>6.1} s  {}  {}",
        spec.name(),
        seed,
        elapsed.as_secs_f64(),
        counters,
        sa
    );
    let mut problems = Vec::new();
    let content_ok = got_sha.as_deref() == Some(want.as_str());
    if !client_succeeded(spec.who.client(), &out) {
        problems.push("the client reported failure".to_string());
    }
    match &got_sha {
        Some(g) if *g == want => {}
        Some(g) => problems.push(format!(
            "sha256 {g} ({} bytes) != source {want} ({} bytes)",
            got.as_ref().unwrap().len(),
            spec.size
        )),
        None => problems.push(format!("{} is missing", dst.display())),
    }
    if spec.dir == Direction::Wrq {
        let entries = dir_entries(root.path());
        if entries.len() != 1 || !entries.contains(stored) {
            problems.push(format!("server root holds {entries:?}, want just {stored}"));
        }
    }
    if !sa.passed() {
        problems.push(format!(
            "Sorcerer's Apprentice: {} DATA resent in answer to a duplicate ACK; first:\n{}",
            sa.sorcerer.len(),
            sa.sorcerer[0]
        ));
    }
    relay.stop();
    let keep_trace = !problems.is_empty() || std::env::var_os("UFTPD_FAULTS_TRACE").is_some();
    let trace_note = if keep_trace {
        let path = trace_path(spec, seed);
        let early: Vec<String> = sa
            .sorcerer
            .iter()
            .chain(&sa.unexplained)
            .take(10)
            .map(|c| format!("# {}", c.replace('\n', "\n# ")))
            .collect();
        let text = format!(
            "# {}\n# seed {seed}, link {}\n# {counters}\n# {sa}\n# relay problems: {:?}\n{}\n{}",
            spec.name(),
            spec.link.faults(),
            relay.problems(),
            early.join("\n"),
            relay.trace_text()
        );
        match std::fs::write(&path, text) {
            Ok(()) => format!("relay trace: {}", path.display()),
            Err(e) => format!("relay trace not written to {}: {e}", path.display()),
        }
    } else {
        String::new()
    };
    let failure = (!problems.is_empty()).then(|| {
        let log = server.log();
        let known = stopped.clone().or_else(|| {
            explain(
                spec,
                Some(&out),
                &relay.trace(),
                server.addr(),
                &log,
                content_ok,
                got.as_ref().map(|g| g.len()),
            )
        });
        let message = format!(
            "{} seed {seed}: {}\n{summary}\n{}{trace_note}\nunexplained early resends: {}\n{}\n\
             --- server stderr ---\n{log}",
            spec.name(),
            problems.join("; "),
            known.as_ref().map_or(String::new(), |k| format!("{k}\n")),
            sa.unexplained.len(),
            out.describe(),
        );
        (known, message)
    });
    Attempt {
        seed,
        elapsed,
        summary,
        failure,
    }
}

/// The outcome of a run (all its attempts).
struct RunResult {
    line: String,
    failure: Option<String>,
    elapsed: Duration,
}

fn run(spec: &Spec) -> RunResult {
    let mut skipped = Vec::new();
    let mut total = Duration::ZERO;
    for k in 0..ATTEMPTS {
        let seed = spec.seed + 100_000 * k;
        let a = attempt(spec, seed);
        total += a.elapsed;
        let retried = if skipped.is_empty() {
            String::new()
        } else {
            format!("  (after {})", skipped.join(", "))
        };
        match a.failure {
            None => {
                return RunResult {
                    line: format!("ok   {}{retried}", a.summary),
                    failure: None,
                    elapsed: total,
                };
            }
            Some((Some(known), message)) if k + 1 < ATTEMPTS => {
                if matches!(known, Known::Server { .. })
                    && std::env::var_os("UFTPD_FAULTS_LENIENT").is_none()
                {
                    return RunResult {
                        line: format!("FAIL {}  ({known})", a.summary),
                        failure: Some(message),
                        elapsed: total,
                    };
                }
                skipped.push(format!("seed {}: {known}", a.seed));
            }
            Some((_, message)) => {
                return RunResult {
                    line: format!("FAIL {}{retried}", a.summary),
                    failure: Some(format!("{message}{retried}")),
                    elapsed: total,
                };
            }
        }
    }
    unreachable!("the last attempt returns")
}

fn selected(specs: Vec<Spec>) -> Vec<Spec> {
    let only = std::env::var("UFTPD_FAULTS_ONLY").ok();
    let seed: Option<u64> = std::env::var("UFTPD_FAULTS_SEED")
        .ok()
        .map(|s| s.parse().expect("UFTPD_FAULTS_SEED: a number"));
    specs
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| s.name().contains(o.as_str())))
        .map(|mut s| {
            if let Some(seed) = seed {
                s.seed = seed;
            }
            s
        })
        .collect()
}

/// Runs `specs` at once, prints a line per run, fails with every failure.
fn run_all(specs: Vec<Spec>) {
    if using_tftpd_hpa() {
        // The stand-in resends DATA on duplicate ACKs: not the server these
        // runs check.
        eprintln!("SKIPPING under UFTPD_TEST_SERVER=tftpd-hpa: fault runs check uftpd");
        return;
    }
    let mut missing = Vec::new();
    let mut runnable = Vec::new();
    for spec in specs {
        let binary = spec.who.client().binary();
        if missing.contains(&binary) {
            continue;
        }
        if skip_if_missing(binary) {
            missing.push(binary);
            continue;
        }
        runnable.push(spec);
    }
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, spec) in runnable.iter().enumerate() {
        let tx = tx.clone();
        let spec = spec.clone();
        handles.push(thread::spawn(move || {
            let name = spec.name();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&spec)))
                .unwrap_or_else(|e| {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    RunResult {
                        line: format!("FAIL {name} seed {}: panicked", spec.seed),
                        failure: Some(format!("{name} seed {}: panicked: {msg}", spec.seed)),
                        elapsed: Duration::ZERO,
                    }
                });
            let _ = tx.send((i, result));
        }));
    }
    drop(tx);
    let mut results: Vec<Option<RunResult>> = (0..runnable.len()).map(|_| None).collect();
    for (i, r) in rx.iter().take(runnable.len()) {
        eprintln!("{}", r.line);
        results[i] = Some(r);
    }
    for h in handles {
        let _ = h.join();
    }
    let results: Vec<RunResult> = results.into_iter().map(|r| r.unwrap()).collect();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.failure.as_ref()).collect();
    let slowest = results.iter().map(|r| r.elapsed).max().unwrap_or_default();
    eprintln!("\n=== fault runs, in matrix order ===");
    for r in &results {
        eprintln!("{}", r.line);
    }
    let known_server = results
        .iter()
        .map(|r| r.line.matches("KNOWN uftpd FAILURE").count())
        .sum::<usize>();
    eprintln!(
        "=== {} runs ({} failed, {} known uftpd failures hit and retried, {} clients missing: \
         {:?}) in {:.1} s, slowest {:.1} s ===",
        results.len(),
        failures.len(),
        known_server,
        missing.len(),
        missing,
        start.elapsed().as_secs_f64(),
        slowest.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} fault runs failed:\n\n{}",
        failures.len(),
        results.len(),
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n\n==========\n\n")
    );
}

#[test]
fn real_clients_through_reference_faults_keep_every_byte_and_no_sorcerer() {
    run_all(selected(matrix()));
}

// ---------------------------------------------------------------------------
// uftpd failures found by the runs above, one reproducer each. They fail
// while the failure is there; the matrix recognises each (`explain`) and
// repeats the run with another seed, saying so in its summary.
// ---------------------------------------------------------------------------

fn reproduce(spec: Spec) {
    if using_tftpd_hpa() || skip_if_missing(spec.who.client().binary()) {
        return;
    }
    let a = attempt(&spec, spec.seed);
    eprintln!("{}", a.summary);
    if let Some((known, message)) = a.failure {
        panic!(
            "{}\n{message}",
            known.map_or("(no known cause)".to_string(), |k| k.to_string())
        );
    }
}

/// Found by `curl RRQ 12288 B` seed 1401; the real-client case is
/// `curl_rrq_seed_1401_outlasts_a_late_repeat`, this is its deterministic
/// core, with a raw socket.
///
/// An RRQ session whose peer has not answered yet resends its first DATA
/// once on its timer, keeps listening for two more timeouts, and gives up
/// (at --retransmit-ms 400: 0.4 + 0.8 + 1.6 + 3.2 = 6.0 s after the first
/// DATA). A repeat of the request meanwhile is answered by that session
/// with DATA 1 again, but the give-up deadline stays where it was: a repeat
/// that arrives in the last round trip before it gets an answer from a TID
/// that closes before the client's ACK of that answer arrives. The client
/// then re-ACKs block 1 to a dead TID until it gives up (curl: until
/// --max-time); in the relay trace: `REQ delivered 12292.5 ms`, `DATA(1)
/// received 12292.7 ms` (the answer), `ACK(1) delivered 12460.7 ms`, and
/// nothing from the server after; its log: "RRQ file.bin to ...: failed:
/// peer never answered after 6001 ms" (first DATA at 6366 ms).
#[test]
fn rrq_session_answering_a_repeated_request_waits_for_the_answer() {
    if skip_on_stand_in("uftpd's retransmit schedule") {
        return;
    }
    let root = TempDir::new("repeat-root");
    write_random_file(&root.join("f.bin"), 1, 2 * 512 + 7);
    let server = Server::start(root.path(), &["--cores", "1", "--retransmit-ms", "400"]);
    let sock = client_socket(server.addr());
    let request = rrq(b"f.bin", "octet", &[]);
    sock.send_to(&request, server.addr()).unwrap();
    let (first, tid, _) = recv_packet(&sock, Duration::from_secs(2)).expect("DATA 1");
    let t0 = Instant::now();
    assert!(matches!(first, Packet::Data { block: 1, .. }), "{first:?}");
    // DATA 1 and its resend are "lost": never acknowledged. 100 ms before
    // the give-up (6.0 s) the request comes again ...
    let mut resends = Vec::new();
    let repeat_at = Duration::from_millis(5_900);
    for _ in 0..1_000 {
        let left = repeat_at.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        if let Some((p, _, _)) = recv_packet(&sock, left.min(Duration::from_millis(20))) {
            resends.push((t0.elapsed(), p));
        }
    }
    assert!(!resends.is_empty(), "no resend of DATA 1 at all");
    sock.send_to(&request, server.addr()).unwrap();
    let repeated = t0.elapsed();
    let Some((answer, from, _)) = recv_packet(&sock, Duration::from_millis(500)) else {
        // Not answering a repeat this late is a fix too: the session ends
        // and the client's next repeat gets a fresh one.
        return;
    };
    let answered = t0.elapsed();
    assert_eq!(
        from,
        tid,
        "the answer comes from the session's TID (repeat at {repeated:?}, answer at {answered:?}; \
         resends {:?})\n{}",
        resends,
        server.log()
    );
    assert!(
        matches!(answer, Packet::Data { block: 1, .. }),
        "{answer:?}"
    );
    // ... and the ACK of the answer comes one 200 ms round trip later.
    thread::sleep(Duration::from_millis(200));
    sock.send_to(&ack(1), tid).unwrap();
    let next = recv_packet(&sock, Duration::from_secs(2));
    assert!(
        matches!(next, Some((Packet::Data { block: 2, .. }, _, _))),
        "the server answered the repeat at {answered:?} (first DATA at 0) and then dropped \
         the session: the ACK of its answer at {:?} got {next:?}\n{}",
        answered + Duration::from_millis(200),
        server.log()
    );
}

/// The real-client case of the failure above, as found (the smallest file
/// it shows with: one full block, so the client needs the server after
/// DATA 1). Timing-dependent: curl resends its request on whole seconds of
/// its clock, and the repeat must land in the last 200 ms before the
/// session gives up; it does in about two replays out of three.
#[test]
fn curl_rrq_seed_1401_outlasts_a_late_repeat() {
    reproduce(plan(Who::Curl, Direction::Rrq, 512, 1401).unwrap());
}

/// Found by `atftp-w16 WRQ 20000 B` seed 1312 (and `atftp WRQ 1052897 B
/// blksize 65464` under seed 4242); smallest here: 513 bytes (two
/// blocks), seed 11 (the relay loses DATA 1 and delivers DATA 2; WRQ and
/// OACK get through untouched), with windowsize 16 and lock-step.
///
/// An upload with options (so the server's first reply is an OACK) whose
/// DATA 1 is lost. uftpd, still waiting for DATA 1, answers every other
/// DATA, and its own timer, with the OACK again (the handshake reply, once
/// per DATA, without limit), never with ACK 0. atftp 0.8.0 takes a
/// repeated OACK as leave to go on from where it is (tftp_send_file:
/// S_OACK_RECEIVED -> S_SEND_DATA of block_number + 1) and goes back only
/// on an ACK, so DATA 1 is never sent again: OACKs and later DATA
/// ping-pong until atftp is killed, and nothing is stored. Lock-step, seed
/// 11: DATA 1 lost at 262 ms, the server's timer resends the OACK at 522
/// ms, atftp answers with DATA 2, uftpd with an OACK, atftp with DATA 2 ...
/// In the seed-1312 trace, 780 OACKs for 831 DATA in 160 s. (An ACK 0
/// would send atftp, and curl, back to block 1.)
#[test]
fn wrq_with_options_losing_data_1_completes_with_atftp() {
    let window = plan(Who::AtftpWindow(16), Direction::Wrq, 513, 11).unwrap();
    let mut lock_step = plan(Who::Atftp, Direction::Wrq, 513, 11).unwrap();
    lock_step.blksize = Some(512);
    let failures: Vec<String> = [window, lock_step]
        .into_iter()
        .filter_map(|spec| {
            let name = spec.name();
            std::panic::catch_unwind(|| reproduce(spec))
                .err()
                .map(|_| format!("{name} failed (above)"))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
}

/// Found by the first curl upload tried, smallest here: an empty file, seed
/// 1769 (the final ACK and the ACK answering curl's first resend of the
/// last DATA are lost, everything before gets through untouched).
///
/// Not a protocol error, a default: a finished upload re-ACKs a repeated
/// last DATA for --dally-ms. curl resends its last DATA every 5-6 s
/// (--max-time 150; every 72 s without --max-time), so the old default of
/// 10 s covered one resend: when the final ACK and that resend's ACK were
/// both lost (p ≈ 0.1 at these faults) curl timed out although the file was
/// stored. The default is 30 s now; this runs at the default.
#[test]
fn curl_wrq_outlives_the_default_dally() {
    let mut spec = plan(Who::Curl, Direction::Wrq, 0, 1769).unwrap();
    spec.dally_ms = Some(30_000); // the default
    reproduce(spec);
}

// ---------------------------------------------------------------------------
// The relay itself
// ---------------------------------------------------------------------------

#[test]
fn relay_without_faults_follows_the_tid_and_delivers_everything() {
    if skip_on_stand_in("checks the relay against uftpd") {
        return;
    }
    let root = TempDir::new("relay-root");
    let want = write_random_file(&root.join("f.bin"), 3, 5 * 512 + 17);
    let server = Server::start(root.path(), &["--cores", "1"]);
    let relay = Relay::start(
        server.addr(),
        RelayConfig::symmetric(1, Faults::NONE, Duration::from_secs(1)),
    );
    let sock = client_socket(relay.addr());
    let got = raw_get_on(
        &sock,
        relay.addr(),
        b"f.bin",
        "octet",
        &[],
        Duration::from_secs(20),
    )
    .expect("download through the relay");
    assert_same_bytes(&got.data, &want, "through a fault-free relay");
    let tid = got.tid.unwrap();
    assert_ne!(tid, relay.addr(), "the client must see a new TID");
    assert_ne!(tid, server.addr());
    assert_eq!(tid.ip(), relay.addr().ip());
    assert!(got.strays.is_empty(), "{:?}", got.strays);
    thread::sleep(Duration::from_millis(100));
    let c = relay.counters();
    // RRQ + 6 ACKs; 6 DATA.
    assert_eq!((c.to_server.received, c.to_server.delivered), (7, 7), "{c}");
    assert_eq!((c.to_client.received, c.to_client.delivered), (6, 6), "{c}");
    assert_eq!(c.to_server.lost + c.to_client.lost, 0, "{c}");
    let sa = relay.sa_check();
    assert!(sa.passed() && sa.resent() == 0 && sa.first == 6, "{sa}");
    let trace = relay.trace_text();
    assert!(trace.contains("flow 1: client"), "{trace}");
}

#[test]
fn relay_faults_follow_the_profile_and_replay_by_seed() {
    // A plain UDP echo behind the relay: every datagram the relay gets from
    // the "client" comes back from the same port, through the same faults.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // Room for the whole burst even when this thread waits for a core (the
    // relay's own sockets have as much).
    socket2::SockRef::from(&echo)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo_thread = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..100_000 {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let faults = Faults::REFERENCE.with_delay(Duration::from_millis(2), Duration::from_millis(1));
    let sent = 2_000u64;
    let run = |seed: u64| {
        let relay = Relay::start(
            echo_addr,
            RelayConfig::symmetric(seed, faults, Duration::from_secs(1)),
        );
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..sent {
            sock.send_to(&ack(i as u16), relay.addr()).unwrap();
            if i % 20 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        // Until every copy is through both ways (bounded: 10 s).
        let mut c = relay.counters();
        for _ in 0..500 {
            thread::sleep(Duration::from_millis(20));
            let now = relay.counters();
            let settled = now == c
                && now.to_server.delivered + now.to_server.lost
                    == now.to_server.received + now.to_server.duplicated
                && now.to_client.received == now.to_server.delivered
                && now.to_client.delivered + now.to_client.lost
                    == now.to_client.received + now.to_client.duplicated;
            c = now;
            if settled {
                break;
            }
        }
        c
    };
    let a = run(7);
    let b = run(7);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo_thread.join().unwrap();
    let c = a.to_server;
    assert_eq!(c.received, sent, "{a}");
    // Each datagram: 20 % get a copy; each copy is lost with 20 %.
    let copies = c.received + c.duplicated;
    assert_eq!(c.delivered + c.lost, copies, "{a}");
    let near = |x: u64, p: f64, n: u64| (x as f64 - p * n as f64).abs() < 0.05 * n as f64;
    assert!(near(c.duplicated, 0.2, c.received), "{a}");
    assert!(near(c.lost, 0.2, copies), "{a}");
    assert!(near(c.reordered, 0.2, c.delivered), "{a}");
    // The echoes went through the faults the other way.
    assert_eq!(a.to_client.received, c.delivered, "{a}");
    assert!(near(a.to_client.lost, 0.2, a.to_client.received), "{a}");
    // One flow each way, so the same seed draws the same faults.
    assert_eq!(a.to_server, b.to_server, "same seed, same faults");
}

/// A deliberately broken server: answers every ACK, duplicates included,
/// with the next DATA (the Sorcerer's Apprentice), and resends on a 1 s
/// timeout. Serves `content` once, from a new port.
fn apprentice_server(content: Vec<u8>) -> (SocketAddr, thread::JoinHandle<()>) {
    let service = UdpSocket::bind("127.0.0.1:0").unwrap();
    service
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let addr = service.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let Ok((_, peer)) = service.recv_from(&mut buf) else {
            return;
        };
        let tid = UdpSocket::bind("127.0.0.1:0").unwrap();
        tid.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let blocks = content.len() / 512 + 1;
        let block = |n: usize| {
            let from = ((n - 1) * 512).min(content.len());
            data(n as u16, &content[from..(n * 512).min(content.len())])
        };
        let mut last = 1;
        let _ = tid.send_to(&block(1), peer);
        let mut timeouts = 0;
        for _ in 0..10_000 {
            match tid.recv_from(&mut buf) {
                Ok((n, _)) => match parse(&buf[..n]) {
                    Packet::Ack { block: b } if usize::from(b) >= blocks => return,
                    Packet::Ack { block: b } => {
                        last = usize::from(b) + 1;
                        let _ = tid.send_to(&block(last), peer);
                    }
                    _ => return,
                },
                Err(_) => {
                    timeouts += 1;
                    if timeouts > 5 {
                        return;
                    }
                    let _ = tid.send_to(&block(last), peer);
                }
            }
        }
    });
    (addr, handle)
}

#[test]
fn sa_check_catches_a_server_that_answers_duplicate_acks() {
    let content = pseudo_random_bytes(9, 12 * 512 + 100);
    let (addr, server) = apprentice_server(content.clone());
    // Duplicates only, and a short delay: every duplicate ACK is answered.
    let faults = Faults {
        loss: 0.0,
        duplicate: 0.3,
        reorder: 0.0,
        ..Faults::REFERENCE.with_delay(Duration::from_millis(10), Duration::from_millis(5))
    };
    let relay = Relay::start(
        addr,
        RelayConfig::symmetric(11, faults, Duration::from_secs(1)),
    );
    let sock = client_socket(relay.addr());
    let got = raw_get_on(
        &sock,
        relay.addr(),
        b"x",
        "octet",
        &[],
        Duration::from_secs(20),
    )
    .expect("download from the apprentice");
    assert_same_bytes(&got.data, &content, "from the apprentice");
    server.join().unwrap();
    thread::sleep(Duration::from_millis(100));
    let sa = relay.sa_check();
    assert!(
        !sa.passed(),
        "the check missed it: {sa}\n{}",
        relay.trace_text()
    );
    assert!(sa.sorcerer[0].contains("resent"), "{}", sa.sorcerer[0]);
    assert!(sa.unexplained.is_empty(), "{sa}\n{}", sa.unexplained[0]);
}
