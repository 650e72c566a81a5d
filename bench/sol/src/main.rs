//! `uftpd-sol`: the speed-of-light reference for bench/. A TFTP responder
//! that does the least a server can: one socket, one io_uring (uftpd's own
//! layer), one file in memory served for any name. An RRQ gets an OACK (or
//! the first window), each ACK the next window as GSO sends straight from
//! the map. No per-transfer sockets, no timers, no retransmission, no
//! admission, no limits, no logs, no counters: a lost packet is recovered
//! only by the client's own retransmitted ACK. uftpd's CPU per GiB as a
//! multiple of this one's is the cost of everything uftpd does beyond
//! moving the bytes.
//!
//! Usage: uftpd-sol --listen 127.0.0.1:PORT --file PATH. Benchmarks only:
//! it is not a server.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use uftpd::cache::FileCache;
use uftpd::proto::options::parse_decimal;
use uftpd::proto::wire::{self, OptionIter, OptionValues, Packet, RequestKind};
use uftpd::uring::{self, Group, Op, Owner, RingSizes, Uring};

const OWNER: Owner = Owner::new(0);
/// Transfers tracked at once; more are refused by being ignored.
const PEERS_MAX: usize = 65_536;

struct Peer {
    blksize: u16,
    windowsize: u16,
    /// Highest block acknowledged (64-bit: past rollover).
    acked: u64,
    blocks: u64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(listen), Some(path)) = (get("--listen"), get("--file")) else {
        eprintln!("usage: uftpd-sol --listen ADDR:PORT --file PATH");
        return ExitCode::from(2);
    };
    match run(&listen, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uftpd-sol: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(listen: &str, path: &str) -> Result<(), String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let file = File::open(path).map_err(|e| format!("--file {path}: {e}"))?;
    let (source, _) = FileCache::new(1)
        .get(&file)
        .map_err(|e| format!("--file {path}: {e}"))?;
    let len = source.len();
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| e.to_string())?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket
        .bind(&addr.into())
        .map_err(|e| format!("bind {addr}: {e}"))?;
    let sizes = RingSizes {
        sq_entries: 1024,
        request_buffers: 8,
        transfer_buffers: 4096,
        upload_buffers: 8,
        send_slots: 4096,
    };
    let mut io = Uring::new(sizes, 1).map_err(|e| format!("io_uring: {e:?}"))?;
    io.install(OWNER, socket.into())
        .map_err(|e| e.to_string())?;
    io.attach_payload(OWNER, source);
    io.arm_recv(OWNER, Group::Transfers);
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    let mut batch = Vec::with_capacity(1024);
    loop {
        io.submit_and_wait(Duration::from_secs(1), false)
            .map_err(|e| e.to_string())?;
        io.reap(&mut batch, 1024);
        for c in batch.drain(..) {
            if let Op::Recv(_) = c.op {
                if let Some(buffer) = c.buffer {
                    if let Some(d) = io.datagram(&buffer)
                        && let Some(peer) = d.peer
                        && let Ok(packet) = Packet::parse(d.payload)
                    {
                        let reply = answer(&mut peers, peer, &packet, len);
                        if let Some(reply) = reply {
                            send(&mut io, peer, reply);
                        }
                    }
                    io.recycle(buffer);
                }
                if !c.more {
                    io.arm_recv(OWNER, Group::Transfers);
                }
            }
        }
        if let Some(e) = io.take_fatal() {
            return Err(e.to_string());
        }
    }
}

enum Reply {
    Oack(OptionValues),
    Window {
        blksize: u16,
        first: u64,
        count: u64,
    },
}

fn answer(
    peers: &mut HashMap<SocketAddr, Peer>,
    from: SocketAddr,
    packet: &Packet<'_>,
    len: u64,
) -> Option<Reply> {
    match packet {
        Packet::Request(r) if r.kind == RequestKind::Read => {
            let mut oack = OptionValues::default();
            for (name, value) in OptionIter::new(r.options) {
                let v = parse_decimal(value)?;
                if name.eq_ignore_ascii_case(b"blksize") {
                    oack.blksize = Some(v.clamp(8, u64::from(wire::BLKSIZE_MAX)) as u16);
                } else if name.eq_ignore_ascii_case(b"windowsize") {
                    oack.windowsize = Some(v.clamp(1, 64) as u16);
                } else if name.eq_ignore_ascii_case(b"tsize") {
                    oack.tsize_bytes = Some(len);
                }
            }
            if peers.len() >= PEERS_MAX && !peers.contains_key(&from) {
                return None;
            }
            let blksize = oack.blksize.unwrap_or(512);
            let peer = Peer {
                blksize,
                windowsize: oack.windowsize.unwrap_or(1),
                acked: 0,
                blocks: len / u64::from(blksize) + 1,
            };
            let window = u64::from(peer.windowsize).min(peer.blocks);
            peers.insert(from, peer);
            if oack.is_empty() {
                Some(Reply::Window {
                    blksize,
                    first: 1,
                    count: window,
                })
            } else {
                Some(Reply::Oack(oack))
            }
        }
        Packet::Ack { block } => {
            let peer = peers.get_mut(&from)?;
            // The 64-bit index nearest ahead of what was acknowledged.
            let ahead = u64::from(block.wrapping_sub(peer.acked as u16));
            let index = peer.acked + ahead;
            if index >= peer.blocks {
                peers.remove(&from);
                return None;
            }
            peer.acked = index;
            let count = u64::from(peer.windowsize).min(peer.blocks - index);
            Some(Reply::Window {
                blksize: peer.blksize,
                first: index + 1,
                count,
            })
        }
        Packet::Error { .. } => {
            peers.remove(&from);
            None
        }
        _ => None,
    }
}

fn send(io: &mut Uring, to: SocketAddr, reply: Reply) {
    match reply {
        Reply::Oack(options) => {
            let _ = io.send_control(OWNER, to, None, |buf| wire::encode_oack(buf, &options));
        }
        Reply::Window {
            blksize,
            first,
            count,
        } => {
            let per_send = uring::gso_segments(blksize) as u16;
            // What does not fit is lost, as far as the client knows: it
            // resends its ACK.
            let _ = io.send_window(OWNER, to, blksize, first, count as u16, per_send, false);
        }
    }
}
