//! The reader contract: a virtual disk with positional reads and an extent map.

use std::ops::ControlFlow;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Extent, Format, ImageInfo, Location, Mapping};

/// A virtual disk opened from an image of some format.
///
/// Contract:
/// - [`Reader::read_at`] fills the whole buffer with the virtual disk's bytes at `offset`; the
///   range must lie inside `0..virtual_size()`. Unallocated and zero ranges read as zeros.
/// - [`Reader::map`] describes `[offset, offset + max_len)` from its start: what the first
///   `len` bytes are (`1 <= len <= max_len`). [`Extent::Zero`] and [`Extent::Unallocated`] are
///   promises that the bytes read as zeros; the pipeline never reads them. [`Extent::Data`]
///   makes no promise either way.
/// - Readers are positional and `Send + Sync`: many threads call them at once, with no
///   cursor and no lock around the whole image.
pub trait Reader: Send + Sync {
    /// The image's format.
    fn format(&self) -> Format;

    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;

    /// Fill `buf` with the virtual disk's bytes from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// What the range starting at `offset` holds, for how long (at most `max_len`).
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping>;

    /// Where the range starting at `offset` is stored (`imgconv map`): what [`Reader::map`]
    /// says, for a length over which the stored bytes are consecutive in the image file, with
    /// the file offset of the first one. The default knows no file offsets.
    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        Ok(Location::unstored(self.map(offset, max_len)?, false))
    }

    /// Check the image's structures against the format's rules (`imgconv check`), adding
    /// what is wrong to `report`. What the reader refused at opening is not seen here. The
    /// default finds nothing (RAW has no structures).
    fn check(&self, report: &mut crate::check::CheckReport) -> Result<()> {
        let _ = report;
        Ok(())
    }

    /// What `imgconv info` shows.
    fn info(&self) -> ImageInfo;

    /// Whether reading costs little next to copying the bytes (no decompression). A light
    /// reader and a light writer let the committing thread have a core to itself; a reader
    /// that inflates its data keeps every core for the workers.
    fn light_decoder(&self) -> bool {
        true
    }

    /// Start bringing `[offset, offset + len)` of the virtual disk into memory and answer
    /// whether small reads anywhere in it are then cheap. The planner then probes a unit's
    /// first sector instead of reading it whole. It asks for ranges the map calls data only,
    /// a few MiB at a time: advice over a hole would fill the page cache with zero pages. The
    /// default answers `false`: a unit of a compressed format costs its whole cluster
    /// whatever part of it is read.
    fn read_ahead(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }
}

/// Check that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub(crate) fn check_range(format: Format, size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("read of {len} bytes at {offset} is outside the {size}-byte virtual disk"),
        )
        .with_format(format)),
    }
}

/// The end of the range a `map` or `locate` call at `offset` may answer for: `max_len` bytes
/// at most, cut at the end of a `size`-byte disk; an error when `offset` is past it.
pub(crate) fn map_end(format: Format, size: u64, offset: u64, max_len: u64) -> Result<u64> {
    let end = offset.saturating_add(max_len).min(size);
    check_range(format, size, offset, end.saturating_sub(offset))?;
    Ok(end)
}

/// Iterate the map of `reader` over `[start, end)`, calling `f(offset, mapping)` for each
/// piece in order until it answers `Break`. Guards against a reader that answers with a zero
/// length.
pub(crate) fn for_each_mapping(
    reader: &dyn Reader,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, Mapping) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let mut m = reader.map(pos, end - pos)?;
        if m.len == 0 {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                "the image's map is inconsistent (empty extent)",
            )
            .with_format(reader.format())
            .with_offset(pos));
        }
        m.len = m.len.min(end - pos);
        if f(pos, m)?.is_break() {
            break;
        }
        pos += m.len;
    }
    Ok(())
}

/// Whether the whole of `[start, end)` is known to read as zeros without reading it.
pub(crate) fn is_known_zero(reader: &dyn Reader, start: u64, end: u64) -> Result<bool> {
    let mut all = true;
    for_each_mapping(reader, start, end, |_, m| {
        if m.extent == Extent::Data {
            all = false;
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(all)
}
