//! The VHD writers: fixed (the disk, then the footer) and dynamic (footer copy, header, BAT,
//! the allocated blocks in guest order, footer), both in file order.

use bitvec::vec::BitVec;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::{parse_size, WriterOptions};
use crate::formats::raw::{RawEncoder, RawPiece, RawWriter};
use crate::model::Chunk;
use crate::model::Format;
use crate::model::Plan;
use crate::sink::Output;
use crate::writer::{
    keep_room, mark_units, plan_given, Deferral, Encoder, FrontWriter, Measure, Placement, Writer,
    WriterSummary,
};

use super::dynamic_header::DynamicHeader;
use super::{
    timestamp_at, timestamp_now, DiskType, Footer, Geometry, CREATOR, DEFAULT_BLOCK_SIZE,
    DYNAMIC_HEADER_SIZE, FOOTER_SIZE, MAX_DYNAMIC_SIZE, UNALLOCATED, VERSION,
};

const MIB: u64 = 1 << 20;
/// Where the BAT goes: after the footer copy and the dynamic header, as qemu and VirtualBox
/// place it.
const TABLE_OFFSET: u64 = FOOTER_SIZE + DYNAMIC_HEADER_SIZE;
/// Block sizes the writer offers (the reader takes any power of two from 512 bytes).
const MIN_BLOCK: u64 = 4 << 10;
const MAX_BLOCK: u64 = 16 << 20;

/// Options of the VHD writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VhdOptions {
    /// Fixed or dynamic.
    pub kind: DiskType,
    /// Block size of a dynamic disk.
    pub block_size: u64,
    /// Azure's rules: fixed, size rounded up to a whole MiB.
    pub azure: bool,
}

impl Default for VhdOptions {
    fn default() -> Self {
        VhdOptions {
            kind: DiskType::Dynamic,
            block_size: DEFAULT_BLOCK_SIZE,
            azure: false,
        }
    }
}

fn on_off(key: &str, v: Option<String>) -> Result<Option<bool>> {
    match v.as_deref() {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(o) => Err(Error::invalid_argument(format!(
            "{key} '{o}' is not on or off"
        ))),
    }
}

impl VhdOptions {
    /// The option names VHD takes.
    pub(crate) const KNOWN: &'static [&'static str] =
        &["subformat", "block_size", "azure", "force_size"];

    /// Take VHD's options.
    pub(crate) fn parse(mut opts: WriterOptions) -> Result<VhdOptions> {
        let mut o = VhdOptions::default();
        let subformat = opts.take("subformat");
        match subformat.as_deref() {
            None | Some("dynamic") => {}
            Some("fixed") => o.kind = DiskType::Fixed,
            Some(s) => {
                return Err(Error::invalid_argument(format!(
                    "subformat '{s}' is not one of dynamic, fixed"
                )))
            }
        }
        let block = opts.take("block_size");
        if let Some(b) = &block {
            let bytes = parse_size(b)?;
            if !bytes.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bytes) {
                return Err(Error::invalid_argument(format!(
                    "block_size {b} must be a power of two from 4K to 16M"
                )));
            }
            o.block_size = bytes;
        }
        o.azure = on_off("azure", opts.take("azure"))?.unwrap_or(false);
        // qemu's force_size=on is what this writer always does: the exact size is kept.
        if on_off("force_size", opts.take("force_size"))? == Some(false) {
            return Err(Error::invalid_argument(
                "force_size=off (rounding the size up to a CHS geometry) is not offered: the \
                 exact size is always kept",
            ));
        }
        if o.azure {
            if subformat.as_deref() == Some("dynamic") || block.is_some() {
                return Err(Error::invalid_argument(
                    "azure=on writes a fixed VHD: it takes neither subformat=dynamic nor \
                     block_size",
                ));
            }
            o.kind = DiskType::Fixed;
        } else if o.kind == DiskType::Fixed && block.is_some() {
            return Err(Error::invalid_argument(
                "block_size applies to dynamic VHDs only",
            ));
        }
        opts.finish(Format::Vhd, Self::KNOWN)?;
        Ok(o)
    }

    /// The output disk's size for an input of `size` bytes, and the note saying why it
    /// differs, if it does.
    pub(crate) fn disk_size(&self, size: u64) -> Result<(u64, Option<String>)> {
        let (unit, why) = if self.azure {
            (MIB, "a whole number of MiB, as Azure requires")
        } else {
            (512, "whole 512-byte sectors")
        };
        let disk = size
            .checked_next_multiple_of(unit)
            .ok_or_else(|| Error::new(ErrorKind::LimitExceeded, "the disk is too large"))?;
        if self.kind == DiskType::Dynamic && disk > MAX_DYNAMIC_SIZE {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "a dynamic VHD holds at most 2040 GiB ({MAX_DYNAMIC_SIZE} bytes), this disk \
                     has {disk}; use -o subformat=fixed"
                ),
            )
            .with_format(Format::Vhd));
        }
        let note = (disk != size).then(|| {
            format!(
                "virtual size rounded up from {size} to {disk} bytes ({why}); the added tail \
                 reads as zeros"
            )
        });
        Ok((disk, note))
    }
}

/// The footer of a new disk: dated now with a random id, or both from `identity`.
fn new_footer(
    kind: DiskType,
    disk_size: u64,
    data_offset: u64,
    identity: Option<&crate::identity::Identity>,
) -> Footer {
    let mut version = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = version.next().unwrap_or(0);
    let minor = version.next().unwrap_or(0);
    Footer {
        version: VERSION,
        data_offset,
        timestamp: identity.map_or_else(timestamp_now, |i| timestamp_at(i.epoch())),
        creator: *CREATOR,
        creator_version: (major << 16) | (minor & 0xffff),
        creator_os: *b"Wi2k",
        original_size: disk_size,
        current_size: disk_size,
        geometry: Geometry::for_size(disk_size),
        disk_type: kind.code(),
        checksum: 0,
        uuid: *crate::identity::new_uuid(identity, "vhd unique id").as_bytes(),
    }
}

/// The fixed VHD writer: the disk as RAW (zero runs as holes), padded to the disk size, then
/// the footer.
#[derive(Debug)]
pub(crate) struct VhdFixedWriter {
    raw: RawWriter,
    disk_size: u64,
    footer: Vec<u8>,
    note: Option<String>,
}

impl VhdFixedWriter {
    /// A writer for an input of `size` bytes.
    pub(crate) fn new(size: u64, opts: VhdOptions) -> Result<VhdFixedWriter> {
        let (disk_size, note) = opts.disk_size(size)?;
        Ok(VhdFixedWriter {
            raw: RawWriter::padded(size, disk_size),
            disk_size,
            footer: new_footer(DiskType::Fixed, disk_size, u64::MAX, None).encode(),
            note,
        })
    }
}

impl Writer for VhdFixedWriter {
    type Encoder = RawEncoder;

    fn format(&self) -> Format {
        Format::Vhd
    }

    fn unit_size(&self) -> u64 {
        self.raw.unit_size()
    }

    fn needs_plan(&self) -> bool {
        false
    }

    fn output_len(&self) -> Option<u64> {
        Some(self.disk_size + FOOTER_SIZE)
    }

    fn embeds_ids(&self) -> bool {
        true
    }

    fn set_identity(&mut self, identity: &crate::identity::Identity) {
        self.footer =
            new_footer(DiskType::Fixed, self.disk_size, u64::MAX, Some(identity)).encode();
    }

    fn disk_size(&self) -> Option<u64> {
        Some(self.disk_size)
    }

    fn notes(&self) -> Vec<String> {
        self.note.iter().cloned().collect()
    }

    fn encoder(&self) -> RawEncoder {
        RawEncoder
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        self.raw.begin(plan, out)
    }

    fn commit(&mut self, pieces: Vec<RawPiece>, out: &mut Output) -> Result<()> {
        self.raw.commit(pieces, out)
    }

    fn commit_zeros(&mut self, offset: u64, len: u64, out: &mut Output) -> Result<bool> {
        self.raw.commit_zeros(offset, len, out)
    }

    fn finish(self, out: &mut Output) -> Result<WriterSummary> {
        let summary = self.raw.finish(out)?;
        out.write(&Bytes::from_vec(self.footer))?;
        Ok(WriterSummary {
            format: Format::Vhd,
            ..summary
        })
    }
}

/// Lays out a chunk's blocks: each planned one (or, for a fixed layout, each one) whole,
/// where runs of zeros (4 KiB granules) become holes in a file output, as in a RAW one. Shared
/// by the dynamic VHD writer (which puts a sector bitmap at each block's start) and the VHDX
/// writers.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockEncoder {
    /// Lay out every block, planned or not (fixed layouts).
    pub all_units: bool,
    /// What each block starts with (a dynamic VHD's sector bitmap), for the workers' writes
    /// ([`Encoder::write_placed`]); the committing thread writes it from its own copy
    /// otherwise.
    pub head: Option<Bytes>,
}

/// A piece of block-structured output.
#[derive(Debug, Clone)]
pub(crate) enum BlockPiece {
    /// Block number N of the disk starts here (with its head, if the layout has one).
    Start(u64),
    /// Block number N starts here, its head already written by a worker.
    StartWritten(u64),
    /// Bytes to write.
    Data(Bytes),
    /// Bytes a worker already wrote in place.
    Written(Bytes),
    /// A run of zeros.
    Zeros(u64),
}

fn push_zeros(pieces: &mut Vec<BlockPiece>, n: usize) {
    if n == 0 {
        return;
    }
    if let Some(BlockPiece::Zeros(z)) = pieces.last_mut() {
        *z += n as u64;
    } else {
        pieces.push(BlockPiece::Zeros(n as u64));
    }
}

/// Append the pieces of `d[lo..hi]`: the `unread` ranges (sorted; never read, not filled) as
/// zero runs without a look, the rest scanned for zero granules.
fn push_read(
    pieces: &mut Vec<BlockPiece>,
    d: &Bytes,
    unread: &[std::ops::Range<usize>],
    lo: usize,
    hi: usize,
) {
    let mut at = lo;
    let mut next = unread.partition_point(|r| r.end <= lo);
    while at < hi {
        match unread.get(next).filter(|r| r.start < hi) {
            Some(r) if r.start <= at => {
                let end = r.end.min(hi);
                push_zeros(pieces, end - at);
                at = end;
                next += 1;
            }
            Some(r) => {
                push_data(pieces, d, at, r.start);
                at = r.start;
            }
            None => {
                push_data(pieces, d, at, hi);
                at = hi;
            }
        }
    }
}

/// Append the pieces of `d` (zero granules as zero runs).
fn push_data(pieces: &mut Vec<BlockPiece>, d: &Bytes, lo: usize, hi: usize) {
    let mut at = lo;
    while at < hi {
        let end = (at + GRANULE).min(hi);
        let mut stop = end;
        let zero = crate::zero::is_zero(&d[at..end]);
        while stop < hi {
            let next = (stop + GRANULE).min(hi);
            if crate::zero::is_zero(&d[stop..next]) != zero {
                break;
            }
            stop = next;
        }
        if zero {
            push_zeros(pieces, stop - at);
        } else {
            pieces.push(BlockPiece::Data(d.slice(at..stop)));
        }
        at = stop;
    }
}

impl Encoder for BlockEncoder {
    type Encoded = Vec<BlockPiece>;

    fn encode(&self, chunk: Chunk) -> Result<Vec<BlockPiece>> {
        let unit = chunk.unit;
        let mut pieces = Vec::new();
        for (range, planned) in chunk.runs() {
            if !planned && !self.all_units {
                continue;
            }
            let mut lo = range.start;
            while lo < range.end {
                let hi = (lo + unit).min(range.end);
                pieces.push(BlockPiece::Start((chunk.offset + lo as u64) / unit as u64));
                match &chunk.data {
                    Some(d) if planned => push_read(&mut pieces, d, &chunk.unread, lo, hi),
                    _ => push_zeros(&mut pieces, hi - lo),
                }
                push_zeros(&mut pieces, unit - (hi - lo));
                lo = hi;
            }
        }
        Ok(pieces)
    }

    fn fills_unread(&self) -> bool {
        false
    }

    fn placement(&self) -> Placement {
        // Dynamic layouts store the blocks holding data one after the other in guest order;
        // fixed ones store every block (zero chunks too, from the committing thread).
        if self.all_units {
            Placement::Committed
        } else {
            Placement::Appended
        }
    }

    fn placed_len(&self, pieces: &Vec<BlockPiece>) -> u64 {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        pieces
            .iter()
            .map(|p| match p {
                BlockPiece::Start(_) | BlockPiece::StartWritten(_) => head,
                BlockPiece::Data(b) | BlockPiece::Written(b) => b.len() as u64,
                BlockPiece::Zeros(n) => *n,
            })
            .sum()
    }

    fn write_placed(
        &self,
        pieces: &mut Vec<BlockPiece>,
        at: u64,
        out: &crate::sink::Placed,
    ) -> Result<()> {
        // Zero runs stay holes of the new file, as the committing thread leaves them.
        let mut pos = at;
        for piece in pieces.iter_mut() {
            match piece {
                BlockPiece::Start(block) => {
                    if let Some(h) = &self.head {
                        out.write_at(pos, h)?;
                        pos += h.len() as u64;
                    }
                    *piece = BlockPiece::StartWritten(*block);
                }
                BlockPiece::Data(b) => {
                    out.write_at(pos, b)?;
                    pos += b.len() as u64;
                    *piece = BlockPiece::Written(b.clone());
                }
                BlockPiece::Zeros(n) => pos += *n,
                BlockPiece::StartWritten(_) | BlockPiece::Written(_) => {}
            }
        }
        Ok(())
    }
}

/// Zero runs inside a block are found at this granularity (a file system block).
const GRANULE: usize = 4096;

/// Where a dynamic disk's parts go.
#[derive(Debug, Clone, Copy)]
struct DynamicLayout {
    disk_size: u64,
    block_size: u64,
    bitmap_size: u64,
    entries: u64,
    /// Offset of the first block: after the BAT, padded to a whole sector.
    blocks_at: u64,
}

impl DynamicLayout {
    fn new(disk_size: u64, block_size: u64) -> Result<DynamicLayout> {
        let entries = disk_size.div_ceil(block_size);
        let bitmap_size = (block_size / 512).div_ceil(8).next_multiple_of(512);
        let blocks_at = TABLE_OFFSET + (entries * 4).next_multiple_of(512);
        let l = DynamicLayout {
            disk_size,
            block_size,
            bitmap_size,
            entries,
            blocks_at,
        };
        // BAT entries are 32-bit sector numbers: the last block must start below 2 TiB.
        if l.block_at(entries.saturating_sub(1)) / 512 >= u64::from(UNALLOCATED) {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "with {block_size}-byte blocks this disk does not fit a VHD's 32-bit block \
                     table; use a larger block_size"
                ),
            )
            .with_format(Format::Vhd));
        }
        Ok(l)
    }

    fn block_at(&self, index: u64) -> u64 {
        self.blocks_at + index * (self.bitmap_size + self.block_size)
    }

    fn file_size(&self, allocated: u64) -> u64 {
        self.block_at(allocated) + FOOTER_SIZE
    }
}

/// The dynamic VHD writer.
#[derive(Debug)]
pub(crate) struct VhdDynamicWriter {
    layout: DynamicLayout,
    footer: Vec<u8>,
    bitmap: Bytes,
    allocated: u64,
    written: u64,
    note: Option<String>,
    /// Tables last ([`Writer::begin_deferred`]): which blocks hold data, filled in as blocks
    /// come; the footer's copy, the header and the BAT are written by `finish`.
    deferred: Option<BitVec>,
}

impl VhdDynamicWriter {
    /// A writer for an input of `size` bytes.
    pub(crate) fn new(size: u64, opts: VhdOptions) -> Result<VhdDynamicWriter> {
        let (disk_size, note) = opts.disk_size(size)?;
        let layout = DynamicLayout::new(disk_size, opts.block_size)?;
        // Every sector of a written block is marked as holding data.
        let mut bitmap = vec![0u8; layout.bitmap_size as usize];
        let sectors = (opts.block_size / 512) as usize;
        bitmap[..sectors / 8].fill(0xff);
        Ok(VhdDynamicWriter {
            layout,
            footer: new_footer(DiskType::Dynamic, disk_size, FOOTER_SIZE, None).encode(),
            bitmap: Bytes::from_vec(bitmap),
            allocated: 0,
            written: 0,
            note,
            deferred: None,
        })
    }

    fn header(&self) -> Vec<u8> {
        let l = &self.layout;
        DynamicHeader::new(TABLE_OFFSET, l.entries as u32, l.block_size).encode()
    }

    /// Everything before the blocks, for the blocks `allocated` marks: the footer's copy, the
    /// dynamic header, the BAT.
    fn front(&mut self, allocated: &BitVec, out: &mut FrontWriter) -> Result<()> {
        let bat = self.bat(allocated);
        out.write(&Bytes::from_vec(self.footer.clone()))?;
        out.write(&Bytes::from_vec(self.header()))?;
        out.write(&Bytes::from_vec(bat))
    }

    /// The BAT for the blocks `allocated` marks, in guest order, padded to a whole sector;
    /// counts the blocks it allocates.
    fn bat(&mut self, allocated: &BitVec) -> Vec<u8> {
        let l = self.layout;
        let mut bat = Vec::with_capacity((l.blocks_at - TABLE_OFFSET) as usize);
        let mut next = 0u64;
        for b in 0..l.entries as usize {
            let e = if allocated.get(b).is_some_and(|x| *x) {
                next += 1;
                (l.block_at(next - 1) / 512) as u32
            } else {
                UNALLOCATED
            };
            bat.extend_from_slice(&e.to_be_bytes());
        }
        // The rest of the BAT's last sector reads as unallocated entries too.
        bat.resize((l.blocks_at - TABLE_OFFSET) as usize, 0xff);
        self.allocated = next;
        bat
    }
}

impl Writer for VhdDynamicWriter {
    type Encoder = BlockEncoder;

    fn format(&self) -> Format {
        Format::Vhd
    }

    fn unit_size(&self) -> u64 {
        self.layout.block_size
    }

    fn needs_plan(&self) -> bool {
        true
    }

    fn output_len(&self) -> Option<u64> {
        None
    }

    fn disk_size(&self) -> Option<u64> {
        Some(self.layout.disk_size)
    }

    fn embeds_ids(&self) -> bool {
        true
    }

    fn set_identity(&mut self, identity: &crate::identity::Identity) {
        self.footer = new_footer(
            DiskType::Dynamic,
            self.layout.disk_size,
            FOOTER_SIZE,
            Some(identity),
        )
        .encode();
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        let l = &self.layout;
        Ok(Measure {
            required: l.file_size(plan_given(plan)?.allocated_units()),
            fully_allocated: l.file_size(l.entries),
            exact: true,
        })
    }

    fn notes(&self) -> Vec<String> {
        self.note.iter().cloned().collect()
    }

    fn encoder(&self) -> BlockEncoder {
        BlockEncoder {
            all_units: false,
            head: Some(self.bitmap.clone()),
        }
    }

    fn defers_tables(&self) -> bool {
        true
    }

    fn begin_deferred(&mut self, input: &Deferral, out: &mut Output) -> Result<bool> {
        // The BAT's size is the disk's, whatever the data: the blocks start where they would.
        let _ = input;
        let units = self.layout.entries as usize;
        self.deferred = Some(keep_room(out, self.layout.blocks_at, units)?);
        Ok(true)
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let plan = plan
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal error: VHD needs a plan"))?;
        self.front(plan.bitmap(), &mut FrontWriter::new(out, None))
    }

    fn commit(&mut self, pieces: Vec<BlockPiece>, out: &mut Output) -> Result<()> {
        for piece in pieces {
            match piece {
                BlockPiece::Start(block) => {
                    if let Some(blocks) = &mut self.deferred {
                        let one = bitvec::bits![usize, bitvec::order::Lsb0; 1];
                        mark_units(blocks, block, one, Format::Vhd)?;
                    }
                    self.written += 1;
                    out.write(&self.bitmap)?;
                }
                BlockPiece::StartWritten(block) => {
                    if let Some(blocks) = &mut self.deferred {
                        let one = bitvec::bits![usize, bitvec::order::Lsb0; 1];
                        mark_units(blocks, block, one, Format::Vhd)?;
                    }
                    self.written += 1;
                    out.written(&self.bitmap)?;
                }
                BlockPiece::Data(b) => out.write(&b)?,
                BlockPiece::Written(b) => out.written(&b)?,
                BlockPiece::Zeros(n) => out.write_zeros(n)?,
            }
        }
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, _len: u64, _out: &mut Output) -> Result<bool> {
        // Blocks are laid out for planned units only: a zero chunk has none.
        Ok(true)
    }

    fn finish(mut self, out: &mut Output) -> Result<WriterSummary> {
        if let Some(blocks) = self.deferred.take() {
            self.front(&blocks, &mut FrontWriter::new(out, Some(0)))?;
        }
        if self.written != self.allocated || out.position() != self.layout.block_at(self.allocated)
        {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal error: VHD layout mismatch",
            ));
        }
        out.write(&Bytes::from_vec(self.footer))?;
        Ok(WriterSummary {
            format: Format::Vhd,
            allocated_units: self.allocated,
            unit_size: self.layout.block_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::assert_tables_last_bytes;

    /// Blocks as they come and the footer's copy, header and BAT last, into a seekable
    /// output, give the bytes of the planned layout written in order into a stream.
    #[test]
    fn tables_last_writes_the_planned_bytes() -> Result<()> {
        let id = crate::identity::Identity::derive(&[7; 32], "vhd", 0);
        for block_size in [2 << 20, 512 << 10] {
            let opts = VhdOptions {
                block_size,
                ..VhdOptions::default()
            };
            assert_tables_last_bytes(&format!("block size {block_size}"), |reader| {
                let mut w = VhdDynamicWriter::new(reader.virtual_size(), opts).expect("writer");
                w.set_identity(&id);
                w
            })?;
        }
        Ok(())
    }

    /// The pieces as the bytes they stand for.
    fn expand(pieces: &[BlockPiece]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                BlockPiece::Start(_) | BlockPiece::StartWritten(_) => {}
                BlockPiece::Data(d) | BlockPiece::Written(d) => out.extend_from_slice(d),
                BlockPiece::Zeros(n) => out.resize(out.len() + *n as usize, 0),
            }
        }
        out
    }

    #[test]
    fn unread_ranges_are_zeros_whatever_the_buffer_holds() {
        // One 64 KiB block: data at 4-12 KiB and 40-41 KiB, the rest never read (the
        // buffer there holds a previous chunk's bytes, as a pooled buffer may).
        let unit = 64 << 10;
        let mut bytes = vec![0xeeu8; unit];
        bytes[4096..12288].fill(7);
        bytes[40960..41984].fill(9);
        bytes[41984..45056].fill(0);
        let chunk = Chunk {
            offset: 0,
            len: unit,
            data: Some(Bytes::from_vec(bytes.clone())),
            unit,
            nonzero: BitVec::repeat(true, 1),
            unread: vec![0..4096, 12288..40960, 45056..unit],
        };
        let enc = BlockEncoder::default();
        assert!(!enc.fills_unread());
        let pieces = enc.encode(chunk).unwrap_or_default();
        let mut want = vec![0u8; unit];
        want[4096..12288].fill(7);
        want[40960..41984].fill(9);
        assert_eq!(expand(&pieces), want);
        // The unread ranges come out as zero runs, never as data; the read ones are scanned
        // by 4 KiB granule (40-44 KiB holds data).
        let data: usize = pieces
            .iter()
            .map(|p| match p {
                BlockPiece::Data(d) => d.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(data, 8192 + 4096);
    }
}
