//! Sockets and socket addresses: service sockets (SO_REUSEPORT, packet
//! info), per-transfer sockets, their ICMP error queues, and the byte-level
//! sockaddr / cmsg codecs that receive buffers and send slots need.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Receive buffer for sockets that take bursts of requests or ACKs.
const RECV_BUFFER_BYTES: usize = 4 << 20;

fn set_int_opt(fd: &impl AsRawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A service socket: one per shard per listen address, all in one
/// SO_REUSEPORT group so the kernel spreads clients across shards.
/// An IPv6 one is IPv6-only unless `dual_stack` (a socket beside a
/// dual-stack one systemd or inetd passed: IPv4 clients arrive on it as
/// `::ffff:a.b.c.d`, which [`parse_sockaddr`] turns back into IPv4).
pub fn service_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack)?;
    }
    prepare_service(&socket, addr)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The options every service socket has, bound yet or not (a socket
/// systemd passed is bound already): SO_REUSEPORT, packet info (the
/// address each request came to), a large receive buffer (best effort).
pub fn prepare_service(
    fd: &(impl AsRawFd + std::os::fd::AsFd),
    addr: SocketAddr,
) -> io::Result<()> {
    let socket = socket2::SockRef::from(fd);
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    } else {
        set_int_opt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    }
    let _ = socket.set_recv_buffer_size(RECV_BUFFER_BYTES);
    Ok(())
}

/// Fails with EADDRINUSE if another program holds `addr` (a SO_REUSEPORT
/// bind alone would silently share the port with another uftpd).
pub fn probe_exclusive(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// Whether an IPv6 socket also takes IPv4 (IPV6_V6ONLY off); false for
/// an IPv4 socket.
pub fn is_dual_stack(fd: &impl std::os::fd::AsFd) -> bool {
    let socket = socket2::SockRef::from(fd);
    matches!(socket.local_addr().map(|a| a.is_ipv6()), Ok(true))
        && !socket.only_v6().unwrap_or(true)
}

/// An address as an IPv6 socket must be given it: an IPv4 one as
/// `::ffff:a.b.c.d` (a dual-stack socket sends it over IPv4). Unchanged
/// for an IPv4 socket, or when it already is IPv6.
pub fn for_socket(addr: SocketAddr, socket_is_v6: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if socket_is_v6 => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        other => other,
    }
}

/// [`for_socket`] for an address without a port (a source address).
pub fn ip_for_socket(ip: IpAddr, socket_is_v6: bool) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if socket_is_v6 => IpAddr::V6(v4.to_ipv6_mapped()),
        other => other,
    }
}

/// The address a transfer socket binds for a request that came to
/// `local` from `peer`: `local` itself, except that a request from an IPv4
/// peer that reached a dual-stack socket without packet info (never
/// expected) is served from 0.0.0.0, as an IPv6 transfer socket could not
/// reach it.
pub fn transfer_local(peer: SocketAddr, local: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() && local.is_ipv6() {
        return SocketAddr::from((Ipv4Addr::UNSPECIFIED, local.port()));
    }
    local
}

pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    local_addr_of(fd)
}

/// [`local_addr`] of any descriptor, borrowed or owned.
pub fn local_addr_of(fd: &impl std::os::fd::AsFd) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(fd);
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// Ports transfer sockets may bind (`--port-range LO:HI`, for firewalls
/// that open a fixed range); without one the kernel picks an ephemeral port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// `LO:HI`, both from 1 to 65535, LO at most HI (`4096:32767`, `5000:5000`).
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let bad = || format!("{text:?} is not a port range LO:HI (1 to 65535, LO <= HI)");
        let (lo, hi) = text.trim().split_once(':').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }

    /// Ports in the range (at least 1).
    pub fn len(self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }

    /// Never true; for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Every port of the range exactly once, from the one at `start`
    /// (taken modulo the length) upwards, wrapping to LO.
    pub fn ports_from(self, start: u32) -> impl Iterator<Item = u16> {
        let len = self.len();
        (0..len).map(move |i| {
            let offset = (start % len + i) % len;
            // lo + offset <= hi, so it fits.
            (u32::from(self.lo) + offset) as u16
        })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.lo, self.hi)
    }
}

/// Where a shard starts looking for a free port of the range for its next
/// transfer: a random place each time (transfer ports must not be
/// guessable, RFC 6056), from a generator seeded once per shard.
#[derive(Clone, Debug)]
pub struct PortPicker {
    pub range: PortRange,
    state: u64,
}

impl PortPicker {
    pub fn new(range: PortRange, seed: u64) -> PortPicker {
        // xorshift64* must not start at 0.
        PortPicker {
            range,
            state: seed | 1,
        }
    }

    fn next_start(&mut self) -> u32 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// A transfer's own socket (its TID), bound to the local address the
/// request came to, so every reply leaves from that address. The shard
/// connects it to the client afterwards unless `--stray-errors` asks for
/// strays to reach it (and get ERROR 5).
/// With a port range, each of its ports is tried at most once; when none
/// is free the error is EADDRINUSE.
pub fn transfer_socket(local: SocketAddr, ports: Option<&mut PortPicker>) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    } else {
        // Let large blocks fragment instead of setting DF (as dnsmasq does):
        // some PXE ROMs choke on DF, and ICMP-based PMTU discovery does not
        // help a protocol that resends on its own.
        let _ = set_int_opt(
            &socket,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        );
    }
    // Queue ICMP errors so a closed peer port ends the transfer early.
    let _ = if local.is_ipv6() {
        set_int_opt(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)
    } else {
        set_int_opt(&socket, libc::IPPROTO_IP, libc::IP_RECVERR, 1)
    };
    let _ = socket.set_recv_buffer_size(RECV_BUFFER_BYTES / 4);
    let mut bind_to = local;
    let Some(picker) = ports else {
        bind_to.set_port(0);
        socket.bind(&bind_to.into())?;
        return Ok(socket.into());
    };
    let start = picker.next_start();
    // Bounded by the range's length; a failed bind leaves the socket unbound.
    for port in picker.range.ports_from(start) {
        bind_to.set_port(port);
        match socket.bind(&bind_to.into()) {
            Ok(()) => return Ok(socket.into()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EADDRINUSE))
}

/// Connects a UDP socket to `peer` (see `Uring::connect`).
pub fn connect(fd: &impl std::os::fd::AsFd, peer: SocketAddr) -> io::Result<()> {
    socket2::SockRef::from(fd).connect(&peer.into())
}

/// Largest send buffer asked for a transfer socket; the kernel clamps it to
/// `net.core.wmem_max` (see tuning.md).
pub const SEND_BUFFER_BYTES_MAX: usize = 4 << 20;

/// Sizes a transfer socket's send buffer to hold `window_bytes` (one whole
/// window in flight), so a window's sends complete at once instead of
/// waiting in the ring for socket space. Best effort: the kernel may clamp.
pub fn size_send_buffer(fd: &impl std::os::fd::AsFd, window_bytes: usize) {
    let want = window_bytes.clamp(64 << 10, SEND_BUFFER_BYTES_MAX);
    let socket = socket2::SockRef::from(fd);
    if socket.send_buffer_size().is_ok_and(|have| have >= want) {
        return;
    }
    let _ = socket.set_send_buffer_size(want);
}

/// ICMP errors read from one socket's error queue per check.
const ERROR_QUEUE_READS_MAX: usize = 8;

/// Drains a transfer socket's error queue (IP_RECVERR); true if one of
/// the errors is "connection refused" (ICMP port unreachable) for a
/// packet we sent to `peer`.
pub fn peer_port_unreachable(fd: &impl AsRawFd, peer: SocketAddr) -> bool {
    let mut found = false;
    for _ in 0..ERROR_QUEUE_READS_MAX {
        // SAFETY: plain C structs, zero-initialised.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 64];
        let mut payload = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in msg refers to the locals above.
        let n = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            break; // EAGAIN: the queue is empty
        }
        // SAFETY: the kernel wrote msg_namelen bytes of `name`.
        let name_bytes = unsafe {
            std::slice::from_raw_parts(
                (&name as *const libc::sockaddr_storage).cast::<u8>(),
                (msg.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_storage>()),
            )
        };
        // SAFETY: the kernel wrote msg_controllen bytes of `control`.
        let control_bytes = unsafe {
            std::slice::from_raw_parts(
                control.as_ptr().cast::<u8>(),
                msg.msg_controllen.min(std::mem::size_of_val(&control)),
            )
        };
        let to_peer = parse_sockaddr(name_bytes)
            .is_some_and(|offended| offended.ip() == peer.ip() && offended.port() == peer.port());
        if to_peer && extended_errno(control_bytes) == Some(libc::ECONNREFUSED as u32) {
            found = true;
        }
    }
    found
}

/// `ee_errno` of the IP_RECVERR / IPV6_RECVERR control message.
fn extended_errno(control: &[u8]) -> Option<u32> {
    let (_, _, data) = Cmsgs::new(control).find(|&(level, kind, _)| {
        (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
            || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR)
    })?;
    // struct sock_extended_err starts with u32 ee_errno.
    Some(u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?))
}

/// Parses a kernel `sockaddr_in`/`sockaddr_in6` from raw bytes. An
/// IPv4-mapped IPv6 address (an IPv4 peer of a dual-stack socket) comes
/// back as the IPv4 address it is, so that limits, logs and remap rules
/// see one address per client whichever socket it reached.
pub fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]);
    let port = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(raw.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
            if let Some(v4) = Ipv6Addr::from(ip).to_ipv4_mapped() {
                return Some(SocketAddr::from((v4, port)));
            }
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` as a kernel sockaddr into `out`; returns its length.
pub fn write_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let sa = socket2::SockAddr::from(addr);
    let len = sa.len();
    // SAFETY: SockAddr holds at most a sockaddr_storage of `len` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (out as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    len
}

/// Bytes of control space for one IP_PKTINFO / IPV6_PKTINFO message.
pub const PKTINFO_CONTROL_BYTES: usize = 64;
const CMSG_HEADER_BYTES: usize = std::mem::size_of::<libc::cmsghdr>();

/// Walks the control messages of a received msghdr as (level, type, data),
/// with every length checked against the buffer.
struct Cmsgs<'a> {
    rest: &'a [u8],
}

impl<'a> Cmsgs<'a> {
    fn new(control: &'a [u8]) -> Self {
        Cmsgs { rest: control }
    }
}

impl<'a> Iterator for Cmsgs<'a> {
    type Item = (i32, i32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        let len = usize::from_ne_bytes(rest.get(0..8)?.try_into().ok()?);
        let level = i32::from_ne_bytes(rest.get(8..12)?.try_into().ok()?);
        let kind = i32::from_ne_bytes(rest.get(12..16)?.try_into().ok()?);
        let data = rest.get(CMSG_HEADER_BYTES..len)?;
        // Messages are padded to 8 bytes; a zero length must still advance.
        let step = len.checked_add(7)? & !7;
        self.rest = rest.get(step.max(CMSG_HEADER_BYTES)..).unwrap_or(&[]);
        Some((level, kind, data))
    }
}

/// Writes one control message into `out`; returns its padded length, or 0
/// if it does not fit.
fn write_cmsg(out: &mut [u8; PKTINFO_CONTROL_BYTES], level: i32, kind: i32, data: &[u8]) -> usize {
    out.fill(0);
    let len = CMSG_HEADER_BYTES + data.len();
    let Some(body) = out.get_mut(CMSG_HEADER_BYTES..len) else {
        return 0;
    };
    body.copy_from_slice(data);
    out[0..8].copy_from_slice(&len.to_ne_bytes());
    out[8..12].copy_from_slice(&level.to_ne_bytes());
    out[12..16].copy_from_slice(&kind.to_ne_bytes());
    (len + 7) & !7
}

/// The local (destination) address of a received datagram, from its
/// IP_PKTINFO / IPV6_PKTINFO control message.
pub fn parse_pktinfo(control: &[u8], port: u16) -> Option<SocketAddr> {
    parse_pktinfo_interface(control, port).map(|(addr, _)| addr)
}

/// [`parse_pktinfo`] and the index of the interface the datagram came in
/// on (0 if the kernel did not say).
pub fn parse_pktinfo_interface(control: &[u8], port: u16) -> Option<(SocketAddr, u32)> {
    for (level, kind, data) in Cmsgs::new(control) {
        if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
            // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            let ifindex = u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?);
            let ip: [u8; 4] = data.get(4..8)?.try_into().ok()?;
            return Some((SocketAddr::from((Ipv4Addr::from(ip), port)), ifindex));
        }
        if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
            // struct in6_pktinfo { in6_addr addr; unsigned ifindex; }
            let ip: [u8; 16] = data.get(0..16)?.try_into().ok()?;
            let ifindex = u32::from_ne_bytes(data.get(16..20)?.try_into().ok()?);
            let ip = Ipv6Addr::from(ip);
            // An IPv4 request on a dual-stack socket (see parse_sockaddr).
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Some((SocketAddr::from((v4, port)), ifindex));
            }
            let scope = if is_unicast_link_local(&ip) {
                ifindex
            } else {
                0
            };
            return Some((
                SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)),
                ifindex,
            ));
        }
    }
    None
}

/// The index of the interface called `name` (`eth0`), for a link-local
/// address's scope.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The MTU of interface `ifindex` (SIOCGIFMTU, by its name). ENODEV if
/// there is no such interface (any more).
pub fn interface_mtu(ifindex: u32) -> io::Result<u32> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: a zeroed ifreq is valid; the name is NUL-terminated and fits
    // ifr_name (both IF_NAMESIZE), and SIOCGIFMTU writes ifru_mtu only.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name = name;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        u32::try_from(req.ifr_ifru.ifru_mtu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

fn is_unicast_link_local(ip: &Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

/// Writes a control message that sets the source address of a send on a
/// wildcard-bound socket; returns its length (0 if none is needed).
pub fn write_pktinfo(local: IpAddr, out: &mut [u8; PKTINFO_CONTROL_BYTES]) -> usize {
    match local {
        IpAddr::V4(ip) if !ip.is_unspecified() => {
            // in_pktinfo: ipi_spec_dst (bytes 4..8) chooses the source address.
            let mut data = [0u8; std::mem::size_of::<libc::in_pktinfo>()];
            data[4..8].copy_from_slice(&ip.octets());
            write_cmsg(out, libc::IPPROTO_IP, libc::IP_PKTINFO, &data)
        }
        IpAddr::V6(ip) if !ip.is_unspecified() => {
            // in6_pktinfo: the address, then ifindex 0 (any interface).
            let mut data = [0u8; std::mem::size_of::<libc::in6_pktinfo>()];
            data[0..16].copy_from_slice(&ip.octets());
            write_cmsg(out, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &data)
        }
        _ => 0,
    }
}

/// Writes a UDP_SEGMENT (GSO) control message; returns its length.
pub fn write_gso(segment_bytes: u16, out: &mut [u8; PKTINFO_CONTROL_BYTES]) -> usize {
    write_cmsg(
        out,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        &segment_bytes.to_ne_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(
            PortRange::parse("4096:32767"),
            Ok(PortRange {
                lo: 4096,
                hi: 32767
            })
        );
        assert_eq!(PortRange::parse("69:69").map(PortRange::len), Ok(1));
        for bad in ["", "1", "0:10", "10:9", "1:65536", "a:b", "1-2", ":5"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
        let r = PortRange { lo: 10, hi: 14 };
        assert_eq!(r.ports_from(2).collect::<Vec<_>>(), [12, 13, 14, 10, 11]);
        assert_eq!(r.ports_from(7).collect::<Vec<_>>(), [12, 13, 14, 10, 11]);
        let full = PortRange { lo: 1, hi: 65535 };
        let mut seen = vec![false; 65536];
        for p in full.ports_from(u32::MAX) {
            assert!(!std::mem::replace(&mut seen[usize::from(p)], true));
        }
        assert_eq!(seen.iter().filter(|s| **s).count(), 65535);
        let mut picker = PortPicker::new(r, 0);
        let starts: std::collections::BTreeSet<u32> =
            (0..100).map(|_| picker.next_start() % r.len()).collect();
        assert_eq!(starts.len(), 5, "starts spread over the range");
    }

    /// Each port of a range is tried once; a range whose ports are all
    /// taken is EADDRINUSE, not a loop.
    #[test]
    fn transfer_sockets_bind_inside_the_range() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = transfer_socket(local, None).unwrap();
        let port = local_addr(&first).unwrap().port();
        let range = PortRange { lo: port, hi: port };
        let mut picker = PortPicker::new(range, 7);
        let e = transfer_socket(local, Some(&mut picker)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        drop(first);
        let again = transfer_socket(local, Some(&mut picker)).unwrap();
        assert_eq!(local_addr(&again).unwrap().port(), port);
    }

    #[test]
    fn sockaddr_round_trip() {
        for addr in ["127.0.0.1:69", "[::1]:6969", "[fe80::1%2]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            // SAFETY: plain data.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = write_sockaddr(addr, &mut storage);
            // SAFETY: reading the bytes we just wrote.
            let raw = unsafe {
                std::slice::from_raw_parts(
                    (&storage as *const libc::sockaddr_storage).cast::<u8>(),
                    len as usize,
                )
            };
            assert_eq!(parse_sockaddr(raw), Some(addr));
        }
        // An IPv4 peer of a dual-stack socket comes back as IPv4, and is
        // mapped again for an IPv6 socket's send.
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:69".parse().unwrap();
        // SAFETY: plain data.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = write_sockaddr(mapped, &mut storage);
        // SAFETY: reading the bytes we just wrote.
        let raw = unsafe {
            std::slice::from_raw_parts(
                (&storage as *const libc::sockaddr_storage).cast::<u8>(),
                len as usize,
            )
        };
        let v4: SocketAddr = "10.1.2.3:69".parse().unwrap();
        assert_eq!(parse_sockaddr(raw), Some(v4));
        assert_eq!(for_socket(v4, true), mapped);
        assert_eq!(for_socket(v4, false), v4);
        assert_eq!(ip_for_socket(v4.ip(), true), mapped.ip());
        let v6: SocketAddr = "[::1]:69".parse().unwrap();
        assert_eq!(for_socket(v6, true), v6);
        assert_eq!(
            transfer_local(v4, "[::]:69".parse().unwrap()),
            "0.0.0.0:69".parse().unwrap()
        );
        assert_eq!(
            transfer_local(v6, "[::1]:69".parse().unwrap()),
            "[::1]:69".parse().unwrap()
        );
        assert_eq!(parse_sockaddr(&[2, 0, 0]), None);
        assert_eq!(parse_sockaddr(&[]), None);
    }

    #[test]
    fn pktinfo_round_trip_and_garbage() {
        let mut buf = [0u8; PKTINFO_CONTROL_BYTES];
        let n = write_pktinfo("::1".parse().unwrap(), &mut buf);
        assert_eq!(
            parse_pktinfo(&buf[..n], 69),
            Some("[::1]:69".parse().unwrap())
        );
        let n = write_pktinfo("::ffff:127.0.0.2".parse().unwrap(), &mut buf);
        assert_eq!(
            parse_pktinfo(&buf[..n], 69),
            Some("127.0.0.2:69".parse().unwrap())
        );
        assert_eq!(parse_pktinfo(&[0xff; 40], 69), None);
        // The loopback interface is 1 in every namespace.
        assert!(interface_mtu(1).is_ok_and(|mtu| mtu >= 1280));
        assert!(interface_mtu(u32::MAX).is_err());
        assert_eq!(parse_pktinfo(&[0; 40], 69), None);
        assert_eq!(parse_pktinfo(&[], 69), None);
    }

    #[test]
    fn cmsgs_walk_past_the_first_message() {
        let mut first = [0u8; PKTINFO_CONTROL_BYTES];
        let n = write_pktinfo("10.0.0.1".parse().unwrap(), &mut first);
        let mut second = [0u8; PKTINFO_CONTROL_BYTES];
        let errno = (libc::ECONNREFUSED as u32).to_ne_bytes();
        let m = write_cmsg(&mut second, libc::IPPROTO_IP, libc::IP_RECVERR, &errno);
        let mut both = first[..n].to_vec();
        both.extend_from_slice(&second[..m]);
        assert_eq!(extended_errno(&both), Some(libc::ECONNREFUSED as u32));
        assert_eq!(
            parse_pktinfo(&both, 69),
            Some("10.0.0.1:69".parse().unwrap())
        );
        assert_eq!(extended_errno(&both[..n]), None);

        let mut gso = [0u8; PKTINFO_CONTROL_BYTES];
        let g = write_gso(1472, &mut gso);
        let (level, kind, data) = Cmsgs::new(&gso[..g]).next().unwrap();
        assert_eq!(
            (level, kind, data),
            (libc::SOL_UDP, libc::UDP_SEGMENT, &1472u16.to_ne_bytes()[..])
        );
    }
}
