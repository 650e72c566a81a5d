//! Socket activation: the UDP sockets systemd passes (`LISTEN_FDS`,
//! `LISTEN_PID`, descriptors from 3), as sd_listen_fds(3) defines them.

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
/// a bound UDP socket (`ListenDatagram=`); an IPv6 one must be IPv6-only
/// (`BindIPv6Only=ipv6-only`), as uftpd's own `[::]` sockets are.
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

/// The socket's local address if it is one uftpd can serve on.
fn check_udp(fd: &OwnedFd) -> Result<SocketAddr, String> {
    let socket = socket2::SockRef::from(fd);
    let kind = socket
        .r#type()
        .map_err(|e| format!("is not a socket ({e})"))?;
    if kind != socket2::Type::DGRAM {
        return Err("is not a datagram socket (use ListenDatagram= in the .socket unit)".into());
    }
    let addr = net::local_addr(fd)
        .map_err(|_| "is not an IPv4 or IPv6 socket (use ListenDatagram=ADDR:PORT)".to_string())?;
    if addr.port() == 0 {
        return Err("is not bound to a port".into());
    }
    if addr.is_ipv6() && !socket.only_v6().unwrap_or(false) {
        return Err(format!(
            "({addr}) is dual-stack, which uftpd does not serve yet: set \
             BindIPv6Only=ipv6-only and add ListenDatagram=0.0.0.0:{}",
            addr.port()
        ));
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
