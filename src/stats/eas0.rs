//! eAS0: the stats endpoint's wire protocol, as pure code (no sockets, no
//! threads, no clock). Bytes in, bytes and events out; the TCP listener
//! and the `uftpd-stat` client move the bytes. The protocol itself, field
//! by field with byte-exact examples, is `docs/eas0.md`; this page is the
//! API.
//!
//! # Frames
//!
//! Every message travels in one frame: the 4 ASCII bytes `eAS0`, a
//! little-endian u32 body length, a little-endian u16 tag, then the body
//! (at most [`FRAME_BODY_MAX`] bytes). That header is the one seen in the
//! capture of an "eFaceServer" stats session. The client numbers its
//! requests with the tag and the server echoes it in the answer; tag 0 is
//! the server's, for frames that answer no request.
//!
//! [`Frame::decode`] is incremental: the caller appends what it read from
//! TCP to a buffer and calls it until it says [`Decoded::Incomplete`].
//! A bad magic is reported at its first wrong byte (so `GET /` is told
//! apart from eAS0 at byte 0), an oversized length from the header alone,
//! before any of its body arrives, so no buffer ever needs to hold more
//! than [`FRAME_LEN_MAX`] bytes for one frame.

#![forbid(unsafe_code)]

use std::fmt;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"eAS0";
/// Magic, u32 body length, u16 tag.
pub const FRAME_HEADER_LEN: usize = 10;
/// The largest body a frame may carry (a REPLY's report must fit in it).
pub const FRAME_BODY_MAX: usize = 64 * 1024;
/// The largest whole frame.
pub const FRAME_LEN_MAX: usize = FRAME_HEADER_LEN + FRAME_BODY_MAX;

/// One decoded frame, borrowing its body from the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Chosen by the client per request, echoed by the server.
    pub tag: u16,
    pub body: &'a [u8],
}

/// What [`Frame::decode`] found at the front of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not a whole frame yet: at least `needed` more bytes must arrive
    /// (exactly that many once the header is in).
    Incomplete { needed: usize },
    /// A whole frame, the first `len` bytes of the buffer: drop them once
    /// the frame has been handled.
    Frame { frame: Frame<'a>, len: usize },
}

/// A stream that cannot be eAS0 frames: answer and close, since no later
/// frame boundary can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Byte `offset` of the header is `byte`, not the magic's.
    BadMagic { offset: usize, byte: u8 },
    /// The header announces a body over [`FRAME_BODY_MAX`].
    TooLong { len: u32 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::BadMagic { offset, byte } => write!(
                f,
                "not an eAS0 frame: byte {offset} is 0x{byte:02x} where the magic \"eAS0\" has 0x{:02x}",
                MAGIC.get(offset).copied().unwrap_or(0)
            ),
            FrameError::TooLong { len } => write!(
                f,
                "frame body of {len} bytes is over the {FRAME_BODY_MAX}-byte limit"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

impl<'a> Frame<'a> {
    /// Decodes the frame at the front of `buf`, if it is all there.
    pub fn decode(buf: &'a [u8]) -> Result<Decoded<'a>, FrameError> {
        if let Some((offset, (&byte, _))) = buf
            .iter()
            .zip(MAGIC.iter())
            .enumerate()
            .find(|(_, (got, want))| got != want)
        {
            return Err(FrameError::BadMagic { offset, byte });
        }
        let Some(header) = buf
            .get(..FRAME_HEADER_LEN)
            .and_then(|h| <[u8; FRAME_HEADER_LEN]>::try_from(h).ok())
        else {
            return Ok(Decoded::Incomplete {
                needed: FRAME_HEADER_LEN - buf.len(),
            });
        };
        let [_, _, _, _, l0, l1, l2, l3, t0, t1] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let tag = u16::from_le_bytes([t0, t1]);
        let body_len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= FRAME_BODY_MAX)
            .ok_or(FrameError::TooLong { len })?;
        let total = FRAME_HEADER_LEN + body_len;
        Ok(match buf.get(FRAME_HEADER_LEN..total) {
            Some(body) => Decoded::Frame {
                frame: Frame { tag, body },
                len: total,
            },
            None => Decoded::Incomplete {
                needed: total - buf.len(),
            },
        })
    }

    /// Appends a frame carrying `body` as it is (tests, tools that build
    /// bodies by hand).
    pub fn encode(tag: u16, body: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_frame(tag, out, |w| w.bytes("frame", "body", body))
    }
}

/// Why a message could not be encoded. Nothing is appended then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The body would be `body_len` bytes, over [`FRAME_BODY_MAX`], once
    /// `field` of `message` is written.
    TooLong {
        message: &'static str,
        field: &'static str,
        body_len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLong {
                message,
                field,
                body_len,
            } => write!(
                f,
                "{message} {field}: the body would be {body_len} bytes, over the {FRAME_BODY_MAX}-byte frame limit"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends the body a frame at a time, refusing to pass [`FRAME_BODY_MAX`].
struct BodyWriter<'v> {
    out: &'v mut Vec<u8>,
    body_start: usize,
}

impl BodyWriter<'_> {
    fn body_len(&self) -> usize {
        self.out.len() - self.body_start
    }

    fn bytes(
        &mut self,
        message: &'static str,
        field: &'static str,
        src: &[u8],
    ) -> Result<(), EncodeError> {
        let len = self.body_len();
        if src.len() > FRAME_BODY_MAX.saturating_sub(len) {
            return Err(EncodeError::TooLong {
                message,
                field,
                body_len: len.saturating_add(src.len()),
            });
        }
        self.out.extend_from_slice(src);
        Ok(())
    }
}

/// Appends header + body, then writes the length in; on error truncates
/// `out` back to where it was.
fn encode_frame(
    tag: u16,
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&tag.to_le_bytes());
    let mut w = BodyWriter {
        out,
        body_start: start + FRAME_HEADER_LEN,
    };
    if let Err(e) = body(&mut w) {
        out.truncate(start);
        return Err(e);
    }
    // The writer keeps the body within FRAME_BODY_MAX, so it fits a u32.
    let len = u32::try_from(w.body_len()).unwrap_or(u32::MAX);
    if let Some(slot) = out.get_mut(start + 4..start + 8) {
        slot.copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three request frames of the capture, byte for byte
    /// (`../shared/reference/eas0-capture.txt`, "request received").
    const CAPTURE_LOGIN: &[u8] = b"eAS0E\x00\x00\x00\x01\x00\x00\x00\x01\x03\x00\x00\x00ams\x00\x00\x02\x02\x00\x00\x00pw\x00\x04HOST\t\x00\x00\x00localhost\x00\x03PID\x05\x00\x00\x0011254\x00\x03APP\x08\x00\x00\x00gss_open";
    const CAPTURE_COMMAND: &[u8] = b"eAS0\x8f\x00\x00\x00\x05\x00\x00\x00\n\x0c\x00\x00\x00Command Desc\x00\x00\x01\x08\x00\x00\x00apashnin\x00\x04HOST\t\x00\x00\x00localhost\x02\x00\r\x01\x00\x00\x00\x00\x05\x00\x04K\x00\x00\x00\x02\x00\x05\x02\x00\x00\x00\xff\x01\x01\x00\x06\x01\x00\x00\x00\x00\x03\x00\x07\x04\x00\x00\x00\x02\x00\x00\x00\x02\x05ERROR\x02\x00\x00\x00\x00\x00\x02\x00\r\x02\x00\x00\x00\x00\x00\x03\x08DATATIME\x04\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00\x00\x00\x00";
    const CAPTURE_LAST: &[u8] = b"eAS0\t\x00\x00\x00\x06\x00\x02\x00\x04\x02\x00\x00\x00\x01\x00";

    fn whole(buf: &[u8]) -> (Frame<'_>, usize) {
        match Frame::decode(buf) {
            Ok(Decoded::Frame { frame, len }) => (frame, len),
            other => panic!("not a whole frame: {other:?}"),
        }
    }

    #[test]
    fn capture_headers_parse_byte_for_byte() {
        // (frame, body length, tag), as the capture's header fields say and
        // the tcpdump segment lengths (79, 153, 19) confirm.
        for (raw, body_len, tag) in [
            (CAPTURE_LOGIN, 69, 1),
            (CAPTURE_COMMAND, 143, 5),
            (CAPTURE_LAST, 9, 6),
        ] {
            assert_eq!(raw.len(), FRAME_HEADER_LEN + body_len);
            let (frame, len) = whole(raw);
            assert_eq!(len, raw.len(), "the frame is the whole segment");
            assert_eq!(frame.tag, tag);
            assert_eq!(frame.body, &raw[FRAME_HEADER_LEN..]);
            // Every shorter prefix asks for exactly the missing bytes once
            // the header is in, and for the rest of the header before.
            for cut in 0..raw.len() {
                let needed = if cut < FRAME_HEADER_LEN {
                    FRAME_HEADER_LEN - cut
                } else {
                    raw.len() - cut
                };
                assert_eq!(
                    Frame::decode(&raw[..cut]),
                    Ok(Decoded::Incomplete { needed }),
                    "cut at {cut}"
                );
            }
            // And our encoder writes the same header for the same body.
            let mut out = Vec::new();
            Frame::encode(tag, frame.body, &mut out).unwrap();
            assert_eq!(out, raw);
        }
        // The three back to back, as one stream.
        let stream = [CAPTURE_LOGIN, CAPTURE_COMMAND, CAPTURE_LAST].concat();
        let mut at = 0;
        let mut tags = Vec::new();
        while at < stream.len() {
            let (frame, len) = whole(&stream[at..]);
            tags.push(frame.tag);
            at += len;
        }
        assert_eq!(tags, [1, 5, 6]);
    }

    #[test]
    fn bad_magic_is_refused_at_its_first_wrong_byte() {
        for offset in 0..4 {
            let mut raw = CAPTURE_LAST.to_vec();
            raw[offset] ^= 0x20;
            let byte = raw[offset];
            // Decided as soon as the wrong byte is in, whatever follows.
            for cut in offset + 1..=raw.len() {
                assert_eq!(
                    Frame::decode(&raw[..cut]),
                    Err(FrameError::BadMagic { offset, byte })
                );
            }
            // A right prefix alone is only incomplete.
            assert!(matches!(
                Frame::decode(&raw[..offset]),
                Ok(Decoded::Incomplete { .. })
            ));
        }
        assert_eq!(
            Frame::decode(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::BadMagic {
                offset: 0,
                byte: b'G'
            })
        );
        let e = Frame::decode(b"eAs0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "not an eAS0 frame: byte 2 is 0x73 where the magic \"eAS0\" has 0x53"
        );
    }

    #[test]
    fn oversized_lengths_are_refused_from_the_header_alone() {
        for len in [FRAME_BODY_MAX as u32 + 1, 1 << 20, u32::MAX - 9, u32::MAX] {
            let mut raw = MAGIC.to_vec();
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&7u16.to_le_bytes());
            assert_eq!(Frame::decode(&raw), Err(FrameError::TooLong { len }));
        }
        assert_eq!(
            FrameError::TooLong { len: 65537 }.to_string(),
            "frame body of 65537 bytes is over the 65536-byte limit"
        );
        // The limit itself is allowed.
        let body = vec![0u8; FRAME_BODY_MAX];
        let mut out = Vec::new();
        Frame::encode(9, &body, &mut out).unwrap();
        assert_eq!(out.len(), FRAME_LEN_MAX);
        assert_eq!(
            Frame::decode(&out[..FRAME_HEADER_LEN]),
            Ok(Decoded::Incomplete {
                needed: FRAME_BODY_MAX
            })
        );
        let (frame, len) = whole(&out);
        assert_eq!(
            (frame.tag, frame.body.len(), len),
            (9, FRAME_BODY_MAX, FRAME_LEN_MAX)
        );
        // One more byte is refused, and nothing is appended.
        let mut out = b"kept".to_vec();
        let e = Frame::encode(9, &vec![0u8; FRAME_BODY_MAX + 1], &mut out).unwrap_err();
        assert!(matches!(e, EncodeError::TooLong { .. }));
        assert_eq!(out, b"kept");
    }
}
