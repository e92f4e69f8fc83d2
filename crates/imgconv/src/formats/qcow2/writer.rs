//! The QCOW2 writer (uncompressed): the layout is planned from the allocation map and written
//! in file order, so digests are inline and the output can go to a pipe.
//!
//! ```text
//! cluster 0        header (v3: 112 bytes; v2: 72)
//! L1               l1_size entries, one per L2 table's worth of guest clusters
//! refcount table   offsets of the refcount blocks
//! refcount blocks  16-bit refcounts: 1 for every cluster of the file
//! L2 tables        only for guest ranges holding data
//! data             allocated clusters, in guest order
//! ```

use bitvec::vec::BitVec;

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::{parse_size, WriterOptions};
use crate::model::Format;
use crate::model::Plan;
use crate::sink::Output;
use crate::writer::{
    keep_room, mark_units, write_unit_runs, Deferral, FrontWriter, Measure, PassThrough, Units,
    Writer, WriterSummary,
};

use super::header::{self, Compression, Header, V2_HEADER_LEN, V3_HEADER_LEN};
use super::reader::COPIED;

/// Refcount width written: 16 bits (refcount_order 4), qemu's default.
pub(super) const REFCOUNT_ORDER: u32 = 4;

/// Clusters of refcount table and of refcount blocks needed to count `others` clusters plus
/// themselves (they count themselves, hence the fixed point).
pub(super) fn refcount_space(others: u64, cs: u64) -> (u64, u64) {
    let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let need_rb = (others + rt + rb).div_ceil(per_block);
        let need_rt = (need_rb * 8).div_ceil(cs);
        if need_rb <= rb && need_rt <= rt {
            return (rt, rb);
        }
        rb = rb.max(need_rb);
        rt = rt.max(need_rt);
    }
}

/// The header both writers emit: v2 or v3 as asked, 16-bit refcounts, no snapshots.
pub(super) fn output_header(
    opts: &Qcow2Options,
    size: u64,
    l1: (u64, u64),
    refcount_table: (u64, u64),
    compression: Compression,
) -> Result<Header> {
    let too_large = |what: &str| {
        Error::new(
            ErrorKind::LimitExceeded,
            format!("the disk is too large for QCOW2's {what}"),
        )
    };
    Ok(Header {
        version: opts.version,
        cluster_bits: opts.cluster_bits,
        size,
        l1_size: u32::try_from(l1.1).map_err(|_| too_large("L1 table"))?,
        l1_table_offset: l1.0,
        refcount_table_offset: refcount_table.0,
        refcount_table_clusters: u32::try_from(refcount_table.1)
            .map_err(|_| too_large("refcount table"))?,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: if compression == Compression::Zstd {
            header::INCOMPAT_COMPRESSION
        } else {
            0
        },
        compatible: 0,
        autoclear: 0,
        refcount_order: REFCOUNT_ORDER,
        header_length: if opts.version == 3 {
            V3_HEADER_LEN as u32
        } else {
            V2_HEADER_LEN as u32
        },
        compression,
    })
}

/// Options of the QCOW2 writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Qcow2Options {
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`, the default).
    pub version: u32,
    /// log2 of the cluster size (default 16: 64 KiB).
    pub cluster_bits: u32,
    /// Compress data clusters (`-c`), with this algorithm.
    pub compression: Option<Compression>,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            version: 3,
            cluster_bits: 16,
            compression: None,
        }
    }
}

impl Qcow2Options {
    /// The option names QCOW2 takes.
    pub(crate) const KNOWN: &'static [&'static str] =
        &["compat", "cluster_size", "compression_type"];

    /// Take QCOW2's options out of `opts`; `compress` is `-c`.
    pub(crate) fn parse(mut opts: WriterOptions, compress: bool) -> Result<Qcow2Options> {
        let mut o = Qcow2Options::default();
        if let Some(compat) = opts.take("compat") {
            o.version = match compat.as_str() {
                "0.10" | "v2" => 2,
                "1.1" | "v3" => 3,
                other => {
                    return Err(Error::invalid_argument(format!(
                        "compat '{other}' is not one of 0.10, 1.1"
                    )))
                }
            };
        }
        if let Some(cs) = opts.take("cluster_size") {
            let bytes = parse_size(&cs)?;
            if !bytes.is_power_of_two() || !(512..=(2 << 20)).contains(&bytes) {
                return Err(Error::invalid_argument(format!(
                    "cluster_size {cs} must be a power of two from 512 to 2M"
                )));
            }
            o.cluster_bits = bytes.trailing_zeros();
        }
        let ctype = match opts.take("compression_type").as_deref() {
            None | Some("zlib") => Compression::Zlib,
            Some("zstd") => Compression::Zstd,
            Some(other) => {
                return Err(Error::invalid_argument(format!(
                    "compression_type '{other}' is not one of zlib, zstd"
                )))
            }
        };
        if ctype == Compression::Zstd && o.version == 2 {
            return Err(Error::invalid_argument(
                "compression_type=zstd needs compat=1.1",
            ));
        }
        if compress {
            o.compression = Some(ctype);
        }
        opts.finish(Format::Qcow2, Self::KNOWN)?;
        Ok(o)
    }

    /// The cluster size in bytes.
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// Where everything goes, in clusters, for a given plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    cluster_bits: u32,
    l1_size: u64,
    l1_clusters: u64,
    rt_clusters: u64,
    rb_count: u64,
    l2_count: u64,
    data_clusters: u64,
}

impl Layout {
    /// The layout for `data_clusters` allocated clusters spread over `l2_count` L2 tables.
    fn new(virtual_size: u64, cluster_bits: u32, l2_count: u64, data_clusters: u64) -> Layout {
        let cs = 1u64 << cluster_bits;
        let l1_size = virtual_size.div_ceil(cs).div_ceil(cs / 8);
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let (rt, rb) = refcount_space(1 + l1_clusters + l2_count + data_clusters, cs);
        Layout {
            cluster_bits,
            l1_size,
            l1_clusters,
            rt_clusters: rt,
            rb_count: rb,
            l2_count,
            data_clusters,
        }
    }

    /// The same layout with `data_clusters` clusters stored instead (the refcount space
    /// follows).
    fn with_data_clusters(&self, data_clusters: u64) -> Layout {
        let (rt, rb) = refcount_space(
            1 + self.l1_clusters + self.l2_count + data_clusters,
            self.cs(),
        );
        Layout {
            rt_clusters: rt,
            rb_count: rb,
            data_clusters,
            ..*self
        }
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }
    fn l1_offset(&self) -> u64 {
        self.cs()
    }
    fn rt_offset(&self) -> u64 {
        (1 + self.l1_clusters) * self.cs()
    }
    fn rb_offset(&self) -> u64 {
        self.rt_offset() + self.rt_clusters * self.cs()
    }
    fn l2_offset(&self) -> u64 {
        self.rb_offset() + self.rb_count * self.cs()
    }
    fn data_offset(&self) -> u64 {
        self.l2_offset() + self.l2_count * self.cs()
    }
    fn total_clusters(&self) -> u64 {
        1 + self.l1_clusters + self.rt_clusters + self.rb_count + self.l2_count + self.data_clusters
    }
    fn file_len(&self) -> u64 {
        self.total_clusters() * self.cs()
    }
}

/// Which L2 tables are needed for the clusters `allocated` marks: one bit per L1 entry.
fn l2_needed(allocated: &BitVec, per_l2: u64, l1_size: u64) -> BitVec {
    let mut need = BitVec::repeat(false, l1_size as usize);
    for i in allocated.iter_ones() {
        need.set(i / per_l2 as usize, true);
    }
    need
}

/// Whether the room `kept` (the exact L2 tables, and every cluster the data extents touch) is
/// likely to be what the data needs, so that writing the tables last costs no move of the
/// data: the tables come out the same size with a quarter of those clusters zero (the number
/// of refcount blocks is the one thing left that depends on how many clusters are stored).
/// Where the guess is wrong the data is moved (one more read and write of it, from the page
/// cache where it fits).
fn room_likely_exact(kept: &Layout) -> bool {
    let touched = kept.data_clusters;
    let fewer = kept.with_data_clusters(touched - touched / 4);
    fewer.data_offset() == kept.data_offset()
}

/// The sizes a QCOW2 output would take for `plan` (`imgconv measure -O qcow2`): exact.
fn measure(plan: &Plan, opts: &Qcow2Options) -> Measure {
    let cs = opts.cluster_size();
    let per_l2 = cs / 8;
    let size = plan.virtual_size();
    let l1_size = size.div_ceil(cs).div_ceil(per_l2);
    let l2 = l2_needed(plan.bitmap(), per_l2, l1_size).count_ones() as u64;
    let used = Layout::new(size, opts.cluster_bits, l2, plan.allocated_units());
    let all = Layout::new(size, opts.cluster_bits, l1_size, size.div_ceil(cs));
    Measure {
        required: used.file_len(),
        fully_allocated: all.file_len(),
        exact: true,
    }
}

/// The sizes a compressed QCOW2 output can take for `plan`: `required` bounds the file from
/// above (every stored cluster counted as if it did not compress and needed a whole cluster
/// of alignment padding before it, each table likewise); `fully_allocated` is the
/// uncompressed layout's.
pub(super) fn measure_compressed(plan: &Plan, opts: &Qcow2Options) -> Measure {
    let cs = opts.cluster_size();
    let per_l2 = cs / 8;
    let size = plan.virtual_size();
    let l1_size = size.div_ceil(cs).div_ceil(per_l2);
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let l2 = l2_needed(plan.bitmap(), per_l2, l1_size).count_ones() as u64;
    // Cluster 0, then per stored cluster and L2 table at most a cluster of padding and one of
    // content, then padding and the L1 table.
    let base = 1 + 2 * (plan.allocated_units() + l2) + 1 + l1_clusters;
    let (rt, rb) = refcount_space(base, cs);
    let all = Layout::new(size, opts.cluster_bits, l1_size, size.div_ceil(cs));
    Measure {
        required: (base + rt + rb) * cs,
        fully_allocated: all.file_len(),
        exact: false,
    }
}

/// The uncompressed QCOW2 writer.
#[derive(Debug)]
pub(crate) struct Qcow2Writer {
    opts: Qcow2Options,
    virtual_size: u64,
    layout: Option<Layout>,
    allocated: BitVec,
    written_data: u64,
    /// Tables last ([`Writer::begin_deferred`]): the layout room was kept for, from the bound;
    /// the data went after it, and `allocated` is filled in as chunks come.
    deferred: Option<Layout>,
}

impl Qcow2Writer {
    /// A writer for a disk of `virtual_size` bytes. The size is rounded up to whole 512-byte
    /// sectors, as qemu-img does: qemu reads a QCOW2 size in sectors and would drop a partial
    /// last one. The added tail reads as zeros.
    pub(crate) fn new(virtual_size: u64, opts: Qcow2Options) -> Result<Qcow2Writer> {
        let virtual_size = virtual_size.div_ceil(512) * 512;
        if opts.compression.is_some() {
            return Err(Error::invalid_argument(
                "compressed output goes through the compressed QCOW2 writer",
            ));
        }
        Ok(Qcow2Writer {
            opts,
            virtual_size,
            layout: None,
            allocated: BitVec::new(),
            written_data: 0,
            deferred: None,
        })
    }

    /// The layout for the units `allocated` marks: which L2 tables it needs, and where
    /// everything goes.
    fn layout_for(&self, allocated: &BitVec) -> (Layout, BitVec) {
        let cs = self.opts.cluster_size();
        let per_l2 = cs / 8;
        let l1_size = self.virtual_size.div_ceil(cs).div_ceil(per_l2);
        let need = l2_needed(allocated, per_l2, l1_size);
        let l = Layout::new(
            self.virtual_size,
            self.opts.cluster_bits,
            need.count_ones() as u64,
            allocated.count_ones() as u64,
        );
        (l, need)
    }

    /// Everything before the data, in file order, for layout `l` whose needed L2 tables are
    /// `need`: header cluster, L1, refcount table and blocks, L2 tables.
    fn emit_tables(&self, l: &Layout, need: &BitVec, out: &mut FrontWriter) -> Result<()> {
        let cs = self.opts.cluster_size();
        let per_l2 = cs / 8;
        let h = output_header(
            &self.opts,
            self.virtual_size,
            (l.l1_offset(), l.l1_size),
            (l.rt_offset(), l.rt_clusters),
            Compression::Zlib,
        )?;
        let mut cluster0 = vec![0u8; cs as usize];
        header::encode(&h, &mut cluster0);
        out.write(&Bytes::from_vec(cluster0))?;

        // L1: the n-th needed L2 table follows the previous ones.
        if l.l1_clusters > 0 {
            let mut next = l.l2_offset();
            let entries = need.iter().map(|b| {
                if *b {
                    let e = next | COPIED;
                    next += cs;
                    e
                } else {
                    0
                }
            });
            out.write(&be64_table(entries, cs, l.l1_clusters)?)?;
        }

        // Refcount table, then blocks: every cluster of the file has refcount 1.
        let rt = (0..l.rb_count).map(|i| l.rb_offset() + i * cs);
        out.write(&be64_table(rt, cs, l.rt_clusters)?)?;
        let per_block = cs / 2;
        let total = l.total_clusters();
        for b in 0..l.rb_count {
            let first = b * per_block;
            let ones = total.saturating_sub(first).min(per_block) as usize;
            let mut block = vec![0u8; cs as usize];
            for e in block.chunks_exact_mut(2).take(ones) {
                e[1] = 1;
            }
            out.write(&Bytes::from_vec(block))?;
        }

        // L2 tables, one per needed L1 entry, pointing at data clusters in guest order.
        let mut next_data = l.data_offset();
        for l1i in need.iter_ones() {
            let first = l1i as u64 * per_l2;
            let entries = (first..first + per_l2).map(|c| {
                if self.allocated.get(c as usize).is_some_and(|b| *b) {
                    let e = next_data | COPIED;
                    next_data += cs;
                    e
                } else {
                    0
                }
            });
            out.write(&be64_table(entries, cs, 1)?)?;
        }
        Ok(())
    }

    /// Tables last: with the exact layout known, move the data where it belongs if the room
    /// kept for the tables was larger (the bound counted units that turned out all zero, and
    /// with them an L2 table or a refcount block), then write the tables in front of it.
    fn finish_deferred(&mut self, kept: Layout, out: &mut Output) -> Result<()> {
        let (l, need) = self.layout_for(&self.allocated);
        let data_len = l.data_clusters * l.cs();
        let (from, to) = (kept.data_offset(), l.data_offset());
        if from < to || out.position() != from + data_len {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "internal error: QCOW2 data at {from} (+{data_len}, end {}), its tables need {to}",
                    out.position()
                ),
            ));
        }
        if from > to {
            // Rare: ascending copies are safe as the data moves towards the front.
            let mut buf = vec![0u8; (4 << 20).min(data_len as usize)];
            let mut done = 0u64;
            while done < data_len {
                let n = (data_len - done).min(buf.len() as u64) as usize;
                out.read_at(from + done, &mut buf[..n])?;
                out.write_at(to + done, &buf[..n])?;
                done += n as u64;
            }
            out.truncate(to + data_len)?;
        }
        let mut front = FrontWriter::new(out, Some(0));
        self.emit_tables(&l, &need, &mut front)?;
        if front.position() != to {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal error: QCOW2 tables do not end where the data starts",
            ));
        }
        self.layout = Some(l);
        Ok(())
    }

    fn layout(&self) -> Result<Layout> {
        self.layout.ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "internal error: QCOW2 writer not started",
            )
        })
    }
}

/// Big-endian table entries, zero-padded to exactly `clusters` clusters (what the layout
/// reserved for the table; more entries than fit is an internal error).
pub(super) fn be64_table(
    entries: impl Iterator<Item = u64>,
    cs: u64,
    clusters: u64,
) -> Result<Bytes> {
    let len = (clusters * cs) as usize;
    let mut v = Vec::with_capacity(len);
    for e in entries {
        v.extend_from_slice(&e.to_be_bytes());
    }
    if v.len() > len {
        return Err(Error::new(
            ErrorKind::Internal,
            "internal error: a QCOW2 table outgrew its clusters",
        ));
    }
    v.resize(len, 0);
    Ok(Bytes::from_vec(v))
}

impl Writer for Qcow2Writer {
    type Encoder = PassThrough;

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn unit_size(&self) -> u64 {
        self.opts.cluster_size()
    }

    fn needs_plan(&self) -> bool {
        true
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        Ok(measure(crate::writer::plan_given(plan)?, &self.opts))
    }

    fn output_len(&self) -> Option<u64> {
        self.layout.map(|l| l.file_len())
    }

    fn encoder(&self) -> PassThrough {
        PassThrough::default()
    }

    fn defers_tables(&self) -> bool {
        true
    }

    fn begin_deferred(&mut self, input: &Deferral, out: &mut Output) -> Result<bool> {
        let (bound, reader, cancel) = (input.bound, input.reader, input.cancel);
        let touched = bound.bitmap();
        if touched.all() {
            // Mapped as data throughout: the bound says nothing of what is stored.
            return Ok(false);
        }
        // Which L2 tables the data needs: those whose range holds a non-zero byte. A range
        // of data extents that are all zeros (free space a file system zeroed) needs none;
        // found now by reading until the first non-zero byte, usually one page a table.
        let cs = self.opts.cluster_size();
        let per_l2 = cs / 8;
        let l1_size = self.virtual_size.div_ceil(cs).div_ceil(per_l2);
        let mut need = l2_needed(touched, per_l2, l1_size);
        let size = reader.virtual_size();
        for t in need.clone().iter_ones() {
            let start = t as u64 * per_l2 * cs;
            let end = (start + per_l2 * cs).min(size);
            if !crate::planner::holds_data(reader, start, end, cancel)? {
                need.set(t, false);
            }
        }
        // Room for those tables and for every cluster the data extents touch.
        let kept = Layout::new(
            self.virtual_size,
            self.opts.cluster_bits,
            need.count_ones() as u64,
            touched.count_ones() as u64,
        );
        if !room_likely_exact(&kept) {
            return Ok(false);
        }
        self.deferred = Some(kept);
        self.allocated = keep_room(out, kept.data_offset(), touched.len())?;
        Ok(true)
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let plan = plan.ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "internal error: QCOW2 needs an allocation plan",
            )
        })?;
        self.allocated = plan.bitmap().clone();
        let (l, need) = self.layout_for(plan.bitmap());
        self.layout = Some(l);
        self.emit_tables(&l, &need, &mut FrontWriter::new(out, None))
    }

    fn commit(&mut self, units: Units, out: &mut Output) -> Result<()> {
        if self.deferred.is_some() {
            // No plan: the chunk's scan says which of its clusters hold data.
            let first = units.chunk.offset / self.opts.cluster_size();
            mark_units(
                &mut self.allocated,
                first,
                &units.chunk.nonzero,
                Format::Qcow2,
            )?;
        }
        // Loaded from the plan, or scanned: its non-zero units are the clusters stored.
        self.written_data += write_unit_runs(&units, out, false)?;
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, _len: u64, _out: &mut Output) -> Result<bool> {
        // Only planned clusters are stored: zero chunks have none.
        Ok(true)
    }

    fn finish(mut self, out: &mut Output) -> Result<WriterSummary> {
        if let Some(kept) = self.deferred.take() {
            self.finish_deferred(kept, out)?;
        }
        let l = self.layout()?;
        if self.written_data != l.data_clusters || out.position() != l.file_len() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "internal error: wrote {} of {} data clusters, {} of {} bytes",
                    self.written_data,
                    l.data_clusters,
                    out.position(),
                    l.file_len()
                ),
            ));
        }
        Ok(WriterSummary {
            format: Format::Qcow2,
            allocated_units: l.data_clusters,
            unit_size: l.cs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::CancelToken;
    use crate::reader::Reader;

    #[test]
    fn the_refcount_layout_covers_itself() {
        for (size, bits, l2, data) in [
            (0u64, 16u32, 0u64, 0u64),
            (1 << 20, 9, 1, 2048),
            (1 << 40, 16, 2048, 1 << 24),
        ] {
            let l = Layout::new(size, bits, l2, data);
            let per_block = (1u64 << bits) / 2;
            assert!(l.rb_count * per_block >= l.total_clusters(), "{l:?}");
            assert!(l.rt_clusters * (1 << bits) / 8 >= l.rb_count, "{l:?}");
        }
    }

    /// Written tables last into a seekable output, the bytes are those of the planned layout
    /// written tables first into a stream: where the room kept from the map is exact, where it
    /// is too large (the data moves), and where the writer declines (no holes: planned).
    #[test]
    fn tables_last_writes_the_planned_bytes() -> Result<()> {
        use crate::formats::raw::RawReader;
        use crate::pipeline::{noise as random, written_both_ways};
        use crate::source::{HoledMem, MemSource, Source};
        let mib = 1u64 << 20;
        let text: Vec<u8> = b"tables last, data first; ".repeat(60_000);
        // (name, source, whether the writer takes the tables-last way, whether the data moves)
        let cases: Vec<(&str, Box<dyn Source>, bool, bool)> = vec![
            (
                "room exact",
                Box::new(HoledMem::new(
                    16 << 20,
                    &[
                        (0, random(mib as usize, 1)),
                        (mib, vec![0u8; 64 << 10]),
                        (8 * mib + 512, text[..mib as usize].to_vec()),
                        ((16 << 20) - 4096, random(4096, 2)),
                    ],
                )),
                true,
                false,
            ),
            (
                // Data extents of zeros over whole L2 tables' ranges (4 KiB clusters: 2 MiB):
                // found before the first byte, no move.
                "zero L2 ranges",
                Box::new(HoledMem::new(
                    16 << 20,
                    &[(0, vec![0u8; 5 << 20]), (6 * mib, random(2 << 20, 3))],
                )),
                true,
                false,
            ),
            (
                // 3840 clusters touched (two refcount blocks of 2048), 1536 stored (one).
                "a refcount block fewer",
                Box::new(HoledMem::new(
                    16 << 20,
                    &[(mib, vec![0u8; 9 << 20]), (10 * mib, random(6 << 20, 4))],
                )),
                true,
                true,
            ),
            (
                "no holes",
                Box::new(MemSource::new({
                    let mut d = vec![0u8; 16 << 20];
                    d[5 << 20..6 << 20].copy_from_slice(&random(mib as usize, 5));
                    d
                })),
                false,
                false,
            ),
        ];
        for (name, source, defers, moves) in cases {
            let reader = RawReader::new(source);
            let opts = Qcow2Options {
                cluster_bits: 12,
                ..Qcow2Options::default()
            };
            let make = || Qcow2Writer::new(reader.virtual_size(), opts).expect("writer");
            let cancel = CancelToken::new();
            let bound = crate::planner::touched_units(&reader, 4096, &cancel)?;
            let exact = crate::planner::plan(&reader, 4096, 4 << 20, &cancel)?;
            let mut w = make();
            let mut out = Output::new_seekable(Box::new(crate::sink::VecSink::seekable()), &[])?;
            assert_eq!(
                w.begin_deferred(
                    &Deferral {
                        bound: &bound,
                        reader: &reader,
                        cancel: &cancel
                    },
                    &mut out
                )?,
                defers,
                "{name}"
            );
            if let Some(kept) = w.deferred {
                let (need, _) = w.layout_for(exact.bitmap());
                assert_eq!(kept.data_offset() != need.data_offset(), moves, "{name}");
            }
            let (seekable, stream) = written_both_ways(&reader, make)?;
            assert!(seekable == stream, "{name}: the two layouts differ");
        }
        Ok(())
    }

    #[test]
    fn options_parse_like_qemu_img() -> Result<()> {
        let o = Qcow2Options::parse(WriterOptions::parse("compat=0.10,cluster_size=4K")?, false)?;
        assert_eq!((o.version, o.cluster_size()), (2, 4096));
        let o = Qcow2Options::parse(
            WriterOptions::parse("cluster_size=2M,compression_type=zstd")?,
            true,
        )?;
        assert_eq!(
            (o.cluster_bits, o.compression),
            (21, Some(Compression::Zstd))
        );
        assert!(Qcow2Options::parse(WriterOptions::parse("cluster_size=3000")?, false).is_err());
        assert!(Qcow2Options::parse(
            WriterOptions::parse("compat=0.10,compression_type=zstd")?,
            true
        )
        .is_err());
        Ok(())
    }
}
