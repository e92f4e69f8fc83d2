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

/// The first read of a unit when the reader says small reads are cheap: a unit holding data
/// almost always shows it in its first page.
const FIRST_PROBE: usize = 4 << 10;

/// Which units of `[offset, offset + len)` hold data, reading units piece by piece and
/// stopping at the first non-zero piece: a data block of 2 MiB usually costs one read of
/// `first` bytes, not 2 MiB. Only all-zero units inside data extents are read in full.
fn probe_chunk(
    reader: &dyn Reader,
    offset: u64,
    len: usize,
    unit: usize,
    first: usize,
) -> Result<BitVec> {
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
            let step = if (at - offset) % unit as u64 == 0 {
                first
            } else {
                PROBE
            };
            let n = (stop.min(unit_end) - at).min(step as u64) as usize;
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
            // Where small reads are cheap (a file, once read ahead), each unit's first page
            // decides most units; else only units larger than a probe are probed.
            let first = if reader.read_ahead(off, len as u64) {
                FIRST_PROBE
            } else {
                PROBE
            };
            let bits = if unit > first as u64 {
                probe_chunk(reader, off, len, unit as usize, first)
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

    /// A source that gives no read-ahead promise: the planner reads in whole 64 KiB probes.
    struct NoReadAhead(MemSource);

    impl crate::source::Source for NoReadAhead {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.0.read_exact_at(offset, buf)
        }
    }

    #[test]
    fn probing_finds_data_anywhere_in_a_unit() -> Result<()> {
        for unit in [64u64 << 10, 1 << 20] {
            let u = unit as usize;
            let size = 7 * unit + 4096;
            let mut disk = vec![0u8; size as usize];
            disk[u - 1] = 1; // last byte of unit 0
            disk[u + FIRST_PROBE] = 1; // just past the first probe of unit 1
            disk[2 * u + FIRST_PROBE - 1] = 1; // last byte of the first probe of unit 2
            disk[3 * u + (PROBE + FIRST_PROBE).min(u - 1)] = 1; // a later probe of unit 3
            disk[5 * u] = 1; // first byte of unit 5 (unit 4 and 6 stay zero)
            disk[size as usize - 1] = 1; // the partial last unit
            let want: Vec<bool> = disk.chunks(u).map(|c| c.iter().any(|&b| b != 0)).collect();
            let sources: [Box<dyn crate::source::Source>; 2] = [
                Box::new(MemSource::new(disk.clone())),
                Box::new(NoReadAhead(MemSource::new(disk.clone()))),
            ];
            for (i, source) in sources.into_iter().enumerate() {
                let reader = RawReader::new(source);
                for chunk in [unit, 4 * unit, 4 << 20] {
                    let p = plan(&reader, unit, chunk, &CancelToken::new())?;
                    let got: Vec<bool> = p.bitmap().iter().by_vals().collect();
                    assert_eq!(got, want, "unit {unit}, chunk {chunk}, source {i}");
                }
            }
        }
        Ok(())
    }
}
