//! All-zero detection at memory speed.
//!
//! The scan ORs 64-byte blocks into one word per lane, which LLVM turns into wide vector ORs
//! (SSE2 on any x86-64, AVX2/AVX-512 where the build targets it), and stops at the first
//! non-zero block. Data blocks in real images differ from zero within their first bytes, so the
//! early exit makes "is this data?" nearly free; only genuinely zero blocks are scanned whole.

/// Bytes examined per step: one cache line.
const STEP: usize = 64;

/// Whether every byte of `buf` is zero.
#[inline]
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    // Real data usually differs from zero within its first few bytes: test them first.
    let head = buf.len().min(16);
    if buf[..head].iter().any(|&b| b != 0) {
        return false;
    }
    let mut blocks = buf.chunks_exact(STEP);
    for block in &mut blocks {
        if !block_is_zero(block) {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[inline(always)]
fn block_is_zero(block: &[u8]) -> bool {
    let mut acc = [0u64; STEP / 8];
    for (lane, word) in acc.iter_mut().zip(block.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        *lane |= u64::from_ne_bytes(w);
    }
    acc.iter().fold(0, |a, &b| a | b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_buffer_is_zero() {
        assert!(is_zero(&[]));
    }

    #[test]
    fn one_nonzero_byte_anywhere_is_found() {
        for len in [1usize, 15, 16, 17, 63, 64, 65, 127, 128, 4095, 4096, 4097] {
            assert!(is_zero(&vec![0u8; len]), "zeros of length {len}");
            for pos in [0, len / 2, len - 1] {
                let mut v = vec![0u8; len];
                v[pos] = 0x80;
                assert!(!is_zero(&v), "length {len}, non-zero at {pos}");
            }
        }
    }
}
