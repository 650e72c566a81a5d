//! One consistent picture of the server for every output (the eAS0
//! report, /metrics, /stats.json, the status page): the shards' counters
//! summed, and rates over the last second and since start.
//!
//! Rates come from samples a sampler thread takes once a second
//! ([`History::tick`]); readers only lock the history for a copy. The
//! shards never see any of it: they write their counters and nothing else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ShardCounters, Snapshot};

/// Seconds of history kept (the status page's and `uftpd-stat --watch`'s
/// sparkline).
pub const HISTORY_SECONDS: usize = 120;

/// Rates over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// File bytes in DATA sent, in megabits per second.
    pub sent_mbps: f64,
    /// File bytes in DATA received (uploads).
    pub received_mbps: f64,
    /// Transfers completed per second.
    pub transfers_per_s: f64,
    /// Requests (RRQ, WRQ, malformed) per second.
    pub requests_per_s: f64,
}

impl Rates {
    /// Between two snapshots `seconds` apart.
    pub fn between(before: &Snapshot, after: &Snapshot, seconds: f64) -> Rates {
        if seconds <= 0.0 {
            return Rates::default();
        }
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        Rates {
            sent_mbps: per_s(before.payload_bytes_sent, after.payload_bytes_sent) * 8e-6,
            received_mbps: per_s(before.payload_bytes_received, after.payload_bytes_received)
                * 8e-6,
            transfers_per_s: per_s(before.transfers_completed, after.transfers_completed),
            requests_per_s: per_s(before.requests_total(), after.requests_total()),
        }
    }

    /// Both directions: the report's `Rate:` line.
    pub fn total_mbps(&self) -> f64 {
        self.sent_mbps + self.received_mbps
    }
}

/// The stats endpoint's own counters (connections, not TFTP).
#[derive(Debug, Default)]
pub struct EndpointCounters {
    pub connections_accepted: AtomicU64,
    /// Closed at once because --stats-connections-max were open.
    pub connections_refused: AtomicU64,
    pub connections_open: AtomicU64,
    pub eas0_logins: AtomicU64,
    /// Logins refused: a wrong secret, an echoed nonce, a bad frame.
    pub eas0_refused: AtomicU64,
    pub eas0_commands: AtomicU64,
    pub http_requests: AtomicU64,
    /// HTTP clients outside --stats-allow.
    pub http_forbidden: AtomicU64,
}

/// A copy of [`EndpointCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_open: u64,
    pub eas0_logins: u64,
    pub eas0_refused: u64,
    pub eas0_commands: u64,
    pub http_requests: u64,
    pub http_forbidden: u64,
}

impl EndpointCounters {
    pub fn snapshot(&self) -> EndpointSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EndpointSnapshot {
            connections_accepted: g(&self.connections_accepted),
            connections_refused: g(&self.connections_refused),
            connections_open: g(&self.connections_open),
            eas0_logins: g(&self.eas0_logins),
            eas0_refused: g(&self.eas0_refused),
            eas0_commands: g(&self.eas0_commands),
            http_requests: g(&self.http_requests),
            http_forbidden: g(&self.http_forbidden),
        }
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One shard in a [`View`].
#[derive(Clone, Debug, PartialEq)]
pub struct ShardView {
    pub index: usize,
    pub counters: Snapshot,
    pub rates: Rates,
}

/// Everything an output shows, taken at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub version: &'static str,
    pub uptime_s: f64,
    pub shards: Vec<ShardView>,
    pub total: Snapshot,
    /// Over the last completed second.
    pub rates: Rates,
    pub rates_since_start: Rates,
    /// Payload Mbit/s (both ways) per second, oldest first.
    pub history_mbps: Vec<f64>,
    pub cache_mapped_bytes: u64,
    pub endpoint: EndpointSnapshot,
}

struct Sample {
    at: Instant,
    per_shard: Vec<Snapshot>,
}

/// The samples rates are computed from, and where the counters live.
pub struct History {
    started: Instant,
    shards: Vec<Arc<ShardCounters>>,
    samples: Mutex<VecDeque<(Instant, Snapshot)>>,
    /// The two latest per-shard samples (for per-shard rates).
    latest: Mutex<(Option<Sample>, Option<Sample>)>,
    cache_mapped_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
    pub endpoint: EndpointCounters,
}

impl History {
    pub fn new(
        shards: Vec<Arc<ShardCounters>>,
        cache_mapped_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
        started: Instant,
    ) -> History {
        History {
            started,
            shards,
            samples: Mutex::new(VecDeque::with_capacity(HISTORY_SECONDS + 1)),
            latest: Mutex::new((None, None)),
            cache_mapped_bytes,
            endpoint: EndpointCounters::default(),
        }
    }

    fn read_shards(&self) -> Vec<Snapshot> {
        self.shards.iter().map(|c| c.snapshot()).collect()
    }

    /// Takes a sample: the sampler thread calls this once a second.
    pub fn tick(&self, now: Instant) {
        let per_shard = self.read_shards();
        let total = sum(&per_shard);
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() > HISTORY_SECONDS {
                samples.pop_front();
            }
            samples.push_back((now, total));
        }
        if let Ok(mut latest) = self.latest.lock() {
            latest.0 = latest.1.take();
            latest.1 = Some(Sample { at: now, per_shard });
        }
    }

    /// The picture now: counters read now, rates from the samples.
    pub fn view(&self, now: Instant) -> View {
        let per_shard = self.read_shards();
        let total = sum(&per_shard);
        let uptime_s = now.duration_since(self.started).as_secs_f64();
        let (rates, history_mbps) = match self.samples.lock() {
            Ok(samples) => {
                let rates = match (samples.len().checked_sub(2), samples.back()) {
                    (Some(i), Some(last)) => samples
                        .get(i)
                        .map(|prev| {
                            Rates::between(&prev.1, &last.1, secs(last.0.duration_since(prev.0)))
                        })
                        .unwrap_or_default(),
                    _ => Rates::default(),
                };
                let history = samples
                    .iter()
                    .zip(samples.iter().skip(1))
                    .map(|(a, b)| {
                        Rates::between(&a.1, &b.1, secs(b.0.duration_since(a.0))).total_mbps()
                    })
                    .collect();
                (rates, history)
            }
            Err(_) => (Rates::default(), Vec::new()),
        };
        let shard_rates: Vec<Rates> = match self.latest.lock() {
            Ok(latest) => match &*latest {
                (Some(a), Some(b)) => a
                    .per_shard
                    .iter()
                    .zip(&b.per_shard)
                    .map(|(x, y)| Rates::between(x, y, secs(b.at.duration_since(a.at))))
                    .collect(),
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        View {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s,
            shards: per_shard
                .into_iter()
                .enumerate()
                .map(|(index, counters)| ShardView {
                    index,
                    counters,
                    rates: shard_rates.get(index).copied().unwrap_or_default(),
                })
                .collect(),
            rates,
            rates_since_start: Rates::between(&Snapshot::default(), &total, uptime_s),
            total,
            history_mbps,
            cache_mapped_bytes: (self.cache_mapped_bytes)(),
            endpoint: self.endpoint.snapshot(),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn sum(per_shard: &[Snapshot]) -> Snapshot {
    let mut total = Snapshot::default();
    for s in per_shard {
        total.add(s);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_last_two_samples() {
        let shards = vec![
            Arc::new(ShardCounters::default()),
            Arc::new(ShardCounters::default()),
        ];
        let t0 = Instant::now();
        let h = History::new(shards.clone(), Box::new(|| 7), t0);
        h.tick(t0);
        shards[0].payload_bytes_sent.add(1_000_000);
        shards[1].payload_bytes_sent.add(250_000);
        shards[1].transfers_completed.add(3);
        h.tick(t0 + Duration::from_secs(1));
        let v = h.view(t0 + Duration::from_millis(1500));
        assert!((v.rates.sent_mbps - 10.0).abs() < 1e-9, "{:?}", v.rates);
        assert!((v.rates.transfers_per_s - 3.0).abs() < 1e-9);
        assert!((v.shards[0].rates.sent_mbps - 8.0).abs() < 1e-9);
        assert!((v.shards[1].rates.sent_mbps - 2.0).abs() < 1e-9);
        assert_eq!(v.total.transfers_completed, 3);
        assert_eq!(v.history_mbps.len(), 1);
        assert_eq!(v.cache_mapped_bytes, 7);
        assert!((v.uptime_s - 1.5).abs() < 1e-9);
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let h = History::new(vec![Arc::new(ShardCounters::default())], Box::new(|| 0), t0);
        for i in 0..(HISTORY_SECONDS as u64 * 3) {
            h.tick(t0 + Duration::from_secs(i));
        }
        let v = h.view(t0 + Duration::from_secs(1000));
        assert_eq!(v.history_mbps.len(), HISTORY_SECONDS);
    }
}
