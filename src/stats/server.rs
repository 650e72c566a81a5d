//! The stats endpoint's threads: a sampler that ticks the rate history
//! once a second, a listener, and one short-lived thread per connection
//! (at most `--stats-connections-max` at once). None of them touches a
//! shard: they read counters. A slow, stuck or hostile client holds only
//! its own thread, for at most the idle timeout per read or write.
//!
//! The protocols are told apart by the first bytes: `eAS0` starts an eAS0
//! session ([`super::eas0`]), anything else is taken for HTTP
//! ([`super::http`]).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::allow::{self, Cidr};
use super::eas0::{MAGIC, Secret};
use super::http::{self, Parse, Route};
use super::view::{EndpointCounters, History};
use super::{json, page, prometheus};

/// How long one connection may last in all, however busy.
pub const SESSION_LIFETIME_MS: u64 = 15 * 60 * 1000;
/// The shortest secret accepted.
pub const SECRET_BYTES_MIN: usize = 16;
/// The longest secret file read.
pub const SECRET_FILE_BYTES_MAX: u64 = 4096;

#[derive(Clone, Debug)]
pub struct StatsConfig {
    /// `None`: no authentication (loopback only; checked at start).
    pub secret: Option<Secret>,
    pub allow: Vec<Cidr>,
    pub connections_max: u32,
    pub idle_timeout_ms: u64,
    /// Shown in the eAS0 welcome (e.g. the host name).
    pub server_name: String,
}

/// Refuses what would expose the stats without authentication: a listen
/// address beyond loopback needs a secret.
pub fn check_exposure(addr: SocketAddr, has_secret: bool) -> Result<(), String> {
    if has_secret || allow::is_loopback(addr.ip()) {
        Ok(())
    } else {
        Err(format!(
            "--stats {addr} is not a loopback address: give --stats-secret-file too, \
             or keep the stats on 127.0.0.1"
        ))
    }
}

/// Reads the shared secret: the bytes of a regular file that only its
/// owner may read, without the line ending(s) at its end (docs/eas0.md
/// "Authentication"), at least [`SECRET_BYTES_MIN`] of them. The server
/// and `uftpd-stat` both read it with this, so they agree.
pub fn read_secret(path: &Path) -> Result<Secret, String> {
    let what = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("stats secret file {what}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("stats secret file {what}: not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "stats secret file {what} is readable by others (mode {:o}): chmod 600 it",
            meta.mode() & 0o777
        ));
    }
    // Small, and read once at start: bounded anyway.
    let file = std::fs::File::open(path).map_err(|e| format!("stats secret file {what}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(SECRET_FILE_BYTES_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("stats secret file {what}: {e}"))?;
    let end = bytes
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    if end < SECRET_BYTES_MIN {
        return Err(format!(
            "stats secret file {what}: the secret must be at least {SECRET_BYTES_MIN} bytes \
             (e.g. head -c 32 /dev/urandom | base64 > FILE)"
        ));
    }
    Secret::from_file_contents(&bytes).map_err(|e| format!("stats secret file {what}: {e}"))
}

/// Binds the stats listener. With `shared`, joins a listener another
/// uftpd holds on the same address (a --takeover restart); otherwise a
/// busy port is an error.
pub fn bind(addr: SocketAddr, shared: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = Domain::for_address(addr);
    if !shared && addr.port() != 0 {
        // A socket without SO_REUSEPORT cannot join a group: this fails
        // with EADDRINUSE if anything listens there.
        let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let socket = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // So the next instance can --takeover this port too.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// Starts the sampler and the listener threads.
pub fn spawn(listener: TcpListener, config: StatsConfig, history: Arc<History>) -> io::Result<()> {
    let sampler = Arc::clone(&history);
    std::thread::Builder::new()
        .name("uftpd-stats-tick".into())
        .spawn(move || {
            // Without root these threads drop what capabilities they were
            // given (they are per thread). As root they keep them until
            // --user's switch clears them: glibc aborts when a thread
            // cannot follow a setuid.
            if crate::sys::process::effective_uid() != 0 {
                let _ = crate::sys::process::drop_thread_capabilities(&[]);
            }
            let mut next = Instant::now();
            loop {
                sampler.tick(Instant::now());
                next += Duration::from_secs(1);
                let now = Instant::now();
                if next <= now {
                    next = now + Duration::from_secs(1);
                }
                std::thread::sleep(next - now);
            }
        })?;
    let config = Arc::new(config);
    std::thread::Builder::new()
        .name("uftpd-stats".into())
        .spawn(move || {
            // Connection threads inherit this thread's empty sets.
            if crate::sys::process::effective_uid() != 0 {
                let _ = crate::sys::process::drop_thread_capabilities(&[]);
            }
            accept_loop(listener, config, history)
        })?;
    Ok(())
}

fn accept_loop(listener: TcpListener, config: Arc<StatsConfig>, history: Arc<History>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            // EMFILE and the like: back off rather than spin.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let counters = &history.endpoint;
        EndpointCounters::inc(&counters.connections_accepted);
        let open = counters.connections_open.load(Ordering::Relaxed);
        if open >= u64::from(config.connections_max) {
            EndpointCounters::inc(&counters.connections_refused);
            drop(stream);
            continue;
        }
        counters.connections_open.fetch_add(1, Ordering::Relaxed);
        let history_c = Arc::clone(&history);
        let config_c = Arc::clone(&config);
        let spawned = std::thread::Builder::new()
            .name("uftpd-stats-conn".into())
            .spawn(move || {
                let _ = serve(stream, peer, &config_c, &history_c);
                history_c
                    .endpoint
                    .connections_open
                    .fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            counters.connections_open.fetch_sub(1, Ordering::Relaxed);
            EndpointCounters::inc(&counters.connections_refused);
        }
    }
}

/// One connection: which protocol, then that protocol until it ends.
fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &StatsConfig,
    history: &History,
) -> io::Result<()> {
    let idle = Duration::from_millis(config.idle_timeout_ms.max(1));
    stream.set_read_timeout(Some(idle))?;
    stream.set_write_timeout(Some(idle))?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    // Enough bytes to tell eAS0 from HTTP: the magic, or a byte off it.
    while buf.len() < MAGIC.len() && MAGIC.starts_with(&buf) {
        if read_some(&mut stream, &mut buf, 4096)? == 0 {
            return Ok(());
        }
    }
    if buf.starts_with(&MAGIC) {
        let deadline = Instant::now() + Duration::from_millis(SESSION_LIFETIME_MS);
        return super::session::run(&mut stream, buf, peer, config, history, deadline);
    }
    serve_http(stream, buf, peer.ip(), config, history)
}

/// Appends what one read returns (at most `max` bytes in `buf` in all).
pub(super) fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let room = max.saturating_sub(buf.len()).min(chunk.len());
    if room == 0 {
        return Ok(0);
    }
    let n = stream.read(chunk.get_mut(..room).unwrap_or_default())?;
    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(n)
}

fn serve_http(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    ip: IpAddr,
    config: &StatsConfig,
    history: &History,
) -> io::Result<()> {
    let counters = &history.endpoint;
    EndpointCounters::inc(&counters.http_requests);
    if !allow::http_allowed(ip, &config.allow) {
        EndpointCounters::inc(&counters.http_forbidden);
        return finish(
            stream,
            &http::error(403, "not allowed from this address (--stats-allow)"),
        );
    }
    let response = loop {
        match http::parse(&buf) {
            Parse::Incomplete => {
                if read_some(&mut stream, &mut buf, http::HEAD_BYTES_MAX)? == 0 {
                    return Ok(());
                }
            }
            Parse::Bad => break http::error(400, "not an HTTP/1 request"),
            Parse::TooLarge => break http::error(431, "request head too large"),
            Parse::Request { method, path } => {
                let head_only = match method {
                    "GET" => false,
                    "HEAD" => true,
                    _ => break http::error(405, "only GET and HEAD"),
                };
                let route = http::route(path);
                let view = history.view(Instant::now());
                let body = match route {
                    Route::Page => page::render(&view),
                    Route::Metrics => prometheus::render(&view),
                    Route::Json => json::render(&view),
                    Route::NotFound => {
                        break http::error(404, "not found: try /, /metrics or /stats.json");
                    }
                };
                break http::response(200, http::content_type(route), &body, head_only);
            }
        }
    };
    finish(stream, &response)
}

/// Writes the whole response and closes our side.
fn finish(mut stream: TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}
