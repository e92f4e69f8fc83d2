//! The dynamic disk header (1024 bytes, big-endian, cookie `cxsparse`): decoded, validated and
//! encoded here, and nowhere else.
//!
//! ```text
//!   0 cookie "cxsparse"      8 u64 data offset (unused, all ones)   16 u64 BAT offset
//!  24 u32 version 1.0       28 u32 BAT entries                     32 u32 block size
//!  36 u32 checksum          40 parent UUID                          56 u32 parent timestamp
//!  64 parent name (UTF-16BE, 512 bytes)                            576 8 parent locators of 24
//! ```

use crate::bytes::{be16s, be32, be64};
use crate::error::{Error, Result};
use crate::model::Format;
use crate::source::Source;

use super::reader::bad;
use super::{checksum, DYNAMIC_COOKIE, DYNAMIC_HEADER_SIZE, VERSION};

/// Largest parent locator read to name a differencing disk's parent.
const MAX_LOCATOR: u64 = 64 << 10;

/// Where the checksum field is.
const CHECKSUM_AT: usize = 36;

/// A parent locator in use: platform code, data length, data offset.
pub(super) type Locator = ([u8; 4], u32, u64);

/// The dynamic header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DynamicHeader {
    /// Offset of the block allocation table.
    pub(super) table_offset: u64,
    /// The format version (1.0).
    pub(super) version: u32,
    /// Entries in the table.
    pub(super) entries: u32,
    /// Bytes per block.
    pub(super) block_size: u64,
    /// The parent's UUID (differencing disks).
    pub(super) parent_uuid: [u8; 16],
    /// The parent's name (differencing disks).
    pub(super) parent_name: String,
    /// The parent locators in use.
    pub(super) locators: Vec<Locator>,
}

const _: () = assert!(DYNAMIC_HEADER_SIZE == 576 + 8 * 24 + 256);

impl DynamicHeader {
    /// A header of version 1.0 with no parent.
    pub(super) fn new(table_offset: u64, entries: u32, block_size: u64) -> DynamicHeader {
        DynamicHeader {
            table_offset,
            version: VERSION,
            entries,
            block_size,
            parent_uuid: [0; 16],
            parent_name: String::new(),
            locators: vec![],
        }
    }

    /// Decode and validate the header read at `at` (cookie, checksum, version).
    pub(super) fn parse(h: &[u8], at: u64) -> Result<DynamicHeader> {
        if h.get(..8) != Some(&DYNAMIC_COOKIE[..]) || h.len() < DYNAMIC_HEADER_SIZE as usize {
            return Err(bad(
                at,
                "no dynamic header (cookie 'cxsparse') where the footer says",
            ));
        }
        let stored = be32(h, CHECKSUM_AT);
        let computed = checksum(h, CHECKSUM_AT);
        if stored != computed {
            return Err(bad(
                at + CHECKSUM_AT as u64,
                format!(
                    "dynamic header checksum {stored:#010x} does not match its contents \
                     ({computed:#010x})"
                ),
            ));
        }
        let version = be32(h, 24);
        if version >> 16 != 1 {
            return Err(Error::unsupported(format!(
                "VHD dynamic header version {}.{} is not supported (1.0 is)",
                version >> 16,
                version & 0xffff
            ))
            .with_format(Format::Vhd));
        }
        let mut parent_uuid = [0u8; 16];
        parent_uuid.copy_from_slice(&h[40..56]);
        let name: Vec<u16> = be16s(&h[64..576]).take_while(|&c| c != 0).collect();
        let locators = (0..8)
            .map(|i| &h[576 + 24 * i..600 + 24 * i])
            .filter(|e| e[..4] != [0; 4])
            .map(|e| ([e[0], e[1], e[2], e[3]], be32(e, 8), be64(e, 16)))
            .collect();
        Ok(DynamicHeader {
            table_offset: be64(h, 16),
            version,
            entries: be32(h, 28),
            block_size: u64::from(be32(h, 32)),
            parent_uuid,
            parent_name: String::from_utf16_lossy(&name),
            locators,
        })
    }

    /// The 1024 bytes, checksum computed. Parent fields are written only for what a
    /// dynamic (not differencing) disk has: none.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; DYNAMIC_HEADER_SIZE as usize];
        h[..8].copy_from_slice(DYNAMIC_COOKIE);
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        h[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        h[24..28].copy_from_slice(&self.version.to_be_bytes());
        h[28..32].copy_from_slice(&self.entries.to_be_bytes());
        h[32..36].copy_from_slice(&(self.block_size as u32).to_be_bytes());
        h[40..56].copy_from_slice(&self.parent_uuid);
        for (i, unit) in self.parent_name.encode_utf16().take(256).enumerate() {
            h[64 + 2 * i..66 + 2 * i].copy_from_slice(&unit.to_be_bytes());
        }
        for (i, (code, len, off)) in self.locators.iter().take(8).enumerate() {
            let e = &mut h[576 + 24 * i..600 + 24 * i];
            e[..4].copy_from_slice(code);
            e[8..12].copy_from_slice(&len.to_be_bytes());
            e[16..24].copy_from_slice(&off.to_be_bytes());
        }
        let sum = checksum(&h, CHECKSUM_AT);
        h[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
        h
    }

    /// The parent's relative path from a `W2ru` locator (UTF-16LE), if it has one that lies
    /// inside the file.
    pub(super) fn relative_parent(&self, src: &dyn Source) -> Option<String> {
        let &(_, len, off) = self.locators.iter().find(|l| &l.0 == b"W2ru")?;
        let len = u64::from(len);
        if len == 0 || len > MAX_LOCATOR || off.checked_add(len)? > src.len() {
            return None;
        }
        let mut raw = vec![0u8; len as usize];
        src.read_exact_at(off, &mut raw).ok()?;
        let units: Vec<u16> = crate::bytes::le16s(&raw).take_while(|&c| c != 0).collect();
        Some(String::from_utf16_lossy(&units))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_encoded_and_a_changed_byte_is_refused() {
        let mut h = DynamicHeader::new(1536, 10, 2 << 20);
        h.parent_uuid = [9; 16];
        h.parent_name = "parent.vhd".into();
        h.locators = vec![(*b"W2ru", 20, 4096)];
        let bytes = h.encode();
        assert_eq!(DynamicHeader::parse(&bytes, 512).ok(), Some(h));
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(DynamicHeader::parse(&bad, 512).is_err());
        assert!(DynamicHeader::parse(&bytes[..100], 512).is_err());
    }
}
