//! Reading VDI images: the header and the whole block map checked at open.

use bitvec::vec::BitVec;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Extent, Format, ImageInfo, Location, Mapping};
use crate::reader::{check_range, map_end, Reader};
use crate::source::Source;

use super::header::{Header, HEADER_BYTES};
use super::{BLOCK_SIZE, FREE, HEADER_SIZE, MAX_BLOCKS, SIGNATURE, VERSION, ZERO};

fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Vdi, at, msg)
}

/// A VDI image opened for reading.
pub(crate) struct VdiReader {
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
    pub(crate) fn open(src: Box<dyn Source>) -> Result<VdiReader> {
        let len = src.len();
        if len < 0x200 {
            return Err(bad(len, "the file ends inside the VDI header"));
        }
        let mut raw_header = [0u8; HEADER_BYTES];
        src.read_exact_at(0, &mut raw_header)?;
        let h = Header::parse(&raw_header);
        if h.signature != SIGNATURE {
            return Err(bad(0x40, "not a VDI image (bad signature)"));
        }
        if h.version != VERSION {
            return Err(Error::unsupported(format!(
                "VDI version {}.{} is not supported (1.1 is)",
                h.version >> 16,
                h.version & 0xffff
            ))
            .with_format(Format::Vdi));
        }
        // 0x190 with the LCHS geometry (VirtualBox), 0x180 without it (qemu-img).
        if ![0x180, HEADER_SIZE].contains(&h.header_size) {
            return Err(bad(
                0x48,
                format!(
                    "header size {:#x} is neither 0x180 nor 0x190",
                    h.header_size
                ),
            ));
        }
        let image_type = h.image_type;
        if h.uuid_link != [0; 16] || h.uuid_parent != [0; 16] {
            return Err(Error::unsupported(format!(
                "differencing VDI images are not supported (parent {})",
                uuid::Uuid::from_bytes(h.uuid_parent)
            ))
            .with_format(Format::Vdi));
        }
        if !(1..=2).contains(&image_type) {
            return Err(Error::unsupported(format!(
                "VDI image type {image_type} is not supported (dynamic and fixed are)"
            ))
            .with_format(Format::Vdi));
        }
        let block_size = u64::from(h.block_size);
        if block_size != BLOCK_SIZE {
            return Err(bad(0x178, format!("block size {block_size} is not 1 MiB")));
        }
        if h.block_extra != 0 {
            return Err(
                Error::unsupported("VDI blocks with extra data are not supported")
                    .with_format(Format::Vdi),
            );
        }
        let size = h.disk_size;
        let blocks = u64::from(h.blocks);
        let allocated = h.allocated;
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
        let bmap = u64::from(h.block_map_offset);
        let data_offset = u64::from(h.data_offset);
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
        let map: Vec<u32> = crate::bytes::le32s(&raw).collect();
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
                uuid::Uuid::from_bytes(h.uuid_create).to_string(),
                uuid::Uuid::from_bytes(h.uuid_modify).to_string(),
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
        // Stored blocks are read through to the file's holes: a static image made by
        // truncating its file, or blocks never written, read as zeros without a read.
        match self.stored_run(offset, max_len)? {
            Some((mapping, host)) => Location::read_through(mapping, host, &*self.src),
            None => self.block_map(offset, max_len),
        }
    }

    /// `imgconv check`, past what opening verified (every block map entry in range, no data
    /// block shared): the header's allocated count equal to the blocks the map uses.
    fn check(&self, report: &mut crate::check::CheckReport) -> Result<()> {
        let used = self.map.iter().filter(|&&e| e != FREE && e != ZERO).count() as u64;
        if used != u64::from(self.allocated) {
            report.corruption(
                "header",
                0x184,
                format!(
                    "ERROR: allocated blocks mismatch, is {used}, should be {}",
                    self.allocated
                ),
            );
        }
        Ok(())
    }

    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        match self.stored_run(offset, max_len)? {
            None => Ok(Location::unstored(self.block_map(offset, max_len)?, false)),
            // qemu looks through a static image's blocks to the file's holes.
            Some((mapping, host)) if self.image_type == 2 => {
                Location::stored_in(mapping, host, &*self.src)
            }
            Some((mapping, host)) => Ok(Location::at(mapping, host)),
        }
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

impl VdiReader {
    /// The stored run from `offset`: its block and the following ones stored right after it
    /// in the file, and its file offset; `None` when the block is free or zero.
    fn stored_run(&self, offset: u64, max_len: u64) -> Result<Option<(Mapping, u64)>> {
        let e = self.entry(offset);
        if e == FREE || e == ZERO {
            return Ok(None);
        }
        let end = map_end(Format::Vdi, self.size, offset, max_len)?;
        let within = offset % BLOCK_SIZE;
        let mut len = (BLOCK_SIZE - within).min(end - offset).max(1);
        let mut next = e;
        while offset + len < end {
            let n = self.entry(offset + len);
            if n == FREE || n == ZERO || Some(n) != next.checked_add(1) {
                break;
            }
            next = n;
            len = (len + BLOCK_SIZE).min(end - offset);
        }
        let mapping = Mapping {
            extent: Extent::Data,
            len,
        };
        Ok(Some((
            mapping,
            self.data_offset + u64::from(e) * BLOCK_SIZE + within,
        )))
    }

    /// The block map's view of `[offset, ...)`: runs of blocks of one kind.
    fn block_map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let end = map_end(Format::Vdi, self.size, offset, max_len)?;
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
}
