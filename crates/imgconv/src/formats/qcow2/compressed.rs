//! The compressed QCOW2 writer (`-c`): clusters are compressed in parallel on the worker pool
//! and appended in guest order.
//!
//! Offsets depend on compressed sizes, so the layout cannot be planned: cluster 0 is reserved,
//! compressed clusters follow, each L2 table is written right after the guest range it maps,
//! then the L1 table, the refcount table and blocks, and last the header is written into
//! cluster 0. The output must therefore be a seekable file, and its digests cost one read-back.
//!
//! zlib clusters are raw deflate with a 4 KiB window, because qemu inflates with `windowBits -12`;
//! zstd clusters are one frame each. A cluster that does not shrink below the cluster size
//! is stored uncompressed, as qemu does.

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Chunk;
use crate::model::Format;
use crate::model::Plan;
use crate::sink::Output;
use crate::writer::{Encoder, Measure, Writer, WriterSummary};

use super::header::{self, Compression, V3_HEADER_LEN};
use super::reader::{COPIED, L2_COMPRESSED};
use super::writer::{be64_table, output_header, refcount_space, Qcow2Options, REFCOUNT_ORDER};

/// zlib level: qemu's (`Z_DEFAULT_COMPRESSION`, 6), so outputs are no larger than qemu's.
const ZLIB_LEVEL: u32 = 6;
/// zstd level: qemu's (`ZSTD_CLEVEL_DEFAULT`, 3).
const ZSTD_LEVEL: i32 = 3;

/// One cluster, encoded.
#[derive(Debug)]
pub(super) enum Stored {
    /// All zeros: left unallocated.
    Zero,
    /// Compressed bytes (shorter than a cluster).
    Compressed(Vec<u8>),
    /// Did not compress: stored as a normal cluster (the last may be short).
    Plain(Bytes),
}

/// A chunk's clusters, encoded.
#[derive(Debug)]
pub(crate) struct Encoded {
    first_cluster: u64,
    clusters: Vec<Stored>,
}

/// Compresses a chunk's clusters (runs on the worker pool).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompressEncoder {
    compression: Compression,
    cluster_size: usize,
}

impl CompressEncoder {
    fn zlib(&self, c: &mut flate2::Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
        c.reset();
        out.clear();
        // Headroom past the cluster: zlib-rs 0.6 can panic emitting a stored block into an
        // output buffer with almost no space left (seen with 4 KiB windows and clusters).
        out.reserve(2 * self.cluster_size + 1024);
        // Room for strictly less than a cluster: anything longer is stored plain.
        let limit = self.cluster_size - 1;
        match c.compress_vec(input, out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => out.len() <= limit,
            _ => false,
        }
    }

    fn zstd(&self, c: &mut zstd::bulk::Compressor<'_>, input: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        out.resize(self.cluster_size - 1, 0);
        match c.compress_to_buffer(input, out.as_mut_slice()) {
            Ok(n) => {
                out.truncate(n);
                true
            }
            Err(_) => false,
        }
    }
}

impl Encoder for CompressEncoder {
    type Encoded = Encoded;

    fn encode(&self, chunk: Chunk) -> Result<Encoded> {
        let cs = self.cluster_size;
        let first_cluster = chunk.offset / cs as u64;
        let mut clusters = Vec::with_capacity(chunk.units());
        let mut zlib = None;
        let mut zstd = None;
        let mut padded = Vec::new();
        for i in 0..chunk.units() {
            let Some(data) = chunk.unit_data(i) else {
                clusters.push(Stored::Zero);
                continue;
            };
            // A short last cluster is compressed as a whole cluster with a zero tail.
            let input: &[u8] = if data.len() < cs {
                padded.clear();
                padded.extend_from_slice(&data);
                padded.resize(cs, 0);
                &padded
            } else {
                &data
            };
            let mut out = Vec::new();
            let ok = match self.compression {
                Compression::Zlib => {
                    let c = zlib.get_or_insert_with(|| {
                        flate2::Compress::new_with_window_bits(
                            flate2::Compression::new(ZLIB_LEVEL),
                            false,
                            12,
                        )
                    });
                    self.zlib(c, input, &mut out)
                }
                Compression::Zstd => {
                    if zstd.is_none() {
                        zstd = Some(
                            zstd::bulk::Compressor::new(ZSTD_LEVEL)
                                .map_err(|e| Error::io("cannot start a zstd compressor", e))?,
                        );
                    }
                    match zstd.as_mut() {
                        Some(c) => self.zstd(c, input, &mut out),
                        None => false,
                    }
                }
            };
            clusters.push(if ok {
                Stored::Compressed(out)
            } else {
                Stored::Plain(data)
            });
        }
        Ok(Encoded {
            first_cluster,
            clusters,
        })
    }
}

/// The compressed QCOW2 writer.
#[derive(Debug)]
pub(crate) struct Qcow2CompressedWriter {
    opts: Qcow2Options,
    compression: Compression,
    virtual_size: u64,
    l1: Vec<u64>,
    /// The L2 table being filled: its L1 index and entries.
    l2: Option<(usize, Vec<u64>)>,
    /// Refcount of every host cluster written so far.
    refcounts: Vec<u16>,
    stored: u64,
}

impl Qcow2CompressedWriter {
    /// A writer for a disk of `virtual_size` bytes (rounded up to whole sectors, as qemu does).
    pub(crate) fn new(virtual_size: u64, opts: Qcow2Options) -> Result<Qcow2CompressedWriter> {
        let compression = opts
            .compression
            .ok_or_else(|| Error::invalid_argument("compressed writer without a compression"))?;
        let virtual_size = virtual_size.div_ceil(512) * 512;
        let cs = opts.cluster_size();
        let l1_size = virtual_size.div_ceil(cs).div_ceil(cs / 8);
        if l1_size * 8 > header::MAX_L1_BYTES {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "the disk is too large for QCOW2's L1",
            ));
        }
        Ok(Qcow2CompressedWriter {
            opts,
            compression,
            virtual_size,
            l1: vec![0; l1_size as usize],
            l2: None,
            refcounts: Vec::new(),
            stored: 0,
        })
    }

    fn cs(&self) -> u64 {
        self.opts.cluster_size()
    }

    /// Count one more reference to every cluster overlapping `[start, start + len)`.
    fn reference(&mut self, start: u64, len: u64) -> Result<()> {
        let cs = self.cs();
        let (first, last) = (start / cs, (start + len - 1) / cs);
        if self.refcounts.len() <= last as usize {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            let r = &mut self.refcounts[c as usize];
            *r = r
                .checked_add(1)
                .ok_or_else(|| Error::new(ErrorKind::LimitExceeded, "refcount overflow"))?;
        }
        Ok(())
    }

    /// Pad the output to the next cluster boundary.
    fn align(&self, out: &mut Output) -> Result<u64> {
        let cs = self.cs();
        let pos = out.position();
        let aligned = pos.div_ceil(cs) * cs;
        out.write_zeros(aligned - pos)?;
        Ok(aligned)
    }

    /// Write a whole table (big-endian entries, padded to clusters) and reference it.
    fn write_table(&mut self, entries: &[u64], out: &mut Output) -> Result<u64> {
        let at = self.align(out)?;
        let clusters = (entries.len() as u64 * 8).div_ceil(self.cs()).max(1);
        let table = be64_table(entries.iter().copied(), self.cs(), clusters)?;
        let len = table.len() as u64;
        out.write(&table)?;
        self.reference(at, len)?;
        Ok(at)
    }

    fn flush_l2(&mut self, out: &mut Output) -> Result<()> {
        if let Some((index, entries)) = self.l2.take() {
            let at = self.write_table(&entries, out)?;
            self.l1[index] = at | COPIED;
        }
        Ok(())
    }

    fn set_l2(&mut self, cluster: u64, entry: u64, out: &mut Output) -> Result<()> {
        let per_l2 = self.cs() / 8;
        let index = (cluster / per_l2) as usize;
        if self.l2.as_ref().is_some_and(|(i, _)| *i != index) {
            self.flush_l2(out)?;
        }
        let (_, table) = self
            .l2
            .get_or_insert_with(|| (index, vec![0u64; per_l2 as usize]));
        table[(cluster % per_l2) as usize] = entry;
        Ok(())
    }
}

impl Writer for Qcow2CompressedWriter {
    type Encoder = CompressEncoder;

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn unit_size(&self) -> u64 {
        self.cs()
    }

    fn needs_plan(&self) -> bool {
        false
    }

    fn light_encoder(&self) -> bool {
        false
    }

    fn needs_seek(&self) -> bool {
        true
    }

    fn measure_needs_plan(&self) -> bool {
        true
    }

    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        Ok(super::writer::measure_compressed(
            crate::writer::plan_given(plan)?,
            &self.opts,
        ))
    }

    fn output_len(&self) -> Option<u64> {
        None
    }

    fn encoder(&self) -> CompressEncoder {
        CompressEncoder {
            compression: self.compression,
            cluster_size: self.cs() as usize,
        }
    }

    fn begin(&mut self, _plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        // Cluster 0 holds the header, written last.
        out.write_zeros(self.cs())?;
        self.reference(0, self.cs())
    }

    fn commit(&mut self, enc: Encoded, out: &mut Output) -> Result<()> {
        let cs = self.cs();
        let shift = 62 - (self.opts.cluster_bits - 8);
        for (i, stored) in enc.clusters.into_iter().enumerate() {
            let cluster = enc.first_cluster + i as u64;
            match stored {
                Stored::Zero => {}
                Stored::Compressed(bytes) => {
                    let pos = out.position();
                    let sectors = ((pos % 512) + bytes.len() as u64).div_ceil(512);
                    let entry = L2_COMPRESSED | ((sectors - 1) << shift) | pos;
                    out.write(&Bytes::from_vec(bytes))?;
                    // qemu-img check counts the whole sectors the descriptor names.
                    self.reference(pos & !511, sectors * 512)?;
                    self.set_l2(cluster, entry, out)?;
                    self.stored += 1;
                }
                Stored::Plain(bytes) => {
                    let at = self.align(out)?;
                    let len = bytes.len() as u64;
                    out.write(&bytes)?;
                    out.write_zeros(cs - len)?;
                    self.reference(at, cs)?;
                    self.set_l2(cluster, at | COPIED, out)?;
                    self.stored += 1;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self, out: &mut Output) -> Result<WriterSummary> {
        let cs = self.cs();
        self.flush_l2(out)?;
        let l1 = std::mem::take(&mut self.l1);
        let l1_offset = if l1.is_empty() {
            self.align(out)?
        } else {
            self.write_table(&l1, out)?
        };
        // The refcount table and blocks count themselves: find the fixed point.
        let base = self.align(out)? / cs;
        let (rt, rb) = refcount_space(base, cs);
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let rt_offset = base * cs;
        let rb_offset = rt_offset + rt * cs;
        self.refcounts.resize((base + rt + rb) as usize, 0);
        for c in base..base + rt + rb {
            self.refcounts[c as usize] = 1;
        }
        out.write(&be64_table((0..rb).map(|i| rb_offset + i * cs), cs, rt)?)?;
        for b in 0..rb {
            let mut block = vec![0u8; cs as usize];
            let first = (b * per_block) as usize;
            for (slot, r) in block
                .chunks_exact_mut(2)
                .zip(self.refcounts.iter().skip(first))
            {
                slot.copy_from_slice(&r.to_be_bytes());
            }
            out.write(&Bytes::from_vec(block))?;
        }
        let h = output_header(
            &self.opts,
            self.virtual_size,
            (l1_offset, l1.len() as u64),
            (rt_offset, rt),
            self.compression,
        )?;
        let mut cluster0 = vec![0u8; V3_HEADER_LEN];
        header::encode(&h, &mut cluster0);
        out.write_at(0, &cluster0)?;
        Ok(WriterSummary {
            format: Format::Qcow2,
            allocated_units: self.stored,
            unit_size: cs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitvec::vec::BitVec;

    fn patterns(cs: usize) -> Vec<Vec<u8>> {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut noise = move |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        };
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(cs)
            .collect();
        let mut half = noise(cs / 2);
        half.resize(cs, 0);
        let mut mostly = text.clone();
        let r = noise(cs / 3);
        mostly[cs / 3..cs / 3 + r.len()].copy_from_slice(&r);
        vec![
            noise(cs),
            text,
            half,
            mostly,
            vec![7u8; cs],
            noise(cs - 1).into_iter().chain([1]).collect(),
        ]
    }

    fn roundtrip(compression: Compression, cs: usize) {
        let enc = CompressEncoder {
            compression,
            cluster_size: cs,
        };
        for (p, data) in patterns(cs).into_iter().enumerate() {
            let chunk = Chunk {
                offset: 0,
                len: cs,
                data: Some(Bytes::from_vec(data.clone())),
                unit: cs,
                nonzero: BitVec::repeat(true, 1),
                unread: Vec::new(),
            };
            let got = enc.encode(chunk).map(|e| e.clusters);
            let Ok(mut clusters) = got else {
                panic!("encode failed: {compression:?} {cs} pattern {p}");
            };
            // Text, half zeros, mostly text and a constant byte must come out compressed;
            // noise must be stored plain (compressed, it would not be smaller).
            let compressible = matches!(p, 1..=4);
            let stored_compressed = matches!(clusters.last(), Some(Stored::Compressed(_)));
            assert_eq!(
                stored_compressed, compressible,
                "{compression:?} {cs} pattern {p}: compressed {stored_compressed}"
            );
            match clusters.pop() {
                Some(Stored::Compressed(bytes)) => {
                    assert!(bytes.len() < cs, "{cs} pattern {p}: not smaller");
                    let mut plain = vec![0u8; cs];
                    let n = match compression {
                        Compression::Zlib => {
                            let mut d = flate2::Decompress::new_with_window_bits(false, 12);
                            let _ =
                                d.decompress(&bytes, &mut plain, flate2::FlushDecompress::Finish);
                            d.total_out() as usize
                        }
                        Compression::Zstd => {
                            zstd::bulk::decompress_to_buffer(&bytes, &mut plain).unwrap_or(0)
                        }
                    };
                    assert_eq!(n, cs, "{compression:?} {cs} pattern {p}");
                    assert_eq!(plain, data, "{compression:?} {cs} pattern {p}");
                }
                Some(Stored::Plain(b)) => assert_eq!(&*b, &data[..]),
                other => panic!("{cs} pattern {p}: unexpected {other:?}"),
            }
        }
    }

    /// Every cluster size, compressible and incompressible data, inflated back with a 4 KiB
    /// window (as qemu inflates) and compared.
    #[test]
    fn clusters_compress_and_inflate_back_with_a_4k_window() {
        for cs in [512usize, 4096, 65536, 2 << 20] {
            roundtrip(Compression::Zlib, cs);
            roundtrip(Compression::Zstd, cs);
        }
    }
}
