//! Running transfers: packets on their own sockets, the sends their
//! sessions ask for (GSO windows sliced from the file map), and send
//! completions (GSO fallback, truncated files, ICMP from a departed peer).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use io_uring::{cqueue, opcode, types};

use crate::cache::{Source, UploadError};
use crate::proto::server::{Event, ServerSession};
use crate::proto::transfer::Transmit;
use crate::proto::wire::{self, ErrorCode, Packet};

use super::ring::Tag;
use super::send::{self, Owner};
use super::{Shard, Slot, Store, net};

impl Shard {
    pub(super) fn on_transfer_recv(
        &mut self,
        slot_index: u32,
        generation: u32,
        large: bool,
        result: i32,
        flags: u32,
        now: Instant,
    ) {
        let more = cqueue::more(flags);
        let live = matches!(self.slots.get(slot_index as usize), Some(Some(s)) if s.generation == generation);
        if result >= 0 && live {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.on_transfer_datagram(slot_index, bid, large, result as usize, now);
            }
        } else if result == -libc::ENOBUFS {
            self.setup.counters.receive_buffers_exhausted.inc();
        } else if result == -libc::ECONNREFUSED && live {
            self.check_unreachable(slot_index);
        }
        self.recycle(flags, large);
        if !more && live {
            let closing = match self.slots.get_mut(slot_index as usize) {
                Some(Some(slot)) => {
                    slot.recv_armed = false;
                    slot.closing
                }
                _ => return,
            };
            if closing {
                self.free_slot(slot_index);
            } else {
                self.arm_transfer(slot_index);
            }
        }
    }

    pub(super) fn on_transfer_datagram(
        &mut self,
        slot_index: u32,
        bid: u16,
        large: bool,
        len: usize,
        now: Instant,
    ) {
        let counters = Arc::clone(&self.setup.counters);
        let ring = if large { &self.large } else { &self.small };
        let Some(buf) = ring.buffer(bid, len) else {
            return;
        };
        let Ok(msg) = io_uring::types::RecvMsgOut::parse(buf, &self.transfer_msghdr) else {
            return;
        };
        let Some(from) = net::parse_sockaddr(msg.name_data()) else {
            return;
        };
        let payload = msg.payload_data();
        counters.packets_received.inc();
        counters.bytes_received.add(payload.len() as u64);
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        if slot.closing {
            return;
        }
        let packet = Packet::parse(payload);
        if from != slot.peer {
            // RFC 1350 §4: a stray TID gets ERROR 5; the transfer goes on.
            counters.stray_packets.inc();
            if !matches!(packet, Ok(Packet::Error { .. })) {
                let fd = slot.socket.as_raw_fd();
                let owner = Owner {
                    slot: slot_index,
                    generation: slot.generation,
                };
                self.send_control(
                    fd,
                    from,
                    owner,
                    Transmit::Error {
                        code: ErrorCode::UnknownTid,
                        message: "Unknown transfer ID",
                    },
                );
            }
            return;
        }
        let Ok(packet) = packet else {
            return; // malformed from the peer: ignore, its retransmit will do
        };
        if msg.is_payload_truncated() {
            return;
        }
        let before = duplicates(&slot.session);
        let event = slot.session.handle(&packet, now);
        let after = duplicates(&slot.session);
        counters
            .duplicates_ignored
            .add(after.saturating_sub(before));
        if let (Event::Store { last, .. }, Packet::Data { payload, .. }) = (event, packet) {
            match store_block(slot, payload, last, &mut self.decode_scratch) {
                Err((code, message)) => slot.session.abort(code, message),
                Ok(()) if last => {
                    self.start_commit(slot_index);
                    return;
                }
                Ok(()) => {}
            }
        }
        self.pump(slot_index);
    }

    /// The last block of an upload is in: fsync the file through the ring
    /// (no thread waits on the disk), and hold the final ACK until the file
    /// is durable under its name. `on_commit_step` takes it from there.
    fn start_commit(&mut self, slot_index: u32) {
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        let Store::Write {
            upload: Some(up), ..
        } = &slot.store
        else {
            return;
        };
        let sqe = opcode::Fsync::new(types::Fd(up.file_fd()))
            .build()
            .user_data(
                Tag::Commit {
                    slot: slot_index,
                    generation: slot.generation,
                }
                .encode(),
            );
        slot.committing = true;
        self.push(sqe);
    }

    /// A commit fsync completed: after the file's, publish the name and
    /// fsync the directory; after the directory's, release the final ACK.
    pub(super) fn on_commit_step(&mut self, slot_index: u32, generation: u32, result: i32) {
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        if slot.generation != generation || !slot.committing {
            return;
        }
        let Store::Write { upload, .. } = &mut slot.store else {
            return;
        };
        let step = match upload.as_mut() {
            None => Err((ErrorCode::NotDefined, "Write failed")),
            Some(_) if result < 0 => Err(disk_error(UploadError::from(
                std::io::Error::from_raw_os_error(-result),
            ))),
            Some(up) if !up.is_published() => up.publish().map_err(disk_error).map(|()| {
                Some(
                    opcode::Fsync::new(types::Fd(up.dir_fd()))
                        .build()
                        .user_data(
                            Tag::Commit {
                                slot: slot_index,
                                generation,
                            }
                            .encode(),
                        ),
                )
            }),
            Some(_) => Ok(None), // the directory is synced: done
        };
        match step {
            Ok(Some(dir_sync)) => {
                self.push(dir_sync);
                return;
            }
            Ok(None) => {}
            Err((code, message)) => slot.session.abort(code, message),
        }
        *upload = None; // an unpublished upload vanishes here
        slot.committing = false;
        self.pump(slot_index);
    }

    pub(super) fn send_control(
        &mut self,
        fd: i32,
        dest: SocketAddr,
        owner: Owner,
        transmit: Transmit,
    ) {
        let Some(send_slot) = self.pool.take() else {
            self.setup.counters.send_pool_exhausted.inc();
            return;
        };
        let prepared = self
            .pool
            .prepare_control(send_slot, dest, None, Some(owner), |buf| match transmit {
                Transmit::Error { code, message } => wire::encode_error(buf, code, message),
                Transmit::Ack { block } => wire::encode_ack(buf, block),
                _ => None,
            });
        self.submit_send(fd, send_slot, prepared);
    }

    pub(super) fn submit_send(
        &mut self,
        fd: i32,
        send_slot: u32,
        prepared: Option<*const libc::msghdr>,
    ) {
        match prepared {
            Some(msg) => {
                let sqe = opcode::SendMsg::new(types::Fd(fd), msg)
                    .build()
                    .user_data(Tag::Send { send_slot }.encode());
                self.push_send(sqe);
            }
            None => {
                self.pool.release(send_slot);
            }
        }
    }

    /// Turns everything the session wants sent into SQEs, then retires the
    /// session if it has ended.
    pub(super) fn pump(&mut self, slot_index: u32) {
        // An upload being made durable keeps its final ACK (and its ending)
        // until `on_commit_step` is done.
        if matches!(self.slots.get(slot_index as usize), Some(Some(s)) if s.committing) {
            return;
        }
        for _ in 0..4 {
            let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
                return;
            };
            let Some(transmit) = slot.session.poll_transmit() else {
                break;
            };
            let fd = slot.socket.as_raw_fd();
            let peer = slot.peer;
            let owner = Owner {
                slot: slot_index,
                generation: slot.generation,
            };
            match transmit {
                Transmit::Data { first, count } => {
                    let Store::Read(source) = &slot.store else {
                        continue;
                    };
                    let source = Arc::clone(source);
                    let blksize = slot.session.negotiated().blksize;
                    let gso = slot.gso;
                    self.send_blocks(fd, peer, owner, &source, blksize, first, count, gso);
                }
                other => {
                    let Some(send_slot) = self.pool.take() else {
                        self.setup.counters.send_pool_exhausted.inc();
                        continue;
                    };
                    let prepared = {
                        let Some(Some(slot)) = self.slots.get(slot_index as usize) else {
                            return;
                        };
                        self.pool
                            .prepare_control(send_slot, peer, None, Some(owner), |buf| {
                                slot.session.encode_control(other, buf)
                            })
                    };
                    self.submit_send(fd, send_slot, prepared);
                }
            }
        }
        let Some(Some(slot)) = self.slots.get(slot_index as usize) else {
            return;
        };
        if let Some(deadline) = slot.session.poll_timeout() {
            self.next_timer_scan = self.next_timer_scan.min(deadline);
        }
        if let Some(outcome) = slot.session.outcome() {
            self.end_session(slot_index, Some(outcome));
        }
    }

    /// DATA blocks as GSO sends of up to `gso_segments` blocks each (or one
    /// datagram per send when GSO is off for this session).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_blocks(
        &mut self,
        fd: i32,
        peer: SocketAddr,
        owner: Owner,
        source: &Arc<Source>,
        blksize: u16,
        first: u64,
        count: u16,
        gso: bool,
    ) {
        let per_send = if gso {
            send::gso_segments(blksize) as u64
        } else {
            1
        };
        let end = first + u64::from(count);
        let mut at = first;
        while at < end {
            let n = (end - at).min(per_send) as u16;
            let Some(send_slot) = self.pool.take() else {
                // Treated as loss: the retransmit timer covers it.
                self.setup.counters.send_pool_exhausted.inc();
                return;
            };
            let prepared = self
                .pool
                .prepare_data(send_slot, peer, owner, source, blksize, at, n);
            self.submit_send(fd, send_slot, prepared);
            at += u64::from(n);
        }
    }

    pub(super) fn on_send_done(&mut self, send_slot: u32, result: i32) {
        let counters = Arc::clone(&self.setup.counters);
        let Some(slot) = self.pool.get(send_slot) else {
            return;
        };
        let (owner, blocks, gso, bytes) = (slot.owner, slot.blocks, slot.gso, slot.bytes);
        self.pool.release(send_slot);
        if result >= 0 {
            counters
                .packets_sent
                .add(blocks.map_or(1, |(_, n)| u64::from(n)));
            counters.bytes_sent.add(bytes as u64);
            return;
        }
        counters.send_errors.inc();
        let Some(owner) = owner else { return };
        let Some(Some(slot)) = self.slots.get_mut(owner.slot as usize) else {
            return;
        };
        if slot.generation != owner.generation || slot.closing {
            return;
        }
        match -result {
            // The segment is larger than the path MTU or the device cannot
            // offload: resend these blocks one datagram at a time from now on.
            libc::EINVAL | libc::EIO | libc::EMSGSIZE if gso => {
                slot.gso = false;
                if let (Some((first, count)), Store::Read(source)) = (blocks, &slot.store) {
                    let source = Arc::clone(source);
                    let (fd, peer, blksize) = (
                        slot.socket.as_raw_fd(),
                        slot.peer,
                        slot.session.negotiated().blksize,
                    );
                    self.send_blocks(fd, peer, owner, &source, blksize, first, count, false);
                }
            }
            // An ICMP error is pending on the socket: see whose it is.
            libc::ECONNREFUSED => self.check_unreachable(owner.slot),
            // The file shrank under its map: the kernel's copy faulted.
            libc::EFAULT => {
                slot.session
                    .abort(ErrorCode::NotDefined, "File changed during transfer");
                self.pump(owner.slot);
            }
            // Anything else (ENOBUFS, ECONNREFUSED...) is loss; timers cover it.
            _ => {}
        }
    }

    /// ICMP errors queued on a transfer socket (IP_RECVERR): if one says the
    /// peer's own port is closed, the client has gone and the session ends
    /// now rather than after its whole retry schedule. Errors for other
    /// addresses (an ERROR 5 we sent to a stray port) are discarded.
    pub(super) fn check_unreachable(&mut self, slot_index: u32) {
        let Some(Some(slot)) = self.slots.get_mut(slot_index as usize) else {
            return;
        };
        if slot.closing || !net::peer_port_unreachable(&slot.socket, slot.peer) {
            return;
        }
        slot.session.handle_unreachable();
        self.pump(slot_index);
    }
}

fn duplicates(session: &ServerSession) -> u64 {
    session.sender().map_or(0, |s| s.counters().duplicate_acks)
        + session
            .receiver()
            .map_or(0, |r| r.counters().duplicate_blocks)
}

fn disk_error(e: UploadError) -> (ErrorCode, &'static str) {
    match e {
        UploadError::DiskFull => (ErrorCode::DiskFull, "Disk full or allocation exceeded"),
        _ => (ErrorCode::NotDefined, "Write failed"),
    }
}

/// Writes an accepted DATA payload of an upload (the page cache absorbs
/// it; durability comes from the fsync at the end).
fn store_block(
    slot: &mut Slot,
    payload: &[u8],
    last: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), (ErrorCode, &'static str)> {
    let Store::Write { upload, netascii } = &mut slot.store else {
        return Ok(());
    };
    let Some(up) = upload.as_mut() else {
        return Ok(());
    };
    match netascii {
        Some(decoder) => {
            decoder.decode(payload, scratch);
            up.write(scratch).map_err(disk_error)?;
            if last {
                decoder.finish(scratch);
                up.write(scratch).map_err(disk_error)?;
            }
        }
        None => up.write(payload).map_err(disk_error)?,
    }
    Ok(())
}
