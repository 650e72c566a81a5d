//! `--watch`: a `top`-like screen from the server's JSON document (pure:
//! a document in, the screen's text out).

use std::fmt::Write;

use serde_json::Value;

/// Block characters from lowest to highest.
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `values` (at most `width` of the latest), scaled to
/// their maximum.
pub fn sparkline(values: &[f64], width: usize) -> String {
    let start = values.len().saturating_sub(width);
    let shown = values.get(start..).unwrap_or_default();
    let max = shown.iter().copied().fold(0.0f64, f64::max);
    shown
        .iter()
        .map(|&v| {
            if max <= 0.0 || !v.is_finite() {
                SPARKS[0]
            } else {
                let i = ((v / max) * (SPARKS.len() - 1) as f64).round() as usize;
                SPARKS[i.min(SPARKS.len() - 1)]
            }
        })
        .collect()
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        match at.get(key) {
            Some(next) => at = next,
            None => return 0.0,
        }
    }
    at.as_f64().unwrap_or(0.0)
}

fn int(v: &Value, path: &[&str]) -> u64 {
    num(v, path) as u64
}

fn requests(counters: &Value) -> u64 {
    ["requests_read", "requests_write", "requests_malformed"]
        .iter()
        .map(|k| int(counters, &[k]))
        .sum()
}

fn failed(counters: &Value) -> u64 {
    counters
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.starts_with("failed_"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// The screen for one refresh.
pub fn render(addr: &str, doc: &Value, width: usize) -> String {
    let mut out = String::new();
    let total = doc.get("total").cloned().unwrap_or(Value::Null);
    let last = ["rates", "last_second"];
    let sent = num(doc, &[last[0], last[1], "sent_mbps"]);
    let received = num(doc, &[last[0], last[1], "received_mbps"]);
    let _ = writeln!(
        out,
        "uftpd {} at {addr}  up {:.0} s  {} shards",
        doc.get("version").and_then(Value::as_str).unwrap_or("?"),
        num(doc, &["uptime_s"]),
        int(doc, &["shards_count"])
    );
    let _ = writeln!(
        out,
        "Rate: {:.1} Mbits/s (sent {sent:.1}, received {received:.1})  transfers {:.1}/s  requests {:.1}/s",
        sent + received,
        num(doc, &[last[0], last[1], "transfers_per_s"]),
        num(doc, &[last[0], last[1], "requests_per_s"]),
    );
    let _ = writeln!(
        out,
        "Sessions: {} open, {} unverified   Requests: {}  Completed: {}  Failed: {}  Refused not found: {}",
        int(&total, &["sessions_active"]),
        int(&total, &["sessions_unverified"]),
        requests(&total),
        int(&total, &["transfers_completed"]),
        failed(&total),
        int(&total, &["refused_not_found"]),
    );
    let history: Vec<f64> = doc
        .get("history_mbps")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let peak = history.iter().copied().fold(0.0f64, f64::max);
    let _ = writeln!(
        out,
        "Mbit/s {} peak {peak:.1}",
        sparkline(&history, width.saturating_sub(20).clamp(10, 120))
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "{:>5} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>9}",
        "SHARD",
        "REQUESTS",
        "ACCEPTED",
        "COMPLETED",
        "OPEN",
        "UNVERIFIED",
        "SENT Mb/s",
        "RECV Mb/s",
        "RESENT"
    );
    if let Some(shards) = doc.get("shards").and_then(Value::as_array) {
        for s in shards {
            let c = s.get("counters").cloned().unwrap_or(Value::Null);
            let _ = writeln!(
                out,
                "{:>5} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10.1} {:>10.1} {:>9}",
                int(s, &["shard"]),
                requests(&c),
                int(&c, &["sessions_accepted"]),
                int(&c, &["transfers_completed"]),
                int(&c, &["sessions_active"]),
                int(&c, &["sessions_unverified"]),
                num(s, &["rates", "sent_mbps"]),
                num(s, &["rates", "received_mbps"]),
                int(&c, &["blocks_resent"]),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_peak() {
        assert_eq!(sparkline(&[0.0, 5.0, 10.0], 10), "▁▅█");
        assert_eq!(sparkline(&[0.0, 0.0], 10), "▁▁");
        assert_eq!(sparkline(&[1.0, 2.0, 3.0, 4.0], 2), "▆█");
        assert_eq!(sparkline(&[], 5), "");
    }

    #[test]
    fn a_document_renders_its_shards() {
        let doc: Value = serde_json::from_str(
            r#"{"version":"0.1.0","uptime_s":5.0,"shards_count":1,
            "rates":{"last_second":{"sent_mbps":80.0,"received_mbps":0.0,"transfers_per_s":2.0,"requests_per_s":2.0}},
            "total":{"requests_read":4,"requests_write":0,"requests_malformed":0,"transfers_completed":3,"failed_timeout":1,"sessions_active":1},
            "shards":[{"shard":0,"rates":{"sent_mbps":80.0,"received_mbps":0.0},"counters":{"requests_read":4,"transfers_completed":3}}],
            "history_mbps":[0.0,80.0]}"#,
        )
        .unwrap();
        let screen = render("127.0.0.1:6969", &doc, 80);
        assert!(screen.contains("Rate: 80.0 Mbits/s"), "{screen}");
        assert!(screen.contains("Completed: 3  Failed: 1"), "{screen}");
        assert!(screen.contains("▁█"), "{screen}");
        let row = screen.lines().last().unwrap();
        assert!(row.trim_start().starts_with("0          4"), "{row}");
    }
}
