//! The send pool: a fixed set of `sendmsg` descriptors allocated at start-up.
//! A slot holds everything the kernel reads until its send completes: the
//! msghdr, iovecs, destination, control message, DATA headers and control
//! packet bytes. DATA payloads are not copied: iovecs point into the
//! owner's payload (a file map), which [`super::Uring`] keeps alive until the
//! owner's last completion, so a send needs no reference count of its own.

use std::net::{IpAddr, SocketAddr};

use crate::proto::block;
use crate::proto::wire::{self, HEADER_BYTES};
use crate::sys::net::{self, PKTINFO_CONTROL_BYTES};

/// Segments in one UDP GSO send (the kernel allows up to 128).
pub const GSO_SEGMENTS_MAX: usize = 64;
/// A GSO send carries at most this many bytes (one IP datagram's worth).
pub const GSO_BYTES_MAX: usize = 65_000;
/// Control packets (OACK, ACK, ERROR) are at most this long.
pub const CONTROL_BYTES_MAX: usize = 512;

/// What a finished send carried, copied out of its slot for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendDone {
    /// For a DATA send: the blocks it carried, to resend them without GSO.
    pub blocks: Option<(u64, u16)>,
    pub gso: bool,
    pub datagrams: u16,
    pub bytes: usize,
}

pub(super) struct SendSlot {
    msg: libc::msghdr,
    iov: [libc::iovec; 2 * GSO_SEGMENTS_MAX],
    name: libc::sockaddr_storage,
    control: [u8; PKTINFO_CONTROL_BYTES],
    headers: [[u8; HEADER_BYTES]; GSO_SEGMENTS_MAX],
    payload: [u8; CONTROL_BYTES_MAX],
    pub(super) owner: u32,
    done: SendDone,
    in_use: bool,
}

// SAFETY: the raw pointers in msghdr/iovec point into this slot or into the
// owner's payload; slots never leave the thread that owns the `Uring`.
unsafe impl Send for SendSlot {}

pub(super) struct SendPool {
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
}

impl SendPool {
    pub(super) fn new(count: u32) -> SendPool {
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
                owner: 0,
                done: SendDone {
                    blocks: None,
                    gso: false,
                    datagrams: 0,
                    bytes: 0,
                },
                in_use: false,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        SendPool {
            slots,
            free: (0..count).rev().collect(),
        }
    }

    pub(super) fn available(&self) -> usize {
        self.free.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn take(&mut self) -> Option<u32> {
        let index = self.free.pop()?;
        let slot = &mut self.slots[index as usize];
        debug_assert!(!slot.in_use);
        slot.in_use = true;
        Some(index)
    }

    /// Gives back a slot that was taken but never submitted.
    pub(super) fn untake(&mut self, index: u32) {
        self.release(index);
    }

    /// On the send's completion: the slot is free again; returns what it sent.
    pub(super) fn release(&mut self, index: u32) -> Option<(u32, SendDone)> {
        let slot = self.slots.get_mut(index as usize)?;
        if !slot.in_use {
            debug_assert!(false, "send slot {index} released twice");
            return None;
        }
        slot.in_use = false;
        self.free.push(index);
        Some((slot.owner, slot.done))
    }

    /// A control packet written by `encode` into the slot's buffer. `source`
    /// is set when the socket is wildcard-bound and the reply must leave
    /// from the address the request was sent to.
    pub(super) fn prepare_control(
        &mut self,
        index: u32,
        owner: u32,
        dest: Option<SocketAddr>,
        source: Option<IpAddr>,
        encode: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<*const libc::msghdr> {
        let slot = self.slots.get_mut(index as usize)?;
        let len = encode(&mut slot.payload)?;
        slot.iov[0] = libc::iovec {
            iov_base: slot.payload.as_mut_ptr().cast(),
            iov_len: len.min(CONTROL_BYTES_MAX),
        };
        let control_len = source.map_or(0, |ip| net::write_pktinfo(ip, &mut slot.control));
        slot.owner = owner;
        slot.done = SendDone {
            blocks: None,
            gso: false,
            datagrams: 1,
            bytes: len,
        };
        Some(fill_msghdr(slot, dest, 1, control_len))
    }

    /// DATA blocks `first .. first + count` of the `size_bytes` at `base` in
    /// one sendmsg: UDP GSO when `count > 1` (every segment but the last is a
    /// full block), else a single datagram. `base` is never dereferenced
    /// here; the kernel reads `[base + offset, + len)` for each block, which
    /// `block::byte_range` keeps inside `size_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare_data(
        &mut self,
        index: u32,
        owner: u32,
        dest: Option<SocketAddr>,
        base: *const u8,
        size_bytes: u64,
        blksize: u16,
        first: u64,
        count: u16,
    ) -> Option<*const libc::msghdr> {
        let slot = self.slots.get_mut(index as usize)?;
        let count_usize = usize::from(count);
        if count == 0 || count_usize > GSO_SEGMENTS_MAX {
            debug_assert!(false, "a send of {count} blocks");
            return None;
        }
        let mut bytes = 0usize;
        for i in 0..count_usize {
            let index = first + i as u64;
            let (offset, len) = block::byte_range(index, blksize, size_bytes);
            wire::encode_data_header(&mut slot.headers[i], block::wire(index))?;
            slot.iov[2 * i] = libc::iovec {
                iov_base: slot.headers[i].as_mut_ptr().cast(),
                iov_len: HEADER_BYTES,
            };
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
        slot.owner = owner;
        slot.done = SendDone {
            blocks: Some((first, count)),
            gso,
            datagrams: count,
            bytes,
        };
        Some(fill_msghdr(slot, dest, 2 * count_usize, control_len))
    }
}

fn fill_msghdr(
    slot: &mut SendSlot,
    dest: Option<SocketAddr>,
    iovs: usize,
    control_len: usize,
) -> *const libc::msghdr {
    // A connected socket sends without a name: the kernel then uses the
    // route it cached at connect() instead of looking one up per datagram.
    match dest {
        Some(dest) => {
            let name_len = net::write_sockaddr(dest, &mut slot.name);
            slot.msg.msg_name = (&mut slot.name as *mut libc::sockaddr_storage).cast();
            slot.msg.msg_namelen = name_len;
        }
        None => {
            slot.msg.msg_name = std::ptr::null_mut();
            slot.msg.msg_namelen = 0;
        }
    }
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
