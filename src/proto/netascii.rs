//! netascii (RFC 764 via RFC 1350): on the wire a line ends in CR LF and a
//! bare CR is CR NUL. We store files with Unix line ends.

/// Host → wire: LF → CR LF, CR → CR NUL. Whole-buffer, because a sender must
/// be able to re-create any block of the window for a retransmit; the caller
/// bounds the input size.
pub fn encode(host: &[u8], out: &mut Vec<u8>) {
    out.reserve(host.len() + host.len() / 16);
    for &b in host {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(b),
        }
    }
}

/// The size `encode` will produce, without producing it.
pub fn encoded_len(host: &[u8]) -> u64 {
    host.len() as u64 + host.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64
}

/// Wire → host, block by block: a CR that ends one block pairs with the first
/// byte of the next, so the decoder carries that state across blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decoder {
    pending_cr: bool,
}

impl Decoder {
    /// Decodes `wire` into `out` (cleared first). `out` must hold
    /// `wire.len() + 1` bytes (a CR held from the last block may be flushed).
    pub fn decode(&mut self, wire: &[u8], out: &mut Vec<u8>) {
        out.clear();
        for &b in wire {
            if self.pending_cr {
                self.pending_cr = false;
                match b {
                    b'\n' => out.push(b'\n'),
                    b'\0' => out.push(b'\r'),
                    // Not valid netascii; keep both bytes rather than lose data.
                    b'\r' => {
                        out.push(b'\r');
                        self.pending_cr = true;
                    }
                    other => {
                        out.push(b'\r');
                        out.push(other);
                    }
                }
            } else if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    /// At the end of the transfer: a dangling CR is kept as a CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.clear();
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_blocks(wire: &[u8], blksize: usize) -> Vec<u8> {
        let mut d = Decoder::default();
        let mut host = Vec::new();
        let mut out = Vec::new();
        for chunk in wire.chunks(blksize) {
            d.decode(chunk, &mut out);
            host.extend_from_slice(&out);
        }
        d.finish(&mut out);
        host.extend_from_slice(&out);
        host
    }

    #[test]
    fn rfc_vectors() {
        let mut out = Vec::new();
        encode(b"a\nb\rc", &mut out);
        assert_eq!(out, b"a\r\nb\r\0c");
        assert_eq!(encoded_len(b"a\nb\rc"), 7);
        assert_eq!(decode_in_blocks(b"a\r\nb\r\0c", 512), b"a\nb\rc");
    }

    #[test]
    fn cr_split_across_block_boundary() {
        // "x\r" | "\ny" and "x\r" | "\0y"
        assert_eq!(decode_in_blocks(b"x\r\ny", 2), b"x\ny");
        assert_eq!(decode_in_blocks(b"x\r\0y", 2), b"x\ry");
        assert_eq!(decode_in_blocks(b"\r\n\r\n", 1), b"\n\n");
    }

    #[test]
    fn round_trip_every_split() {
        let host: Vec<u8> = (0..600u32)
            .map(|i| [b'a', b'\n', b'\r', 0][(i * 7 % 11 % 4) as usize])
            .collect();
        let mut wire = Vec::new();
        encode(&host, &mut wire);
        assert_eq!(wire.len() as u64, encoded_len(&host));
        for blksize in [1, 2, 3, 8, 511, 512] {
            assert_eq!(decode_in_blocks(&wire, blksize), host, "blksize {blksize}");
        }
    }
}
