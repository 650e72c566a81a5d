//! Running transfers: packets on their own sockets, the sends their
//! sessions ask for (GSO windows sliced from the file map), back-pressure
//! when the send pool is short, upload commits, and send completions (GSO
//! fallback, truncated files, ICMP from a departed peer).

use std::time::Instant;

use crate::log::Published;
use crate::proto::refusal::Refusal;
use crate::proto::server::Event;
use crate::proto::sessions::SessionId;
use crate::proto::transfer::{Outcome, Transmit};
use crate::proto::wire::{self, ErrorCode, Packet};
use crate::sys::net;
use crate::uring::{self, Buffer, Owner, SendDone, SendError, Unsent};

use super::admit::disk_refusal;
use super::slot::{COMMIT_DIR, COMMIT_FILE, Store};
use super::{PUMP_TRANSMITS_MAX, Role, Shard};

/// What a datagram on a transfer socket leads to, once its buffer is done with.
enum After {
    Nothing,
    Pump,
    /// The last block of an upload is stored: make it durable.
    Commit,
    /// From a stray TID: answer it with ERROR 5 (unless it is an ERROR).
    Stray(std::net::SocketAddr),
}

impl Shard {
    pub(super) fn on_transfer_datagram(&mut self, owner: Owner, buffer: &Buffer, now: Instant) {
        let Some(id) = self.sessions.id_at(owner.index()) else {
            return;
        };
        let after = {
            let Some(dgram) = self.io.datagram(buffer) else {
                return;
            };
            let c = &self.ctx.counters;
            c.packets_received.inc();
            c.bytes_received.add(dgram.payload.len() as u64);
            let Some(entry) = self.sessions.get_mut(id) else {
                return;
            };
            let Some(from) = dgram.peer else {
                return;
            };
            let packet = Packet::parse(dgram.payload);
            if !entry.is_live() {
                After::Nothing
            } else if from != entry.peer {
                // RFC 1350 §4: a stray TID gets ERROR 5; the transfer goes on.
                // (Only with --stray-errors: a connected socket never sees one.)
                c.stray_packets.inc();
                if matches!(packet, Ok(Packet::Error { .. })) {
                    After::Nothing
                } else {
                    After::Stray(from)
                }
            } else if dgram.truncated {
                After::Nothing
            } else if let Ok(packet) = packet {
                let before = duplicates(&entry.session);
                // Through the table, which notes when the peer first answers.
                let event = self
                    .sessions
                    .handle(id, &packet, now)
                    .unwrap_or(Event::Nothing);
                let Some(entry) = self.sessions.get_mut(id) else {
                    return;
                };
                c.duplicates_ignored
                    .add(duplicates(&entry.session).saturating_sub(before));
                match (event, packet) {
                    (Event::Store { last, .. }, Packet::Data { payload, .. }) => {
                        c.payload_bytes_received.add(payload.len() as u64);
                        match store_block(
                            &mut entry.io.store,
                            payload,
                            last,
                            &mut self.scratch.decode,
                        ) {
                            Err(e) => {
                                entry.session.abort(e);
                                After::Pump
                            }
                            Ok(()) if last => After::Commit,
                            Ok(()) => After::Pump,
                        }
                    }
                    _ => After::Pump,
                }
            } else {
                // Malformed from the peer: ignore it, its retransmit will do.
                After::Nothing
            }
        };
        match after {
            After::Nothing => {}
            After::Pump => self.pump(id),
            After::Commit => {
                self.start_commit(id);
                self.pump(id);
            }
            After::Stray(from) => {
                let sent = self.io.send_control(owner, from, None, |buf| {
                    wire::encode_error(buf, ErrorCode::UnknownTid, "Unknown transfer ID")
                });
                if sent.is_err() {
                    self.ctx.counters.refusals_dropped.inc();
                }
            }
        }
    }

    /// The last block of an upload is in: fsync the file through the ring
    /// (no thread waits on the disk). The receiver holds the final ACK until
    /// `on_commit_step` says the file is durable under its name.
    fn start_commit(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.get_mut(id) else {
            return;
        };
        let Store::Write {
            upload: Some(up),
            netascii,
        } = &entry.io.store
        else {
            return;
        };
        // The client announced its size (tsize): a file that arrived with
        // another size is not what it meant to send (curl, for one, can
        // drop a block of its own when an OACK is duplicated). Refuse it
        // rather than store it. (Netascii sizes count wire bytes.)
        if let Some(announced) = entry.session.negotiated().oack.tsize_bytes
            && netascii.is_none()
            && up.written_bytes() != announced
        {
            entry.session.commit_failed(Refusal::SIZE_MISMATCH);
            return;
        }
        // The ring keeps its own duplicate open until the owner settles.
        match up.file_fd().try_clone_to_owned() {
            Ok(fd) => self.io.fsync(Owner::new(id.index()), fd, COMMIT_FILE),
            Err(_) => entry.session.commit_failed(Refusal::BUSY),
        }
    }

    /// A commit fsync completed: after the file's, publish the name and
    /// fsync the directory; after the directory's, the final ACK may go.
    /// Only a live session that is committing acts on it; a session retired
    /// meanwhile (replaced, shut down) has nobody to tell.
    pub(super) fn on_commit_step(&mut self, owner: Owner, step: u32, result: i32, now: Instant) {
        let Some(id) = self.sessions.id_at(owner.index()) else {
            return;
        };
        let Shard { sessions, io, .. } = self;
        let Some(entry) = sessions.get_mut(id) else {
            return;
        };
        if !entry.is_live() || !entry.session.is_committing() {
            return;
        }
        let Store::Write { upload, .. } = &mut entry.io.store else {
            return;
        };
        let next = match upload.as_mut() {
            None => Err(disk_refusal(crate::cache::UploadError::Io(
                std::io::Error::from_raw_os_error(libc::EBADF),
            ))),
            Some(_) if result < 0 => Err(disk_refusal(crate::cache::UploadError::from(
                std::io::Error::from_raw_os_error(-result),
            ))),
            Some(up) if step == COMMIT_FILE => up
                .publish()
                .map_err(disk_refusal)
                .and_then(|()| up.dir_fd().try_clone_to_owned().map_err(|_| Refusal::BUSY))
                .map(|dir| {
                    io.fsync(owner, dir, COMMIT_DIR);
                    true
                }),
            Some(_) => Ok(false), // the directory is synced: done
        };
        let done = match next {
            Ok(true) => return, // the directory's fsync is on its way
            Ok(false) => {
                entry.session.commit_done(now);
                entry.io.published = upload.as_ref().map(|up| {
                    if up.replaces() {
                        Published::Replaced
                    } else {
                        Published::Created
                    }
                });
                true
            }
            Err(r) => {
                entry.session.commit_failed(r);
                false
            }
        };
        // No fsync of its files is in flight now: close them (an upload
        // that was not published vanishes here).
        *upload = None;
        if done {
            // The final ACK goes out now: the transfer is complete.
            self.report(id, Outcome::Complete);
        }
        self.pump(id);
    }

    /// Turns what the session wants sent into sends, then retires the
    /// session if it has ended and owes nothing more.
    pub(super) fn pump(&mut self, id: SessionId) {
        for _ in 0..PUMP_TRANSMITS_MAX {
            let Some(entry) = self.sessions.get_mut(id) else {
                return;
            };
            if !entry.is_live() {
                return;
            }
            // The newest transmit supersedes an owed one: a new window
            // starts at or before it, an ERROR ends everything. Once the
            // session has ended, only an owed ERROR is still worth sending
            // (a peer that sent ERROR or took the last block wants no DATA).
            let next = match entry.session.poll_transmit() {
                Some(t) => {
                    entry.io.owed = None;
                    t
                }
                None => match entry.io.owed.take() {
                    Some(t @ Transmit::Error { .. }) => t,
                    Some(_) if entry.session.outcome().is_some() => break,
                    Some(t) => t,
                    None => break,
                },
            };
            if let Err(rest) = self.transmit(id, next) {
                self.owe(id, rest);
                break;
            }
        }
        let Some(entry) = self.sessions.get(id) else {
            return;
        };
        if let Some(deadline) = entry.session.poll_timeout() {
            self.next_timer_scan = self.next_timer_scan.min(deadline);
        }
        if let Some(outcome) = entry.session.outcome()
            && entry.io.owed.is_none()
        {
            self.retire(id, outcome);
        }
    }

    /// Keeps what did not fit the send pool; it goes out when slots free up.
    fn owe(&mut self, id: SessionId, rest: Transmit) {
        let Some(entry) = self.sessions.get_mut(id) else {
            return;
        };
        entry.io.owed = Some(rest);
        self.ctx.counters.sends_deferred.inc();
        if !entry.io.waiting {
            entry.io.waiting = true;
            self.waiting.push_back(id);
        }
    }

    /// After completions freed send slots: the sessions that were waiting
    /// for them send what they owe, in the order they stalled.
    pub(super) fn resume_waiting(&mut self) {
        for _ in 0..self.waiting.len() {
            if self.io.sends_available() == 0 {
                break;
            }
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            let Some(entry) = self.sessions.get_mut(id) else {
                continue;
            };
            entry.io.waiting = false;
            self.pump(id);
        }
    }

    /// Queues one transmit; `Err` is the part that found no send slot.
    fn transmit(&mut self, id: SessionId, transmit: Transmit) -> Result<(), Transmit> {
        let Shard {
            sessions,
            io,
            ctx,
            endpoint,
            ..
        } = self;
        let Some(entry) = sessions.get(id) else {
            return Ok(());
        };
        let owner = Owner::new(id.index());
        let peer = entry.peer;
        if !entry.is_verified() {
            // A peer that has not answered may be a spoofed address: what it
            // is sent comes out of the unproven-bytes budgets. Withheld, the
            // transmit is as if lost (the session's timer goes on).
            let bytes = match transmit {
                Transmit::Data { count, .. } => {
                    u64::from(count) * (u64::from(entry.session.negotiated().blksize) + 4)
                }
                _ => wire::CONTROL_ESTIMATE_BYTES,
            };
            if !endpoint.spend_unverified(peer.ip(), bytes, Instant::now()) {
                ctx.counters.unverified_sends_withheld.inc();
                return Ok(());
            }
        }
        match transmit {
            Transmit::Data { first, count } => {
                let blksize = entry.session.negotiated().blksize;
                let per_send = if entry.io.gso {
                    uring::gso_segments(blksize) as u16
                } else {
                    1
                };
                // A cold file: is this window in memory yet?
                let in_worker = entry.io.cold && {
                    let offset = first.saturating_sub(1) * u64::from(blksize);
                    let len = u64::from(count) * u64::from(blksize);
                    !io.payload_resident(owner, offset, len)
                };
                if in_worker {
                    ctx.counters.sends_in_worker.inc();
                }
                match io.send_window(owner, peer, blksize, first, count, per_send, in_worker) {
                    Ok(()) => Ok(()),
                    Err(Unsent {
                        first,
                        count,
                        error: SendError::NoSlot,
                    }) => Err(Transmit::Data { first, count }),
                    // Cannot happen for a live RRQ; the timer resends.
                    Err(_) => {
                        ctx.counters.send_errors.inc();
                        Ok(())
                    }
                }
            }
            control => {
                match io.send_control(owner, peer, None, |buf| {
                    entry.session.encode_control(control, buf)
                }) {
                    Ok(()) => Ok(()),
                    Err(SendError::NoSlot) => Err(control),
                    Err(SendError::Encode | SendError::NoFile) => {
                        ctx.counters.send_errors.inc();
                        Ok(())
                    }
                }
            }
        }
    }

    pub(super) fn on_send_done(&mut self, owner: Owner, done: SendDone, result: i32) {
        let c = &self.ctx.counters;
        if result >= 0 {
            c.packets_sent.add(u64::from(done.datagrams));
            c.bytes_sent.add(done.bytes as u64);
            if done.blocks.is_some() {
                let headers = u64::from(done.datagrams) * wire::HEADER_BYTES as u64;
                c.payload_bytes_sent
                    .add((done.bytes as u64).saturating_sub(headers));
            }
            return;
        }
        c.send_errors.inc();
        let Role::Session(index) = self.owners.role(owner) else {
            return;
        };
        let Some(id) = self.sessions.id_at(index) else {
            return;
        };
        let Some(entry) = self.sessions.get_mut(id) else {
            return;
        };
        if !entry.is_live() {
            return;
        }
        match -result {
            // The segment is larger than the path MTU or the device cannot
            // offload: resend these blocks one datagram at a time from now on.
            libc::EINVAL | libc::EIO | libc::EMSGSIZE if done.gso => {
                entry.io.gso = false;
                if let Some((first, count)) = done.blocks
                    && entry.io.owed.is_none()
                    && let Err(rest) = self.transmit(id, Transmit::Data { first, count })
                {
                    self.owe(id, rest);
                }
            }
            // An ICMP error is pending on the socket: see whose it is.
            libc::ECONNREFUSED => self.on_icmp_error(owner),
            // The file shrank under its map: the kernel's copy faulted.
            libc::EFAULT => {
                entry.session.abort(Refusal::FILE_CHANGED);
                self.pump(id);
            }
            // Anything else (ENOBUFS, EAGAIN...) is loss; the timer resends.
            _ => {}
        }
    }

    /// The read-ahead of a cold file was taken: if the whole file is in
    /// memory now, its windows go out inline again.
    pub(super) fn on_readahead_done(&mut self, owner: Owner) {
        let Role::Session(index) = self.owners.role(owner) else {
            return;
        };
        let Some(id) = self.sessions.id_at(index) else {
            return;
        };
        let resident = self.io.payload_resident(owner, 0, u64::MAX);
        if let Some(entry) = self.sessions.get_mut(id) {
            entry.io.cold &= !resident;
        }
    }

    /// ICMP errors queued on a transfer socket (IP_RECVERR): if one says the
    /// peer's own port is closed, the client has gone and the session ends
    /// now rather than after its whole retry schedule. Errors for other
    /// addresses (an ERROR 5 we sent to a stray port) are discarded.
    pub(super) fn on_icmp_error(&mut self, owner: Owner) {
        let Role::Session(index) = self.owners.role(owner) else {
            return;
        };
        let Some(id) = self.sessions.id_at(index) else {
            return;
        };
        let Some(entry) = self.sessions.get_mut(id) else {
            return;
        };
        let Some(fd) = self.io.file(owner) else {
            return;
        };
        if !entry.is_live() || !net::peer_port_unreachable(&fd, entry.peer) {
            return;
        }
        entry.session.handle_unreachable();
        self.pump(id);
    }
}

fn duplicates(session: &crate::proto::server::ServerSession) -> u64 {
    session.sender().map_or(0, |s| s.counters().duplicate_acks)
        + session
            .receiver()
            .map_or(0, |r| r.counters().duplicate_blocks)
}

/// Writes an accepted DATA payload of an upload (the page cache absorbs
/// it; durability comes from the fsyncs at the end).
fn store_block(
    store: &mut Store,
    payload: &[u8],
    last: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), crate::proto::refusal::Refusal> {
    let Store::Write { upload, netascii } = store else {
        return Ok(());
    };
    let Some(up) = upload.as_mut() else {
        return Ok(());
    };
    match netascii {
        Some(decoder) => {
            decoder.decode(payload, scratch);
            up.write(scratch).map_err(disk_refusal)?;
            if last {
                decoder.finish(scratch);
                up.write(scratch).map_err(disk_refusal)?;
            }
        }
        None => up.write(payload).map_err(disk_refusal)?,
    }
    Ok(())
}
