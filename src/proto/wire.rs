//! TFTP packet format (RFC 1350, 2347): zero-copy parsing into [`Packet`] and
//! encoders that write into caller-owned buffers.
//!
//! Every read is length-checked; a malformed datagram becomes a [`WireError`]
//! that maps to the ERROR code the sender deserves, never a panic.

use super::refusal::{Cause, Refusal};

/// Opcodes, RFC 1350 §5 and RFC 2347 (OACK).
pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Opcode + block number.
pub const HEADER_BYTES: usize = 4;
/// RFC 2348: the largest blksize that fits a UDP datagram over IPv4.
pub const BLKSIZE_MAX: u16 = 65464;
pub const BLKSIZE_MIN: u16 = 8;
pub const BLKSIZE_DEFAULT: u16 = 512;
/// What an OACK, ACK or ERROR of ours is counted as, before it is encoded
/// (most are far shorter; an OACK of every option is about 80 bytes).
pub const CONTROL_ESTIMATE_BYTES: u64 = 128;
/// Longest DATA datagram we ever build or accept.
pub const DATAGRAM_BYTES_MAX: usize = HEADER_BYTES + BLKSIZE_MAX as usize;
const _: () = assert!(
    DATAGRAM_BYTES_MAX <= 65507,
    "must fit one IPv4 UDP datagram"
);

/// ERROR codes, RFC 1350 appendix and RFC 2347 (code 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

impl Mode {
    /// Case-insensitive, as RFC 1350 asks. `mail` is obsolete and refused.
    pub fn parse(raw: &[u8]) -> Option<Mode> {
        if raw.eq_ignore_ascii_case(b"octet") {
            Some(Mode::Octet)
        } else if raw.eq_ignore_ascii_case(b"netascii") {
            Some(Mode::Netascii)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
}

/// A parsed RRQ or WRQ. `options` is the raw `name\0value\0...` tail; walk it
/// with [`OptionIter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: RequestKind,
    pub filename: &'a [u8],
    pub mode: Mode,
    pub options: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Request(Request<'a>),
    Data { block: u16, payload: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: &'a [u8] },
    Oack { options: &'a [u8] },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the opcode's fixed fields.
    Truncated,
    UnknownOpcode(u16),
    /// A request string runs off the end without its NUL.
    Unterminated,
    UnknownMode,
    EmptyFilename,
}

impl WireError {
    /// Every malformed packet is an illegal TFTP operation (RFC 1350).
    pub fn refusal(self) -> Refusal {
        let message = match self {
            WireError::Truncated => "Truncated packet",
            WireError::UnknownOpcode(_) => "Unknown opcode",
            WireError::Unterminated => "Request not NUL-terminated",
            WireError::UnknownMode => "Unknown transfer mode",
            WireError::EmptyFilename => "Empty file name",
        };
        Refusal::new(ErrorCode::IllegalOperation, message, Cause::Malformed)
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let hi = *bytes.get(at)?;
    let lo = *bytes.get(at + 1)?;
    Some(u16::from_be_bytes([hi, lo]))
}

/// Splits `bytes` at the first NUL: (string, rest after the NUL).
fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((bytes.get(..nul)?, bytes.get(nul + 1..)?))
}

/// What can be read of a file name from a datagram that may not be a
/// well-formed request (for logging a refusal): the bytes after an RRQ or
/// WRQ opcode up to the first NUL, at most [`FILENAME_LOG_BYTES_MAX`];
/// empty for anything else.
pub fn request_filename(raw: &[u8]) -> &[u8] {
    match read_u16(raw, 0) {
        Some(OP_RRQ | OP_WRQ) => {
            let body = raw.get(2..).unwrap_or_default();
            let name = split_cstr(body).map_or(body, |(name, _)| name);
            name.get(..FILENAME_LOG_BYTES_MAX).unwrap_or(name)
        }
        _ => &[],
    }
}

/// The longest file name a refusal's log line quotes from a malformed request.
pub const FILENAME_LOG_BYTES_MAX: usize = 256;

impl<'a> Packet<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, WireError> {
        let opcode = read_u16(bytes, 0).ok_or(WireError::Truncated)?;
        let body = bytes.get(2..).ok_or(WireError::Truncated)?;
        match opcode {
            OP_RRQ | OP_WRQ => {
                let kind = if opcode == OP_RRQ {
                    RequestKind::Read
                } else {
                    RequestKind::Write
                };
                let (filename, rest) = split_cstr(body).ok_or(WireError::Unterminated)?;
                let (mode, options) = split_cstr(rest).ok_or(WireError::Unterminated)?;
                if filename.is_empty() {
                    return Err(WireError::EmptyFilename);
                }
                // RFC 2347: the option list is NUL-terminated too.
                if options.last().is_some_and(|&b| b != 0) {
                    return Err(WireError::Unterminated);
                }
                let mode = Mode::parse(mode).ok_or(WireError::UnknownMode)?;
                Ok(Packet::Request(Request {
                    kind,
                    filename,
                    mode,
                    options,
                }))
            }
            OP_DATA => {
                let block = read_u16(bytes, 2).ok_or(WireError::Truncated)?;
                let payload = bytes.get(HEADER_BYTES..).ok_or(WireError::Truncated)?;
                Ok(Packet::Data { block, payload })
            }
            OP_ACK => {
                let block = read_u16(bytes, 2).ok_or(WireError::Truncated)?;
                Ok(Packet::Ack { block })
            }
            OP_ERROR => {
                let code = read_u16(bytes, 2).ok_or(WireError::Truncated)?;
                let tail = bytes.get(HEADER_BYTES..).ok_or(WireError::Truncated)?;
                // Be lenient: many stacks forget the NUL on the message.
                let message = split_cstr(tail).map_or(tail, |(m, _)| m);
                Ok(Packet::Error { code, message })
            }
            OP_OACK => Ok(Packet::Oack { options: body }),
            other => Err(WireError::UnknownOpcode(other)),
        }
    }
}

/// Iterates `name\0value\0` pairs. A trailing name without a value is dropped.
#[derive(Clone, Debug)]
pub struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> OptionIter<'a> {
    pub fn new(options: &'a [u8]) -> Self {
        OptionIter { rest: options }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (name, rest) = split_cstr(self.rest)?;
        let Some((value, rest)) = split_cstr(rest) else {
            self.rest = &[];
            return None;
        };
        self.rest = rest;
        Some((name, value))
    }
}

/// A cursor over an output buffer; every write is bounds-checked and a short
/// buffer yields `None` instead of a panic.
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    pub fn new(buf: &'b mut [u8]) -> Self {
        Writer { buf, len: 0 }
    }

    pub fn bytes(&mut self, src: &[u8]) -> Option<()> {
        let end = self.len.checked_add(src.len())?;
        self.buf.get_mut(self.len..end)?.copy_from_slice(src);
        self.len = end;
        Some(())
    }

    pub fn u16(&mut self, v: u16) -> Option<()> {
        self.bytes(&v.to_be_bytes())
    }

    pub fn cstr(&mut self, s: &[u8]) -> Option<()> {
        self.bytes(s)?;
        self.bytes(&[0])
    }

    /// A decimal number followed by NUL, without allocating.
    pub fn decimal(&mut self, mut v: u64) -> Option<()> {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.cstr(digits.get(at..)?)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub fn encode_ack(buf: &mut [u8], block: u16) -> Option<usize> {
    let mut w = Writer::new(buf);
    w.u16(OP_ACK)?;
    w.u16(block)?;
    Some(w.len())
}

pub fn encode_data_header(buf: &mut [u8], block: u16) -> Option<usize> {
    let mut w = Writer::new(buf);
    w.u16(OP_DATA)?;
    w.u16(block)?;
    Some(w.len())
}

pub fn encode_error(buf: &mut [u8], code: ErrorCode, message: &str) -> Option<usize> {
    encode_error_bytes(buf, code, message.as_bytes())
}

/// [`encode_error`] with a message that is bytes (a remap rule's, which
/// may hold any byte of a name); it ends at an inner NUL, if any.
pub fn encode_error_bytes(buf: &mut [u8], code: ErrorCode, message: &[u8]) -> Option<usize> {
    let end = message
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(message.len());
    let mut w = Writer::new(buf);
    w.u16(OP_ERROR)?;
    w.u16(code as u16)?;
    w.cstr(&message[..end])?;
    Some(w.len())
}

/// Options for an outgoing request or OACK, in a fixed order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionValues {
    pub blksize: Option<u16>,
    pub timeout_s: Option<u8>,
    pub tsize_bytes: Option<u64>,
    pub windowsize: Option<u16>,
}

impl OptionValues {
    pub fn is_empty(&self) -> bool {
        *self == OptionValues::default()
    }

    fn encode(&self, w: &mut Writer<'_>) -> Option<()> {
        if let Some(v) = self.blksize {
            w.cstr(b"blksize")?;
            w.decimal(v.into())?;
        }
        if let Some(v) = self.timeout_s {
            w.cstr(b"timeout")?;
            w.decimal(v.into())?;
        }
        if let Some(v) = self.tsize_bytes {
            w.cstr(b"tsize")?;
            w.decimal(v)?;
        }
        if let Some(v) = self.windowsize {
            w.cstr(b"windowsize")?;
            w.decimal(v.into())?;
        }
        Some(())
    }
}

pub fn encode_oack(buf: &mut [u8], options: &OptionValues) -> Option<usize> {
    let mut w = Writer::new(buf);
    w.u16(OP_OACK)?;
    options.encode(&mut w)?;
    Some(w.len())
}

pub fn encode_request(
    buf: &mut [u8],
    kind: RequestKind,
    filename: &[u8],
    mode: Mode,
    options: &OptionValues,
) -> Option<usize> {
    let mut w = Writer::new(buf);
    w.u16(match kind {
        RequestKind::Read => OP_RRQ,
        RequestKind::Write => OP_WRQ,
    })?;
    w.cstr(filename)?;
    w.cstr(mode.as_str().as_bytes())?;
    options.encode(&mut w)?;
    Some(w.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1350_rrq_bytes() {
        let raw = b"\x00\x01boot/pxelinux.0\x00octet\x00";
        let Ok(Packet::Request(r)) = Packet::parse(raw) else {
            panic!("not a request")
        };
        assert_eq!(r.kind, RequestKind::Read);
        assert_eq!(r.filename, b"boot/pxelinux.0");
        assert_eq!(r.mode, Mode::Octet);
        assert!(r.options.is_empty());

        let mut buf = [0u8; 64];
        let n = encode_request(
            &mut buf,
            RequestKind::Read,
            b"boot/pxelinux.0",
            Mode::Octet,
            &OptionValues::default(),
        )
        .unwrap();
        assert_eq!(&buf[..n], raw);
    }

    #[test]
    fn mode_is_case_insensitive_and_mail_is_refused() {
        let raw = b"\x00\x02f\x00NetASCII\x00";
        assert!(matches!(
            Packet::parse(raw),
            Ok(Packet::Request(Request {
                mode: Mode::Netascii,
                kind: RequestKind::Write,
                ..
            }))
        ));
        assert_eq!(
            Packet::parse(b"\x00\x01f\x00mail\x00"),
            Err(WireError::UnknownMode)
        );
        assert_eq!(
            Packet::parse(b"\x00\x01f\x00bogus\x00"),
            Err(WireError::UnknownMode)
        );
    }

    #[test]
    fn unterminated_requests_are_refused() {
        assert_eq!(Packet::parse(b"\x00\x01file"), Err(WireError::Unterminated));
        assert_eq!(
            Packet::parse(b"\x00\x01file\x00octet"),
            Err(WireError::Unterminated)
        );
        assert_eq!(
            Packet::parse(b"\x00\x01file\x00octet\x00blksize\x001024"),
            Err(WireError::Unterminated)
        );
        assert_eq!(
            Packet::parse(b"\x00\x01\x00octet\x00"),
            Err(WireError::EmptyFilename)
        );
    }

    #[test]
    fn short_and_unknown_packets() {
        assert_eq!(Packet::parse(b""), Err(WireError::Truncated));
        assert_eq!(Packet::parse(b"\x00"), Err(WireError::Truncated));
        assert_eq!(Packet::parse(b"\x00\x04\x00"), Err(WireError::Truncated));
        assert_eq!(Packet::parse(b"\x00\x03\x00"), Err(WireError::Truncated));
        assert_eq!(Packet::parse(b"\x00\x05\x00"), Err(WireError::Truncated));
        assert_eq!(Packet::parse(b"\x00\x09"), Err(WireError::UnknownOpcode(9)));
        assert_eq!(
            Packet::parse(b"\x00\x00\x00\x00"),
            Err(WireError::UnknownOpcode(0))
        );
    }

    #[test]
    fn data_ack_error_vectors() {
        assert_eq!(
            Packet::parse(b"\x00\x03\x00\x01abc"),
            Ok(Packet::Data {
                block: 1,
                payload: b"abc"
            })
        );
        assert_eq!(
            Packet::parse(b"\x00\x03\xff\xff"),
            Ok(Packet::Data {
                block: 65535,
                payload: b""
            })
        );
        assert_eq!(
            Packet::parse(b"\x00\x04\x12\x34"),
            Ok(Packet::Ack { block: 0x1234 })
        );
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x08User aborted the transfer\x00"),
            Ok(Packet::Error {
                code: 8,
                message: b"User aborted the transfer"
            })
        );
        // No NUL on the message: still an ERROR.
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x01nope"),
            Ok(Packet::Error {
                code: 1,
                message: b"nope"
            })
        );

        let mut buf = [0u8; 32];
        let n = encode_ack(&mut buf, 0xbeef).unwrap();
        assert_eq!(&buf[..n], b"\x00\x04\xbe\xef");
        let n = encode_error(&mut buf, ErrorCode::FileNotFound, "File not found").unwrap();
        assert_eq!(&buf[..n], b"\x00\x05\x00\x01File not found\x00");
        let n = encode_data_header(&mut buf, 7).unwrap();
        assert_eq!(&buf[..n], b"\x00\x03\x00\x07");
    }

    #[test]
    fn rfc2347_option_vectors() {
        // The example from RFC 2347 §Example (blksize + tsize, with the OACK).
        let rrq = b"\x00\x01foobar\x00octet\x00blksize\x001432\x00tsize\x000\x00";
        let Ok(Packet::Request(r)) = Packet::parse(rrq) else {
            panic!("not a request")
        };
        let opts: Vec<_> = OptionIter::new(r.options).collect();
        assert_eq!(
            opts,
            vec![(&b"blksize"[..], &b"1432"[..]), (&b"tsize"[..], &b"0"[..])]
        );

        let mut buf = [0u8; 64];
        let values = OptionValues {
            blksize: Some(1432),
            tsize_bytes: Some(1_000_000_000_000),
            ..OptionValues::default()
        };
        let n = encode_oack(&mut buf, &values).unwrap();
        assert_eq!(
            &buf[..n],
            b"\x00\x06blksize\x001432\x00tsize\x001000000000000\x00"
        );
        assert_eq!(
            Packet::parse(&buf[..n]),
            Ok(Packet::Oack {
                options: &buf[2..n]
            })
        );
    }

    #[test]
    fn option_iter_drops_a_dangling_name() {
        let opts: Vec<_> = OptionIter::new(b"blksize\x00512\x00tsize\x00").collect();
        assert_eq!(opts, vec![(&b"blksize"[..], &b"512"[..])]);
    }

    #[test]
    fn encoders_refuse_short_buffers() {
        let mut buf = [0u8; 3];
        assert_eq!(encode_ack(&mut buf, 1), None);
        assert_eq!(encode_error(&mut buf, ErrorCode::NotDefined, "x"), None);
        // A message that is bytes ends at an inner NUL.
        let mut big = [0u8; 32];
        let n = encode_error_bytes(&mut big, ErrorCode::AccessViolation, b"no\xff\0x").unwrap();
        assert_eq!(&big[..n], b"\0\x05\0\x02no\xff\0");
        let mut small = [0u8; 10];
        let values = OptionValues {
            tsize_bytes: Some(u64::MAX),
            ..OptionValues::default()
        };
        assert_eq!(encode_oack(&mut small, &values), None);
    }

    #[test]
    fn parse_never_panics_on_any_short_input() {
        // Exhaustive over every 0..=3-byte input, plus a seeded sweep of longer ones.
        for len in 0..=3usize {
            for v in 0..(1u32 << (8 * len)) {
                let bytes = v.to_be_bytes();
                let _ = Packet::parse(&bytes[4 - len..]);
            }
        }
        // The sweep builds datagrams from a small opcode, a filename, a mode
        // and options, each field a token (modes in any case, option names
        // and numbers, stray bytes) followed, most of the time, by its NUL:
        // random bytes almost never spell a mode, so they would never get
        // past it to the options.
        const MODES: &[&[u8]] = &[b"octet", b"OcTeT", b"netascii", b"NETASCII", b"mail"];
        const TOKENS: &[&[u8]] = &[
            b"blksize",
            b"BLKSIZE",
            b"tsize",
            b"timeout",
            b"windowsize",
            b"0",
            b"7",
            b"512",
            b"1432",
            b"65535",
            b"65536",
            b"99999999999999999999999",
            b"-1",
            b"f",
            b"",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let limits = crate::proto::options::NegotiationLimits {
            blksize_max: BLKSIZE_MAX,
            windowsize_max: 64,
            upload_bytes_max: 1 << 30,
            refused: crate::proto::options::Refused::NONE,
        };
        let (mut requests, mut with_options, mut pairs, mut granted) = (0u32, 0u32, 0u32, 0u32);
        let mut buf = Vec::with_capacity(128);
        for _ in 0..200_000 {
            buf.clear();
            let r = next();
            // Mostly requests, sometimes any other small opcode.
            let opcode = if r & 3 != 0 {
                1 + (r >> 2) % 2
            } else {
                (r >> 2) % 8
            };
            buf.extend_from_slice(&(opcode as u16).to_be_bytes());
            for field in 0..2 + (r >> 8) % 10 {
                let t = next();
                if t % 16 == 0 {
                    buf.push((t >> 8) as u8); // any byte
                } else if field == 1 && t % 16 < 14 {
                    buf.extend_from_slice(MODES[(t >> 8) as usize % MODES.len()]);
                } else {
                    buf.extend_from_slice(TOKENS[(t >> 8) as usize % TOKENS.len()]);
                }
                if (t >> 40) % 16 != 0 {
                    buf.push(0);
                }
            }
            if let Ok(Packet::Request(r)) = Packet::parse(&buf) {
                requests += 1;
                with_options += u32::from(!r.options.is_empty());
                pairs += OptionIter::new(r.options).count() as u32;
                if let Ok(n) = crate::proto::options::negotiate(&r, Some(1 << 20), &limits) {
                    granted += u32::from(!n.oack.is_empty());
                }
            }
        }
        // The sweep does reach the option parser and negotiation, often
        // (about 83 000 requests, 74 000 with options, 155 000 pairs, 9 900
        // with options granted).
        let seen = format!(
            "{requests} requests, {with_options} with options, {pairs} pairs, {granted} granted"
        );
        assert!(requests > 40_000, "{seen}");
        assert!(with_options > 30_000, "{seen}");
        assert!(pairs > 60_000, "{seen}");
        assert!(granted > 4_000, "{seen}");
    }
}
