//! Option negotiation (RFC 2347 framework; 2348 blksize; 2349 timeout and
//! tsize; 7440 windowsize): what the server accepts and echoes in its OACK.

use super::refusal::{Cause, Refusal};
use super::wire::{
    BLKSIZE_DEFAULT, BLKSIZE_MAX, BLKSIZE_MIN, ErrorCode, OptionIter, OptionValues, Request,
    RequestKind,
};

/// Requests rarely carry more than five options; the rest are ignored so a
/// crafted request cannot make us walk an unbounded list.
pub const OPTIONS_PARSED_MAX: usize = 16;

/// The largest window granted, whatever the operator allows: block numbers
/// are 16 bits, so an ACK is only unambiguous within 32768 blocks of the
/// highest block sent (see [`super::block::unwrap`]).
pub const WINDOWSIZE_MAX: u16 = 32_768;

/// Bytes of IPv4 (20), UDP (8) and TFTP DATA (4) headers around a block.
pub const IPV4_DATA_OVERHEAD_BYTES: u32 = 32;
/// Bytes of IPv6 (40), UDP (8) and TFTP DATA (4) headers around a block.
pub const IPV6_DATA_OVERHEAD_BYTES: u32 = 52;

/// The largest blksize whose DATA fits one unfragmented datagram on a
/// link of `mtu_bytes`: MTU − 32 for IPv4, − 52 for IPv6, within RFC
/// 2348's 8..=65464. Many PXE ROMs cannot reassemble fragments, so a
/// client asking for more than its link carries is better served by this.
pub fn blksize_for_mtu(mtu_bytes: u32, ipv6: bool) -> u16 {
    let overhead = if ipv6 {
        IPV6_DATA_OVERHEAD_BYTES
    } else {
        IPV4_DATA_OVERHEAD_BYTES
    };
    let fits = mtu_bytes.saturating_sub(overhead);
    fits.clamp(u32::from(BLKSIZE_MIN), u32::from(BLKSIZE_MAX)) as u16
}

/// The operator's caps that negotiation applies.
#[derive(Clone, Copy, Debug)]
pub struct NegotiationLimits {
    pub blksize_max: u16,
    pub windowsize_max: u16,
    pub upload_bytes_max: u64,
    /// Options never negotiated (`--refuse`, tftpd-hpa's `-r`).
    pub refused: Refused,
}

/// Options the operator will not negotiate: a refused option is read as
/// an unknown one (left out of the OACK, no effect on the transfer), as
/// tftpd-hpa's `-r` does. For clients that mishandle one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refused {
    pub blksize: bool,
    pub tsize: bool,
    pub timeout: bool,
    pub windowsize: bool,
}

impl Refused {
    pub const NONE: Refused = Refused {
        blksize: false,
        tsize: false,
        timeout: false,
        windowsize: false,
    };
}

/// The parameters a transfer runs with, and the OACK that announces them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// The peer's requested retransmit timeout, echoed exactly (RFC 2349).
    pub timeout_s: Option<u8>,
    /// Options to echo. Empty means: no OACK, reply with DATA 1 or ACK 0.
    pub oack: OptionValues,
}

impl Negotiated {
    pub const DEFAULT: Negotiated = Negotiated {
        blksize: BLKSIZE_DEFAULT,
        windowsize: 1,
        timeout_s: None,
        oack: OptionValues {
            blksize: None,
            timeout_s: None,
            tsize_bytes: None,
            windowsize: None,
        },
    };
}

/// Decimal digits only, no sign, no overflow.
pub fn parse_decimal(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    raw.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Decides the transfer parameters for `request`.
///
/// `read_size_bytes` is the size to announce for an RRQ `tsize`, or `None`
/// when it is not known up front (netascii): then `tsize` is left out.
pub fn negotiate(
    request: &Request<'_>,
    read_size_bytes: Option<u64>,
    limits: &NegotiationLimits,
) -> Result<Negotiated, Refusal> {
    debug_assert!(limits.blksize_max >= BLKSIZE_MIN && limits.windowsize_max >= 1);
    let mut out = Negotiated::DEFAULT;
    let refused = limits.refused;
    for (name, value) in OptionIter::new(request.options).take(OPTIONS_PARSED_MAX) {
        let number = parse_decimal(value);
        let is = |option: &[u8], off: bool| !off && name.eq_ignore_ascii_case(option);
        if is(b"blksize", refused.blksize) && out.oack.blksize.is_none() {
            // Text is ignored (as tftpd-hpa does); a number below 8 is refused.
            let Some(v) = number else { continue };
            if v < u64::from(BLKSIZE_MIN) {
                return Err(Refusal::new(
                    ErrorCode::OptionRefused,
                    "blksize below 8",
                    Cause::Option,
                ));
            }
            let v = v
                .min(u64::from(BLKSIZE_MAX))
                .min(u64::from(limits.blksize_max)) as u16;
            out.blksize = v;
            out.oack.blksize = Some(v);
        } else if is(b"timeout", refused.timeout) && out.oack.timeout_s.is_none() {
            // Must be echoed unchanged, so out-of-range values are ignored.
            if let Some(v @ 1..=255) = number {
                out.timeout_s = Some(v as u8);
                out.oack.timeout_s = Some(v as u8);
            }
        } else if is(b"tsize", refused.tsize) && out.oack.tsize_bytes.is_none() {
            let Some(v) = number else { continue };
            match request.kind {
                RequestKind::Read => out.oack.tsize_bytes = read_size_bytes,
                RequestKind::Write if v > limits.upload_bytes_max => {
                    return Err(Refusal::new(
                        ErrorCode::DiskFull,
                        "File larger than the upload limit",
                        Cause::Disk,
                    ));
                }
                RequestKind::Write => out.oack.tsize_bytes = Some(v),
            }
        } else if is(b"windowsize", refused.windowsize)
            && out.oack.windowsize.is_none()
            && let Some(v @ 1..=65535) = number
        {
            let v = v
                .min(u64::from(limits.windowsize_max))
                .min(u64::from(WINDOWSIZE_MAX)) as u16;
            out.windowsize = v;
            out.oack.windowsize = Some(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod mtu_tests {
    use super::*;

    #[test]
    fn blksize_for_common_mtus() {
        assert_eq!(blksize_for_mtu(1500, false), 1468);
        assert_eq!(blksize_for_mtu(1500, true), 1448);
        assert_eq!(blksize_for_mtu(9000, false), 8968);
        // Loopback's 65536 is more than RFC 2348 allows.
        assert_eq!(blksize_for_mtu(65_536, false), BLKSIZE_MAX);
        assert_eq!(blksize_for_mtu(0, true), BLKSIZE_MIN);
        assert_eq!(blksize_for_mtu(u32::MAX, true), BLKSIZE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::Mode;

    const LIMITS: NegotiationLimits = NegotiationLimits {
        blksize_max: BLKSIZE_MAX,
        windowsize_max: 64,
        upload_bytes_max: 1 << 30,
        refused: Refused::NONE,
    };

    fn req(kind: RequestKind, options: &[u8]) -> Request<'_> {
        Request {
            kind,
            filename: b"f",
            mode: Mode::Octet,
            options,
        }
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b"abc"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b" 1"), None);
    }

    #[test]
    fn rfc2347_example_rrq() {
        let r = req(RequestKind::Read, b"blksize\x001432\x00tsize\x000\x00");
        let n = negotiate(&r, Some(2_000_000), &LIMITS).unwrap();
        assert_eq!(n.blksize, 1432);
        assert_eq!(n.oack.blksize, Some(1432));
        assert_eq!(n.oack.tsize_bytes, Some(2_000_000));
        assert_eq!(n.windowsize, 1);
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_options_ignored() {
        let r = req(
            RequestKind::Read,
            b"BlkSize\x001024\x00msftwindow\x0031416\x00WINDOWSIZE\x004\x00",
        );
        let n = negotiate(&r, Some(1), &LIMITS).unwrap();
        assert_eq!(n.oack.blksize, Some(1024));
        assert_eq!(n.oack.windowsize, Some(4));
        assert_eq!(n.oack.tsize_bytes, None);
    }

    #[test]
    fn blksize_rules() {
        let cap = |opts: &[u8]| negotiate(&req(RequestKind::Read, opts), Some(0), &LIMITS);
        assert_eq!(cap(b"blksize\x0070000\x00").unwrap().blksize, 65464);
        assert_eq!(cap(b"blksize\x008\x00").unwrap().blksize, 8);
        assert_eq!(
            cap(b"blksize\x007\x00").unwrap_err().code,
            ErrorCode::OptionRefused
        );
        assert_eq!(
            cap(b"blksize\x000\x00").unwrap_err().code,
            ErrorCode::OptionRefused
        );
        assert_eq!(cap(b"blksize\x00abc\x00").unwrap(), Negotiated::DEFAULT);
        assert_eq!(cap(b"blksize\x00-1\x00").unwrap(), Negotiated::DEFAULT);
        let low = NegotiationLimits {
            blksize_max: 1468,
            ..LIMITS
        };
        let n = negotiate(&req(RequestKind::Read, b"blksize\x0065464\x00"), None, &low).unwrap();
        assert_eq!(n.oack.blksize, Some(1468));
    }

    #[test]
    fn timeout_is_echoed_exactly_or_ignored() {
        let t = |opts: &[u8]| negotiate(&req(RequestKind::Read, opts), None, &LIMITS).unwrap();
        assert_eq!(t(b"timeout\x001\x00").oack.timeout_s, Some(1));
        assert_eq!(t(b"timeout\x00255\x00").oack.timeout_s, Some(255));
        assert_eq!(t(b"timeout\x000\x00"), Negotiated::DEFAULT);
        assert_eq!(t(b"timeout\x00256\x00"), Negotiated::DEFAULT);
    }

    #[test]
    fn tsize_rules() {
        let big = 5_000_000_000u64; // over 32 bits
        let r = req(RequestKind::Read, b"tsize\x000\x00");
        assert_eq!(
            negotiate(&r, Some(big), &LIMITS).unwrap().oack.tsize_bytes,
            Some(big)
        );
        // netascii: size unknown, the option is left out.
        assert_eq!(negotiate(&r, None, &LIMITS).unwrap(), Negotiated::DEFAULT);
        let w = req(RequestKind::Write, b"tsize\x001000\x00");
        assert_eq!(
            negotiate(&w, None, &LIMITS).unwrap().oack.tsize_bytes,
            Some(1000)
        );
        let w = req(RequestKind::Write, b"tsize\x002000000000\x00");
        assert_eq!(
            negotiate(&w, None, &LIMITS).unwrap_err().code,
            ErrorCode::DiskFull
        );
    }

    #[test]
    fn windowsize_rules() {
        let w = |opts: &[u8]| negotiate(&req(RequestKind::Read, opts), None, &LIMITS).unwrap();
        assert_eq!(w(b"windowsize\x008\x00").windowsize, 8);
        assert_eq!(w(b"windowsize\x0065535\x00").oack.windowsize, Some(64));
        assert_eq!(w(b"windowsize\x000\x00"), Negotiated::DEFAULT);
        assert_eq!(w(b"windowsize\x0065536\x00"), Negotiated::DEFAULT);
        // Whatever the operator allows, never past what 16-bit blocks can tell apart.
        let wide = NegotiationLimits {
            windowsize_max: u16::MAX,
            ..LIMITS
        };
        let n = negotiate(
            &req(RequestKind::Read, b"windowsize\x0040000\x00"),
            None,
            &wide,
        );
        assert_eq!(n.unwrap().windowsize, WINDOWSIZE_MAX);
    }

    /// A refused option is an unknown one: not echoed, no effect, and no
    /// refusal of its own (a blksize below 8 or a tsize over the upload
    /// limit is then not an error either); the others still negotiate.
    #[test]
    fn refused_options_are_never_negotiated() {
        let all = b"blksize\x001432\x00tsize\x000\x00timeout\x003\x00windowsize\x008\x00";
        let with = |refused: Refused, kind, opts: &[u8]| {
            let limits = NegotiationLimits { refused, ..LIMITS };
            negotiate(&req(kind, opts), Some(1000), &limits)
        };
        let n = with(
            Refused {
                tsize: true,
                ..Refused::NONE
            },
            RequestKind::Read,
            all,
        )
        .unwrap();
        assert_eq!(n.oack.tsize_bytes, None);
        assert_eq!((n.blksize, n.windowsize, n.timeout_s), (1432, 8, Some(3)));

        let n = with(
            Refused {
                blksize: true,
                windowsize: true,
                ..Refused::NONE
            },
            RequestKind::Read,
            all,
        )
        .unwrap();
        assert_eq!((n.blksize, n.windowsize), (BLKSIZE_DEFAULT, 1));
        assert_eq!((n.oack.blksize, n.oack.windowsize), (None, None));
        assert_eq!((n.oack.tsize_bytes, n.timeout_s), (Some(1000), Some(3)));

        let n = with(
            Refused {
                timeout: true,
                ..Refused::NONE
            },
            RequestKind::Read,
            all,
        )
        .unwrap();
        assert_eq!((n.timeout_s, n.oack.timeout_s), (None, None));

        let everything = Refused {
            blksize: true,
            tsize: true,
            timeout: true,
            windowsize: true,
        };
        assert_eq!(
            with(everything, RequestKind::Read, all).unwrap(),
            Negotiated::DEFAULT
        );
        // What would be refused is ignored instead, names in any case.
        assert_eq!(
            with(everything, RequestKind::Read, b"BLKSIZE\x007\x00").unwrap(),
            Negotiated::DEFAULT
        );
        assert_eq!(
            with(
                everything,
                RequestKind::Write,
                b"tsize\x009999999999999\x00"
            )
            .unwrap(),
            Negotiated::DEFAULT
        );
    }

    #[test]
    fn first_occurrence_wins() {
        let r = req(RequestKind::Read, b"blksize\x001024\x00blksize\x00512\x00");
        assert_eq!(negotiate(&r, None, &LIMITS).unwrap().blksize, 1024);
    }
}
