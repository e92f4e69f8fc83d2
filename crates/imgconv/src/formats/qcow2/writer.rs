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
use crate::model::Chunk;
use crate::model::Format;
use crate::model::Plan;
use crate::sink::Output;
use crate::writer::{write_unit_runs, Measure, PassThrough, Writer, WriterSummary};

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

/// Which L2 tables are needed: one bit per L1 entry.
fn l2_needed(plan: &Plan, per_l2: u64, l1_size: u64) -> BitVec {
    let mut need = BitVec::repeat(false, l1_size as usize);
    for i in plan.bitmap().iter_ones() {
        need.set(i / per_l2 as usize, true);
    }
    need
}

/// The sizes a QCOW2 output would take for `plan` (`imgconv measure -O qcow2`): exact.
fn measure(plan: &Plan, opts: &Qcow2Options) -> Measure {
    let cs = opts.cluster_size();
    let per_l2 = cs / 8;
    let size = plan.virtual_size();
    let l1_size = size.div_ceil(cs).div_ceil(per_l2);
    let l2 = l2_needed(plan, per_l2, l1_size).count_ones() as u64;
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
    let l2 = l2_needed(plan, per_l2, l1_size).count_ones() as u64;
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
        })
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
        PassThrough
    }

    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let plan = plan.ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "internal error: QCOW2 needs an allocation plan",
            )
        })?;
        let cs = self.opts.cluster_size();
        let per_l2 = cs / 8;
        let l1_size = self.virtual_size.div_ceil(cs).div_ceil(per_l2);
        let need = l2_needed(plan, per_l2, l1_size);
        let l = Layout::new(
            self.virtual_size,
            self.opts.cluster_bits,
            need.count_ones() as u64,
            plan.allocated_units(),
        );
        self.layout = Some(l);
        self.allocated = plan.bitmap().clone();

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

    fn commit(&mut self, chunk: Chunk, out: &mut Output) -> Result<()> {
        // The chunk was loaded from the plan: its non-zero units are exactly the planned ones.
        self.written_data += write_unit_runs(&chunk, out, false)?;
        Ok(())
    }

    fn commit_zeros(&mut self, _offset: u64, _len: u64, _out: &mut Output) -> Result<bool> {
        // Only planned clusters are stored: zero chunks have none.
        Ok(true)
    }

    fn finish(self, out: &mut Output) -> Result<WriterSummary> {
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
