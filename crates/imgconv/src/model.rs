//! The model shared by readers, the planner, the pipeline and writers.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result};

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
}

impl Format {
    /// Every format, in the order the README lists them.
    pub const ALL: [Format; 5] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vdi,
    ];

    /// The canonical lower-case name (`qemu-img`'s, except `vhd` for its `vpc`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vdi => "vdi",
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
            other => Err(Error::invalid_argument(format!(
                "unknown format '{other}' (known: raw, qcow2, vmdk, vhd or vpc, vdi)"
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

/// A byte offset in the virtual disk (what the guest sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct GuestOffset(pub u64);

/// A byte offset in an image file (where a writer puts bytes, or a reader finds them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct HostOffset(pub u64);

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

/// Round `value` up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
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

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(align_up(0, 4096), Some(0));
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX, 4096), None);
    }
}
