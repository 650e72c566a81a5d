//! Logs that can never take the server down, nor slow it.
//!
//! Shards describe what happened as a [`Record`] of plain data and hand it
//! to the logging thread through a bounded queue with `try_send`: when the
//! queue is full the record is dropped and counted
//! (`log_events_dropped`), never waited for. The logging thread formats
//! ([`mod@format`]) and writes ([`sink`]); a reader that stops reading, or goes
//! away (`uftpd | head`), stalls or fails only that thread.
//!
//! Levels are syslog severities. The default level (info) logs every
//! finished transfer and every refusal; `-v` adds requests as they arrive
//! and UEFI size probes (debug); `-q` keeps warnings and errors only.

pub mod format;
pub mod sink;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use crate::proto::refusal::Refusal;
use crate::proto::transfer::{Failure, Outcome};
use crate::proto::wire::{Mode, RequestKind};

/// Syslog severities (RFC 5424), most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// How lines look on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line of text per event (documented in README "Logs").
    Text,
    /// One JSON object per line (fields documented in README "Logs").
    Json,
}

/// What the logging thread is configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub format: Format,
    /// Records above this level are not even built.
    pub level: Level,
    /// Text lines start with a UTC timestamp; off under journald, which
    /// stamps lines itself.
    pub timestamps: bool,
    /// Text lines start with `<N>` (the severity) for journald, instead of
    /// a level word.
    pub journald: bool,
}

impl Style {
    /// Text on a terminal or file; the journald form when stderr is the
    /// journal (systemd sets `JOURNAL_STREAM` for its services).
    pub fn detect(format: Format, level: Level) -> Style {
        let journald = std::env::var_os("JOURNAL_STREAM").is_some();
        Style {
            format,
            level,
            timestamps: !journald,
            journald,
        }
    }
}

/// One thing to log, with when it happened and which shard saw it.
#[derive(Debug)]
pub struct Record {
    pub at: SystemTime,
    pub level: Level,
    /// The shard (`None`: the main thread).
    pub shard: Option<u16>,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// A line from the main thread (start-up, signals, warnings).
    Message(String),
    Request(RequestLog),
    Refused(RefusedLog),
    Transfer(TransferLog),
}

/// A request as it arrived (debug).
#[derive(Debug)]
pub struct RequestLog {
    pub peer: SocketAddr,
    pub kind: RequestKind,
    pub filename: Box<[u8]>,
    pub mode: Mode,
    /// The raw `name\0value\0` option bytes.
    pub options: Box<[u8]>,
}

/// A request answered with an ERROR from the service port.
#[derive(Debug)]
pub struct RefusedLog {
    pub peer: SocketAddr,
    /// `None`: not a well-formed request.
    pub kind: Option<RequestKind>,
    pub filename: Box<[u8]>,
    pub refusal: Refusal,
}

/// What an upload did to its name once complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Created,
    Replaced,
}

/// A finished transfer, successful or not.
#[derive(Debug)]
pub struct TransferLog {
    pub peer: SocketAddr,
    pub kind: RequestKind,
    pub filename: Box<[u8]>,
    pub mode: Mode,
    /// File bytes delivered: acknowledged (RRQ) or received in order (WRQ).
    pub bytes: u64,
    /// The file's size when known (RRQ; WRQ with tsize).
    pub size_bytes: Option<u64>,
    /// From the request to the final ACK (or to the failure).
    pub duration_us: u64,
    pub blksize: u16,
    pub windowsize: u16,
    pub retransmissions: u64,
    pub outcome: Outcome,
    /// Uploads that completed: created or replaced their file.
    pub published: Option<Published>,
}

impl TransferLog {
    /// How loud a finished transfer is: failures that need an operator
    /// (disk, a file changed under us) above the everyday ones; a UEFI
    /// size probe is expected and only shows with -v.
    pub fn level(&self) -> Level {
        match self.outcome.failure() {
            None => Level::Info,
            Some(Failure::UefiProbe) => Level::Debug,
            Some(Failure::Disk | Failure::Internal) => Level::Error,
            Some(Failure::Timeout | Failure::FileChanged | Failure::SizeMismatch) => Level::Warn,
            Some(_) => Level::Info,
        }
    }
}

/// The queue between the shards (and main) and the logging thread.
#[derive(Clone, Debug)]
pub struct Logger {
    tx: SyncSender<Record>,
    /// Records up to this severity number are sent (0: none).
    max_severity: u8,
}

/// Why a record was not queued; either way it is dropped, never waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    Full,
    Closed,
}

impl Logger {
    /// A logger and the receiving end for [`sink::spawn`]: at most
    /// `queue_records` records wait at once.
    pub fn channel(level: Level, queue_records: usize) -> (Logger, Receiver<Record>) {
        let (tx, rx) = sync_channel(queue_records.max(1));
        (
            Logger {
                tx,
                max_severity: level as u8,
            },
            rx,
        )
    }

    /// A logger that logs nothing (tests, embedding).
    pub fn off() -> Logger {
        let (tx, _) = sync_channel(1);
        Logger {
            tx,
            max_severity: 0,
        }
    }

    /// Whether records at `level` are wanted (build nothing otherwise).
    #[inline]
    pub fn enabled(&self, level: Level) -> bool {
        level as u8 <= self.max_severity
    }

    /// Queues a record without ever blocking.
    pub fn send(&self, record: Record) -> Result<(), Dropped> {
        if !self.enabled(record.level) {
            return Ok(());
        }
        self.tx.try_send(record).map_err(|e| match e {
            TrySendError::Full(_) => Dropped::Full,
            TrySendError::Disconnected(_) => Dropped::Closed,
        })
    }
}

/// The process's logger for [`line`], once the logging thread runs.
static GLOBAL: OnceLock<Logger> = OnceLock::new();

/// Makes `logger` the destination of the `log_*!` macros from now on.
pub fn set_global(logger: Logger) {
    let _ = GLOBAL.set(logger);
}

/// One message from outside the shards: queued for the logging thread
/// when it runs; before that (start-up errors) written at once as
/// `uftpd: MESSAGE`, a failed write ignored (never a panic).
pub fn line(level: Level, args: std::fmt::Arguments<'_>) {
    match GLOBAL.get() {
        Some(logger) => {
            if logger.enabled(level) {
                let _ = logger.send(Record {
                    at: SystemTime::now(),
                    level,
                    shard: None,
                    body: Body::Message(args.to_string()),
                });
            }
        }
        None => {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let _ = err.write_fmt(format_args!("uftpd: {args}\n"));
        }
    }
}

#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Error, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Warn, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Info, format_args!($($arg)*)) };
}
