//! A provided-buffer ring (IORING_REGISTER_PBUF_RING): equal-sized receive
//! buffers that multishot receives draw from.
//!
//! Ownership: a buffer is the kernel's from the moment it is published in
//! the ring until a completion names it, and ours from then until
//! [`BufRing::recycle`] gives it back. A bitset records which side holds each
//! buffer, so a buffer can never be handed to the kernel twice (two
//! datagrams in one buffer) or read after it went back.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// A buffer id that broke the ownership rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferMisuse {
    /// The id is outside the ring.
    OutOfRange(u16),
    /// A completion named a buffer the kernel did not hold.
    NotKernels(u16),
    /// A recycle of a buffer the kernel already holds.
    AlreadyKernels(u16),
}

pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    count: u16,
    tail: u16,
    group: u16,
    buffer_bytes: usize,
    data: Box<[u8]>,
    /// Bit `bid` set: the kernel holds buffer `bid`.
    kernel_owned: Box<[u64]>,
    registered: bool,
}

// SAFETY: the ring memory is owned by this struct and only touched by the
// thread that owns the `Uring` (and by the kernel).
unsafe impl Send for BufRing {}

impl BufRing {
    /// Allocates `count` buffers of `buffer_bytes` and registers them with
    /// `ring` as buffer group `group`; every buffer starts out the kernel's.
    pub fn new(ring: &IoUring, group: u16, count: u16, buffer_bytes: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || buffer_bytes == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a non-zero size layout.
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let mut br = BufRing {
            entries,
            entries_layout,
            count,
            tail: 0,
            group,
            buffer_bytes,
            data: vec![0u8; usize::from(count) * buffer_bytes].into_boxed_slice(),
            kernel_owned: vec![0u64; usize::from(count).div_ceil(64)].into_boxed_slice(),
            registered: false,
        };
        // SAFETY: page-aligned ring memory of `count` entries that stays
        // allocated until after `unregister` (or, if that fails, forever:
        // see `Drop`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)?;
        }
        br.registered = true;
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Buffers the kernel holds now (for tests and assertions).
    pub fn kernel_held(&self) -> u32 {
        self.kernel_owned.iter().map(|w| w.count_ones()).sum()
    }

    fn bit(bid: u16) -> (usize, u64) {
        (usize::from(bid) / 64, 1u64 << (bid % 64))
    }

    /// A completion handed us buffer `bid`: it is ours until recycled.
    pub fn take(&mut self, bid: u16) -> Result<(), BufferMisuse> {
        if bid >= self.count {
            return Err(BufferMisuse::OutOfRange(bid));
        }
        let (word, mask) = Self::bit(bid);
        let w = &mut self.kernel_owned[word];
        if *w & mask == 0 {
            debug_assert!(
                false,
                "completion names buffer {bid} that the kernel did not hold"
            );
            return Err(BufferMisuse::NotKernels(bid));
        }
        *w &= !mask;
        Ok(())
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them;
    /// `None` unless the buffer is ours (between [`BufRing::take`] and
    /// [`BufRing::recycle`]): the kernel may be writing a buffer it holds.
    pub fn bytes(&self, bid: u16, len: usize) -> Option<&[u8]> {
        let (word, mask) = Self::bit(bid);
        if bid >= self.count || self.kernel_owned[word] & mask != 0 {
            return None;
        }
        let start = usize::from(bid).checked_mul(self.buffer_bytes)?;
        self.data
            .get(start..start.checked_add(len.min(self.buffer_bytes))?)
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) -> Result<(), BufferMisuse> {
        if bid >= self.count {
            return Err(BufferMisuse::OutOfRange(bid));
        }
        let (word, mask) = Self::bit(bid);
        if self.kernel_owned[word] & mask != 0 {
            debug_assert!(false, "buffer {bid} recycled twice");
            return Err(BufferMisuse::AlreadyKernels(bid));
        }
        self.push(bid);
        self.publish();
        Ok(())
    }

    fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let index = usize::from(self.tail & (self.count - 1));
        let offset = usize::from(bid) * self.buffer_bytes;
        // Derived from the data pointer, so the kernel writes within `data`.
        let addr = self.data.as_mut_ptr().wrapping_add(offset) as u64;
        // SAFETY: index < count, inside the entries allocation, which only
        // this thread writes (the kernel only reads entries).
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        let (word, mask) = Self::bit(bid);
        self.kernel_owned[word] |= mask;
    }

    fn publish(&self) {
        // SAFETY: the ring's tail field overlays the first entry; the
        // kernel reads it with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Takes the ring back from the kernel. Only call once no receive that
    /// draws from this group is in flight (`Uring`'s teardown ensures it).
    pub fn unregister(&mut self, ring: &IoUring) -> io::Result<()> {
        if self.registered {
            ring.submitter().unregister_buf_ring(self.group)?;
            self.registered = false;
        }
        Ok(())
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            // The kernel may still read the entries and write the buffers:
            // leaking both is the only safe choice. `Uring` unregisters
            // first, so this only happens if that failed.
            let data = std::mem::take(&mut self.data);
            std::mem::forget(data);
            return;
        }
        // SAFETY: allocated in `new` with this layout, and the kernel no
        // longer knows the ring (unregistered above).
        unsafe { dealloc(self.entries.cast(), self.entries_layout) };
    }
}
