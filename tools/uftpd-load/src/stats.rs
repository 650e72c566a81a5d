//! What one worker measured, mergeable across workers.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Histograms hold microseconds, from 1 µs to an hour, 3 significant digits.
const HIGHEST_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // Fixed, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    /// Cut off by the end of --duration (or Ctrl-C), not failed.
    pub aborted: u64,
    /// File bytes of the transfers that completed.
    pub bytes: u64,
    pub retransmissions: u64,
    pub failures: BTreeMap<String, u64>,
    /// Whole transfer: request sent to last block received (RRQ) or final
    /// ACK received (WRQ).
    pub latency: Histogram<u64>,
    /// Request sent to the first DATA (RRQ) or first ACK (WRQ).
    pub first_block: Histogram<u64>,
    /// An ACK (RRQ) or a window (WRQ) sent to the server's answer.
    pub window_rtt: Histogram<u64>,
    /// Sends that waited for a slot, and receives that found no buffer:
    /// signs the generator itself was short of something.
    pub sends_deferred: u64,
    pub buffers_exhausted: u64,
    /// Sends the kernel failed (loss, as far as the protocol goes).
    pub send_errors: u64,
    /// When the worker's last transfer ended (the run's wall time ends at
    /// the latest of these, not when the main thread noticed).
    pub finished_at: Option<std::time::Instant>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            ok: 0,
            failed: 0,
            aborted: 0,
            bytes: 0,
            retransmissions: 0,
            failures: BTreeMap::new(),
            latency: histogram(),
            first_block: histogram(),
            window_rtt: histogram(),
            sends_deferred: 0,
            buffers_exhausted: 0,
            send_errors: 0,
            finished_at: None,
        }
    }
}

pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, HIGHEST_US)
}

impl Stats {
    pub fn record(h: &mut Histogram<u64>, d: Duration) {
        // Clamped into range: recording cannot fail.
        let _ = h.record(micros(d));
    }

    pub fn fail(&mut self, reason: String) {
        self.failed += 1;
        *self.failures.entry(reason).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.aborted += other.aborted;
        self.bytes += other.bytes;
        self.retransmissions += other.retransmissions;
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_insert(0) += v;
        }
        // Same bounds everywhere: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.first_block.add(&other.first_block);
        let _ = self.window_rtt.add(&other.window_rtt);
        self.sends_deferred += other.sends_deferred;
        self.buffers_exhausted += other.buffers_exhausted;
        self.send_errors += other.send_errors;
        self.finished_at = self.finished_at.max(other.finished_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_everything() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.ok = 2;
        Stats::record(&mut a.latency, Duration::from_millis(5));
        b.fail("timeout".into());
        b.fail("timeout".into());
        Stats::record(&mut b.latency, Duration::from_millis(50));
        a.merge(&b);
        assert_eq!((a.ok, a.failed), (2, 2));
        assert_eq!(a.failures.get("timeout"), Some(&2));
        assert_eq!(a.latency.len(), 2);
        assert!(a.latency.max() >= 49_000);
        Stats::record(&mut a.latency, Duration::from_secs(10_000));
        assert_eq!(
            a.latency.len(),
            3,
            "out of range values are clamped, not lost"
        );
    }
}
