//! One eAS0 connection: the server's own sans-I/O client session
//! (`uftpd::stats::eas0::ClientSession`) over a TCP stream, with a trace of
//! each request and reply as `REQ:`/`RPL:` lines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use uftpd::stats::eas0::{
    ClientEvent, ClientSession, Decoded, Frame, LoginInfo, Nonce, ReplyStatus, Secret,
};

/// How long to wait for the server to accept, and for each answer.
pub const CONNECT_TIMEOUT_MS: u64 = 5000;
pub const REPLY_TIMEOUT_MS: u64 = 10_000;

/// What went wrong, as the sentence the operator sees.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    session: ClientSession,
    inbox: Vec<u8>,
    /// Print `REQ:`/`RPL:` lines.
    trace: bool,
}

/// A REPLY: its status and text.
pub struct Reply {
    pub status: ReplyStatus,
    pub text: String,
}

impl Connection {
    /// Connects and logs in as `user` (with the secret if given).
    pub fn open(
        addr: SocketAddr,
        user: &str,
        secret: Option<Secret>,
        trace: bool,
    ) -> Result<Connection, Failure> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
            .map_err(|e| {
                Failure(match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => format!(
                        "cannot connect to {addr}: connection refused (is uftpd running, with --stats {addr}?)"
                    ),
                    std::io::ErrorKind::TimedOut => {
                        format!("cannot connect to {addr}: no answer within {CONNECT_TIMEOUT_MS} ms")
                    }
                    _ => format!("cannot connect to {addr}: {e}"),
                })
            })?;
        let timeout = Some(Duration::from_millis(REPLY_TIMEOUT_MS));
        let _ = stream.set_read_timeout(timeout);
        let _ = stream.set_write_timeout(timeout);
        let _ = stream.set_nodelay(true);
        let login = LoginInfo {
            user: user.to_string(),
            host: Some(hostname()),
            pid: Some(std::process::id().to_string()),
            app: Some("uftpd-stat".to_string()),
        };
        let described = format!(
            "[USER {} HOST {} PID {} APP uftpd-stat]",
            login.user,
            login.host.as_deref().unwrap_or("-"),
            std::process::id()
        );
        let session = match secret {
            Some(secret) => {
                let nonce = Nonce::random()
                    .map_err(|e| Failure(format!("no random nonce from the kernel: {e}")))?;
                ClientSession::with_secret(login, secret, nonce)
            }
            None => ClientSession::new(login),
        };
        let mut c = Connection {
            addr,
            stream,
            session,
            inbox: Vec::with_capacity(8192),
            trace,
        };
        let mut out = Vec::new();
        let tag = c
            .session
            .login(&mut out)
            .map_err(|e| Failure(e.to_string()))?;
        c.req(&format!("[LOGIN Tag:{tag:03}] {described}"));
        c.send(&out)?;
        match c.next_event()? {
            Event::Welcome {
                session_id,
                line,
                authenticated,
            } => {
                c.rpl(&format!(
                    "[WELCOME Tag:{tag:03}] [SESSION {session_id} AUTH {}] {line}",
                    if authenticated { "yes" } else { "none" }
                ));
                Ok(c)
            }
            Event::Reply(_) => Err(Failure(format!(
                "protocol error from {addr}: a REPLY before the WELCOME"
            ))),
            Event::Closed => Err(Failure(format!("{addr} closed the session during login"))),
        }
    }

    /// Sends COMMAND `word` and waits for its REPLY.
    pub fn command(&mut self, word: &str) -> Result<Reply, Failure> {
        let mut out = Vec::new();
        let tag = self
            .session
            .command(word, &[], &mut out)
            .map_err(|e| Failure(e.to_string()))?;
        self.req(&format!("[COMMAND Tag:{tag:03}] [{word}]"));
        self.send(&out)?;
        match self.next_event()? {
            Event::Reply(reply) => {
                self.rpl(&format!(
                    "[STS: {} Tag:{tag:03}] [{} bytes]",
                    status_word(reply.status),
                    reply.text.len()
                ));
                Ok(reply)
            }
            Event::Closed => Err(Failure(format!(
                "{} closed the session instead of answering {word:?}",
                self.addr
            ))),
            Event::Welcome { .. } => Err(Failure(format!(
                "protocol error from {}: a second WELCOME",
                self.addr
            ))),
        }
    }

    /// Says CLOSE and waits (briefly) for the server's CLOSE.
    pub fn close(mut self) {
        let mut out = Vec::new();
        let Ok(tag) = self.session.close(&mut out) else {
            return;
        };
        self.req(&format!("[CLOSE Tag:{tag:03}]"));
        if self.send(&out).is_err() {
            return;
        }
        if let Ok(Event::Closed) = self.next_event() {
            self.rpl(&format!("[CLOSE Tag:{tag:03}]"));
        }
    }

    fn req(&self, line: &str) {
        if self.trace {
            print_line("REQ: ", line);
        }
    }

    fn rpl(&self, line: &str) {
        if self.trace {
            print_line("RPL: ", line);
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Failure(format!("lost the connection to {}: {e}", self.addr)))
    }

    /// Reads until the session has something to say.
    fn next_event(&mut self) -> Result<Event, Failure> {
        loop {
            let mut out = Vec::new();
            let mut used = 0;
            let mut event = None;
            loop {
                match Frame::decode(self.inbox.get(used..).unwrap_or_default()) {
                    Ok(Decoded::Incomplete { .. }) => break,
                    Ok(Decoded::Frame { frame, len }) => {
                        used += len;
                        match self.session.handle(frame, &mut out) {
                            ClientEvent::Continue | ClientEvent::Ignored => {}
                            ClientEvent::Welcome {
                                session_id,
                                line,
                                authenticated,
                            } => {
                                event = Some(Event::Welcome {
                                    session_id,
                                    line: line.to_string(),
                                    authenticated,
                                });
                                break;
                            }
                            ClientEvent::Reply { status, text, .. } => {
                                event = Some(Event::Reply(Reply {
                                    status,
                                    text: text.to_string(),
                                }));
                                break;
                            }
                            ClientEvent::Closed => {
                                event = Some(Event::Closed);
                                break;
                            }
                            ClientEvent::Failed(e) => {
                                let _ = self.stream.write_all(&out);
                                return Err(Failure(format!("{}: {e}", self.addr)));
                            }
                        }
                    }
                    Err(bad) => {
                        let e = self.session.frame_error(bad);
                        return Err(Failure(format!(
                            "{} does not speak eAS0 here: {e}",
                            self.addr
                        )));
                    }
                }
            }
            self.inbox.drain(..used.min(self.inbox.len()));
            if !out.is_empty() {
                self.send(&out)?;
            }
            if let Some(e) = event {
                return Ok(e);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Failure(format!(
                        "{} closed the connection (a full endpoint closes new connections at once)",
                        self.addr
                    )));
                }
                Ok(n) => self
                    .inbox
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Failure(format!(
                        "{} did not answer within {REPLY_TIMEOUT_MS} ms",
                        self.addr
                    )));
                }
                Err(e) => {
                    return Err(Failure(format!(
                        "lost the connection to {}: {e}",
                        self.addr
                    )));
                }
            }
        }
    }
}

enum Event {
    Welcome {
        session_id: u64,
        line: String,
        authenticated: bool,
    },
    Reply(Reply),
    Closed,
}

/// A line on stdout; a reader that went away (`| head`) is not an error.
fn print_line(prefix: &str, line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix}{line}");
}

fn status_word(status: ReplyStatus) -> String {
    match status.name() {
        Some(name) => name.to_ascii_uppercase(),
        None => status.0.to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}
