//! The eAS0 report: text in the shape of the eFaceServer capture, its
//! first two lines exactly as there. What each word counts for uftpd is in
//! docs/eas0.md ("The report"); scripts read these lines, so their shape
//! is a contract.

use std::fmt::Write;

use crate::proto::transfer::Failure;

use super::view::View;
use super::{Kind, REFUSAL_CAUSES, Snapshot};

/// The first line's counters for one snapshot (a shard or the total).
fn srvr_fields(s: &Snapshot, out: &mut String) {
    let _ = write!(
        out,
        "CommandCnt: {} ReplyCnt: {} RepliesPosted: {} ReplyPolls: {} Accepts: {} Connections: {}",
        s.requests_total(),
        s.transfers_completed,
        s.packets_sent,
        s.packets_received,
        s.sessions_accepted,
        s.sessions_active
    );
}

/// The whole report, lines ending in `\n`.
pub fn render(view: &View) -> String {
    let mut out = String::with_capacity(2048);
    let t = &view.total;
    out.push_str("eAss---Srvr: ");
    srvr_fields(t, &mut out);
    let _ = writeln!(out, "\nRate: {:.1} Mbits/s", view.rates.total_mbps());
    for shard in &view.shards {
        let _ = write!(out, "Shard {}: ", shard.index);
        srvr_fields(&shard.counters, &mut out);
        let _ = writeln!(out, " Rate: {:.1} Mbits/s", shard.rates.total_mbps());
    }
    let _ = writeln!(
        out,
        "Uptime: {:.0} s Version: {} Shards: {}",
        view.uptime_s,
        view.version,
        view.shards.len()
    );
    for (label, r) in [
        ("last second", &view.rates),
        ("since start", &view.rates_since_start),
    ] {
        let _ = writeln!(
            out,
            "Rates ({label}): sent {:.1} Mbits/s received {:.1} Mbits/s transfers {:.1}/s requests {:.1}/s",
            r.sent_mbps, r.received_mbps, r.transfers_per_s, r.requests_per_s
        );
    }
    let _ = writeln!(
        out,
        "Requests: rrq {} wrq {} malformed {} duplicate {} stale {} draining {} rate_limited {}",
        t.requests_read,
        t.requests_write,
        t.requests_malformed,
        t.requests_duplicate,
        t.requests_stale,
        t.requests_ignored,
        t.requests_rate_limited
    );
    out.push_str("Refused:");
    for cause in REFUSAL_CAUSES {
        let _ = write!(out, " {} {}", cause.label(), t.refused(cause));
    }
    let _ = writeln!(
        out,
        "\nTransfers: completed {} unconfirmed {} failed {}",
        t.transfers_completed,
        t.transfers_unconfirmed,
        t.failed_total()
    );
    out.push_str("Failed:");
    for f in Failure::ALL {
        let _ = write!(out, " {} {}", f.label(), t.failed(f));
    }
    let _ = writeln!(
        out,
        "\nSessions: active {} unverified {}",
        t.sessions_active, t.sessions_unverified
    );
    let _ = writeln!(
        out,
        "Cache: hits {} misses {} mapped_bytes {}",
        t.cache_hits, t.cache_misses, view.cache_mapped_bytes
    );
    // Everything else, by its counter name (the names of /stats.json).
    out.push_str("Counters:");
    for (name, value, kind) in t.fields() {
        if kind == Kind::Counter {
            let _ = write!(out, " {name}={value}");
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::view::{Rates, ShardView};

    pub(crate) fn sample_view() -> View {
        let mut a = Snapshot {
            requests_read: 3,
            requests_malformed: 1,
            transfers_completed: 2,
            packets_sent: 40,
            packets_received: 38,
            sessions_accepted: 3,
            sessions_active: 1,
            ..Snapshot::default()
        };
        a.refused_not_found = 1;
        let b = Snapshot {
            requests_write: 1,
            sessions_accepted: 1,
            transfers_completed: 1,
            ..Snapshot::default()
        };
        let mut total = a;
        total.add(&b);
        View {
            version: "0.1.0",
            uptime_s: 12.0,
            shards: vec![
                ShardView {
                    index: 0,
                    counters: a,
                    rates: Rates {
                        sent_mbps: 600.0,
                        ..Rates::default()
                    },
                },
                ShardView {
                    index: 1,
                    counters: b,
                    rates: Rates {
                        received_mbps: 66.8,
                        ..Rates::default()
                    },
                },
            ],
            total,
            rates: Rates {
                sent_mbps: 600.0,
                received_mbps: 66.8,
                transfers_per_s: 3.0,
                requests_per_s: 5.0,
            },
            rates_since_start: Rates::default(),
            history_mbps: vec![1.0, 2.0],
            cache_mapped_bytes: 4096,
            endpoint: Default::default(),
        }
    }

    #[test]
    fn the_first_lines_have_the_captures_shape() {
        let report = render(&sample_view());
        let mut lines = report.lines();
        assert_eq!(
            lines.next(),
            Some(
                "eAss---Srvr: CommandCnt: 5 ReplyCnt: 3 RepliesPosted: 40 ReplyPolls: 38 \
                 Accepts: 4 Connections: 1"
            )
        );
        assert_eq!(lines.next(), Some("Rate: 666.8 Mbits/s"));
        assert_eq!(
            lines.next(),
            Some(
                "Shard 0: CommandCnt: 4 ReplyCnt: 2 RepliesPosted: 40 ReplyPolls: 38 \
                 Accepts: 3 Connections: 1 Rate: 600.0 Mbits/s"
            )
        );
        assert!(
            report.contains("\nRefused: not_found 1 access 0"),
            "{report}"
        );
        assert!(report.contains(" requests_read=3 "), "{report}");
        assert!(report.ends_with('\n'));
    }
}
