//! One eAS0 session on its TCP connection: moves bytes between the socket
//! and the sans-I/O [`ServerSession`], and answers its commands with a
//! [`View`](super::view::View) of the counters. Reads and writes time out
//! (the idle timeout); the whole session is bounded by a deadline.

use std::io::{self, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::allow;
use super::eas0::{
    self, Decoded, ErrorCode, Frame, Nonce, REPLY_TEXT_MAX, ReplyStatus, ServerEvent, ServerSession,
};
use super::server::{StatsConfig, read_some};
use super::view::{EndpointCounters, History};
use super::{json, report};

/// Session ids, unique for the life of the process.
static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// The commands a session answers (docs/eas0.md "Commands").
pub const COMMAND_JSON: &str = "json";
pub const COMMAND_HELP: &str = "help";

pub(super) fn run(
    stream: &mut TcpStream,
    mut inbox: Vec<u8>,
    peer: SocketAddr,
    config: &StatsConfig,
    history: &History,
    deadline: Instant,
) -> io::Result<()> {
    let counters = &history.endpoint;
    let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
    let welcome = format!(
        "uftpd {} stats on {}",
        env!("CARGO_PKG_VERSION"),
        config.server_name
    );
    let mut outbox = Vec::with_capacity(4096);
    let mut server = match &config.secret {
        Some(secret) => {
            let nonce = match Nonce::random() {
                Ok(n) => n,
                Err(_) => {
                    let mut s = ServerSession::new(id, &welcome);
                    s.refuse(0, ErrorCode::INTERNAL, "no random nonce", &mut outbox);
                    return send(stream, &outbox);
                }
            };
            ServerSession::with_secret(id, &welcome, secret.clone(), nonce)
        }
        None => {
            let mut s = ServerSession::new(id, &welcome);
            // Checked at start too: without a secret only loopback listens.
            if !allow::is_loopback(peer.ip()) {
                EndpointCounters::inc(&counters.eas0_refused);
                s.refuse(
                    0,
                    ErrorCode::AUTH_FAILED,
                    "no secret configured: loopback only",
                    &mut outbox,
                );
                return send(stream, &outbox);
            }
            s
        }
    };
    loop {
        let mut used = 0;
        let mut close = false;
        while !close {
            let decoded = Frame::decode(inbox.get(used..).unwrap_or_default());
            match decoded {
                Ok(Decoded::Incomplete { .. }) => break,
                Ok(Decoded::Frame { frame, len }) => {
                    used += len;
                    close = on_event(&mut server, frame, &mut outbox, peer, history);
                }
                Err(bad) => {
                    EndpointCounters::inc(&counters.eas0_refused);
                    server.refuse_frame(&bad, &mut outbox);
                    close = true;
                }
            }
        }
        inbox.drain(..used.min(inbox.len()));
        send(stream, &outbox)?;
        outbox.clear();
        if close || server.is_finished() {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        if Instant::now() >= deadline {
            server.refuse(
                0,
                ErrorCode::IDLE_TIMEOUT,
                "session lasted too long",
                &mut outbox,
            );
            return send(stream, &outbox);
        }
        match read_some(stream, &mut inbox, eas0::FRAME_LEN_MAX) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                server.refuse(0, ErrorCode::IDLE_TIMEOUT, "idle too long", &mut outbox);
                return send(stream, &outbox);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Handles one frame; true when the session is over.
fn on_event(
    server: &mut ServerSession,
    frame: Frame<'_>,
    outbox: &mut Vec<u8>,
    peer: SocketAddr,
    history: &History,
) -> bool {
    let counters = &history.endpoint;
    match server.handle(frame, outbox) {
        ServerEvent::Continue => false,
        ServerEvent::LoggedIn => {
            EndpointCounters::inc(&counters.eas0_logins);
            false
        }
        ServerEvent::Command { tag, command } => {
            EndpointCounters::inc(&counters.eas0_commands);
            let (status, text) = match command.word {
                eas0::COMMAND_REPORT => (
                    ReplyStatus::OK,
                    report::render(&history.view(Instant::now())),
                ),
                COMMAND_JSON => (ReplyStatus::OK, json::render(&history.view(Instant::now()))),
                COMMAND_HELP => (
                    ReplyStatus::OK,
                    "commands: report (the text report), json (the /stats.json document), help\n"
                        .to_string(),
                ),
                other => (
                    ReplyStatus::UNKNOWN_COMMAND,
                    format!("unknown command {other:?}: try report, json or help\n"),
                ),
            };
            let text = fit(&text, REPLY_TEXT_MAX);
            if server.reply(tag, status, text, outbox).is_err() {
                server.refuse(tag, ErrorCode::INTERNAL, "reply too large", outbox);
                return true;
            }
            false
        }
        ServerEvent::Closed | ServerEvent::PeerError { .. } | ServerEvent::Ignored => true,
        ServerEvent::Refused { code, message } => {
            EndpointCounters::inc(&counters.eas0_refused);
            if matches!(code, ErrorCode::AUTH_FAILED | ErrorCode::NONCE_REUSED) {
                let user = server
                    .login_attempt()
                    .map(|l| l.user.clone())
                    .unwrap_or_default();
                crate::log_warn!("stats: refused eAS0 login from {peer} (user {user}): {message}");
            }
            true
        }
    }
}

/// `text` cut at the last line that fits in `max` bytes.
fn fit(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.get(..end).unwrap_or_default();
    match cut.rfind('\n') {
        Some(nl) => cut.get(..=nl).unwrap_or(cut),
        None => cut,
    }
}

fn send(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    stream.write_all(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_replies_are_cut_at_a_line() {
        assert_eq!(super::fit("ab\ncd\nef", 7), "ab\ncd\n");
        assert_eq!(super::fit("short", 7), "short");
        assert_eq!(super::fit("éééé", 3), "é");
    }
}
