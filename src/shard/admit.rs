//! New requests on the service sockets: parse, refuse or admit, and set
//! up the transfer (its file or upload, its own socket, its session).

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use io_uring::cqueue;

use crate::cache::{PathRefusal, Source, Upload, UploadError, filemap};
use crate::config::sizes;
use crate::proto::netascii;
use crate::proto::server::ServerSession;
use crate::proto::wire::{self, ErrorCode, Mode, Packet, Request, RequestKind};

use super::{RECV_OVERHEAD_BYTES, Shard, Slot, Store, net};

impl Shard {
    pub(super) fn on_service_recv(&mut self, index: usize, result: i32, flags: u32, now: Instant) {
        let more = cqueue::more(flags);
        if result >= 0 {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.on_service_datagram(index, bid, result as usize, now);
                self.small.recycle(bid);
            }
        } else if result == -libc::ENOBUFS {
            self.setup.counters.receive_buffers_exhausted.inc();
        }
        if !more {
            if let Some(s) = self.service.get_mut(index) {
                s.armed = false;
            }
            if self.draining_since.is_none() {
                self.arm_service(index);
            }
        }
    }

    pub(super) fn on_service_datagram(&mut self, index: usize, bid: u16, len: usize, now: Instant) {
        let counters = Arc::clone(&self.setup.counters);
        let Some(buf) = self.small.buffer(bid, len) else {
            return;
        };
        let Ok(msg) = io_uring::types::RecvMsgOut::parse(buf, &self.service_msghdr) else {
            return;
        };
        let Some(peer) = net::parse_sockaddr(msg.name_data()) else {
            return;
        };
        let Some(service) = self.service.get(index) else {
            return;
        };
        let local =
            net::parse_pktinfo(msg.control_data(), service.addr.port()).unwrap_or(service.addr);
        counters.packets_received.inc();
        counters.bytes_received.add(msg.payload_data().len() as u64);
        if msg.is_payload_truncated() {
            counters.requests_malformed.inc();
            return;
        }
        // Copy the request out of the receive buffer (into scratch space
        // allocated at start-up) so `admit` can use the whole shard.
        let mut payload = std::mem::take(&mut self.request_scratch);
        payload.clear();
        payload.extend_from_slice(msg.payload_data());
        match Packet::parse(&payload) {
            Ok(Packet::Request(request)) => self.admit(index, peer, local, &request, &payload, now),
            Ok(_) => counters.requests_malformed.inc(), // not a request: ignore, never reflect
            Err(e) => {
                counters.requests_malformed.inc();
                // Answer only what looks like a request; garbage gets nothing.
                if matches!(payload.get(..2), Some([0, 1]) | Some([0, 2])) {
                    self.refuse(index, peer, local, e.error_code(), e.message());
                }
            }
        }
        self.request_scratch = payload;
    }

    /// ERROR from the service socket, from the address the request came to.
    pub(super) fn refuse(
        &mut self,
        index: usize,
        peer: SocketAddr,
        local: SocketAddr,
        code: ErrorCode,
        message: &str,
    ) {
        if self.setup.verbose >= 2 {
            eprintln!("uftpd: refused {peer}: {message}");
        }
        let Some(service) = self.service.get(index) else {
            return;
        };
        let fd = service.fd.as_raw_fd();
        let source = service.addr.ip().is_unspecified().then_some(local.ip());
        let Some(send_slot) = self.pool.take() else {
            self.setup.counters.send_pool_exhausted.inc();
            return;
        };
        let prepared = self
            .pool
            .prepare_control(send_slot, peer, source, None, |buf| {
                wire::encode_error(buf, code, message)
            });
        self.submit_send(fd, send_slot, prepared);
    }

    pub(super) fn admit(
        &mut self,
        index: usize,
        peer: SocketAddr,
        local: SocketAddr,
        request: &Request<'_>,
        raw: &[u8],
        now: Instant,
    ) {
        let counters = Arc::clone(&self.setup.counters);
        match request.kind {
            RequestKind::Read => counters.requests_read.inc(),
            RequestKind::Write => counters.requests_write.inc(),
        }
        let hash = request_hash(raw);
        // A repeat from the same client port: the session that is still
        // waiting for this peer answers it. Anything else from that port
        // replaces the old session (the client has moved on).
        if let Some(&existing) = self.by_peer.get(&peer) {
            if let Some(Some(slot)) = self.slots.get_mut(existing as usize)
                && slot.request_hash == hash
                && !slot.session.is_verified()
            {
                counters.requests_duplicate.inc();
                slot.session.handle_duplicate_request();
                self.pump(existing);
                return;
            }
            self.end_session(existing, None);
        }
        if self.draining_since.is_some() {
            return;
        }
        let from_client = self.per_client.get(&peer.ip()).copied().unwrap_or(0);
        let over_limit = if self.free_slots.is_empty() {
            Some("Server busy, try again")
        } else if from_client >= self.setup.sessions_per_client_max {
            Some("Too many transfers from this address")
        } else {
            None
        };
        if let Some(message) = over_limit {
            counters.sessions_refused_limit.inc();
            self.refuse(index, peer, local, ErrorCode::NotDefined, message);
            return;
        }
        let prepared = match request.kind {
            RequestKind::Read => self.prepare_read(request, now),
            RequestKind::Write => self.prepare_write(request, now),
        };
        let (session, store) = match prepared {
            Ok(p) => p,
            Err((code, message)) => {
                counters.sessions_refused.inc();
                self.refuse(index, peer, local, code, message);
                return;
            }
        };
        let socket = match net::transfer_socket(local) {
            Ok(s) => s,
            Err(_) => {
                counters.sessions_refused.inc();
                self.refuse(
                    index,
                    peer,
                    local,
                    ErrorCode::NotDefined,
                    "Cannot open a transfer port",
                );
                return;
            }
        };
        let large_buffers =
            RECV_OVERHEAD_BYTES + wire::HEADER_BYTES + usize::from(session.negotiated().blksize)
                > sizes::SMALL_BUFFER_BYTES;
        let Some(slot_index) = self.free_slots.pop() else {
            return;
        };
        let generation = {
            let g = &mut self.generations[slot_index as usize];
            *g = g.wrapping_add(1);
            *g
        };
        self.slots[slot_index as usize] = Some(Slot {
            generation,
            session,
            socket,
            peer,
            store,
            request_hash: hash,
            recv_armed: false,
            closing: false,
            gso: true,
            large_buffers,
            committing: false,
            started: now,
            filename: request.filename.into(),
        });
        self.active += 1;
        self.by_peer.insert(peer, slot_index);
        *self.per_client.entry(peer.ip()).or_insert(0) += 1;
        counters.sessions_accepted.inc();
        self.arm_transfer(slot_index);
        self.pump(slot_index);
    }

    pub(super) fn prepare_read(
        &mut self,
        request: &Request<'_>,
        now: Instant,
    ) -> Result<(ServerSession, Store), (ErrorCode, &'static str)> {
        let file = self
            .setup
            .root
            .open_read(request.filename, &mut self.name_scratch)
            .map_err(path_error)?;
        let source = match request.mode {
            Mode::Octet => self
                .setup
                .cache
                .get(&file)
                .map_err(|_| (ErrorCode::AccessViolation, "Cannot read file"))?,
            Mode::Netascii => {
                let host = filemap::read_bounded(&file, self.setup.netascii_bytes_max)
                    .map_err(|_| (ErrorCode::AccessViolation, "Cannot read file"))?
                    .ok_or((
                        ErrorCode::NotDefined,
                        "File too large for netascii; use octet",
                    ))?;
                let mut converted = Vec::new();
                netascii::encode(&host, &mut converted);
                Arc::new(Source::Owned(converted))
            }
        };
        let session = ServerSession::read(
            request,
            source.len(),
            request.mode == Mode::Octet,
            &self.setup.server,
            now,
        )
        .map_err(|r| (r.code, r.message))?;
        Ok((session, Store::Read(source)))
    }

    pub(super) fn prepare_write(
        &mut self,
        request: &Request<'_>,
        now: Instant,
    ) -> Result<(ServerSession, Store), (ErrorCode, &'static str)> {
        if !self.setup.allow_create {
            return Err((ErrorCode::AccessViolation, "Uploads are disabled"));
        }
        // Negotiate first: a tsize over the limit is refused before any file exists.
        let session = ServerSession::write(request, &self.setup.server, now)
            .map_err(|r| (r.code, r.message))?;
        let upload = Upload::begin(
            &self.setup.root,
            request.filename,
            self.setup.server.negotiation.upload_bytes_max,
        )
        .map_err(|e| match e {
            UploadError::Refused(r) => path_error(r),
            UploadError::DiskFull => (ErrorCode::DiskFull, "Disk full or allocation exceeded"),
            UploadError::Io(_) => (ErrorCode::AccessViolation, "Cannot create file"),
        })?;
        let netascii = (request.mode == Mode::Netascii).then(netascii::Decoder::default);
        Ok((
            session,
            Store::Write {
                upload: Some(upload),
                netascii,
            },
        ))
    }
}

fn request_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn path_error(r: PathRefusal) -> (ErrorCode, &'static str) {
    match r {
        PathRefusal::NotFound => (ErrorCode::FileNotFound, "File not found"),
        PathRefusal::AccessViolation => (ErrorCode::AccessViolation, "Access violation"),
    }
}
