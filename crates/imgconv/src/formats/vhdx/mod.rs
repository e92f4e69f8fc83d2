//! VHDX, as Microsoft's "VHDX Format Specification" (MS-VHDX) defines it.
//!
//! Reader: fixed and dynamic disks, block sizes 1 MiB to 256 MiB, 512 and 4096-byte logical
//! sectors. Both headers and both region tables are checked with their CRC-32C and the valid
//! copy with the higher sequence number is used; the metadata region's required items are
//! read and checked; every BAT entry of a stored block is checked to lie inside the file.
//! Refused with a clear error: differencing disks (naming the parent, which is never opened),
//! images whose log must be replayed (not closed cleanly: open them once in Hyper-V, or run
//! `qemu-img check -r all`, which replays it), unknown required regions or metadata items.
//!
//! Writer: fixed and dynamic disks (`subformat`), `block_size` 1M to 256M (32M by default),
//! `logical_sector_size` and `physical_sector_size` 512 or 4096 (512 and 4096 by default), in
//! one pass in file order (see `writer.rs`).
//!
//! Layout: file identifier at 0, headers at 64 and 128 KiB, region tables at 192 and 256 KiB,
//! then (anywhere, 1 MiB aligned) the log, the metadata region, the BAT and the payload blocks.

mod reader;
mod writer;

pub(crate) use reader::VhdxReader;
pub(crate) use writer::{VhdxOptions, VhdxWriter};

/// The file identifier's signature, at offset 0.
pub(crate) const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";

/// A GUID as MS-VHDX stores it (the first three fields little-endian).
pub(crate) const fn ms_guid(v: u128) -> [u8; 16] {
    let b = v.to_be_bytes();
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

/// Region: the block allocation table.
pub(crate) const REGION_BAT: [u8; 16] = ms_guid(0x2DC27766_F623_4200_9D64_115E9BFD4A08);
/// Region: the metadata.
pub(crate) const REGION_METADATA: [u8; 16] = ms_guid(0x8B7CA206_4790_4B9A_B8FE_575F050F886E);
/// Metadata: block size and flags.
pub(crate) const META_FILE_PARAMETERS: [u8; 16] = ms_guid(0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B);
/// Metadata: the virtual disk's size.
pub(crate) const META_DISK_SIZE: [u8; 16] = ms_guid(0x2FA54224_CD1B_4876_B211_5DBED83BF4B8);
/// Metadata: the SCSI page 83 id.
pub(crate) const META_PAGE83: [u8; 16] = ms_guid(0xBECA12AB_B2E6_4523_93EF_C309E000C746);
/// Metadata: the logical sector size.
pub(crate) const META_LOGICAL_SECTOR: [u8; 16] = ms_guid(0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F);
/// Metadata: the physical sector size.
pub(crate) const META_PHYSICAL_SECTOR: [u8; 16] = ms_guid(0xCDA348C7_445D_4471_9CC9_E9885251C556);
/// Metadata: the parent locator (differencing disks).
pub(crate) const META_PARENT_LOCATOR: [u8; 16] = ms_guid(0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C);

/// BAT entry states.
pub(crate) const PAYLOAD_NOT_PRESENT: u64 = 0;
pub(crate) const PAYLOAD_UNDEFINED: u64 = 1;
pub(crate) const PAYLOAD_ZERO: u64 = 2;
pub(crate) const PAYLOAD_UNMAPPED: u64 = 3;
pub(crate) const PAYLOAD_FULLY_PRESENT: u64 = 6;
pub(crate) const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;

/// 1 MiB: the alignment of regions and blocks.
pub(crate) const MIB: u64 = 1 << 20;
/// The largest virtual disk the specification allows (64 TiB).
pub(crate) const MAX_DISK_SIZE: u64 = 64 << 40;
