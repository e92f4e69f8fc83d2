//! VDI, as VirtualBox's `VDICore.h` defines it (little-endian).
//!
//! ```text
//! 0x000 char[64] "<<< Oracle VM VirtualBox Disk Image >>>\n"
//! 0x040 u32 signature 0xBEDA107F        0x158 u32 offset of the data
//! 0x044 u32 version 0x00010001          0x15c u32 x3 legacy geometry (C, H, S), u32 sector size
//! 0x048 u32 header size 0x190           0x170 u64 disk size
//! 0x04c u32 type (1 dynamic, 2 fixed)   0x178 u32 block size (1 MiB)   0x17c u32 block extra
//! 0x050 u32 flags                       0x180 u32 blocks               0x184 u32 allocated
//! 0x054 char[256] description           0x188 uuid create, 0x198 modify, 0x1a8 link, 0x1b8 parent
//! 0x154 u32 offset of the block map     0x1c8 u32 x3 LCHS geometry, u32 sector size
//! ```
//!
//! Block map: one u32 per block: 0xFFFFFFFF free, 0xFFFFFFFE zero, else the block's index in
//! the data area.
//!
//! Reader: dynamic and fixed images of version 1.1 with 1 MiB blocks (what qemu accepts too);
//! differencing and undo images (non-null parent or link UUID) are refused. The map is checked
//! at open: indexes below the allocated count, no two entries sharing a block, data inside the
//! file. Writer: `-o subformat=dynamic` (default) or `fixed` (`static=on` as qemu spells it),
//! block map and data aligned to 1 MiB as VirtualBox aligns them, fresh non-null UUIDs, zero
//! blocks unallocated, layout planned and written in file order.
//!
//! Limits: 16 TiB (a 64 MiB block map).

mod header;
mod reader;
mod writer;

pub(crate) use reader::VdiReader;
pub(crate) use writer::{VdiOptions, VdiWriter};

/// The header text VirtualBox writes.
pub(crate) const TEXT: &[u8] = b"<<< Oracle VM VirtualBox Disk Image >>>\n";
/// The signature at 0x40.
pub(crate) const SIGNATURE: u32 = 0xBEDA_107F;
/// Version 1.1.
pub(crate) const VERSION: u32 = 0x0001_0001;
/// Size of the version 1.1 header after the pre-header.
pub(crate) const HEADER_SIZE: u32 = 0x190;
/// The only block size VirtualBox and qemu use.
pub(crate) const BLOCK_SIZE: u64 = 1 << 20;
/// Block map entry: not allocated.
pub(crate) const FREE: u32 = 0xFFFF_FFFF;
/// Block map entry: reads as zeros.
pub(crate) const ZERO: u32 = 0xFFFF_FFFE;
/// Largest block map: 64 MiB, 16 Mi blocks, 16 TiB of disk.
pub(crate) const MAX_BLOCKS: u64 = 1 << 24;
/// VirtualBox aligns the block map and the data to 1 MiB.
pub(crate) const ALIGN: u64 = 1 << 20;
