//! Property tests (proptest) for the arithmetic the transfers rest on:
//! netascii conversion, block-number unwrapping, and how blocks tile a file.
//! Every failure prints a minimal counterexample; proptest also keeps it in
//! `proptest-regressions/` so the next run tries it first.

use proptest::collection::vec;
use proptest::prelude::*;

use uftpd::proto::block;
use uftpd::proto::netascii::{self, Decoder};
use uftpd::proto::wire::{BLKSIZE_MAX, BLKSIZE_MIN};

/// Host text heavy in the bytes netascii cares about.
fn host_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => Just(b'\n'),
        3 => Just(b'\r'),
        2 => Just(0u8),
        2 => Just(b'a'),
        1 => any::<u8>(),
    ];
    vec(byte, 0..1024)
}

/// Decodes `wire` block by block, the blocks cut at `cuts` (sizes, cycled;
/// 0 means an empty block), then finishes.
fn decode_in_blocks(wire: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut decoder = Decoder::default();
    let mut host = Vec::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    let mut empty_in_a_row = 0;
    while at < wire.len() {
        let mut n = cuts[i % cuts.len()].min(wire.len() - at);
        // A whole cycle of empty blocks would never end (cuts all 0, about
        // one run in thirty): then a 1-byte block, so the loop is bounded.
        if n == 0 && empty_in_a_row >= cuts.len() {
            n = 1;
        }
        empty_in_a_row = if n == 0 { empty_in_a_row + 1 } else { 0 };
        i += 1;
        let block = &wire[at..at + n];
        at += n;
        decoder.decode(block, &mut out);
        assert!(out.len() <= block.len() + 1, "decode grew past len + 1");
        host.extend_from_slice(&out);
    }
    decoder.finish(&mut out);
    host.extend_from_slice(&out);
    host
}

proptest! {
    #[test]
    fn netascii_encode_then_decode_in_any_blocks_is_the_identity(
        host in host_bytes(),
        cuts in vec(0usize..600, 1..16),
    ) {
        let mut wire = Vec::new();
        netascii::encode(&host, &mut wire);
        prop_assert_eq!(decode_in_blocks(&wire, &cuts), host);
    }

    #[test]
    fn netascii_encoded_len_is_the_encoded_length(host in host_bytes()) {
        let mut wire = Vec::new();
        netascii::encode(&host, &mut wire);
        prop_assert_eq!(netascii::encoded_len(&host), wire.len() as u64);
        // And the wire form has no bare CR or LF.
        for (i, &b) in wire.iter().enumerate() {
            if b == b'\r' {
                prop_assert!(matches!(wire.get(i + 1), Some(b'\n' | 0)));
            }
            if b == b'\n' {
                prop_assert!(i > 0 && wire[i - 1] == b'\r');
            }
        }
    }

    #[test]
    fn unwrap_of_wire_is_the_index_within_32767_blocks(
        index in prop_oneof![
            any::<u64>(),
            0u64..200_000,
            // Around the wrap points, where a window straddles two cycles.
            (0u64..1 << 40).prop_map(|k| k << 16),
            Just(u64::MAX),
        ],
        distance in 0u64..32_768,
        below in any::<bool>(),
    ) {
        let near = if below {
            index.checked_sub(distance)
        } else {
            index.checked_add(distance)
        };
        prop_assume!(near.is_some());
        let near = near.unwrap();
        prop_assert_eq!(block::unwrap(block::wire(index), near), index, "near {}", near);
    }

    #[test]
    fn blocks_tile_a_file_exactly_once(
        blksize in prop_oneof![
            Just(BLKSIZE_MIN),
            Just(BLKSIZE_MAX),
            Just(512u16),
            BLKSIZE_MIN..=BLKSIZE_MAX,
        ],
        blocks in 0u64..2000,
        rem in any::<u16>(),
        multiple in any::<bool>(),
    ) {
        let rem = if multiple { 0 } else { u64::from(rem) % u64::from(blksize) };
        let size = blocks * u64::from(blksize) + rem;
        check_tiling(size, blksize)?;
    }

    #[test]
    fn blocks_tile_a_huge_file_at_its_edges(
        blksize in BLKSIZE_MIN..=BLKSIZE_MAX,
        size in prop_oneof![any::<u64>(), 0u64..1 << 40],
        probe in any::<u64>(),
    ) {
        // Too many blocks to walk: check the last ones, the first ones and
        // one in the middle, against the formula for a whole block.
        let blk = u64::from(blksize);
        let last = block::last_index(size, blksize);
        prop_assert_eq!(last, size / blk + 1);
        for index in [1, 2, last.saturating_sub(1).max(1), last, 1 + probe % last] {
            let (start, len) = block::byte_range(index, blksize, size);
            if index < last {
                prop_assert_eq!((start, len as u64), ((index - 1) * blk, blk));
            } else {
                prop_assert_eq!(start, (last - 1) * blk);
                prop_assert_eq!(start + len as u64, size);
                prop_assert!((len as u64) < blk);
            }
        }
    }
}

/// Walks every block of a `size`-byte file: contiguous from 0, all full
/// but the last, the last short (empty when `blksize` divides `size`), and
/// their lengths add up to `size`.
fn check_tiling(size: u64, blksize: u16) -> Result<(), TestCaseError> {
    let blk = u64::from(blksize);
    let last = block::last_index(size, blksize);
    let mut next = 0u64;
    for index in 1..=last {
        let (start, len) = block::byte_range(index, blksize, size);
        let len = len as u64;
        prop_assert_eq!(
            start,
            next,
            "block {} does not start where {} ended",
            index,
            index - 1
        );
        if index < last {
            prop_assert_eq!(len, blk, "block {} of {} is short", index, last);
        } else {
            prop_assert!(len < blk, "the last block is full");
            prop_assert_eq!(len == 0, size.is_multiple_of(blk));
        }
        next = start + len;
    }
    prop_assert_eq!(next, size);
    Ok(())
}
