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
        if std::mem::replace(&mut seen[slot], true) {
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
}
