//! The VDI header (pre-header and version 1.1 header, 0x200 bytes on disk): parsed and encoded
//! here, and nowhere else. Validation is the reader's.

use crate::bytes::{le32, le64};

use super::{HEADER_SIZE, SIGNATURE, TEXT, VERSION};

/// Bytes the header occupies at the start of the file (the rest up to the block map is zero).
pub(crate) const HEADER_BYTES: usize = 0x200;

/// Cylinders, heads, sectors and sector size, as VDI stores a geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Geometry {
    /// Cylinders.
    pub cylinders: u32,
    /// Heads.
    pub heads: u32,
    /// Sectors per track.
    pub sectors: u32,
    /// Bytes per sector.
    pub sector_size: u32,
}

impl Geometry {
    fn parse(h: &[u8], at: usize) -> Geometry {
        Geometry {
            cylinders: le32(h, at),
            heads: le32(h, at + 4),
            sectors: le32(h, at + 8),
            sector_size: le32(h, at + 12),
        }
    }

    fn encode(&self, h: &mut [u8], at: usize) {
        put32(h, at, self.cylinders);
        put32(h, at + 4, self.heads);
        put32(h, at + 8, self.sectors);
        put32(h, at + 12, self.sector_size);
    }
}

/// The header's fields (offsets as in `VDICore.h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// 0x040: [`SIGNATURE`].
    pub signature: u32,
    /// 0x044: [`VERSION`] (major in the high half).
    pub version: u32,
    /// 0x048: size of the header after the pre-header (0x190; qemu-img writes 0x180).
    pub header_size: u32,
    /// 0x04c: 1 dynamic, 2 fixed, 3 undo, 4 differencing.
    pub image_type: u32,
    /// 0x050: flags.
    pub flags: u32,
    /// 0x154: offset of the block map.
    pub block_map_offset: u32,
    /// 0x158: offset of the data area.
    pub data_offset: u32,
    /// 0x15c: the legacy geometry.
    pub legacy_geometry: Geometry,
    /// 0x170: the disk's size in bytes.
    pub disk_size: u64,
    /// 0x178: bytes per block.
    pub block_size: u32,
    /// 0x17c: extra bytes before each block's data.
    pub block_extra: u32,
    /// 0x180: blocks in the disk.
    pub blocks: u32,
    /// 0x184: blocks allocated in the data area.
    pub allocated: u32,
    /// 0x188: the image's UUID.
    pub uuid_create: [u8; 16],
    /// 0x198: the UUID of its last modification.
    pub uuid_modify: [u8; 16],
    /// 0x1a8: the UUID of the previous image (undo images).
    pub uuid_link: [u8; 16],
    /// 0x1b8: the parent's UUID (differencing images).
    pub uuid_parent: [u8; 16],
    /// 0x1c8: the logical (LCHS) geometry.
    pub lchs_geometry: Geometry,
}

fn put32(h: &mut [u8], at: usize, v: u32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn uuid_at(h: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Some(s) = h.get(at..at + 16) {
        u.copy_from_slice(s);
    }
    u
}

impl Header {
    /// A version 1.1 header with VirtualBox's text, signature and header size; the rest from
    /// the arguments and zeros.
    pub(crate) fn new(image_type: u32, disk_size: u64, block_size: u32) -> Header {
        Header {
            signature: SIGNATURE,
            version: VERSION,
            header_size: HEADER_SIZE,
            image_type,
            flags: 0,
            block_map_offset: 0,
            data_offset: 0,
            legacy_geometry: Geometry::default(),
            disk_size,
            block_size,
            block_extra: 0,
            blocks: 0,
            allocated: 0,
            uuid_create: [0; 16],
            uuid_modify: [0; 16],
            uuid_link: [0; 16],
            uuid_parent: [0; 16],
            lchs_geometry: Geometry::default(),
        }
    }

    /// Decode the first [`HEADER_BYTES`] of a file (fields beyond a shorter buffer read as 0).
    pub(crate) fn parse(h: &[u8]) -> Header {
        Header {
            signature: le32(h, 0x40),
            version: le32(h, 0x44),
            header_size: le32(h, 0x48),
            image_type: le32(h, 0x4c),
            flags: le32(h, 0x50),
            block_map_offset: le32(h, 0x154),
            data_offset: le32(h, 0x158),
            legacy_geometry: Geometry::parse(h, 0x15c),
            disk_size: le64(h, 0x170),
            block_size: le32(h, 0x178),
            block_extra: le32(h, 0x17c),
            blocks: le32(h, 0x180),
            allocated: le32(h, 0x184),
            uuid_create: uuid_at(h, 0x188),
            uuid_modify: uuid_at(h, 0x198),
            uuid_link: uuid_at(h, 0x1a8),
            uuid_parent: uuid_at(h, 0x1b8),
            lchs_geometry: Geometry::parse(h, 0x1c8),
        }
    }

    /// The [`HEADER_BYTES`] bytes, VirtualBox's text first, the description empty.
    pub(crate) fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..TEXT.len()].copy_from_slice(TEXT);
        put32(&mut h, 0x40, self.signature);
        put32(&mut h, 0x44, self.version);
        put32(&mut h, 0x48, self.header_size);
        put32(&mut h, 0x4c, self.image_type);
        put32(&mut h, 0x50, self.flags);
        put32(&mut h, 0x154, self.block_map_offset);
        put32(&mut h, 0x158, self.data_offset);
        self.legacy_geometry.encode(&mut h, 0x15c);
        h[0x170..0x178].copy_from_slice(&self.disk_size.to_le_bytes());
        put32(&mut h, 0x178, self.block_size);
        put32(&mut h, 0x17c, self.block_extra);
        put32(&mut h, 0x180, self.blocks);
        put32(&mut h, 0x184, self.allocated);
        h[0x188..0x198].copy_from_slice(&self.uuid_create);
        h[0x198..0x1a8].copy_from_slice(&self.uuid_modify);
        h[0x1a8..0x1b8].copy_from_slice(&self.uuid_link);
        h[0x1b8..0x1c8].copy_from_slice(&self.uuid_parent);
        self.lchs_geometry.encode(&mut h, 0x1c8);
        h
    }
}

// The last field (the LCHS geometry) ends inside the encoded header.
const _: () = assert!(0x1c8 + 16 <= HEADER_BYTES);
const _: () = assert!(HEADER_SIZE as usize + 0x40 <= HEADER_BYTES);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_encoded() {
        let mut h = Header::new(1, 5 << 20, 1 << 20);
        h.block_map_offset = 1 << 20;
        h.data_offset = 2 << 20;
        h.blocks = 5;
        h.allocated = 3;
        h.uuid_create = [1; 16];
        h.uuid_modify = [2; 16];
        h.legacy_geometry = Geometry {
            cylinders: 10,
            heads: 16,
            sectors: 63,
            sector_size: 512,
        };
        h.lchs_geometry = h.legacy_geometry;
        let bytes = h.encode();
        assert_eq!(&bytes[..TEXT.len()], TEXT);
        assert_eq!(Header::parse(&bytes), h);
    }
}
