//! The VMDK sparse extent header (VMware "Virtual Disk Format 1.1", `SparseExtentHeader`),
//! little-endian, 512 bytes.
//!
//! ```text
//!   0 u32 magic "KDMV"             48 u64 rgdOffset (sectors)
//!   4 u32 version (1..=3)          56 u64 gdOffset (sectors; all ones: in the footer)
//!   8 u32 flags                    64 u64 overHead (sectors)
//!  12 u64 capacity (sectors)       72 u8  uncleanShutdown
//!  20 u64 grainSize (sectors)      73 u8 '\n'  74 u8 ' '  75 u8 '\r'  76 u8 '\n'
//!  28 u64 descriptorOffset         77 u16 compressAlgorithm (1: deflate)
//!  36 u64 descriptorSize
//!  44 u32 numGTEsPerGT
//! ```

use crate::bytes::{le32, le64};
use crate::error::{Error, ErrorKind, Result};
use crate::model::Format;

/// `KDMV`, read little-endian.
pub(crate) const MAGIC: u32 = 0x564d_444b;
/// gdOffset meaning "the grain directory is described by the footer at the end".
pub(crate) const GD_AT_END: u64 = u64::MAX;
/// Flag: a redundant grain directory exists.
pub(crate) const FLAG_RGD: u32 = 1 << 1;
/// Flag: a grain table entry of 1 means "this grain reads as zeros".
pub(crate) const FLAG_ZEROED_GTE: u32 = 1 << 2;
/// Flag: grains are compressed.
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the file has stream markers.
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;

/// Largest grain: 128 MiB (qemu allows at most 2 MiB grains in practice; larger values only
/// serve to make a reader allocate).
pub(crate) const MAX_GRAIN_SECTORS: u64 = 1 << 18;
/// Largest capacity of one sparse extent: grain tables hold u32 sector numbers, which caps an
/// extent at 2 TiB of file; the virtual side is capped at 64 TiB so that tables stay small.
pub(crate) const MAX_CAPACITY_SECTORS: u64 = 1 << 37;
/// Largest grain directory read into memory.
pub(crate) const MAX_GD_BYTES: u64 = 32 << 20;
/// Largest grain table.
pub(crate) const MAX_GT_ENTRIES: u32 = 1 << 16;
/// Bytes of a sparse header (and of its footer copy).
pub(crate) const HEADER_BYTES: usize = 512;

/// Grain size imgconv writes: 64 KiB (128 sectors), what VMware writes.
pub(super) const GRAIN_SECTORS: u64 = 128;
/// Grain table entries imgconv writes, as VMware writes them.
pub(super) const GT_ENTRIES: u64 = 512;
/// Sectors imgconv reserves for the embedded descriptor (it starts at sector 1).
pub(super) const DESCRIPTOR_SECTORS: u64 = 20;

// The last field (compressAlgorithm, u16 at 77) ends inside the header.
const _: () = assert!(77 + 2 <= HEADER_BYTES);

/// A validated sparse header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SparseHeader {
    /// 1, 2 or 3.
    pub version: u32,
    /// Flag bits.
    pub flags: u32,
    /// Virtual size in sectors.
    pub capacity: u64,
    /// Grain size in sectors (a power of two).
    pub grain_sectors: u64,
    /// Embedded descriptor offset and size, in sectors.
    pub descriptor: (u64, u64),
    /// Entries per grain table.
    pub gt_entries: u32,
    /// Redundant grain directory offset (sectors).
    pub rgd_offset: u64,
    /// Grain directory offset (sectors), or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// 1 for deflate (with [`FLAG_COMPRESSED`]).
    pub compress_algorithm: u16,
}

fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Vmdk, at, msg)
}

impl SparseHeader {
    /// Parse and validate the first 512 bytes of a sparse extent (or its footer copy).
    pub(crate) fn parse(b: &[u8]) -> Result<SparseHeader> {
        if b.len() < 512 {
            return Err(bad(0, "the file ends inside the VMDK sparse header"));
        }
        if le32(b, 0) != MAGIC {
            return Err(bad(0, "not a VMDK sparse extent (bad magic)"));
        }
        let version = le32(b, 4);
        if !(1..=3).contains(&version) {
            return Err(Error::unsupported(format!(
                "VMDK sparse version {version} is not supported (1 to 3 are)"
            ))
            .with_format(Format::Vmdk));
        }
        let h = SparseHeader {
            version,
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_sectors: le64(b, 20),
            descriptor: (le64(b, 28), le64(b, 36)),
            gt_entries: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            compress_algorithm: crate::bytes::le16(b, 77),
        };
        if h.grain_sectors == 0
            || !h.grain_sectors.is_power_of_two()
            || h.grain_sectors > MAX_GRAIN_SECTORS
        {
            return Err(bad(
                20,
                format!(
                    "grain size {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                    h.grain_sectors
                ),
            ));
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "capacity {} sectors exceeds the limit of {MAX_CAPACITY_SECTORS}",
                    h.capacity
                ),
            )
            .with_format(Format::Vmdk)
            .with_offset(12));
        }
        if h.gt_entries == 0 || h.gt_entries > MAX_GT_ENTRIES {
            return Err(bad(
                44,
                format!("{} entries per grain table is out of range", h.gt_entries),
            ));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.compress_algorithm != 1 {
            return Err(Error::unsupported(format!(
                "VMDK compression algorithm {} is not supported (deflate is)",
                h.compress_algorithm
            ))
            .with_format(Format::Vmdk));
        }
        // qemu and VirtualBox decide by the algorithm field alone whether grains are
        // compressed, the specification by the flag: when the two disagree, either reading is
        // a guess.
        if h.flags & FLAG_COMPRESSED == 0 && h.compress_algorithm != 0 {
            return Err(bad(
                77,
                format!(
                    "compression algorithm {} without the compressed-grains flag",
                    h.compress_algorithm
                ),
            ));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.flags & FLAG_MARKERS == 0 {
            return Err(Error::unsupported(
                "VMDK compressed grains without grain markers are not supported",
            )
            .with_format(Format::Vmdk));
        }
        if h.gd_entries() * 4 > MAX_GD_BYTES {
            return Err(
                Error::new(ErrorKind::LimitExceeded, "the grain directory is too large")
                    .with_format(Format::Vmdk),
            );
        }
        Ok(h)
    }

    /// A header as imgconv writes it: 64 KiB grains, 512-entry grain tables, the descriptor
    /// at sector 1 for [`DESCRIPTOR_SECTORS`], no overhead or compression yet.
    pub(super) fn written(version: u32, flags: u32, capacity: u64, rgd: u64, gd: u64) -> Self {
        SparseHeader {
            version,
            flags,
            capacity,
            grain_sectors: GRAIN_SECTORS,
            descriptor: (1, DESCRIPTOR_SECTORS),
            gt_entries: GT_ENTRIES as u32,
            rgd_offset: rgd,
            gd_offset: gd,
            overhead: 0,
            compress_algorithm: 0,
        }
    }

    /// With `overhead` sectors of metadata before the first grain.
    pub(super) fn with_overhead(mut self, overhead: u64) -> Self {
        self.overhead = overhead;
        self
    }

    /// With compression algorithm `algorithm` (1: deflate).
    pub(super) fn with_compression(mut self, algorithm: u16) -> Self {
        self.compress_algorithm = algorithm;
        self
    }

    /// The 512 bytes, with the line-ending check characters VMware writes.
    pub(crate) fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_sectors.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor.0.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor.1.to_le_bytes());
        b[44..48].copy_from_slice(&self.gt_entries.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Grain size in bytes.
    pub(crate) fn grain_bytes(&self) -> u64 {
        self.grain_sectors * 512
    }

    /// Grain directory entries needed for the capacity.
    pub(crate) fn gd_entries(&self) -> u64 {
        self.capacity
            .div_ceil(self.grain_sectors)
            .div_ceil(u64::from(self.gt_entries))
    }

    /// Whether grains are compressed.
    pub(crate) fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// monolithicSparse, version 1: 16 MiB, 64 KiB grains (128 sectors), 512 GTEs per GT,
    /// GD at sector 21.
    fn header() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(b"KDMV"); //                     magic
        b[4..8].copy_from_slice(&1u32.to_le_bytes()); //          version
        b[8..12].copy_from_slice(&3u32.to_le_bytes()); //         flags: newline test, RGD
        b[12..20].copy_from_slice(&32768u64.to_le_bytes()); //    capacity (sectors)
        b[20..28].copy_from_slice(&128u64.to_le_bytes()); //      grainSize (sectors)
        b[44..48].copy_from_slice(&512u32.to_le_bytes()); //      numGTEsPerGT
        b[56..64].copy_from_slice(&21u64.to_le_bytes()); //       gdOffset
        b[73..77].copy_from_slice(b"\n \r\n"); //                  line-ending check
        b
    }

    #[test]
    fn a_written_header_reads_back_as_encoded() -> Result<()> {
        let h = SparseHeader::written(3, 1 | FLAG_COMPRESSED | FLAG_MARKERS, 32768, 0, 21)
            .with_overhead(128)
            .with_compression(1);
        let b = h.encode();
        assert_eq!(&b[73..77], b"\n \r\n");
        assert_eq!(SparseHeader::parse(&b)?, h);
        Ok(())
    }

    #[test]
    fn a_valid_header_parses() -> Result<()> {
        let h = SparseHeader::parse(&header())?;
        assert_eq!(
            (h.capacity, h.grain_bytes(), h.gd_entries()),
            (32768, 65536, 1)
        );
        Ok(())
    }

    #[test]
    fn grain_sizes_that_are_zero_or_not_powers_of_two_are_refused() {
        for g in [0u64, 3, 1025, 3456, 1 << 19] {
            let mut b = header();
            b[20..28].copy_from_slice(&g.to_le_bytes());
            assert!(SparseHeader::parse(&b).is_err(), "grain {g}");
        }
    }

    #[test]
    fn bad_magic_version_and_huge_capacity_are_refused() {
        let mut b = header();
        b[0] = b'X';
        assert_eq!(
            SparseHeader::parse(&b).err().map(|e| e.kind()),
            Some(ErrorKind::InvalidImage)
        );
        let mut b = header();
        b[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(
            SparseHeader::parse(&b).err().map(|e| e.kind()),
            Some(ErrorKind::Unsupported)
        );
        let mut b = header();
        b[12..20].copy_from_slice(&(1u64 << 48).to_le_bytes());
        assert_eq!(
            SparseHeader::parse(&b).err().map(|e| e.kind()),
            Some(ErrorKind::LimitExceeded)
        );
        assert!(SparseHeader::parse(&header()[..100]).is_err());
    }
}
