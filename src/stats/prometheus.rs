//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//! Every shard counter is exported, once, under a family named here, with
//! a `shard` label; the names and labels are a contract (docs/metrics.md).

use std::fmt::Write;

use super::Snapshot;
use super::view::View;

/// One metric family and the counter fields that make it up.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// The label the fields differ by, if more than one.
    label: Option<&'static str>,
    /// (field of [`Snapshot`], label value).
    series: &'static [(&'static str, &'static str)],
}

const fn one(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    field: &'static [(&'static str, &'static str)],
) -> Family {
    Family {
        name,
        kind,
        help,
        label: None,
        series: field,
    }
}

const fn by(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    label: &'static str,
    series: &'static [(&'static str, &'static str)],
) -> Family {
    Family {
        name,
        kind,
        help,
        label: Some(label),
        series,
    }
}

const C: &str = "counter";
const G: &str = "gauge";

const FAMILIES: &[Family] = &[
    by(
        "uftpd_requests_total",
        C,
        "Datagrams to the service port: well-formed RRQs and WRQs (repeats included) and malformed ones.",
        "kind",
        &[
            ("requests_read", "rrq"),
            ("requests_write", "wrq"),
            ("requests_malformed", "malformed"),
        ],
    ),
    one(
        "uftpd_service_packets_ignored_total",
        C,
        "TFTP packets to the service port that are not requests (tftp-hpa's client ACKs an ERROR), ignored.",
        &[("service_packets_ignored", "")],
    ),
    by(
        "uftpd_requests_repeated_total",
        C,
        "Repeats of a request with a session already (also counted in uftpd_requests_total): answered while the peer had not answered (duplicate), ignored once under way (stale).",
        "kind",
        &[
            ("requests_duplicate", "duplicate"),
            ("requests_stale", "stale"),
        ],
    ),
    by(
        "uftpd_requests_ignored_total",
        C,
        "Requests not answered: during shutdown, or over --client-rate.",
        "reason",
        &[
            ("requests_ignored", "draining"),
            ("requests_rate_limited", "rate_limited"),
        ],
    ),
    one(
        "uftpd_sessions_accepted_total",
        C,
        "Requests that started a transfer.",
        &[("sessions_accepted", "")],
    ),
    by(
        "uftpd_requests_refused_total",
        C,
        "Requests answered with an ERROR, by reason.",
        "reason",
        &[
            ("refused_not_found", "not_found"),
            ("refused_access", "access"),
            ("refused_limit", "limit"),
            ("refused_busy", "busy"),
            ("refused_malformed", "malformed"),
            ("refused_option", "option"),
            ("refused_disk", "disk"),
            ("refused_internal", "internal"),
        ],
    ),
    one(
        "uftpd_transfers_completed_total",
        C,
        "Transfers whose every block was delivered.",
        &[("transfers_completed", "")],
    ),
    one(
        "uftpd_transfers_unconfirmed_total",
        C,
        "Completed transfers whose final ACK never came (also counted as completed).",
        &[("transfers_unconfirmed", "")],
    ),
    by(
        "uftpd_transfers_failed_total",
        C,
        "Transfers that did not complete, by reason (uefi_probe: a UEFI tsize probe, expected).",
        "reason",
        &[
            ("failed_timeout", "timeout"),
            ("failed_no_response", "no_response"),
            ("failed_client_error", "client_error"),
            ("failed_uefi_probe", "uefi_probe"),
            ("failed_unreachable", "unreachable"),
            ("failed_disk", "disk"),
            ("failed_file_changed", "file_changed"),
            ("failed_size_mismatch", "size_mismatch"),
            ("failed_shutdown", "shutdown"),
            ("failed_protocol", "protocol"),
            ("failed_replaced", "replaced"),
            ("failed_evicted", "evicted"),
            ("failed_internal", "internal"),
        ],
    ),
    one(
        "uftpd_unverified_sends_withheld_total",
        C,
        "Sends to peers that had not answered, withheld by the unverified-bytes budgets.",
        &[("unverified_sends_withheld", "")],
    ),
    one(
        "uftpd_packets_received_total",
        C,
        "UDP datagrams received.",
        &[("packets_received", "")],
    ),
    one(
        "uftpd_packets_sent_total",
        C,
        "UDP datagrams sent.",
        &[("packets_sent", "")],
    ),
    one(
        "uftpd_bytes_received_total",
        C,
        "UDP payload bytes received (TFTP headers included).",
        &[("bytes_received", "")],
    ),
    one(
        "uftpd_bytes_sent_total",
        C,
        "UDP payload bytes sent (TFTP headers included).",
        &[("bytes_sent", "")],
    ),
    one(
        "uftpd_payload_bytes_sent_total",
        C,
        "File bytes sent in DATA, resends included.",
        &[("payload_bytes_sent", "")],
    ),
    one(
        "uftpd_payload_bytes_received_total",
        C,
        "File bytes received in DATA, in order.",
        &[("payload_bytes_received", "")],
    ),
    one(
        "uftpd_blocks_resent_total",
        C,
        "DATA blocks sent again after a timeout.",
        &[("blocks_resent", "")],
    ),
    one(
        "uftpd_duplicates_ignored_total",
        C,
        "Duplicate ACKs and DATA, counted and ignored.",
        &[("duplicates_ignored", "")],
    ),
    one(
        "uftpd_stray_packets_total",
        C,
        "Packets to a transfer port from the wrong TID (answered with ERROR 5; only with --stray-errors).",
        &[("stray_packets", "")],
    ),
    one(
        "uftpd_sends_deferred_total",
        C,
        "Transmits that waited for a send slot.",
        &[("sends_deferred", "")],
    ),
    one(
        "uftpd_cold_files_total",
        C,
        "RRQs of files not all in the page cache.",
        &[("cold_files", "")],
    ),
    one(
        "uftpd_sends_in_worker_total",
        C,
        "Windows of cold files sent from an io-wq worker.",
        &[("sends_in_worker", "")],
    ),
    one(
        "uftpd_cache_hits_total",
        C,
        "RRQs served from a file map already held.",
        &[("cache_hits", "")],
    ),
    one(
        "uftpd_cache_misses_total",
        C,
        "RRQs that mapped their file.",
        &[("cache_misses", "")],
    ),
    one(
        "uftpd_refusals_dropped_total",
        C,
        "Refusals and ERROR 5s not sent for want of a send slot.",
        &[("refusals_dropped", "")],
    ),
    one(
        "uftpd_send_errors_total",
        C,
        "Sends the kernel refused.",
        &[("send_errors", "")],
    ),
    one(
        "uftpd_log_events_dropped_total",
        C,
        "Log records dropped because the logging thread was behind.",
        &[("log_events_dropped", "")],
    ),
    by(
        "uftpd_buffers_exhausted_total",
        C,
        "Multishot receives re-armed after their buffer group ran empty.",
        "group",
        &[
            ("buffers_exhausted_requests", "requests"),
            ("buffers_exhausted_transfers", "transfers"),
            ("buffers_exhausted_uploads", "uploads"),
        ],
    ),
    one(
        "uftpd_sq_full_submits_total",
        C,
        "Submissions forced early by a full submission queue.",
        &[("sq_full_submits", "")],
    ),
    one(
        "uftpd_cq_overflows_total",
        C,
        "Completion queue overflows (0 unless a bug).",
        &[("cq_overflows", "")],
    ),
    one(
        "uftpd_cq_lost_total",
        C,
        "Completions the kernel dropped (0 unless out of memory).",
        &[("cq_lost", "")],
    ),
    one(
        "uftpd_ring_misuse_total",
        C,
        "Buffer ownership violations and unknown completions (0 unless a bug).",
        &[("ring_misuse", "")],
    ),
    one(
        "uftpd_sessions_active",
        G,
        "Sessions under way now.",
        &[("sessions_active", "")],
    ),
    one(
        "uftpd_sessions_unverified",
        G,
        "Sessions whose peer has not answered yet.",
        &[("sessions_unverified", "")],
    ),
];

fn value(s: &Snapshot, field: &str) -> Option<u64> {
    s.fields()
        .find(|(name, _, _)| *name == field)
        .map(|(_, v, _)| v)
}

/// The whole exposition.
pub fn render(view: &View) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for family in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for shard in &view.shards {
            for (field, label_value) in family.series {
                let Some(v) = value(&shard.counters, field) else {
                    continue;
                };
                match family.label {
                    Some(label) => {
                        let _ = writeln!(
                            out,
                            "{}{{shard=\"{}\",{label}=\"{label_value}\"}} {v}",
                            family.name, shard.index
                        );
                    }
                    None => {
                        let _ = writeln!(out, "{}{{shard=\"{}\"}} {v}", family.name, shard.index);
                    }
                }
            }
        }
    }
    let e = &view.endpoint;
    let globals: [(&str, &str, &str, String); 6] = [
        (
            "uftpd_cache_mapped_bytes",
            G,
            "Bytes of the file maps the cache holds.",
            view.cache_mapped_bytes.to_string(),
        ),
        (
            "uftpd_uptime_seconds",
            G,
            "Seconds since the server started.",
            format!("{:.3}", view.uptime_s),
        ),
        (
            "uftpd_shards",
            G,
            "Shards (threads, one io_uring each).",
            view.shards.len().to_string(),
        ),
        (
            "uftpd_stats_connections_total",
            C,
            "Connections the stats endpoint accepted.",
            e.connections_accepted.to_string(),
        ),
        (
            "uftpd_stats_connections_refused_total",
            C,
            "Stats connections closed at once: --stats-connections-max were open.",
            e.connections_refused.to_string(),
        ),
        (
            "uftpd_stats_logins_refused_total",
            C,
            "eAS0 logins refused (wrong secret, echoed nonce, bad frame).",
            e.eas0_refused.to_string(),
        ),
    ];
    for (name, kind, help, v) in globals {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP uftpd_build_info The running version.\n# TYPE uftpd_build_info gauge\n\
         uftpd_build_info{{version=\"{}\"}} 1",
        view.version
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_counter_is_exported_exactly_once() {
        let mut seen = HashSet::new();
        for f in FAMILIES {
            assert!(f.name.starts_with("uftpd_"));
            assert_eq!(f.kind == C, f.name.ends_with("_total"), "{}", f.name);
            assert_eq!(f.label.is_some(), f.series.len() > 1, "{}", f.name);
            for (field, _) in f.series {
                assert!(seen.insert(*field), "{field} exported twice");
            }
        }
        for (name, _, _) in Snapshot::default().fields() {
            assert!(seen.contains(name), "{name} is not exported");
        }
        assert_eq!(seen.len(), Snapshot::default().fields().count());
    }

    #[test]
    fn docs_metrics_md_names_every_family_and_counter() {
        let doc = include_str!("../../docs/metrics.md");
        for f in FAMILIES {
            assert!(
                doc.contains(&format!("`{}`", f.name)),
                "{} undocumented",
                f.name
            );
            for (field, label) in f.series {
                assert!(doc.contains(&format!("`{field}`")), "{field} undocumented");
                if !label.is_empty() {
                    assert!(doc.contains(&format!("({label})")), "{label} undocumented");
                }
            }
        }
        for global in [
            "uftpd_cache_mapped_bytes",
            "uftpd_uptime_seconds",
            "uftpd_shards",
            "uftpd_stats_connections_total",
            "uftpd_stats_connections_refused_total",
            "uftpd_stats_logins_refused_total",
            "uftpd_build_info",
        ] {
            assert!(
                doc.contains(&format!("`{global}`")),
                "{global} undocumented"
            );
            let view = crate::stats::report::tests::sample_view();
            assert!(
                render(&view).contains(&format!("\n{global}")),
                "{global} not served"
            );
        }
    }

    #[test]
    fn series_carry_the_shard_and_their_label() {
        let view = crate::stats::report::tests::sample_view();
        let text = render(&view);
        assert!(
            text.contains("uftpd_requests_total{shard=\"0\",kind=\"rrq\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("uftpd_transfers_completed_total{shard=\"1\"} 1\n"));
        assert!(text.contains("# TYPE uftpd_sessions_active gauge\n"));
        assert!(
            text.contains("uftpd_transfers_failed_total{shard=\"0\",reason=\"uefi_probe\"} 0\n")
        );
        assert!(text.contains("uftpd_cache_mapped_bytes 4096\n"));
    }
}
