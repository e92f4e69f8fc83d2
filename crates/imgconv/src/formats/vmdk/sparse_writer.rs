//! The monolithicSparse writer: uncompressed grains, layout planned from the allocation map
//! and written in file order; into a file, grains as they come and everything before them
//! last (the directories and tables are sized by the disk, so the grains start where they
//! would).
//!
//! ```text
//! sector 0     header: version 1, flags 0x3 (newline test, redundant grain directory)
//! sector 1     embedded descriptor (20 sectors)
//! RGD, RGTs    redundant grain directory, then its grain tables (4 sectors each)
//! GD, GTs      grain directory, then its grain tables
//! (pad)        to a whole grain: that is `overHead`
//! grains       allocated grains in guest order (zero grains are left out)
//! ```

use bitvec::vec::BitVec;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Format;
use crate::model::Plan;
use crate::sink::Output;
use crate::writer::{
    keep_room, mark_units, plan_given, write_unit_runs, Deferral, FrontWriter, Measure,
    PassThrough, Units, Writer, WriterSummary,
};

use super::descriptor::descriptor;
use super::header::{SparseHeader, DESCRIPTOR_SECTORS, FLAG_RGD, GRAIN_SECTORS, GT_ENTRIES};
use super::options::VmdkOptions;

/// Sectors of one grain table (512 u32 entries).
const GT_SECTORS: u64 = GT_ENTRIES * 4 / 512;

/// Where the metadata goes, in sectors.
#[derive(Debug, Clone, Copy)]
struct Layout {
    capacity: u64,
    gd_entries: u64,
    gd_sectors: u64,
    rgd: u64,
    gd: u64,
    overhead: u64,
}

impl Layout {
    fn new(capacity: u64) -> Layout {
        let gd_entries = capacity.div_ceil(GRAIN_SECTORS).div_ceil(GT_ENTRIES);
        let gd_sectors = (gd_entries * 4).div_ceil(512).max(1);
        let rgd = 1 + DESCRIPTOR_SECTORS;
        let gd = rgd + gd_sectors + gd_entries * GT_SECTORS;
        let end = gd + gd_sectors + gd_entries * GT_SECTORS;
        Layout {
            capacity,
            gd_entries,
            gd_sectors,
            rgd,
            gd,
            overhead: end.next_multiple_of(GRAIN_SECTORS),
        }
    }
}

/// The monolithicSparse writer.
#[derive(Debug)]
pub(crate) struct SparseWriter {
    opts: VmdkOptions,
    layout: Layout,
    grains: u64,
    planned: u64,
    /// Tables last ([`Writer::begin_deferred`]): which grains hold data, filled in as chunks
    /// come; the header, descriptor, directories and tables are written by `finish`.
    deferred: Option<BitVec>,
}

impl SparseWriter {
    /// A writer for a disk of `virtual_size` bytes (rounded up to whole sectors).
    pub(crate) fn new(virtual_size: u64, opts: VmdkOptions) -> Result<SparseWriter> {
        let capacity = virtual_size.div_ceil(512);
        let layout = Layout::new(capacity);
        // Grain tables hold u32 sector numbers: the file may not pass 2 TiB.
        if layout.overhead + capacity.next_multiple_of(GRAIN_SECTORS) > u64::from(u32::MAX) {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "monolithicSparse VMDK holds at most 2 TiB",
            ));
        }
        Ok(SparseWriter {
            opts,
            layout,
            grains: 0,
            planned: 0,
            deferred: None,
        })
    }

    /// Everything before the grains, for the grains `allocated` marks (counted): header,
    /// descriptor, both directories with their tables, padding to a whole grain.
    fn front(&mut self, allocated: &BitVec, out: &mut FrontWriter) -> Result<()> {
        let l = self.layout;
        self.planned = allocated.count_ones() as u64;
        let mut head = SparseHeader::written(1, 1 | FLAG_RGD, l.capacity, l.rgd, l.gd)
            .with_overhead(l.overhead)
            .encode()
            .to_vec();
        let extent = format!("RW {} SPARSE \"{}\"", l.capacity, self.opts.file_name);
        let mut d = descriptor(l.capacity, &self.opts, "monolithicSparse", &extent).into_bytes();
        if d.len() > (DESCRIPTOR_SECTORS * 512) as usize {
            return Err(Error::invalid_argument(
                "the descriptor does not fit its 20 sectors",
            ));
        }
        d.resize((DESCRIPTOR_SECTORS * 512) as usize, 0);
        head.extend_from_slice(&d);
        out.write(&Bytes::from_vec(head))?;
        for dir in [l.rgd, l.gd] {
            self.directory(dir + l.gd_sectors, out)?;
            self.tables(allocated, out)?;
        }
        let pad = l.overhead * 512 - out.position();
        out.zeros(pad)
    }

    fn directory(&self, first_gt: u64, out: &mut FrontWriter) -> Result<()> {
        let l = self.layout;
        let mut gd = Vec::with_capacity((l.gd_sectors * 512) as usize);
        for i in 0..l.gd_entries {
            gd.extend_from_slice(&((first_gt + i * GT_SECTORS) as u32).to_le_bytes());
        }
        gd.resize((l.gd_sectors * 512) as usize, 0);
        out.write(&Bytes::from_vec(gd))
    }

    fn tables(&self, allocated: &BitVec, out: &mut FrontWriter) -> Result<()> {
        let l = self.layout;
        let mut next = l.overhead;
        for t in 0..l.gd_entries {
            // A table with no grain is all zeros: a hole in a file output, and no pass over
            // its entries (a 1 TiB disk has 32768 tables).
            let range = (t * GT_ENTRIES) as usize..((t + 1) * GT_ENTRIES) as usize;
            if allocated
                .get(range.start..range.end.min(allocated.len()))
                .is_none_or(|b| b.not_any())
            {
                out.zeros(GT_SECTORS * 512)?;
                continue;
            }
            let mut gt = Vec::with_capacity((GT_SECTORS * 512) as usize);
            for g in t * GT_ENTRIES..(t + 1) * GT_ENTRIES {
                let e = if allocated.get(g as usize).is_some_and(|b| *b) {
                    let s = next;
                    next += GRAIN_SECTORS;
                    s as u32
                } else {
                    0
                };
                gt.extend_from_slice(&e.to_le_bytes());
            }
            out.write(&Bytes::from_vec(gt))?;
        }
        Ok(())
    }
}

impl Writer for SparseWriter {
    type Encoder = PassThrough;

    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn unit_size(&self) -> u64 {
        GRAIN_SECTORS * 512
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
        self.opts.identity = Some(*identity);
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        let l = self.layout;
        let grains = l.capacity.div_ceil(GRAIN_SECTORS);
        let allocated = plan_given(plan)?.allocated_units();
        Ok(Measure {
            required: (l.overhead + allocated * GRAIN_SECTORS) * 512,
            fully_allocated: (l.overhead + grains * GRAIN_SECTORS) * 512,
            exact: true,
        })
    }

    fn encoder(&self) -> PassThrough {
        PassThrough::default()
    }

    fn defers_tables(&self) -> bool {
        true
    }

    fn begin_deferred(&mut self, input: &Deferral, out: &mut Output) -> Result<bool> {
        // The directories and tables are sized by the disk: the grains start where they would.
        let units = input.bound.bitmap().len();
        self.deferred = Some(keep_room(out, self.layout.overhead * 512, units)?);
        Ok(true)
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let plan = plan.ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "internal error: monolithicSparse needs a plan",
            )
        })?;
        self.front(plan.bitmap(), &mut FrontWriter::new(out, None))
    }

    fn commit(&mut self, units: Units, out: &mut Output) -> Result<()> {
        if let Some(grains) = &mut self.deferred {
            // No plan: the chunk's scan says which of its grains hold data.
            let first = units.chunk.offset / (GRAIN_SECTORS * 512);
            mark_units(grains, first, &units.chunk.nonzero, Format::Vmdk)?;
        }
        self.grains += write_unit_runs(&units, out, false)?;
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, _len: u64, _out: &mut Output) -> Result<bool> {
        // Only planned grains are stored: zero chunks have none.
        Ok(true)
    }

    fn finish(mut self, out: &mut Output) -> Result<WriterSummary> {
        if let Some(grains) = self.deferred.take() {
            self.front(&grains, &mut FrontWriter::new(out, Some(0)))?;
        }
        let expected = (self.layout.overhead + self.planned * GRAIN_SECTORS) * 512;
        if self.grains != self.planned || out.position() != expected {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal error: monolithicSparse layout mismatch",
            ));
        }
        Ok(WriterSummary {
            format: Format::Vmdk,
            allocated_units: self.grains,
            unit_size: GRAIN_SECTORS * 512,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::options::WriterOptions;
    use crate::pipeline::assert_tables_last_bytes;

    /// Grains as they come and everything before them last, into a seekable output, give the
    /// bytes of the planned layout written in order into a stream.
    #[test]
    fn tables_last_writes_the_planned_bytes() -> Result<()> {
        let id = crate::identity::Identity::derive(&[7; 32], "vmdk", 0);
        let (_, opts) = VmdkOptions::parse(WriterOptions::new(), "disk.vmdk")?;
        assert_tables_last_bytes("monolithicSparse", |reader| {
            let mut w = SparseWriter::new(reader.virtual_size(), opts.clone()).expect("writer");
            w.set_identity(&id);
            w
        })
    }
}
