//! The send pool: a fixed set of `sendmsg` descriptors allocated at start-up.
//! A slot holds everything the kernel reads until the send completes: the
//! msghdr, iovecs, destination, control message, DATA headers, and an `Arc`
//! of the file map the iovecs point into.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::cache::Source;
use crate::proto::block;
use crate::proto::wire::{self, HEADER_BYTES};

use super::net::{self, PKTINFO_CONTROL_BYTES};

/// Segments in one UDP GSO send (the kernel allows up to 128).
pub const GSO_SEGMENTS_MAX: usize = 64;
/// A GSO send carries at most this many bytes (one IP datagram's worth).
pub const GSO_BYTES_MAX: usize = 65_000;
/// Control packets (OACK, ACK, ERROR) are at most this long.
pub const CONTROL_BYTES_MAX: usize = 512;

/// Which session a send belongs to, to route its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub slot: u32,
    pub generation: u32,
}

pub struct SendSlot {
    msg: libc::msghdr,
    iov: [libc::iovec; 2 * GSO_SEGMENTS_MAX],
    name: libc::sockaddr_storage,
    control: [u8; PKTINFO_CONTROL_BYTES],
    headers: [[u8; HEADER_BYTES]; GSO_SEGMENTS_MAX],
    payload: [u8; CONTROL_BYTES_MAX],
    /// Keeps the mapped bytes alive until the kernel is done with them.
    source: Option<Arc<Source>>,
    pub owner: Option<Owner>,
    /// For a DATA send: the blocks it carries, to resend them without GSO.
    pub blocks: Option<(u64, u16)>,
    pub gso: bool,
    pub bytes: usize,
}

// SAFETY: the raw pointers in msghdr/iovec point into this slot or into
// `source`, both owned here; slots never leave their shard thread.
unsafe impl Send for SendSlot {}

pub struct SendPool {
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
}

impl SendPool {
    pub fn new(count: usize) -> SendPool {
        let slots = (0..count)
            .map(|_| SendSlot {
                // SAFETY: plain C structs; zero is their empty state.
                msg: unsafe { std::mem::zeroed() },
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2 * GSO_SEGMENTS_MAX],
                // SAFETY: as above.
                name: unsafe { std::mem::zeroed() },
                control: [0; PKTINFO_CONTROL_BYTES],
                headers: [[0; HEADER_BYTES]; GSO_SEGMENTS_MAX],
                payload: [0; CONTROL_BYTES_MAX],
                source: None,
                owner: None,
                blocks: None,
                gso: false,
                bytes: 0,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let free = (0..count as u32).rev().collect();
        SendPool { slots, free }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Called on the send's completion: drops the map reference.
    pub fn release(&mut self, index: u32) -> Option<&mut SendSlot> {
        let slot = self.slots.get_mut(index as usize)?;
        debug_assert!(!self.free.contains(&index), "double release of send slot");
        slot.source = None;
        self.free.push(index);
        Some(slot)
    }

    pub fn get(&self, index: u32) -> Option<&SendSlot> {
        self.slots.get(index as usize)
    }

    /// A control packet written by `encode` into the slot's buffer. `source`
    /// is set when the socket is wildcard-bound and the reply must leave
    /// from the address the request was sent to.
    pub fn prepare_control(
        &mut self,
        index: u32,
        dest: SocketAddr,
        source: Option<IpAddr>,
        owner: Option<Owner>,
        encode: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<*const libc::msghdr> {
        let slot = self.slots.get_mut(index as usize)?;
        let len = encode(&mut slot.payload)?;
        slot.iov[0] = libc::iovec {
            iov_base: slot.payload.as_mut_ptr().cast(),
            iov_len: len,
        };
        let control_len = source.map_or(0, |ip| net::write_pktinfo(ip, &mut slot.control));
        slot.source = None;
        slot.owner = owner;
        slot.blocks = None;
        slot.gso = false;
        slot.bytes = len;
        Some(fill_msghdr(slot, dest, 1, control_len))
    }

    /// DATA blocks `first .. first + count` of `source` in one sendmsg:
    /// with UDP GSO when `count > 1` (every segment but the last is a full
    /// block), else a single datagram.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_data(
        &mut self,
        index: u32,
        dest: SocketAddr,
        owner: Owner,
        source: &Arc<Source>,
        blksize: u16,
        first: u64,
        count: u16,
    ) -> Option<*const libc::msghdr> {
        let slot = self.slots.get_mut(index as usize)?;
        let count_usize = usize::from(count);
        assert!(count >= 1 && count_usize <= GSO_SEGMENTS_MAX);
        let size = source.len();
        let base = source.as_ptr();
        let mut bytes = 0usize;
        for i in 0..count_usize {
            let index = first + i as u64;
            let (offset, len) = block::byte_range(index, blksize, size);
            wire::encode_data_header(&mut slot.headers[i], block::wire(index))?;
            slot.iov[2 * i] = libc::iovec {
                iov_base: slot.headers[i].as_mut_ptr().cast(),
                iov_len: HEADER_BYTES,
            };
            // The kernel reads [base + offset, + len); `byte_range` keeps that
            // inside the source. Userspace never dereferences it.
            slot.iov[2 * i + 1] = libc::iovec {
                iov_base: base.wrapping_add(offset as usize) as *mut libc::c_void,
                iov_len: len,
            };
            bytes += HEADER_BYTES + len;
        }
        let gso = count > 1;
        let control_len = if gso {
            net::write_gso(blksize + HEADER_BYTES as u16, &mut slot.control)
        } else {
            0
        };
        slot.source = Some(Arc::clone(source));
        slot.owner = Some(owner);
        slot.blocks = Some((first, count));
        slot.gso = gso;
        slot.bytes = bytes;
        Some(fill_msghdr(slot, dest, 2 * count_usize, control_len))
    }
}

fn fill_msghdr(
    slot: &mut SendSlot,
    dest: SocketAddr,
    iovs: usize,
    control_len: usize,
) -> *const libc::msghdr {
    let name_len = net::write_sockaddr(dest, &mut slot.name);
    slot.msg.msg_name = (&mut slot.name as *mut libc::sockaddr_storage).cast();
    slot.msg.msg_namelen = name_len;
    slot.msg.msg_iov = slot.iov.as_mut_ptr();
    slot.msg.msg_iovlen = iovs;
    slot.msg.msg_control = if control_len > 0 {
        slot.control.as_mut_ptr().cast()
    } else {
        std::ptr::null_mut()
    };
    slot.msg.msg_controllen = control_len;
    slot.msg.msg_flags = 0;
    &slot.msg
}

/// How many blocks of `blksize` one GSO send may carry.
pub fn gso_segments(blksize: u16) -> usize {
    let segment = usize::from(blksize) + HEADER_BYTES;
    (GSO_BYTES_MAX / segment).clamp(1, GSO_SEGMENTS_MAX)
}
