//! Socket activation: the UDP sockets systemd passes (`LISTEN_FDS`,
//! `LISTEN_PID`, descriptors from 3), as sd_listen_fds(3) defines them,
//! and the one inetd (`wait` mode) or systemd's `StandardInput=socket`
//! passes on standard input.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::net;

/// The first passed descriptor (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;
/// More passed descriptors than this is not a TFTP unit (each is a listen
/// address; uftpd opens a socket per shard for each).
pub const LISTEN_FDS_MAX: usize = 64;

/// What the environment says was passed: nothing for us, or a count.
/// Pure, for tests: `pid` is ours, the two values are the variables'.
pub fn passed_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> Result<usize, String> {
    // Not for this process (a parent's variables leaked through): ignore,
    // as sd_listen_fds does.
    let Some(for_pid) = listen_pid else {
        return Ok(0);
    };
    if for_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Ok(0);
    }
    let fds = listen_fds.unwrap_or("0");
    match fds.trim().parse::<usize>() {
        Ok(n) if n <= LISTEN_FDS_MAX => Ok(n),
        Ok(n) => Err(format!(
            "socket activation: LISTEN_FDS={n}, more than the {LISTEN_FDS_MAX} sockets uftpd takes"
        )),
        Err(_) => Err(format!(
            "socket activation: LISTEN_FDS={fds:?} is not a number"
        )),
    }
}

/// Takes the sockets systemd passed, with their local addresses, and
/// clears the variables so nothing started later sees them. Each must be
/// a bound UDP socket (`ListenDatagram=`); an IPv6 one may be dual-stack
/// (systemd's default `BindIPv6Only=`), and IPv4 clients are then served
/// through it.
///
/// Call before any other thread exists: it changes the environment.
pub fn take_passed() -> Result<Vec<(OwnedFd, SocketAddr)>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let count = passed_count(pid.as_deref(), fds.as_deref(), std::process::id())?;
    if pid.is_some() {
        // SAFETY: the caller runs this before any other thread exists, so
        // nothing reads the environment concurrently.
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let raw = LISTEN_FDS_START + i as RawFd;
        // SAFETY: fcntl on any number is safe; a descriptor that is not
        // open fails with EBADF and is never adopted.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(format!(
                "socket activation: LISTEN_FDS={count}, but descriptor {raw} is not open"
            ));
        }
        // SAFETY: the descriptor is open, and LISTEN_FDS hands it to this
        // process alone; nothing else here owns descriptors from 3 up yet.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // systemd passes them inheritable; nothing we start should get them.
        // SAFETY: a valid descriptor and a plain flag.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        let addr = check_udp(&fd).map_err(|why| format!("socket activation: fd {raw} {why}"))?;
        out.push((fd, addr));
    }
    Ok(out)
}

/// Takes the UDP socket on standard input (inetd, `--inetd`): moves it
/// to a close-on-exec descriptor of its own and puts /dev/null on 0, so
/// nothing that reads standard input can take a request. `Err` is one line.
pub fn take_stdin() -> Result<(OwnedFd, SocketAddr), String> {
    // SAFETY: fcntl on descriptor 0; a closed one fails with EBADF.
    let raw = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, LISTEN_FDS_START) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        let what = if e.raw_os_error() == Some(libc::EBADF) {
            "is not open"
        } else {
            "cannot be taken"
        };
        return Err(format!(
            "--inetd: standard input {what} ({e}); inetd's `wait` mode or \
             systemd's StandardInput=socket passes the socket there"
        ));
    }
    // SAFETY: F_DUPFD_CLOEXEC just made this descriptor, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let addr = check_udp(&fd).map_err(|why| {
        format!(
            "--inetd: standard input {why}: inetd's `wait` mode or systemd's \
             StandardInput=socket passes the socket there (to bind sockets of its \
             own, give --listen, or tftpd-hpa's -l)"
        )
    })?;
    detach_from(0);
    Ok((fd, addr))
}

/// Whether `raw` is a UDP socket: under inetd (and `StandardInput=socket`
/// without `StandardError=`) standard error is the service socket too, where
/// a log line would go nowhere.
pub fn is_udp_socket(raw: RawFd) -> bool {
    // SAFETY: fcntl on any number is safe.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return false;
    }
    // SAFETY: the descriptor is open (checked above) and only borrowed
    // for the calls below.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    let socket = socket2::SockRef::from(&fd);
    socket.r#type().is_ok_and(|t| t == socket2::Type::DGRAM) && net::local_addr_of(&fd).is_ok()
}

/// Points descriptor `raw` at /dev/null (best effort), so that writes or
/// reads meant for a terminal never reach the service socket.
pub fn detach_from(raw: RawFd) {
    // SAFETY: a NUL-terminated path; dup2 onto a descriptor we own (0-2).
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            if null != raw {
                libc::dup2(null, raw);
                libc::close(null);
            } else {
                libc::fcntl(raw, libc::F_SETFD, 0);
            }
        }
    }
}

/// The socket's local address if it is one uftpd can serve on.
fn check_udp(fd: &OwnedFd) -> Result<SocketAddr, String> {
    let socket = socket2::SockRef::from(fd);
    let kind = socket
        .r#type()
        .map_err(|e| format!("is not a socket ({e})"))?;
    if kind != socket2::Type::DGRAM {
        return Err(
            "is not a datagram socket (ListenDatagram= in a .socket unit, dgram in inetd.conf)"
                .into(),
        );
    }
    let addr = net::local_addr(fd)
        .map_err(|_| "is not an IPv4 or IPv6 socket (use ListenDatagram=ADDR:PORT)".to_string())?;
    if addr.port() == 0 {
        return Err("is not bound to a port".into());
    }
    Ok(addr)
}

/// Makes a passed socket a service socket like [`net::service_socket`]'s:
/// packet info on (replies leave from the address asked), SO_REUSEPORT on
/// so that the other shards can bind beside it (the kernel puts a socket
/// bound before SO_REUSEPORT was set into the group when a second one
/// joins), the receive buffer enlarged.
pub fn adopt(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    net::prepare_service(fd, addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_as_sd_listen_fds_reads_them() {
        assert_eq!(passed_count(None, None, 42), Ok(0));
        assert_eq!(passed_count(None, Some("2"), 42), Ok(0));
        // Another process's: ignored.
        assert_eq!(passed_count(Some("41"), Some("2"), 42), Ok(0));
        assert_eq!(passed_count(Some("x"), Some("2"), 42), Ok(0));
        assert_eq!(passed_count(Some("42"), Some("2"), 42), Ok(2));
        assert_eq!(passed_count(Some("42"), None, 42), Ok(0));
        assert!(passed_count(Some("42"), Some("-1"), 42).is_err());
        assert!(passed_count(Some("42"), Some("65"), 42).is_err());
    }
}
