//! The VMDK reader: a sparse extent file on its own (monolithicSparse, streamOptimized), or a
//! text descriptor whose FLAT, SPARSE and ZERO extents lie in its own folder.

use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Extent, Format, ImageInfo, Location, Mapping};
use crate::reader::{check_range, map_end, Reader};
use crate::source::{FileSource, Source};

use super::descriptor::{resolve, Descriptor, ExtentKind, MAX_DESCRIPTOR_BYTES};
use super::header::{SparseHeader, MAGIC};
use super::sparse::{Grain, SparseExtent};

enum Part {
    Sparse(SparseExtent),
    Flat { src: Box<dyn Source>, offset: u64 },
    Zero,
}

struct Piece {
    start: u64,
    len: u64,
    part: Part,
}

/// A VMDK image opened for reading.
pub(crate) struct VmdkReader {
    pieces: Vec<Piece>,
    size: u64,
    descriptor: Descriptor,
    header: Option<SparseHeader>,
    allocated: Option<u64>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidImage, msg).with_format(Format::Vmdk)
}

fn refuse_create_type(d: &Descriptor) -> Result<()> {
    if d.get("parentFileNameHint").is_some()
        || d.get("parentCID")
            .is_some_and(|p| !p.eq_ignore_ascii_case("ffffffff"))
    {
        return Err(Error::unsupported(
            "delta VMDKs (with a parent) are not supported: convert the whole chain first",
        )
        .with_format(Format::Vmdk));
    }
    match d.get("createType").unwrap_or("") {
        t if t.eq_ignore_ascii_case("seSparse") || t.eq_ignore_ascii_case("vmfsSparse") => Err(
            Error::unsupported(format!("VMDK create type {t} is not supported"))
                .with_format(Format::Vmdk),
        ),
        _ => Ok(()),
    }
}

impl VmdkReader {
    /// Open `src`: a sparse extent, or a descriptor (whose extents resolve in the folder of
    /// `src`'s path; an in-memory descriptor has no folder and its extents are refused).
    pub(crate) fn open(src: Box<dyn Source>) -> Result<VmdkReader> {
        let len = src.len();
        let mut head = vec![0u8; 512.min(len) as usize];
        src.read_exact_at(0, &mut head)?;
        if head.len() >= 4 && crate::bytes::le32(&head, 0) == MAGIC {
            return Self::open_sparse_file(src);
        }
        if len > MAX_DESCRIPTOR_BYTES {
            return Err(bad(
                "not a VMDK: neither a sparse extent nor a small text descriptor",
            ));
        }
        let mut text = vec![0u8; len as usize];
        src.read_exact_at(0, &mut text)?;
        // A descriptor is plain text (qemu pads it with NULs). Anything else here, such as a
        // sparse extent with a broken magic, is not a VMDK.
        let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
        let lower = String::from_utf8_lossy(text).to_ascii_lowercase();
        if !lower.contains("createtype") && !lower.contains("# disk descriptorfile") {
            return Err(bad("not a VMDK: bad magic, and not a text descriptor"));
        }
        let d = Descriptor::parse(&String::from_utf8_lossy(text))?;
        refuse_create_type(&d)?;
        let folder = src.path().and_then(Path::parent).map(Path::to_path_buf);
        let mut pieces = Vec::new();
        let mut start = 0u64;
        let mut allocated = 0u64;
        for e in &d.extents {
            let bytes = e.sectors * 512;
            let part = match e.kind {
                ExtentKind::Zero => Part::Zero,
                kind => {
                    let folder = folder.as_deref().ok_or_else(|| {
                        Error::unsupported("a descriptor read from memory cannot name extent files")
                            .with_format(Format::Vmdk)
                    })?;
                    let dir = if folder.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        folder
                    };
                    let path = resolve(dir, &e.file)?;
                    let file = FileSource::open(&path)?;
                    allocated += file.allocated_size().unwrap_or(0);
                    if kind == ExtentKind::Flat {
                        let offset = e
                            .offset
                            .checked_mul(512)
                            .ok_or_else(|| bad("extent offset overflows"))?;
                        if offset.checked_add(bytes).is_none_or(|end| end > file.len()) {
                            return Err(bad(format!(
                                "flat extent '{}' is shorter than the descriptor says",
                                e.file
                            )));
                        }
                        Part::Flat {
                            src: Box::new(file),
                            offset,
                        }
                    } else {
                        let mut h = vec![0u8; 512];
                        if file.len() < 512 {
                            return Err(bad(format!("sparse extent '{}' is truncated", e.file)));
                        }
                        file.read_exact_at(0, &mut h)?;
                        let sh = SparseHeader::parse(&h)?;
                        if sh.capacity < e.sectors {
                            return Err(bad(format!(
                                "sparse extent '{}' is smaller than the descriptor says",
                                e.file
                            )));
                        }
                        Part::Sparse(SparseExtent::open(Box::new(file), sh)?)
                    }
                }
            };
            pieces.push(Piece {
                start,
                len: bytes,
                part,
            });
            start += bytes;
        }
        Ok(VmdkReader {
            pieces,
            size: start,
            descriptor: d,
            header: None,
            allocated: Some(allocated + src.allocated_size().unwrap_or(0)),
        })
    }

    fn open_sparse_file(src: Box<dyn Source>) -> Result<VmdkReader> {
        let mut h = vec![0u8; 512];
        if src.len() < 512 {
            return Err(bad("the file ends inside the VMDK sparse header"));
        }
        src.read_exact_at(0, &mut h)?;
        let header = SparseHeader::parse(&h)?;
        let (d_off, d_len) = header.descriptor;
        let mut descriptor = Descriptor::default();
        // Both fields are the file's word: sizes computed checked, a descriptor that does not
        // fit (or whose numbers overflow) is not read.
        let place = d_off
            .checked_mul(512)
            .zip(d_len.checked_mul(512))
            .filter(|&(at, len)| at > 0 && len > 0 && len <= MAX_DESCRIPTOR_BYTES)
            .filter(|&(at, len)| at.checked_add(len).is_some_and(|end| end <= src.len()));
        if let Some((at, len)) = place {
            let mut text = vec![0u8; len as usize];
            src.read_exact_at(at, &mut text)?;
            // The embedded descriptor only informs `info` (this file is the extent), and
            // writers fill it loosely (mkimg leaves the extent name empty): ignore a
            // malformed one, but still refuse a delta or an unsupported create type.
            descriptor = Descriptor::parse(&String::from_utf8_lossy(&text)).unwrap_or_default();
            refuse_create_type(&descriptor)?;
        }
        let allocated = src.allocated_size();
        let size = header.capacity * 512;
        let sparse = SparseExtent::open(src, header.clone())?;
        Ok(VmdkReader {
            pieces: vec![Piece {
                start: 0,
                len: size,
                part: Part::Sparse(sparse),
            }],
            size,
            descriptor,
            header: Some(header),
            allocated,
        })
    }

    fn piece_at(&self, pos: u64) -> Result<&Piece> {
        let i = self.pieces.partition_point(|p| p.start + p.len <= pos);
        self.pieces
            .get(i)
            .ok_or_else(|| bad(format!("no extent covers byte {pos}")))
    }
}

impl Reader for VmdkReader {
    /// Light unless a sparse extent has compressed grains (streamOptimized).
    fn light_decoder(&self) -> bool {
        !self
            .pieces
            .iter()
            .any(|p| matches!(&p.part, Part::Sparse(s) if s.h.compressed()))
    }

    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(Format::Vmdk, self.size, offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let p = self.piece_at(pos)?;
            let rel = pos - p.start;
            let room = (p.len - rel).min((buf.len() - done) as u64);
            let n = match &p.part {
                Part::Zero => {
                    buf[done..done + room as usize].fill(0);
                    room
                }
                Part::Flat { src, offset } => {
                    src.read_exact_at(offset + rel, &mut buf[done..done + room as usize])?;
                    room
                }
                Part::Sparse(s) => {
                    let (_, reach, grain) = s.piece(rel)?;
                    let n = reach.min(room);
                    let gb = s.h.grain_bytes();
                    s.read_grain(grain, rel / gb, rel % gb, &mut buf[done..done + n as usize])?;
                    n
                }
            };
            done += n as usize;
        }
        Ok(())
    }

    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        let end = map_end(Format::Vmdk, self.size, offset, max_len)?;
        let p = self.piece_at(offset)?;
        let rel = offset - p.start;
        let room = (p.len - rel).min(end - offset).max(1);
        let Part::Sparse(s) = &p.part else {
            return match &p.part {
                // qemu looks through a flat extent to its file's holes.
                Part::Flat { src, offset: at } => {
                    let mapping = Mapping {
                        extent: Extent::Data,
                        len: room,
                    };
                    Location::stored_in(mapping, at + rel, &**src)
                }
                _ => Ok(Location::unstored(self.map(offset, max_len)?, false)),
            };
        };
        let gb = s.h.grain_bytes();
        let (extent, reach, g) = s.piece(rel)?;
        match g {
            Grain::Plain(h) => {
                // This grain and the following ones stored right after it.
                let host = h + rel % gb;
                let mut len = reach.min(room);
                while len < room {
                    match s.piece(rel + len)? {
                        (Extent::Data, r, Grain::Plain(h2)) if h2 == host + len => {
                            len += r.min(room - len)
                        }
                        _ => break,
                    }
                }
                Ok(Location::at(Mapping { extent, len }, host))
            }
            Grain::Compressed(_) => Ok(Location::unstored(
                Mapping {
                    extent,
                    len: reach.min(room),
                },
                true,
            )),
            Grain::Unallocated | Grain::Zero => {
                Ok(Location::unstored(self.map(offset, max_len)?, false))
            }
        }
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let end = map_end(Format::Vmdk, self.size, offset, max_len)?;
        if offset >= end {
            return Ok(Mapping {
                extent: Extent::Unallocated,
                len: max_len.max(1),
            });
        }
        let p = self.piece_at(offset)?;
        let rel = offset - p.start;
        let room = (p.len - rel).min(end - offset);
        let (extent, len) = match &p.part {
            Part::Zero => (Extent::Unallocated, room),
            // A flat extent is read through to its file's holes.
            Part::Flat { src, offset: at } => {
                let data = Mapping {
                    extent: Extent::Data,
                    len: room,
                };
                return Location::read_through(data, at + rel, &**src);
            }
            Part::Sparse(s) => {
                let (kind, reach, _) = s.piece(rel)?;
                let mut len = reach.min(room);
                while len < room {
                    let (next, r, _) = s.piece(rel + len)?;
                    if next != kind {
                        break;
                    }
                    len += r.min(room - len);
                }
                (kind, len)
            }
        };
        Ok(Mapping { extent, len })
    }

    fn check(&self, report: &mut crate::check::CheckReport) -> Result<()> {
        for (i, p) in self.pieces.iter().enumerate() {
            if let Part::Sparse(s) = &p.part {
                s.check(i, report)?;
            }
        }
        Ok(())
    }

    fn info(&self) -> ImageInfo {
        let d = &self.descriptor;
        let mut details = Vec::new();
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                details.push((k.to_string(), v));
            }
        };
        push("create type", d.get("createType").map(str::to_string));
        push("adapter type", d.get("ddb.adapterType").map(str::to_string));
        push(
            "hardware version",
            d.get("ddb.virtualHWVersion").map(str::to_string),
        );
        if let Some(h) = &self.header {
            push("version", Some(h.version.to_string()));
            push("grain size", Some(h.grain_bytes().to_string()));
            push(
                "compression",
                Some(if h.compressed() { "deflate" } else { "none" }.to_string()),
            );
        }
        let extents = if d.extents.is_empty() {
            "1 (this file)".to_string()
        } else {
            d.extents
                .iter()
                .map(|e| format!("{} {:?} \"{}\"", e.sectors, e.kind, e.file))
                .collect::<Vec<_>>()
                .join("; ")
        };
        push("extents", Some(extents));
        ImageInfo {
            format: Format::Vmdk,
            virtual_size: self.size,
            actual_size: self.allocated,
            details,
        }
    }
}
