//! QCOW2 refcounts as stored: the refcount table and its blocks, read on demand (`check`, and
//! `map`'s detection of metadata-only preallocation).

use crate::error::{Error, Result};
use crate::model::Format;
use crate::source::Source;

use super::header::Header;
use super::reader::OFFSET_MASK;

/// The largest refcount table read (qemu's own limit is 8 MiB).
pub(crate) const MAX_REFTABLE_BYTES: u64 = 32 << 20;

/// The refcount of entry `i` of a refcount block of `1 << order`-bit entries (sub-byte entries
/// are packed from the least significant bit, wider ones are big-endian).
pub(crate) fn entry(block: &[u8], i: u64, order: u32) -> u64 {
    let i = i as usize;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block.get(i / per_byte).copied().unwrap_or(0);
            u64::from(byte >> (bits * (i % per_byte))) & ((1u64 << bits) - 1)
        }
        _ => {
            let bytes = 1usize << (order - 3);
            block
                .get(i * bytes..(i + 1) * bytes)
                .map_or(0, |b| b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
        }
    }
}

/// The refcount table of an image, and the last refcount block read.
pub(crate) struct Refcounts {
    /// Offsets of the refcount blocks (0: none).
    pub(crate) table: Vec<u64>,
    cs: u64,
    order: u32,
    file_len: u64,
    block: Option<(u64, Vec<u8>)>,
}

impl Refcounts {
    /// Read the refcount table `h` names from `src`.
    pub(crate) fn load(src: &dyn Source, h: &Header) -> Result<Refcounts> {
        let cs = h.cluster_size();
        let bytes = u64::from(h.refcount_table_clusters) * cs;
        let file_len = src.len();
        if bytes > MAX_REFTABLE_BYTES
            || h.refcount_table_offset % cs != 0
            || h.refcount_table_offset
                .checked_add(bytes)
                .is_none_or(|e| e > file_len)
        {
            return Err(Error::invalid_image(
                Format::Qcow2,
                48,
                format!(
                    "the refcount table ({bytes} bytes at {:#x}) is misaligned, too large or \
                     outside the file",
                    h.refcount_table_offset
                ),
            ));
        }
        let mut raw = vec![0u8; bytes as usize];
        src.read_exact_at(h.refcount_table_offset, &mut raw)?;
        Ok(Refcounts {
            table: crate::bytes::be64s(&raw).map(|e| e & OFFSET_MASK).collect(),
            cs,
            order: h.refcount_order,
            file_len,
            block: None,
        })
    }

    /// Refcount entries per block.
    pub(crate) fn per_block(&self) -> u64 {
        (self.cs * 8) >> self.order
    }

    /// Whether a refcount block offset is usable: aligned and inside the file.
    pub(crate) fn block_ok(&self, offset: u64) -> bool {
        offset % self.cs == 0
            && offset
                .checked_add(self.cs)
                .is_some_and(|e| e <= self.file_len)
    }

    /// The stored refcount of host cluster `cluster`: 0 when no block covers it; `None` when
    /// the block covering it is misplaced (misaligned or outside the file).
    pub(crate) fn get(&mut self, src: &dyn Source, cluster: u64) -> Result<Option<u64>> {
        let per = self.per_block();
        let Some(&off) = self.table.get((cluster / per) as usize) else {
            return Ok(Some(0));
        };
        if off == 0 {
            return Ok(Some(0));
        }
        if !self.block_ok(off) {
            return Ok(None);
        }
        if self.block.as_ref().is_none_or(|(o, _)| *o != off) {
            let mut b = vec![0u8; self.cs as usize];
            src.read_exact_at(off, &mut b)?;
            self.block = Some((off, b));
        }
        let block = self.block.as_ref().map_or(&[][..], |(_, b)| b.as_slice());
        Ok(Some(entry(block, cluster % per, self.order)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width() {
        let block = [0b1011_0100u8, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde];
        assert_eq!(entry(&block, 2, 0), 1);
        assert_eq!(entry(&block, 0, 0), 0);
        assert_eq!(entry(&block, 1, 1), 0b01);
        assert_eq!(entry(&block, 3, 1), 0b10);
        assert_eq!(entry(&block, 1, 2), 0b1011);
        assert_eq!(entry(&block, 1, 3), 0x12);
        assert_eq!(entry(&block, 1, 4), 0x3456);
        assert_eq!(entry(&block, 1, 5), 0x789a_bcde);
        assert_eq!(entry(&block, 0, 6), 0xb412_3456_789a_bcde);
        assert_eq!(entry(&block, 9, 6), 0);
    }
}
