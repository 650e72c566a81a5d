//! eAS0: the stats endpoint's wire protocol, as pure code (no sockets, no
//! threads, no clock). Bytes in, bytes and events out; the TCP listener
//! and the `uftpd-stat` client move the bytes. The protocol itself, field
//! by field with byte-exact examples, is `docs/eas0.md` (a test builds
//! each example and compares it with the document); this page is the API.
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
//!
//! # Messages
//!
//! A body is a type byte and the fields of that [`Message`]: LOGIN,
//! CHALLENGE, AUTH, WELCOME, COMMAND, REPLY, ERROR, CLOSE.
//! [`Message::decode`] borrows from the body and checks every length;
//! anything wrong is a [`BodyError`] that names the message, the field,
//! the body offset and the problem. [`Message::encode`] appends a whole
//! frame to a `Vec<u8>` (the connection's write buffer) and refuses to
//! build anything [`Message::decode`] would refuse. A LOGIN's named fields
//! ([`Fields`]) and a COMMAND's arguments ([`Args`]) are read in place
//! when decoded and given as slices to encode:
//!
//! ```
//! use uftpd::stats::eas0::*;
//!
//! let fields = [Field::text(FIELD_HOST, "pxe1"), Field::text(FIELD_PID, "4242")];
//! let login = Message::Login(Login { user: "ops", fields: Fields::new(&fields) });
//! let mut out = Vec::new();
//! login.encode(1, &mut out).unwrap();
//! let Ok(Decoded::Frame { frame, .. }) = Frame::decode(&out) else { panic!() };
//! let Ok(Message::Login(got)) = Message::decode(frame.body) else { panic!() };
//! assert_eq!((got.user, got.host(), got.app()), ("ops", Some("pxe1"), None));
//! assert_eq!(Message::Login(got), login);
//! ```
//!
//! # Sessions
//!
//! [`ServerSession`] and [`ClientSession`] are the handshake and the
//! command loop as state machines. Each `handle(frame, out)` takes one
//! decoded frame, appends what must be sent to `out` and says what
//! happened. Randomness is the caller's: a session is given its 32-byte
//! [`Nonce`] ([`Nonce::random`] reads one from the kernel), so tests are
//! deterministic.
//!
//! Without a secret: LOGIN → WELCOME. The listener must allow this only on
//! loopback (that rule is the listener's; nothing here knows addresses).
//! With a shared [`Secret`]: LOGIN → CHALLENGE (server nonce) → AUTH
//! (client nonce, client proof) → WELCOME (server proof), each proof an
//! HMAC-SHA256 keyed by the secret over a direction label, both nonces and
//! the user (see [`Secret::proof`]). The server refuses an AUTH whose
//! nonce echoes its own; the client refuses a CHALLENGE that echoes its
//! nonce and any WELCOME without a valid server proof, so it never talks
//! to a server that does not know the secret. Then COMMAND → REPLY any
//! number of times, and CLOSE → CLOSE. Anything out of order draws an
//! ERROR and ends the session.
//!
//! The handshake authenticates both ends; it does not encrypt or sign the
//! frames after it. Someone who can alter the TCP stream can alter the
//! reports: authentication keeps strangers out, it is not a secure channel.
//!
//! # The listener's loop
//!
//! ```
//! use uftpd::stats::eas0::*;
//!
//! // One connection. `inbox` holds what was read and not yet decoded,
//! // `outbox` what must be written before anything else is read.
//! let secret = Secret::new(b"a long random shared secret").unwrap();
//! let mut server = ServerSession::with_secret(
//!     7,                      // session id, the listener's choice
//!     "uftpd 0.1.0 stats",    // the welcome line
//!     secret.clone(),
//!     Nonce([0x11; 32]),      // Nonce::random() in real use
//! );
//! # let mut client = ClientSession::with_secret(
//! #     LoginInfo::new("ops"), secret, Nonce([0x22; 32]));
//! # let mut inbox = Vec::new();
//! # client.login(&mut inbox).unwrap();
//! let mut outbox = Vec::new();
//! # let mut reports = 0;
//! # for _ in 0..4 {
//! // ... append what the socket read to `inbox`, then:
//! let mut used = 0;
//! let close = loop {
//!     match Frame::decode(&inbox[used..]) {
//!         Ok(Decoded::Incomplete { .. }) => break false, // read more
//!         Ok(Decoded::Frame { frame, len }) => {
//!             used += len;
//!             match server.handle(frame, &mut outbox) {
//!                 ServerEvent::Command { tag, command } => {
//!                     let (status, text) = match command.word {
//!                         "report" => (ReplyStatus::OK, "eAss---Srvr: ...\n"),
//!                         _ => (ReplyStatus::UNKNOWN_COMMAND, "unknown command"),
//!                     };
//!                     # reports += 1;
//!                     server.reply(tag, status, text, &mut outbox).unwrap();
//!                 }
//!                 ServerEvent::LoggedIn => {
//!                     let peer = server.peer().unwrap(); // log it
//!                     # assert_eq!(peer.user, "ops");
//!                 }
//!                 ServerEvent::Continue => {}
//!                 // Flush `outbox`, then close.
//!                 ServerEvent::Closed
//!                 | ServerEvent::Refused { .. }
//!                 | ServerEvent::PeerError { .. }
//!                 | ServerEvent::Ignored => break true,
//!             }
//!         }
//!         Err(bad) => {
//!             server.refuse_frame(&bad, &mut outbox); // flush, close
//!             break true;
//!         }
//!     }
//! };
//! inbox.drain(..used);
//! // ... write `outbox` to the socket (and clear it); close if `close`.
//! # let (mut cin, mut cused) = (std::mem::take(&mut outbox), 0);
//! # while let Ok(Decoded::Frame { frame, len }) = Frame::decode(&cin[cused..]) {
//! #     cused += len;
//! #     match client.handle(frame, &mut inbox) {
//! #         ClientEvent::Welcome { .. } => { client.command("report", &[], &mut inbox).unwrap(); }
//! #         ClientEvent::Reply { .. } => { client.close(&mut inbox).unwrap(); }
//! #         _ => {}
//! #     }
//! # }
//! # cin.clear();
//! # if close { break; }
//! # }
//! # assert_eq!(reports, 1);
//! ```
//!
//! The listener also refuses on its own account, with
//! [`ServerSession::refuse`]: [`ErrorCode::BUSY`] when it has too many
//! connections, [`ErrorCode::IDLE_TIMEOUT`], [`ErrorCode::SHUTTING_DOWN`].
//! A connection that ends in the middle of a frame needs no answer: the
//! peer is gone.
//!
//! # The client's loop
//!
//! [`ClientSession::login`] appends the LOGIN; each frame read goes to
//! [`ClientSession::handle`] (and anything it appends, an AUTH or an
//! ERROR, is written back). [`ClientEvent::Welcome`] means the session is
//! open: [`ClientSession::command`] sends a COMMAND and the answer comes
//! back as [`ClientEvent::Reply`]; [`ClientSession::close`] ends it and
//! [`ClientEvent::Closed`] confirms. One request is outstanding at a time.
//! [`ClientEvent::Failed`] carries a [`ClientError`] whose `Display` is a
//! sentence for the operator ("wrong secret?"); write out whatever was
//! appended, then close.

#![forbid(unsafe_code)]

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

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

/// A stream that cannot be eAS0 frames: answer (see
/// [`ServerSession::refuse_frame`]) and close, since no later frame
/// boundary can be trusted.
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
    /// bodies by hand); [`Message::encode`] is the usual way.
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
    /// A named field's key is over 255 bytes (its length is one byte).
    KeyTooLong { len: usize },
    /// The message would not decode (an empty user, HOST twice, ...):
    /// nothing is sent that the other side would refuse.
    Invalid(BodyError),
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
            EncodeError::KeyTooLong { len } => {
                write!(f, "named field key of {len} bytes is over 255")
            }
            EncodeError::Invalid(e) => write!(f, "would not decode: {e}"),
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

    /// A u32-LE length and the bytes.
    fn prefixed(
        &mut self,
        message: &'static str,
        field: &'static str,
        src: &[u8],
    ) -> Result<(), EncodeError> {
        let too_long = EncodeError::TooLong {
            message,
            field,
            body_len: self.body_len().saturating_add(4).saturating_add(src.len()),
        };
        let len = u32::try_from(src.len()).map_err(|_| too_long)?;
        self.bytes(message, field, &len.to_le_bytes())?;
        self.bytes(message, field, src)
    }

    /// Kind byte, key-length byte, key, u32-LE value length, value.
    fn field(&mut self, message: &'static str, field: Field<'_>) -> Result<(), EncodeError> {
        let len = field.key.len();
        let key_len = u8::try_from(len).map_err(|_| EncodeError::KeyTooLong { len })?;
        self.bytes(message, "field kind", &[field.kind])?;
        self.bytes(message, "field key length", &[key_len])?;
        self.bytes(message, "field key", field.key)?;
        self.prefixed(message, "field value", field.value)
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

// ---------------------------------------------------------------------------
// Message bodies
// ---------------------------------------------------------------------------

/// The version a LOGIN announces; a server refuses any other with
/// [`ErrorCode::UNSUPPORTED_VERSION`].
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes in a [`Nonce`].
pub const NONCE_LEN: usize = 32;
/// Bytes in a [`Proof`] (an HMAC-SHA256 output).
pub const PROOF_LEN: usize = 32;
/// The kind byte of a text field (the capture's HOST, PID, APP). Other
/// kinds have the same layout and are carried as opaque bytes.
pub const FIELD_KIND_TEXT: u8 = 0;
/// The named LOGIN fields uftpd reads (kind [`FIELD_KIND_TEXT`]).
pub const FIELD_HOST: &str = "HOST";
pub const FIELD_PID: &str = "PID";
pub const FIELD_APP: &str = "APP";
/// The longest REPLY text a frame can carry (type, status, length: 7 bytes).
pub const REPLY_TEXT_MAX: usize = FRAME_BODY_MAX - 7;
/// The command word for the counters report.
pub const COMMAND_REPORT: &str = "report";

/// An HMAC-SHA256 proof of the secret.
pub type Proof = [u8; PROOF_LEN];

/// The type byte that starts every body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Login = 0x01,
    Challenge = 0x02,
    Auth = 0x03,
    Welcome = 0x04,
    Command = 0x05,
    Reply = 0x06,
    Error = 0x07,
    Close = 0x08,
}

impl MessageType {
    pub const ALL: [MessageType; 8] = [
        MessageType::Login,
        MessageType::Challenge,
        MessageType::Auth,
        MessageType::Welcome,
        MessageType::Command,
        MessageType::Reply,
        MessageType::Error,
        MessageType::Close,
    ];

    pub fn from_byte(byte: u8) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    /// The name used in errors and in docs/eas0.md: `LOGIN`, `AUTH`, ...
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Login => "LOGIN",
            MessageType::Challenge => "CHALLENGE",
            MessageType::Auth => "AUTH",
            MessageType::Welcome => "WELCOME",
            MessageType::Command => "COMMAND",
            MessageType::Reply => "REPLY",
            MessageType::Error => "ERROR",
            MessageType::Close => "CLOSE",
        }
    }
}

/// 32 bytes of randomness that one side contributes to a handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A fresh nonce from the kernel (getrandom(2): no descriptor needed,
    /// and it waits, once, until the kernel's pool has been seeded).
    pub fn random() -> std::io::Result<Nonce> {
        let mut bytes = [0u8; NONCE_LEN];
        getrandom::fill(&mut bytes).map_err(|e| match e.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(e.to_string()),
        })?;
        Ok(Nonce(bytes))
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

/// A reply's status: 0 is success; anything else says why the command
/// produced no report (the text explains). Unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyStatus(pub u16);

impl ReplyStatus {
    pub const OK: ReplyStatus = ReplyStatus(0);
    /// The command word is not one the server knows.
    pub const UNKNOWN_COMMAND: ReplyStatus = ReplyStatus(1);
    /// The command's arguments are wrong.
    pub const BAD_ARGUMENTS: ReplyStatus = ReplyStatus(2);
    /// The command was understood but failed.
    pub const FAILED: ReplyStatus = ReplyStatus(3);

    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            ReplyStatus::OK => "ok",
            ReplyStatus::UNKNOWN_COMMAND => "unknown command",
            ReplyStatus::BAD_ARGUMENTS => "bad arguments",
            ReplyStatus::FAILED => "failed",
            _ => return None,
        })
    }
}

impl fmt::Display for ReplyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "status {}", self.0),
        }
    }
}

/// Why an ERROR ended the session. Unknown values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// A frame or body that does not decode (bad magic, oversized length,
    /// a field that runs off the end, ...).
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    /// A valid message at the wrong point of the session.
    pub const UNEXPECTED: ErrorCode = ErrorCode(2);
    /// A LOGIN with a [`PROTOCOL_VERSION`] other than ours.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(3);
    /// A proof that does not verify (wrong secret, or an impostor).
    pub const AUTH_FAILED: ErrorCode = ErrorCode(4);
    /// The peer's nonce is our own (a reflection attempt).
    pub const NONCE_REUSED: ErrorCode = ErrorCode(5);
    /// The listener has too many connections.
    pub const BUSY: ErrorCode = ErrorCode(6);
    /// The connection was idle too long.
    pub const IDLE_TIMEOUT: ErrorCode = ErrorCode(7);
    /// The server is stopping.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(8);
    /// A fault of the server's own.
    pub const INTERNAL: ErrorCode = ErrorCode(9);

    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::MALFORMED,
        ErrorCode::UNEXPECTED,
        ErrorCode::UNSUPPORTED_VERSION,
        ErrorCode::AUTH_FAILED,
        ErrorCode::NONCE_REUSED,
        ErrorCode::BUSY,
        ErrorCode::IDLE_TIMEOUT,
        ErrorCode::SHUTTING_DOWN,
        ErrorCode::INTERNAL,
    ];

    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            ErrorCode::MALFORMED => "malformed",
            ErrorCode::UNEXPECTED => "unexpected message",
            ErrorCode::UNSUPPORTED_VERSION => "unsupported version",
            ErrorCode::AUTH_FAILED => "authentication failed",
            ErrorCode::NONCE_REUSED => "nonce reused",
            ErrorCode::BUSY => "busy",
            ErrorCode::IDLE_TIMEOUT => "idle timeout",
            ErrorCode::SHUTTING_DOWN => "shutting down",
            ErrorCode::INTERNAL => "internal error",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "error {}", self.0),
        }
    }
}

/// One named field: kind byte, key (1-byte length), value (u32 length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub kind: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Field<'a> {
    /// A text field ([`FIELD_KIND_TEXT`]).
    pub const fn text(key: &'a str, value: &'a str) -> Field<'a> {
        Field {
            kind: FIELD_KIND_TEXT,
            key: key.as_bytes(),
            value: value.as_bytes(),
        }
    }

    /// The value, if this is a text field holding UTF-8.
    pub fn as_text(&self) -> Option<&'a str> {
        (self.kind == FIELD_KIND_TEXT)
            .then(|| std::str::from_utf8(self.value).ok())
            .flatten()
    }
}

#[derive(Clone, Copy)]
enum ListRepr<'a, T> {
    /// Checked encoded bytes, as received.
    Wire(&'a [u8]),
    /// Items given by the caller, to encode.
    Items(&'a [T]),
}

/// A LOGIN's named fields, in order: as received (borrowing the body) or
/// as given to encode ([`Fields::new`]). Compared by their items.
#[derive(Clone, Copy)]
pub struct Fields<'a>(ListRepr<'a, Field<'a>>);

impl<'a> Fields<'a> {
    pub const NONE: Fields<'static> = Fields(ListRepr::Items(&[]));

    pub const fn new(fields: &'a [Field<'a>]) -> Fields<'a> {
        Fields(ListRepr::Items(fields))
    }

    pub fn iter(&self) -> FieldIter<'a> {
        FieldIter(match self.0 {
            ListRepr::Wire(raw) => ListIter::Wire(Reader::new(raw, "LOGIN")),
            ListRepr::Items(items) => ListIter::Items(items.iter()),
        })
    }

    /// The first field with this key, of any kind.
    pub fn get(&self, key: &str) -> Option<Field<'a>> {
        self.iter().find(|f| f.key == key.as_bytes())
    }

    /// The first text field with this key, if its value is UTF-8.
    pub fn text(&self, key: &str) -> Option<&'a str> {
        self.iter()
            .find(|f| f.kind == FIELD_KIND_TEXT && f.key == key.as_bytes())
            .and_then(|f| f.as_text())
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl PartialEq for Fields<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Fields<'_> {}

impl fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

enum ListIter<'a, T> {
    Wire(Reader<'a>),
    Items(std::slice::Iter<'a, T>),
}

/// The fields of a [`Fields`], in order.
pub struct FieldIter<'a>(ListIter<'a, Field<'a>>);

impl<'a> Iterator for FieldIter<'a> {
    type Item = Field<'a>;
    fn next(&mut self) -> Option<Field<'a>> {
        match &mut self.0 {
            // Checked when decoded, so an error cannot happen: stop anyway.
            ListIter::Wire(r) => (!r.is_done()).then(|| r.field().ok()).flatten(),
            ListIter::Items(items) => items.next().copied(),
        }
    }
}

/// A COMMAND's arguments, in order: as received or as given to encode
/// ([`Args::new`]). Compared by their items.
#[derive(Clone, Copy)]
pub struct Args<'a>(ListRepr<'a, &'a str>);

impl<'a> Args<'a> {
    pub const NONE: Args<'static> = Args(ListRepr::Items(&[]));

    pub const fn new(args: &'a [&'a str]) -> Args<'a> {
        Args(ListRepr::Items(args))
    }

    pub fn iter(&self) -> ArgIter<'a> {
        ArgIter(match self.0 {
            ListRepr::Wire(raw) => ListIter::Wire(Reader::new(raw, "COMMAND")),
            ListRepr::Items(items) => ListIter::Items(items.iter()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl PartialEq for Args<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Args<'_> {}

impl fmt::Debug for Args<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The arguments of an [`Args`], in order.
pub struct ArgIter<'a>(ListIter<'a, &'a str>);

impl<'a> Iterator for ArgIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        match &mut self.0 {
            ListIter::Wire(r) => (!r.is_done()).then(|| r.text("argument").ok()).flatten(),
            ListIter::Items(items) => items.next().copied(),
        }
    }
}

/// LOGIN: who the client is. The server answers CHALLENGE (with a secret)
/// or WELCOME (without).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Login<'a> {
    /// Not empty.
    pub user: &'a str,
    /// HOST, PID, APP and any others, kept in order. At most one each of
    /// HOST, PID and APP as text fields, and those UTF-8.
    pub fields: Fields<'a>,
}

impl<'a> Login<'a> {
    pub fn host(&self) -> Option<&'a str> {
        self.fields.text(FIELD_HOST)
    }

    pub fn pid(&self) -> Option<&'a str> {
        self.fields.text(FIELD_PID)
    }

    pub fn app(&self) -> Option<&'a str> {
        self.fields.text(FIELD_APP)
    }
}

/// WELCOME: the session is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome<'a> {
    pub session_id: u64,
    /// The server's proof of the secret; `None` on a session without one.
    pub proof: Option<Proof>,
    pub line: &'a str,
}

/// COMMAND: a command word (not empty) and its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command<'a> {
    pub word: &'a str,
    pub args: Args<'a>,
}

/// One message body, borrowing its text from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Login(Login<'a>),
    Challenge { server_nonce: Nonce },
    Auth { client_nonce: Nonce, proof: Proof },
    Welcome(Welcome<'a>),
    Command(Command<'a>),
    Reply { status: ReplyStatus, text: &'a str },
    Error { code: ErrorCode, message: &'a str },
    Close,
}

/// What is wrong with a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyProblem {
    /// No type byte at all.
    Empty,
    UnknownType(u8),
    /// The field needs `need` bytes and only `left` remain.
    Truncated {
        need: usize,
        left: usize,
    },
    NotUtf8,
    /// A user or command word of no bytes.
    EmptyText,
    /// A LOGIN of another protocol version.
    UnsupportedVersion(u8),
    /// A WELCOME proof length other than 0 or 32.
    BadProofLength(u8),
    /// HOST, PID or APP given twice.
    Duplicate,
    /// Bytes after the last field of a fixed-layout message.
    Trailing(usize),
}

/// A body that does not decode: which message, which field, where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyError {
    /// `LOGIN`, `AUTH`, ... (`message` before the type byte is known).
    pub message: &'static str,
    pub field: &'static str,
    /// Offset in the body where the problem was found.
    pub offset: usize,
    pub problem: BodyProblem,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let BodyError {
            message,
            field,
            offset,
            problem,
        } = *self;
        write!(f, "{message} {field} (body byte {offset}): ")?;
        match problem {
            BodyProblem::Empty => write!(f, "empty body, no message type"),
            BodyProblem::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            BodyProblem::Truncated { need, left } => {
                write!(f, "needs {need} bytes, {left} left in the body")
            }
            BodyProblem::NotUtf8 => write!(f, "not UTF-8"),
            BodyProblem::EmptyText => write!(f, "empty"),
            BodyProblem::UnsupportedVersion(v) => write!(
                f,
                "protocol version {v}, this side speaks {PROTOCOL_VERSION}"
            ),
            BodyProblem::BadProofLength(n) => {
                write!(f, "proof length {n}, must be 0 or {PROOF_LEN}")
            }
            BodyProblem::Duplicate => write!(f, "given twice"),
            BodyProblem::Trailing(n) => write!(f, "{n} bytes after the last field"),
        }
    }
}

impl std::error::Error for BodyError {}

/// A bounds-checked cursor over a body; every read names its field.
#[derive(Clone)]
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8], message: &'static str) -> Self {
        Reader {
            body,
            at: 0,
            message,
        }
    }

    fn err_at(&self, offset: usize, field: &'static str, problem: BodyProblem) -> BodyError {
        BodyError {
            message: self.message,
            field,
            offset,
            problem,
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.body.get(self.at..).unwrap_or_default()
    }

    fn is_done(&self) -> bool {
        self.rest().is_empty()
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], BodyError> {
        let rest = self.rest();
        let bytes = rest.get(..n).ok_or_else(|| {
            self.err_at(
                self.at,
                field,
                BodyProblem::Truncated {
                    need: n,
                    left: rest.len(),
                },
            )
        })?;
        self.at += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BodyError> {
        let at = self.at;
        let bytes = self.take(field, N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| {
            self.err_at(
                at,
                field,
                BodyProblem::Truncated {
                    need: N,
                    left: bytes.len(),
                },
            )
        })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, BodyError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, BodyError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, BodyError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, BodyError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// A u32-LE length and that many bytes.
    fn prefixed(&mut self, field: &'static str) -> Result<&'a [u8], BodyError> {
        let len = self.u32(field)?;
        self.take(field, usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// A prefixed string that must be UTF-8.
    fn text(&mut self, field: &'static str) -> Result<&'a str, BodyError> {
        let bytes = self.prefixed(field)?;
        std::str::from_utf8(bytes).map_err(|e| {
            self.err_at(
                self.at - bytes.len() + e.valid_up_to(),
                field,
                BodyProblem::NotUtf8,
            )
        })
    }

    /// A text that must not be empty either.
    fn word(&mut self, field: &'static str) -> Result<&'a str, BodyError> {
        let at = self.at;
        let text = self.text(field)?;
        if text.is_empty() {
            return Err(self.err_at(at, field, BodyProblem::EmptyText));
        }
        Ok(text)
    }

    fn field(&mut self) -> Result<Field<'a>, BodyError> {
        let kind = self.u8("field kind")?;
        let key_len = self.u8("field key length")?;
        let key = self.take("field key", key_len.into())?;
        let value = self.prefixed("field value")?;
        Ok(Field { kind, key, value })
    }

    fn finish(&self) -> Result<(), BodyError> {
        match self.rest().len() {
            0 => Ok(()),
            n => Err(self.err_at(self.at, "end", BodyProblem::Trailing(n))),
        }
    }
}

/// Checks a LOGIN's fields: any number of any kind, but HOST, PID and APP
/// at most once each as text, and UTF-8.
fn check_login_fields(r: &mut Reader<'_>) -> Result<(), BodyError> {
    let mut seen = [false; 3];
    while !r.is_done() {
        let at = r.at;
        let field = r.field()?;
        if field.kind != FIELD_KIND_TEXT {
            continue;
        }
        let (slot, name) = match field.key {
            b"HOST" => (0, "field HOST"),
            b"PID" => (1, "field PID"),
            b"APP" => (2, "field APP"),
            _ => continue,
        };
        if seen
            .get_mut(slot)
            .is_some_and(|seen| std::mem::replace(seen, true))
        {
            return Err(r.err_at(at, name, BodyProblem::Duplicate));
        }
        if let Err(e) = std::str::from_utf8(field.value) {
            let value_at = r.at - field.value.len();
            return Err(r.err_at(value_at + e.valid_up_to(), name, BodyProblem::NotUtf8));
        }
    }
    Ok(())
}

impl<'a> Message<'a> {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Login(_) => MessageType::Login,
            Message::Challenge { .. } => MessageType::Challenge,
            Message::Auth { .. } => MessageType::Auth,
            Message::Welcome(_) => MessageType::Welcome,
            Message::Command(_) => MessageType::Command,
            Message::Reply { .. } => MessageType::Reply,
            Message::Error { .. } => MessageType::Error,
            Message::Close => MessageType::Close,
        }
    }

    pub fn name(&self) -> &'static str {
        self.message_type().name()
    }

    /// Decodes a frame's body. Never panics; every error names its field.
    pub fn decode(body: &'a [u8]) -> Result<Message<'a>, BodyError> {
        let mut r = Reader::new(body, "message");
        let byte = r.u8("type").map_err(|e| BodyError {
            problem: BodyProblem::Empty,
            ..e
        })?;
        let ty = MessageType::from_byte(byte)
            .ok_or_else(|| r.err_at(0, "type", BodyProblem::UnknownType(byte)))?;
        r.message = ty.name();
        let message = match ty {
            MessageType::Login => {
                let version = r.u8("version")?;
                if version != PROTOCOL_VERSION {
                    return Err(r.err_at(1, "version", BodyProblem::UnsupportedVersion(version)));
                }
                let user = r.word("user")?;
                let fields = r.rest();
                check_login_fields(&mut r)?;
                Message::Login(Login {
                    user,
                    fields: Fields(ListRepr::Wire(fields)),
                })
            }
            MessageType::Challenge => Message::Challenge {
                server_nonce: Nonce(r.array("server nonce")?),
            },
            MessageType::Auth => Message::Auth {
                client_nonce: Nonce(r.array("client nonce")?),
                proof: r.array("proof")?,
            },
            MessageType::Welcome => {
                let session_id = r.u64("session id")?;
                let at = r.at;
                let proof = match r.u8("proof length")? {
                    0 => None,
                    n if usize::from(n) == PROOF_LEN => Some(r.array("proof")?),
                    n => return Err(r.err_at(at, "proof length", BodyProblem::BadProofLength(n))),
                };
                let line = r.text("line")?;
                Message::Welcome(Welcome {
                    session_id,
                    proof,
                    line,
                })
            }
            MessageType::Command => {
                let word = r.word("word")?;
                let args = r.rest();
                while !r.is_done() {
                    r.text("argument")?;
                }
                Message::Command(Command {
                    word,
                    args: Args(ListRepr::Wire(args)),
                })
            }
            MessageType::Reply => Message::Reply {
                status: ReplyStatus(r.u16("status")?),
                text: r.text("text")?,
            },
            MessageType::Error => Message::Error {
                code: ErrorCode(r.u16("code")?),
                message: r.text("message")?,
            },
            MessageType::Close => Message::Close,
        };
        r.finish()?;
        Ok(message)
    }

    /// Appends this message as one whole frame with `tag`. On error nothing
    /// is appended. What this writes, [`Message::decode`] accepts.
    pub fn encode(&self, tag: u16, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let name = self.name();
        encode_frame(tag, out, |w| {
            w.bytes(name, "type", &[self.message_type() as u8])?;
            match self {
                Message::Login(login) => {
                    w.bytes(name, "version", &[PROTOCOL_VERSION])?;
                    w.prefixed(name, "user", login.user.as_bytes())?;
                    for field in login.fields.iter() {
                        w.field(name, field)?;
                    }
                }
                Message::Challenge { server_nonce } => {
                    w.bytes(name, "server nonce", &server_nonce.0)?;
                }
                Message::Auth {
                    client_nonce,
                    proof,
                } => {
                    w.bytes(name, "client nonce", &client_nonce.0)?;
                    w.bytes(name, "proof", proof)?;
                }
                Message::Welcome(welcome) => {
                    w.bytes(name, "session id", &welcome.session_id.to_le_bytes())?;
                    match &welcome.proof {
                        None => w.bytes(name, "proof length", &[0])?,
                        Some(proof) => {
                            w.bytes(name, "proof length", &[PROOF_LEN as u8])?;
                            w.bytes(name, "proof", proof)?;
                        }
                    }
                    w.prefixed(name, "line", welcome.line.as_bytes())?;
                }
                Message::Command(command) => {
                    w.prefixed(name, "word", command.word.as_bytes())?;
                    for arg in command.args.iter() {
                        w.prefixed(name, "argument", arg.as_bytes())?;
                    }
                }
                Message::Reply { status, text } => {
                    w.bytes(name, "status", &status.0.to_le_bytes())?;
                    w.prefixed(name, "text", text.as_bytes())?;
                }
                Message::Error { code, message } => {
                    w.bytes(name, "code", &code.0.to_le_bytes())?;
                    w.prefixed(name, "message", message.as_bytes())?;
                }
                Message::Close => {}
            }
            Ok(())
        })?;
        // Refuse to send what the other side would refuse (an empty user or
        // command word, HOST twice, ...).
        let body = out.get(start + FRAME_HEADER_LEN..).unwrap_or_default();
        if let Err(e) = Message::decode(body) {
            out.truncate(start);
            return Err(EncodeError::Invalid(e));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// The label that starts the client's proof (in AUTH).
pub const CLIENT_PROOF_LABEL: &[u8] = b"eAS0 v1 client->server HMAC-SHA256\0";
/// The label that starts the server's proof (in WELCOME).
pub const SERVER_PROOF_LABEL: &[u8] = b"eAS0 v1 server->client HMAC-SHA256\0";
/// The longest welcome line a [`ServerSession`] sends (longer ones are cut
/// at a character boundary).
pub const WELCOME_LINE_MAX: usize = 1024;
/// The longest ERROR message a session sends (longer ones are cut).
pub const ERROR_MESSAGE_MAX: usize = 1024;

/// Which side a proof speaks for: each has its own label, so one side's
/// proof is never valid as the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client proves the secret to the server (AUTH).
    ClientToServer,
    /// The server proves the secret to the client (WELCOME).
    ServerToClient,
}

impl Direction {
    pub fn label(self) -> &'static [u8] {
        match self {
            Direction::ClientToServer => CLIENT_PROOF_LABEL,
            Direction::ServerToClient => SERVER_PROOF_LABEL,
        }
    }
}

/// The shared secret, held only as a keyed HMAC state (the raw bytes are
/// not kept). Cheap to clone, one per connection; `Debug` shows nothing.
#[derive(Clone)]
pub struct Secret {
    mac: HmacSha256,
}

/// A secret that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// No bytes (after the line ending, for [`Secret::from_file_contents`]).
    Empty,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Empty => write!(f, "the stats secret is empty"),
        }
    }
}

impl std::error::Error for SecretError {}

impl Secret {
    /// The secret is these bytes, exactly.
    pub fn new(bytes: &[u8]) -> Result<Secret, SecretError> {
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        // HMAC takes a key of any length: this cannot fail.
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| SecretError::Empty)?;
        Ok(Secret { mac })
    }

    /// The secret of a secret file: its bytes without the trailing line
    /// ending(s) (`\n`, `\r\n`) an editor or `echo` adds. The server and
    /// the client both read their file with this, so they agree.
    pub fn from_file_contents(contents: &[u8]) -> Result<Secret, SecretError> {
        let end = contents
            .iter()
            .rposition(|&b| b != b'\n' && b != b'\r')
            .map_or(0, |i| i + 1);
        Secret::new(contents.get(..end).unwrap_or_default())
    }

    /// HMAC-SHA256 keyed by the secret over
    /// `label(direction) || server_nonce || client_nonce || u32le(len(user)) || user`.
    pub fn proof(
        &self,
        direction: Direction,
        server_nonce: &Nonce,
        client_nonce: &Nonce,
        user: &str,
    ) -> Proof {
        let mut mac = self.mac.clone();
        mac.update(&proof_input(direction, server_nonce, client_nonce, user));
        mac.finalize().into_bytes().into()
    }

    /// Whether `proof` is [`Secret::proof`] of these inputs, compared in
    /// constant time.
    pub fn verify(
        &self,
        direction: Direction,
        server_nonce: &Nonce,
        client_nonce: &Nonce,
        user: &str,
        proof: &Proof,
    ) -> bool {
        let mut mac = self.mac.clone();
        mac.update(&proof_input(direction, server_nonce, client_nonce, user));
        mac.verify_slice(proof).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The bytes a proof is the HMAC of (docs/eas0.md shows them in hex).
pub fn proof_input(
    direction: Direction,
    server_nonce: &Nonce,
    client_nonce: &Nonce,
    user: &str,
) -> Vec<u8> {
    let label = direction.label();
    let mut input = Vec::with_capacity(label.len() + 2 * NONCE_LEN + 4 + user.len());
    input.extend_from_slice(label);
    input.extend_from_slice(&server_nonce.0);
    input.extend_from_slice(&client_nonce.0);
    // A user is at most a frame long, so its length fits a u32.
    input.extend_from_slice(&u32::try_from(user.len()).unwrap_or(u32::MAX).to_le_bytes());
    input.extend_from_slice(user.as_bytes());
    input
}

/// `s`, cut to at most `max` bytes at a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// Who logged in (the server's record of a LOGIN), or who logs in (the
/// client's). Unknown named fields are not kept here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginInfo {
    pub user: String,
    pub host: Option<String>,
    pub pid: Option<String>,
    pub app: Option<String>,
}

impl LoginInfo {
    /// A login of `user` with no HOST, PID or APP.
    pub fn new(user: impl Into<String>) -> LoginInfo {
        LoginInfo {
            user: user.into(),
            ..LoginInfo::default()
        }
    }

    fn from_login(login: &Login<'_>) -> LoginInfo {
        LoginInfo {
            user: login.user.to_owned(),
            host: login.host().map(str::to_owned),
            pid: login.pid().map(str::to_owned),
            app: login.app().map(str::to_owned),
        }
    }

    fn encode(&self, tag: u16, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let known = [
            (FIELD_HOST, &self.host),
            (FIELD_PID, &self.pid),
            (FIELD_APP, &self.app),
        ];
        let mut fields = [Field::text("", ""); 3];
        let mut n = 0;
        for (key, value) in known {
            if let (Some(value), Some(slot)) = (value, fields.get_mut(n)) {
                *slot = Field::text(key, value);
                n += 1;
            }
        }
        Message::Login(Login {
            user: &self.user,
            fields: Fields::new(fields.get(..n).unwrap_or_default()),
        })
        .encode(tag, out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    AwaitLogin,
    /// CHALLENGE sent; `pending` holds the LOGIN.
    AwaitAuth,
    Established,
    Finished,
}

impl ServerState {
    fn describe(self) -> &'static str {
        match self {
            ServerState::AwaitLogin => "before LOGIN",
            ServerState::AwaitAuth => "after CHALLENGE (AUTH expected)",
            ServerState::Established => "in an open session",
            ServerState::Finished => "after the session ended",
        }
    }
}

/// What a frame did to a [`ServerSession`]. Whatever must be sent has been
/// appended to `out`; after `Closed`, `Refused` and `PeerError` write it
/// out and close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// Handshake under way (a CHALLENGE went out): read on.
    Continue,
    /// WELCOME sent: the session is open; [`ServerSession::peer`] says who.
    LoggedIn,
    /// A command to answer with [`ServerSession::reply`] and this tag,
    /// before the next frame is handled.
    Command { tag: u16, command: Command<'a> },
    /// The client said CLOSE; the CLOSE in answer is in `out`.
    Closed,
    /// We refused the frame; the ERROR is in `out`.
    Refused { code: ErrorCode, message: String },
    /// The client sent an ERROR; nothing to answer.
    PeerError { code: ErrorCode, message: &'a str },
    /// The session had already ended: the frame was dropped.
    Ignored,
}

/// The server's side of one connection.
#[derive(Debug)]
pub struct ServerSession {
    session_id: u64,
    welcome: String,
    auth: Option<(Secret, Nonce)>,
    state: ServerState,
    /// The LOGIN, until AUTH proves it.
    pending: Option<LoginInfo>,
    peer: Option<LoginInfo>,
}

impl ServerSession {
    /// A session without a secret: LOGIN is answered by WELCOME at once.
    /// Only for loopback connections (the listener's rule).
    pub fn new(session_id: u64, welcome: &str) -> ServerSession {
        ServerSession {
            session_id,
            welcome: truncate_utf8(welcome, WELCOME_LINE_MAX).to_owned(),
            auth: None,
            state: ServerState::AwaitLogin,
            pending: None,
            peer: None,
        }
    }

    /// A session that challenges with `nonce` (fresh for each connection:
    /// [`Nonce::random`]) and admits only a client that knows `secret`.
    pub fn with_secret(
        session_id: u64,
        welcome: &str,
        secret: Secret,
        nonce: Nonce,
    ) -> ServerSession {
        ServerSession {
            auth: Some((secret, nonce)),
            ..ServerSession::new(session_id, welcome)
        }
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Who logged in, once [`ServerEvent::LoggedIn`] has been returned.
    pub fn peer(&self) -> Option<&LoginInfo> {
        self.peer.as_ref()
    }

    /// Who the LOGIN said it was, proven or not: for logging a refused
    /// AUTH. [`ServerSession::peer`] is the one to trust.
    pub fn login_attempt(&self) -> Option<&LoginInfo> {
        self.peer.as_ref().or(self.pending.as_ref())
    }

    /// Whether the peer proved the secret (false on a session without one).
    pub fn is_authenticated(&self) -> bool {
        self.peer.is_some() && self.auth.is_some()
    }

    /// LOGIN (and AUTH) done, COMMANDs accepted.
    pub fn is_established(&self) -> bool {
        self.state == ServerState::Established
    }

    /// Closed or refused: write out what is pending and close.
    pub fn is_finished(&self) -> bool {
        self.state == ServerState::Finished
    }

    /// Handles one frame from the client; appends the answer to `out`.
    pub fn handle<'a>(&mut self, frame: Frame<'a>, out: &mut Vec<u8>) -> ServerEvent<'a> {
        if self.state == ServerState::Finished {
            return ServerEvent::Ignored;
        }
        let tag = frame.tag;
        let message = match Message::decode(frame.body) {
            Ok(message) => message,
            Err(e) => {
                let code = match e.problem {
                    BodyProblem::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
                    _ => ErrorCode::MALFORMED,
                };
                return self.refuse(tag, code, &e.to_string(), out);
            }
        };
        match (self.state, message) {
            (_, Message::Close) => {
                self.state = ServerState::Finished;
                match Message::Close.encode(tag, out) {
                    Ok(()) => ServerEvent::Closed,
                    Err(e) => self.refuse(tag, ErrorCode::INTERNAL, &e.to_string(), out),
                }
            }
            (_, Message::Error { code, message }) => {
                self.state = ServerState::Finished;
                ServerEvent::PeerError { code, message }
            }
            (ServerState::AwaitLogin, Message::Login(login)) => {
                let info = LoginInfo::from_login(&login);
                match &self.auth {
                    None => self.welcome(tag, info, None, out),
                    Some((_, nonce)) => {
                        let challenge = Message::Challenge {
                            server_nonce: *nonce,
                        };
                        if let Err(e) = challenge.encode(tag, out) {
                            return self.refuse(tag, ErrorCode::INTERNAL, &e.to_string(), out);
                        }
                        self.pending = Some(info);
                        self.state = ServerState::AwaitAuth;
                        ServerEvent::Continue
                    }
                }
            }
            (
                ServerState::AwaitAuth,
                Message::Auth {
                    client_nonce,
                    proof,
                },
            ) => {
                let (Some((secret, nonce)), Some(info)) = (&self.auth, &self.pending) else {
                    return self.refuse(tag, ErrorCode::INTERNAL, "no pending login", out);
                };
                // A client "nonce" that is our own is someone replaying our
                // challenge at us: refuse it before looking at the proof.
                if client_nonce == *nonce {
                    return self.refuse(
                        tag,
                        ErrorCode::NONCE_REUSED,
                        "the client nonce is the server's own",
                        out,
                    );
                }
                let user = &info.user;
                if !secret.verify(
                    Direction::ClientToServer,
                    nonce,
                    &client_nonce,
                    user,
                    &proof,
                ) {
                    return self.refuse(tag, ErrorCode::AUTH_FAILED, "authentication failed", out);
                }
                let server_proof =
                    secret.proof(Direction::ServerToClient, nonce, &client_nonce, user);
                let info = self.pending.take().unwrap_or_default();
                self.welcome(tag, info, Some(server_proof), out)
            }
            (ServerState::Established, Message::Command(command)) => {
                ServerEvent::Command { tag, command }
            }
            (state, message) => self.refuse(
                tag,
                ErrorCode::UNEXPECTED,
                &format!("{} is not expected {}", message.name(), state.describe()),
                out,
            ),
        }
    }

    fn welcome<'a>(
        &mut self,
        tag: u16,
        info: LoginInfo,
        proof: Option<Proof>,
        out: &mut Vec<u8>,
    ) -> ServerEvent<'a> {
        let welcome = Message::Welcome(Welcome {
            session_id: self.session_id,
            proof,
            line: &self.welcome,
        });
        if let Err(e) = welcome.encode(tag, out) {
            return self.refuse(tag, ErrorCode::INTERNAL, &e.to_string(), out);
        }
        self.peer = Some(info);
        self.state = ServerState::Established;
        ServerEvent::LoggedIn
    }

    /// Appends the REPLY to the COMMAND of `tag`. A text over
    /// [`REPLY_TEXT_MAX`] is refused (nothing appended): cut it first.
    pub fn reply(
        &self,
        tag: u16,
        status: ReplyStatus,
        text: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        Message::Reply { status, text }.encode(tag, out)
    }

    /// Appends an ERROR (its message cut to [`ERROR_MESSAGE_MAX`]) and ends
    /// the session: the listener's own refusals ([`ErrorCode::BUSY`],
    /// [`ErrorCode::IDLE_TIMEOUT`], [`ErrorCode::SHUTTING_DOWN`], tag 0).
    pub fn refuse<'a>(
        &mut self,
        tag: u16,
        code: ErrorCode,
        message: &str,
        out: &mut Vec<u8>,
    ) -> ServerEvent<'a> {
        let message = truncate_utf8(message, ERROR_MESSAGE_MAX);
        // Cannot fail: a short text in a fixed layout.
        let _ = Message::Error { code, message }.encode(tag, out);
        self.state = ServerState::Finished;
        ServerEvent::Refused {
            code,
            message: message.to_owned(),
        }
    }

    /// Answers a stream that is not eAS0 frames ([`Frame::decode`]'s error)
    /// with ERROR [`ErrorCode::MALFORMED`], tag 0, and ends the session.
    pub fn refuse_frame<'a>(&mut self, error: &FrameError, out: &mut Vec<u8>) -> ServerEvent<'a> {
        self.refuse(0, ErrorCode::MALFORMED, &error.to_string(), out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    /// LOGIN not sent yet.
    Start,
    /// LOGIN sent: CHALLENGE or WELCOME expected.
    AwaitLoginReply,
    /// AUTH sent for this server nonce: WELCOME expected.
    AwaitWelcome {
        server_nonce: Nonce,
    },
    Established,
    /// CLOSE sent.
    Closing,
    Finished,
}

impl ClientState {
    fn describe(self) -> &'static str {
        match self {
            ClientState::Start => "before LOGIN",
            ClientState::AwaitLoginReply => "in answer to LOGIN",
            ClientState::AwaitWelcome { .. } => "in answer to AUTH",
            ClientState::Established => "in an open session",
            ClientState::Closing => "in answer to CLOSE",
            ClientState::Finished => "after the session ended",
        }
    }
}

/// Why a client session ended, or why a call was refused. `Display` is a
/// sentence for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The stream is not eAS0 frames.
    Frame(FrameError),
    /// A frame whose body does not decode.
    Malformed(BodyError),
    /// The server sent ERROR.
    Refused { code: ErrorCode, message: String },
    /// The server challenged, and we have no secret.
    SecretRequired,
    /// We have a secret and the server welcomed us without proving it
    /// knows it: not the server we mean to talk to.
    ServerNotAuthenticated,
    /// The server's proof is wrong: it does not know our secret.
    BadServerProof,
    /// The server's challenge nonce is our own (a reflection attempt).
    EchoedNonce,
    /// A valid message at the wrong point.
    Unexpected {
        got: &'static str,
        when: &'static str,
    },
    /// An answer whose tag is not our outstanding request's.
    TagMismatch { expected: Option<u16>, got: u16 },
    /// A call at the wrong point (`command` before WELCOME, two requests
    /// at once, anything after the end).
    OutOfTurn {
        call: &'static str,
        when: &'static str,
    },
    /// The request could not be encoded (too long, empty word).
    Encode(EncodeError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Frame(e) => write!(f, "protocol error: {e}"),
            ClientError::Malformed(e) => write!(f, "protocol error: {e}"),
            ClientError::Refused { code, message } => {
                match (message.is_empty(), code.name()) {
                    (true, Some(name)) => write!(f, "the server refused: {name}")?,
                    _ => write!(f, "the server refused: {message}")?,
                }
                write!(f, " (code {})", code.0)?;
                if *code == ErrorCode::AUTH_FAILED {
                    write!(f, "; wrong secret?")?;
                }
                Ok(())
            }
            ClientError::SecretRequired => {
                write!(f, "the server requires a secret (--secret-file)")
            }
            ClientError::ServerNotAuthenticated => write!(
                f,
                "the server did not prove it knows the secret: not the server expected"
            ),
            ClientError::BadServerProof => write!(
                f,
                "the server's proof of the secret is wrong: it has another secret, or it is an impostor"
            ),
            ClientError::EchoedNonce => write!(
                f,
                "the server sent our own nonce back: refused as a reflection attack"
            ),
            ClientError::Unexpected { got, when } => {
                write!(f, "protocol error: {got} from the server {when}")
            }
            ClientError::TagMismatch { expected, got } => match expected {
                Some(expected) => write!(
                    f,
                    "protocol error: the server answered tag {got} to request tag {expected}"
                ),
                None => write!(
                    f,
                    "protocol error: the server answered tag {got} with no request outstanding"
                ),
            },
            ClientError::OutOfTurn { call, when } => write!(f, "{call} called {when}"),
            ClientError::Encode(e) => write!(f, "cannot send: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What a frame did to a [`ClientSession`]. Whatever must be sent has been
/// appended to `out`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// Handshake under way (an AUTH went out): read on.
    Continue,
    /// The session is open; `authenticated` when both sides proved the
    /// secret.
    Welcome {
        session_id: u64,
        line: &'a str,
        authenticated: bool,
    },
    /// The answer to the COMMAND of `tag`.
    Reply {
        tag: u16,
        status: ReplyStatus,
        text: &'a str,
    },
    /// The server closed (in answer to our CLOSE, or on its own with tag 0).
    Closed,
    /// The session is over; write out what was appended (an ERROR telling
    /// the server why, if any), then close.
    Failed(ClientError),
    /// The session had already ended: the frame was dropped.
    Ignored,
}

/// The client's side of one connection.
#[derive(Debug)]
pub struct ClientSession {
    login: LoginInfo,
    auth: Option<(Secret, Nonce)>,
    state: ClientState,
    next_tag: u16,
    /// The tag of the request an answer is awaited for.
    awaiting: Option<u16>,
    session_id: Option<u64>,
}

impl ClientSession {
    /// A client without a secret: only a server without one admits it.
    pub fn new(login: LoginInfo) -> ClientSession {
        ClientSession {
            login,
            auth: None,
            state: ClientState::Start,
            next_tag: 1,
            awaiting: None,
            session_id: None,
        }
    }

    /// A client that proves `secret` with `nonce` (fresh for each
    /// connection: [`Nonce::random`]) and accepts only a server that
    /// proves it too.
    pub fn with_secret(login: LoginInfo, secret: Secret, nonce: Nonce) -> ClientSession {
        ClientSession {
            auth: Some((secret, nonce)),
            ..ClientSession::new(login)
        }
    }

    /// The server's session id, once welcomed.
    pub fn session_id(&self) -> Option<u64> {
        self.session_id
    }

    /// Welcomed, and no CLOSE sent: commands may be sent.
    pub fn is_established(&self) -> bool {
        self.state == ClientState::Established
    }

    pub fn is_finished(&self) -> bool {
        self.state == ClientState::Finished
    }

    /// Tags run 1, 2, ... 65535, 1: 0 is the server's own.
    fn take_tag(&mut self) -> u16 {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.checked_add(1).unwrap_or(1);
        tag
    }

    fn request(
        &mut self,
        call: &'static str,
        allowed: bool,
        out: &mut Vec<u8>,
        encode: impl FnOnce(&Self, u16, &mut Vec<u8>) -> Result<(), EncodeError>,
    ) -> Result<u16, ClientError> {
        if !allowed || self.awaiting.is_some() {
            let when = if self.awaiting.is_some() {
                "while a request is outstanding"
            } else {
                self.state.describe()
            };
            return Err(ClientError::OutOfTurn { call, when });
        }
        encode(self, self.next_tag, out).map_err(ClientError::Encode)?;
        let tag = self.take_tag();
        self.awaiting = Some(tag);
        Ok(tag)
    }

    /// Appends the LOGIN; returns its tag.
    pub fn login(&mut self, out: &mut Vec<u8>) -> Result<u16, ClientError> {
        let allowed = self.state == ClientState::Start;
        let tag = self.request("login", allowed, out, |s, tag, out| {
            s.login.encode(tag, out)
        })?;
        self.state = ClientState::AwaitLoginReply;
        Ok(tag)
    }

    /// Appends a COMMAND; returns its tag (the REPLY's).
    pub fn command(
        &mut self,
        word: &str,
        args: &[&str],
        out: &mut Vec<u8>,
    ) -> Result<u16, ClientError> {
        let allowed = self.state == ClientState::Established;
        self.request("command", allowed, out, |_, tag, out| {
            Message::Command(Command {
                word,
                args: Args::new(args),
            })
            .encode(tag, out)
        })
    }

    /// Appends a CLOSE; [`ClientEvent::Closed`] confirms it.
    pub fn close(&mut self, out: &mut Vec<u8>) -> Result<u16, ClientError> {
        let allowed = self.state == ClientState::Established;
        let tag = self.request("close", allowed, out, |_, tag, out| {
            Message::Close.encode(tag, out)
        })?;
        self.state = ClientState::Closing;
        Ok(tag)
    }

    /// Ends the session because of `error`, telling the server why with an
    /// ERROR `code` (tag `tag`) if there is one.
    fn fail<'a>(
        &mut self,
        tag: u16,
        code: Option<ErrorCode>,
        error: ClientError,
        out: &mut Vec<u8>,
    ) -> ClientEvent<'a> {
        if let Some(code) = code {
            let text = error.to_string();
            let message = truncate_utf8(&text, ERROR_MESSAGE_MAX);
            // Cannot fail: a short text in a fixed layout.
            let _ = Message::Error { code, message }.encode(tag, out);
        }
        self.state = ClientState::Finished;
        self.awaiting = None;
        ClientEvent::Failed(error)
    }

    /// Handles one frame from the server; appends what must be sent.
    pub fn handle<'a>(&mut self, frame: Frame<'a>, out: &mut Vec<u8>) -> ClientEvent<'a> {
        if self.state == ClientState::Finished {
            return ClientEvent::Ignored;
        }
        let tag = frame.tag;
        let message = match Message::decode(frame.body) {
            Ok(message) => message,
            Err(e) => {
                return self.fail(
                    tag,
                    Some(ErrorCode::MALFORMED),
                    ClientError::Malformed(e),
                    out,
                );
            }
        };
        // Tag 0 is the server speaking on its own: an ERROR or a CLOSE.
        let unsolicited = tag == 0 && matches!(message, Message::Error { .. } | Message::Close);
        if !unsolicited && self.awaiting != Some(tag) {
            let error = ClientError::TagMismatch {
                expected: self.awaiting,
                got: tag,
            };
            return self.fail(tag, Some(ErrorCode::UNEXPECTED), error, out);
        }
        if !unsolicited {
            self.awaiting = None;
        }
        match (self.state, message) {
            (_, Message::Error { code, message }) => {
                let error = ClientError::Refused {
                    code,
                    message: message.to_owned(),
                };
                self.fail(tag, None, error, out)
            }
            (_, Message::Close) => {
                self.state = ClientState::Finished;
                ClientEvent::Closed
            }
            (ClientState::AwaitLoginReply, Message::Challenge { server_nonce }) => {
                let Some((secret, nonce)) = &self.auth else {
                    return self.fail(tag, None, ClientError::SecretRequired, out);
                };
                if server_nonce == *nonce {
                    let error = ClientError::EchoedNonce;
                    return self.fail(tag, Some(ErrorCode::NONCE_REUSED), error, out);
                }
                let auth = Message::Auth {
                    client_nonce: *nonce,
                    proof: secret.proof(
                        Direction::ClientToServer,
                        &server_nonce,
                        nonce,
                        &self.login.user,
                    ),
                };
                match self.request("auth", true, out, |_, tag, out| auth.encode(tag, out)) {
                    Ok(_) => {
                        self.state = ClientState::AwaitWelcome { server_nonce };
                        ClientEvent::Continue
                    }
                    Err(e) => self.fail(tag, None, e, out),
                }
            }
            (ClientState::AwaitLoginReply, Message::Welcome(welcome)) => {
                if self.auth.is_some() {
                    // A server that skips the challenge cannot prove the
                    // secret: whoever it is, it is not ours.
                    let error = ClientError::ServerNotAuthenticated;
                    return self.fail(tag, Some(ErrorCode::AUTH_FAILED), error, out);
                }
                self.welcomed(welcome, false)
            }
            (ClientState::AwaitWelcome { server_nonce }, Message::Welcome(welcome)) => {
                let Some((secret, nonce)) = &self.auth else {
                    return self.fail(tag, None, ClientError::SecretRequired, out);
                };
                let proven = welcome.proof.is_some_and(|proof| {
                    secret.verify(
                        Direction::ServerToClient,
                        &server_nonce,
                        nonce,
                        &self.login.user,
                        &proof,
                    )
                });
                if !proven {
                    let error = if welcome.proof.is_some() {
                        ClientError::BadServerProof
                    } else {
                        ClientError::ServerNotAuthenticated
                    };
                    return self.fail(tag, Some(ErrorCode::AUTH_FAILED), error, out);
                }
                self.welcomed(welcome, true)
            }
            (ClientState::Established, Message::Reply { status, text }) => {
                ClientEvent::Reply { tag, status, text }
            }
            (state, message) => {
                let error = ClientError::Unexpected {
                    got: message.name(),
                    when: state.describe(),
                };
                self.fail(tag, Some(ErrorCode::UNEXPECTED), error, out)
            }
        }
    }

    fn welcomed<'a>(&mut self, welcome: Welcome<'a>, authenticated: bool) -> ClientEvent<'a> {
        self.state = ClientState::Established;
        self.session_id = Some(welcome.session_id);
        ClientEvent::Welcome {
            session_id: welcome.session_id,
            line: welcome.line,
            authenticated,
        }
    }

    /// The error for a stream that is not eAS0 frames ([`Frame::decode`]'s
    /// error); ends the session. Nothing is sent: close.
    pub fn frame_error(&mut self, error: FrameError) -> ClientError {
        self.state = ClientState::Finished;
        self.awaiting = None;
        ClientError::Frame(error)
    }
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

    // -- Message bodies ----------------------------------------------------

    const UNKNOWN_FIELDS: [Field<'static>; 4] = [
        Field::text("HOST", "pxe1.example"),
        Field {
            kind: 7,
            key: b"BLOB",
            value: b"\x00\xff\x80",
        },
        Field {
            kind: FIELD_KIND_TEXT,
            key: b"",
            value: b"",
        },
        Field::text("X-TEAM", "netboot"),
    ];
    const ARGS: [&str; 3] = ["shard", "0", "\u{e9}t\u{e9}"];

    /// One of each message, and the edge cases of each field.
    fn samples() -> Vec<Message<'static>> {
        static LOGIN_FIELDS: [Field<'static>; 3] = [
            Field::text("HOST", "localhost"),
            Field::text("PID", "11254"),
            Field::text("APP", "gss_open"),
        ];
        static LONG: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| "r".repeat(REPLY_TEXT_MAX));
        vec![
            Message::Login(Login {
                user: "ams",
                fields: Fields::new(&LOGIN_FIELDS),
            }),
            Message::Login(Login {
                user: "u",
                fields: Fields::NONE,
            }),
            Message::Login(Login {
                user: "op\u{e9}rateur",
                fields: Fields::new(&UNKNOWN_FIELDS),
            }),
            Message::Challenge {
                server_nonce: Nonce([0xa5; NONCE_LEN]),
            },
            Message::Auth {
                client_nonce: Nonce(std::array::from_fn(|i| i as u8)),
                proof: [0xff; PROOF_LEN],
            },
            Message::Welcome(Welcome {
                session_id: u64::MAX,
                proof: Some([0x5a; PROOF_LEN]),
                line: "uftpd stats",
            }),
            Message::Welcome(Welcome {
                session_id: 0,
                proof: None,
                line: "",
            }),
            Message::Command(Command {
                word: COMMAND_REPORT,
                args: Args::NONE,
            }),
            Message::Command(Command {
                word: "x",
                args: Args::new(&ARGS),
            }),
            Message::Reply {
                status: ReplyStatus::OK,
                text: "eAss---Srvr: CommandCnt: 1\nRate: 0.0 Mbits/s\n",
            },
            Message::Reply {
                status: ReplyStatus(0xbeef),
                text: LONG.as_str(),
            },
            Message::Error {
                code: ErrorCode::AUTH_FAILED,
                message: "authentication failed",
            },
            Message::Error {
                code: ErrorCode(u16::MAX),
                message: "",
            },
            Message::Close,
        ]
    }

    fn body_of(message: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        message.encode(0, &mut out).unwrap();
        out.split_off(FRAME_HEADER_LEN)
    }

    #[test]
    fn every_message_round_trips() {
        let mut out = Vec::new();
        let samples = samples();
        for (tag, message) in samples.iter().enumerate() {
            message.encode(tag as u16, &mut out).unwrap();
        }
        // Decoded back from one stream, in order, equal, and re-encoded to
        // the same bytes.
        let mut at = 0;
        for (tag, message) in samples.iter().enumerate() {
            let (frame, len) = whole(&out[at..]);
            assert_eq!(frame.tag, tag as u16);
            let got = Message::decode(frame.body).unwrap();
            assert_eq!(&got, message);
            assert_eq!(got.name(), message.name());
            assert_eq!(body_of(&got), frame.body);
            at += len;
        }
        assert_eq!(at, out.len());
        // Every type is covered.
        for ty in MessageType::ALL {
            assert!(samples.iter().any(|m| m.message_type() == ty), "{ty:?}");
            assert_eq!(MessageType::from_byte(ty as u8), Some(ty));
        }
    }

    #[test]
    fn login_fields_are_the_captures_and_unknown_ones_are_kept() {
        // The capture's LOGIN ends in three named fields; our LOGIN reads
        // that tail byte for byte.
        let tail_at = CAPTURE_LOGIN
            .windows(6)
            .position(|w| w == b"\x00\x04HOST")
            .unwrap();
        let mut body = vec![MessageType::Login as u8, PROTOCOL_VERSION];
        body.extend_from_slice(b"\x03\x00\x00\x00ams");
        body.extend_from_slice(&CAPTURE_LOGIN[tail_at..]);
        let Ok(Message::Login(login)) = Message::decode(&body) else {
            panic!("{:?}", Message::decode(&body))
        };
        assert_eq!(login.user, "ams");
        assert_eq!(login.host(), Some("localhost"));
        assert_eq!(login.pid(), Some("11254"));
        assert_eq!(login.app(), Some("gss_open"));
        assert_eq!(login.fields, samples()[0].login_fields());

        // Unknown keys and kinds, empty keys, binary values: kept, in order.
        let body = body_of(&samples()[2]);
        let Ok(Message::Login(login)) = Message::decode(&body) else {
            panic!()
        };
        assert_eq!(login.fields.iter().collect::<Vec<_>>(), UNKNOWN_FIELDS);
        assert_eq!(login.host(), Some("pxe1.example"));
        assert_eq!(login.fields.get("BLOB").unwrap().value, b"\x00\xff\x80");
        assert_eq!(login.fields.get("BLOB").unwrap().as_text(), None);
        assert_eq!(login.fields.text("X-TEAM"), Some("netboot"));
        assert_eq!((login.pid(), login.app()), (None, None));

        // A HOST of another kind is not the HOST: kept, not read, and so
        // not a duplicate of the text one.
        let fields = [
            Field {
                kind: 1,
                key: b"HOST",
                value: b"\xff",
            },
            Field::text("HOST", "real"),
        ];
        let body = body_of(&Message::Login(Login {
            user: "u",
            fields: Fields::new(&fields),
        }));
        let Ok(Message::Login(login)) = Message::decode(&body) else {
            panic!()
        };
        assert_eq!(login.host(), Some("real"));
        assert_eq!(login.fields.iter().count(), 2);
    }

    impl Message<'_> {
        fn login_fields(&self) -> Fields<'_> {
            match self {
                Message::Login(l) => l.fields,
                _ => panic!("not a LOGIN"),
            }
        }
    }

    fn problem(body: &[u8]) -> (&'static str, &'static str, usize, BodyProblem) {
        match Message::decode(body) {
            Err(e) => (e.message, e.field, e.offset, e.problem),
            Ok(m) => panic!("decoded {m:?}"),
        }
    }

    #[test]
    fn hostile_bodies_name_what_is_wrong() {
        use BodyProblem::*;
        assert_eq!(problem(b""), ("message", "type", 0, Empty));
        for t in [0x00, 0x09, 0x7f, 0xff] {
            assert_eq!(problem(&[t]), ("message", "type", 0, UnknownType(t)));
        }
        assert_eq!(
            problem(b"\x01\x02\x01\x00\x00\x00u"),
            ("LOGIN", "version", 1, UnsupportedVersion(2))
        );
        assert_eq!(
            problem(b"\x01\x01\xff\xff\xff\xffuser"),
            (
                "LOGIN",
                "user",
                6,
                Truncated {
                    need: u32::MAX as usize,
                    left: 4
                }
            )
        );
        assert_eq!(
            problem(b"\x01\x01\x00\x00"),
            ("LOGIN", "user", 2, Truncated { need: 4, left: 2 })
        );
        assert_eq!(
            problem(b"\x01\x01\x00\x00\x00\x00"),
            ("LOGIN", "user", 2, EmptyText)
        );
        assert_eq!(
            problem(b"\x01\x01\x03\x00\x00\x00a\xc3("),
            ("LOGIN", "user", 7, NotUtf8)
        );
        let login = |fields: &[u8]| [b"\x01\x01\x01\x00\x00\x00u", fields].concat();
        let host = b"\x00\x04HOST\x01\x00\x00\x00h";
        assert_eq!(
            problem(&login(&[&host[..], &host[..]].concat())),
            ("LOGIN", "field HOST", 7 + host.len(), Duplicate)
        );
        assert_eq!(
            problem(&login(b"\x00\x03PID\x02\x00\x00\x001\xff")),
            ("LOGIN", "field PID", 7 + 10, NotUtf8)
        );
        assert_eq!(
            problem(&login(b"\x00\x01K\xff\xff\xff\xff")),
            (
                "LOGIN",
                "field value",
                7 + 7,
                Truncated {
                    need: u32::MAX as usize,
                    left: 0
                }
            )
        );
        assert_eq!(
            problem(&login(b"\x00\xffKEY")),
            ("LOGIN", "field key", 9, Truncated { need: 255, left: 3 })
        );
        assert_eq!(
            problem(&login(b"\x00")),
            (
                "LOGIN",
                "field key length",
                8,
                Truncated { need: 1, left: 0 }
            )
        );
        assert_eq!(
            problem(&[&[2u8][..], &[0; 31]].concat()),
            (
                "CHALLENGE",
                "server nonce",
                1,
                Truncated { need: 32, left: 31 }
            )
        );
        assert_eq!(
            problem(&[&[2u8][..], &[0; 33]].concat()),
            ("CHALLENGE", "end", 33, Trailing(1))
        );
        assert_eq!(
            problem(&[&[3u8][..], &[0; 63]].concat()),
            ("AUTH", "proof", 33, Truncated { need: 32, left: 31 })
        );
        let welcome = |proof_len: u8| [&[4u8][..], &[0; 8], &[proof_len], &[0; 40]].concat();
        assert_eq!(
            problem(&welcome(5)),
            ("WELCOME", "proof length", 9, BadProofLength(5))
        );
        // A proof, an empty line, then 4 bytes too many.
        assert_eq!(problem(&welcome(32)), ("WELCOME", "end", 46, Trailing(4)));
        assert_eq!(
            problem(b"\x05\x00\x00\x00\x00"),
            ("COMMAND", "word", 1, EmptyText)
        );
        assert_eq!(
            problem(b"\x05\x01\x00\x00\x00r\x01\x00\x00\x00\x80"),
            ("COMMAND", "argument", 10, NotUtf8)
        );
        assert_eq!(
            problem(b"\x05\x01\x00\x00\x00r\x01\x00"),
            ("COMMAND", "argument", 6, Truncated { need: 4, left: 2 })
        );
        assert_eq!(
            problem(b"\x06\x00"),
            ("REPLY", "status", 1, Truncated { need: 2, left: 1 })
        );
        assert_eq!(
            problem(b"\x07\x01\x00\x05\x00\x00\x00abc"),
            ("ERROR", "message", 7, Truncated { need: 5, left: 3 })
        );
        assert_eq!(problem(b"\x08\x00"), ("CLOSE", "end", 1, Trailing(1)));

        // The sentences an operator sees.
        let e = Message::decode(b"\x01\x01\xff\xff\xff\xffuser").unwrap_err();
        assert_eq!(
            e.to_string(),
            "LOGIN user (body byte 6): needs 4294967295 bytes, 4 left in the body"
        );
        let e = Message::decode(&welcome(5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "WELCOME proof length (body byte 9): proof length 5, must be 0 or 32"
        );
    }

    #[test]
    fn truncated_bodies_fail_at_every_offset() {
        for message in samples() {
            let body = body_of(&message);
            if body.len() > 1024 {
                continue; // the 64 KiB reply: the same code as the short one
            }
            for cut in 0..body.len() {
                match Message::decode(&body[..cut]) {
                    // A LOGIN's fields and a COMMAND's arguments run to the
                    // end of the body, so a cut between two of them is a
                    // shorter valid message: then it must be exactly that.
                    Ok(shorter) => {
                        assert!(
                            matches!(shorter, Message::Login(_) | Message::Command(_)),
                            "{} cut at {cut} decoded as {shorter:?}",
                            message.name()
                        );
                        assert_eq!(body_of(&shorter), &body[..cut]);
                    }
                    Err(e) => {
                        assert!(e.offset <= cut, "{e}");
                        let _ = e.to_string();
                    }
                }
            }
            // A frame whose header promises more than arrives is incomplete,
            // never a short message.
            let mut frame = Vec::new();
            message.encode(1, &mut frame).unwrap();
            for cut in 0..frame.len() {
                assert!(matches!(
                    Frame::decode(&frame[..cut]),
                    Ok(Decoded::Incomplete { .. })
                ));
            }
        }
    }

    /// xorshift64: a fixed, dependency-free sequence.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Bodies built from a type byte and plausible pieces: small and huge
    /// lengths, known keys, stray bytes, so the decoder gets past its first
    /// checks often.
    fn garbage_body(next: &mut impl FnMut() -> u64, buf: &mut Vec<u8>) {
        buf.clear();
        let r = next();
        buf.push(if r.is_multiple_of(8) {
            (r >> 8) as u8
        } else {
            (r % 9) as u8
        });
        if r & 0x100 != 0 {
            buf.push(PROTOCOL_VERSION);
        }
        for _ in 0..(r >> 16) % 8 {
            let t = next();
            match t % 8 {
                0 => buf.extend_from_slice(&((t >> 8) as u32 % 6).to_le_bytes()),
                1 => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
                2 => buf.extend_from_slice(b"\x00\x04HOST"),
                3 => buf.extend_from_slice(b"\x00\x03PID\x02\x00\x00\x0042"),
                4 => buf.extend_from_slice(&[0u8; 32]),
                5 => buf.push(32),
                6 => buf.extend_from_slice(b"\x01\x00\x00\x00r"),
                _ => buf.extend((0..(t >> 8) % 5).map(|i| (t >> (16 + 8 * i)) as u8)),
            }
        }
    }

    #[test]
    fn garbage_never_panics_and_what_decodes_is_canonical() {
        let mut next = rng(0x2545_f491_4f6c_dd1d);
        let mut buf = Vec::new();
        let mut decoded = [0u32; 9];
        let mut with_fields = 0;
        for _ in 0..200_000 {
            garbage_body(&mut next, &mut buf);
            if let Ok(message) = Message::decode(&buf) {
                decoded[message.message_type() as usize] += 1;
                if let Message::Login(login) = message {
                    with_fields += u32::from(!login.fields.is_empty());
                }
                assert_eq!(body_of(&message), buf, "{message:?}");
            }
            // Framed, with a random header.
            let header_junk = next();
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&(buf.len() as u32).to_le_bytes());
            framed.extend_from_slice(&(header_junk as u16).to_le_bytes());
            framed.extend_from_slice(&buf);
            let cut = (header_junk >> 16) as usize % (framed.len() + 1);
            let _ = Frame::decode(&framed[..cut]);
        }
        // Every type decodes now and then (a CLOSE is one byte; a WELCOME
        // or AUTH needs luck).
        // (About [0, 208, 288, 106, 21, 555, 53, 41, 1285], 45 LOGINs with
        // fields.)
        let seen = format!("{decoded:?}, {with_fields} LOGINs with fields");
        assert!(decoded[1..].iter().all(|&n| n > 10), "{seen}");
        assert!(decoded[MessageType::Login as usize] > 100, "{seen}");
        assert!(with_fields > 20, "{seen}");
    }

    #[test]
    fn encoders_refuse_what_decoders_would() {
        let mut out = b"kept".to_vec();
        let mut refused = |m: Message<'_>| {
            let e = m.encode(1, &mut out).unwrap_err();
            assert_eq!(out, b"kept");
            e
        };
        assert!(matches!(
            refused(Message::Login(Login {
                user: "",
                fields: Fields::NONE
            })),
            EncodeError::Invalid(BodyError {
                problem: BodyProblem::EmptyText,
                ..
            })
        ));
        let twice = [Field::text("APP", "a"), Field::text("APP", "b")];
        assert!(matches!(
            refused(Message::Login(Login {
                user: "u",
                fields: Fields::new(&twice)
            })),
            EncodeError::Invalid(BodyError {
                problem: BodyProblem::Duplicate,
                ..
            })
        ));
        let bad_host = [Field {
            kind: FIELD_KIND_TEXT,
            key: b"HOST",
            value: b"\xff",
        }];
        assert!(matches!(
            refused(Message::Login(Login {
                user: "u",
                fields: Fields::new(&bad_host)
            })),
            EncodeError::Invalid(BodyError {
                problem: BodyProblem::NotUtf8,
                ..
            })
        ));
        let key = "k".repeat(256);
        let long_key = [Field::text(&key, "v")];
        assert_eq!(
            refused(Message::Login(Login {
                user: "u",
                fields: Fields::new(&long_key)
            })),
            EncodeError::KeyTooLong { len: 256 }
        );
        assert!(matches!(
            refused(Message::Command(Command {
                word: "",
                args: Args::NONE
            })),
            EncodeError::Invalid(_)
        ));
        let text = "r".repeat(REPLY_TEXT_MAX + 1);
        let e = refused(Message::Reply {
            status: ReplyStatus::OK,
            text: &text,
        });
        assert_eq!(
            e,
            EncodeError::TooLong {
                message: "REPLY",
                field: "text",
                body_len: FRAME_BODY_MAX + 1
            }
        );
        assert_eq!(
            e.to_string(),
            "REPLY text: the body would be 65537 bytes, over the 65536-byte frame limit"
        );
    }

    // -- Sessions ------------------------------------------------------------

    const SERVER_NONCE: Nonce = Nonce([0x53; NONCE_LEN]);
    const CLIENT_NONCE: Nonce = Nonce([0xc1; NONCE_LEN]);
    const SECRET: &[u8] = b"correct horse battery staple";

    fn secret(bytes: &[u8]) -> Secret {
        Secret::new(bytes).unwrap()
    }

    fn ops() -> LoginInfo {
        LoginInfo {
            user: "ops".into(),
            host: Some("pxe1".into()),
            pid: Some("4242".into()),
            app: Some("uftpd-stat".into()),
        }
    }

    /// Every frame of `wire`, which must be whole frames only.
    fn frames(wire: &[u8]) -> Vec<Frame<'_>> {
        let mut at = 0;
        let mut all = Vec::new();
        while at < wire.len() {
            let (frame, len) = whole(&wire[at..]);
            all.push(frame);
            at += len;
        }
        all
    }

    fn messages(wire: &[u8]) -> Vec<(u16, Message<'_>)> {
        frames(wire)
            .into_iter()
            .map(|f| (f.tag, Message::decode(f.body).unwrap()))
            .collect()
    }

    /// Feeds `wire` to the server one byte at a time, as a slow TCP stream
    /// would, and returns its events (owned) and what it sent.
    fn to_server(server: &mut ServerSession, wire: &[u8]) -> (Vec<String>, Vec<u8>) {
        to_server_replying(server, wire, None)
    }

    /// [`to_server`], answering each command with `report` (by default,
    /// `report N` for N arguments).
    fn to_server_replying(
        server: &mut ServerSession,
        wire: &[u8],
        report: Option<&str>,
    ) -> (Vec<String>, Vec<u8>) {
        let (mut inbox, mut out, mut events) = (Vec::new(), Vec::new(), Vec::new());
        for &byte in wire {
            inbox.push(byte);
            if let Ok(Decoded::Frame { frame, len }) = Frame::decode(&inbox) {
                let event = server.handle(frame, &mut out);
                if let ServerEvent::Command { tag, command } = &event {
                    let text = report.map_or_else(
                        || format!("report {}", command.args.iter().count()),
                        str::to_owned,
                    );
                    server
                        .reply(*tag, ReplyStatus::OK, &text, &mut out)
                        .unwrap();
                }
                events.push(format!("{event:?}"));
                inbox.drain(..len);
            }
        }
        assert!(inbox.is_empty());
        (events, out)
    }

    fn to_client<'w>(
        client: &mut ClientSession,
        wire: &'w [u8],
    ) -> (Vec<ClientEvent<'w>>, Vec<u8>) {
        let mut out = Vec::new();
        let events = frames(wire)
            .into_iter()
            .map(|frame| client.handle(frame, &mut out))
            .collect();
        (events, out)
    }

    #[test]
    fn without_a_secret_login_is_welcomed_at_once() {
        let mut server = ServerSession::new(3, "uftpd stats");
        let mut client = ClientSession::new(ops());
        let mut wire = Vec::new();
        assert_eq!(client.login(&mut wire), Ok(1));
        let (events, answer) = to_server(&mut server, &wire);
        assert_eq!(events, ["LoggedIn"]);
        assert_eq!(server.peer(), Some(&ops()));
        assert!(server.is_established() && !server.is_authenticated());
        let (events, sent) = to_client(&mut client, &answer);
        assert_eq!(
            events,
            [ClientEvent::Welcome {
                session_id: 3,
                line: "uftpd stats",
                authenticated: false
            }]
        );
        assert!(sent.is_empty());
        assert_eq!(client.session_id(), Some(3));

        // Commands, any number of times, each answered under its tag.
        for (n, args) in [&[][..], &["a"], &["a", "b"]].into_iter().enumerate() {
            let mut wire = Vec::new();
            let tag = client.command(COMMAND_REPORT, args, &mut wire).unwrap();
            assert_eq!(tag as usize, 2 + n);
            let (events, answer) = to_server(&mut server, &wire);
            assert_eq!(events.len(), 1);
            assert!(events[0].starts_with(&format!(
                "Command {{ tag: {tag}, command: Command {{ word: \"report\""
            )));
            let text = format!("report {}", args.len());
            let (events, _) = to_client(&mut client, &answer);
            assert_eq!(
                events,
                [ClientEvent::Reply {
                    tag,
                    status: ReplyStatus::OK,
                    text: &text
                }]
            );
        }

        let mut wire = Vec::new();
        let tag = client.close(&mut wire).unwrap();
        let (events, answer) = to_server(&mut server, &wire);
        assert_eq!(events, ["Closed"]);
        assert_eq!(messages(&answer), [(tag, Message::Close)]);
        assert!(server.is_finished());
        assert_eq!(to_client(&mut client, &answer).0, [ClientEvent::Closed]);
        assert!(client.is_finished());
        // After the end, frames are dropped and nothing is sent.
        let mut out = Vec::new();
        assert_eq!(
            server.handle(frames(&wire)[0], &mut out),
            ServerEvent::Ignored
        );
        assert_eq!(
            client.handle(frames(&answer)[0], &mut out),
            ClientEvent::Ignored
        );
        assert!(out.is_empty());
    }

    /// Runs the handshake; returns the server's events, the client's last
    /// event and every byte that crossed the wire.
    fn handshake(
        server: &mut ServerSession,
        client: &mut ClientSession,
    ) -> (Vec<String>, String, Vec<u8>) {
        let mut transcript = Vec::new();
        let mut wire = Vec::new();
        client.login(&mut wire).unwrap();
        let mut server_events = Vec::new();
        let mut last = String::new();
        for _ in 0..3 {
            if wire.is_empty() {
                break;
            }
            transcript.extend_from_slice(&wire);
            let (events, answer) = to_server(server, &wire);
            server_events.extend(events);
            transcript.extend_from_slice(&answer);
            let (events, reply) = to_client(client, &answer);
            if let Some(event) = events.last() {
                last = format!("{event:?}");
            }
            wire = reply;
        }
        transcript.extend_from_slice(&wire);
        (server_events, last, transcript)
    }

    #[test]
    fn the_right_secret_opens_a_mutually_authenticated_session() {
        let mut server = ServerSession::with_secret(9, "hi", secret(SECRET), SERVER_NONCE);
        let mut client = ClientSession::with_secret(ops(), secret(SECRET), CLIENT_NONCE);
        let (server_events, last, transcript) = handshake(&mut server, &mut client);
        assert_eq!(server_events, ["Continue", "LoggedIn"]);
        assert_eq!(
            last,
            "Welcome { session_id: 9, line: \"hi\", authenticated: true }"
        );
        assert!(server.is_authenticated());
        assert_eq!(server.peer(), Some(&ops()));
        assert!(client.is_established());

        // LOGIN, CHALLENGE, AUTH, WELCOME, with the proofs of the docs.
        let s = secret(SECRET);
        let sent = messages(&transcript);
        let types: Vec<_> = sent.iter().map(|(tag, m)| (*tag, m.name())).collect();
        assert_eq!(
            types,
            [(1, "LOGIN"), (1, "CHALLENGE"), (2, "AUTH"), (2, "WELCOME")]
        );
        assert_eq!(
            sent[2].1,
            Message::Auth {
                client_nonce: CLIENT_NONCE,
                proof: s.proof(
                    Direction::ClientToServer,
                    &SERVER_NONCE,
                    &CLIENT_NONCE,
                    "ops"
                ),
            }
        );
        let Message::Welcome(welcome) = sent[3].1 else {
            panic!()
        };
        assert_eq!(
            welcome.proof,
            Some(s.proof(
                Direction::ServerToClient,
                &SERVER_NONCE,
                &CLIENT_NONCE,
                "ops"
            ))
        );
        // The two directions never share a proof.
        assert_ne!(
            welcome.proof,
            Some(s.proof(
                Direction::ClientToServer,
                &SERVER_NONCE,
                &CLIENT_NONCE,
                "ops"
            ))
        );
        // The secret never crosses the wire, nor does its hex.
        let hex: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        for needle in [SECRET, hex.as_bytes(), &SECRET[..8]] {
            assert!(!transcript.windows(needle.len()).any(|w| w == needle));
        }

        // And the session works.
        let mut wire = Vec::new();
        let tag = client.command(COMMAND_REPORT, &[], &mut wire).unwrap();
        let (_, answer) = to_server(&mut server, &wire);
        assert!(matches!(
            to_client(&mut client, &answer).0[..],
            [ClientEvent::Reply { tag: t, status: ReplyStatus::OK, .. }] if t == tag
        ));
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let mut server = ServerSession::with_secret(9, "hi", secret(SECRET), SERVER_NONCE);
        let mut client = ClientSession::with_secret(
            ops(),
            secret(b"Correct horse battery staple"),
            CLIENT_NONCE,
        );
        let (server_events, last, transcript) = handshake(&mut server, &mut client);
        assert_eq!(
            server_events,
            [
                "Continue",
                "Refused { code: ErrorCode(4), message: \"authentication failed\" }"
            ]
        );
        assert_eq!(
            last,
            "Failed(Refused { code: ErrorCode(4), message: \"authentication failed\" })"
        );
        assert!(server.is_finished() && server.peer().is_none() && !server.is_authenticated());
        assert_eq!(server.login_attempt(), Some(&ops()), "for the log");
        assert!(client.is_finished());
        // The refusal answers the AUTH's tag.
        assert_eq!(
            messages(&transcript).last(),
            Some(&(
                2,
                Message::Error {
                    code: ErrorCode::AUTH_FAILED,
                    message: "authentication failed"
                }
            ))
        );
        let error = ClientError::Refused {
            code: ErrorCode::AUTH_FAILED,
            message: "authentication failed".into(),
        };
        assert_eq!(
            error.to_string(),
            "the server refused: authentication failed (code 4); wrong secret?"
        );
        // A proof for another user does not pass either.
        let mut server = ServerSession::with_secret(9, "hi", secret(SECRET), SERVER_NONCE);
        let mut wire = Vec::new();
        ClientSession::new(LoginInfo::new("mallory"))
            .login(&mut wire)
            .unwrap();
        let proof = secret(SECRET).proof(
            Direction::ClientToServer,
            &SERVER_NONCE,
            &CLIENT_NONCE,
            "ops",
        );
        Message::Auth {
            client_nonce: CLIENT_NONCE,
            proof,
        }
        .encode(2, &mut wire)
        .unwrap();
        let (events, _) = to_server(&mut server, &wire);
        assert_eq!(
            events[1],
            "Refused { code: ErrorCode(4), message: \"authentication failed\" }"
        );
    }

    #[test]
    fn an_echoed_nonce_is_refused_before_the_proof_is_looked_at() {
        // The attacker sends our challenge back as its nonce. Even with a
        // proof that verifies (as if it had the secret), it is refused.
        let s = secret(SECRET);
        let mut server = ServerSession::with_secret(9, "hi", s.clone(), SERVER_NONCE);
        let mut wire = Vec::new();
        ClientSession::new(LoginInfo::new("ops"))
            .login(&mut wire)
            .unwrap();
        let proof = s.proof(
            Direction::ClientToServer,
            &SERVER_NONCE,
            &SERVER_NONCE,
            "ops",
        );
        Message::Auth {
            client_nonce: SERVER_NONCE,
            proof,
        }
        .encode(2, &mut wire)
        .unwrap();
        let (events, answer) = to_server(&mut server, &wire);
        assert_eq!(
            events,
            [
                "Continue",
                "Refused { code: ErrorCode(5), message: \"the client nonce is the server's own\" }"
            ]
        );
        assert!(matches!(
            messages(&answer)[1],
            (
                2,
                Message::Error {
                    code: ErrorCode::NONCE_REUSED,
                    ..
                }
            )
        ));
        assert!(server.peer().is_none());

        // The client refuses a challenge that echoes its own nonce.
        let mut client = ClientSession::with_secret(ops(), s, CLIENT_NONCE);
        client.login(&mut Vec::new()).unwrap();
        let mut challenge = Vec::new();
        Message::Challenge {
            server_nonce: CLIENT_NONCE,
        }
        .encode(1, &mut challenge)
        .unwrap();
        let (events, sent) = to_client(&mut client, &challenge);
        assert_eq!(events, [ClientEvent::Failed(ClientError::EchoedNonce)]);
        assert!(matches!(
            messages(&sent)[..],
            [(
                1,
                Message::Error {
                    code: ErrorCode::NONCE_REUSED,
                    ..
                }
            )]
        ));
    }

    fn encoded(tag: u16, message: Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        message.encode(tag, &mut out).unwrap();
        out
    }

    #[test]
    fn out_of_order_messages_are_refused() {
        let login = encoded(
            1,
            Message::Login(Login {
                user: "ops",
                fields: Fields::NONE,
            }),
        );
        let auth = encoded(
            2,
            Message::Auth {
                client_nonce: CLIENT_NONCE,
                proof: [0; 32],
            },
        );
        let command = encoded(
            3,
            Message::Command(Command {
                word: "report",
                args: Args::NONE,
            }),
        );
        let welcome = encoded(
            4,
            Message::Welcome(Welcome {
                session_id: 1,
                proof: None,
                line: "",
            }),
        );
        let reply = encoded(
            5,
            Message::Reply {
                status: ReplyStatus::OK,
                text: "",
            },
        );
        let challenge = encoded(
            6,
            Message::Challenge {
                server_nonce: CLIENT_NONCE,
            },
        );
        let open = || ServerSession::new(1, "w");
        let locked = || ServerSession::with_secret(1, "w", secret(SECRET), SERVER_NONCE);
        let cases: Vec<(ServerSession, Vec<u8>, &str)> = vec![
            (
                open(),
                command.clone(),
                "COMMAND is not expected before LOGIN",
            ),
            (open(), auth.clone(), "AUTH is not expected before LOGIN"),
            (
                open(),
                [&login[..], &auth].concat(),
                "AUTH is not expected in an open session",
            ),
            (
                open(),
                [&login[..], &login].concat(),
                "LOGIN is not expected in an open session",
            ),
            (
                locked(),
                [&login[..], &command].concat(),
                "COMMAND is not expected after CHALLENGE (AUTH expected)",
            ),
            (
                locked(),
                [&login[..], &login].concat(),
                "LOGIN is not expected after CHALLENGE (AUTH expected)",
            ),
            (
                locked(),
                command.clone(),
                "COMMAND is not expected before LOGIN",
            ),
            (
                open(),
                welcome.clone(),
                "WELCOME is not expected before LOGIN",
            ),
            (
                open(),
                [&login[..], &reply].concat(),
                "REPLY is not expected in an open session",
            ),
            (
                locked(),
                challenge.clone(),
                "CHALLENGE is not expected before LOGIN",
            ),
        ];
        for (mut server, wire, why) in cases {
            let all = frames(&wire);
            let last = *all.last().unwrap();
            let (events, answer) = to_server(&mut server, &wire);
            assert_eq!(
                events.last().unwrap(),
                &format!("Refused {{ code: ErrorCode(2), message: \"{why}\" }}")
            );
            assert_eq!(
                messages(&answer).last(),
                Some(&(
                    last.tag,
                    Message::Error {
                        code: ErrorCode::UNEXPECTED,
                        message: why
                    }
                ))
            );
            assert!(server.is_finished());
            assert!(!server.is_established());
            // The listener closes; anything else that arrives is dropped.
            let mut out = Vec::new();
            assert_eq!(server.handle(last, &mut out), ServerEvent::Ignored);
            assert!(out.is_empty());
        }

        // A body that does not decode, another version, a bad stream.
        let mut server = open();
        let (events, answer) = to_server(&mut server, b"eAS0\x02\x00\x00\x00\x07\x00\x01\x01");
        assert_eq!(
            events,
            [
                "Refused { code: ErrorCode(1), message: \"LOGIN user (body byte 2): needs 4 bytes, 0 left in the body\" }"
            ]
        );
        assert_eq!(messages(&answer)[0].0, 7);
        let mut server = open();
        let (events, _) = to_server(
            &mut server,
            b"eAS0\x07\x00\x00\x00\x01\x00\x01\x02\x01\x00\x00\x00u",
        );
        assert_eq!(
            events,
            [
                "Refused { code: ErrorCode(3), message: \"LOGIN version (body byte 1): protocol version 2, this side speaks 1\" }"
            ]
        );
        let mut server = open();
        let mut out = Vec::new();
        let Err(bad) = Frame::decode(b"GET / HTTP/1.1\r\n") else {
            panic!()
        };
        let event = server.refuse_frame(&bad, &mut out);
        assert!(matches!(
            event,
            ServerEvent::Refused {
                code: ErrorCode::MALFORMED,
                ..
            }
        ));
        assert_eq!(
            messages(&out),
            [(
                0,
                Message::Error {
                    code: ErrorCode::MALFORMED,
                    message: "not an eAS0 frame: byte 0 is 0x47 where the magic \"eAS0\" has 0x65"
                }
            )]
        );
        // The listener's own refusals, and a client's ERROR or CLOSE at any point.
        let mut server = locked();
        let mut out = Vec::new();
        server.refuse(0, ErrorCode::BUSY, "too many connections", &mut out);
        assert!(server.is_finished());
        assert_eq!(
            messages(&out)[0].1,
            Message::Error {
                code: ErrorCode::BUSY,
                message: "too many connections"
            }
        );
        let mut server = locked();
        let (events, answer) = to_server(
            &mut server,
            &[&login[..], &encoded(2, Message::Close)].concat(),
        );
        assert_eq!(events, ["Continue", "Closed"]);
        assert_eq!(messages(&answer)[1], (2, Message::Close));
        let mut server = open();
        let error = encoded(
            1,
            Message::Error {
                code: ErrorCode::AUTH_FAILED,
                message: "bye",
            },
        );
        let mut out = Vec::new();
        assert_eq!(
            server.handle(frames(&error)[0], &mut out),
            ServerEvent::PeerError {
                code: ErrorCode::AUTH_FAILED,
                message: "bye"
            }
        );
        assert!(out.is_empty() && server.is_finished());
    }

    /// A server that does not know the secret, following a script.
    fn impostor_answers(
        client: &mut ClientSession,
        answers: &[Vec<u8>],
    ) -> (ClientEvent<'static>, Vec<u8>) {
        let mut sent = Vec::new();
        client.login(&mut sent).unwrap();
        let mut last = ClientEvent::Continue;
        for answer in answers {
            let (events, out) = to_client(client, answer);
            sent.extend_from_slice(&out);
            last = match events.into_iter().last().unwrap() {
                ClientEvent::Failed(e) => ClientEvent::Failed(e),
                ClientEvent::Continue => ClientEvent::Continue,
                other => panic!("the impostor got through: {other:?}"),
            };
        }
        (last, sent)
    }

    #[test]
    fn a_client_never_accepts_a_server_without_the_secret() {
        let mine = || ClientSession::with_secret(ops(), secret(SECRET), CLIENT_NONCE);
        let challenge = encoded(
            1,
            Message::Challenge {
                server_nonce: SERVER_NONCE,
            },
        );
        let welcome = |proof| {
            encoded(
                2,
                Message::Welcome(Welcome {
                    session_id: 1,
                    proof,
                    line: "trust me",
                }),
            )
        };

        // A real server with another secret refuses our AUTH.
        let mut server =
            ServerSession::with_secret(9, "hi", secret(b"another secret"), SERVER_NONCE);
        let mut client = mine();
        let (_, last, _) = handshake(&mut server, &mut client);
        assert!(
            last.starts_with("Failed(Refused { code: ErrorCode(4)"),
            "{last}"
        );

        // A server that waves our AUTH through with a proof of its own secret.
        let theirs = secret(b"another secret").proof(
            Direction::ServerToClient,
            &SERVER_NONCE,
            &CLIENT_NONCE,
            "ops",
        );
        let (event, sent) =
            impostor_answers(&mut mine(), &[challenge.clone(), welcome(Some(theirs))]);
        assert_eq!(event, ClientEvent::Failed(ClientError::BadServerProof));
        // The client tells it why, under the WELCOME's tag.
        assert!(matches!(
            messages(&sent).last(),
            Some((
                2,
                Message::Error {
                    code: ErrorCode::AUTH_FAILED,
                    ..
                }
            ))
        ));

        // One that reflects our own proof back: the labels differ.
        let ours = secret(SECRET).proof(
            Direction::ClientToServer,
            &SERVER_NONCE,
            &CLIENT_NONCE,
            "ops",
        );
        let (event, _) = impostor_answers(&mut mine(), &[challenge.clone(), welcome(Some(ours))]);
        assert_eq!(event, ClientEvent::Failed(ClientError::BadServerProof));

        // One that welcomes without a proof, after AUTH or instead of CHALLENGE.
        let (event, _) = impostor_answers(&mut mine(), &[challenge.clone(), welcome(None)]);
        assert_eq!(
            event,
            ClientEvent::Failed(ClientError::ServerNotAuthenticated)
        );
        let early = encoded(
            1,
            Message::Welcome(Welcome {
                session_id: 1,
                proof: None,
                line: "",
            }),
        );
        let (event, _) = impostor_answers(&mut mine(), &[early]);
        assert_eq!(
            event,
            ClientEvent::Failed(ClientError::ServerNotAuthenticated)
        );

        // A proof from a real server for another client's nonces.
        let replayed = secret(SECRET).proof(
            Direction::ServerToClient,
            &SERVER_NONCE,
            &Nonce([7; 32]),
            "ops",
        );
        let (event, _) =
            impostor_answers(&mut mine(), &[challenge.clone(), welcome(Some(replayed))]);
        assert_eq!(event, ClientEvent::Failed(ClientError::BadServerProof));

        // A client without a secret, challenged, says what it lacks.
        let mut client = ClientSession::new(ops());
        let (event, sent) = impostor_answers(&mut client, &[challenge]);
        assert_eq!(event, ClientEvent::Failed(ClientError::SecretRequired));
        assert_eq!(messages(&sent).len(), 1, "only the LOGIN went out");
        assert_eq!(
            ClientError::SecretRequired.to_string(),
            "the server requires a secret (--secret-file)"
        );
    }

    #[test]
    fn the_client_keeps_to_its_turn_and_its_tags() {
        let mut client = ClientSession::new(ops());
        let mut out = Vec::new();
        assert_eq!(
            client.command("report", &[], &mut out),
            Err(ClientError::OutOfTurn {
                call: "command",
                when: "before LOGIN"
            })
        );
        client.login(&mut out).unwrap();
        assert_eq!(
            client.login(&mut out),
            Err(ClientError::OutOfTurn {
                call: "login",
                when: "while a request is outstanding"
            })
        );
        // An answer under the wrong tag.
        let mistagged = encoded(
            7,
            Message::Welcome(Welcome {
                session_id: 1,
                proof: None,
                line: "",
            }),
        );
        let (events, sent) = to_client(&mut client, &mistagged);
        assert_eq!(
            events,
            [ClientEvent::Failed(ClientError::TagMismatch {
                expected: Some(1),
                got: 7
            })]
        );
        assert!(matches!(
            messages(&sent)[..],
            [(
                7,
                Message::Error {
                    code: ErrorCode::UNEXPECTED,
                    ..
                }
            )]
        ));

        // Open a session; then one request at a time.
        let mut server = ServerSession::new(1, "");
        let mut client = ClientSession::new(ops());
        let mut wire = Vec::new();
        client.login(&mut wire).unwrap();
        let (_, answer) = to_server(&mut server, &wire);
        to_client(&mut client, &answer);
        let mut out = Vec::new();
        assert_eq!(client.command("report", &[], &mut out), Ok(2));
        assert!(matches!(
            client.command("report", &[], &mut out),
            Err(ClientError::OutOfTurn { .. })
        ));
        assert!(matches!(
            client.close(&mut out),
            Err(ClientError::OutOfTurn { .. })
        ));
        // A bad request is refused without spending a tag or a turn.
        let mut idle = ClientSession::new(ops());
        idle.state = ClientState::Established;
        assert!(matches!(
            idle.command("", &[], &mut out),
            Err(ClientError::Encode(EncodeError::Invalid(_)))
        ));
        assert_eq!(idle.command("report", &[], &mut Vec::new()), Ok(1));
        // A REPLY nobody asked for.
        let stray = encoded(
            3,
            Message::Reply {
                status: ReplyStatus::OK,
                text: "",
            },
        );
        let (events, _) = to_client(&mut client, &stray);
        assert_eq!(
            events,
            [ClientEvent::Failed(ClientError::TagMismatch {
                expected: Some(2),
                got: 3
            })]
        );

        // The server speaking on its own (tag 0): ERROR or CLOSE, any time.
        let mut client = ClientSession::new(ops());
        client.login(&mut Vec::new()).unwrap();
        let busy = encoded(
            0,
            Message::Error {
                code: ErrorCode::BUSY,
                message: "too many connections",
            },
        );
        assert_eq!(
            to_client(&mut client, &busy).0,
            [ClientEvent::Failed(ClientError::Refused {
                code: ErrorCode::BUSY,
                message: "too many connections".into()
            })]
        );
        let mut client = ClientSession::new(ops());
        client.state = ClientState::Established;
        assert_eq!(
            to_client(&mut client, &encoded(0, Message::Close)).0,
            [ClientEvent::Closed]
        );
        // Any other tag-0 frame is not an answer to anything.
        let mut client = ClientSession::new(ops());
        client.state = ClientState::Established;
        assert!(matches!(
            to_client(
                &mut client,
                &encoded(
                    0,
                    Message::Reply {
                        status: ReplyStatus::OK,
                        text: ""
                    }
                )
            )
            .0[..],
            [ClientEvent::Failed(ClientError::TagMismatch {
                expected: None,
                got: 0
            })]
        ));

        // Tags wrap past 65535 to 1, never 0.
        let mut client = ClientSession::new(ops());
        client.state = ClientState::Established;
        client.next_tag = u16::MAX;
        let mut out = Vec::new();
        assert_eq!(client.command("report", &[], &mut out), Ok(u16::MAX));
        client.awaiting = None;
        assert_eq!(client.command("report", &[], &mut out), Ok(1));

        // A body the client cannot decode, and a bad stream.
        let mut client = ClientSession::new(ops());
        client.login(&mut Vec::new()).unwrap();
        let (events, sent) = to_client(&mut client, b"eAS0\x01\x00\x00\x00\x01\x00\x63");
        assert!(matches!(
            events[..],
            [ClientEvent::Failed(ClientError::Malformed(_))]
        ));
        assert!(matches!(
            messages(&sent)[..],
            [(
                1,
                Message::Error {
                    code: ErrorCode::MALFORMED,
                    ..
                }
            )]
        ));
        let mut client = ClientSession::new(ops());
        let e = client.frame_error(FrameError::TooLong { len: u32::MAX });
        assert_eq!(
            e.to_string(),
            "protocol error: frame body of 4294967295 bytes is over the 65536-byte limit"
        );
        assert!(client.is_finished());
    }

    #[test]
    fn sessions_survive_any_frame_in_any_state() {
        let mut next = rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = Vec::new();
        let samples = samples();
        let (mut refused, mut handled) = (0u32, 0u32);
        for round in 0..20_000u64 {
            // A session driven some way into its handshake...
            let locked = round.is_multiple_of(2);
            let mut server = if locked {
                ServerSession::with_secret(1, "w", secret(SECRET), SERVER_NONCE)
            } else {
                ServerSession::new(1, "w")
            };
            let mut client = if locked {
                ClientSession::with_secret(ops(), secret(SECRET), CLIENT_NONCE)
            } else {
                ClientSession::new(ops())
            };
            let mut wire = Vec::new();
            client.login(&mut wire).unwrap();
            for _ in 0..(round / 2) % 3 {
                let (_, answer) = to_server(&mut server, &wire);
                let (_, reply) = to_client(&mut client, &answer);
                wire = reply;
            }
            // ...then fed garbage or a valid message under a random tag.
            let r = next();
            if r.is_multiple_of(3) {
                garbage_body(&mut next, &mut buf);
            } else {
                buf = body_of(&samples[(r >> 8) as usize % samples.len()]);
            }
            let frame = Frame {
                tag: (r >> 32) as u16 % 4,
                body: &buf,
            };
            let mut out = Vec::new();
            match server.handle(frame, &mut out) {
                ServerEvent::Refused { .. } => refused += 1,
                _ => handled += 1,
            }
            // What a session sends is always whole, valid frames.
            messages(&out);
            out.clear();
            let _ = client.handle(frame, &mut out);
            messages(&out);
        }
        assert!(
            refused > 5_000 && handled > 1_000,
            "{refused} refused, {handled} handled"
        );
    }

    #[test]
    fn secrets_and_nonces() {
        assert_eq!(Secret::new(b"").unwrap_err(), SecretError::Empty);
        assert_eq!(
            Secret::from_file_contents(b"\n").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            Secret::from_file_contents(b"").unwrap_err(),
            SecretError::Empty
        );
        let (s, n, c) = (SERVER_NONCE, CLIENT_NONCE, Direction::ClientToServer);
        let reference = secret(b"hunter2").proof(c, &s, &n, "ops");
        for contents in [
            &b"hunter2"[..],
            b"hunter2\n",
            b"hunter2\r\n",
            b"hunter2\n\n",
        ] {
            let from_file = Secret::from_file_contents(contents).unwrap();
            assert_eq!(from_file.proof(c, &s, &n, "ops"), reference);
            assert!(from_file.verify(c, &s, &n, "ops", &reference));
        }
        // Only line endings go: inner and leading whitespace is secret.
        let spaced = Secret::from_file_contents(b" hunter2 \n").unwrap();
        assert_ne!(spaced.proof(c, &s, &n, "ops"), reference);
        // Any change of input changes the proof.
        let other = [
            secret(b"hunter2").proof(Direction::ServerToClient, &s, &n, "ops"),
            secret(b"hunter2").proof(c, &n, &s, "ops"),
            secret(b"hunter2").proof(c, &s, &n, "opS"),
            secret(b"hunter3").proof(c, &s, &n, "ops"),
        ];
        assert!(other.iter().all(|p| *p != reference));
        assert!(!secret(b"hunter2").verify(c, &s, &n, "ops", &other[0]));
        assert_eq!(format!("{:?}", secret(b"hunter2")), "Secret(..)");

        let (a, b) = (Nonce::random().unwrap(), Nonce::random().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, Nonce([0; NONCE_LEN]));
        assert_eq!(
            format!("{:?}", Nonce([0xab; 32])),
            format!("Nonce({})", "ab".repeat(32))
        );

        // A user of a frame's length still fits the MAC's length field.
        let long = "u".repeat(FRAME_BODY_MAX);
        assert_eq!(
            proof_input(c, &s, &n, &long).len(),
            CLIENT_PROOF_LABEL.len() + 68 + FRAME_BODY_MAX
        );
        assert_eq!(truncate_utf8("h\u{e9}llo", 2), "h");
        assert_eq!(truncate_utf8("h\u{e9}llo", 3), "h\u{e9}");
        assert_eq!(truncate_utf8("ok", 10), "ok");
        let server = ServerSession::new(1, &"\u{e9}".repeat(WELCOME_LINE_MAX));
        assert_eq!(server.welcome.len(), WELCOME_LINE_MAX);
    }

    // -- docs/eas0.md ------------------------------------------------------

    const DOC: &str = include_str!("../../docs/eas0.md");
    /// The inputs of the documented session.
    const DOC_SECRET: &[u8] = b"correct horse battery staple";
    /// The capture's report, first lines.
    const DOC_REPORT: &str = "eAss---Srvr: CommandCnt: 1 ReplyCnt: 0 RepliesPosted: 0 ReplyPolls: 0 Accepts: 1 Connections: 1\nRate: 666.8 Mbits/s\n";
    const DOC_SERVER_NONCE: Nonce = Nonce([
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
        0x1e, 0x1f,
    ]);
    const DOC_CLIENT_NONCE: Nonce = Nonce([
        0xe0, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xed, 0xee,
        0xef, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
        0xfe, 0xff,
    ]);

    fn hex_lines(bytes: &[u8]) -> String {
        bytes
            .chunks(16)
            .map(|line| {
                line.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every example of docs/eas0.md, by name: the frames of a session run
    /// by the two state machines with the documented inputs, the MAC inputs
    /// and outputs, and a few frames the session does not produce.
    fn doc_examples() -> Vec<(&'static str, Vec<u8>)> {
        let login = LoginInfo {
            user: "ops".into(),
            host: Some("pxe1".into()),
            pid: Some("4242".into()),
            app: Some("uftpd-stat".into()),
        };
        let mut server = ServerSession::with_secret(
            7,
            "uftpd 0.1.0 stats",
            secret(DOC_SECRET),
            DOC_SERVER_NONCE,
        );
        let mut client =
            ClientSession::with_secret(login.clone(), secret(DOC_SECRET), DOC_CLIENT_NONCE);
        let mut examples = Vec::new();
        let mut request = Vec::new();
        client.login(&mut request).unwrap();
        let mut report = false;
        for name in ["login", "auth", "command", "close"] {
            examples.push((name, request.clone()));
            let (_, answer) = to_server_replying(&mut server, &request, Some(DOC_REPORT));
            let answer_name = match name {
                "login" => "challenge",
                "auth" => "welcome",
                "command" => "reply",
                _ => "close-reply",
            };
            examples.push((answer_name, answer.clone()));
            request.clear();
            let mut out = Vec::new();
            match frames(&answer)
                .into_iter()
                .map(|f| client.handle(f, &mut out))
                .last()
            {
                Some(ClientEvent::Continue) => request = out,
                Some(ClientEvent::Welcome { .. }) => {
                    client.command(COMMAND_REPORT, &[], &mut request).unwrap();
                }
                Some(ClientEvent::Reply { .. }) => {
                    report = true;
                    client.close(&mut request).unwrap();
                }
                Some(ClientEvent::Closed) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(report && client.is_finished() && server.is_finished());

        let (s, c) = (&DOC_SERVER_NONCE, &DOC_CLIENT_NONCE);
        let key = secret(DOC_SECRET);
        for (input, proof, direction) in [
            (
                "client-proof-input",
                "client-proof",
                Direction::ClientToServer,
            ),
            (
                "server-proof-input",
                "server-proof",
                Direction::ServerToClient,
            ),
        ] {
            examples.push((input, proof_input(direction, s, c, "ops")));
            examples.push((proof, key.proof(direction, s, c, "ops").to_vec()));
        }

        let mut open = ServerSession::new(7, "uftpd 0.1.0 stats");
        let mut request = Vec::new();
        ClientSession::new(login).login(&mut request).unwrap();
        examples.push(("welcome-open", to_server(&mut open, &request).1));
        let args = ["shard", "0"];
        examples.push((
            "command-args",
            encoded(
                4,
                Message::Command(Command {
                    word: "report",
                    args: Args::new(&args),
                }),
            ),
        ));
        examples.push((
            "error",
            encoded(
                2,
                Message::Error {
                    code: ErrorCode::AUTH_FAILED,
                    message: "authentication failed",
                },
            ),
        ));
        examples
    }

    /// `<!-- example: NAME -->` then a fenced block of hex, in the document.
    fn doc_blocks() -> Vec<(String, String)> {
        let mut blocks = Vec::new();
        let mut lines = DOC.lines();
        while let Some(line) = lines.next() {
            let Some(name) = line
                .strip_prefix("<!-- example: ")
                .and_then(|l| l.strip_suffix(" -->"))
            else {
                continue;
            };
            assert_eq!(lines.next(), Some("```text"), "example {name}: no fence");
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((name.to_owned(), body.join("\n")));
        }
        blocks
    }

    #[test]
    fn the_document_shows_exactly_what_the_code_sends() {
        let examples = doc_examples();
        let blocks = doc_blocks();
        let mut stale = Vec::new();
        for (name, bytes) in &examples {
            let want = hex_lines(bytes);
            match blocks.iter().filter(|(n, _)| n == name).collect::<Vec<_>>()[..] {
                [(_, got)] if *got == want => {}
                _ => stale.push(format!("<!-- example: {name} -->\n```text\n{want}\n```")),
            }
        }
        assert!(
            stale.is_empty(),
            "docs/eas0.md is out of date; these blocks are what the code sends:\n\n{}",
            stale.join("\n\n")
        );
        for (name, _) in &blocks {
            assert!(
                examples.iter().any(|(n, _)| n == name),
                "docs/eas0.md shows an example no test builds: {name}"
            );
        }
        // The tables name every code and type with its value.
        for ty in MessageType::ALL {
            let row = format!("| `0x{:02x}` | {} |", ty as u8, ty.name());
            assert!(DOC.contains(&row), "docs/eas0.md lacks the row {row}");
        }
        for code in ErrorCode::ALL {
            let row = format!("| {} | `{}` |", code.0, code.name().unwrap_or_default());
            assert!(DOC.contains(&row), "docs/eas0.md lacks the row {row}");
        }
        for status in [
            ReplyStatus::OK,
            ReplyStatus::UNKNOWN_COMMAND,
            ReplyStatus::BAD_ARGUMENTS,
            ReplyStatus::FAILED,
        ] {
            let row = format!("| {} | `{}` |", status.0, status.name().unwrap_or_default());
            assert!(DOC.contains(&row), "docs/eas0.md lacks the row {row}");
        }
        // The Python check's answer is the client proof.
        let proof = examples.iter().find(|(n, _)| *n == "client-proof").unwrap();
        let hex: String = proof.1.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            DOC.contains(&format!("# '{hex}'")),
            "the Python example's answer"
        );
        // The labels, and the limits, as the code has them.
        for label in [CLIENT_PROOF_LABEL, SERVER_PROOF_LABEL] {
            let text = std::str::from_utf8(label).unwrap().trim_end_matches('\0');
            assert!(DOC.contains(&format!("`{text}` followed by one zero byte")));
        }
        for limit in [
            FRAME_BODY_MAX,
            FRAME_LEN_MAX,
            REPLY_TEXT_MAX,
            WELCOME_LINE_MAX,
            ERROR_MESSAGE_MAX,
        ] {
            assert!(DOC.contains(&format!("{limit} bytes")), "{limit}");
        }
    }
}
