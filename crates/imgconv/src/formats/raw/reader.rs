//! The RAW reader.

use crate::error::Result;
use crate::model::{Format, ImageInfo, Location, Mapping};
use crate::reader::{check_range, Reader};
use crate::source::Source;

/// A RAW image over any [`Source`].
pub(crate) struct RawReader {
    source: Box<dyn Source>,
}

impl RawReader {
    /// Read `source` as a RAW disk.
    pub(crate) fn new(source: Box<dyn Source>) -> RawReader {
        RawReader { source }
    }
}

impl Reader for RawReader {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.source.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(Format::Raw, self.source.len(), offset, buf.len() as u64)?;
        self.source.read_exact_at(offset, buf)
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let size = self.source.len();
        check_range(
            Format::Raw,
            size,
            offset,
            max_len.min(size.saturating_sub(offset)),
        )?;
        let max_len = max_len.min(size - offset);
        let mut m = self.source.extent(offset, max_len)?;
        m.len = m.len.clamp(1, max_len.max(1));
        Ok(m)
    }

    fn read_ahead(&self, offset: u64, len: u64) -> bool {
        self.source.read_ahead(offset, len)
    }

    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        // The map already tells the file's holes (as unallocated ranges).
        Ok(Location {
            mapping: self.map(offset, max_len)?,
            host: Some(offset),
            compressed: false,
            hole: false,
        })
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: Format::Raw,
            virtual_size: self.source.len(),
            actual_size: self.source.allocated_size(),
            details: Vec::new(),
        }
    }
}
