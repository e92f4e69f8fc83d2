//! `imgconv map`: an image's allocation, extent by extent, as `qemu-img map` describes it.

use serde::Serialize;

use crate::error::Result;
use crate::model::{Extent, Format, Location};
use crate::progress::CancelToken;
use crate::reader::Reader;

/// One entry of an image's map, with `qemu-img map --output json`'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// Guest offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// How many backing files down the data is (always 0: no backing files are followed).
    pub depth: u32,
    /// Whether this image defines the range (as opposed to leaving it to a backing file).
    pub present: bool,
    /// Whether the range reads as zeros without its bytes being read.
    pub zero: bool,
    /// Whether the range is stored data.
    pub data: bool,
    /// Whether the range is stored compressed.
    pub compressed: bool,
    /// Where the range's bytes are in the image file, when stored as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl MapEntry {
    fn new(format: Format, start: u64, l: &Location) -> MapEntry {
        let data = l.mapping.extent == Extent::Data;
        // Formats that can name a backing file leave unallocated ranges to it; the others
        // define every byte (qemu reports them present and zero).
        let backed = matches!(format, Format::Qcow2 | Format::Vmdk);
        MapEntry {
            start,
            length: l.mapping.len,
            depth: 0,
            present: !(backed && l.mapping.extent == Extent::Unallocated),
            zero: !data || l.hole,
            data,
            compressed: l.compressed,
            offset: l.host,
        }
    }

    /// Whether `next` continues this entry (same kind, and stored right after it).
    fn continued_by(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && (
                self.depth,
                self.present,
                self.zero,
                self.data,
                self.compressed,
            ) == (
                next.depth,
                next.present,
                next.zero,
                next.data,
                next.compressed,
            )
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

/// Walk the map of `reader` from start to end, calling `f` with each entry, consecutive
/// pieces of the same kind merged as `qemu-img map` merges them. Memory stays flat whatever
/// the number of entries.
pub fn map_image(
    reader: &dyn Reader,
    cancel: &CancelToken,
    mut f: impl FnMut(&MapEntry) -> Result<()>,
) -> Result<()> {
    let size = reader.virtual_size();
    let format = reader.format();
    let mut pending: Option<MapEntry> = None;
    let mut pos = 0u64;
    while pos < size {
        cancel.check()?;
        let l = reader.locate(pos, size - pos)?;
        let mut l = l;
        l.mapping.len = l.mapping.len.clamp(1, size - pos);
        let e = MapEntry::new(format, pos, &l);
        pending = match pending {
            Some(mut p) if p.continued_by(&e) => {
                p.length += e.length;
                Some(p)
            }
            Some(p) => {
                f(&p)?;
                Some(e)
            }
            None => Some(e),
        };
        pos += l.mapping.len;
    }
    if let Some(p) = pending {
        f(&p)?;
    }
    Ok(())
}
