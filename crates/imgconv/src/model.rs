//! The model shared by readers, the planner, the pipeline and writers.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use bitvec::vec::BitVec;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};

/// A disk-image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A plain byte-for-byte disk.
    Raw,
    /// QEMU copy-on-write version 2 or 3.
    Qcow2,
    /// VMware virtual disk.
    Vmdk,
    /// Microsoft Virtual Hard Disk (qemu calls it `vpc`).
    Vhd,
    /// VirtualBox disk image.
    Vdi,
    /// Microsoft Hyper-V virtual hard disk v2.
    Vhdx,
    /// An OVF package in one tar (`.ova`): the OVF descriptor, a manifest and the disk as a
    /// streamOptimized VMDK. Read: the disk inside, in whatever format it is.
    Ova,
    /// A Google Compute Engine image package: `disk.raw` in a gzip-compressed GNU tar
    /// (`.tar.gz`).
    Gce,
}

impl Format {
    /// Every format, in the order the README lists them.
    pub const ALL: [Format; 8] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vdi,
        Format::Vhdx,
        Format::Ova,
        Format::Gce,
    ];

    /// The canonical lower-case name (`qemu-img`'s, except `vhd` for its `vpc`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vdi => "vdi",
            Format::Vhdx => "vhdx",
            Format::Ova => "ova",
            Format::Gce => "gce",
        }
    }

    /// The format a file name's extension stands for, if any (`.img` and `.bin` are RAW).
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext.to_ascii_lowercase().as_str() {
            "raw" | "img" | "bin" => Some(Format::Raw),
            "qcow2" | "qcow" => Some(Format::Qcow2),
            "vmdk" => Some(Format::Vmdk),
            "vhd" | "vpc" => Some(Format::Vhd),
            "vdi" => Some(Format::Vdi),
            "vhdx" => Some(Format::Vhdx),
            "ova" => Some(Format::Ova),
            "tgz" => Some(Format::Gce),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    /// Parses a format name as `-f`/`-O` take it; `vpc` is accepted for VHD.
    fn from_str(s: &str) -> Result<Format> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            "vhd" | "vpc" => Ok(Format::Vhd),
            "vdi" => Ok(Format::Vdi),
            "vhdx" => Ok(Format::Vhdx),
            "ova" => Ok(Format::Ova),
            "gce" => Ok(Format::Gce),
            other => Err(Error::invalid_argument(format!(
                "unknown format '{other}' (known: raw, qcow2, vmdk, vhd or vpc, vdi, vhdx, ova, \
                 gce)"
            ))),
        }
    }
}

/// What a range of the virtual disk holds, as a reader's map reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Extent {
    /// Stored data: it must be read (it may still turn out to be zeros).
    Data,
    /// Known to read as zeros, with storage allocated for it (a preallocated zero cluster).
    Zero,
    /// Not allocated: reads as zeros.
    Unallocated,
}

impl Extent {
    /// Whether the range must be read to know its content.
    pub fn needs_read(self) -> bool {
        self == Extent::Data
    }
}

/// One answer of [`crate::Reader::map`]: `len` bytes from the asked offset are `extent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// What the range holds.
    pub extent: Extent,
    /// How many bytes, at least 1 and at most what was asked.
    pub len: u64,
}

/// One answer of [`crate::Reader::locate`]: a [`Mapping`] and where its bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// What the range holds and how long it is.
    pub mapping: Mapping,
    /// The offset in the image file of the range's first byte, when the range is stored as
    /// it is there (its bytes then follow one another in the file).
    pub host: Option<u64>,
    /// Whether the range is stored compressed.
    pub compressed: bool,
    /// Whether the stored bytes are a hole in the image file (they read as zeros).
    pub hole: bool,
}

impl Location {
    /// A range that is not stored as it is in the file (unallocated, zero or compressed).
    pub(crate) fn unstored(mapping: Mapping, compressed: bool) -> Location {
        Location {
            mapping,
            host: None,
            compressed,
            hole: false,
        }
    }

    /// `mapping`'s bytes stored as they are from `host`.
    pub(crate) fn at(mapping: Mapping, host: u64) -> Location {
        Location {
            mapping,
            host: Some(host),
            compressed: false,
            hole: false,
        }
    }

    /// `mapping`'s bytes stored as they are from `host` in `src`, for a format whose stored
    /// ranges qemu looks through to the file: its length is cut to where the file's holes
    /// begin or end, and `hole` says which of the two it is.
    /// The mapping of a stored run as a conversion reads it: the first part of the run that
    /// the image file holds as data, or, where the file has a hole there (inside the file),
    /// [`Extent::Zero`] for as long as the hole lasts (it reads as zeros: nothing to read).
    /// A run past the file's end stays data (reading it reports the truncation).
    pub(crate) fn read_through(
        mapping: Mapping,
        host: u64,
        src: &dyn crate::source::Source,
    ) -> crate::error::Result<Mapping> {
        let inside = src.len().saturating_sub(host).min(mapping.len);
        if mapping.extent != Extent::Data || inside == 0 {
            return Ok(mapping);
        }
        let fs = src.extent(host, inside)?;
        let len = fs.len.clamp(1, inside);
        Ok(Mapping {
            extent: if fs.extent == Extent::Data {
                Extent::Data
            } else {
                Extent::Zero
            },
            len,
        })
    }

    pub(crate) fn stored_in(
        mut mapping: Mapping,
        host: u64,
        src: &dyn crate::source::Source,
    ) -> crate::error::Result<Location> {
        let fs = src.extent(host, mapping.len)?;
        mapping.len = mapping.len.min(fs.len.max(1));
        Ok(Location {
            mapping,
            host: Some(host),
            compressed: false,
            hole: fs.extent != Extent::Data,
        })
    }
}

/// The index of one allocation unit (cluster, grain, block) of a virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct UnitIndex(pub u64);

/// What `imgconv info` reports about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The image format.
    pub format: Format,
    /// The size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Bytes the image file occupies on its file system, if known.
    pub actual_size: Option<u64>,
    /// Format-specific facts, as (name, value) pairs in a fixed order.
    pub details: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpc_is_accepted_as_vhd() {
        assert_eq!("vpc".parse::<Format>().ok(), Some(Format::Vhd));
        assert_eq!("VHD".parse::<Format>().ok(), Some(Format::Vhd));
    }

    #[test]
    fn unknown_format_name_is_an_invalid_argument() {
        let err = "qed".parse::<Format>().err().map(|e| e.kind());
        assert_eq!(err, Some(crate::ErrorKind::InvalidArgument));
    }

    #[test]
    fn extensions_map_to_formats() {
        assert_eq!(Format::from_extension("IMG"), Some(Format::Raw));
        assert_eq!(Format::from_extension("qcow2"), Some(Format::Qcow2));
        assert_eq!(Format::from_extension("iso"), None);
    }
}

/// A run of the virtual disk handed to a writer's encoder: `len` bytes at guest `offset`,
/// aligned to the writer's unit.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Guest offset of the first byte (a multiple of the unit size).
    pub offset: u64,
    /// Length in bytes (a multiple of the unit, except at the end of the disk).
    pub len: usize,
    /// The bytes, or `None` when the whole chunk reads as zeros (it was never read).
    pub data: Option<Bytes>,
    /// The unit size the chunk was scanned at.
    pub unit: usize,
    /// One bit per unit: set where the unit holds a non-zero byte.
    pub nonzero: BitVec,
    /// Byte ranges of the chunk (sorted, apart) that the source's map calls zero and that
    /// were therefore never read. `data` holds zeros there unless the encoder asked for them
    /// to be left unfilled ([`Encoder::fills_unread`](crate::writer::Encoder::fills_unread)).
    pub unread: Vec<std::ops::Range<usize>>,
}

impl Chunk {
    /// Number of units in the chunk (the last may be partial).
    pub fn units(&self) -> usize {
        self.nonzero.len()
    }

    /// The bytes of unit `i` (a short slice for a partial last unit), or `None` if it is zero.
    pub fn unit_data(&self, i: usize) -> Option<Bytes> {
        if !self.nonzero.get(i).is_some_and(|b| *b) {
            return None;
        }
        let data = self.data.as_ref()?;
        let start = i * self.unit;
        let end = (start + self.unit).min(self.len);
        Some(data.slice(start..end))
    }

    /// Maximal runs of equal zero-ness, as `(byte range in the chunk, is non-zero)`.
    pub fn runs(&self) -> impl Iterator<Item = (std::ops::Range<usize>, bool)> + '_ {
        let mut i = 0usize;
        let n = self.units();
        std::iter::from_fn(move || {
            if i >= n {
                return None;
            }
            let v = self.nonzero[i];
            let start = i;
            while i < n && self.nonzero[i] == v {
                i += 1;
            }
            let lo = start * self.unit;
            let hi = (i * self.unit).min(self.len);
            Some((lo..hi, v))
        })
    }
}

/// The smallest unit a plan may use.
pub(crate) const MIN_UNIT: u64 = 512;
/// The largest unit a plan may use (VHD's largest practical block).
pub(crate) const MAX_UNIT: u64 = 256 << 20;

/// Allocation of a virtual disk at one unit size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    virtual_size: u64,
    unit: u64,
    allocated: BitVec,
}

impl Plan {
    /// A plan from its parts; `allocated` has one bit per unit.
    pub fn new(virtual_size: u64, unit: u64, allocated: BitVec) -> Result<Plan> {
        check_unit(unit)?;
        if allocated.len() as u64 != unit_count(virtual_size, unit) {
            return Err(Error::new(ErrorKind::InvalidArgument, "plan size mismatch"));
        }
        Ok(Plan {
            virtual_size,
            unit,
            allocated,
        })
    }

    /// Size of the virtual disk.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// The unit size.
    pub fn unit_size(&self) -> u64 {
        self.unit
    }

    /// Number of units (the last may be partial).
    pub fn units(&self) -> u64 {
        self.allocated.len() as u64
    }

    /// Whether unit `i` holds a non-zero byte.
    pub fn is_allocated(&self, i: UnitIndex) -> bool {
        usize::try_from(i.0)
            .ok()
            .and_then(|i| self.allocated.get(i).map(|b| *b))
            .unwrap_or(false)
    }

    /// Number of units holding data.
    pub fn allocated_units(&self) -> u64 {
        self.allocated.count_ones() as u64
    }

    /// The bitmap, one bit per unit.
    pub fn bitmap(&self) -> &BitVec {
        &self.allocated
    }
}

/// Number of `unit`-sized units covering `size` bytes.
pub(crate) fn unit_count(size: u64, unit: u64) -> u64 {
    size.div_ceil(unit)
}

pub(crate) fn check_unit(unit: u64) -> Result<()> {
    if unit.is_power_of_two() && (MIN_UNIT..=MAX_UNIT).contains(&unit) {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "unit size {unit} must be a power of two from {MIN_UNIT} to {MAX_UNIT}"
        )))
    }
}
