//! The results: the JSON report (a contract, see README "uftpd-load"), a
//! text summary, and HdrHistogram percentile files for plotting.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::stats::Stats;

/// The generator counts as the bottleneck above this share of its
/// threads' CPU time over the wall time.
const GENERATOR_BOUND_SHARE: f64 = 0.85;

pub struct Run<'a> {
    pub stats: &'a Stats,
    pub wall: Duration,
    pub cpu: Duration,
    pub threads: usize,
    /// The configuration, echoed into the report.
    pub config: Value,
}

impl Run<'_> {
    pub fn wall_s(&self) -> f64 {
        self.wall.as_secs_f64().max(1e-9)
    }

    pub fn goodput_mbit_s(&self) -> f64 {
        self.stats.bytes as f64 * 8.0 / 1e6 / self.wall_s()
    }

    pub fn transfers_per_s(&self) -> f64 {
        self.stats.ok as f64 / self.wall_s()
    }

    /// Whether the generator, not the server, set the pace: its threads
    /// were busy nearly all the time.
    pub fn generator_bound(&self) -> bool {
        self.cpu.as_secs_f64() / self.wall_s() >= GENERATOR_BOUND_SHARE * self.threads as f64
    }

    pub fn json(&self) -> Value {
        let s = self.stats;
        let gib = s.bytes as f64 / f64::from(1u32 << 30);
        json!({
            "transfers_ok": s.ok,
            "transfers_failed": s.failed,
            "transfers_aborted": s.aborted,
            "bytes": s.bytes,
            "goodput_mbit_s": round(self.goodput_mbit_s(), 3),
            "transfers_per_s": round(self.transfers_per_s(), 3),
            "wall_s": round(self.wall_s(), 6),
            "cpu_s": round(self.cpu.as_secs_f64(), 6),
            "cpu_s_per_gib": if gib > 0.0 { json!(round(self.cpu.as_secs_f64() / gib, 6)) } else { Value::Null },
            "generator_bound": self.generator_bound(),
            "failures": s.failures,
            "latency_ms": percentiles(&s.latency),
            "first_block_ms": percentiles(&s.first_block),
            "window_rtt_ms": percentiles(&s.window_rtt),
            "retransmissions": s.retransmissions,
            "sends_deferred": s.sends_deferred,
            "buffers_exhausted": s.buffers_exhausted,
            "send_errors": s.send_errors,
            "config": self.config,
        })
    }

    pub fn text(&self) -> String {
        let s = self.stats;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "transfers: {} ok, {} failed, {} aborted in {:.3} s",
            s.ok,
            s.failed,
            s.aborted,
            self.wall_s()
        );
        let _ = writeln!(
            out,
            "goodput:   {:.1} Mbit/s, {:.1} transfers/s, {} bytes",
            self.goodput_mbit_s(),
            self.transfers_per_s(),
            s.bytes
        );
        for (name, h) in [
            ("latency", &s.latency),
            ("first block", &s.first_block),
            ("window rtt", &s.window_rtt),
        ] {
            let p = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name:<12} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                p(0.5),
                p(0.9),
                p(0.99),
                p(0.999),
                h.max() as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "retransmissions: {}; generator CPU {:.3} s ({} threads)",
            s.retransmissions,
            self.cpu.as_secs_f64(),
            self.threads
        );
        if !s.failures.is_empty() {
            let list: Vec<String> = s.failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "failures: {}", list.join(", "));
        }
        if self.generator_bound() {
            let _ = writeln!(
                out,
                "note: the generator was the bottleneck (its CPU {:.2} s over {:.2} s wall on {} threads): add --threads, or the figures understate the server",
                self.cpu.as_secs_f64(),
                self.wall_s(),
                self.threads
            );
        }
        out
    }
}

/// p50/p90/p99/p999/max in milliseconds; zeros when nothing was recorded.
fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    json!({
        "p50": ms(h.value_at_quantile(0.5)),
        "p90": ms(h.value_at_quantile(0.9)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "count": h.len(),
    })
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Writes `latency.hgrm`, `first_block.hgrm` and `window_rtt.hgrm` into
/// `dir`: HdrHistogram's percentile-distribution text (values in ms), the
/// format HdrHistogram's plotters read.
pub fn write_hgrm(dir: &Path, stats: &Stats) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, h) in [
        ("latency", &stats.latency),
        ("first_block", &stats.first_block),
        ("window_rtt", &stats.window_rtt),
    ] {
        std::fs::write(dir.join(format!("{name}.hgrm")), hgrm(h))?;
    }
    Ok(())
}

/// The percentile distribution, 5 ticks per half-distance, as
/// HdrHistogram's `outputPercentileDistribution` prints it.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        return out;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "")
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_contract_fields() {
        let mut stats = Stats {
            ok: 4,
            bytes: 4 << 20,
            ..Stats::default()
        };
        Stats::record(&mut stats.latency, Duration::from_millis(3));
        stats.fail("timeout".into());
        let run = Run {
            stats: &stats,
            wall: Duration::from_secs(2),
            cpu: Duration::from_millis(100),
            threads: 1,
            config: json!({}),
        };
        let v = run.json();
        for key in [
            "transfers_ok",
            "transfers_failed",
            "transfers_aborted",
            "bytes",
            "goodput_mbit_s",
            "transfers_per_s",
            "cpu_s",
            "failures",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        for key in ["latency_ms", "first_block_ms", "window_rtt_ms"] {
            for p in ["p50", "p90", "p99", "p999", "max"] {
                assert!(v[key][p].is_number(), "{key}.{p}");
            }
        }
        assert_eq!(v["failures"]["timeout"], 1);
        assert_eq!(v["transfers_per_s"], 2.0);
        assert!(!run.generator_bound());
        let table = hgrm(&stats.latency);
        assert!(table.contains("Total count    =            1"), "{table}");
    }
}
