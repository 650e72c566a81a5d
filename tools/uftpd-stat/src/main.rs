//! `uftpd-stat [--secret-file F] [--watch] [--json] ADDR:PORT`: logs in to
//! a running uftpd's eAS0 stats endpoint and prints its report (README
//! "Stats"; the protocol is docs/eas0.md).
//!
//! Exit status: 0 when the report was read, 1 when the server could not be
//! reached or refused us (one line on stderr says why), 2 for a bad
//! command line.

mod client;
mod watch;

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use client::{Connection, Failure};
use uftpd::stats::eas0::ReplyStatus;

#[derive(Debug, Parser)]
#[command(
    name = "uftpd-stat",
    version,
    about = "Shows a running uftpd's counters and rates (its eAS0 stats endpoint)"
)]
struct Args {
    /// The stats endpoint, as given to uftpd --stats.
    #[arg(default_value = "127.0.0.1:6969", value_name = "ADDR:PORT")]
    addr: String,

    /// The shared secret (uftpd's --stats-secret-file): its first line.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// The user name sent in the LOGIN (shown in the server's logs).
    #[arg(long, default_value_t = default_user())]
    user: String,

    /// Refresh every --interval-ms like `top`: per-shard rows, rates and a
    /// sparkline of Mbit/s. Ends with Ctrl-C, or after --count screens.
    #[arg(long, conflicts_with = "json")]
    watch: bool,

    /// Print the server's JSON document (the same as GET /stats.json) on
    /// one line, and nothing else.
    #[arg(long)]
    json: bool,

    /// The command to send instead of `report` (`help` lists them).
    #[arg(long, default_value = "report", conflicts_with_all = ["json", "watch"])]
    command: String,

    /// Do not print the REQ:/RPL: lines.
    #[arg(short, long)]
    quiet: bool,

    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    interval_ms: u64,

    /// With --watch: stop after this many screens.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

fn default_user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "uftpd-stat".to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("uftpd-stat: {message}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    addr.to_socket_addrs()
        .map_err(|e| Failure(format!("{addr}: {e}")))?
        .next()
        .ok_or_else(|| Failure(format!("{addr}: no address")))
}

fn run(args: &Args) -> Result<(), Failure> {
    let addr = resolve(&args.addr)?;
    let secret = match &args.secret_file {
        Some(path) => Some(uftpd::stats::server::read_secret(path).map_err(Failure)?),
        None => None,
    };
    let trace = !args.quiet && !args.json && !args.watch;
    let mut conn = Connection::open(addr, &args.user, secret, trace)?;
    if args.watch {
        return watch(&mut conn, args, addr);
    }
    let word = if args.json {
        "json"
    } else {
        args.command.as_str()
    };
    let reply = conn.command(word)?;
    conn.close();
    if reply.status != ReplyStatus::OK {
        return Err(Failure(format!(
            "the server answered {word:?} with {}: {}",
            reply.status,
            reply.text.trim_end()
        )));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(reply.text.as_bytes());
    if !reply.text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    Ok(())
}

fn watch(conn: &mut Connection, args: &Args, addr: SocketAddr) -> Result<(), Failure> {
    let tty = std::io::stdout().is_terminal();
    let interval = Duration::from_millis(args.interval_ms);
    let mut shown = 0u64;
    let mut next = Instant::now();
    loop {
        let reply = conn.command("json")?;
        let doc: serde_json::Value = serde_json::from_str(&reply.text).map_err(|e| {
            Failure(format!(
                "{addr} sent a JSON document that does not parse: {e}"
            ))
        })?;
        let screen = watch::render(&addr.to_string(), &doc, 100);
        let mut stdout = std::io::stdout().lock();
        if tty {
            // Home and clear, like top.
            let _ = stdout.write_all(b"\x1b[H\x1b[2J");
        } else if shown > 0 {
            let _ = stdout.write_all(b"\n");
        }
        let _ = stdout.write_all(screen.as_bytes());
        let _ = stdout.flush();
        shown += 1;
        if args.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
