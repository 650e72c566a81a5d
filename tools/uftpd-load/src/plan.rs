//! What to run, shared by every worker thread: the files, the options, how
//! many transfers are left to start and until when.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uftpd::cache::Source;
use uftpd::proto::transfer::TimerConfig;
use uftpd::proto::wire::OptionValues;

/// One file the transfers name.
pub struct FileSpec {
    /// The name sent in the request. For uploads, `{n}` is replaced by the
    /// transfer's number (unique names).
    pub name: String,
    /// What the file must contain (RRQ), or what is uploaded (WRQ).
    pub content: Option<Arc<Source>>,
    /// The same bytes, for comparing DATA in place (RRQ with an expected file).
    pub expected: Option<Arc<[u8]>>,
}

pub struct Plan {
    pub server: SocketAddr,
    pub files: Vec<FileSpec>,
    pub write: bool,
    pub options: OptionValues,
    pub timer: TimerConfig,
    /// Concurrent transfers per worker thread.
    pub sessions_per_thread: usize,
    /// Transfers started per second by each thread (`None`: as fast as
    /// sessions free up).
    pub rate_per_thread: Option<f64>,
    /// Source addresses transfers bind to in turn (many clients from one
    /// machine: 127.0.0.0/8 on loopback); empty: the unspecified address.
    pub bind: Vec<std::net::IpAddr>,
}

/// What the workers share while running.
pub struct Shared {
    pub plan: Plan,
    /// Transfers not yet started; `None`: no limit but the deadline.
    remaining: Option<AtomicU64>,
    /// Numbers transfers (for `{n}` names and file rotation).
    next: AtomicU64,
    pub started_at: Instant,
    pub deadline: Option<Instant>,
    /// Set by Ctrl-C or the end of the deadline: start nothing more.
    pub stop: AtomicBool,
    /// For the progress line.
    pub progress_ok: AtomicU64,
    pub progress_failed: AtomicU64,
    pub progress_bytes: AtomicU64,
    /// The first hash seen per file (RRQ without an expected file): every
    /// later transfer of it must match.
    pub reference_hash: std::sync::Mutex<Vec<Option<(u64, u64)>>>,
}

impl Shared {
    pub fn new(plan: Plan, transfers: Option<u64>, duration: Option<Duration>) -> Shared {
        let started_at = Instant::now();
        let files = plan.files.len();
        Shared {
            plan,
            remaining: transfers.map(AtomicU64::new),
            next: AtomicU64::new(0),
            started_at,
            deadline: duration.map(|d| started_at + d),
            stop: AtomicBool::new(false),
            progress_ok: AtomicU64::new(0),
            progress_failed: AtomicU64::new(0),
            progress_bytes: AtomicU64::new(0),
            reference_hash: std::sync::Mutex::new(vec![None; files]),
        }
    }

    /// Claims the next transfer to start: its number, or `None` when there
    /// is nothing left to start.
    pub fn take(&self, now: Instant) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        if let Some(remaining) = &self.remaining {
            remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .ok()?;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether more transfers may still be claimed.
    pub fn exhausted(&self, now: Instant) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.deadline.is_some_and(|d| now >= d)
            || self
                .remaining
                .as_ref()
                .is_some_and(|r| r.load(Ordering::Relaxed) == 0)
    }

    /// The file transfer `n` names.
    pub fn file_of(&self, n: u64) -> usize {
        (n % self.plan.files.len().max(1) as u64) as usize
    }

    /// Checks a whole-file hash against the first seen for that file;
    /// true when they agree (or this is the first).
    pub fn check_hash(&self, file: usize, len: u64, hash: u64) -> bool {
        let Ok(mut seen) = self.reference_hash.lock() else {
            return true;
        };
        match seen.get_mut(file) {
            Some(slot @ None) => {
                *slot = Some((len, hash));
                true
            }
            Some(Some(reference)) => *reference == (len, hash),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(files: usize, transfers: Option<u64>) -> Shared {
        let plan = Plan {
            server: ([127, 0, 0, 1], 69).into(),
            files: (0..files)
                .map(|i| FileSpec {
                    name: format!("f{i}"),
                    content: None,
                    expected: None,
                })
                .collect(),
            write: false,
            options: OptionValues::default(),
            timer: TimerConfig {
                retransmit_ms: 1000,
                retries_max: 5,
                backoff: true,
                unverified_resends_max: None,
                unverified_quiet_waits: 0,
                unverified_retransmit_ms: 1000,
            },
            sessions_per_thread: 1,
            rate_per_thread: None,
            bind: Vec::new(),
        };
        Shared::new(plan, transfers, None)
    }

    #[test]
    fn every_copy_of_a_file_must_hash_like_the_first() {
        let s = shared(2, None);
        assert!(
            s.check_hash(0, 10, 0xabc),
            "the first copy sets the reference"
        );
        assert!(s.check_hash(0, 10, 0xabc));
        assert!(!s.check_hash(0, 10, 0xabd), "a different hash fails");
        assert!(!s.check_hash(0, 11, 0xabc), "a different length fails");
        assert!(s.check_hash(1, 99, 1), "each file has its own reference");
    }

    #[test]
    fn transfers_are_handed_out_once_each_and_files_in_turn() {
        let s = shared(3, Some(4));
        let now = Instant::now();
        let taken: Vec<u64> = std::iter::from_fn(|| s.take(now)).take(10).collect();
        assert_eq!(taken, vec![0, 1, 2, 3]);
        assert!(s.exhausted(now));
        assert_eq!((s.file_of(0), s.file_of(1), s.file_of(3)), (0, 1, 0));
    }
}
