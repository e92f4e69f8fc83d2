//! Content comparison of two virtual disks (`imgconv compare`).

use std::sync::Arc;

use rayon::prelude::*;

use crate::buffer::BufferPool;
use crate::error::Result;
use crate::planner::chunks_with_data;
use crate::progress::CancelToken;
use crate::reader::{is_known_zero, Reader};
use crate::zero::is_zero;

/// Bytes compared per parallel task.
const CHUNK: u64 = 4 << 20;
/// The granularity a mismatch is reported at, as qemu-img reports it.
const SECTOR: u64 = 512;

/// The outcome of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Same content; when sizes differ, the larger disk's extra part reads as zeros.
    Identical {
        /// Whether the virtual sizes differ.
        size_mismatch: bool,
    },
    /// The first 512-byte sector whose content differs.
    Mismatch {
        /// Byte offset of that sector.
        offset: u64,
        /// Whether the virtual sizes differ.
        size_mismatch: bool,
    },
}

/// Compare the content of `a` and `b` as `qemu-img compare` does: over the common size, and
/// past it the larger disk must read as zeros. Runs in parallel; ranges that both maps call
/// zero are not read.
pub fn compare(a: &dyn Reader, b: &dyn Reader, cancel: &CancelToken) -> Result<Comparison> {
    let (sa, sb) = (a.virtual_size(), b.virtual_size());
    let size_mismatch = sa != sb;
    let common = sa.min(sb);
    let pool = BufferPool::new(CHUNK as usize, rayon::current_num_threads() * 4);
    let mismatch = |offset| Comparison::Mismatch {
        offset,
        size_mismatch,
    };
    // Only chunks that hold data in either disk are looked at: a hole costs a map answer.
    let mut with_data = chunks_with_data(a, CHUNK, cancel)?;
    with_data.extend(chunks_with_data(b, CHUNK, cancel)?);
    with_data.sort_unstable();
    with_data.dedup();
    let (within, past): (Vec<u64>, Vec<u64>) = with_data.iter().partition(|&&i| i * CHUNK < common);
    if let Some(offset) = first_hit(&within, common, cancel, |off, len| {
        compare_chunk(a, b, off, len, &pool)
    })? {
        return Ok(mismatch(offset));
    }
    let longer: &dyn Reader = if sa > sb { a } else { b };
    // The chunk holding the common end may run past it: its part past the end is checked too.
    let tail: Vec<u64> = within.last().copied().into_iter().chain(past).collect();
    if let Some(offset) = first_hit(&tail, sa.max(sb), cancel, |off, len| {
        let start = off.max(common);
        match (off + len).checked_sub(start) {
            Some(n) if n > 0 => nonzero_sector(longer, start, n, &pool),
            _ => Ok(None),
        }
    })? {
        return Ok(mismatch(offset));
    }
    Ok(Comparison::Identical { size_mismatch })
}

/// Run `check` over the chunks `chunks` (ascending indices of `CHUNK`-byte chunks, cut at
/// `end`) in parallel and return the lowest hit.
fn first_hit(
    chunks: &[u64],
    end: u64,
    cancel: &CancelToken,
    check: impl Fn(u64, u64) -> Result<Option<u64>> + Sync,
) -> Result<Option<u64>> {
    chunks
        .par_iter()
        .filter(|&&i| i * CHUNK < end)
        .map(|&i| -> Result<Option<u64>> {
            cancel.check()?;
            let off = i * CHUNK;
            check(off, (end - off).min(CHUNK))
        })
        .find_map_first(|r| match r {
            Ok(None) => None,
            other => Some(other),
        })
        .unwrap_or(Ok(None))
}

fn compare_chunk(
    a: &dyn Reader,
    b: &dyn Reader,
    off: u64,
    len: u64,
    pool: &Arc<BufferPool>,
) -> Result<Option<u64>> {
    let za = is_known_zero(a, off, off + len)?;
    let zb = is_known_zero(b, off, off + len)?;
    match (za, zb) {
        (true, true) => Ok(None),
        (true, false) => nonzero_sector(b, off, len, pool),
        (false, true) => nonzero_sector(a, off, len, pool),
        (false, false) => {
            let n = len as usize;
            let mut ba = pool.get();
            let mut bb = pool.get();
            a.read_at(off, &mut ba.as_mut_slice()[..n])?;
            b.read_at(off, &mut bb.as_mut_slice()[..n])?;
            Ok(ba[..n]
                .chunks(SECTOR as usize)
                .zip(bb[..n].chunks(SECTOR as usize))
                .position(|(x, y)| x != y)
                .map(|s| off + s as u64 * SECTOR))
        }
    }
}

fn nonzero_sector(
    r: &dyn Reader,
    off: u64,
    len: u64,
    pool: &Arc<BufferPool>,
) -> Result<Option<u64>> {
    if is_known_zero(r, off, off + len)? {
        return Ok(None);
    }
    let n = len as usize;
    let mut buf = pool.get();
    r.read_at(off, &mut buf.as_mut_slice()[..n])?;
    Ok(buf[..n]
        .chunks(SECTOR as usize)
        .position(|s| !is_zero(s))
        .map(|s| off + s as u64 * SECTOR))
}
