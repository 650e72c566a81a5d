//! Datagrams on the service sockets: the [`Endpoint`](crate::proto::endpoint)
//! decides what each one gets, and this file carries that out — a refusal
//! from the service port, a repeat handed to its session, or a new session
//! with its file (or upload), its own socket and its ring owner.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cache::resolve;
use crate::cache::{Lookup, NetasciiError, PathRefusal, Upload, UploadError};
use crate::log::{Body, Level, Record, RefusedLog, RequestLog};
use crate::proto::endpoint::{Decision, Ignored};
use crate::proto::netascii;
use crate::proto::options;
use crate::proto::refusal::{Cause, Refusal};
use crate::proto::server::{ServerConfig, ServerSession};
use crate::proto::transfer::Outcome;
use crate::proto::wire::{self, Mode, Packet, Request, RequestKind};
use crate::remap;
use crate::sys::net;
use crate::uring::{self, Buffer, Group, Owner, Payload};

use super::Shard;
use super::slot::{Slot, Store};

/// The refusal a client sees for a path the cache layer refused.
pub(super) fn path_refusal(r: PathRefusal) -> Refusal {
    match r {
        PathRefusal::NotFound => Refusal::NOT_FOUND,
        PathRefusal::AccessViolation => Refusal::ACCESS,
        PathRefusal::PermissionDenied => Refusal::PERMISSION_DENIED,
        PathRefusal::IsDirectory => Refusal::IS_DIRECTORY,
        PathRefusal::OutsideRoot => Refusal::OUTSIDE_ROOT,
        PathRefusal::NotAbsolute => Refusal::NOT_ABSOLUTE,
        PathRefusal::NotRegular => Refusal::NOT_REGULAR,
        PathRefusal::NameTooLong => Refusal::NAME_TOO_LONG,
        PathRefusal::NoDescriptors | PathRefusal::Busy => Refusal::BUSY,
        PathRefusal::Exists => Refusal::EXISTS,
        PathRefusal::OutsideUploadDir => Refusal::OUTSIDE_UPLOAD_DIR,
        PathRefusal::BeingWritten => Refusal::BEING_WRITTEN,
    }
}

/// The refusal for a failed write to an upload.
pub(super) fn disk_refusal(e: UploadError) -> Refusal {
    match e {
        UploadError::DiskFull => Refusal::DISK_FULL,
        UploadError::Refused(r) => path_refusal(r),
        UploadError::Io(_) => {
            Refusal::new(wire::ErrorCode::NotDefined, "Write failed", Cause::Disk)
        }
    }
}

/// `ADDRESS/NAME` for a client whose directory `ROOT/ADDRESS` exists
/// (`--per-client-root`), else `None` (the name is served from ROOT). The
/// name is cleaned first, so that its `..` cannot climb out of the
/// client's directory into ROOT or another client's.
fn per_client_name(
    root: &crate::cache::Root,
    client: std::net::IpAddr,
    name: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, PathRefusal> {
    use std::io::Write;
    // The longest IPv6 text is 45 bytes.
    let mut text = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    if write!(cursor, "{client}").is_err() {
        return Ok(None);
    }
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    let dir = text.get(..len).unwrap_or_default();
    if !root.has_directory(dir, scratch)? {
        return Ok(None);
    }
    let mut cleaned = Vec::with_capacity(name.len());
    crate::cache::resolve::relative_name(name, &mut cleaned)?;
    let mut out = Vec::with_capacity(dir.len() + 1 + cleaned.len());
    out.extend_from_slice(dir);
    out.push(b'/');
    out.extend_from_slice(&cleaned);
    Ok(Some(out))
}

/// Where a request came from and to: the client, the local address it
/// was sent to, and the interface it came in on (0: unknown).
#[derive(Clone, Copy)]
struct Arrival {
    peer: SocketAddr,
    local: SocketAddr,
    ifindex: u32,
}

impl Shard {
    /// The server configuration for a request that came in on `ifindex`:
    /// without `--blksize-max`, blksize is capped to what one datagram on
    /// that interface carries unfragmented (MTU − 32 for IPv4, − 52 for
    /// IPv6), since many PXE ROMs cannot reassemble fragments.
    fn config_for(&mut self, local: SocketAddr, ifindex: u32, now: Instant) -> ServerConfig {
        let mut config = self.ctx.server;
        if let Some(mtus) = self.ctx.mtus.as_mut()
            && let Some(mtu) = mtus.mtu(ifindex, now, net::interface_mtu)
        {
            let cap = options::blksize_for_mtu(mtu, local.is_ipv6());
            let limits = &mut config.negotiation;
            limits.blksize_max = limits.blksize_max.min(cap);
        }
        config
    }

    pub(super) fn on_service_datagram(&mut self, service: usize, buffer: &Buffer, now: Instant) {
        let Some(svc) = self.services.get(service) else {
            return;
        };
        let svc_addr = svc.addr;
        // Copy the request out of the receive buffer (into scratch space
        // allocated at start-up): carrying out the decision needs the ring.
        let mut raw = std::mem::take(&mut self.scratch.request);
        raw.clear();
        let received = self.io.datagram(buffer).and_then(|d| {
            raw.extend_from_slice(d.payload);
            let peer = d.peer?;
            let (local, ifindex) =
                net::parse_pktinfo_interface(d.control, svc_addr.port()).unwrap_or((svc_addr, 0));
            let local = net::transfer_local(peer, local);
            Some((
                Arrival {
                    peer,
                    local,
                    ifindex,
                },
                d.truncated,
            ))
        });
        if let Some((arrival, truncated)) = received {
            let peer = arrival.peer;
            let c = &self.ctx.counters;
            c.packets_received.inc();
            c.bytes_received.add(raw.len() as u64);
            if self.ctx.logger.enabled(Level::Debug) {
                self.log_request(peer, &raw);
            }
            let decision = self
                .endpoint
                .decide(&mut self.sessions, peer, &raw, truncated, now);
            self.carry_out(service, arrival, decision, &raw, now);
        }
        self.scratch.request = raw;
    }

    fn carry_out(
        &mut self,
        service: usize,
        arrival: Arrival,
        decision: Decision<'_>,
        raw: &[u8],
        now: Instant,
    ) {
        let Arrival { peer, local, .. } = arrival;
        let c = &self.ctx.counters;
        // Every datagram counts once: a well-formed RRQ or WRQ (repeats
        // included), or malformed.
        let malformed = match &decision {
            Decision::Ignore(Ignored::Garbage | Ignored::Truncated) => true,
            Decision::Refuse(r) => r.cause == Cause::Malformed,
            _ => false,
        };
        match raw.get(..2) {
            // Not a request at all (tftp-hpa's client ACKs the ERROR it
            // gets from the service port): not counted as one.
            _ if decision == Decision::Ignore(Ignored::NotARequest) => {
                c.service_packets_ignored.inc()
            }
            _ if malformed => c.requests_malformed.inc(),
            Some([0, 1]) => c.requests_read.inc(),
            Some([0, 2]) => c.requests_write.inc(),
            _ => c.requests_malformed.inc(),
        }
        match decision {
            Decision::Ignore(Ignored::StaleRepeat) => c.requests_stale.inc(),
            Decision::Ignore(Ignored::Draining) => c.requests_ignored.inc(),
            Decision::Ignore(Ignored::RateLimited) => c.requests_rate_limited.inc(),
            Decision::Ignore(_) => {}
            Decision::Refuse(r) => self.refuse(service, peer, local, r, raw),
            Decision::Repeat(id) => {
                c.requests_duplicate.inc();
                if let Some(entry) = self.sessions.get_mut(id) {
                    entry.session.handle_duplicate_request(now);
                }
                self.pump(id);
            }
            Decision::Accept {
                request,
                replace,
                evict,
            } => {
                if let Some(old) = replace
                    && let Some(outcome) = self
                        .sessions
                        .get(old)
                        .map(|e| e.session.outcome_if_replaced())
                {
                    self.retire(old, outcome);
                }
                if let Some(victim) = evict {
                    self.retire(victim, Outcome::Evicted);
                }
                self.open_session(service, arrival, &request, raw, now);
            }
        }
    }

    /// A request as it arrived, at debug level (before any decision).
    fn log_request(&self, peer: SocketAddr, raw: &[u8]) {
        let Ok(Packet::Request(r)) = Packet::parse(raw) else {
            return;
        };
        self.log(
            Level::Debug,
            Body::Request(RequestLog {
                peer,
                kind: r.kind,
                filename: r.filename.into(),
                mode: r.mode,
                options: r.options.into(),
            }),
        );
    }

    /// Queues a log record; never waits (a full queue drops and counts it).
    pub(super) fn log(&self, level: Level, body: Body) {
        let record = Record {
            at: SystemTime::now(),
            level,
            shard: Some(self.ctx.shard),
            body,
        };
        if self.ctx.logger.send(record).is_err() {
            self.ctx.counters.log_events_dropped.inc();
        }
    }

    /// ERROR from the service socket, from the address the request came to;
    /// counted by cause and logged with the file the request named.
    pub(super) fn refuse(
        &mut self,
        service: usize,
        peer: SocketAddr,
        local: SocketAddr,
        refusal: Refusal,
        raw: &[u8],
    ) {
        self.refuse_saying(service, peer, local, refusal, raw, None);
    }

    /// [`Shard::refuse`], with `message` on the wire instead of the
    /// refusal's own text (a remap rule's message; the log keeps the
    /// refusal's, so that logs stay in a known vocabulary).
    fn refuse_saying(
        &mut self,
        service: usize,
        peer: SocketAddr,
        local: SocketAddr,
        refusal: Refusal,
        raw: &[u8],
        message: Option<&[u8]>,
    ) {
        self.ctx.counters.refused(refusal.cause).inc();
        if self.ctx.logger.enabled(Level::Info) {
            let (kind, filename) = match Packet::parse(raw) {
                Ok(Packet::Request(r)) => (Some(r.kind), r.filename),
                // Not a request: name what can be read of one.
                _ => (None, wire::request_filename(raw)),
            };
            self.log(
                Level::Info,
                Body::Refused(RefusedLog {
                    peer,
                    kind,
                    filename: filename.into(),
                    refusal,
                }),
            );
        }
        let Some(svc) = self.services.get(service) else {
            return;
        };
        // A dual-stack service socket (passed by systemd or inetd) reaches
        // an IPv4 client at its IPv4-mapped address.
        let v6 = svc.addr.is_ipv6();
        let source = (svc.addr.ip().is_unspecified() && !local.ip().is_unspecified())
            .then(|| net::ip_for_socket(local.ip(), v6));
        let owner = self.owners.service(service);
        if self
            .io
            .send_control(owner, net::for_socket(peer, v6), source, |buf| {
                let text = message.unwrap_or(refusal.message.as_bytes());
                wire::encode_error_bytes(buf, refusal.code, text)
            })
            .is_err()
        {
            // No send slot: like a lost datagram, the client asks again.
            self.ctx.counters.refusals_dropped.inc();
        }
    }

    fn open_session(
        &mut self,
        service: usize,
        arrival: Arrival,
        request: &Request<'_>,
        raw: &[u8],
        now: Instant,
    ) {
        let Arrival {
            peer,
            local,
            ifindex,
        } = arrival;
        // Remap before anything resolves the name; the session then only
        // ever sees the mapped one (the debug log has the one asked for).
        let mapped;
        let mut request = *request;
        let ctx = &mut self.ctx;
        if ctx.names_shared.generation() != ctx.names_generation {
            (ctx.names_generation, ctx.names) = ctx.names_shared.current();
        }
        // A `..` is resolved before the rules see the name, so that a rule
        // refusing `private/` also refuses `x/../private/secret`.
        let cleaned;
        if resolve::has_dot_dot(request.filename) {
            let mut out = Vec::with_capacity(request.filename.len() + 1);
            if let Err(r) = resolve::relative_name(request.filename, &mut out) {
                self.refuse(service, peer, local, path_refusal(r), raw);
                return;
            }
            // An absolute name stays absolute (--absolute-dir needs it).
            if matches!(request.filename.first(), Some(b'/' | b'\\')) {
                out.insert(0, b'/');
            }
            cleaned = out;
            request.filename = &cleaned;
        }
        if let Some(names) = &self.ctx.names {
            let op = match request.kind {
                RequestKind::Read => remap::Op::Get,
                RequestKind::Write => remap::Op::Put,
            };
            match names.apply(request.filename, &remap::Context::new(op, peer.ip())) {
                Ok(name) => {
                    mapped = name;
                    request.filename = &mapped;
                }
                Err(r) => {
                    let (refusal, message) = match &r {
                        remap::Refusal::Denied { message, .. } => {
                            (Refusal::REMAP_DENIED, message.as_deref())
                        }
                        remap::Refusal::TooManySteps => (Refusal::REMAP_FAILURE, None),
                        remap::Refusal::TooLong => (Refusal::NAME_TOO_LONG, None),
                    };
                    self.refuse_saying(service, peer, local, refusal, raw, message);
                    return;
                }
            }
        }
        // dnsmasq's --tftp-unique-root: ROOT/ADDRESS/ when it exists.
        let prefixed;
        // Downloads only, as dnsmasq (which takes no uploads) does: an
        // upload directory stays one place for every client.
        if self.ctx.per_client_root
            && request.kind == RequestKind::Read
            && let Some(root) = self.ctx.root.one()
        {
            match per_client_name(root, peer.ip(), request.filename, &mut self.scratch.name) {
                Ok(Some(name)) => {
                    prefixed = name;
                    request.filename = &prefixed;
                }
                Ok(None) => {}
                Err(r) => {
                    self.refuse(service, peer, local, path_refusal(r), raw);
                    return;
                }
            }
        }
        let request = &request;
        let config = self.config_for(local, ifindex, now);
        let opened = match request.kind {
            RequestKind::Read => self.prepare_read(request, &config, now),
            RequestKind::Write => self.prepare_write(request, &config, now),
        };
        let (session, store, payload) = match opened {
            Ok(parts) => parts,
            Err(r) => {
                self.refuse(service, peer, local, r, raw);
                return;
            }
        };
        let socket = match net::transfer_socket(local, self.ctx.ports.as_mut()) {
            Ok(s) => s,
            Err(e) => {
                let r = if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                    Refusal::BUSY
                } else if self.ctx.ports.is_some() && e.raw_os_error() == Some(libc::EADDRINUSE) {
                    Refusal::PORT_RANGE_FULL
                } else {
                    Refusal::NO_TRANSFER_PORT
                };
                self.refuse(service, peer, local, r, raw);
                return;
            }
        };
        let negotiated = *session.negotiated();
        let datagram_bytes = wire::HEADER_BYTES + usize::from(negotiated.blksize);
        let group = match request.kind {
            // ACKs and ERRORs are small whatever the blksize.
            RequestKind::Read => {
                // A whole window fits the socket, so its sends complete at once.
                net::size_send_buffer(
                    &socket,
                    usize::from(negotiated.windowsize) * (datagram_bytes + 64),
                );
                Group::Transfers
            }
            RequestKind::Write => uring::transfer_group(datagram_bytes),
        };
        let cold = payload
            .as_ref()
            .is_some_and(|p| !p.is_resident(0, p.len_bytes()));
        let slot = Slot {
            store,
            group,
            gso: self.ctx.gso,
            cold,
            owed: None,
            waiting: false,
            filename: request.filename.into(),
            reported: false,
            published: None,
        };
        let id = match self.sessions.insert(peer, raw, session, slot, now) {
            Ok(id) => id,
            Err(_) => {
                // The endpoint checked for room; only a bug gets here.
                debug_assert!(false, "no slot after the endpoint admitted");
                self.refuse(service, peer, local, Refusal::BUSY, raw);
                return;
            }
        };
        let owner = Owner::new(id.index());
        if self.io.install(owner, socket).is_err() {
            self.sessions.release(id);
            self.refuse(service, peer, local, Refusal::BUSY, raw);
            return;
        }
        if self.ctx.connect_transfers {
            // Any failure (ENETUNREACH, EAFNOSUPPORT...) leaves the socket
            // unconnected: it still works, at a route lookup per send.
            let _ = self.io.connect(owner, peer);
        }
        if let Some(payload) = payload {
            self.io.attach_payload(owner, payload);
            if cold {
                self.ctx.counters.cold_files.inc();
                self.io.readahead(owner);
            }
        }
        self.ctx.counters.sessions_accepted.inc();
        self.io.arm_recv(owner, group);
        self.pump(id);
    }

    #[allow(clippy::type_complexity)]
    fn prepare_read(
        &mut self,
        request: &Request<'_>,
        config: &ServerConfig,
        now: Instant,
    ) -> Result<(ServerSession, Store, Option<Arc<dyn Payload>>), Refusal> {
        let (root, name) = self
            .ctx
            .root
            .select(request.filename)
            .map_err(path_refusal)?;
        let file = root
            .open_read(name, &mut self.scratch.name)
            .map_err(path_refusal)?;
        if !self.ctx.permissive {
            use std::os::unix::fs::PermissionsExt;
            let mode = file
                .metadata()
                .map_err(|_| Refusal::CANNOT_READ)?
                .permissions()
                .mode();
            if mode & 0o004 == 0 {
                return Err(Refusal::PERMISSION_DENIED);
            }
        }
        let source = match request.mode {
            Mode::Octet => {
                let (source, lookup) = self
                    .ctx
                    .cache
                    .get(&file)
                    .map_err(|_| Refusal::CANNOT_READ)?;
                match lookup {
                    Lookup::Hit => self.ctx.counters.cache_hits.inc(),
                    Lookup::Miss => self.ctx.counters.cache_misses.inc(),
                }
                source
            }
            Mode::Netascii => self
                .ctx
                .cache
                .get_netascii(&file, self.ctx.netascii_bytes_max)
                .map_err(|e| match e {
                    NetasciiError::TooLarge => Refusal::NETASCII_TOO_LARGE,
                    NetasciiError::OverBudget => Refusal::BUSY,
                    NetasciiError::Io(_) => Refusal::CANNOT_READ,
                })?,
        };
        let session = ServerSession::read(
            request,
            source.len(),
            request.mode == Mode::Octet,
            config,
            now,
        )?;
        Ok((session, Store::Read, Some(source)))
    }

    #[allow(clippy::type_complexity)]
    fn prepare_write(
        &mut self,
        request: &Request<'_>,
        config: &ServerConfig,
        now: Instant,
    ) -> Result<(ServerSession, Store, Option<Arc<dyn Payload>>), Refusal> {
        let Some(policy) = &self.ctx.upload else {
            return Err(Refusal::UPLOADS_DISABLED);
        };
        // Negotiate first: a tsize over the limit is refused before any file exists.
        let session = ServerSession::write(request, config, now)?;
        let (root, name) = self
            .ctx
            .root
            .select(request.filename)
            .map_err(path_refusal)?;
        let upload =
            Upload::begin(root, name, policy, &self.ctx.upload_locks).map_err(|e| match e {
                UploadError::Io(_) => Refusal::CANNOT_CREATE,
                other => disk_refusal(other),
            })?;
        let netascii = (request.mode == Mode::Netascii).then(netascii::Decoder::default);
        Ok((
            session,
            Store::Write {
                upload: Some(upload),
                netascii,
            },
            None,
        ))
    }
}
