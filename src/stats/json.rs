//! `GET /stats.json` (and the eAS0 `json` command): the whole [`View`] as
//! one JSON object. The field names are a contract (docs/metrics.md);
//! counters keep the names they have in the code and the report.

use std::fmt::Write;

use super::Snapshot;
use super::view::{Rates, View};

fn rates(r: &Rates, out: &mut String) {
    let _ = write!(
        out,
        "{{\"sent_mbps\":{:.3},\"received_mbps\":{:.3},\"transfers_per_s\":{:.3},\"requests_per_s\":{:.3}}}",
        r.sent_mbps, r.received_mbps, r.transfers_per_s, r.requests_per_s
    );
}

fn counters(s: &Snapshot, out: &mut String) {
    out.push('{');
    for (i, (name, value, _)) in s.fields().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":{value}");
    }
    out.push('}');
}

pub fn render(view: &View) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "{{\"version\":\"{}\",\"uptime_s\":{:.3},\"shards_count\":{},\"rates\":{{\"last_second\":",
        view.version,
        view.uptime_s,
        view.shards.len()
    );
    rates(&view.rates, &mut out);
    out.push_str(",\"since_start\":");
    rates(&view.rates_since_start, &mut out);
    out.push_str("},\"total\":");
    counters(&view.total, &mut out);
    out.push_str(",\"shards\":[");
    for (i, shard) in view.shards.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"shard\":{},\"rates\":", shard.index);
        rates(&shard.rates, &mut out);
        out.push_str(",\"counters\":");
        counters(&shard.counters, &mut out);
        out.push('}');
    }
    let e = &view.endpoint;
    let _ = write!(
        out,
        "],\"cache\":{{\"mapped_bytes\":{}}},\"stats_endpoint\":{{\"connections_accepted\":{},\
         \"connections_refused\":{},\"connections_open\":{},\"eas0_logins\":{},\"eas0_refused\":{},\
         \"eas0_commands\":{},\"http_requests\":{},\"http_forbidden\":{}}},\"history_mbps\":[",
        view.cache_mapped_bytes,
        e.connections_accepted,
        e.connections_refused,
        e.connections_open,
        e.eas0_logins,
        e.eas0_refused,
        e.eas0_commands,
        e.http_requests,
        e.http_forbidden
    );
    for (i, v) in view.history_mbps.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{v:.3}");
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_counter() {
        let view = crate::stats::report::tests::sample_view();
        let text = super::render(&view);
        assert!(
            text.starts_with("{\"version\":\"0.1.0\",\"uptime_s\":12.000,"),
            "{text}"
        );
        assert!(text.contains("\"total\":{\"requests_read\":3,"), "{text}");
        assert!(text.contains("\"shards\":[{\"shard\":0,\"rates\":{\"sent_mbps\":600.000,"));
        assert!(text.contains("\"history_mbps\":[1.000,2.000]}"));
        // Balanced, and no stray control characters.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert!(!text.contains('\n'));
    }
}
