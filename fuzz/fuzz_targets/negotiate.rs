//! Option negotiation on structured requests.
//!
//! The input is a request kind, a filename, a mode and a list of raw
//! (name, value) pairs (the well-known names in any letter case, or any
//! bytes; values as decimals, zero-padded decimals or any bytes), plus the
//! operator's `NegotiationLimits`. The target encodes the request datagram
//! itself, parses it, negotiates, and checks:
//!
//! - the datagram parses back to exactly that request and those pairs;
//! - blksize is within 8 ..= min(limit, 65464), or the default 512 when the
//!   OACK carries none; windowsize within 1 ..= min(limit, WINDOWSIZE_MAX),
//!   or 1 when the OACK carries none;
//! - the OACK holds only options the request carried (among the first
//!   `OPTIONS_PARSED_MAX` pairs, with a usable value), a `timeout` exactly
//!   as requested, a `tsize` as requested (WRQ) or the file's size (RRQ);
//! - the result (and any refusal) equals a model written from RFC 2347-2349
//!   and 7440 plus the documented policy (first usable occurrence wins,
//!   text values are ignored, blksize < 8 and an upload over the limit are
//!   refused);
//! - a session built from it opens with an OACK exactly when the OACK is
//!   not empty, and that OACK encodes to the negotiated values: never an
//!   empty OACK on the wire.

#![no_main]

use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uftpd::proto::options::{
    NegotiationLimits, OPTIONS_PARSED_MAX, WINDOWSIZE_MAX, negotiate, parse_decimal,
};
use uftpd::proto::server::{ServerConfig, ServerSession};
use uftpd::proto::transfer::{TimerConfig, Transmit};
use uftpd::proto::wire::{
    BLKSIZE_DEFAULT, BLKSIZE_MAX, BLKSIZE_MIN, ErrorCode, Mode, OP_RRQ, OP_WRQ, OptionIter,
    OptionValues, Packet, RequestKind,
};

#[derive(Arbitrary, Debug)]
enum Name {
    Blksize(u16),
    Timeout(u16),
    Tsize(u16),
    Windowsize(u16),
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Number(u64),
    Small(u16),
    /// Leading zeros: "0008".
    Padded(u8, u32),
    Text(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    write: bool,
    netascii: bool,
    mode_case: u16,
    filename: Vec<u8>,
    options: Vec<(Name, Value)>,
    blksize_max: u16,
    windowsize_max: u16,
    upload_bytes_max: u64,
    /// RRQ: the size to announce (`None`: netascii, not known up front).
    read_size: Option<u64>,
}

/// `word` with the letters whose bit is set in `mask` upper-cased.
fn cased(word: &str, mask: u16) -> Vec<u8> {
    word.bytes()
        .enumerate()
        .map(|(i, b)| {
            if mask >> (i % 16) & 1 == 1 {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

fn no_nul(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|&b| b != 0).collect()
}

fn encode_name(name: &Name) -> Vec<u8> {
    match name {
        Name::Blksize(m) => cased("blksize", *m),
        Name::Timeout(m) => cased("timeout", *m),
        Name::Tsize(m) => cased("tsize", *m),
        Name::Windowsize(m) => cased("windowsize", *m),
        Name::Other(raw) => no_nul(raw),
    }
}

fn encode_value(value: &Value) -> Vec<u8> {
    match value {
        Value::Number(n) => n.to_string().into_bytes(),
        Value::Small(n) => n.to_string().into_bytes(),
        Value::Padded(zeros, n) => {
            let mut v = vec![b'0'; usize::from(*zeros % 24)];
            v.extend_from_slice(n.to_string().as_bytes());
            v
        }
        Value::Text(raw) => no_nul(raw),
    }
}

/// What negotiation must produce, from the RFCs and the documented policy.
#[derive(Debug, Default, PartialEq, Eq)]
struct Model {
    blksize: Option<u16>,
    timeout: Option<u8>,
    tsize: Option<u64>,
    tsize_seen: bool,
    windowsize: Option<u16>,
}

fn model(
    pairs: &[(Vec<u8>, Vec<u8>)],
    kind: RequestKind,
    read_size: Option<u64>,
    limits: &NegotiationLimits,
) -> Result<Model, ErrorCode> {
    let mut m = Model::default();
    for (name, value) in pairs.iter().take(OPTIONS_PARSED_MAX) {
        let name = name.to_ascii_lowercase();
        let Some(n) = parse_decimal(value) else {
            continue; // no option takes a non-number
        };
        match &name[..] {
            b"blksize" if m.blksize.is_none() => {
                if n < 8 {
                    return Err(ErrorCode::OptionRefused);
                }
                let cap = limits.blksize_max.min(BLKSIZE_MAX);
                m.blksize = Some(n.min(u64::from(cap)) as u16);
            }
            b"timeout" if m.timeout.is_none() && (1..=255).contains(&n) => {
                m.timeout = Some(n as u8);
            }
            b"tsize" if !m.tsize_seen => match kind {
                RequestKind::Read => {
                    m.tsize_seen = true;
                    m.tsize = read_size;
                }
                RequestKind::Write if n > limits.upload_bytes_max => {
                    return Err(ErrorCode::DiskFull);
                }
                RequestKind::Write => {
                    m.tsize_seen = true;
                    m.tsize = Some(n);
                }
            },
            b"windowsize" if m.windowsize.is_none() && (1..=65535).contains(&n) => {
                let cap = limits.windowsize_max.min(WINDOWSIZE_MAX);
                m.windowsize = Some(n.min(u64::from(cap)) as u16);
            }
            _ => {}
        }
    }
    Ok(m)
}

fuzz_target!(|input: Input| {
    let limits = NegotiationLimits {
        // The configuration never goes below these (debug-asserted).
        blksize_max: input.blksize_max.max(BLKSIZE_MIN),
        windowsize_max: input.windowsize_max.max(1),
        upload_bytes_max: input.upload_bytes_max,
        refused: uftpd::proto::options::Refused::NONE,
    };
    let kind = if input.write {
        RequestKind::Write
    } else {
        RequestKind::Read
    };
    let mode = if input.netascii {
        Mode::Netascii
    } else {
        Mode::Octet
    };
    let mut filename = no_nul(&input.filename);
    if filename.is_empty() {
        filename.push(b'f');
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = input
        .options
        .iter()
        .map(|(n, v)| (encode_name(n), encode_value(v)))
        .collect();

    // The datagram, written by hand (the encoder cannot write raw pairs).
    let mut dgram = Vec::new();
    dgram.extend_from_slice(
        &match kind {
            RequestKind::Read => OP_RRQ,
            RequestKind::Write => OP_WRQ,
        }
        .to_be_bytes(),
    );
    dgram.extend_from_slice(&filename);
    dgram.push(0);
    dgram.extend_from_slice(&cased(mode.as_str(), input.mode_case));
    dgram.push(0);
    for (n, v) in &pairs {
        dgram.extend_from_slice(n);
        dgram.push(0);
        dgram.extend_from_slice(v);
        dgram.push(0);
    }

    let Ok(Packet::Request(request)) = Packet::parse(&dgram) else {
        panic!("a well-formed request does not parse")
    };
    assert_eq!(
        (request.kind, request.filename, request.mode),
        (kind, &filename[..], mode)
    );
    let walked: Vec<(&[u8], &[u8])> = OptionIter::new(request.options).collect();
    assert_eq!(walked.len(), pairs.len());
    for ((n, v), (wn, wv)) in walked.iter().zip(&pairs) {
        assert_eq!((*n, *v), (&wn[..], &wv[..]));
    }

    let read_size = match kind {
        RequestKind::Read => input.read_size,
        RequestKind::Write => None,
    };
    let result = negotiate(&request, read_size, &limits);
    let want = model(&pairs, kind, read_size, &limits);
    let n = match (result, want) {
        (Err(refusal), Err(code)) => {
            assert_eq!(refusal.code, code, "{refusal:?}");
            return;
        }
        (Ok(n), Ok(m)) => {
            let got = Model {
                blksize: n.oack.blksize,
                timeout: n.oack.timeout_s,
                tsize: n.oack.tsize_bytes,
                tsize_seen: m.tsize_seen,
                windowsize: n.oack.windowsize,
            };
            assert_eq!(got, m, "negotiated {n:?}");
            n
        }
        (got, want) => panic!("negotiated {got:?}, the model says {want:?}"),
    };

    // The invariants, stated on their own.
    let blksize_cap = limits.blksize_max.min(BLKSIZE_MAX);
    match n.oack.blksize {
        Some(b) => {
            assert_eq!(n.blksize, b);
            assert!((BLKSIZE_MIN..=blksize_cap).contains(&b), "blksize {b}");
        }
        None => assert_eq!(n.blksize, BLKSIZE_DEFAULT),
    }
    let window_cap = limits.windowsize_max.min(WINDOWSIZE_MAX);
    match n.oack.windowsize {
        Some(w) => {
            assert_eq!(n.windowsize, w);
            assert!((1..=window_cap).contains(&w), "windowsize {w}");
        }
        None => assert_eq!(n.windowsize, 1),
    }
    assert_eq!(n.timeout_s, n.oack.timeout_s);
    let carried = |name: &[u8], ok: &dyn Fn(u64) -> bool| {
        pairs
            .iter()
            .take(OPTIONS_PARSED_MAX)
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && parse_decimal(v).is_some_and(ok))
    };
    if n.oack.blksize.is_some() {
        assert!(carried(b"blksize", &|v| v >= 8));
    }
    if let Some(t) = n.oack.timeout_s {
        assert!(carried(b"timeout", &|v| v == u64::from(t)), "timeout {t}");
    }
    if let Some(t) = n.oack.tsize_bytes {
        assert!(carried(b"tsize", &|_| true));
        if kind == RequestKind::Write {
            assert!(carried(b"tsize", &|v| v == t) && t <= limits.upload_bytes_max);
        } else {
            assert_eq!(Some(t), read_size);
        }
    }
    if n.oack.windowsize.is_some() {
        assert!(carried(b"windowsize", &|v| (1..=65535).contains(&v)));
    }

    // The session's first reply: an OACK exactly when there is one to send.
    let config = ServerConfig {
        negotiation: limits,
        timer: TimerConfig {
            retransmit_ms: 1000,
            retries_max: 5,
            backoff: true,
            unverified_resends_max: Some(1),
            unverified_quiet_waits: 2,
            unverified_retransmit_ms: 1000,
        },
        dally_ms: 1000,
    };
    let now = Instant::now();
    let mut session = match kind {
        RequestKind::Read => {
            let size = input.read_size.unwrap_or(1000);
            ServerSession::read(&request, size, input.read_size.is_some(), &config, now)
        }
        RequestKind::Write => ServerSession::write(&request, &config, now),
    }
    .expect("negotiated once, refused the second time");
    assert_eq!(session.negotiated(), &n);
    let first = session.poll_transmit();
    if n.oack == OptionValues::default() {
        match kind {
            RequestKind::Read => assert!(
                matches!(first, Some(Transmit::Data { first: 1, .. })),
                "{first:?}"
            ),
            RequestKind::Write => assert_eq!(first, Some(Transmit::Ack { block: 0 })),
        }
        return;
    }
    assert_eq!(first, Some(Transmit::Oack));
    let mut buf = [0u8; 512];
    let len = session
        .encode_control(Transmit::Oack, &mut buf)
        .expect("the OACK fits");
    let Ok(Packet::Oack { options }) = Packet::parse(&buf[..len]) else {
        panic!("the OACK does not parse")
    };
    assert!(!options.is_empty(), "an empty OACK");
    let mut echoed = OptionValues::default();
    for (name, value) in OptionIter::new(options) {
        let v = parse_decimal(value).expect("a decimal value");
        match name {
            b"blksize" => echoed.blksize = Some(v as u16),
            b"timeout" => echoed.timeout_s = Some(v as u8),
            b"tsize" => echoed.tsize_bytes = Some(v),
            b"windowsize" => echoed.windowsize = Some(v as u16),
            other => panic!("OACK option {other:?}"),
        }
    }
    assert_eq!(echoed, n.oack);
});
