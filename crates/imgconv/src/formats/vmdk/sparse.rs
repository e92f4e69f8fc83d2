//! A VMDK sparse extent: grain directory → grain tables → grains (plain or compressed).

use std::sync::Arc;

use crate::check::CheckReport;
use crate::error::{Error, Result};
use crate::formats::table_cache::TableCache;
use crate::model::{Extent, Format};
use crate::source::Source;

use super::header::{SparseHeader, FLAG_RGD, FLAG_ZEROED_GTE, GD_AT_END};

/// Grain tables kept in memory at most (bytes).
const GT_CACHE_BYTES: usize = 16 << 20;

/// What one grain holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grain {
    Unallocated,
    Zero,
    Plain(u64),
    Compressed(u64),
}

/// Plain grains a check compares for overlaps at most (16 bytes each: 256 MiB).
const MAX_CHECKED_GRAINS: usize = 1 << 24;

/// An opened sparse extent.
pub(super) struct SparseExtent {
    src: Box<dyn Source>,
    pub(super) h: SparseHeader,
    gd: Vec<u32>,
    file_len: u64,
    cache: TableCache<u32, u32>,
}

fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Vmdk, at, msg)
}

impl SparseExtent {
    /// Open a sparse extent whose header is `h` (already parsed from the start of `src`).
    pub(super) fn open(src: Box<dyn Source>, mut h: SparseHeader) -> Result<SparseExtent> {
        let file_len = src.len();
        if h.gd_offset == GD_AT_END {
            // streamOptimized as VMware writes it: the footer (a header copy with the real
            // gdOffset) sits before the end-of-stream marker, 1024 bytes from the end.
            if file_len < 1536 {
                return Err(bad(file_len, "the stream ends before its footer"));
            }
            let mut foot = vec![0u8; 512];
            src.read_exact_at(file_len - 1024, &mut foot)?;
            let f = SparseHeader::parse(&foot).map_err(|e| {
                bad(
                    file_len - 1024,
                    "the streamOptimized footer is missing or invalid",
                )
                .with_source(e)
            })?;
            if f.capacity != h.capacity
                || f.grain_sectors != h.grain_sectors
                || f.gd_offset == GD_AT_END
            {
                return Err(bad(
                    file_len - 1024,
                    "the streamOptimized footer disagrees with the header",
                ));
            }
            h.gd_offset = f.gd_offset;
            h.gt_entries = f.gt_entries;
        }
        if h.overhead.checked_mul(512).is_none_or(|end| end > file_len) {
            return Err(bad(64, format!(
                "the file ({file_len} bytes) ends inside its own metadata ({} sectors): it is truncated",
                h.overhead
            )));
        }
        let entries = h.gd_entries();
        let gd_at = h.gd_offset.checked_mul(512).filter(|&o| o > 0);
        let gd_bytes = entries * 4;
        let gd_at = gd_at
            .filter(|o| o.checked_add(gd_bytes).is_some_and(|end| end <= file_len))
            .ok_or_else(|| bad(56, "the grain directory lies outside the file"))?;
        let mut raw = vec![0u8; gd_bytes as usize];
        src.read_exact_at(gd_at, &mut raw)?;
        let gd = crate::bytes::le32s(&raw).collect();
        Ok(SparseExtent {
            src,
            h,
            gd,
            file_len,
            cache: TableCache::new(GT_CACHE_BYTES),
        })
    }

    fn table(&self, gd_index: usize) -> Result<Option<Arc<[u32]>>> {
        let sector = self.gd.get(gd_index).copied().unwrap_or(0);
        if sector == 0 {
            return Ok(None);
        }
        self.cache
            .get_or_load(sector, || {
                let bytes = u64::from(self.h.gt_entries) * 4;
                let at = u64::from(sector) * 512;
                if at.checked_add(bytes).is_none_or(|end| end > self.file_len) {
                    return Err(bad(
                        at,
                        format!("grain table {gd_index} lies beyond the end of the file"),
                    ));
                }
                let mut raw = vec![0u8; bytes as usize];
                crate::source::read_holed(&*self.src, at, &mut raw)?;
                Ok(crate::bytes::le32s(&raw).collect())
            })
            .map(Some)
    }

    /// `imgconv check`: every grain table inside the file and read once, every grain inside
    /// the file, past the metadata and apart from every other, and the redundant grain
    /// directory and tables equal to the primary ones. Findings name `extent`.
    pub(super) fn check(&self, extent: usize, r: &mut CheckReport) -> Result<()> {
        let gb = self.h.grain_bytes();
        let gt_bytes = u64::from(self.h.gt_entries) * 4;
        let gd_at = self.h.gd_offset * 512;
        let meta_end = self.h.overhead * 512;
        let zeroed = self.h.flags & FLAG_ZEROED_GTE != 0;
        let mut tables = std::collections::HashMap::new();
        let mut grains: Vec<(u64, u64)> = Vec::new();
        let mut raw = vec![0u8; gt_bytes as usize];
        for (i, &sector) in self.gd.iter().enumerate() {
            if sector == 0 {
                continue;
            }
            let entry_at = gd_at + i as u64 * 4;
            let at = u64::from(sector) * 512;
            if at
                .checked_add(gt_bytes)
                .is_none_or(|end| end > self.file_len)
            {
                r.corruption(
                    "grain directory",
                    entry_at,
                    format!("extent {extent}: grain table {i} at {at:#x} lies beyond the end of the file"),
                );
                continue;
            }
            if let Some(other) = tables.insert(sector, i) {
                r.corruption(
                    "grain directory",
                    entry_at,
                    format!("extent {extent}: grain tables {other} and {i} are both at {at:#x}"),
                );
                continue;
            }
            self.src.read_exact_at(at, &mut raw)?;
            for (j, e) in crate::bytes::le32s(&raw).enumerate() {
                if e == 0 || (e == 1 && zeroed) {
                    continue;
                }
                let g_at = u64::from(e) * 512;
                let gte_at = at + j as u64 * 4;
                let what = format!(
                    "extent {extent}: grain {} at {g_at:#x}",
                    i as u64 * u64::from(self.h.gt_entries) + j as u64
                );
                if self.h.compressed() {
                    if g_at >= self.file_len {
                        r.corruption(
                            "grain table",
                            gte_at,
                            format!("{what} lies beyond the end of the file"),
                        );
                    }
                } else if g_at + gb > self.file_len {
                    r.corruption(
                        "grain table",
                        gte_at,
                        format!("{what} runs past the end of the file"),
                    );
                } else if g_at < meta_end {
                    r.corruption(
                        "grain table",
                        gte_at,
                        format!("{what} overlaps the metadata (the first {meta_end} bytes)"),
                    );
                } else if grains.len() < MAX_CHECKED_GRAINS {
                    grains.push((g_at, gte_at));
                } else {
                    r.check_errors += 1;
                    break;
                }
            }
        }
        grains.sort_unstable();
        for w in grains.windows(2) {
            if w[1].0 < w[0].0 + gb {
                r.corruption(
                    "grain table",
                    w[1].1,
                    format!(
                        "extent {extent}: the grain at {:#x} overlaps the grain at {:#x}",
                        w[1].0, w[0].0
                    ),
                );
            }
        }
        if self.h.flags & FLAG_RGD != 0 && self.h.rgd_offset != 0 && !self.h.compressed() {
            self.check_redundant(extent, r)?;
        }
        Ok(())
    }

    /// The redundant grain directory and its tables against the primary ones.
    fn check_redundant(&self, extent: usize, r: &mut CheckReport) -> Result<()> {
        let n = self.gd.len() as u64;
        let gt_bytes = u64::from(self.h.gt_entries) * 4;
        let rgd_at = self.h.rgd_offset.saturating_mul(512);
        if rgd_at
            .checked_add(n * 4)
            .is_none_or(|end| end > self.file_len)
        {
            r.corruption(
                "redundant grain directory",
                rgd_at,
                format!("extent {extent}: the redundant grain directory lies beyond the end of the file"),
            );
            return Ok(());
        }
        let mut raw = vec![0u8; (n * 4) as usize];
        self.src.read_exact_at(rgd_at, &mut raw)?;
        let rgd: Vec<u32> = crate::bytes::le32s(&raw).collect();
        let (mut a, mut b) = (vec![0u8; gt_bytes as usize], vec![0u8; gt_bytes as usize]);
        for (i, (&p, &q)) in self.gd.iter().zip(&rgd).enumerate() {
            let entry_at = rgd_at + i as u64 * 4;
            if (p == 0) != (q == 0) {
                r.corruption(
                    "redundant grain directory",
                    entry_at,
                    format!("extent {extent}: entry {i} is {q}, the primary's is {p}"),
                );
                continue;
            }
            let (pa, qa) = (u64::from(p) * 512, u64::from(q) * 512);
            if p == 0 || pa + gt_bytes > self.file_len {
                continue;
            }
            if qa + gt_bytes > self.file_len {
                r.corruption(
                    "redundant grain directory",
                    entry_at,
                    format!("extent {extent}: redundant grain table {i} at {qa:#x} lies beyond the end of the file"),
                );
                continue;
            }
            self.src.read_exact_at(pa, &mut a)?;
            self.src.read_exact_at(qa, &mut b)?;
            if let Some(j) = (0..a.len() / 4).find(|&j| a[j * 4..j * 4 + 4] != b[j * 4..j * 4 + 4])
            {
                let get = |t: &[u8]| crate::bytes::le32(t, j * 4);
                r.corruption(
                    "redundant grain table",
                    qa + j as u64 * 4,
                    format!(
                        "extent {extent}: entry {j} of redundant grain table {i} is {}, the primary's is {}",
                        get(&b),
                        get(&a)
                    ),
                );
            }
        }
        Ok(())
    }

    /// The grain with index `g`.
    pub(super) fn grain(&self, g: u64) -> Result<Grain> {
        let per = u64::from(self.h.gt_entries);
        let Some(t) = self.table((g / per) as usize)? else {
            return Ok(Grain::Unallocated);
        };
        let e = t[(g % per) as usize];
        Ok(match e {
            0 => Grain::Unallocated,
            1 if self.h.flags & FLAG_ZEROED_GTE != 0 => Grain::Zero,
            s if self.h.compressed() => Grain::Compressed(u64::from(s) * 512),
            s => Grain::Plain(u64::from(s) * 512),
        })
    }

    /// The extent kind at byte `pos` of this extent, and how far it reaches in its grain.
    pub(super) fn piece(&self, pos: u64) -> Result<(Extent, u64, Grain)> {
        let gb = self.h.grain_bytes();
        let g = self.grain(pos / gb)?;
        let kind = match g {
            Grain::Unallocated => Extent::Unallocated,
            Grain::Zero => Extent::Zero,
            _ => Extent::Data,
        };
        Ok((kind, gb - pos % gb, g))
    }

    /// Read `buf.len()` bytes at `pos` (within one grain) of a data grain.
    pub(super) fn read_grain(
        &self,
        grain: Grain,
        index: u64,
        pos_in_grain: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let gb = self.h.grain_bytes();
        match grain {
            Grain::Plain(at) => {
                let from = at + pos_in_grain;
                if from + buf.len() as u64 > self.file_len {
                    return Err(bad(at, "a grain lies beyond the end of the file"));
                }
                self.src.read_exact_at(from, buf)
            }
            Grain::Compressed(at) => {
                // Grain marker: u64 LBA, u32 compressed length, then zlib data.
                if at.checked_add(12).is_none_or(|end| end > self.file_len) {
                    return Err(bad(
                        at,
                        "a compressed grain lies beyond the end of the file",
                    ));
                }
                let mut m = [0u8; 12];
                self.src.read_exact_at(at, &mut m)?;
                let lba = crate::bytes::le64(&m, 0);
                let len = u64::from(crate::bytes::le32(&m, 8));
                if lba != index * self.h.grain_sectors {
                    return Err(bad(
                        at,
                        format!(
                            "a grain marker names sector {lba}, expected {}",
                            index * self.h.grain_sectors
                        ),
                    ));
                }
                if len > 2 * gb + 4096 || at + 12 + len > self.file_len {
                    return Err(bad(
                        at,
                        format!(
                            "a compressed grain of {len} bytes lies beyond the end of the file"
                        ),
                    ));
                }
                let mut packed = vec![0u8; len as usize];
                self.src.read_exact_at(at + 12, &mut packed)?;
                let mut plain = vec![0u8; gb as usize];
                let mut d = flate2::Decompress::new(true);
                let _ = d.decompress(&packed, &mut plain, flate2::FlushDecompress::Finish);
                let produced = d.total_out();
                let need = pos_in_grain + buf.len() as u64;
                if produced < need {
                    return Err(bad(at, format!("a compressed grain inflates to {produced} bytes, fewer than the {need} needed")));
                }
                let s = pos_in_grain as usize;
                buf.copy_from_slice(&plain[s..s + buf.len()]);
                Ok(())
            }
            Grain::Unallocated | Grain::Zero => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}
