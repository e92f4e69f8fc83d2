//! VHD, as Microsoft's Virtual Hard Disk Image Format Specification (2006) defines it; all
//! fields are big-endian.
//!
//! ```text
//! Footer (512 bytes; at the end of every VHD, and copied at 0 in a dynamic one)
//!   0 "conectix"           24 u32 timestamp (s since 2000-01-01 UTC)   48 u64 current size
//!   8 u32 features (2)     28 creator application (4 chars)             56 u16 cylinders, u8 heads,
//!  12 u32 version 1.0      32 u32 creator version                          u8 sectors per track
//!  16 u64 data offset      36 creator host OS ("Wi2k")                  60 u32 disk type
//!     (fixed: all ones;    40 u64 original size                         64 u32 checksum
//!      dynamic: header)                                                 68 uuid, 84 saved state
//!
//! Dynamic header (1024 bytes, at the footer's data offset)
//!   0 "cxsparse"   8 u64 next offset (all ones)   16 u64 BAT offset   24 u32 version 1.0
//!  28 u32 BAT entries   32 u32 block size   36 u32 checksum   40 parent uuid
//!  56 u32 parent timestamp   64 parent name (UTF-16BE, 512 bytes)   576 8 parent locators
//!
//! BAT: one u32 per block, the sector where the block starts, all ones when unallocated.
//! Block: a sector bitmap (one bit per sector, most significant bit first, padded to whole
//! sectors), then the block's data.
//! ```
//!
//! Checksums are the one's complement of the byte sum of the structure with the checksum
//! field taken as zero.
//!
//! Size: the footer's current size is the disk's size; the CHS geometry rounds it down. qemu
//! takes the geometry's size instead for the creators `vpc ` and `qemu` (Virtual PC and old
//! qemu), unless the geometry is the largest one; the reader follows qemu there, so that such
//! images read as qemu reads them, and takes the current size for every other creator. The
//! writer's creator is `qem2`, the one qemu documents as "uses current size", so that every
//! reader (qemu, libvhdi, VirtualBox, Hyper-V) sees the exact size.
//!
//! Reader: fixed and dynamic disks, any power-of-two block size from 512 bytes, sector bitmaps
//! honoured (a clear bit reads as zeros). Differencing disks are refused with their parent
//! named (imgconv never opens a file an image names). Both checksums are verified; the BAT and
//! every allocated block must lie inside the file, before the footer.
//!
//! Writer: `subformat=dynamic` (default; `block_size`, 2 MiB by default) or `fixed`, and
//! `azure=on` (fixed, size rounded up to a whole MiB). Sizes are kept exactly (rounded up to a
//! whole sector only). Limits: 2040 GiB for dynamic disks, as in the specification.

mod dynamic_header;
mod reader;
mod writer;

pub(crate) use reader::{describe, VhdReader};
pub(crate) use writer::{BlockEncoder, BlockPiece, VhdDynamicWriter, VhdFixedWriter, VhdOptions};

use crate::bytes::{be32, be64};

/// The footer's cookie.
pub(crate) const COOKIE: &[u8; 8] = b"conectix";
/// The dynamic header's cookie.
pub(crate) const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// Size of the footer.
pub(crate) const FOOTER_SIZE: u64 = 512;
// The footer's last field (saved state) is byte 84; the rest up to 512 is reserved.
const _: () = assert!(84 < FOOTER_SIZE);
/// Size of the dynamic header.
pub(crate) const DYNAMIC_HEADER_SIZE: u64 = 1024;
/// Version 1.0, of both the footer and the dynamic header.
pub(crate) const VERSION: u32 = 0x0001_0000;
/// A BAT entry for a block that is not allocated.
pub(crate) const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// The block size of dynamic disks unless told otherwise.
pub(crate) const DEFAULT_BLOCK_SIZE: u64 = 2 << 20;
/// Largest dynamic disk: 0xFF000000 sectors (2040 GiB), the specification's limit.
pub(crate) const MAX_DYNAMIC_SIZE: u64 = 0xFF00_0000 * 512;
/// The largest geometry (65535 cylinders, 16 heads, 255 sectors per track).
pub(crate) const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// The creator application written: qemu reads the current size for it.
pub(crate) const CREATOR: &[u8; 4] = b"qem2";
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC.
const EPOCH_2000: u64 = 946_684_800;

/// Disk types of the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskType {
    /// Data, then the footer.
    Fixed,
    /// Blocks allocated on demand, found through the BAT.
    Dynamic,
    /// A dynamic disk holding only the sectors that differ from a parent.
    Differencing,
}

impl DiskType {
    /// The footer's number for this type.
    pub(crate) fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    fn from_code(code: u32) -> Option<DiskType> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// The lower-case name `info` shows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// Cylinders, heads and sectors per track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

impl Geometry {
    /// The specification's algorithm (Appendix: CHS calculation) for a disk of `size` bytes.
    /// It rounds down: the geometry may describe fewer sectors than the disk has.
    pub(crate) fn for_size(size: u64) -> Geometry {
        let total = (size / 512).min(MAX_CHS_SECTORS);
        let (sectors, heads, cyl_heads) = if total >= 65535 * 16 * 63 {
            (255u64, 16u64, total / 255)
        } else {
            let mut spt = 17u64;
            let mut cyl_heads = total / spt;
            let mut heads = cyl_heads.div_ceil(1024).max(4);
            if cyl_heads >= heads * 1024 || heads > 16 {
                spt = 31;
                heads = 16;
                cyl_heads = total / spt;
            }
            if cyl_heads >= heads * 1024 {
                spt = 63;
                heads = 16;
                cyl_heads = total / spt;
            }
            (spt, heads, cyl_heads)
        };
        Geometry {
            cylinders: (cyl_heads / heads).min(65535) as u16,
            heads: heads as u8,
            sectors: sectors as u8,
        }
    }

    /// Sectors the geometry describes.
    pub(crate) fn total_sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// One's complement of the byte sum of `bytes`, with the 4 bytes at `field` taken as zero.
pub(crate) fn checksum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

/// The footer, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    /// Format version.
    pub version: u32,
    /// Offset of the dynamic header (all ones for a fixed disk).
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// The creator application, four characters.
    pub creator: [u8; 4],
    /// Its version (major in the high 16 bits).
    pub creator_version: u32,
    /// The creator's host OS, four characters.
    pub creator_os: [u8; 4],
    /// Size at creation.
    pub original_size: u64,
    /// Size now.
    pub current_size: u64,
    /// Geometry.
    pub geometry: Geometry,
    /// The disk type code (2, 3, 4 are defined).
    pub disk_type: u32,
    /// Stored checksum.
    pub checksum: u32,
    /// Unique id.
    pub uuid: [u8; 16],
}

impl Footer {
    /// Decode 512 bytes that start with the cookie. The checksum is not checked here.
    pub(crate) fn parse(b: &[u8]) -> Footer {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[68..84]);
        Footer {
            version: be32(b, 12),
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator: [b[28], b[29], b[30], b[31]],
            creator_version: be32(b, 32),
            creator_os: [b[36], b[37], b[38], b[39]],
            original_size: be64(b, 40),
            current_size: be64(b, 48),
            geometry: Geometry {
                cylinders: crate::bytes::be16(b, 56),
                heads: b[58],
                sectors: b[59],
            },
            disk_type: be32(b, 60),
            checksum: be32(b, 64),
            uuid,
        }
    }

    /// The 512 bytes, checksum computed.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; FOOTER_SIZE as usize];
        b[..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&2u32.to_be_bytes());
        b[12..16].copy_from_slice(&self.version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[58] = self.geometry.heads;
        b[59] = self.geometry.sectors;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[68..84].copy_from_slice(&self.uuid);
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The disk type, if it is one the specification defines.
    pub(crate) fn kind(&self) -> Option<DiskType> {
        DiskType::from_code(self.disk_type)
    }

    /// Whether qemu sizes this disk by its geometry (creators `vpc ` and `qemu`, geometry
    /// below the largest), which is the size this reader uses for them too.
    pub(crate) fn sized_by_geometry(&self) -> bool {
        (&self.creator == b"vpc " || &self.creator == b"qemu")
            && self.geometry.total_sectors() != MAX_CHS_SECTORS
    }

    /// The virtual disk's size in bytes: whole sectors, as qemu counts them.
    pub(crate) fn disk_size(&self) -> u64 {
        if self.sized_by_geometry() {
            self.geometry.total_sectors() * 512
        } else {
            self.current_size / 512 * 512
        }
    }

    /// The facts `imgconv info` shows.
    pub(crate) fn details(&self) -> Vec<(String, String)> {
        let text = |b: &[u8; 4]| {
            String::from_utf8_lossy(b)
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        let g = self.geometry;
        vec![
            (
                "subformat".into(),
                self.kind()
                    .map(DiskType::name)
                    .unwrap_or("unknown")
                    .to_string(),
            ),
            (
                "creator".into(),
                format!(
                    "{} {}.{} ({})",
                    text(&self.creator),
                    self.creator_version >> 16,
                    self.creator_version & 0xffff,
                    text(&self.creator_os)
                ),
            ),
            (
                "geometry".into(),
                format!(
                    "{}/{}/{} ({} bytes)",
                    g.cylinders,
                    g.heads,
                    g.sectors,
                    g.total_sectors() * 512
                ),
            ),
            ("current size".into(), self.current_size.to_string()),
            ("original size".into(), self.original_size.to_string()),
            (
                "size from".into(),
                if self.sized_by_geometry() {
                    "geometry (as qemu reads this creator's images)"
                } else {
                    "current size"
                }
                .into(),
            ),
            ("created".into(), timestamp_text(self.timestamp)),
            ("uuid".into(), uuid::Uuid::from_bytes(self.uuid).to_string()),
        ]
    }
}

/// Now, in seconds since 2000-01-01 UTC (0 before it, saturated after 2136).
pub(crate) fn timestamp_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    timestamp_at(unix)
}

/// `unix` (seconds since 1970) as a VHD timestamp: seconds since 2000-01-01 UTC (0 before
/// it, saturated after 2136).
pub(crate) fn timestamp_at(unix: u64) -> u32 {
    u32::try_from(unix.saturating_sub(EPOCH_2000)).unwrap_or(u32::MAX)
}

/// `YYYY-MM-DD hh:mm:ss UTC` for a VHD timestamp.
pub(crate) fn timestamp_text(ts: u32) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(i64::from(ts) + EPOCH_2000 as i64)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ts.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::convert::{convert, ConvertOptions, Destination};
    use crate::model::{Extent, Format};
    use crate::open::open_source;
    use crate::progress::{CancelToken, NoProgress};
    use crate::reader::Reader;
    use crate::sink::VecSink;
    use crate::source::MemSource;

    /// A 64 KiB dynamic VHD with 4 KiB blocks made by the writer: `abc` at 0, `xyz` at the end.
    pub(crate) fn small_dynamic_vhd() -> Vec<u8> {
        let mut disk = vec![0u8; 64 << 10];
        disk[..3].copy_from_slice(b"abc");
        disk[(64 << 10) - 3..].copy_from_slice(b"xyz");
        let reader = open_source(Box::new(MemSource::new(disk)), Some(Format::Raw));
        let reader = reader.expect("raw");
        let sink = VecSink::new();
        let mut opts = ConvertOptions::new(Format::Vhd);
        opts.writer_options.set("block_size", "4K");
        let done = convert(
            &*reader,
            Destination::Sink(Box::new(sink.clone())),
            &opts,
            &NoProgress,
            &CancelToken::new(),
        );
        assert!(done.is_ok(), "{done:?}");
        sink.contents()
    }

    #[test]
    fn a_clear_bitmap_bit_reads_as_zeros() -> crate::Result<()> {
        let mut img = small_dynamic_vhd();
        let block0 = crate::bytes::be32(&img, 1536) as usize * 512;
        // Sector 0 of block 0: "never written", though its data holds "abc".
        img[block0] = 0x7f;
        let r = VhdReader::open(Box::new(MemSource::new(img)))?;
        let mut buf = vec![1u8; 1024];
        r.read_at(0, &mut buf)?;
        assert!(buf.iter().all(|&b| b == 0));
        let m = r.map(0, 64 << 10)?;
        assert_eq!((m.extent, m.len), (Extent::Unallocated, 512));
        let m = r.map(512, 64 << 10)?;
        assert_eq!((m.extent, m.len), (Extent::Data, 4096 - 512));
        let m = r.map(4096, 64 << 10)?;
        assert_eq!((m.extent, m.len), (Extent::Unallocated, 56 << 10));
        let mut tail = [0u8; 3];
        r.read_at((64 << 10) - 3, &mut tail)?;
        assert_eq!(&tail, b"xyz");
        Ok(())
    }

    #[test]
    fn geometry_follows_the_specification() {
        // Values qemu-img and Windows write for these sizes.
        assert_eq!(
            Geometry::for_size(4 << 20),
            Geometry {
                cylinders: 120,
                heads: 4,
                sectors: 17
            }
        );
        assert_eq!(Geometry::for_size(3 << 20).total_sectors(), 6120);
        assert_eq!(Geometry::for_size(1 << 40).total_sectors(), MAX_CHS_SECTORS);
        let g = Geometry::for_size(10 << 30);
        assert_eq!((g.heads, g.sectors), (16, 63));
        assert!(g.total_sectors() * 512 <= 10 << 30);
    }

    #[test]
    fn a_footer_round_trips_with_a_valid_checksum() {
        let f = Footer {
            version: VERSION,
            data_offset: 512,
            timestamp: 1,
            creator: *CREATOR,
            creator_version: 0x0001_0002,
            creator_os: *b"Wi2k",
            original_size: 3 << 20,
            current_size: 3 << 20,
            geometry: Geometry::for_size(3 << 20),
            disk_type: 3,
            checksum: 0,
            uuid: [7; 16],
        };
        let b = f.encode();
        let back = Footer::parse(&b);
        assert_eq!(back.checksum, checksum(&b, 64));
        assert_eq!(
            Footer {
                checksum: 0,
                ..back
            },
            f
        );
        assert_eq!(f.disk_size(), 3 << 20);
        assert!(Footer {
            creator: *b"vpc ",
            ..f.clone()
        }
        .sized_by_geometry());
    }

    #[test]
    fn timestamps_print_as_utc_dates() {
        assert_eq!(timestamp_text(0), "2000-01-01 00:00:00 UTC");
        assert_eq!(timestamp_text(848_665_043), "2026-11-22 12:17:23 UTC");
    }
}
