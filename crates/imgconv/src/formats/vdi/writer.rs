//! Writing VDI images: dynamic or fixed, block map and data aligned to 1 MiB, in file order
//! from a plan, or into a file with the blocks as they come and the header and map last.

use bitvec::vec::BitVec;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::WriterOptions;
use crate::model::Format;
use crate::model::Plan;
use crate::sink::Output;
use crate::writer::{
    keep_room, mark_units, plan_given, write_unit_runs, write_zero_units, Deferral, FrontWriter,
    Measure, PassThrough, Units, Writer, WriterSummary,
};

use super::header::{Geometry, Header, HEADER_BYTES};
use super::{ALIGN, BLOCK_SIZE, FREE, MAX_BLOCKS};

/// Options of the VDI writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct VdiOptions {
    /// Every block allocated (`subformat=fixed` or `static=on`).
    pub fixed: bool,
}

impl VdiOptions {
    /// The option names VDI takes.
    pub(crate) const KNOWN: &'static [&'static str] = &["subformat", "static"];

    /// Take VDI's options.
    pub(crate) fn parse(mut opts: WriterOptions) -> Result<VdiOptions> {
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

/// The VDI writer.
#[derive(Debug)]
pub(crate) struct VdiWriter {
    opts: VdiOptions,
    size: u64,
    blocks: u64,
    data_offset: u64,
    allocated: u64,
    written: u64,
    identity: Option<crate::identity::Identity>,
    /// Tables last ([`Writer::begin_deferred`]): which blocks hold data, filled in as chunks
    /// come; the header and the map are written by `finish`.
    deferred: Option<BitVec>,
}

impl VdiWriter {
    /// A writer for a disk of `virtual_size` bytes.
    pub(crate) fn new(virtual_size: u64, opts: VdiOptions) -> Result<VdiWriter> {
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
            identity: None,
            deferred: None,
        })
    }

    /// The block map for the blocks `allocated` marks (every block of a fixed disk), padded to
    /// where the data starts; counts the blocks it allocates.
    fn block_map(&mut self, allocated: &BitVec) -> Vec<u8> {
        let mut map = Vec::with_capacity((self.data_offset - ALIGN) as usize);
        let mut next = 0u32;
        for b in 0..self.blocks as usize {
            let e = if self.opts.fixed || allocated.get(b).is_some_and(|x| *x) {
                next += 1;
                next - 1
            } else {
                FREE
            };
            map.extend_from_slice(&e.to_le_bytes());
        }
        self.allocated = u64::from(next);
        map.resize((self.data_offset - ALIGN) as usize, 0);
        map
    }

    /// Everything before the blocks, for the blocks `allocated` marks: header, padding, map.
    fn front(&mut self, allocated: &BitVec, out: &mut FrontWriter) -> Result<()> {
        let map = self.block_map(allocated);
        out.write(&Bytes::from_vec(self.header()))?;
        out.zeros(ALIGN - HEADER_BYTES as u64)?;
        out.write(&Bytes::from_vec(map))
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Header::new(
            if self.opts.fixed { 2 } else { 1 },
            self.size,
            BLOCK_SIZE as u32,
        );
        h.block_map_offset = ALIGN as u32;
        h.data_offset = self.data_offset as u32;
        let sectors = self.size / 512;
        let geometry = Geometry {
            cylinders: (sectors / (16 * 63)).clamp(1, 16383) as u32,
            heads: 16,
            sectors: 63,
            sector_size: 512,
        };
        h.legacy_geometry = geometry;
        h.lchs_geometry = geometry;
        h.blocks = self.blocks as u32;
        h.allocated = self.allocated as u32;
        let id = self.identity.as_ref();
        h.uuid_create = crate::identity::new_uuid(id, "vdi uuid").to_bytes_le();
        h.uuid_modify = crate::identity::new_uuid(id, "vdi modification uuid").to_bytes_le();
        h.encode().to_vec()
    }
}

impl Writer for VdiWriter {
    type Encoder = PassThrough;

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

    fn embeds_ids(&self) -> bool {
        true
    }

    fn set_identity(&mut self, identity: &crate::identity::Identity) {
        self.identity = Some(*identity);
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        let full = self.data_offset + self.blocks * BLOCK_SIZE;
        let required = if self.opts.fixed {
            full
        } else {
            self.data_offset + plan_given(plan)?.allocated_units() * BLOCK_SIZE
        };
        Ok(Measure {
            required,
            fully_allocated: full,
            exact: true,
        })
    }

    fn encoder(&self) -> PassThrough {
        PassThrough {
            all_units: self.opts.fixed,
        }
    }

    fn defers_tables(&self) -> bool {
        true
    }

    fn begin_deferred(&mut self, input: &Deferral, out: &mut Output) -> Result<bool> {
        // The map's size is the disk's, whatever the data: the blocks start where they would.
        let units = input.bound.bitmap().len();
        self.deferred = Some(keep_room(out, self.data_offset, units)?);
        Ok(true)
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let plan = plan
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal error: VDI needs a plan"))?;
        self.front(plan.bitmap(), &mut FrontWriter::new(out, None))
    }

    fn commit(&mut self, units: Units, out: &mut Output) -> Result<()> {
        if let Some(blocks) = &mut self.deferred {
            // No plan: the chunk's scan says which of its blocks hold data.
            mark_units(
                blocks,
                units.chunk.offset / BLOCK_SIZE,
                &units.chunk.nonzero,
                Format::Vdi,
            )?;
        }
        self.written += write_unit_runs(&units, out, self.opts.fixed)?;
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, len: u64, out: &mut Output) -> Result<bool> {
        self.written += write_zero_units(len, BLOCK_SIZE, self.opts.fixed, out)?;
        Ok(true)
    }

    fn finish(mut self, out: &mut Output) -> Result<WriterSummary> {
        if let Some(blocks) = self.deferred.take() {
            self.front(&blocks, &mut FrontWriter::new(out, Some(0)))?;
        }
        if self.written != self.allocated
            || out.position() != self.data_offset + self.allocated * BLOCK_SIZE
        {
            return Err(Error::new(
                ErrorKind::Internal,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::assert_tables_last_bytes;

    /// Blocks as they come and the header and map last, into a seekable output, give the
    /// bytes of the planned layout written in order into a stream.
    #[test]
    fn tables_last_writes_the_planned_bytes() -> Result<()> {
        let id = crate::identity::Identity::derive(&[7; 32], "vdi", 0);
        for fixed in [false, true] {
            assert_tables_last_bytes(&format!("fixed {fixed}"), |reader| {
                let mut w =
                    VdiWriter::new(reader.virtual_size(), VdiOptions { fixed }).expect("writer");
                w.set_identity(&id);
                w
            })?;
        }
        Ok(())
    }
}
