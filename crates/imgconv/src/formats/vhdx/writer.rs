//! The VHDX writer: fixed and dynamic disks in one pass, in file order.
//!
//! Layout (qemu-img's and Hyper-V's order): the file identifier, both headers and both region
//! tables in the first MiB; an empty 1 MiB log at 1 MiB (its GUID is zero: nothing to
//! replay); the metadata region at 2 MiB; the BAT at 3 MiB (whole MiBs); then the payload
//! blocks in guest order, each 1 MiB aligned. A fixed disk stores every block (its zero runs
//! are holes in a file output); a dynamic one only the blocks holding data, the others'
//! BAT entries saying "not present" (they read as zeros).

use bitvec::vec::BitVec;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::{parse_size, WriterOptions};
use crate::formats::vhd::{BlockEncoder, BlockPiece};
use crate::model::{Format, Plan};
use crate::sink::Output;
use crate::writer::{
    keep_room, mark_units, plan_given, write_zero_units, Deferral, FrontWriter, Measure, Writer,
    WriterSummary,
};

use super::*;

const LOG_AT: u64 = MIB;
const LOG_LEN: u64 = MIB;
const METADATA_AT: u64 = 2 * MIB;
const METADATA_LEN: u64 = MIB;
const BAT_AT: u64 = 3 * MIB;
/// Where the metadata items start inside the metadata region.
const ITEMS_AT: usize = 64 << 10;
/// The default block size (Hyper-V's and qemu-img's for most disks).
const DEFAULT_BLOCK: u64 = 32 * MIB;

/// Options of the VHDX writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VhdxOptions {
    /// Every block stored (`subformat=fixed`).
    pub fixed: bool,
    /// The payload block size.
    pub block_size: u64,
    /// The logical sector size (512 or 4096).
    pub logical_sector: u64,
    /// The physical sector size (512 or 4096).
    pub physical_sector: u64,
}

impl Default for VhdxOptions {
    fn default() -> Self {
        VhdxOptions {
            fixed: false,
            block_size: DEFAULT_BLOCK,
            logical_sector: 512,
            physical_sector: 4096,
        }
    }
}

fn sector_size(key: &str, v: Option<String>) -> Result<Option<u64>> {
    match v.as_deref() {
        None => Ok(None),
        Some("512") => Ok(Some(512)),
        Some("4096" | "4K" | "4k") => Ok(Some(4096)),
        Some(o) => Err(Error::invalid_argument(format!(
            "{key} '{o}' is not 512 or 4096"
        ))),
    }
}

impl VhdxOptions {
    /// The option names VHDX takes.
    pub(crate) const KNOWN: &'static [&'static str] = &[
        "subformat",
        "block_size",
        "logical_sector_size",
        "physical_sector_size",
    ];

    /// Take VHDX's options.
    pub(crate) fn parse(mut opts: WriterOptions) -> Result<VhdxOptions> {
        let mut o = VhdxOptions::default();
        match opts.take("subformat").as_deref() {
            None | Some("dynamic") => {}
            Some("fixed") => o.fixed = true,
            Some(s) => {
                return Err(Error::invalid_argument(format!(
                    "subformat '{s}' is not one of dynamic, fixed"
                )))
            }
        }
        if let Some(b) = opts.take("block_size") {
            let bytes = parse_size(&b)?;
            if !bytes.is_power_of_two() || !(MIB..=256 * MIB).contains(&bytes) {
                return Err(Error::invalid_argument(format!(
                    "block_size {b} must be a power of two from 1M to 256M"
                )));
            }
            o.block_size = bytes;
        }
        if let Some(s) = sector_size("logical_sector_size", opts.take("logical_sector_size"))? {
            o.logical_sector = s;
        }
        if let Some(s) = sector_size("physical_sector_size", opts.take("physical_sector_size"))? {
            o.physical_sector = s;
        }
        if o.physical_sector < o.logical_sector {
            return Err(Error::invalid_argument(
                "physical_sector_size must not be smaller than logical_sector_size",
            ));
        }
        opts.finish(Format::Vhdx, Self::KNOWN)?;
        Ok(o)
    }
}

/// Where a disk's parts go.
#[derive(Debug, Clone, Copy)]
struct Layout {
    disk_size: u64,
    block_size: u64,
    data_blocks: u64,
    chunk_ratio: u64,
    /// Offset of the first payload block (after the BAT, whole MiBs).
    payload_at: u64,
}

impl Layout {
    fn new(size: u64, o: &VhdxOptions) -> Result<(Layout, Option<String>)> {
        let disk_size = size
            .max(1)
            .checked_next_multiple_of(o.logical_sector)
            .filter(|d| *d <= MAX_DISK_SIZE)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::LimitExceeded,
                    format!("a VHDX holds at most 64 TiB ({MAX_DISK_SIZE} bytes)"),
                )
                .with_format(Format::Vhdx)
            })?;
        let note = (disk_size != size).then(|| {
            format!(
                "virtual size rounded up from {size} to {disk_size} bytes (whole {}-byte \
                 sectors); the added tail reads as zeros",
                o.logical_sector
            )
        });
        let data_blocks = disk_size.div_ceil(o.block_size);
        let chunk_ratio = ((1u64 << 23) * o.logical_sector) / o.block_size;
        let bat_entries = data_blocks + (data_blocks - 1) / chunk_ratio;
        let payload_at = BAT_AT + (bat_entries * 8).next_multiple_of(MIB);
        Ok((
            Layout {
                disk_size,
                block_size: o.block_size,
                data_blocks,
                chunk_ratio,
                payload_at,
            },
            note,
        ))
    }

    fn file_size(&self, stored_blocks: u64) -> u64 {
        self.payload_at + stored_blocks * self.block_size
    }

    /// The BAT: `stored(i)` says whether data block `i` is stored; stored blocks follow each
    /// other from `payload_at`. Returns the table (whole MiBs) and the stored count.
    fn bat(&self, stored: impl Fn(u64) -> bool) -> (Vec<u8>, u64) {
        let mut bat = vec![0u8; (self.payload_at - BAT_AT) as usize];
        let mut next = 0u64;
        for i in 0..self.data_blocks {
            if !stored(i) {
                continue;
            }
            let at = self.file_size(next);
            next += 1;
            let entry = PAYLOAD_FULLY_PRESENT | ((at / MIB) << 20);
            let index = (i + i / self.chunk_ratio) as usize;
            bat[index * 8..index * 8 + 8].copy_from_slice(&entry.to_le_bytes());
        }
        (bat, next)
    }
}

/// Store `b`'s CRC-32C (computed with the field zeroed) at offset 4.
fn seal(b: &mut [u8]) {
    b[4..8].fill(0);
    let crc = crc32c::crc32c(b);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn put_guid(b: &mut [u8], at: usize, id: uuid::Uuid) {
    b[at..at + 16].copy_from_slice(&id.to_bytes_le());
}

/// The first MiB: file identifier, headers, region tables.
fn first_mib(layout: &Layout, identity: Option<&crate::identity::Identity>) -> Vec<u8> {
    let mut b = vec![0u8; MIB as usize];
    b[..8].copy_from_slice(FILE_SIGNATURE);
    let creator = format!("imgconv {}", env!("CARGO_PKG_VERSION"));
    for (i, unit) in creator.encode_utf16().take(256).enumerate() {
        b[8 + 2 * i..10 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    let file_write = crate::identity::new_uuid(identity, "vhdx file write guid");
    let data_write = crate::identity::new_uuid(identity, "vhdx data write guid");
    for (seq, at) in [(1u64, 64usize << 10), (2, 128 << 10)] {
        let h = &mut b[at..at + 4096];
        h[..4].copy_from_slice(b"head");
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        put_guid(h, 16, file_write);
        put_guid(h, 32, data_write);
        // Log GUID (48..64) zero: no log to replay. Log version 0, version 1.
        h[66..68].copy_from_slice(&1u16.to_le_bytes());
        h[68..72].copy_from_slice(&(LOG_LEN as u32).to_le_bytes());
        h[72..80].copy_from_slice(&LOG_AT.to_le_bytes());
        seal(h);
    }
    let bat_len = layout.payload_at - BAT_AT;
    for at in [192usize << 10, 256 << 10] {
        let r = &mut b[at..at + (64 << 10)];
        r[..4].copy_from_slice(b"regi");
        r[8..12].copy_from_slice(&2u32.to_le_bytes());
        for (i, (guid, offset, len)) in [
            (REGION_BAT, BAT_AT, bat_len),
            (REGION_METADATA, METADATA_AT, METADATA_LEN),
        ]
        .into_iter()
        .enumerate()
        {
            let e = 16 + 32 * i;
            r[e..e + 16].copy_from_slice(&guid);
            r[e + 16..e + 24].copy_from_slice(&offset.to_le_bytes());
            r[e + 24..e + 28].copy_from_slice(&(len as u32).to_le_bytes());
            r[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
        }
        seal(r);
    }
    b
}

/// The metadata region: its table and the five items a fixed or dynamic disk has.
fn metadata(
    layout: &Layout,
    o: &VhdxOptions,
    identity: Option<&crate::identity::Identity>,
) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_LEN as usize];
    b[..8].copy_from_slice(b"metadata");
    let page83 = crate::identity::new_uuid(identity, "vhdx page 83 id");
    let flags = u32::from(o.fixed);
    let mut params = (layout.block_size as u32).to_le_bytes().to_vec();
    params.extend_from_slice(&flags.to_le_bytes());
    // Flags: 4 = required, 2 = belongs to the virtual disk.
    let items: [([u8; 16], Vec<u8>, u32); 5] = [
        (META_FILE_PARAMETERS, params, 4),
        (META_DISK_SIZE, layout.disk_size.to_le_bytes().to_vec(), 6),
        (META_PAGE83, page83.to_bytes_le().to_vec(), 6),
        (
            META_LOGICAL_SECTOR,
            (o.logical_sector as u32).to_le_bytes().to_vec(),
            6,
        ),
        (
            META_PHYSICAL_SECTOR,
            (o.physical_sector as u32).to_le_bytes().to_vec(),
            6,
        ),
    ];
    b[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut at = ITEMS_AT;
    for (i, (id, value, flags)) in items.iter().enumerate() {
        let e = 32 + 32 * i;
        b[e..e + 16].copy_from_slice(id);
        b[e + 16..e + 20].copy_from_slice(&(at as u32).to_le_bytes());
        b[e + 20..e + 24].copy_from_slice(&(value.len() as u32).to_le_bytes());
        b[e + 24..e + 28].copy_from_slice(&flags.to_le_bytes());
        b[at..at + value.len()].copy_from_slice(value);
        at += value.len().next_multiple_of(8);
    }
    b
}

/// The VHDX writer (fixed or dynamic).
#[derive(Debug)]
pub(crate) struct VhdxWriter {
    opts: VhdxOptions,
    layout: Layout,
    identity: Option<crate::identity::Identity>,
    note: Option<String>,
    stored: u64,
    written: u64,
    /// Tables last ([`Writer::begin_deferred`]): which blocks hold data, filled in as blocks
    /// come; everything before the blocks is written by `finish`.
    deferred: Option<BitVec>,
}

impl VhdxWriter {
    /// A writer for an input of `size` bytes.
    pub(crate) fn new(size: u64, opts: VhdxOptions) -> Result<VhdxWriter> {
        let (layout, note) = Layout::new(size, &opts)?;
        Ok(VhdxWriter {
            opts,
            layout,
            identity: None,
            note,
            stored: 0,
            written: 0,
            deferred: None,
        })
    }

    /// Everything before the blocks, for the blocks `stored` says hold data: the parts of
    /// [`VhdxWriter::front_parts`] with the empty log between the first MiB and the metadata.
    fn front(&mut self, stored: impl Fn(u64) -> bool, out: &mut FrontWriter) -> Result<()> {
        let [ids, meta, bat] = self.front_parts(stored);
        out.write(&ids)?;
        out.zeros(LOG_LEN)?;
        out.write(&meta)?;
        out.write(&bat)
    }

    /// Everything before the blocks, in file order, for the blocks `stored` says hold data
    /// (counted): the first MiB (identifier, headers, region tables), then after the empty
    /// log (a hole of `LOG_LEN`), the metadata and the BAT.
    fn front_parts(&mut self, stored: impl Fn(u64) -> bool) -> [Bytes; 3] {
        let l = self.layout;
        let (bat, count) = if self.opts.fixed {
            l.bat(|_| true)
        } else {
            l.bat(stored)
        };
        self.stored = count;
        [
            Bytes::from_vec(first_mib(&l, self.identity.as_ref())),
            Bytes::from_vec(metadata(&l, &self.opts, self.identity.as_ref())),
            Bytes::from_vec(bat),
        ]
    }
}

impl Writer for VhdxWriter {
    type Encoder = BlockEncoder;

    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn unit_size(&self) -> u64 {
        self.layout.block_size
    }

    fn needs_plan(&self) -> bool {
        !self.opts.fixed
    }

    fn output_len(&self) -> Option<u64> {
        self.opts
            .fixed
            .then(|| self.layout.file_size(self.layout.data_blocks))
    }

    fn disk_size(&self) -> Option<u64> {
        Some(self.layout.disk_size)
    }

    fn notes(&self) -> Vec<String> {
        self.note.iter().cloned().collect()
    }

    fn embeds_ids(&self) -> bool {
        true
    }

    fn set_identity(&mut self, identity: &crate::identity::Identity) {
        self.identity = Some(*identity);
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        let l = &self.layout;
        let full = l.file_size(l.data_blocks);
        if self.opts.fixed {
            return Ok(Measure::fixed(full));
        }
        Ok(Measure {
            required: l.file_size(plan_given(plan)?.allocated_units()),
            fully_allocated: full,
            exact: true,
        })
    }

    fn encoder(&self) -> BlockEncoder {
        BlockEncoder {
            all_units: self.opts.fixed,
            head: None,
        }
    }

    fn defers_tables(&self) -> bool {
        !self.opts.fixed
    }

    fn begin_deferred(&mut self, input: &Deferral, out: &mut Output) -> Result<bool> {
        // The BAT's size is the disk's, whatever the data: the blocks start where they would.
        let _ = input;
        let [ids, meta, bat] = self.front_parts(|_| false);
        let len = ids.len() as u64 + LOG_LEN + meta.len() as u64 + bat.len() as u64;
        self.deferred = Some(keep_room(out, len, self.layout.data_blocks as usize)?);
        Ok(true)
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let out = &mut FrontWriter::new(out, None);
        if self.opts.fixed {
            self.front(|_| true, out)
        } else {
            let plan = plan_given(plan)?;
            self.front(|i| plan.bitmap().get(i as usize).is_some_and(|b| *b), out)
        }
    }

    fn commit(&mut self, pieces: Vec<BlockPiece>, out: &mut Output) -> Result<()> {
        for piece in pieces {
            match piece {
                BlockPiece::Start(block) | BlockPiece::StartWritten(block) => {
                    if let Some(blocks) = &mut self.deferred {
                        let one = bitvec::bits![usize, bitvec::order::Lsb0; 1];
                        mark_units(blocks, block, one, Format::Vhdx)?;
                    }
                    self.written += 1
                }
                BlockPiece::Data(b) => out.write(&b)?,
                BlockPiece::Written(b) => out.written(&b)?,
                BlockPiece::Zeros(n) => out.write_zeros(n)?,
            }
        }
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, len: u64, out: &mut Output) -> Result<bool> {
        // A fixed layout stores every block (as holes here); a dynamic one planned units only.
        let unit = self.layout.block_size;
        self.written += write_zero_units(len, unit, self.opts.fixed, out)?;
        Ok(true)
    }

    fn finish(mut self, out: &mut Output) -> Result<WriterSummary> {
        if let Some(blocks) = self.deferred.take() {
            let stored = |b: u64| blocks.get(b as usize).is_some_and(|x| *x);
            self.front(stored, &mut FrontWriter::new(out, Some(0)))?;
        }
        if self.written != self.stored || out.position() != self.layout.file_size(self.stored) {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal error: VHDX layout mismatch",
            ));
        }
        Ok(WriterSummary {
            format: Format::Vhdx,
            allocated_units: self.stored,
            unit_size: self.layout.block_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::assert_tables_last_bytes;

    /// Blocks as they come and everything before them last, into a seekable output, give the
    /// bytes of the planned layout written in order into a stream.
    #[test]
    fn tables_last_writes_the_planned_bytes() -> Result<()> {
        let id = crate::identity::Identity::derive(&[7; 32], "vhdx", 0);
        for (block_size, logical_sector) in [(1 << 20, 512), (8 << 20, 4096)] {
            let opts = VhdxOptions {
                block_size,
                logical_sector,
                ..VhdxOptions::default()
            };
            assert_tables_last_bytes(&format!("block size {block_size}"), |reader| {
                let mut w = VhdxWriter::new(reader.virtual_size(), opts).expect("writer");
                w.set_identity(&id);
                w
            })?;
        }
        Ok(())
    }
}
