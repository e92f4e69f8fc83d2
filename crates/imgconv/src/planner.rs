//! The planner: which of a writer's units hold data, known before any byte is written.
//!
//! It walks the reader's extent map; zero and unallocated extents are never read, and data
//! extents are read in parallel and scanned for all-zero units. The resulting [`Plan`] lets a
//! writer lay out header, tables and data up front, answers `imgconv measure`, and gives
//! progress a true total.

use bitvec::vec::BitVec;
use rayon::prelude::*;

use crate::buffer::BufferPool;
use crate::error::{Error, Result};
use crate::model::{check_unit, unit_count, Extent, Plan};
use crate::pipeline::{chunk_size_for, load_chunk};
use crate::progress::CancelToken;
use crate::reader::{for_each_mapping, Reader};
use crate::zero;

/// Bytes read at a time when probing a large unit for data.
const PROBE: usize = 64 << 10;

/// Which units of `[offset, offset + len)` hold data, reading large units piece by piece
/// and stopping at the first non-zero piece: a data block of 2 MiB usually costs one 64 KiB
/// read, not 2 MiB. Only all-zero units inside data extents are read in full.
fn probe_chunk(reader: &dyn Reader, offset: u64, len: usize, unit: usize) -> Result<BitVec> {
    let end = offset + len as u64;
    let mut nonzero = BitVec::repeat(false, len.div_ceil(unit));
    let mut piece = vec![0u8; PROBE];
    for_each_mapping(reader, offset, end, |pos, m| {
        if m.extent != Extent::Data {
            return Ok(std::ops::ControlFlow::Continue(()));
        }
        let mut at = pos;
        let stop = pos + m.len;
        while at < stop {
            let u = ((at - offset) / unit as u64) as usize;
            let unit_end = offset + (u as u64 + 1) * unit as u64;
            if nonzero[u] {
                at = unit_end;
                continue;
            }
            let n = (stop.min(unit_end) - at).min(PROBE as u64) as usize;
            reader.read_at(at, &mut piece[..n])?;
            if zero::is_zero(&piece[..n]) {
                at += n as u64;
            } else {
                nonzero.set(u, true);
                at = unit_end;
            }
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    Ok(nonzero)
}

/// Build the plan of `reader` at `unit` bytes, reading data extents in parallel on the rayon
/// pool with `chunk_size`-byte reads.
pub fn plan(reader: &dyn Reader, unit: u64, chunk_size: u64, cancel: &CancelToken) -> Result<Plan> {
    plan_reporting(
        reader,
        unit,
        chunk_size,
        cancel,
        &crate::progress::NoProgress,
    )
}

/// [`plan`], telling `progress` how far the planning read has come.
pub(crate) fn plan_reporting(
    reader: &dyn Reader,
    unit: u64,
    chunk_size: u64,
    cancel: &CancelToken,
    progress: &dyn crate::progress::Progress,
) -> Result<Plan> {
    check_unit(unit)?;
    let size = reader.virtual_size();
    let chunk = chunk_size_for(unit, chunk_size);
    let chunks = size.div_ceil(chunk);
    let chunk_len = usize::try_from(chunk)
        .map_err(|_| Error::invalid_argument("chunk size too large for this platform"))?;
    let pool = BufferPool::new(chunk_len, rayon::current_num_threads() * 2);
    let planned = std::sync::atomic::AtomicU64::new(0);
    let parts: Vec<BitVec> = (0..chunks)
        .into_par_iter()
        .map(|i| {
            cancel.check()?;
            let off = i * chunk;
            let len = (size - off).min(chunk) as usize;
            let bits = if unit > PROBE as u64 {
                probe_chunk(reader, off, len, unit as usize)
            } else {
                load_chunk(reader, off, len, unit as usize, &pool).map(|c| c.nonzero)
            };
            let done = planned.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
            progress.planning(done + len as u64, size);
            bits
        })
        .collect::<Result<_>>()?;
    let mut allocated = BitVec::with_capacity(unit_count(size, unit) as usize);
    for p in parts {
        allocated.extend_from_bitslice(&p);
    }
    Plan::new(size, unit, allocated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::raw::RawReader;
    use crate::source::MemSource;

    #[test]
    fn probing_large_units_finds_data_anywhere_in_them() -> Result<()> {
        let unit = 1u64 << 20;
        let size = 5 * unit + 4096;
        let mut disk = vec![0u8; size as usize];
        disk[unit as usize - 1] = 1; // last byte of unit 0
        disk[2 * unit as usize + PROBE] = 1; // second probe of unit 2
        disk[4 * unit as usize] = 1; // first byte of unit 4
        disk[size as usize - 1] = 1; // the partial last unit
        let reader = RawReader::new(Box::new(MemSource::new(disk.clone())));
        for chunk in [unit, 4 * unit] {
            let p = plan(&reader, unit, chunk, &CancelToken::new())?;
            let want: Vec<bool> = disk
                .chunks(unit as usize)
                .map(|c| c.iter().any(|&b| b != 0))
                .collect();
            let got: Vec<bool> = p.bitmap().iter().by_vals().collect();
            assert_eq!(got, want, "chunk {chunk}");
        }
        Ok(())
    }
}
