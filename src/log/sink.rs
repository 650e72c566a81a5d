//! The logging thread: takes records off the queue, formats them, writes
//! them to stderr and, with `--syslog`, to the local syslog socket.
//!
//! Writes here may block (a full pipe) or fail (the reader went away):
//! that stalls or silences only this thread. The shards keep queueing with
//! `try_send`, and drop what does not fit.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Body, Logger, Record, Style, format};

/// Where the local syslog daemon listens.
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// The syslog facility: daemon (3).
const FACILITY_DAEMON: u8 = 3;

/// The running logging thread.
pub struct Sink {
    thread: Option<JoinHandle<()>>,
    flush: Sender<Sender<()>>,
}

/// Starts the logging thread on `rx`. `syslog`: also send each line to
/// [`SYSLOG_SOCKET`] (an error if it cannot be reached).
pub fn spawn(style: Style, rx: Receiver<Record>, syslog: bool) -> std::io::Result<Sink> {
    let syslog = if syslog {
        let sock = UnixDatagram::unbound()?;
        sock.connect(SYSLOG_SOCKET)?;
        // A stalled syslog daemon must not stall stderr logging either.
        sock.set_nonblocking(true)?;
        Some(sock)
    } else {
        None
    };
    let (flush_tx, flush_rx) = mpsc::channel::<Sender<()>>();
    let thread = std::thread::Builder::new()
        .name("uftpd-log".into())
        .spawn(move || {
            // Writing lines needs no privilege: without root, drop what
            // capabilities the thread was given (as root --user's switch
            // clears them; glibc aborts when a thread cannot follow it).
            if crate::sys::process::effective_uid() != 0 {
                let _ = crate::sys::process::drop_thread_capabilities(&[]);
            }
            run(style, rx, syslog, flush_rx)
        })?;
    Ok(Sink {
        thread: Some(thread),
        flush: flush_tx,
    })
}

impl Sink {
    /// Waits, at most `timeout`, until everything queued through `logger`
    /// before this call is written (at exit: the last lines are kept, and a
    /// stuck stderr cannot hold the process).
    pub fn flush(&self, logger: &Logger, timeout: Duration) {
        let (done_tx, done_rx) = mpsc::channel();
        if self.flush.send(done_tx).is_err() {
            return;
        }
        // A marker record wakes the thread and orders the flush after the
        // records already queued.
        let deadline = Instant::now() + timeout;
        while logger.send(marker()).is_err() {
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Detach: the thread ends when every sender is gone; a thread stuck
        // on a full pipe must not hold up the exit.
        drop(self.thread.take());
    }
}

fn marker() -> Record {
    Record {
        at: std::time::SystemTime::now(),
        level: super::Level::Error,
        shard: None,
        body: Body::Message(String::new()),
    }
}

fn run(
    style: Style,
    rx: Receiver<Record>,
    syslog: Option<UnixDatagram>,
    flush: Receiver<Sender<()>>,
) {
    let mut line = String::with_capacity(512);
    let mut datagram = String::with_capacity(512);
    let pid = std::process::id();
    while let Ok(record) = rx.recv() {
        // The flush marker is an empty message; nothing to write.
        if matches!(&record.body, Body::Message(m) if m.is_empty()) {
            while let Ok(done) = flush.try_recv() {
                let _ = done.send(());
            }
            continue;
        }
        line.clear();
        format::line(&record, &style, &mut line);
        // Ignore failure: a reader that went away must change nothing.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        if let Some(sock) = &syslog {
            // `<PRI>uftpd[PID]: MESSAGE` (RFC 3164 without the timestamp,
            // which the local daemon adds), always text.
            datagram.clear();
            use std::fmt::Write as _;
            let _ = write!(
                datagram,
                "<{}>uftpd[{pid}]: ",
                FACILITY_DAEMON * 8 + record.level as u8
            );
            format::body_text(&record, &mut datagram);
            let _ = sock.send(datagram.as_bytes());
        }
    }
}
