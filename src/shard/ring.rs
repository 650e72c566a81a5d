//! io_uring plumbing of one shard: the provided-buffer rings that multishot
//! receives draw from, and the `user_data` tags that route completions.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// A ring of equal-sized receive buffers handed to the kernel
/// (IORING_REGISTER_PBUF_RING). A buffer is the kernel's until its completion
/// arrives and ours until we give it back with [`BufferRing::recycle`].
pub struct BufferRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    count: u16,
    tail: u16,
    group: u16,
    buffer_bytes: usize,
    data: Box<[u8]>,
}

// SAFETY: the ring memory is owned by this struct and only touched by the
// shard thread that owns it (and the kernel).
unsafe impl Send for BufferRing {}

impl BufferRing {
    pub fn new(
        ring: &IoUring,
        group: u16,
        count: u16,
        buffer_bytes: usize,
    ) -> io::Result<BufferRing> {
        assert!(count.is_power_of_two() && count <= 32768);
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: non-zero size layout.
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let data = vec![0u8; usize::from(count) * buffer_bytes].into_boxed_slice();
        let mut br = BufferRing {
            entries,
            entries_layout,
            count,
            tail: 0,
            group,
            buffer_bytes,
            data,
        };
        // SAFETY: page-aligned ring memory that outlives the registration
        // (unregistered in Drop only after the ring that uses it is gone).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)?;
        }
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn buffer(&self, bid: u16, len: usize) -> Option<&[u8]> {
        let start = usize::from(bid).checked_mul(self.buffer_bytes)?;
        self.data
            .get(start..start.checked_add(len.min(self.buffer_bytes))?)
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
            self.publish();
        }
    }

    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.data.as_ptr() as u64 + (usize::from(bid) * self.buffer_bytes) as u64;
        // SAFETY: index < count, within the allocation.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry; the kernel reads
        // it with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The io_uring that
        // registered it is dropped first (field order in Shard).
        unsafe { dealloc(self.entries.cast(), self.entries_layout) };
    }
}

/// What a completion belongs to, packed into `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    ServiceRecv {
        socket: u32,
    },
    /// `large`: the receive draws from the large-buffer group.
    TransferRecv {
        slot: u32,
        generation: u32,
        large: bool,
    },
    Send {
        send_slot: u32,
    },
    /// An fsync of an upload's commit (file, then directory).
    Commit {
        slot: u32,
        generation: u32,
    },
    Cancel,
    /// The shutdown eventfd became readable.
    Wake,
}

const KIND_SHIFT: u32 = 56;
const LARGE_BIT: u64 = 1 << 55;
const SLOT_MASK: u64 = 0x007f_ffff;

impl Tag {
    pub fn encode(self) -> u64 {
        match self {
            Tag::ServiceRecv { socket } => (1 << KIND_SHIFT) | u64::from(socket),
            Tag::TransferRecv {
                slot,
                generation,
                large,
            } => {
                debug_assert!(u64::from(slot) <= SLOT_MASK);
                (2 << KIND_SHIFT)
                    | if large { LARGE_BIT } else { 0 }
                    | ((u64::from(slot) & SLOT_MASK) << 32)
                    | u64::from(generation)
            }
            Tag::Send { send_slot } => (3 << KIND_SHIFT) | u64::from(send_slot),
            Tag::Cancel => 4 << KIND_SHIFT,
            Tag::Wake => 5 << KIND_SHIFT,
            Tag::Commit { slot, generation } => {
                (6 << KIND_SHIFT) | ((u64::from(slot) & SLOT_MASK) << 32) | u64::from(generation)
            }
        }
    }

    pub fn decode(raw: u64) -> Option<Tag> {
        let low = (raw & 0xffff_ffff) as u32;
        match raw >> KIND_SHIFT {
            1 => Some(Tag::ServiceRecv { socket: low }),
            2 => Some(Tag::TransferRecv {
                slot: ((raw >> 32) & SLOT_MASK) as u32,
                generation: low,
                large: raw & LARGE_BIT != 0,
            }),
            3 => Some(Tag::Send { send_slot: low }),
            4 => Some(Tag::Cancel),
            5 => Some(Tag::Wake),
            6 => Some(Tag::Commit {
                slot: ((raw >> 32) & SLOT_MASK) as u32,
                generation: low,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for tag in [
            Tag::ServiceRecv { socket: 3 },
            Tag::TransferRecv {
                slot: 0x7f_ffff,
                generation: u32::MAX,
                large: true,
            },
            Tag::TransferRecv {
                slot: 1,
                generation: 0,
                large: false,
            },
            Tag::Send { send_slot: 1023 },
            Tag::Cancel,
            Tag::Wake,
            Tag::Commit {
                slot: 0x7f_ffff,
                generation: 7,
            },
        ] {
            assert_eq!(Tag::decode(tag.encode()), Some(tag));
        }
        assert_eq!(Tag::decode(0), None);
    }
}
