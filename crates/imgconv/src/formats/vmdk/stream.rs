//! The streamOptimized writer: one pass, in file order, grains compressed in parallel.
//!
//! ```text
//! sector 0   header: version 3, flags 0x30001, gdOffset all ones ("see the footer")
//! sector 1   embedded descriptor, padded to `overHead`
//! grains     per allocated grain, ascending LBA: u64 LBA, u32 length, zlib data, pad to 512
//! GT         after the grains of each grain table: a GT marker sector, then 512 u32 entries
//! GD         a GD marker sector, then the grain directory (u32 sector of each GT, 0 if none)
//! footer     a footer marker sector, then the header again with the real gdOffset
//! EOS        one zero sector (end-of-stream marker)
//! ```
//!
//! This is VMware's own layout (the footer in the last 1536 bytes, where streaming importers
//! and qemu look for it), not qemu's, which puts the directory at the start.

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Chunk;
use crate::model::Format;
use crate::model::Plan;
use crate::sink::Output;
use crate::writer::{plan_given, Encoder, Measure, Writer, WriterSummary};

use super::descriptor::descriptor;
use super::header::{
    SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, GD_AT_END, GRAIN_SECTORS, GT_ENTRIES,
};
use super::options::VmdkOptions;

/// Metadata before the first grain: header + descriptor, rounded to a grain like VMware.
const OVERHEAD_SECTORS: u64 = 128;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// The header of the stream (and, with the real `gd`, of its footer).
fn header(capacity: u64, gd: u64) -> Vec<u8> {
    SparseHeader::written(3, 1 | FLAG_COMPRESSED | FLAG_MARKERS, capacity, 0, gd)
        .with_overhead(OVERHEAD_SECTORS)
        .with_compression(1)
        .encode()
        .to_vec()
}

fn marker(sectors: u64, kind: u32) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..8].copy_from_slice(&sectors.to_le_bytes());
    b[12..16].copy_from_slice(&kind.to_le_bytes());
    b
}

/// A compressed grain record, ready to write: (grain index, record padded to 512 bytes).
pub(crate) type GrainRecord = (u64, Vec<u8>);

/// Compresses a chunk's non-zero grains (runs on the worker pool).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamEncoder {
    level: i32,
}

impl Encoder for StreamEncoder {
    type Encoded = Vec<GrainRecord>;

    fn encode(&self, chunk: Chunk) -> Result<Vec<GrainRecord>> {
        let gb = (GRAIN_SECTORS * 512) as usize;
        let first = chunk.offset / gb as u64;
        let level = libdeflater::CompressionLvl::new(self.level)
            .map_err(|_| Error::invalid_argument("bad compression level"))?;
        let mut c = libdeflater::Compressor::new(level);
        let mut out = Vec::new();
        let mut padded = Vec::new();
        for i in 0..chunk.units() {
            let Some(data) = chunk.unit_data(i) else {
                continue;
            };
            // The last grain of a disk that is not a grain multiple is compressed whole.
            let input: &[u8] = if data.len() < gb {
                padded.clear();
                padded.extend_from_slice(&data);
                padded.resize(gb, 0);
                &padded
            } else {
                &data
            };
            let index = first + i as u64;
            let mut rec = vec![0u8; 12 + c.zlib_compress_bound(gb)];
            let n = c
                .zlib_compress(input, &mut rec[12..])
                .map_err(|e| Error::new(ErrorKind::Io, format!("deflate failed: {e:?}")))?;
            rec[0..8].copy_from_slice(&(index * GRAIN_SECTORS).to_le_bytes());
            rec[8..12].copy_from_slice(&(n as u32).to_le_bytes());
            rec.truncate((12 + n).next_multiple_of(512));
            rec.resize((12 + n).next_multiple_of(512), 0);
            out.push((index, rec));
        }
        Ok(out)
    }
}

/// The streamOptimized writer.
#[derive(Debug)]
pub(crate) struct StreamWriter {
    opts: VmdkOptions,
    capacity: u64,
    gd: Vec<u32>,
    gt: Option<(usize, Vec<u32>)>,
    grains: u64,
}

impl StreamWriter {
    /// A writer for a disk of `virtual_size` bytes (rounded up to whole sectors).
    pub(crate) fn new(virtual_size: u64, opts: VmdkOptions) -> Result<StreamWriter> {
        let capacity = virtual_size.div_ceil(512);
        // Grain tables hold u32 sector numbers: a stream may not pass 2 TiB of file.
        if capacity > u64::from(u32::MAX) {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "streamOptimized VMDK holds at most 2 TiB",
            ));
        }
        let gd_entries = capacity.div_ceil(GRAIN_SECTORS).div_ceil(GT_ENTRIES);
        Ok(StreamWriter {
            opts,
            capacity,
            gd: vec![0; gd_entries as usize],
            gt: None,
            grains: 0,
        })
    }

    fn sector(out: &Output) -> Result<u32> {
        u32::try_from(out.position() / 512)
            .map_err(|_| Error::new(ErrorKind::LimitExceeded, "the stream passed 2 TiB"))
    }

    fn flush_gt(&mut self, out: &mut Output) -> Result<()> {
        if let Some((index, entries)) = self.gt.take() {
            out.write(&Bytes::from_vec(marker(4, MARKER_GT)))?;
            self.gd[index] = Self::sector(out)?;
            let mut b = Vec::with_capacity(2048);
            for e in entries {
                b.extend_from_slice(&e.to_le_bytes());
            }
            out.write(&Bytes::from_vec(b))?;
        }
        Ok(())
    }
}

impl Writer for StreamWriter {
    type Encoder = StreamEncoder;

    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn unit_size(&self) -> u64 {
        GRAIN_SECTORS * 512
    }

    fn needs_plan(&self) -> bool {
        false
    }

    fn light_encoder(&self) -> bool {
        false
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

    fn measure_needs_plan(&self) -> bool {
        true
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        let plan = plan_given(plan)?;
        let grains = self.capacity.div_ceil(GRAIN_SECTORS);
        let level = libdeflater::CompressionLvl::new(self.opts.level)
            .map_err(|_| Error::invalid_argument("bad compression level"))?;
        let bound = libdeflater::Compressor::new(level)
            .zlib_compress_bound((GRAIN_SECTORS * 512) as usize) as u64;
        let record = (12 + bound).next_multiple_of(512);
        let tables = |grains_with_data: &mut dyn Iterator<Item = usize>| {
            let mut n = 0u64;
            let mut last = None;
            for g in grains_with_data {
                let t = g as u64 / GT_ENTRIES;
                if last != Some(t) {
                    n += 1;
                    last = Some(t);
                }
            }
            n
        };
        let gd_bytes = (self.gd.len() * 4).next_multiple_of(512).max(512) as u64;
        // Header and descriptor; GT marker and table per grain table in use; GD marker and
        // directory; footer marker, footer and end-of-stream marker.
        let size = |records: u64, gts: u64| {
            OVERHEAD_SECTORS * 512
                + records * record
                + gts * (512 + 2048)
                + 512
                + gd_bytes
                + 3 * 512
        };
        let used = tables(&mut plan.bitmap().iter_ones());
        let all = tables(&mut (0..grains as usize));
        Ok(Measure {
            required: size(plan.allocated_units(), used),
            fully_allocated: size(grains, all),
            exact: false,
        })
    }

    fn encoder(&self) -> StreamEncoder {
        StreamEncoder {
            level: self.opts.level,
        }
    }

    fn begin(&mut self, _plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let extent = format!("RW {} SPARSE \"{}\"", self.capacity, self.opts.file_name);
        let text = descriptor(self.capacity, &self.opts, "streamOptimized", &extent);
        let mut head = header(self.capacity, GD_AT_END);
        let mut d = text.into_bytes();
        d.resize((OVERHEAD_SECTORS as usize - 1) * 512, 0);
        head.extend_from_slice(&d);
        out.write(&Bytes::from_vec(head))
    }

    fn commit(&mut self, grains: Vec<GrainRecord>, out: &mut Output) -> Result<()> {
        for (index, rec) in grains {
            let gt_index = (index / GT_ENTRIES) as usize;
            if self.gt.as_ref().is_some_and(|(i, _)| *i != gt_index) {
                self.flush_gt(out)?;
            }
            let sector = Self::sector(out)?;
            let (_, entries) = self
                .gt
                .get_or_insert_with(|| (gt_index, vec![0; GT_ENTRIES as usize]));
            entries[(index % GT_ENTRIES) as usize] = sector;
            out.write(&Bytes::from_vec(rec))?;
            self.grains += 1;
        }
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, _len: u64, _out: &mut Output) -> Result<bool> {
        // Zero grains are not stored, and a grain table is written when the next grain (or
        // the end) leaves it, so nothing happens here.
        Ok(true)
    }

    fn finish(mut self, out: &mut Output) -> Result<WriterSummary> {
        self.flush_gt(out)?;
        let gd_bytes = (self.gd.len() * 4).next_multiple_of(512).max(512);
        out.write(&Bytes::from_vec(marker(gd_bytes as u64 / 512, MARKER_GD)))?;
        let gd_sector = u64::from(Self::sector(out)?);
        let mut b = Vec::with_capacity(gd_bytes);
        for e in &self.gd {
            b.extend_from_slice(&e.to_le_bytes());
        }
        b.resize(gd_bytes, 0);
        out.write(&Bytes::from_vec(b))?;
        out.write(&Bytes::from_vec(marker(1, MARKER_FOOTER)))?;
        out.write(&Bytes::from_vec(header(self.capacity, gd_sector)))?;
        out.write(&Bytes::from_vec(marker(0, MARKER_EOS)))?;
        Ok(WriterSummary {
            format: Format::Vmdk,
            allocated_units: self.grains,
            unit_size: GRAIN_SECTORS * 512,
        })
    }
}
