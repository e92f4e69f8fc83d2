//! `imgconv check` for QCOW2: every table entry in bounds and aligned, and every refcount equal
//! to the references the image really holds (qemu-img check's rules and counters).
//!
//! References are counted over the header cluster, the active L1 table, its L2 tables and
//! their data clusters (compressed ones by the sectors they span), the refcount table and
//! blocks, the snapshot table and each snapshot's L1 and L2 tables and data. A stored refcount
//! below the references is a corruption (two tables claiming one cluster among them); above
//! them, a leak.

use crate::check::CheckReport;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Format;

use super::reader::{Qcow2Reader, L2_COMPRESSED, OFFSET_MASK};
use super::refcount::Refcounts;

/// Autoclear bit 0: the bitmaps extension is consistent with the image.
const AUTOCLEAR_BITMAPS: u64 = 1;
/// The bitmaps header extension's type.
const EXT_BITMAPS: u32 = 0x2385_2875;
/// The largest bitmap directory read (qemu's own limit is 64 MiB).
const MAX_BITMAP_DIRECTORY: u64 = 64 << 20;
/// Bytes of bitmap tables read at most, all bitmaps together.
const MAX_BITMAP_TABLE_BYTES_IN_ALL: u64 = 256 << 20;

/// Host clusters a check counts references for at most (a `u16` each: 128 MiB).
const MAX_CHECKED_CLUSTERS: u64 = 1 << 26;

/// References counted per host cluster.
struct Refs {
    counts: Vec<u16>,
    cs: u64,
}

impl Refs {
    /// Count one reference to each cluster `[off, off + len)` touches; what lies past the end
    /// of the file is a corruption of `what`, found at `entry_at`.
    fn add(&mut self, r: &mut CheckReport, what: &str, entry_at: u64, off: u64, len: u64) {
        let first = off / self.cs;
        let last = (off + len.max(1) - 1) / self.cs;
        if last >= self.counts.len() as u64 {
            r.corruption(
                what,
                entry_at,
                format!("{what} at {off:#x} ({len} bytes) lies beyond the end of the file"),
            );
            return;
        }
        for c in first..=last {
            let n = &mut self.counts[c as usize];
            *n = n.saturating_add(1);
        }
    }
}

/// L2 tables walked at most, per host cluster of the file: snapshots share L2 tables with
/// the active layer, so a real image walks each a few times; a crafted one that points many
/// snapshots at one large L1 table stops here (a check error) instead of running for hours.
const L2_WALKS_PER_CLUSTER: u64 = 64;

/// Guest-side counters (qemu's "bfi").
#[derive(Default)]
struct Counters {
    allocated: u64,
    fragmented: u64,
    compressed: u64,
    next_contiguous: Option<u64>,
}

impl Qcow2Reader {
    /// Check the image's structures into `r`.
    pub(super) fn check_structures(&self, r: &mut CheckReport) -> Result<()> {
        let h = &self.h;
        let cs = h.cluster_size();
        let nclusters = self.file_len.div_ceil(cs);
        if nclusters > MAX_CHECKED_CLUSTERS {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("checking more than {MAX_CHECKED_CLUSTERS} host clusters is not supported"),
            )
            .with_format(Format::Qcow2));
        }
        let mut refs = Refs {
            counts: vec![0; nclusters as usize],
            cs,
        };
        let mut bfi = Counters::default();
        let mut budget = nclusters * L2_WALKS_PER_CLUSTER + 1024;
        refs.add(r, "header", 0, 0, cs);
        refs.add(
            r,
            "L1 table",
            40,
            h.l1_table_offset,
            self.l1.len() as u64 * 8,
        );
        self.check_l1(
            r,
            &mut refs,
            &self.l1,
            h.l1_table_offset,
            Some(&mut bfi),
            &mut budget,
        )?;

        // Snapshots hold references of their own.
        if h.nb_snapshots > 0 {
            match super::snapshot::l1_tables(&*self.src, h) {
                Ok((len, tables)) => {
                    refs.add(r, "snapshot table", 64, h.snapshots_offset, len);
                    for (off, size) in tables {
                        if off % cs != 0 || size as u64 * 8 > super::header::MAX_L1_BYTES {
                            r.corruption(
                                "snapshot L1 table",
                                h.snapshots_offset,
                                format!("snapshot L1 table at {off:#x} ({size} entries) is misaligned or too large"),
                            );
                            continue;
                        }
                        refs.add(
                            r,
                            "snapshot L1 table",
                            h.snapshots_offset,
                            off,
                            u64::from(size) * 8,
                        );
                        let mut raw = vec![0u8; size as usize * 8];
                        if off + raw.len() as u64 > self.file_len {
                            continue;
                        }
                        self.src.read_exact_at(off, &mut raw)?;
                        let l1: Vec<u64> = crate::bytes::be64s(&raw).collect();
                        self.check_l1(r, &mut refs, &l1, off, None, &mut budget)?;
                    }
                }
                Err(why) => r.corruption("snapshot table", 64, why),
            }
        }

        self.bitmap_references(r, &mut refs)?;

        let mut stored =
            Refcounts::load(&*self.src, h).map_err(|e| e.with_format(Format::Qcow2))?;
        refs.add(
            r,
            "refcount table",
            48,
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * cs,
        );
        let mut bad_blocks = Vec::new();
        for (i, &off) in stored.table.iter().enumerate() {
            if off == 0 {
                continue;
            }
            let at = h.refcount_table_offset + i as u64 * 8;
            if !stored.block_ok(off) {
                r.corruption(
                    "refcount table",
                    at,
                    format!("refcount block {i} at {off:#x} is misaligned or beyond the end of the file"),
                );
                bad_blocks.push(i);
                continue;
            }
            refs.add(r, "refcount block", at, off, cs);
        }

        // Stored refcounts against the references found.
        let mut highest = None;
        for c in 0..nclusters {
            let Some(have) = stored.get(&*self.src, c)? else {
                continue;
            };
            let want = u64::from(refs.counts[c as usize]);
            if have > 0 || want > 0 {
                highest = Some(c);
            }
            if have < want {
                r.corruption(
                    "refcount",
                    c * cs,
                    format!("ERROR cluster {c} refcount={have} reference={want}"),
                );
            } else if have > want {
                r.leak(
                    "refcount",
                    c * cs,
                    format!("Leaked cluster {c} refcount={have} reference={want}"),
                );
            }
        }
        r.image_end_offset = highest.map(|c| (c + 1) * cs);
        r.total_clusters = Some(h.size.div_ceil(cs));
        r.allocated_clusters = Some(bfi.allocated);
        r.fragmented_clusters = Some(bfi.fragmented);
        r.compressed_clusters = Some(bfi.compressed);
        Ok(())
    }

    /// The persistent dirty bitmaps' references (qemu's `bitmaps` header extension, when the
    /// autoclear bit says it is consistent): the bitmap directory, each bitmap's table and
    /// its data clusters.
    fn bitmap_references(&self, r: &mut CheckReport, refs: &mut Refs) -> Result<()> {
        let h = &self.h;
        if h.version < 3 || h.autoclear & AUTOCLEAR_BITMAPS == 0 {
            return Ok(());
        }
        let cs = h.cluster_size();
        // The extensions follow the header, inside the first cluster.
        let mut head = vec![0u8; cs.min(self.file_len) as usize];
        self.src.read_exact_at(0, &mut head)?;
        let mut at = h.header_length as usize;
        let mut directory = None;
        while at + 8 <= head.len() {
            let kind = crate::bytes::be32(&head, at);
            let len = crate::bytes::be32(&head, at + 4) as usize;
            if kind == 0 {
                break;
            }
            if kind == EXT_BITMAPS && len >= 24 && at + 8 + 24 <= head.len() {
                let size = crate::bytes::be64(&head, at + 16);
                let offset = crate::bytes::be64(&head, at + 24);
                directory = Some((size, offset, at as u64));
            }
            at = at.saturating_add(8 + len.next_multiple_of(8));
        }
        let Some((size, offset, ext_at)) = directory else {
            return Ok(());
        };
        if size > MAX_BITMAP_DIRECTORY
            || offset % cs != 0
            || offset
                .checked_add(size)
                .is_none_or(|end| end > self.file_len)
        {
            r.corruption(
                "bitmaps extension",
                ext_at,
                format!("the bitmap directory ({size} bytes at {offset:#x}) is misplaced"),
            );
            return Ok(());
        }
        refs.add(r, "bitmap directory", ext_at, offset, size);
        let mut dir = vec![0u8; size as usize];
        self.src.read_exact_at(offset, &mut dir)?;
        let mut pos = 0usize;
        let mut budget = MAX_BITMAP_TABLE_BYTES_IN_ALL;
        while pos + 24 <= dir.len() {
            let entry_at = offset + pos as u64;
            let table = crate::bytes::be64(&dir, pos);
            let entries = u64::from(crate::bytes::be32(&dir, pos + 8));
            let name_len = usize::from(crate::bytes::be16(&dir, pos + 18));
            let extra = crate::bytes::be32(&dir, pos + 20) as usize;
            if table % cs != 0
                || table
                    .checked_add(entries * 8)
                    .is_none_or(|e| e > self.file_len)
            {
                r.corruption(
                    "bitmap directory",
                    entry_at,
                    format!("a bitmap table ({entries} entries at {table:#x}) is misplaced"),
                );
            } else if entries * 8 > budget {
                // More bitmap tables than any real image holds: not checked.
                r.check_errors += 1;
                return Ok(());
            } else if entries > 0 {
                budget -= entries * 8;
                refs.add(r, "bitmap table", entry_at, table, entries * 8);
                let mut raw = vec![0u8; (entries * 8) as usize];
                self.src.read_exact_at(table, &mut raw)?;
                for (i, e) in crate::bytes::be64s(&raw).enumerate() {
                    let data = e & OFFSET_MASK;
                    let at = table + i as u64 * 8;
                    if data % cs != 0 {
                        r.corruption(
                            "bitmap table",
                            at,
                            format!("bitmap data cluster at {data:#x} is not cluster-aligned"),
                        );
                    } else if data != 0 {
                        refs.add(r, "bitmap data", at, data, cs);
                    }
                }
            }
            pos = pos.saturating_add((24 + extra.min(1 << 20) + name_len).next_multiple_of(8));
        }
        Ok(())
    }

    /// Count the references of an L1 table at `l1_at` and of its L2 tables; `bfi` for the
    /// active one.
    fn check_l1(
        &self,
        r: &mut CheckReport,
        refs: &mut Refs,
        l1: &[u64],
        l1_at: u64,
        mut bfi: Option<&mut Counters>,
        budget: &mut u64,
    ) -> Result<()> {
        let h = &self.h;
        let cs = h.cluster_size();
        let per_l2 = h.l2_entries();
        let ext = h.extended_l2();
        let shift = 62 - (h.cluster_bits - 8);
        let mut table = vec![0u8; cs as usize];
        for (i, &e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let at = l1_at + i as u64 * 8;
            if off % cs != 0 {
                r.corruption(
                    "L1 table",
                    at,
                    format!("L2 table {i} at {off:#x} is not cluster-aligned"),
                );
                continue;
            }
            if off + cs > self.file_len {
                r.corruption(
                    "L1 table",
                    at,
                    format!("L2 table {i} at {off:#x} lies beyond the end of the file"),
                );
                continue;
            }
            refs.add(r, "L2 table", at, off, cs);
            if *budget == 0 {
                r.check_errors += 1;
                return Ok(());
            }
            *budget -= 1;
            self.src.read_exact_at(off, &mut table)?;
            let step = if ext { 16 } else { 8 };
            for j in 0..per_l2 {
                let guest = (i as u64 * per_l2 + j) * cs;
                let pos = (j * step) as usize;
                let entry = crate::bytes::be64(&table, pos);
                let entry_at = off + pos as u64;
                if entry & L2_COMPRESSED != 0 {
                    let host = entry & ((1u64 << shift) - 1);
                    let sectors = ((entry >> shift) & ((1u64 << (h.cluster_bits - 8)) - 1)) + 1;
                    refs.add(
                        r,
                        "compressed cluster",
                        entry_at,
                        host & !511,
                        sectors * 512,
                    );
                    if let Some(b) = bfi.as_deref_mut() {
                        if guest < h.size {
                            b.allocated += 1;
                            b.compressed += 1;
                            b.fragmented += 1;
                            b.next_contiguous = None;
                        }
                    }
                    continue;
                }
                let host = entry & OFFSET_MASK;
                if host == 0 {
                    continue;
                }
                if host % cs != 0 {
                    r.corruption(
                        "L2 table",
                        entry_at,
                        format!("data cluster at {host:#x} (guest offset {guest:#x}) is not cluster-aligned"),
                    );
                    continue;
                }
                refs.add(r, "data cluster", entry_at, host, cs);
                if let Some(b) = bfi.as_deref_mut() {
                    b.allocated += 1;
                    if b.next_contiguous.is_some_and(|n| n != host) {
                        b.fragmented += 1;
                    }
                    b.next_contiguous = Some(host + cs);
                }
            }
        }
        Ok(())
    }
}
