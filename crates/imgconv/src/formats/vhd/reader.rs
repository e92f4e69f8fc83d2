//! The VHD reader: fixed and dynamic disks.

use crate::bytes::be32;
use crate::error::{Error, Result};
use crate::model::{Extent, Format, ImageInfo, Location, Mapping};
use crate::reader::{check_range, map_end, Reader};
use crate::source::Source;

use super::dynamic_header::DynamicHeader;
use crate::check::CheckReport;

use super::{checksum, DiskType, Footer, COOKIE, DYNAMIC_HEADER_SIZE, FOOTER_SIZE, UNALLOCATED};

pub(super) fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Vhd, at, msg)
}

/// The footer at the end of `src`, with its checksum verified.
fn read_footer(src: &dyn Source) -> Result<Footer> {
    let len = src.len();
    if len < FOOTER_SIZE {
        return Err(bad(
            len,
            "the file is shorter than a VHD footer (truncated footer)",
        ));
    }
    let at = len - FOOTER_SIZE;
    let mut b = vec![0u8; FOOTER_SIZE as usize];
    src.read_exact_at(at, &mut b)?;
    if &b[..8] != COOKIE {
        let mut head = [0u8; 8];
        src.read_exact_at(0, &mut head)?;
        return Err(if &head == COOKIE {
            bad(
                at,
                "the footer at the end of the file is missing or cut short (truncated image); \
                 only the copy at the start remains",
            )
        } else {
            bad(
                at,
                "no VHD footer (cookie 'conectix') at the end of the file",
            )
        });
    }
    let footer = Footer::parse(&b);
    let computed = checksum(&b, 64);
    if footer.checksum != computed {
        return Err(bad(
            at + 64,
            format!(
                "footer checksum {:#010x} does not match its contents ({computed:#010x})",
                footer.checksum
            ),
        ));
    }
    if footer.version >> 16 != 1 {
        return Err(Error::unsupported(format!(
            "VHD version {}.{} is not supported (1.0 is)",
            footer.version >> 16,
            footer.version & 0xffff
        ))
        .with_format(Format::Vhd));
    }
    Ok(footer)
}

/// The dynamic header the footer points at.
fn read_dynamic_header(src: &dyn Source, footer: &Footer) -> Result<DynamicHeader> {
    let at = footer.data_offset;
    let footer_at = src.len() - FOOTER_SIZE;
    if at
        .checked_add(DYNAMIC_HEADER_SIZE)
        .is_none_or(|end| end > footer_at)
    {
        return Err(bad(
            footer_at + 16,
            format!("the dynamic header offset {at:#x} lies outside the file"),
        ));
    }
    let mut h = vec![0u8; DYNAMIC_HEADER_SIZE as usize];
    src.read_exact_at(at, &mut h)?;
    DynamicHeader::parse(&h, at)
}

/// The error for a differencing disk: it cannot be read without its parent.
fn differencing(src: &dyn Source, footer: &Footer) -> Error {
    let parent = match read_dynamic_header(src, footer) {
        Ok(h) => {
            let rel = h
                .relative_parent(src)
                .map(|r| format!("relative path '{r}', "))
                .unwrap_or_default();
            let name = if h.parent_name.is_empty() {
                "(unnamed)".to_string()
            } else {
                format!("'{}'", h.parent_name)
            };
            format!(
                "{name} ({rel}uuid {})",
                uuid::Uuid::from_bytes(h.parent_uuid)
            )
        }
        Err(e) => format!("unknown: {}", e.message()),
    };
    Error::unsupported(format!(
        "this is a differencing VHD: its content depends on the parent image {parent}, which \
         imgconv does not open; merge it into its parent first (Hyper-V's Merge-VHD, or \
         qemu-img convert with the parent in place)"
    ))
    .with_format(Format::Vhd)
}

/// Basic facts of a VHD for `imgconv info`, also for a disk the reader refuses
/// (differencing): footer and dynamic header only, nothing else is checked or read.
pub(crate) fn describe(src: &dyn Source) -> Result<ImageInfo> {
    let footer = read_footer(src)?;
    let mut details = footer.details();
    if footer.kind() != Some(DiskType::Fixed) {
        if let Ok(h) = read_dynamic_header(src, &footer) {
            details.push(("block size".into(), h.block_size.to_string()));
            details.push(("bat entries".into(), h.entries.to_string()));
            if footer.kind() == Some(DiskType::Differencing) {
                details.push(("parent".into(), h.parent_name.clone()));
                details.push((
                    "parent uuid".into(),
                    uuid::Uuid::from_bytes(h.parent_uuid).to_string(),
                ));
                if let Some(rel) = h.relative_parent(src) {
                    details.push(("parent relative path".into(), rel));
                }
            }
        }
    }
    Ok(ImageInfo {
        format: Format::Vhd,
        virtual_size: footer.disk_size(),
        actual_size: src.allocated_size(),
        details,
    })
}

#[derive(Debug)]
enum Layout {
    Fixed,
    Dynamic {
        block_size: u64,
        bitmap_size: u64,
        bat: Vec<u32>,
    },
}

/// A VHD image opened for reading.
pub(crate) struct VhdReader {
    src: Box<dyn Source>,
    footer: Footer,
    size: u64,
    layout: Layout,
}

impl VhdReader {
    /// The block table's and sector bitmaps' view of `[offset, ...)`; with `through`, the
    /// sectors marked as written are read through to the file's holes (what a conversion
    /// reads; `imgconv map` shows them as qemu-img does, as stored data).
    fn mapping(&self, offset: u64, max_len: u64, through: bool) -> Result<Mapping> {
        let end = map_end(Format::Vhd, self.size, offset, max_len)?;
        let len = end.saturating_sub(offset);
        let Layout::Dynamic {
            block_size: bs,
            bitmap_size,
            bat,
        } = &self.layout
        else {
            let mut m = self.src.extent(offset, len)?;
            m.len = m.len.clamp(1, len.max(1));
            return Ok(m);
        };
        let bs = *bs;
        let entry = |pos: u64| bat.get((pos / bs) as usize).copied().unwrap_or(UNALLOCATED);
        let e = entry(offset);
        if e == UNALLOCATED {
            let mut pos = offset;
            while pos < end && entry(pos) == UNALLOCATED {
                pos = (pos / bs + 1) * bs;
            }
            return Ok(Mapping {
                extent: Extent::Unallocated,
                len: (pos.min(end) - offset).max(1),
            });
        }
        // Inside an allocated block: the run of equal bitmap bits from `offset`.
        let within = offset % bs;
        let n = (bs - within).min(len.max(1));
        let first = within / 512;
        let last = (within + n - 1) / 512;
        let bits = self.bitmap(u64::from(e) * 512, first, last)?;
        let base = first / 8 * 8;
        let set = bit(&bits, base, first);
        let mut t = first;
        while t <= last && bit(&bits, base, t) == set {
            t += 1;
        }
        let len = ((t * 512).min(within + n) - within).max(1);
        if !set {
            return Ok(Mapping {
                extent: Extent::Unallocated,
                len,
            });
        }
        // Sectors marked as written are read through to the file's holes (a writer that
        // leaves a block's zero runs as holes).
        let host = u64::from(e) * 512 + bitmap_size + within;
        let data = Mapping {
            extent: Extent::Data,
            len,
        };
        if !through {
            return Ok(data);
        }
        Location::read_through(data, host, &*self.src)
    }

    /// Open and validate `src`: footer and its checksum; for a dynamic disk, the header, its
    /// checksum, and every BAT entry (each allocated block inside the file).
    pub(crate) fn open(src: Box<dyn Source>) -> Result<VhdReader> {
        let footer = read_footer(src.as_ref())?;
        let size = footer.disk_size();
        let footer_at = src.len() - FOOTER_SIZE;
        let layout = match footer.kind() {
            Some(DiskType::Fixed) => {
                if size > footer_at {
                    return Err(bad(
                        footer_at,
                        format!(
                            "the data ends at {footer_at} bytes, before the disk's {size} \
                             (truncated image)"
                        ),
                    ));
                }
                Layout::Fixed
            }
            Some(DiskType::Dynamic) => Self::dynamic(src.as_ref(), &footer, size)?,
            Some(DiskType::Differencing) => return Err(differencing(src.as_ref(), &footer)),
            None => {
                return Err(bad(
                    footer_at + 60,
                    format!(
                        "disk type {} is none of 2 (fixed), 3 (dynamic), 4 (differencing)",
                        footer.disk_type
                    ),
                ))
            }
        };
        Ok(VhdReader {
            src,
            footer,
            size,
            layout,
        })
    }

    fn dynamic(src: &dyn Source, footer: &Footer, size: u64) -> Result<Layout> {
        let h = read_dynamic_header(src, footer)?;
        let at = footer.data_offset;
        let bs = h.block_size;
        if !bs.is_power_of_two() || bs < 512 {
            return Err(bad(
                at + 32,
                format!("block size {bs} is not a power of two of at least 512"),
            ));
        }
        let needed = size.div_ceil(bs);
        if needed > u64::from(h.entries) {
            return Err(bad(
                at + 28,
                format!(
                    "the BAT's {} entries of {bs} bytes cover less than the {size}-byte disk",
                    h.entries
                ),
            ));
        }
        let footer_at = src.len() - FOOTER_SIZE;
        let bat_len = needed * 4;
        if h.table_offset
            .checked_add(bat_len)
            .is_none_or(|end| end > footer_at)
        {
            return Err(bad(
                at + 16,
                format!(
                    "the BAT ({bat_len} bytes at {:#x}) runs past the end of the file",
                    h.table_offset
                ),
            ));
        }
        let mut raw = vec![0u8; bat_len as usize];
        src.read_exact_at(h.table_offset, &mut raw)?;
        let bat: Vec<u32> = raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
        let bitmap_size = (bs / 512).div_ceil(8).next_multiple_of(512);
        for (i, &e) in bat.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            // Only the part of the last block inside the disk must be present.
            let data = bs.min(size - i as u64 * bs);
            let start = u64::from(e) * 512;
            if start + bitmap_size + data > footer_at {
                return Err(bad(
                    h.table_offset + i as u64 * 4,
                    format!(
                        "block {i} at {start:#x} runs past the end of the data (truncated \
                         block)"
                    ),
                ));
            }
        }
        Ok(Layout::Dynamic {
            block_size: bs,
            bitmap_size,
            bat,
        })
    }

    /// `imgconv check`, past what opening verified (footer and header checksums, every block
    /// before the footer): a dynamic disk's footer copy at the start equal to the footer,
    /// and its blocks clear of the header, the BAT and each other.
    fn check_structures(&self, r: &mut CheckReport) -> Result<()> {
        let Layout::Dynamic {
            block_size,
            bitmap_size,
            bat,
        } = &self.layout
        else {
            return Ok(());
        };
        let len = self.src.len();
        let mut end = vec![0u8; FOOTER_SIZE as usize];
        let mut start = vec![0u8; FOOTER_SIZE as usize];
        self.src.read_exact_at(len - FOOTER_SIZE, &mut end)?;
        self.src.read_exact_at(0, &mut start)?;
        if start != end {
            let at = start
                .iter()
                .zip(&end)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            r.corruption(
                "footer copy",
                at as u64,
                format!("the footer copy at the start differs from the footer at byte {at}"),
            );
        }
        let h = read_dynamic_header(&*self.src, &self.footer)?;
        let bat_end = h.table_offset + (bat.len() as u64 * 4).next_multiple_of(512);
        let header_end = self.footer.data_offset + DYNAMIC_HEADER_SIZE;
        let span = bitmap_size + block_size;
        let mut blocks: Vec<(u64, usize)> = bat
            .iter()
            .enumerate()
            .filter(|(_, &e)| e != UNALLOCATED)
            .map(|(i, &e)| (u64::from(e) * 512, i))
            .collect();
        blocks.sort_unstable();
        for &(at, i) in &blocks {
            let entry_at = h.table_offset + i as u64 * 4;
            let overlaps = |lo: u64, hi: u64| at < hi && lo < at + span;
            if overlaps(0, FOOTER_SIZE) || overlaps(self.footer.data_offset, header_end) {
                r.corruption(
                    "BAT",
                    entry_at,
                    format!("block {i} at {at:#x} overlaps the header"),
                );
            } else if overlaps(h.table_offset, bat_end) {
                r.corruption(
                    "BAT",
                    entry_at,
                    format!("block {i} at {at:#x} overlaps the BAT"),
                );
            }
        }
        for w in blocks.windows(2) {
            if w[1].0 < w[0].0 + span {
                r.corruption(
                    "BAT",
                    h.table_offset + w[1].1 as u64 * 4,
                    format!(
                        "block {} at {:#x} overlaps block {} at {:#x}",
                        w[1].1, w[1].0, w[0].1, w[0].0
                    ),
                );
            }
        }
        Ok(())
    }

    /// The sector bitmap bytes covering sectors `first..=last` of the block at `start`.
    fn bitmap(&self, start: u64, first: u64, last: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; (last / 8 - first / 8 + 1) as usize];
        self.src.read_exact_at(start + first / 8, &mut b)?;
        Ok(b)
    }
}

/// Whether sector `s` is set in `bits`, which begins at sector `base` (a multiple of 8).
fn bit(bits: &[u8], base: u64, s: u64) -> bool {
    let i = (s - base) as usize;
    bits[i / 8] & (0x80 >> (i % 8)) != 0
}

impl Reader for VhdReader {
    fn check(&self, report: &mut CheckReport) -> Result<()> {
        self.check_structures(report)
    }

    fn format(&self) -> Format {
        Format::Vhd
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(Format::Vhd, self.size, offset, buf.len() as u64)?;
        let Layout::Dynamic {
            block_size: bs,
            bitmap_size,
            bat,
        } = &self.layout
        else {
            return self.src.read_exact_at(offset, buf);
        };
        let (bs, bitmap_size) = (*bs, *bitmap_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match bat.get((pos / bs) as usize).copied().unwrap_or(UNALLOCATED) {
                UNALLOCATED => out.fill(0),
                e => {
                    let start = u64::from(e) * 512;
                    let data = start + bitmap_size;
                    let first = within / 512;
                    let last = (within + n as u64 - 1) / 512;
                    let bits = self.bitmap(start, first, last)?;
                    let base = first / 8 * 8;
                    if (first..=last).all(|s| bit(&bits, base, s)) {
                        self.src.read_exact_at(data + within, out)?;
                    } else {
                        // Sector by sector runs: set bits are read, clear ones are zeros.
                        let mut s = first;
                        while s <= last {
                            let set = bit(&bits, base, s);
                            let mut t = s;
                            while t <= last && bit(&bits, base, t) == set {
                                t += 1;
                            }
                            let lo = (s * 512).max(within) - within;
                            let hi = (t * 512).min(within + n as u64) - within;
                            let part = &mut out[lo as usize..hi as usize];
                            if set {
                                self.src.read_exact_at(data + within + lo, part)?;
                            } else {
                                part.fill(0);
                            }
                            s = t;
                        }
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        let mapping = self.mapping(offset, max_len, false)?;
        match &self.layout {
            Layout::Dynamic {
                block_size,
                bitmap_size,
                bat,
            } => match bat.get((offset / block_size) as usize).copied() {
                Some(e) if e != UNALLOCATED && mapping.extent == Extent::Data => {
                    let host = u64::from(e) * 512 + bitmap_size + offset % block_size;
                    Ok(Location::at(mapping, host))
                }
                _ => Ok(Location::unstored(mapping, false)),
            },
            // A fixed disk is stored whole; qemu looks through it to the file's holes.
            _ => {
                let data = Mapping {
                    extent: Extent::Data,
                    ..mapping
                };
                Location::stored_in(data, offset, &*self.src)
            }
        }
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        self.mapping(offset, max_len, true)
    }

    fn info(&self) -> ImageInfo {
        let mut details = self.footer.details();
        if let Layout::Dynamic {
            block_size, bat, ..
        } = &self.layout
        {
            details.push(("block size".into(), block_size.to_string()));
            details.push(("blocks".into(), bat.len().to_string()));
            details.push((
                "allocated blocks".into(),
                bat.iter()
                    .filter(|&&e| e != UNALLOCATED)
                    .count()
                    .to_string(),
            ));
        }
        ImageInfo {
            format: Format::Vhd,
            virtual_size: self.size,
            actual_size: self.src.allocated_size(),
            details,
        }
    }
}
