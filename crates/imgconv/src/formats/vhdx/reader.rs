//! The VHDX reader: headers, region table, metadata and BAT validated at open; payload blocks
//! read positionally.

use crate::bytes::{le16, le32, le64};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Extent, Format, ImageInfo, Location, Mapping};
use crate::reader::{check_range, map_end, Reader};
use crate::source::Source;

use super::*;

fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Vhdx, at, msg)
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::unsupported(msg).with_format(Format::Vhdx)
}

/// Header and region table copies.
const HEADERS: [u64; 2] = [64 << 10, 128 << 10];
const REGION_TABLES: [u64; 2] = [192 << 10, 256 << 10];
const HEADER_BYTES: usize = 4096;
const REGION_TABLE_BYTES: usize = 64 << 10;
/// The largest BAT read (a 64 TiB disk of 1 MiB blocks needs 512 MiB; such a disk is refused
/// past this, as a limit).
const MAX_BAT_BYTES: u64 = 256 << 20;

/// Whether `b`'s CRC-32C, computed with its checksum field (at 4) zeroed, is the stored one.
fn checksum_ok(b: &[u8]) -> bool {
    let stored = le32(b, 4);
    let mut copy = b.to_vec();
    copy[4..8].fill(0);
    crc32c::crc32c(&copy) == stored
}

/// The current header: the valid copy with the higher sequence number.
struct Header {
    sequence: u64,
    log_guid: [u8; 16],
    version: u16,
    log_offset: u64,
    log_length: u64,
}

fn read_header(src: &dyn Source) -> Result<Header> {
    let mut best: Option<Header> = None;
    for at in HEADERS {
        let mut b = vec![0u8; HEADER_BYTES];
        if src.read_exact_at(at, &mut b).is_err() || &b[..4] != b"head" || !checksum_ok(&b) {
            continue;
        }
        let mut log_guid = [0u8; 16];
        log_guid.copy_from_slice(&b[48..64]);
        let h = Header {
            sequence: le64(&b, 8),
            log_guid,
            version: le16(&b, 66),
            log_length: u64::from(le32(&b, 68)),
            log_offset: le64(&b, 72),
        };
        if best.as_ref().is_none_or(|b| h.sequence > b.sequence) {
            best = Some(h);
        }
    }
    let h = best.ok_or_else(|| {
        bad(
            HEADERS[0],
            "neither VHDX header is valid (signature or CRC-32C)",
        )
    })?;
    if h.version != 1 {
        return Err(refuse(format!(
            "VHDX version {} is not supported (1 is)",
            h.version
        )));
    }
    if h.log_guid != [0; 16] {
        return Err(refuse(
            "the VHDX has a log to replay (it was not closed cleanly); open it once in Hyper-V, \
             or run qemu-img check -r all on it, which replays the log",
        ));
    }
    Ok(h)
}

/// The BAT and metadata regions: (offset, length) each.
fn read_regions(src: &dyn Source) -> Result<((u64, u64), (u64, u64))> {
    let len = src.len();
    let mut table = None;
    for at in REGION_TABLES {
        let mut b = vec![0u8; REGION_TABLE_BYTES];
        if src.read_exact_at(at, &mut b).is_ok() && &b[..4] == b"regi" && checksum_ok(&b) {
            table = Some((at, b));
            break;
        }
    }
    let (at, b) = table.ok_or_else(|| {
        bad(
            REGION_TABLES[0],
            "neither VHDX region table is valid (signature or CRC-32C)",
        )
    })?;
    let count = le32(&b, 8) as usize;
    if count > 2047 {
        return Err(bad(
            at + 8,
            format!("{count} region table entries (at most 2047)"),
        ));
    }
    let (mut bat, mut meta) = (None, None);
    for i in 0..count {
        let e = 16 + i * 32;
        let guid = &b[e..e + 16];
        let offset = le64(&b, e + 16);
        let length = u64::from(le32(&b, e + 24));
        let required = le32(&b, e + 28) & 1 != 0;
        let entry_at = at + e as u64;
        let region = if guid == REGION_BAT {
            &mut bat
        } else if guid == REGION_METADATA {
            &mut meta
        } else if required {
            return Err(refuse(format!(
                "the VHDX requires region {} which this version does not know",
                uuid::Uuid::from_bytes_le(guid.try_into().unwrap_or([0; 16]))
            )));
        } else {
            continue;
        };
        if offset % MIB != 0
            || offset < MIB
            || length == 0
            || offset.checked_add(length).is_none_or(|end| end > len)
        {
            return Err(bad(
                entry_at,
                format!("region at {offset:#x} ({length} bytes) is misaligned or outside the file"),
            ));
        }
        if region.replace((offset, length)).is_some() {
            return Err(bad(entry_at, "a region appears twice in the region table"));
        }
    }
    match (bat, meta) {
        (Some(b), Some(m)) => Ok((b, m)),
        _ => Err(bad(
            at,
            "the region table lacks the BAT or the metadata region",
        )),
    }
}

/// What the metadata region says.
struct Metadata {
    block_size: u64,
    leave_allocated: bool,
    disk_size: u64,
    logical_sector: u64,
    physical_sector: u64,
}

fn read_metadata(src: &dyn Source, (at, len): (u64, u64)) -> Result<Metadata> {
    let mut head = vec![0u8; 64 << 10];
    if len < head.len() as u64 {
        return Err(bad(at, "the metadata region is smaller than its table"));
    }
    src.read_exact_at(at, &mut head)?;
    if &head[..8] != b"metadata" {
        return Err(bad(at, "no metadata table signature"));
    }
    let count = usize::from(le16(&head, 10));
    if count > 2047 {
        return Err(bad(
            at + 10,
            format!("{count} metadata entries (at most 2047)"),
        ));
    }
    let item = |id: &[u8; 16]| -> Result<Option<Vec<u8>>> {
        for i in 0..count {
            let e = 32 + i * 32;
            if &head[e..e + 16] != id {
                continue;
            }
            let offset = u64::from(le32(&head, e + 16));
            let length = u64::from(le32(&head, e + 20));
            if offset < (64 << 10) || length > 64 << 10 || offset + length > len {
                return Err(bad(
                    at + e as u64,
                    "a metadata item lies outside its region",
                ));
            }
            let mut v = vec![0u8; length as usize];
            src.read_exact_at(at + offset, &mut v)?;
            return Ok(Some(v));
        }
        Ok(None)
    };
    // Unknown required items are refused.
    let known = [
        META_FILE_PARAMETERS,
        META_DISK_SIZE,
        META_PAGE83,
        META_LOGICAL_SECTOR,
        META_PHYSICAL_SECTOR,
        META_PARENT_LOCATOR,
    ];
    for i in 0..count {
        let e = 32 + i * 32;
        let required = le32(&head, e + 24) & 4 != 0;
        if required && !known.iter().any(|k| &head[e..e + 16] == k) {
            return Err(refuse(
                "the VHDX requires a metadata item this version does not know",
            ));
        }
    }
    let need = |id: &[u8; 16], what: &str, size: usize| -> Result<Vec<u8>> {
        match item(id)? {
            Some(v) if v.len() >= size => Ok(v),
            _ => Err(bad(at, format!("the metadata lacks the {what}"))),
        }
    };
    let params = need(&META_FILE_PARAMETERS, "file parameters", 8)?;
    let flags = le32(&params, 4);
    if flags & 2 != 0 {
        let parent = item(&META_PARENT_LOCATOR)?
            .map(|v| parent_path(&v))
            .unwrap_or_default();
        return Err(refuse(format!(
            "this is a differencing VHDX: its content depends on the parent image {parent}, \
             which imgconv does not open; merge it into its parent first (Hyper-V's \
             Merge-VHD)"
        )));
    }
    let block_size = u64::from(le32(&params, 0));
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
        return Err(bad(
            at,
            format!("block size {block_size} is not a power of two from 1 to 256 MiB"),
        ));
    }
    let disk_size = le64(&need(&META_DISK_SIZE, "virtual disk size", 8)?, 0);
    let logical_sector = u64::from(le32(
        &need(&META_LOGICAL_SECTOR, "logical sector size", 4)?,
        0,
    ));
    let physical_sector = u64::from(le32(
        &need(&META_PHYSICAL_SECTOR, "physical sector size", 4)?,
        0,
    ));
    if !matches!(logical_sector, 512 | 4096) || !matches!(physical_sector, 512 | 4096) {
        return Err(bad(at, "sector sizes must be 512 or 4096"));
    }
    if disk_size == 0 || disk_size > MAX_DISK_SIZE || disk_size % logical_sector != 0 {
        return Err(bad(
            at,
            format!("virtual disk size {disk_size} is out of range"),
        ));
    }
    Ok(Metadata {
        block_size,
        leave_allocated: flags & 1 != 0,
        disk_size,
        logical_sector,
        physical_sector,
    })
}

/// The parent's path from a parent locator's key-value pairs (for the refusal message).
fn parent_path(locator: &[u8]) -> String {
    let count = usize::from(le16(locator, 18)).min(256);
    let utf16 = |off: usize, len: usize| -> Option<String> {
        let b = locator.get(off..off.checked_add(len)?)?;
        let units: Vec<u16> = crate::bytes::le16s(b).collect();
        Some(String::from_utf16_lossy(&units))
    };
    let mut found = None;
    for i in 0..count {
        let e = 20 + i * 12;
        if e + 12 > locator.len() {
            break;
        }
        let (ko, vo) = (le32(locator, e) as usize, le32(locator, e + 4) as usize);
        let (kl, vl) = (
            usize::from(le16(locator, e + 8)),
            usize::from(le16(locator, e + 10)),
        );
        let (Some(k), Some(v)) = (utf16(ko, kl), utf16(vo, vl)) else {
            continue;
        };
        if matches!(
            k.as_str(),
            "relative_path" | "absolute_win32_path" | "volume_path"
        ) && found.is_none()
        {
            found = Some(v);
        }
    }
    found.map_or_else(|| "(unnamed)".into(), |p| format!("'{p}'"))
}

/// A VHDX image opened for reading.
pub(crate) struct VhdxReader {
    src: Box<dyn Source>,
    meta: Metadata,
    /// Per payload block: its file offset, or `None` when it reads as zeros.
    blocks: Vec<Option<u64>>,
    /// The file's own structures, (name, offset, length): headers and region tables, the log,
    /// the metadata region, the BAT.
    structures: Vec<(&'static str, u64, u64)>,
    /// Where the BAT is and how often its sector bitmap entries come.
    bat_at: u64,
    chunk_ratio: u64,
}

impl VhdxReader {
    /// Open and validate `src`.
    pub(crate) fn open(src: Box<dyn Source>) -> Result<VhdxReader> {
        let mut sig = [0u8; 8];
        src.read_exact_at(0, &mut sig)
            .map_err(|_| bad(0, "the file is too short for a VHDX"))?;
        if &sig != FILE_SIGNATURE {
            return Err(bad(0, "no VHDX file identifier ('vhdxfile')"));
        }
        let header = read_header(src.as_ref())?;
        let (bat, meta_region) = read_regions(src.as_ref())?;
        let meta = read_metadata(src.as_ref(), meta_region)?;
        let bs = meta.block_size;
        let data_blocks = meta.disk_size.div_ceil(bs);
        let chunk_ratio = ((1u64 << 23) * meta.logical_sector) / bs;
        let entries = data_blocks + (data_blocks - 1) / chunk_ratio;
        let bat_bytes = entries * 8;
        if bat_bytes > MAX_BAT_BYTES {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("the BAT ({bat_bytes} bytes) exceeds the {MAX_BAT_BYTES}-byte limit"),
            )
            .with_format(Format::Vhdx));
        }
        if bat_bytes > bat.1 {
            return Err(bad(bat.0, "the BAT region is smaller than the disk needs"));
        }
        let mut raw = vec![0u8; bat_bytes as usize];
        src.read_exact_at(bat.0, &mut raw)?;
        let file_len = src.len();
        let mut blocks = Vec::with_capacity(data_blocks as usize);
        for i in 0..data_blocks {
            let index = i + i / chunk_ratio;
            let entry_at = bat.0 + index * 8;
            let e = le64(&raw, (index * 8) as usize);
            let block = match e & 7 {
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => None,
                PAYLOAD_FULLY_PRESENT => {
                    let offset = (e >> 20) * MIB;
                    // Only the part of the last block inside the disk must be present.
                    let needed = bs.min(meta.disk_size - i * bs);
                    if offset < MIB || offset.checked_add(needed).is_none_or(|end| end > file_len) {
                        return Err(bad(
                            entry_at,
                            format!("block {i} at {offset:#x} lies outside the file (truncated)"),
                        ));
                    }
                    Some(offset)
                }
                PAYLOAD_PARTIALLY_PRESENT => {
                    return Err(bad(
                        entry_at,
                        format!("block {i} is partially present in a disk without a parent"),
                    ))
                }
                s => {
                    return Err(bad(
                        entry_at,
                        format!("block {i} has the unknown state {s}"),
                    ))
                }
            };
            blocks.push(block);
        }
        let structures = vec![
            ("headers and region tables", 0, MIB),
            ("log", header.log_offset, header.log_length),
            ("metadata region", meta_region.0, meta_region.1),
            ("BAT", bat.0, bat.1),
        ];
        Ok(VhdxReader {
            src,
            meta,
            blocks,
            structures,
            bat_at: bat.0,
            chunk_ratio,
        })
    }

    fn block(&self, pos: u64) -> Option<u64> {
        self.blocks
            .get((pos / self.meta.block_size) as usize)
            .copied()
            .flatten()
    }
}

impl Reader for VhdxReader {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    /// The regions apart from each other and from the first MiB; every stored block apart
    /// from the file's structures and from the other blocks (blocks inside the file, and the
    /// checksums of headers and region tables, are checked at open).
    fn check(&self, report: &mut crate::check::CheckReport) -> Result<()> {
        let overlap = |a: (u64, u64), b: (u64, u64)| a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
        for (i, &(name, at, len)) in self.structures.iter().enumerate() {
            for &(other, oat, olen) in &self.structures[..i] {
                if len > 0 && olen > 0 && overlap((at, len), (oat, olen)) {
                    report.corruption(
                        name,
                        at,
                        format!("the {name} at {at:#x} overlaps the {other} at {oat:#x}"),
                    );
                }
            }
        }
        let bs = self.meta.block_size;
        let mut stored: Vec<(u64, u64)> = self
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|at| (at, i as u64)))
            .collect();
        stored.sort_unstable();
        let entry_at = |i: u64| self.bat_at + (i + i / self.chunk_ratio) * 8;
        for (k, &(at, i)) in stored.iter().enumerate() {
            for &(name, sat, slen) in &self.structures {
                if slen > 0 && overlap((at, bs), (sat, slen)) {
                    report.corruption(
                        "BAT",
                        entry_at(i),
                        format!("block {i} at {at:#x} overlaps the {name} at {sat:#x}"),
                    );
                }
            }
            if let Some(&(next, j)) = stored.get(k + 1) {
                if next < at + bs {
                    report.corruption(
                        "BAT",
                        entry_at(j),
                        format!("blocks {i} and {j} overlap at {next:#x}"),
                    );
                }
            }
        }
        Ok(())
    }

    fn virtual_size(&self) -> u64 {
        self.meta.disk_size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(Format::Vhdx, self.meta.disk_size, offset, buf.len() as u64)?;
        let bs = self.meta.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.block(pos) {
                Some(at) => self.src.read_exact_at(at + within, out)?,
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        // Stored blocks are read through to the file's holes (a fixed image whose file was
        // made by truncating it reads as zeros there, without a read).
        let loc = self.locate(offset, max_len)?;
        if let (Extent::Data, Some(host)) = (loc.mapping.extent, loc.host) {
            return Location::read_through(loc.mapping, host, &*self.src);
        }
        self.block_map(offset, max_len)
    }

    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        let Some(at) = self.block(offset) else {
            return Ok(Location::unstored(self.block_map(offset, max_len)?, false));
        };
        let end = map_end(Format::Vhdx, self.meta.disk_size, offset, max_len)?;
        let bs = self.meta.block_size;
        let within = offset % bs;
        let host = at + within;
        let mut len = (bs - within).min(end - offset).max(1);
        while offset + len < end && self.block(offset + len) == Some(host + len) {
            len = (len + bs).min(end - offset);
        }
        Ok(Location::at(
            Mapping {
                extent: Extent::Data,
                len,
            },
            host,
        ))
    }

    fn info(&self) -> ImageInfo {
        let m = &self.meta;
        ImageInfo {
            format: Format::Vhdx,
            virtual_size: m.disk_size,
            actual_size: self.src.allocated_size(),
            details: vec![
                (
                    "type".into(),
                    if m.leave_allocated {
                        "fixed"
                    } else {
                        "dynamic"
                    }
                    .into(),
                ),
                ("block size".into(), m.block_size.to_string()),
                ("logical sector size".into(), m.logical_sector.to_string()),
                ("physical sector size".into(), m.physical_sector.to_string()),
                (
                    "allocated blocks".into(),
                    self.blocks
                        .iter()
                        .filter(|b| b.is_some())
                        .count()
                        .to_string(),
                ),
            ],
        }
    }
}

impl VhdxReader {
    /// The BAT's view of `[offset, ...)`: runs of present or absent blocks.
    fn block_map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let end = map_end(Format::Vhdx, self.meta.disk_size, offset, max_len)?;
        let bs = self.meta.block_size;
        let kind = |p: u64| {
            if self.block(p).is_some() {
                Extent::Data
            } else {
                Extent::Unallocated
            }
        };
        let extent = kind(offset);
        let mut pos = offset;
        while pos < end && kind(pos) == extent {
            pos = (pos / bs + 1) * bs;
        }
        Ok(Mapping {
            extent,
            len: pos.min(end).saturating_sub(offset).max(1),
        })
    }
}
