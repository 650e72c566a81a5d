//! Records to lines, text or JSON: pure code (a record and a style in, one
//! line out), so every shape is unit-tested. The line shapes are a contract
//! (README "Logs"): scripts match them.
//!
//! Names come from the network: every byte that is not printable ASCII is
//! escaped (`\xNN` in text, `\u00NN` or U+FFFD in JSON), so a hostile file
//! name can never start a line of its own or forge a field.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::transfer::Outcome;
use crate::proto::wire::{OptionIter, RequestKind};

use super::{Body, Format, Published, Record, RefusedLog, RequestLog, Style, TransferLog};

/// Appends `record` as one line (with its `\n`) to `out`.
pub fn line(record: &Record, style: &Style, out: &mut String) {
    match style.format {
        Format::Text => text(record, style, out),
        Format::Json => json(record, out),
    }
    out.push('\n');
}

fn text(record: &Record, style: &Style, out: &mut String) {
    if style.journald {
        let _ = write!(out, "<{}>", record.level as u8);
    } else {
        if style.timestamps {
            timestamp(record.at, out);
            out.push(' ');
        }
        out.push_str(record.level.label());
        out.push_str(": ");
    }
    body_text(record, out);
}

/// The text of a record without its prefix (for syslog, which has its own).
pub fn body_text(record: &Record, out: &mut String) {
    match &record.body {
        Body::Message(m) => escape_message(m.as_bytes(), out),
        Body::Request(r) => request_text(r, out),
        Body::Refused(r) => refused_text(r, out),
        Body::Transfer(t) => transfer_text(t, out),
    }
}

fn kind_word(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Read => "RRQ",
        RequestKind::Write => "WRQ",
    }
}

/// `request RRQ "pxelinux.0" from 10.0.0.5:2070 octet blksize=1468 tsize=0`
fn request_text(r: &RequestLog, out: &mut String) {
    let _ = write!(out, "request {} ", kind_word(r.kind));
    quoted(&r.filename, out);
    let _ = write!(out, " from {} {}", r.peer, r.mode.as_str());
    for (name, value) in OptionIter::new(&r.options) {
        out.push(' ');
        escape_text(name, out);
        out.push('=');
        escape_text(value, out);
    }
}

/// `refused RRQ "missing.efi" from 10.0.0.5:2070: File not found (not_found)`
fn refused_text(r: &RefusedLog, out: &mut String) {
    out.push_str("refused ");
    out.push_str(r.kind.map_or("request", kind_word));
    out.push(' ');
    quoted(&r.filename, out);
    let _ = write!(
        out,
        " from {}: {} ({})",
        r.peer,
        r.refusal.message,
        r.refusal.cause.label()
    );
}

/// `sent "pxelinux.0" to 10.0.0.5:2070: complete, 42382 bytes in 12.3 ms
/// (27.6 Mbit/s), blksize 1468, windowsize 4, 0 retransmissions`
fn transfer_text(t: &TransferLog, out: &mut String) {
    let (verb, dir) = match t.kind {
        RequestKind::Read => ("sent", "to"),
        RequestKind::Write => ("received", "from"),
    };
    let _ = write!(out, "{verb} ");
    quoted(&t.filename, out);
    let _ = write!(out, " {dir} {}: ", t.peer);
    match t.outcome.failure() {
        None => {
            out.push_str("complete");
            if t.outcome == Outcome::CompleteUnconfirmed {
                out.push_str(" (final ACK missing)");
            }
            match t.published {
                Some(Published::Created) => out.push_str(", created"),
                Some(Published::Replaced) => out.push_str(", replaced"),
                None => {}
            }
            let _ = write!(out, ", {} bytes", t.bytes);
        }
        Some(f) => {
            let _ = write!(out, "failed ({}): ", f.label());
            failure_detail(t.outcome, out);
            out.push_str(", ");
            match t.size_bytes {
                Some(size) => {
                    let _ = write!(out, "{} of {size} bytes", t.bytes);
                }
                None => {
                    let _ = write!(out, "{} bytes", t.bytes);
                }
            }
        }
    }
    out.push_str(" in ");
    duration(t.duration_us, out);
    if let Some(mbps) = rate_mbps(t.bytes, t.duration_us) {
        let _ = write!(out, " ({mbps:.1} Mbit/s)");
    }
    let _ = write!(
        out,
        ", blksize {}, windowsize {}, {} retransmissions",
        t.blksize, t.windowsize, t.retransmissions
    );
}

/// What went wrong, in words (the label says it for scripts).
fn failure_detail(outcome: Outcome, out: &mut String) {
    match outcome {
        Outcome::Complete | Outcome::CompleteUnconfirmed => {}
        Outcome::TimedOut => out.push_str("peer stopped answering"),
        Outcome::NoResponse => out.push_str("peer never answered"),
        Outcome::PeerError(code) => {
            let _ = write!(out, "peer sent ERROR {code}");
        }
        Outcome::SizeProbe => out.push_str("peer read the OACK and ended (size probe)"),
        Outcome::Unreachable => out.push_str("peer's port closed"),
        Outcome::Replaced => out.push_str("a new request from the same port took its place"),
        Outcome::Evicted => out.push_str("peer never answered; its place went to a new request"),
        Outcome::Aborted(r) => {
            let _ = write!(out, "sent ERROR {}: {}", r.code as u16, r.message);
        }
    }
}

/// Megabits per second, if the duration allows a rate.
pub fn rate_mbps(bytes: u64, duration_us: u64) -> Option<f64> {
    (duration_us > 0).then(|| bytes as f64 * 8.0 / duration_us as f64)
}

fn duration(us: u64, out: &mut String) {
    if us < 10_000_000 {
        let _ = write!(out, "{:.1} ms", us as f64 / 1000.0);
    } else {
        let _ = write!(out, "{:.1} s", us as f64 / 1_000_000.0);
    }
}

fn quoted(name: &[u8], out: &mut String) {
    out.push('"');
    escape_text(name, out);
    out.push('"');
}

/// Free text (a message): like [`escape_text`] but quotes stay as they are
/// (nothing in a message is a quoted field).
fn escape_message(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// Printable ASCII as is, `"` and `\` backslashed, every other byte `\xNN`.
pub fn escape_text(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

fn json(record: &Record, out: &mut String) {
    out.push_str("{\"ts\":\"");
    timestamp(record.at, out);
    let _ = write!(out, "\",\"level\":\"{}\"", record.level.label());
    if let Some(shard) = record.shard {
        let _ = write!(out, ",\"shard\":{shard}");
    }
    match &record.body {
        Body::Message(m) => {
            out.push_str(",\"event\":\"message\",\"message\":");
            json_str(m.as_bytes(), out);
        }
        Body::Request(r) => {
            let _ = write!(
                out,
                ",\"event\":\"request\",\"client\":\"{}\",\"kind\":\"{}\",\"file\":",
                r.peer,
                kind_json(r.kind)
            );
            json_str(&r.filename, out);
            let _ = write!(out, ",\"mode\":\"{}\",\"options\":{{", r.mode.as_str());
            for (i, (name, value)) in OptionIter::new(&r.options).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_str(name, out);
                out.push(':');
                json_str(value, out);
            }
            out.push('}');
        }
        Body::Refused(r) => {
            let _ = write!(out, ",\"event\":\"refused\",\"client\":\"{}\"", r.peer);
            match r.kind {
                Some(k) => {
                    let _ = write!(out, ",\"kind\":\"{}\"", kind_json(k));
                }
                None => out.push_str(",\"kind\":null"),
            }
            out.push_str(",\"file\":");
            json_str(&r.filename, out);
            let _ = write!(out, ",\"code\":{},\"message\":", r.refusal.code as u16);
            json_str(r.refusal.message.as_bytes(), out);
            let _ = write!(out, ",\"reason\":\"{}\"", r.refusal.cause.label());
        }
        Body::Transfer(t) => transfer_json(t, out),
    }
    out.push('}');
}

fn kind_json(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Read => "rrq",
        RequestKind::Write => "wrq",
    }
}

fn transfer_json(t: &TransferLog, out: &mut String) {
    let _ = write!(
        out,
        ",\"event\":\"transfer\",\"client\":\"{}\",\"kind\":\"{}\",\"direction\":\"{}\",\"file\":",
        t.peer,
        kind_json(t.kind),
        match t.kind {
            RequestKind::Read => "sent",
            RequestKind::Write => "received",
        }
    );
    json_str(&t.filename, out);
    let _ = write!(
        out,
        ",\"mode\":\"{}\",\"bytes\":{},\"size\":",
        t.mode.as_str(),
        t.bytes
    );
    match t.size_bytes {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"duration_ms\":{:.3},\"rate_mbps\":",
        t.duration_us as f64 / 1000.0
    );
    match rate_mbps(t.bytes, t.duration_us) {
        Some(r) => {
            let _ = write!(out, "{r:.3}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"blksize\":{},\"windowsize\":{},\"retransmissions\":{}",
        t.blksize, t.windowsize, t.retransmissions
    );
    match t.outcome.failure() {
        None => {
            let _ = write!(
                out,
                ",\"outcome\":\"complete\",\"reason\":null,\"final_ack\":{}",
                t.outcome == Outcome::Complete
            );
        }
        Some(f) => {
            let _ = write!(out, ",\"outcome\":\"failed\",\"reason\":\"{}\"", f.label());
        }
    }
    match t.outcome {
        Outcome::PeerError(code) => {
            let _ = write!(out, ",\"peer_error\":{code}");
        }
        Outcome::SizeProbe => out.push_str(",\"peer_error\":8"),
        Outcome::Aborted(r) => {
            let _ = write!(out, ",\"error\":{},\"message\":", r.code as u16);
            json_str(r.message.as_bytes(), out);
        }
        _ => {}
    }
    match t.published {
        Some(Published::Created) => out.push_str(",\"upload\":\"created\""),
        Some(Published::Replaced) => out.push_str(",\"upload\":\"replaced\""),
        None if t.kind == RequestKind::Write => out.push_str(",\"upload\":null"),
        None => {}
    }
}

/// A JSON string of `bytes` read as UTF-8 (invalid sequences become
/// U+FFFD); quotes, backslashes and control characters escaped.
pub fn json_str(bytes: &[u8], out: &mut String) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // Line and paragraph separators end lines in some readers.
            '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with milliseconds: `2026-12-01T22:50:01.123Z`.
pub fn timestamp(at: SystemTime, out: &mut String) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Level;
    use crate::proto::refusal::Refusal;
    use crate::proto::wire::Mode;
    use std::time::Duration;

    const PLAIN: Style = Style {
        format: Format::Text,
        level: Level::Debug,
        timestamps: true,
        journald: false,
    };

    fn at() -> SystemTime {
        // 2026-12-01T22:50:01.123Z
        UNIX_EPOCH + Duration::from_millis(1_796_165_401_123)
    }

    fn transfer(outcome: Outcome) -> Record {
        Record {
            at: at(),
            level: Level::Info,
            shard: Some(1),
            body: Body::Transfer(TransferLog {
                peer: "10.0.0.5:2070".parse().unwrap(),
                kind: RequestKind::Read,
                filename: b"pxelinux.0".as_slice().into(),
                mode: Mode::Octet,
                bytes: 42_382,
                size_bytes: Some(42_382),
                duration_us: 12_300,
                blksize: 1468,
                windowsize: 4,
                retransmissions: 0,
                outcome,
                published: None,
            }),
        }
    }

    fn one(record: &Record, style: &Style) -> String {
        let mut s = String::new();
        line(record, style, &mut s);
        s
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let mut s = String::new();
        timestamp(at(), &mut s);
        assert_eq!(s, "2026-12-01T22:50:01.123Z");
        s.clear();
        timestamp(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // A leap day.
        timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut s);
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_completed_transfer_in_text() {
        assert_eq!(
            one(&transfer(Outcome::Complete), &PLAIN),
            "2026-12-01T22:50:01.123Z info: sent \"pxelinux.0\" to 10.0.0.5:2070: complete, \
             42382 bytes in 12.3 ms (27.6 Mbit/s), blksize 1468, windowsize 4, 0 retransmissions\n"
        );
    }

    #[test]
    fn journald_gets_a_priority_and_no_timestamp() {
        let style = Style {
            journald: true,
            timestamps: false,
            ..PLAIN
        };
        let l = one(&transfer(Outcome::TimedOut), &style);
        assert!(l.starts_with("<6>sent \"pxelinux.0\""), "{l}");
        assert!(l.contains("failed (timeout)"), "{l}");
    }

    #[test]
    fn hostile_names_cannot_break_a_line() {
        let record = Record {
            at: at(),
            level: Level::Info,
            shard: None,
            body: Body::Refused(RefusedLog {
                peer: "[::1]:9".parse().unwrap(),
                kind: Some(RequestKind::Read),
                filename: b"a\nb\"c\\\xff".as_slice().into(),
                refusal: Refusal::NOT_FOUND,
            }),
        };
        let t = one(&record, &PLAIN);
        assert_eq!(
            t,
            "2026-12-01T22:50:01.123Z info: refused RRQ \"a\\x0ab\\\"c\\\\\\xff\" from [::1]:9: \
             File not found (not_found)\n"
        );
        let j = one(
            &record,
            &Style {
                format: Format::Json,
                ..PLAIN
            },
        );
        assert_eq!(j.matches('\n').count(), 1);
        assert!(j.contains(r#""file":"a\nb\"c\\�""#), "{j}");
    }

    #[test]
    fn a_transfer_in_json() {
        let j = one(
            &transfer(Outcome::Complete),
            &Style {
                format: Format::Json,
                ..PLAIN
            },
        );
        assert_eq!(
            j,
            "{\"ts\":\"2026-12-01T22:50:01.123Z\",\"level\":\"info\",\"shard\":1,\
             \"event\":\"transfer\",\"client\":\"10.0.0.5:2070\",\"kind\":\"rrq\",\
             \"direction\":\"sent\",\"file\":\"pxelinux.0\",\"mode\":\"octet\",\"bytes\":42382,\
             \"size\":42382,\"duration_ms\":12.300,\"rate_mbps\":27.566,\"blksize\":1468,\
             \"windowsize\":4,\"retransmissions\":0,\"outcome\":\"complete\",\"reason\":null,\
             \"final_ack\":true}\n"
        );
    }

    #[test]
    fn requests_list_their_options() {
        let record = Record {
            at: at(),
            level: Level::Debug,
            shard: Some(0),
            body: Body::Request(RequestLog {
                peer: "10.0.0.5:2070".parse().unwrap(),
                kind: RequestKind::Read,
                filename: b"bootx64.efi".as_slice().into(),
                mode: Mode::Octet,
                options: b"tsize\x000\x00blksize\x001468\x00".as_slice().into(),
            }),
        };
        assert_eq!(
            one(&record, &PLAIN),
            "2026-12-01T22:50:01.123Z debug: request RRQ \"bootx64.efi\" from 10.0.0.5:2070 \
             octet tsize=0 blksize=1468\n"
        );
    }
}
