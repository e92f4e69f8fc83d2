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

use bitvec::vec::BitVec;

use crate::buffer::Bytes;
use crate::bytes::{le32, le64};
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::WriterOptions;
use crate::ids::{random_uuid, uuid_text, UuidLayout};
use crate::model::{Extent, Format, ImageInfo, Mapping};
use crate::planner::Plan;
use crate::reader::{check_range, Reader};
use crate::sink::Output;
use crate::source::Source;
use crate::writer::{write_unit_runs, Chunk, Encoder, Writer, WriterSummary};

/// The header text VirtualBox writes.
pub const TEXT: &[u8] = b"<<< Oracle VM VirtualBox Disk Image >>>\n";
/// The signature at 0x40.
pub const SIGNATURE: u32 = 0xBEDA_107F;
/// Version 1.1.
pub const VERSION: u32 = 0x0001_0001;
/// Size of the version 1.1 header after the pre-header.
pub const HEADER_SIZE: u32 = 0x190;
/// The only block size VirtualBox and qemu use.
pub const BLOCK_SIZE: u64 = 1 << 20;
/// Block map entry: not allocated.
pub const FREE: u32 = 0xFFFF_FFFF;
/// Block map entry: reads as zeros.
pub const ZERO: u32 = 0xFFFF_FFFE;
/// Largest block map: 64 MiB, 16 Mi blocks, 16 TiB of disk.
pub const MAX_BLOCKS: u64 = 1 << 24;
/// VirtualBox aligns the block map and the data to 1 MiB.
const ALIGN: u64 = 1 << 20;

fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Vdi, at, msg)
}

fn uuid_at(h: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&h[at..at + 16]);
    u
}

/// A VDI image opened for reading.
pub struct VdiReader {
    src: Box<dyn Source>,
    size: u64,
    data_offset: u64,
    map: Vec<u32>,
    image_type: u32,
    allocated: u32,
    uuids: (String, String),
}

impl VdiReader {
    /// Open and validate `src` (header and the whole block map).
    pub fn open(src: Box<dyn Source>) -> Result<VdiReader> {
        let len = src.len();
        if len < 0x200 {
            return Err(bad(len, "the file ends inside the VDI header"));
        }
        let mut h = vec![0u8; 0x200];
        src.read_exact_at(0, &mut h)?;
        if le32(&h, 0x40) != SIGNATURE {
            return Err(bad(0x40, "not a VDI image (bad signature)"));
        }
        let version = le32(&h, 0x44);
        if version != VERSION {
            return Err(Error::unsupported(format!(
                "VDI version {}.{} is not supported (1.1 is)",
                version >> 16,
                version & 0xffff
            ))
            .with_format(Format::Vdi));
        }
        // 0x190 with the LCHS geometry (VirtualBox), 0x180 without it (qemu-img).
        if ![0x180, HEADER_SIZE].contains(&le32(&h, 0x48)) {
            return Err(bad(
                0x48,
                format!(
                    "header size {:#x} is neither 0x180 nor 0x190",
                    le32(&h, 0x48)
                ),
            ));
        }
        let image_type = le32(&h, 0x4c);
        if h[0x1a8..0x1c8].iter().any(|&b| b != 0) {
            return Err(Error::unsupported(format!(
                "differencing VDI images are not supported (parent {})",
                uuid_text(&uuid_at(&h, 0x1b8))
            ))
            .with_format(Format::Vdi));
        }
        if !(1..=2).contains(&image_type) {
            return Err(Error::unsupported(format!(
                "VDI image type {image_type} is not supported (dynamic and fixed are)"
            ))
            .with_format(Format::Vdi));
        }
        let block_size = u64::from(le32(&h, 0x178));
        if block_size != BLOCK_SIZE {
            return Err(bad(0x178, format!("block size {block_size} is not 1 MiB")));
        }
        if le32(&h, 0x17c) != 0 {
            return Err(
                Error::unsupported("VDI blocks with extra data are not supported")
                    .with_format(Format::Vdi),
            );
        }
        let size = le64(&h, 0x170);
        let blocks = u64::from(le32(&h, 0x180));
        let allocated = le32(&h, 0x184);
        if blocks > MAX_BLOCKS {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("{blocks} blocks exceed the limit of {MAX_BLOCKS}"),
            )
            .with_format(Format::Vdi));
        }
        if blocks * BLOCK_SIZE < size {
            return Err(bad(
                0x180,
                format!("{blocks} blocks do not cover the {size}-byte disk"),
            ));
        }
        if u64::from(allocated) > blocks {
            return Err(bad(
                0x184,
                format!("{allocated} allocated blocks but only {blocks} blocks"),
            ));
        }
        let bmap = u64::from(le32(&h, 0x154));
        let data_offset = u64::from(le32(&h, 0x158));
        if bmap < 0x200 || bmap + blocks * 4 > len || bmap + blocks * 4 > data_offset {
            return Err(bad(
                0x154,
                "the block map lies outside the file or overlaps the data",
            ));
        }
        if data_offset + u64::from(allocated) * BLOCK_SIZE > len {
            return Err(bad(
                0x158,
                "the file ends before its allocated blocks (truncated)",
            ));
        }
        let mut raw = vec![0u8; (blocks * 4) as usize];
        src.read_exact_at(bmap, &mut raw)?;
        let map: Vec<u32> = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        let mut seen = BitVec::<usize>::repeat(false, allocated as usize);
        for (i, &e) in map.iter().enumerate() {
            if e == FREE || e == ZERO {
                continue;
            }
            if e >= allocated {
                return Err(bad(
                    bmap + i as u64 * 4,
                    format!("block {i} points at data block {e}, past the {allocated} allocated"),
                ));
            }
            if seen.replace(e as usize, true) {
                return Err(bad(
                    bmap + i as u64 * 4,
                    format!("two blocks share data block {e}"),
                ));
            }
        }
        Ok(VdiReader {
            src,
            size,
            data_offset,
            map,
            image_type,
            allocated,
            uuids: (
                uuid_text(&uuid_at(&h, 0x188)),
                uuid_text(&uuid_at(&h, 0x198)),
            ),
        })
    }

    fn entry(&self, pos: u64) -> u32 {
        self.map
            .get((pos / BLOCK_SIZE) as usize)
            .copied()
            .unwrap_or(FREE)
    }
}

impl Reader for VdiReader {
    fn format(&self) -> Format {
        Format::Vdi
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(Format::Vdi, self.size, offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((BLOCK_SIZE - pos % BLOCK_SIZE) as usize).min(buf.len() - done);
            match self.entry(pos) {
                FREE | ZERO => buf[done..done + n].fill(0),
                e => {
                    let at = self.data_offset + u64::from(e) * BLOCK_SIZE + pos % BLOCK_SIZE;
                    self.src.read_exact_at(at, &mut buf[done..done + n])?;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let end = offset.saturating_add(max_len).min(self.size);
        check_range(Format::Vdi, self.size, offset, end.saturating_sub(offset))?;
        let kind = |e: u32| match e {
            FREE => Extent::Unallocated,
            ZERO => Extent::Zero,
            _ => Extent::Data,
        };
        let extent = kind(self.entry(offset));
        let mut pos = offset;
        while pos < end && kind(self.entry(pos)) == extent {
            pos = (pos / BLOCK_SIZE + 1) * BLOCK_SIZE;
        }
        Ok(Mapping {
            extent,
            len: pos.min(end).saturating_sub(offset).max(1),
        })
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: Format::Vdi,
            virtual_size: self.size,
            actual_size: self.src.allocated_size(),
            details: vec![
                (
                    "type".into(),
                    if self.image_type == 2 {
                        "fixed"
                    } else {
                        "dynamic"
                    }
                    .into(),
                ),
                ("block size".into(), BLOCK_SIZE.to_string()),
                ("blocks".into(), self.map.len().to_string()),
                ("allocated blocks".into(), self.allocated.to_string()),
                ("uuid".into(), self.uuids.0.clone()),
                ("modification uuid".into(), self.uuids.1.clone()),
            ],
        }
    }
}

/// Options of the VDI writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VdiOptions {
    /// Every block allocated (`subformat=fixed` or `static=on`).
    pub fixed: bool,
}

impl VdiOptions {
    /// The option names VDI takes.
    pub const KNOWN: &'static [&'static str] = &["subformat", "static"];

    /// Take VDI's options.
    pub fn parse(mut opts: WriterOptions) -> Result<VdiOptions> {
        let mut fixed = match opts.take("subformat").as_deref() {
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(o) => {
                return Err(Error::invalid_argument(format!(
                    "subformat '{o}' is not one of dynamic, fixed"
                )))
            }
        };
        match opts.take("static").as_deref() {
            None | Some("off") => {}
            Some("on") => fixed = true,
            Some(o) => {
                return Err(Error::invalid_argument(format!(
                    "static '{o}' is not on or off"
                )))
            }
        }
        opts.finish(Format::Vdi, Self::KNOWN)?;
        Ok(VdiOptions { fixed })
    }
}

/// Passes chunks through: blocks are stored as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct VdiEncoder;

impl Encoder for VdiEncoder {
    type Encoded = Chunk;
    fn encode(&self, chunk: Chunk) -> Result<Chunk> {
        Ok(chunk)
    }
}

/// The VDI writer.
#[derive(Debug)]
pub struct VdiWriter {
    opts: VdiOptions,
    size: u64,
    blocks: u64,
    data_offset: u64,
    allocated: u64,
    written: u64,
}

impl VdiWriter {
    /// A writer for a disk of `virtual_size` bytes.
    pub fn new(virtual_size: u64, opts: VdiOptions) -> Result<VdiWriter> {
        let blocks = virtual_size.div_ceil(BLOCK_SIZE);
        if blocks > MAX_BLOCKS {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "VDI output is limited to 16 TiB",
            ));
        }
        let data_offset = ALIGN + (blocks * 4).next_multiple_of(ALIGN).max(ALIGN);
        Ok(VdiWriter {
            opts,
            size: virtual_size,
            blocks,
            data_offset,
            allocated: 0,
            written: 0,
        })
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; 0x200];
        h[..TEXT.len()].copy_from_slice(TEXT);
        let put32 =
            |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut h, 0x40, SIGNATURE);
        put32(&mut h, 0x44, VERSION);
        put32(&mut h, 0x48, HEADER_SIZE);
        put32(&mut h, 0x4c, if self.opts.fixed { 2 } else { 1 });
        put32(&mut h, 0x154, ALIGN as u32);
        put32(&mut h, 0x158, self.data_offset as u32);
        let sectors = self.size / 512;
        let cylinders = (sectors / (16 * 63)).clamp(1, 16383) as u32;
        for base in [0x15c, 0x1c8] {
            put32(&mut h, base, cylinders);
            put32(&mut h, base + 4, 16);
            put32(&mut h, base + 8, 63);
            put32(&mut h, base + 12, 512);
        }
        h[0x170..0x178].copy_from_slice(&self.size.to_le_bytes());
        put32(&mut h, 0x178, BLOCK_SIZE as u32);
        put32(&mut h, 0x180, self.blocks as u32);
        put32(&mut h, 0x184, self.allocated as u32);
        h[0x188..0x198].copy_from_slice(&random_uuid(UuidLayout::LittleEndian));
        h[0x198..0x1a8].copy_from_slice(&random_uuid(UuidLayout::LittleEndian));
        h
    }
}

impl Writer for VdiWriter {
    type Encoder = VdiEncoder;

    fn format(&self) -> Format {
        Format::Vdi
    }

    fn unit_size(&self) -> u64 {
        BLOCK_SIZE
    }

    fn needs_plan(&self) -> bool {
        true
    }

    fn output_len(&self) -> Option<u64> {
        None
    }

    fn encoder(&self) -> VdiEncoder {
        VdiEncoder
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let plan =
            plan.ok_or_else(|| Error::new(ErrorKind::Io, "internal error: VDI needs a plan"))?;
        let mut map = Vec::with_capacity((self.blocks * 4) as usize);
        let mut next = 0u32;
        for b in 0..self.blocks as usize {
            let e = if self.opts.fixed || plan.bitmap().get(b).is_some_and(|x| *x) {
                next += 1;
                next - 1
            } else {
                FREE
            };
            map.extend_from_slice(&e.to_le_bytes());
        }
        self.allocated = u64::from(next);
        out.write(&Bytes::from_vec(self.header()))?;
        out.write_zeros(ALIGN - 0x200)?;
        map.resize((self.data_offset - ALIGN) as usize, 0);
        out.write(&Bytes::from_vec(map))
    }

    fn commit(&mut self, chunk: Chunk, out: &mut Output) -> Result<()> {
        self.written += write_unit_runs(&chunk, out, self.opts.fixed)?;
        Ok(())
    }

    fn finish(self, out: &mut Output) -> Result<WriterSummary> {
        if self.written != self.allocated
            || out.position() != self.data_offset + self.allocated * BLOCK_SIZE
        {
            return Err(Error::new(
                ErrorKind::Io,
                "internal error: VDI layout mismatch",
            ));
        }
        Ok(WriterSummary {
            format: Format::Vdi,
            allocated_units: self.allocated,
            unit_size: BLOCK_SIZE,
        })
    }
}
