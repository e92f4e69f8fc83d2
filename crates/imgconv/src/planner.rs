//! The planner: which of a writer's units hold data, known before any byte is written.
//!
//! It walks the reader's extent map once over the whole disk, so a hole costs one map answer
//! however long it is; only the chunks that data extents touch are visited at all. Zero and
//! unallocated extents are never read nor read ahead; data extents are read in parallel and
//! scanned for all-zero units. The resulting [`Plan`] lets a writer lay out header, tables and
//! data up front, answers `imgconv measure`, and gives progress a true total.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bitvec::vec::BitVec;

use crate::buffer::BufferPool;
use crate::error::{Error, Result};
use crate::model::{check_unit, unit_count, Extent, Plan};
use crate::pipeline::{advise_data, chunk_size_for, load_chunk};
use crate::progress::CancelToken;
use crate::reader::{for_each_mapping, Reader};
use crate::zero;

/// Bytes read at a time when probing a large unit for data.
const PROBE: usize = 64 << 10;

/// The first read of a unit when the reader says small reads are cheap (see [`first_read`]).
const FIRST_PROBE: usize = 512;

/// Bytes of data advised ahead of the chunk being probed, when units are small. Each unit's
/// first sector is read, so all the data comes in from storage during planning; advised a
/// window ahead, it streams at the storage's speed instead of waiting chunk by chunk, and the
/// window bounds what is brought in early whatever the image size. Holes are never advised.
const PLAN_READ_AHEAD: u64 = 32 << 20;

/// Units at least this large are probed without read-ahead: a probe or two per MiB costs
/// less than bringing the whole unit in early.
const NO_READ_AHEAD_UNIT: u64 = 1 << 20;

/// The size of a unit's first read: a sector where the reader says small reads are cheap (a
/// unit holding data almost always shows it there, and a sector of a 64 KiB cluster is under
/// 1% of it, so planning adds less than 1% to the bytes a conversion reads); a page for large
/// units (a seek either way); else a whole probe (a unit of a compressed format costs its
/// whole cluster whatever part of it is read).
fn first_read(cheap: bool, unit: u64) -> usize {
    if cheap {
        FIRST_PROBE
    } else if unit >= NO_READ_AHEAD_UNIT {
        4 << 10
    } else {
        PROBE
    }
}

/// Which units of `[offset, offset + len)` hold data, reading units piece by piece and
/// stopping at the first non-zero piece: a data block of 2 MiB usually costs one read of a
/// sector, not 2 MiB. Only all-zero units inside data extents are read in full. `cheap`: the
/// reader says small reads are cheap (its data was advised ahead, see [`plan_reporting`]), so
/// a unit's first read is a sector.
fn probe_chunk(
    reader: &dyn Reader,
    offset: u64,
    len: usize,
    unit: usize,
    cheap: bool,
) -> Result<BitVec> {
    let end = offset + len as u64;
    let mut nonzero = BitVec::repeat(false, len.div_ceil(unit));
    let mut piece = vec![0u8; PROBE];
    let first = first_read(cheap, unit as u64);
    for_each_mapping(reader, offset, end, |pos, m| {
        if m.extent != Extent::Data {
            return Ok(std::ops::ControlFlow::Continue(()));
        }
        let mut at = pos;
        let stop = pos + m.len;
        // The unit whose first read was made: an extent may start anywhere in a unit, and a
        // unit's first read (wherever it falls) is the small one.
        let mut started: Option<usize> = None;
        while at < stop {
            let u = ((at - offset) / unit as u64) as usize;
            let unit_end = offset + (u as u64 + 1) * unit as u64;
            if nonzero[u] {
                at = unit_end;
                continue;
            }
            let step = if started != Some(u) {
                started = Some(u);
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

/// The chunks (of `chunk` bytes) that data extents of `reader` touch, in ascending order,
/// from one walk of the map: a hole of any length is one answer.
pub(crate) fn chunks_with_data(
    reader: &dyn Reader,
    chunk: u64,
    cancel: &CancelToken,
) -> Result<Vec<u64>> {
    let size = reader.virtual_size();
    let mut chunks: Vec<u64> = Vec::new();
    let mut answers = 0u32;
    for_each_mapping(reader, 0, size, |pos, m| {
        answers = answers.wrapping_add(1);
        if answers % 4096 == 0 {
            cancel.check()?;
        }
        if m.extent == Extent::Data {
            let first = pos / chunk;
            let last = (pos + m.len - 1) / chunk;
            let from = match chunks.last() {
                Some(&c) if c >= first => c + 1,
                _ => first,
            };
            chunks.extend(from..=last);
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    Ok(chunks)
}

/// The units (of `unit` bytes) that data extents of `reader` touch, from one walk of the map
/// and no read: every unit that can hold data, a bound of the exact [`plan`] from above.
pub(crate) fn touched_units(reader: &dyn Reader, unit: u64, cancel: &CancelToken) -> Result<Plan> {
    check_unit(unit)?;
    let size = reader.virtual_size();
    let units = usize::try_from(unit_count(size, unit))
        .map_err(|_| Error::invalid_argument("too many units for this platform"))?;
    let mut touched = BitVec::repeat(false, units);
    let mut answers = 0u32;
    for_each_mapping(reader, 0, size, |pos, m| {
        answers = answers.wrapping_add(1);
        if answers % 4096 == 0 {
            cancel.check()?;
        }
        if m.extent == Extent::Data && m.len > 0 {
            let first = (pos / unit) as usize;
            let last = ((pos + m.len - 1) / unit) as usize;
            touched[first..=last.min(units - 1)].fill(true);
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    Plan::new(size, unit, touched)
}

/// Whether any byte of `[offset, end)` of `reader` is not zero, reading its data extents
/// (never its holes) from the front and stopping at the first non-zero byte: a range holding
/// data usually costs one read of a page.
pub(crate) fn holds_data(
    reader: &dyn Reader,
    offset: u64,
    end: u64,
    cancel: &CancelToken,
) -> Result<bool> {
    let mut buf = Vec::new();
    let mut found = false;
    for_each_mapping(reader, offset, end, |pos, m| {
        if m.extent != Extent::Data {
            return Ok(std::ops::ControlFlow::Continue(()));
        }
        let mut at = pos;
        let mut step = 4096u64;
        while at < pos + m.len {
            cancel.check()?;
            let n = (pos + m.len - at).min(step) as usize;
            buf.resize(n, 0);
            reader.read_at(at, &mut buf)?;
            if !zero::is_zero(&buf) {
                found = true;
                return Ok(std::ops::ControlFlow::Break(()));
            }
            at += n as u64;
            step = (step * 4).min(PROBE as u64 * 16);
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    Ok(found)
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

/// [`plan`], telling `progress` how far the planning read has come, in bytes of virtual disk
/// (the holes count as covered once the map is walked).
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
    let chunk_len = usize::try_from(chunk)
        .map_err(|_| Error::invalid_argument("chunk size too large for this platform"))?;
    let units = usize::try_from(unit_count(size, unit))
        .map_err(|_| Error::invalid_argument("too many units for this platform"))?;
    let with_data = chunks_with_data(reader, chunk, cancel)?;
    let total: u64 = with_data
        .iter()
        .map(|&i| (size - i * chunk).min(chunk))
        .sum();
    let threads = rayon::current_num_threads().max(1);
    let pool = BufferPool::new(chunk_len, threads * 2);
    // Small units: the data is read ahead a window of chunks in front of the probes, where the
    // reader says that makes small reads cheap (asked with an empty range: no advice).
    let window = if unit < NO_READ_AHEAD_UNIT {
        (PLAN_READ_AHEAD / chunk).max(1) as usize
    } else {
        0
    };
    let cheap = window > 0 && reader.read_ahead(0, 0);
    let planned = AtomicU64::new(0);
    // Workers take the chunks in ascending order, so the advice stays one window ahead of
    // every probe (rayon's splitting would send each thread to its own part of the disk).
    let next = AtomicUsize::new(0);
    let advised = Mutex::new(0usize);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Result<(u64, BitVec)>>> = Mutex::new(Vec::new());
    let probe = |idx: usize| -> Result<(u64, BitVec)> {
        cancel.check()?;
        if cheap {
            let mut upto = advised.lock().unwrap_or_else(|e| e.into_inner());
            while *upto < with_data.len() && *upto <= idx + window {
                let off = with_data[*upto] * chunk;
                advise_data(reader, off, (size - off).min(chunk))?;
                *upto += 1;
            }
        }
        let off = with_data[idx] * chunk;
        let len = (size - off).min(chunk) as usize;
        // Where small reads are cheap (a file, once read ahead), each unit's first sector
        // decides most units; units no larger than a first read are read whole.
        let bits = if unit > first_read(cheap, unit) as u64 {
            probe_chunk(reader, off, len, unit as usize, cheap)
        } else {
            load_chunk(reader, off, len, unit as usize, &pool, false).map(|c| c.nonzero)
        }?;
        // Holes are covered the moment the map is walked: they count as done.
        let done = planned.fetch_add(len as u64, Ordering::Relaxed);
        progress.planning(size - total + done + len as u64, size);
        Ok((off / unit, bits))
    };
    rayon::scope(|s| {
        for _ in 0..threads.min(with_data.len()) {
            s.spawn(|_| {
                let mut mine = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let idx = next.fetch_add(1, Ordering::Relaxed);
                    if idx >= with_data.len() {
                        break;
                    }
                    let part = probe(idx);
                    failed.fetch_or(part.is_err(), Ordering::Relaxed);
                    mine.push(part);
                }
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .append(&mut mine);
            });
        }
    });
    let parts = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    if with_data.is_empty() {
        progress.planning(size, size);
    }
    let mut allocated = BitVec::repeat(false, units);
    for (first, bits) in parts {
        let first = first as usize;
        allocated[first..first + bits.len()].copy_from_bitslice(&bits);
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
