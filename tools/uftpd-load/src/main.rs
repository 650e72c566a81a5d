//! `uftpd-load`: many concurrent TFTP transfers from one process against
//! any server, measured. The command line and the JSON report are a
//! contract (README, "uftpd-load"): scripts rely on them.
//!
//! Layout: `plan` (what to run, shared by the threads), `transfer` (one
//! transfer: the protocol core's client side plus verification and
//! timing, pure), `worker` (one io_uring per thread moving the bytes),
//! `stats` and `report` (histograms, JSON, text, percentile files).

mod plan;
mod report;
mod stats;
mod transfer;
mod worker;

use std::fs::File;
use std::io::{IsTerminal, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use uftpd::cache::Source;
use uftpd::proto::transfer::TimerConfig;
use uftpd::proto::wire::OptionValues;
use uftpd::sys::process::{CpuOf, cpu_time, raise_nofile_to_hard};

use plan::{FileSpec, Plan, Shared};
use stats::Stats;

/// Files compared in place are read into memory up to this size.
const EXPECT_FILE_BYTES_MAX: u64 = 4 << 30;
/// Descriptors kept for everything but transfer sockets.
const SPARE_FDS: u64 = 64;

/// A TFTP load generator on io_uring, driven by uftpd's own protocol core.
///
/// Exit status: 0 when no transfer failed, 1 when any did, 2 for a bad
/// command line or a setup error.
#[derive(Debug, Parser)]
#[command(name = "uftpd-load", version)]
struct Args {
    /// The server, as ADDR:PORT (a name resolves; the first address wins).
    #[arg(long, value_name = "ADDR:PORT")]
    server: String,
    /// A file to transfer; several are taken in turn. For --write, `{n}` in
    /// the name becomes the transfer's number.
    #[arg(long = "file", value_name = "NAME", required = true)]
    files: Vec<String>,
    /// Transfers running at once, over all threads.
    #[arg(long, default_value_t = 1, value_name = "N")]
    sessions: usize,
    /// Transfers to run in all (default: one per session, unless --duration).
    #[arg(long, value_name = "N")]
    transfers: Option<u64>,
    /// Stop starting transfers after this long; running ones are cut off
    /// and counted as transfers_aborted, not failed.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Ask for this block size (RFC 2348).
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u16).range(8..=65464))]
    blksize: Option<u16>,
    /// Ask for this window size (RFC 7440).
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u16).range(1..))]
    windowsize: Option<u16>,
    /// Ask for the transfer size (RFC 2349); a mismatch is a failure.
    #[arg(long)]
    tsize: bool,
    /// Ask for this retransmission timeout (RFC 2349 `timeout`, seconds).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u8).range(1..))]
    timeout: Option<u8>,
    /// The generator's own retransmission timer.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    retransmit_ms: u64,
    /// Timeouts in a row before a transfer fails.
    #[arg(long, default_value_t = 5, value_name = "N")]
    retries: u32,
    /// Upload (WRQ) instead of download (RRQ).
    #[arg(long)]
    write: bool,
    /// What each --file must contain (RRQ: compared byte for byte; WRQ: what
    /// is uploaded). Paired with --file in order; one applies to all.
    /// Without it, RRQ transfers of a file must all hash alike.
    #[arg(long = "expect-file", value_name = "PATH")]
    expect_files: Vec<PathBuf>,
    /// For --write without --expect-file: upload this many pseudo-random bytes.
    #[arg(long, value_name = "BYTES")]
    size: Option<u64>,
    /// Start at most this many transfers per second (over all threads).
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// Worker threads, each with its own io_uring.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// Write the JSON report here (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write HdrHistogram percentile files (latency.hgrm, first_block.hgrm,
    /// window_rtt.hgrm) into this directory.
    #[arg(long, value_name = "DIR")]
    hdr_dir: Option<PathBuf>,
    /// No progress line and no text summary.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("uftpd-load: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let server = resolve(&args.server)?;
    let threads = args.threads.clamp(1, 256);
    if args.sessions == 0 {
        return Err("--sessions must be at least 1".into());
    }
    let threads = threads.min(args.sessions);
    let files = load_files(&args)?;
    let nofile = raise_nofile_to_hard().unwrap_or(1024);
    let per_thread = args.sessions.div_ceil(threads);
    let needed = (worker::owners_for(per_thread) as u64) * threads as u64 + SPARE_FDS;
    if needed > nofile {
        return Err(format!(
            "{} sessions need about {needed} file descriptors, the limit is {nofile}: raise it (ulimit -n) or use fewer --sessions",
            args.sessions
        ));
    }
    let options = OptionValues {
        blksize: args.blksize,
        timeout_s: args.timeout,
        tsize_bytes: args.tsize.then_some(0),
        windowsize: args.windowsize,
    };
    let timer = TimerConfig {
        retransmit_ms: args.retransmit_ms.max(1),
        retries_max: args.retries,
        backoff: true,
        unverified_resends_max: None,
        unverified_quiet_waits: 0,
        unverified_retransmit_ms: args.retransmit_ms.max(1),
    }
    .with_peer_timeout(args.timeout);
    let transfers = match (args.transfers, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(args.sessions as u64),
    };
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => return Err("--duration must be a positive number of seconds".into()),
        None => None,
    };
    let config = json!({
        "server": server.to_string(),
        "files": args.files,
        "sessions": args.sessions,
        "transfers": transfers,
        "duration_s": args.duration,
        "blksize": args.blksize,
        "windowsize": args.windowsize,
        "tsize": args.tsize,
        "timeout_s": args.timeout,
        "write": args.write,
        "rate": args.rate,
        "threads": threads,
    });
    let plan = Plan {
        server,
        files,
        write: args.write,
        options,
        timer,
        sessions_per_thread: per_thread,
        rate_per_thread: args.rate.map(|r| r / threads as f64),
    };
    let shared = Arc::new(Shared::new(plan, transfers, duration));
    let cpu_before = cpu_time(CpuOf::Process).unwrap_or_default();
    let started = shared.started_at;

    // Every worker sets up its ring (an io_uring stays on its thread)
    // before any starts: a setup error stops the run before a transfer.
    let ready = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let shared = Arc::clone(&shared);
            let ready = Arc::clone(&ready);
            std::thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || {
                    let worker = worker::Worker::new(Arc::clone(&shared));
                    if worker.is_err() {
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    ready.wait();
                    worker?.run()
                })
        })
        .collect();
    for h in &handles {
        if h.is_err() {
            // A thread that never started cannot reach the barrier: stand
            // in for it, so the others do not wait forever.
            shared.stop.store(true, Ordering::Relaxed);
            ready.wait();
        }
    }
    let progress =
        (!args.quiet && std::io::stderr().is_terminal()).then(|| progress_bar(transfers));
    let mut total = Stats::default();
    let mut errors = Vec::new();
    let mut handles: Vec<_> = handles.into_iter().collect();
    loop {
        if let Some(bar) = &progress {
            let ok = shared.progress_ok.load(Ordering::Relaxed);
            let failed = shared.progress_failed.load(Ordering::Relaxed);
            let bytes = shared.progress_bytes.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            bar.set_position(ok + failed);
            bar.set_message(format!(
                "{ok} ok, {failed} failed, {:.1} Mbit/s",
                bytes as f64 * 8.0 / 1e6 / secs
            ));
        }
        if handles
            .iter()
            .all(|h| h.as_ref().map_or(true, |h| h.is_finished()))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for h in handles.drain(..) {
        match h {
            Ok(h) => match h.join() {
                Ok(Ok(stats)) => total.merge(&stats),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("a worker thread panicked".into()),
            },
            Err(e) => errors.push(format!("cannot start a worker thread: {e}")),
        }
    }
    let wall = total.finished_at.map_or_else(
        || started.elapsed(),
        |t| t.saturating_duration_since(started),
    );
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let cpu = cpu_time(CpuOf::Process)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let run = report::Run {
        stats: &total,
        wall,
        cpu,
        threads,
        config,
    };
    if let Some(path) = &args.json {
        let text = format!("{:#}\n", run.json());
        if path.as_os_str() == "-" {
            print!("{text}");
        } else {
            std::fs::write(path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    if let Some(dir) = &args.hdr_dir {
        report::write_hgrm(dir, &total)
            .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
    }
    if !args.quiet {
        let text = run.text();
        // With the JSON on stdout, the summary goes to stderr.
        if args.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
            eprint!("{text}");
        } else {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    }
    if let Some(e) = errors.first() {
        return Err(e.clone());
    }
    Ok(if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn resolve(server: &str) -> Result<SocketAddr, String> {
    let mut addrs = server
        .to_socket_addrs()
        .map_err(|e| format!("--server {server}: {e} (want ADDR:PORT)"))?;
    addrs
        .next()
        .ok_or_else(|| format!("--server {server}: no address"))
}

fn load_files(args: &Args) -> Result<Vec<FileSpec>, String> {
    let expect = &args.expect_files;
    if !expect.is_empty() && expect.len() != 1 && expect.len() != args.files.len() {
        return Err(format!(
            "{} --expect-file for {} --file: give one per file, or one for all",
            expect.len(),
            args.files.len()
        ));
    }
    let mut loaded: Vec<(Arc<Source>, Arc<[u8]>)> = Vec::new();
    for path in expect {
        let file =
            File::open(path).map_err(|e| format!("--expect-file {}: {e}", path.display()))?;
        let bytes = uftpd::cache::filemap::read_bounded(&file, EXPECT_FILE_BYTES_MAX)
            .map_err(|e| format!("--expect-file {}: {e}", path.display()))?
            .ok_or_else(|| format!("--expect-file {}: larger than 4 GiB", path.display()))?;
        let bytes: Arc<[u8]> = bytes.into();
        loaded.push((Arc::new(Source::Owned(bytes.to_vec())), bytes));
    }
    if args.write && loaded.is_empty() {
        let size = args.size.unwrap_or(1 << 20);
        let bytes: Vec<u8> = pseudo_random(size);
        let bytes: Arc<[u8]> = bytes.into();
        loaded.push((Arc::new(Source::Owned(bytes.to_vec())), bytes));
    }
    Ok(args
        .files
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let pick = loaded.get(i).or(loaded.first());
            FileSpec {
                name: name.clone(),
                content: pick.map(|(s, _)| Arc::clone(s)),
                expected: pick.map(|(_, b)| Arc::clone(b)),
            }
        })
        .collect())
}

/// Incompressible bytes for uploads (xorshift; only the size matters).
fn pseudo_random(len: u64) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn progress_bar(transfers: Option<u64>) -> indicatif::ProgressBar {
    let bar = match transfers {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = match transfers {
        Some(_) => "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
        None => "{elapsed_precise} {spinner} {pos} transfers {msg}",
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(style) {
        bar.set_style(style);
    }
    bar
}
