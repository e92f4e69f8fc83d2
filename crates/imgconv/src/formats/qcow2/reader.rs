//! The QCOW2 reader: active layer of versions 2 and 3, every cluster size qemu allows,
//! compressed (zlib with any window, zstd), zero and extended-L2 clusters.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::formats::table_cache::TableCache;
use crate::model::{Extent, Format, ImageInfo, Location, Mapping};
use crate::reader::{check_range, map_end, Reader};
use crate::source::Source;

use super::header::{Compression, Header, INCOMPAT_DIRTY};
use super::snapshot::describe_snapshots;

/// Host offset bits of L1 and standard L2 entries (9..55).
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
pub(super) const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 63 (and L1): refcount is exactly one.
pub(super) const COPIED: u64 = 1 << 63;
/// Standard L2 entry bit 0: the cluster reads as zeros (version 3).
pub(super) const L2_ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;

/// L2 tables kept in memory at most: 32 MiB maps 256 GiB of disk with 64 KiB clusters.
const L2_CACHE_BYTES: usize = 32 << 20;

/// What one cluster of the guest holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cluster {
    /// Reads as zeros, nothing stored (or no backing file to fall through to).
    Unallocated,
    /// Reads as zeros (standard entry with bit 0).
    Zero,
    /// Stored uncompressed at a host offset.
    Data(u64),
    /// Stored compressed: host offset and length of the compressed bytes.
    Compressed(u64, u64),
    /// Extended L2: host offset (0 if none) and the allocation and zero bitmaps.
    Sub { host: u64, alloc: u32, zero: u32 },
}

/// Decompression state reused across the clusters of one read.
#[derive(Default)]
struct Inflate {
    zlib: Option<flate2::Decompress>,
    packed: Vec<u8>,
}

/// A QCOW2 image opened for reading.
pub(crate) struct Qcow2Reader {
    pub(super) src: Box<dyn Source>,
    pub(super) h: Header,
    pub(super) l1: Vec<u64>,
    pub(super) file_len: u64,
    cache: TableCache<u64, u64>,
    /// Whether the image looks preallocated with `preallocation=metadata` (computed on the
    /// first `locate`).
    metadata_preallocated: std::sync::OnceLock<bool>,
}

fn corrupt(offset: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Qcow2, offset, msg)
}

impl Qcow2Reader {
    /// Open `src` as QCOW2: header and L1 are validated and read; L2 tables are read on use.
    pub(crate) fn open(src: Box<dyn Source>) -> Result<Qcow2Reader> {
        let file_len = src.len();
        let mut head = vec![0u8; 4096];
        let n = file_len.min(head.len() as u64) as usize;
        src.read_exact_at(0, &mut head[..n])?;
        // The buffer stays zero-padded past a short file; `parse` checks the file length.
        let h = Header::parse(&head, file_len)?;
        let mut raw = vec![0u8; h.l1_size as usize * 8];
        src.read_exact_at(h.l1_table_offset, &mut raw)?;
        let l1: Vec<u64> = crate::bytes::be64s(&raw).collect();
        Ok(Qcow2Reader {
            src,
            h,
            l1,
            file_len,
            cache: TableCache::new(L2_CACHE_BYTES),
            metadata_preallocated: std::sync::OnceLock::new(),
        })
    }

    /// qemu's test for metadata-only preallocation: the file holds at least a ninth more
    /// referenced clusters (and two more) than the file system allocated for it. qemu then
    /// looks through data clusters to the file's holes in `map`, and so does `locate`.
    fn metadata_preallocated(&self) -> bool {
        *self.metadata_preallocated.get_or_init(|| {
            let Some(real) = self.src.allocated_size() else {
                return false;
            };
            let cs = self.h.cluster_size();
            let real_clusters = real / cs;
            let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
            let Ok(mut refcounts) = super::refcount::Refcounts::load(&*self.src, &self.h) else {
                return false;
            };
            let mut count = 0u64;
            for c in 0..self.file_len.div_ceil(cs) {
                if count >= threshold {
                    break;
                }
                match refcounts.get(&*self.src, c) {
                    Ok(Some(n)) => count += u64::from(n != 0),
                    _ => return false,
                }
            }
            count >= threshold
        })
    }

    fn l2_table(&self, l1_index: usize) -> Result<Option<Arc<[u64]>>> {
        let entry = self.l1.get(l1_index).copied().unwrap_or(0);
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        let cs = self.h.cluster_size();
        let l1_pos = self.h.l1_table_offset + l1_index as u64 * 8;
        if off % cs != 0 {
            return Err(corrupt(
                l1_pos,
                format!("L2 table offset {off:#x} is not cluster-aligned"),
            ));
        }
        if off < cs || off.checked_add(cs).is_none_or(|end| end > self.file_len) {
            return Err(corrupt(
                l1_pos,
                format!("L2 table offset {off:#x} lies outside the file"),
            ));
        }
        self.cache
            .get_or_load(off, || {
                let mut raw = vec![0u8; cs as usize];
                crate::source::read_holed(&*self.src, off, &mut raw)?;
                Ok(crate::bytes::be64s(&raw).collect())
            })
            .map(Some)
    }

    fn cluster(&self, index: u64) -> Result<Cluster> {
        let per_l2 = self.h.l2_entries();
        let Some(table) = self.l2_table((index / per_l2) as usize)? else {
            return Ok(Cluster::Unallocated);
        };
        let slot = (index % per_l2) as usize;
        let ext = self.h.extended_l2();
        let e = if ext { table[slot * 2] } else { table[slot] };
        let cs = self.h.cluster_size();
        if e & L2_COMPRESSED != 0 {
            let shift = 62 - (self.h.cluster_bits - 8);
            let host = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & ((1u64 << (self.h.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (host & 511);
            if host >= self.file_len || host < cs {
                return Err(corrupt(
                    host,
                    format!("compressed cluster {index} lies outside the file"),
                ));
            }
            // The descriptor counts whole sectors; the last cluster may end before them.
            return Ok(Cluster::Compressed(host, len.min(self.file_len - host)));
        }
        let host = e & OFFSET_MASK;
        if host != 0 && (host % cs != 0 || host < cs || host.checked_add(cs).is_none()) {
            return Err(corrupt(
                host,
                format!("data cluster {index} has an invalid offset {host:#x}"),
            ));
        }
        if ext {
            let bitmap = table[slot * 2 + 1];
            let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
            if alloc & zero != 0 {
                return Err(corrupt(
                    host,
                    format!("cluster {index}: subclusters both allocated and zero"),
                ));
            }
            if alloc != 0 && host == 0 {
                return Err(corrupt(
                    0,
                    format!("cluster {index}: allocated subclusters without a host cluster"),
                ));
            }
            return Ok(Cluster::Sub { host, alloc, zero });
        }
        if e & L2_ZERO != 0 && self.h.version < 3 {
            // Bit 0 is reserved before version 3: qemu reports such an entry as corruption,
            // and reading the cluster either as data or as zeros would be a guess.
            return Err(corrupt(
                host,
                format!("cluster {index}: the zero flag is set in a version 2 image"),
            ));
        }
        Ok(if e & L2_ZERO != 0 {
            Cluster::Zero
        } else if host == 0 {
            Cluster::Unallocated
        } else {
            Cluster::Data(host)
        })
    }

    /// The extent at guest `pos`, how far it reaches within its cluster (or subcluster), and
    /// the cluster it came from.
    /// The run from `offset` that the file stores: this piece and the following ones of the
    /// same kind stored right after it (a compressed cluster stands alone), up to an L2
    /// table's worth, with its host offset (`None` for a compressed cluster) and whether it
    /// is compressed; `None` when nothing is stored at `offset`.
    fn stored_run(
        &self,
        offset: u64,
        max_len: u64,
    ) -> Result<Option<(Mapping, Option<u64>, bool)>> {
        let end = map_end(Format::Qcow2, self.h.size, offset, max_len)?;
        let cs = self.h.cluster_size();
        // As qemu does, a subcluster that reads as zeros in a cluster that has a host
        // cluster is reported at its place in it.
        let host_of = |c: Cluster, pos: u64| match c {
            Cluster::Data(h) => Some(h + pos % cs),
            Cluster::Sub { host: h, .. } if h != 0 => Some(h + pos % cs),
            _ => None,
        };
        let (extent, reach, c) = self.piece(offset)?;
        let host = host_of(c, offset);
        let compressed = matches!(c, Cluster::Compressed(..));
        if host.is_none() && !compressed {
            return Ok(None);
        }
        let mut len = reach.min(end.saturating_sub(offset)).max(1);
        if let Some(h) = host {
            let limit = cs * self.h.l2_entries();
            while offset + len < end && len < limit {
                let (next, r, c2) = self.piece(offset + len)?;
                if next != extent || host_of(c2, offset + len) != Some(h + len) {
                    break;
                }
                len += r.min(end - offset - len);
            }
        }
        Ok(Some((Mapping { extent, len }, host, compressed)))
    }

    fn piece(&self, pos: u64) -> Result<(Extent, u64, Cluster)> {
        let cs = self.h.cluster_size();
        let c = self.cluster(pos / cs)?;
        let in_cluster = pos % cs;
        let to_end = cs - in_cluster;
        Ok(match c {
            Cluster::Unallocated => (Extent::Unallocated, to_end, c),
            Cluster::Zero => (Extent::Zero, to_end, c),
            Cluster::Data(_) | Cluster::Compressed(..) => (Extent::Data, to_end, c),
            Cluster::Sub { alloc, zero, .. } => {
                let sub = cs / SUBCLUSTERS;
                let i = in_cluster / sub;
                let extent = if alloc >> i & 1 != 0 {
                    Extent::Data
                } else if zero >> i & 1 != 0 {
                    Extent::Zero
                } else {
                    Extent::Unallocated
                };
                (extent, sub - in_cluster % sub, c)
            }
        })
    }

    fn inflate(&self, host: u64, len: u64, out: &mut [u8], ctx: &mut Inflate) -> Result<()> {
        ctx.packed.resize(len as usize, 0);
        self.src.read_exact_at(host, &mut ctx.packed)?;
        let packed = &ctx.packed;
        let produced = match self.h.compression {
            Compression::Zlib => {
                let d = ctx
                    .zlib
                    .get_or_insert_with(|| flate2::Decompress::new(false));
                d.reset(false);
                // Stops when the cluster is full; the sector padding after the stream is ignored.
                let _ = d.decompress(packed, out, flate2::FlushDecompress::Finish);
                d.total_out() as usize
            }
            Compression::Zstd => {
                use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
                let mut d =
                    Decoder::new().map_err(|e| Error::io("cannot start a zstd decoder", e))?;
                let mut input = InBuffer::around(packed);
                let mut output = OutBuffer::around(out);
                while output.pos() < output.capacity() && input.pos() < input.src.len() {
                    let before = (input.pos(), output.pos());
                    if d.run(&mut input, &mut output).is_err()
                        || before == (input.pos(), output.pos())
                    {
                        break;
                    }
                }
                output.pos()
            }
        };
        if produced != out.len() {
            return Err(corrupt(
                host,
                format!(
                    "a compressed cluster decompresses to {produced} bytes instead of {}",
                    out.len()
                ),
            ));
        }
        Ok(())
    }
}

impl Reader for Qcow2Reader {
    /// Any cluster may be compressed, and the header does not say whether one is.
    fn light_decoder(&self) -> bool {
        false
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.h.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(Format::Qcow2, self.h.size, offset, buf.len() as u64)?;
        let cs = self.h.cluster_size();
        let mut done = 0usize;
        let mut scratch: Option<(u64, Vec<u8>)> = None;
        let mut ctx = Inflate::default();
        while done < buf.len() {
            let pos = offset + done as u64;
            let (extent, reach, cluster) = self.piece(pos)?;
            let n = (reach as usize).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            let in_cluster = pos % cs;
            match (extent, cluster) {
                (Extent::Data, Cluster::Compressed(host, len)) if n as u64 == cs => {
                    // A whole cluster: inflate straight into the caller's buffer.
                    self.inflate(host, len, dst, &mut ctx)?;
                }
                (Extent::Data, Cluster::Compressed(host, len)) => {
                    let key = pos / cs;
                    if scratch.as_ref().is_none_or(|(k, _)| *k != key) {
                        let mut plain = vec![0u8; cs as usize];
                        self.inflate(host, len, &mut plain, &mut ctx)?;
                        scratch = Some((key, plain));
                    }
                    if let Some((_, plain)) = &scratch {
                        let s = in_cluster as usize;
                        dst.copy_from_slice(&plain[s..s + n]);
                    }
                }
                (Extent::Data, Cluster::Data(host) | Cluster::Sub { host, .. }) => {
                    let at = host + in_cluster;
                    if at + n as u64 > self.file_len {
                        return Err(corrupt(
                            host,
                            "a data cluster lies beyond the end of the file",
                        ));
                    }
                    self.src.read_exact_at(at, dst)?;
                }
                _ => dst.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        let Some((mapping, host, compressed)) = self.stored_run(offset, max_len)? else {
            // Not stored: the map's run, merged over an L2 table's worth.
            return Ok(Location::unstored(self.map(offset, max_len)?, false));
        };
        match host {
            Some(h) if self.metadata_preallocated() => Location::stored_in(mapping, h, &*self.src),
            Some(h) => Ok(Location::at(mapping, h)),
            None => Ok(Location::unstored(mapping, compressed)),
        }
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let end = map_end(Format::Qcow2, self.h.size, offset, max_len)?;
        if offset >= end {
            return Ok(Mapping {
                extent: Extent::Unallocated,
                len: max_len.max(1),
            });
        }
        let (extent, reach, _) = self.piece(offset)?;
        if extent == Extent::Data {
            // Stored data is read through to the file's holes: clusters that
            // `preallocation=metadata` (or `falloc`) left as holes read as zeros, unread.
            if let Some((mapping, Some(host), _)) = self.stored_run(offset, max_len)? {
                return Location::read_through(mapping, host, &*self.src);
            }
        }
        let mut len = reach.min(end - offset);
        // Merge following pieces of the same kind, up to one L2 table's worth.
        let limit = self.h.cluster_size() * self.h.l2_entries();
        while offset + len < end && len < limit {
            let (next, r, _) = self.piece(offset + len)?;
            if next != extent {
                break;
            }
            len += r.min(end - offset - len);
        }
        Ok(Mapping { extent, len })
    }

    fn check(&self, report: &mut crate::check::CheckReport) -> Result<()> {
        self.check_structures(report)
    }

    fn info(&self) -> ImageInfo {
        let h = &self.h;
        let mut details = vec![
            (
                "compat".to_string(),
                if h.version == 2 { "0.10" } else { "1.1" }.to_string(),
            ),
            ("cluster_size".to_string(), h.cluster_size().to_string()),
            (
                "compression type".to_string(),
                h.compression.name().to_string(),
            ),
        ];
        if h.version >= 3 {
            details.push(("lazy refcounts".into(), (h.compatible & 1 != 0).to_string()));
            details.push((
                "refcount bits".into(),
                (1u32 << h.refcount_order).to_string(),
            ));
            details.push(("extended l2".into(), h.extended_l2().to_string()));
            details.push((
                "dirty".into(),
                (h.incompatible & INCOMPAT_DIRTY != 0).to_string(),
            ));
            details.push((
                "incompatible features".into(),
                format!("{:#x}", h.incompatible),
            ));
        }
        details.push(("snapshots".into(), describe_snapshots(&*self.src, h)));
        ImageInfo {
            format: Format::Qcow2,
            virtual_size: h.size,
            actual_size: self.src.allocated_size(),
            details,
        }
    }
}
