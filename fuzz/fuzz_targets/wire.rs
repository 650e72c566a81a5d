//! The packet codec on hostile bytes.
//!
//! 1. `Packet::parse` on the raw input never panics, and what it returns is
//!    exactly the datagram: every field is the bytes at its place, options
//!    are walked with `OptionIter` and account for the whole tail.
//! 2. The same input, read as structured values, drives every encoder (ACK,
//!    DATA header, ERROR, OACK, RRQ/WRQ): encode → parse gives back what was
//!    encoded, and an output buffer of any size either holds the exact bytes
//!    or makes the encoder return `None`.

#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use uftpd::proto::options::parse_decimal;
use uftpd::proto::wire::{
    self, ErrorCode, HEADER_BYTES, Mode, OP_ACK, OP_DATA, OP_ERROR, OP_OACK, OP_RRQ, OP_WRQ,
    OptionIter, OptionValues, Packet, Request, RequestKind, WireError,
};

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    let _ = round_trips(&mut Unstructured::new(data));
});

fn opcode(data: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*data.first()?, *data.get(1)?]))
}

/// Walks an option list: every pair NUL-free, and the pairs re-encoded are
/// a prefix of the list whose remainder holds at most one NUL (a dangling
/// name, which the iterator drops).
fn walk_options(options: &[u8]) -> Vec<(&[u8], &[u8])> {
    let pairs: Vec<_> = OptionIter::new(options).collect();
    let mut again = Vec::with_capacity(options.len());
    for (name, value) in &pairs {
        assert!(!name.contains(&0) && !value.contains(&0));
        again.extend_from_slice(name);
        again.push(0);
        again.extend_from_slice(value);
        again.push(0);
    }
    assert!(options.starts_with(&again), "pairs are not the option list");
    let rest = &options[again.len()..];
    assert!(
        rest.iter().filter(|&&b| b == 0).count() <= 1,
        "OptionIter stopped before the end: {rest:?}"
    );
    pairs
}

fn check_parse(data: &[u8]) {
    let parsed = Packet::parse(data);
    match parsed {
        Ok(Packet::Request(r)) => {
            let expected = match r.kind {
                RequestKind::Read => OP_RRQ,
                RequestKind::Write => OP_WRQ,
            };
            assert_eq!(opcode(data), Some(expected));
            assert!(!r.filename.is_empty() && !r.filename.contains(&0));
            assert_eq!(&data[2..2 + r.filename.len()], r.filename);
            assert_eq!(data[2 + r.filename.len()], 0);
            // Between the filename's NUL and the options: the mode and its NUL.
            let mode_start = 2 + r.filename.len() + 1;
            let mode_end = data.len() - r.options.len() - 1;
            assert_eq!(data[mode_end], 0);
            assert_eq!(Mode::parse(&data[mode_start..mode_end]), Some(r.mode));
            assert!(r.options.is_empty() || r.options.ends_with(&[0]));
            walk_options(r.options);
        }
        Ok(Packet::Data { block, payload }) => {
            assert_eq!(opcode(data), Some(OP_DATA));
            assert_eq!(block, u16::from_be_bytes([data[2], data[3]]));
            assert_eq!(payload, &data[HEADER_BYTES..]);
        }
        Ok(Packet::Ack { block }) => {
            assert_eq!(opcode(data), Some(OP_ACK));
            assert!(data.len() >= HEADER_BYTES);
            assert_eq!(block, u16::from_be_bytes([data[2], data[3]]));
        }
        Ok(Packet::Error { code, message }) => {
            assert_eq!(opcode(data), Some(OP_ERROR));
            assert_eq!(code, u16::from_be_bytes([data[2], data[3]]));
            let tail = &data[HEADER_BYTES..];
            assert!(tail.starts_with(message) && !message.contains(&0));
            assert!(message.len() == tail.len() || tail[message.len()] == 0);
        }
        Ok(Packet::Oack { options }) => {
            assert_eq!(opcode(data), Some(OP_OACK));
            assert_eq!(options, &data[2..]);
            walk_options(options);
        }
        Err(e) => {
            let refusal = e.refusal();
            assert_eq!(refusal.code, ErrorCode::IllegalOperation);
            match (e, opcode(data)) {
                (WireError::Truncated, None) => {}
                (WireError::Truncated, Some(OP_DATA | OP_ACK | OP_ERROR)) => {
                    assert!(data.len() < HEADER_BYTES)
                }
                (WireError::UnknownOpcode(op), Some(o)) => {
                    assert_eq!(op, o);
                    assert!(!(OP_RRQ..=OP_OACK).contains(&op));
                }
                (
                    WireError::Unterminated | WireError::UnknownMode | WireError::EmptyFilename,
                    Some(OP_RRQ | OP_WRQ),
                ) => {}
                (e, op) => panic!("{e:?} for opcode {op:?}"),
            }
        }
    }
}

/// `encode` into a buffer of `cap` bytes: the exact bytes of `full`, or
/// `None` exactly when they do not fit.
fn check_short_buffer(cap: usize, full: &[u8], encode: impl Fn(&mut [u8]) -> Option<usize>) {
    let mut buf = vec![0xa5u8; cap];
    match encode(&mut buf) {
        Some(n) => {
            assert_eq!(n, full.len());
            assert_eq!(&buf[..n], full);
        }
        None => assert!(cap < full.len(), "refused {} bytes into {cap}", full.len()),
    }
}

fn error_code(u: &mut Unstructured<'_>) -> arbitrary::Result<ErrorCode> {
    Ok(*u.choose(&[
        ErrorCode::NotDefined,
        ErrorCode::FileNotFound,
        ErrorCode::AccessViolation,
        ErrorCode::DiskFull,
        ErrorCode::IllegalOperation,
        ErrorCode::UnknownTid,
        ErrorCode::FileExists,
        ErrorCode::NoSuchUser,
        ErrorCode::OptionRefused,
    ])?)
}

fn option_values(u: &mut Unstructured<'_>) -> arbitrary::Result<OptionValues> {
    Ok(OptionValues {
        blksize: u.arbitrary()?,
        timeout_s: u.arbitrary()?,
        tsize_bytes: u.arbitrary()?,
        windowsize: u.arbitrary()?,
    })
}

/// What `OptionValues` must encode to: fixed order, lowercase names, decimal.
fn expected_pairs(v: &OptionValues) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    if let Some(b) = v.blksize {
        out.push((b"blksize".to_vec(), u64::from(b)));
    }
    if let Some(t) = v.timeout_s {
        out.push((b"timeout".to_vec(), u64::from(t)));
    }
    if let Some(t) = v.tsize_bytes {
        out.push((b"tsize".to_vec(), t));
    }
    if let Some(w) = v.windowsize {
        out.push((b"windowsize".to_vec(), u64::from(w)));
    }
    out
}

fn check_option_list(options: &[u8], values: &OptionValues) {
    let pairs = walk_options(options);
    let expected = expected_pairs(values);
    assert_eq!(pairs.len(), expected.len());
    for ((name, value), (want_name, want_value)) in pairs.iter().zip(&expected) {
        assert_eq!(*name, &want_name[..]);
        assert_eq!(parse_decimal(value), Some(*want_value));
        assert_eq!(*value, want_value.to_string().as_bytes());
    }
}

fn round_trips(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let mut big = vec![0u8; wire::DATAGRAM_BYTES_MAX + 2048];
    let cap: usize = u.int_in_range(0..=96)?;

    // ACK
    let block: u16 = u.arbitrary()?;
    let n = wire::encode_ack(&mut big, block).expect("ACK fits");
    assert_eq!(Packet::parse(&big[..n]), Ok(Packet::Ack { block }));
    let full = big[..n].to_vec();
    check_short_buffer(cap, &full, |b| wire::encode_ack(b, block));

    // DATA: the header, then the payload the caller copies behind it.
    let block: u16 = u.arbitrary()?;
    let len = u.int_in_range(0..=u.len().min(usize::from(wire::BLKSIZE_MAX)))?;
    let payload = u.bytes(len)?;
    let n = wire::encode_data_header(&mut big, block).expect("header fits");
    assert_eq!(n, HEADER_BYTES);
    big[n..n + payload.len()].copy_from_slice(payload);
    assert_eq!(
        Packet::parse(&big[..n + payload.len()]),
        Ok(Packet::Data { block, payload })
    );
    let full = big[..n].to_vec();
    check_short_buffer(cap, &full, |b| wire::encode_data_header(b, block));

    // ERROR: the message reads back up to its first NUL.
    let code = error_code(u)?;
    let message: String = u.arbitrary()?;
    let n = wire::encode_error(&mut big, code, &message).expect("ERROR fits");
    let shown = message.split('\0').next().unwrap_or("");
    assert_eq!(
        Packet::parse(&big[..n]),
        Ok(Packet::Error {
            code: code as u16,
            message: shown.as_bytes()
        })
    );
    let full = big[..n].to_vec();
    check_short_buffer(cap, &full, |b| wire::encode_error(b, code, &message));

    // OACK
    let values = option_values(u)?;
    let n = wire::encode_oack(&mut big, &values).expect("OACK fits");
    let Ok(Packet::Oack { options }) = Packet::parse(&big[..n]) else {
        panic!("OACK does not parse back")
    };
    check_option_list(options, &values);
    let full = big[..n].to_vec();
    check_short_buffer(cap, &full, |b| wire::encode_oack(b, &values));

    // RRQ / WRQ
    let kind = if u.arbitrary()? {
        RequestKind::Write
    } else {
        RequestKind::Read
    };
    let mode = if u.arbitrary()? {
        Mode::Netascii
    } else {
        Mode::Octet
    };
    let raw_name: Vec<u8> = u.arbitrary()?;
    let values = option_values(u)?;
    // A NUL inside the name ends it on the wire: no panic is all we ask.
    let n = wire::encode_request(&mut big, kind, &raw_name, mode, &values).expect("fits");
    check_parse(&big[..n]);
    let name: Vec<u8> = raw_name.iter().copied().filter(|&b| b != 0).collect();
    let n = wire::encode_request(&mut big, kind, &name, mode, &values).expect("fits");
    match Packet::parse(&big[..n]) {
        Ok(Packet::Request(Request {
            kind: k,
            filename,
            mode: m,
            options,
        })) => {
            assert_eq!((k, filename, m), (kind, &name[..], mode));
            check_option_list(options, &values);
        }
        Err(WireError::EmptyFilename) => assert!(name.is_empty()),
        other => panic!("request does not parse back: {other:?}"),
    }
    let full = big[..n].to_vec();
    check_short_buffer(cap, &full, |b| {
        wire::encode_request(b, kind, &name, mode, &values)
    });
    Ok(())
}
