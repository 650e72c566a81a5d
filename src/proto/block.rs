//! Block arithmetic. The wire carries a 16-bit block number that wraps
//! 65535 → 0; inside, every block has a 64-bit index (block 1 = index 1).

/// The wire number of a 64-bit block index.
pub fn wire(index: u64) -> u16 {
    (index & 0xffff) as u16
}

/// The 64-bit index with wire number `wire` closest to `near`: correct as long
/// as the true index is less than 32768 blocks from `near`. A sender unwraps
/// ACKs against the highest block it sent (an ACK is never for a later
/// block, and never for one more than a window earlier), and windows are at
/// most [`super::options::WINDOWSIZE_MAX`] = 32768 blocks.
pub fn unwrap(wire: u16, near: u64) -> u64 {
    let candidate = (near & !0xffff) | u64::from(wire);
    let distance = |c: u64| c.abs_diff(near);
    let mut best = candidate;
    if let Some(lower) = candidate.checked_sub(0x1_0000)
        && distance(lower) < distance(best)
    {
        best = lower;
    }
    if let Some(upper) = candidate.checked_add(0x1_0000)
        && distance(upper) < distance(best)
    {
        best = upper;
    }
    best
}

/// The last block index of a file: a short (possibly empty) block always ends
/// the transfer, so a size that is a multiple of `blksize` gets an empty one.
pub fn last_index(size_bytes: u64, blksize: u16) -> u64 {
    debug_assert!(blksize > 0);
    size_bytes / u64::from(blksize.max(1)) + 1
}

/// The byte range of block `index` (1-based) in a file of `size_bytes`.
pub fn byte_range(index: u64, blksize: u16, size_bytes: u64) -> (u64, usize) {
    debug_assert!(index >= 1);
    let start = index
        .saturating_sub(1)
        .saturating_mul(u64::from(blksize))
        .min(size_bytes);
    let len = (size_bytes - start).min(u64::from(blksize));
    (start, len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_65536() {
        assert_eq!(wire(65535), 65535);
        assert_eq!(wire(65536), 0);
        assert_eq!(wire(65537), 1);
    }

    #[test]
    fn unwrap_picks_the_nearest_index() {
        assert_eq!(unwrap(5, 3), 5);
        assert_eq!(unwrap(0, 65535), 65536);
        assert_eq!(unwrap(65535, 65536), 65535);
        assert_eq!(unwrap(3, 65534), 65539);
        assert_eq!(unwrap(65535, 0), 65535); // no negative indices
        assert_eq!(unwrap(0, 0), 0);
        assert_eq!(unwrap(7, 10 * 65536 + 65530), 11 * 65536 + 7);
    }

    #[test]
    fn last_block_and_ranges() {
        assert_eq!(last_index(0, 512), 1);
        assert_eq!(last_index(511, 512), 1);
        assert_eq!(last_index(512, 512), 2);
        assert_eq!(last_index(513, 512), 2);
        assert_eq!(byte_range(1, 512, 513), (0, 512));
        assert_eq!(byte_range(2, 512, 513), (512, 1));
        assert_eq!(byte_range(2, 512, 512), (512, 0));
        assert_eq!(byte_range(1, 512, 0), (0, 0));
        // Past 32 MiB at 512-byte blocks the index passes 65535.
        let size = 40u64 << 20;
        assert_eq!(byte_range(70_000, 512, size), (69_999 * 512, 512));
    }
}
