//! The pipeline: chunks read, zero-scanned and encoded in parallel, committed strictly in order.
//!
//! The committing thread keeps at most `window` chunks holding data in flight on the rayon
//! pool (runs of zero chunks between them hold no buffer and do not count). Workers
//! read a chunk (never the ranges the map calls zero), scan it for zero units and run the
//! writer's encoder; results come back in any order and wait in a small reorder buffer until
//! every earlier chunk is committed. Memory is therefore bounded by the window (plus the
//! digest queues), whatever the image size.
//!
//! Chunk loading lives here too ([`load_chunk`], [`load_planned_chunk`]): the planner reads
//! through the same loader when it scans for zero units.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::{Condvar, Mutex};

use bitvec::vec::BitVec;

use crate::buffer::BufferPool;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Chunk, Extent, Plan};
use crate::planner;
use crate::progress::{CancelToken, Progress};
use crate::reader::{for_each_mapping, Reader};
use crate::sink::Output;
use crate::writer::{Encoder, Placement, Writer, WriterSummary};
use crate::zero;

/// The default chunk size: large enough for efficient reads and writes, small enough that a
/// full window stays a few tens of MiB.
pub(crate) const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// Tuning of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Bytes of virtual disk per chunk (rounded up to the writer's unit).
    pub chunk_size: u64,
    /// Chunks in flight at most; `0` picks twice the worker count plus two.
    pub window: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: 0,
        }
    }
}

impl PipelineConfig {
    fn window(&self) -> usize {
        if self.window == 0 {
            rayon::current_num_threads() * 2 + 2
        } else {
            self.window
        }
    }
}

/// Run a whole conversion of `reader` through `writer` into `out`, with `given` as the plan
/// when it fits the writer (else the writer's plan is made here). A writer that
/// [defers its tables](Writer::defers_tables) into a seekable `out` is run without a plan
/// when no given plan fits: one pass over the input.
pub(crate) fn run<W: Writer>(
    reader: &dyn Reader,
    mut writer: W,
    out: &mut Output,
    config: &PipelineConfig,
    given: Option<&Plan>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<(WriterSummary, Option<Plan>)> {
    let unit = writer.unit_size();
    let needs = writer.needs_plan();
    // A plan made earlier for this disk at this unit: no second planning read.
    let given = given
        .filter(|p| needs && p.unit_size() == unit && p.virtual_size() == reader.virtual_size());
    // Else, into a seekable output, a writer that can writes its tables last: no planning
    // read at all.
    let deferred = needs && given.is_none() && writer.defers_tables() && out.is_seekable() && {
        let bound = planner::touched_units(reader, unit, cancel)?;
        let input = crate::writer::Deferral {
            bound: &bound,
            reader,
            cancel,
        };
        writer.begin_deferred(&input, out)?
    };
    let plan = match given {
        Some(p) => Some(p.clone()),
        None if needs && !deferred => Some(planner::plan_reporting(
            reader,
            unit,
            config.chunk_size,
            cancel,
            progress,
        )?),
        None => None,
    };
    if !deferred {
        writer.begin(plan.as_ref(), out)?;
    }
    let encoder = writer.encoder();
    progress.start(reader.virtual_size());
    let result = commit_all(
        reader,
        &mut writer,
        &encoder,
        plan.as_ref(),
        out,
        config,
        progress,
        cancel,
    );
    progress.finish();
    result?;
    let summary = writer.finish(out)?;
    Ok((summary, plan))
}

type Slot<T> = (u64, Result<T>);

#[allow(clippy::too_many_arguments)]
fn commit_all<W: Writer>(
    reader: &dyn Reader,
    writer: &mut W,
    encoder: &W::Encoder,
    plan: Option<&Plan>,
    out: &mut Output,
    config: &PipelineConfig,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    let unit = writer.unit_size();
    let size = reader.virtual_size();
    let chunk = chunk_size_for(unit, config.chunk_size);
    let chunk_len = usize::try_from(chunk)
        .map_err(|_| Error::invalid_argument("chunk size too large for this platform"))?;
    let unit_len = usize::try_from(unit)
        .map_err(|_| Error::invalid_argument("unit size too large for this platform"))?;
    let count = size.div_ceil(chunk);
    let window = config.window().max(1) as u64;
    // Buffers alive at once: the window, the reorder buffer (at most the window again) and
    // what the digest queues hold. Keeping that many idle ones means no allocation after the
    // first round.
    let keep = config.window().max(1) * 2 + 2 * crate::digest::QUEUE_DEPTH;
    let pool = BufferPool::new(chunk_len, keep);
    let abort = AtomicBool::new(false);
    // With a light encoder and a light decoder the committing thread writes as much as the
    // workers read: give it a core of its own rather than have it compete with a full set of
    // workers. Compressed input or output keeps every core for the workers.
    let threads = rayon::current_num_threads();
    // Where the layout puts each chunk's bytes at a place known before commit and the output
    // is a file, the worker that read a chunk writes it (one worker at a time, see `Placed`);
    // the committing thread only accounts for it in order (digests, position, flushes). The
    // kernel's copy out of a buffer that another CPU has just filled cost 4-5 times the copy
    // into it (`perf`: RAW -> RAW with the input cached, the committing thread's writes),
    // so the data stays with the CPU that read it, and every core reads and writes.
    //
    // Where the layout packs the chunks' data one after the other in guest order (QCOW2,
    // VDI, VMDK sparse), a chunk's place is known once every earlier chunk has taken its
    // room: the workers take turns in chunk order (`Turns`) for their places, then write.
    let placement = encoder.placement();
    let placed = match placement {
        Placement::Committed => None,
        Placement::Guest | Placement::Appended => out.placed(),
    };
    let turns =
        (placed.is_some() && placement == Placement::Appended).then(|| Turns::new(out.position()));
    let own_pool =
        if placed.is_none() && writer.light_encoder() && reader.light_decoder() && threads > 1 {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads - 1)
                .thread_name(|i| format!("imgconv-io-{i}"))
                .build()
                .ok()
        } else {
            None
        };
    // The same body on either pool (a macro, as the scope's lifetime is the call's own).
    macro_rules! scoped {
        ($body:expr) => {
            match &own_pool {
                Some(pool) => pool.in_place_scope($body),
                None => rayon::in_place_scope($body),
            }
        };
    }
    // The first chunk at or after a given one that holds anything to read: the chunks before
    // it are committed as one run of zeros, however many there are, without a worker.
    let data_from = |i: u64| -> Result<u64> {
        match plan {
            Some(p) => {
                let first = i * (chunk / unit);
                let next = p.bitmap().get(first as usize..).and_then(|b| b.first_one());
                Ok(next.map_or(count, |u| (first + u as u64) * unit / chunk))
            }
            None => {
                let mut found = count;
                for_each_mapping(reader, i * chunk, size, |pos, m| {
                    if m.extent == Extent::Data {
                        found = pos / chunk;
                        return Ok(std::ops::ControlFlow::Break(()));
                    }
                    Ok(std::ops::ControlFlow::Continue(()))
                })?;
                Ok(found)
            }
        }
    };
    scoped!(|scope| {
        let (tx, rx) = mpsc::channel::<Slot<<W::Encoder as Encoder>::Encoded>>();
        let mut pending = BTreeMap::new();
        // Runs of zero chunks waiting for their turn: first chunk -> number of chunks.
        let mut zero_runs: BTreeMap<u64, u64> = BTreeMap::new();
        // The first chunk holding data at or after the last one asked about, once known.
        let mut next_data: Option<u64> = None;
        let mut next_submit = 0u64;
        let mut next_commit = 0u64;
        // Chunks with data submitted and not yet committed: the window counts these, not
        // chunk numbers, so a sparse disk keeps as many reads (and as much read-ahead) in
        // flight as a dense one however far apart its data lies.
        let mut in_flight = 0u64;
        let outcome = (|| {
            while next_commit < count {
                while next_submit < count && in_flight < window {
                    let i = next_submit;
                    let data_at = match next_data {
                        Some(d) if d >= i => d,
                        _ => data_from(i)?,
                    };
                    if data_at > i {
                        zero_runs.insert(i, data_at - i);
                        if let Some(t) = &turns {
                            t.skip(i, data_at - i);
                        }
                        next_data = Some(data_at);
                        next_submit = data_at;
                        continue;
                    }
                    next_data = None;
                    // The chunk's data is asked for now, a window ahead of its commit, so the
                    // storage works while the workers do (holes are never advised).
                    advise_data(reader, i * chunk, (size - i * chunk).min(chunk))?;
                    let tx = tx.clone();
                    let (pool, abort, placed, turns) =
                        (&pool, &abort, placed.as_ref(), turns.as_ref());
                    scope.spawn(move |_| {
                        let work = || {
                            if abort.load(Ordering::Relaxed) || cancel.is_cancelled() {
                                return Err(Error::cancelled());
                            }
                            let off = i * chunk;
                            let len = (size - off).min(chunk) as usize;
                            let chunk = match plan {
                                Some(p) => {
                                    let first = (off / unit) as usize;
                                    let bits = p.bitmap().get(first..).unwrap_or_default();
                                    let fill = encoder.fills_unread();
                                    load_planned_chunk(reader, off, len, unit_len, bits, pool, fill)
                                }
                                None => load_chunk(
                                    reader,
                                    off,
                                    len,
                                    unit_len,
                                    pool,
                                    encoder.fills_unread(),
                                ),
                            };
                            let mut encoded = chunk.and_then(|c| encoder.encode(c))?;
                            if let Some(p) = placed {
                                let at = match turns {
                                    Some(t) => {
                                        let len = encoder.placed_len(&encoded);
                                        t.take(i, len, abort, cancel)?
                                    }
                                    None => off,
                                };
                                encoder.write_placed(&mut encoded, at, p)?;
                            }
                            Ok(encoded)
                        };
                        // A panic in a worker (a bug, or one in a codec) must become an error
                        // for this chunk, never a committer waiting forever for it.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                            .unwrap_or_else(|_| {
                                Err(Error::new(
                                    ErrorKind::Internal,
                                    format!("internal error: a worker failed on chunk {i}"),
                                ))
                            });
                        if let (Err(_), Some(t)) = (&result, turns) {
                            // Later chunks wait for this one's turn: never in vain.
                            t.fail();
                        }
                        let _ = tx.send((i, result));
                    });
                    next_submit += 1;
                    in_flight += 1;
                }
                if let Some(n) = zero_runs.remove(&next_commit) {
                    cancel.check()?;
                    let off = next_commit * chunk;
                    let len = (size - off).min(n * chunk);
                    commit_zeros(writer, encoder, out, off, len, chunk_len, unit_len)?;
                    progress.advance(len);
                    next_commit += n;
                    continue;
                }
                let encoded = loop {
                    if let Some(r) = pending.remove(&next_commit) {
                        break r;
                    }
                    let (i, r) = rx.recv().map_err(|_| {
                        Error::new(ErrorKind::Io, "a pipeline worker stopped unexpectedly")
                    })?;
                    pending.insert(i, r);
                };
                cancel.check()?;
                writer.commit(encoded?, out)?;
                in_flight -= 1;
                let off = next_commit * chunk;
                progress.advance((size - off).min(chunk));
                next_commit += 1;
            }
            Ok(())
        })();
        if outcome.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        outcome
    })
}

/// The chunks' turns to take their room in an output that stores them one after the other in
/// chunk order ([`Placement::Appended`]): chunk `i` learns its place once every chunk before
/// it has taken its room or was skipped (a run of chunks storing nothing).
struct Turns {
    state: Mutex<TurnState>,
    moved: Condvar,
}

struct TurnState {
    /// The chunk whose turn it is.
    next: u64,
    /// Where its bytes go.
    at: u64,
    /// Runs of chunks that store nothing and have no worker: first chunk -> count.
    skips: BTreeMap<u64, u64>,
    /// A chunk failed before its turn: the turns stop there.
    failed: bool,
}

impl TurnState {
    fn settle(&mut self) {
        while let Some(n) = self.skips.remove(&self.next) {
            self.next += n;
        }
    }
}

impl Turns {
    fn new(at: u64) -> Turns {
        Turns {
            state: Mutex::new(TurnState {
                next: 0,
                at,
                skips: BTreeMap::new(),
                failed: false,
            }),
            moved: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chunks `first..first + n` store nothing.
    fn skip(&self, first: u64, n: u64) {
        let mut st = self.lock();
        st.skips.insert(first, n);
        st.settle();
        drop(st);
        self.moved.notify_all();
    }

    /// Wait for chunk `i`'s turn, and take `len` bytes from there: their place.
    fn take(&self, i: u64, len: u64, abort: &AtomicBool, cancel: &CancelToken) -> Result<u64> {
        let mut st = self.lock();
        loop {
            if st.failed {
                return Err(Error::cancelled());
            }
            if st.next == i {
                let at = st.at;
                st.at += len;
                st.next += 1;
                st.settle();
                drop(st);
                self.moved.notify_all();
                return Ok(at);
            }
            if abort.load(Ordering::Relaxed) || cancel.is_cancelled() {
                return Err(Error::cancelled());
            }
            // Every chunk before this one either takes its turn or fails (and says so); the
            // timeout only bounds how late an abort from the committing thread is seen.
            st = self
                .moved
                .wait_timeout(st, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A chunk failed before or during its turn: every later one stops waiting.
    fn fail(&self) {
        self.lock().failed = true;
        self.moved.notify_all();
    }
}

/// Commit `len` bytes of zeros from `offset` (whole chunks of `chunk_len`): in one call where
/// the writer takes a run of zeros, else as zero chunks encoded here one by one.
fn commit_zeros<W: Writer>(
    writer: &mut W,
    encoder: &W::Encoder,
    out: &mut Output,
    offset: u64,
    len: u64,
    chunk_len: usize,
    unit: usize,
) -> Result<()> {
    if writer.commit_zeros(offset, len, out)? {
        return Ok(());
    }
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(chunk_len as u64) as usize;
        let zero = Chunk {
            offset: at,
            len: n,
            data: None,
            unit,
            nonzero: BitVec::repeat(false, n.div_ceil(unit)),
            unread: std::iter::once(0..n).collect(),
        };
        writer.commit(encoder.encode(zero)?, out)?;
        at += n as u64;
    }
    Ok(())
}

/// Ask `reader` to read ahead the data extents of `[offset, offset + len)`, and nothing of
/// its holes or zero ranges.
pub(crate) fn advise_data(reader: &dyn Reader, offset: u64, len: u64) -> Result<()> {
    for_each_mapping(reader, offset, offset + len, |pos, m| {
        if m.extent == Extent::Data {
            reader.read_ahead(pos, m.len);
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })
}

/// The chunk size used for a unit: at least `preferred`, a whole number of units.
pub(crate) fn chunk_size_for(unit: u64, preferred: u64) -> u64 {
    preferred.max(unit).div_ceil(unit) * unit
}

/// Read `[offset, offset + len)` of `reader` as a [`Chunk`] scanned at `unit`: data extents
/// are read (into a buffer from `pool`), everything else is not read, listed in the chunk's
/// `unread`, and zero-filled only when `fill` (a 32 MiB block holding 1 MiB of data is then
/// 31 MiB of nothing for an encoder that never looks there).
pub(crate) fn load_chunk(
    reader: &dyn Reader,
    offset: u64,
    len: usize,
    unit: usize,
    pool: &Arc<BufferPool>,
    fill: bool,
) -> Result<Chunk> {
    let end = offset + len as u64;
    let units = len.div_ceil(unit);
    let mut segments: Vec<(u64, u64)> = Vec::new();
    for_each_mapping(reader, offset, end, |pos, m| {
        if m.extent == Extent::Data {
            match segments.last_mut() {
                Some((s, l)) if *s + *l == pos => *l += m.len,
                _ => segments.push((pos, m.len)),
            }
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    if segments.is_empty() {
        return Ok(Chunk {
            offset,
            len,
            data: None,
            unit,
            nonzero: BitVec::repeat(false, units),
            unread: std::iter::once(0..len).collect(),
        });
    }
    let mut buf = pool.get();
    let bytes = &mut buf.as_mut_slice()[..len];
    let mut cursor = 0usize;
    let mut nonzero = BitVec::repeat(false, units);
    let mut unread = Vec::new();
    for &(s, l) in &segments {
        let lo = (s - offset) as usize;
        let hi = lo + l as usize;
        push_unread(&mut unread, cursor..lo);
        if fill {
            bytes[cursor..lo].fill(0);
        }
        reader.read_at(s, &mut bytes[lo..hi])?;
        // A unit holds data where the bytes read in it are not all zero: the rest of it is
        // zero whether or not it was filled.
        for u in lo / unit..hi.div_ceil(unit) {
            if !nonzero[u] {
                let piece = &bytes[(u * unit).max(lo)..((u + 1) * unit).min(hi)];
                nonzero.set(u, !zero::is_zero(piece));
            }
        }
        cursor = hi;
    }
    push_unread(&mut unread, cursor..len);
    if fill {
        bytes[cursor..].fill(0);
    }
    let data = if nonzero.any() {
        Some(buf.freeze(len))
    } else {
        None
    };
    Ok(Chunk {
        offset,
        len,
        data,
        unit,
        nonzero,
        unread,
    })
}

/// Add `r` to a chunk's sorted unread ranges, joining it to the last one where they touch.
fn push_unread(unread: &mut Vec<std::ops::Range<usize>>, r: std::ops::Range<usize>) {
    if r.is_empty() {
        return;
    }
    match unread.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => unread.push(r),
    }
}

/// Read `[offset, offset + len)` as a [`Chunk`] whose units are those `planned` says hold
/// data: only they are read, in runs, and they are not scanned again. Once a writer has laid
/// out its file from a plan, the plan is authoritative; this makes the writing pass read each
/// data unit once and skip the zero ranges the planning pass already found. What is not read
/// (units the plan left out, holes inside planned units) is listed in the chunk's `unread`,
/// and zero-filled only when `fill`.
pub(crate) fn load_planned_chunk(
    reader: &dyn Reader,
    offset: u64,
    len: usize,
    unit: usize,
    planned: &bitvec::slice::BitSlice,
    pool: &Arc<BufferPool>,
    fill: bool,
) -> Result<Chunk> {
    let units = len.div_ceil(unit);
    let nonzero: BitVec = planned.iter().by_vals().take(units).collect();
    if nonzero.len() != units {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "plan shorter than the disk",
        ));
    }
    if !nonzero.any() {
        return Ok(Chunk {
            offset,
            len,
            data: None,
            unit,
            nonzero,
            unread: std::iter::once(0..len).collect(),
        });
    }
    let mut buf = pool.get();
    let bytes = &mut buf.as_mut_slice()[..len];
    let mut unread = Vec::new();
    let mut i = 0;
    while i < units {
        let start = i;
        let set = nonzero[i];
        while i < units && nonzero[i] == set {
            i += 1;
        }
        let (lo, hi) = (start * unit, (i * unit).min(len));
        if set {
            read_data(reader, offset, &mut bytes[lo..hi], lo, fill, &mut unread)?;
        } else {
            push_unread(&mut unread, lo..hi);
            if fill {
                bytes[lo..hi].fill(0);
            }
        }
    }
    Ok(Chunk {
        offset,
        len,
        data: Some(buf.freeze(len)),
        unit,
        nonzero,
        unread,
    })
}

/// Fill `buf`, the bytes of the disk at `base + at`, reading only what the map calls data;
/// the rest is listed in `unread` (as chunk offsets) and zero-filled only when `fill`: a
/// planned unit can be larger than the data in it (a 32 MiB VHDX block holding 4 MiB), and
/// its holes must cost nothing.
fn read_data(
    reader: &dyn Reader,
    base: u64,
    buf: &mut [u8],
    at: usize,
    fill: bool,
    unread: &mut Vec<std::ops::Range<usize>>,
) -> Result<()> {
    let start = base + at as u64;
    let end = start + buf.len() as u64;
    for_each_mapping(reader, start, end, |pos, m| {
        let lo = (pos - start) as usize;
        let hi = lo + m.len as usize;
        if m.extent == Extent::Data {
            reader.read_at(pos, &mut buf[lo..hi])?;
        } else {
            push_unread(unread, at + lo..at + hi);
            if fill {
                buf[lo..hi].fill(0);
            }
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })
}

/// A writer's bytes for `reader` written both ways: into a seekable output (tables last where
/// the writer defers them, else the planned layout) and into a stream (planned layout, tables
/// first). Returns (seekable, stream).
#[cfg(test)]
pub(crate) fn written_both_ways<W: Writer>(
    reader: &dyn Reader,
    make: impl Fn() -> W,
) -> Result<(Vec<u8>, Vec<u8>)> {
    use crate::sink::VecSink;
    let mut got = Vec::new();
    for seekable in [true, false] {
        let sink = if seekable {
            VecSink::seekable()
        } else {
            VecSink::new()
        };
        let mut out = if seekable {
            Output::new_seekable(Box::new(sink.clone()), &[])?
        } else {
            Output::new(Box::new(sink.clone()), &[])?
        };
        run(
            reader,
            make(),
            &mut out,
            &PipelineConfig::default(),
            None,
            &crate::progress::NoProgress,
            &CancelToken::new(),
        )?;
        out.finish()?;
        got.push(sink.contents());
    }
    let stream = got.pop().unwrap_or_default();
    let seekable = got.pop().unwrap_or_default();
    Ok((seekable, stream))
}

/// `n` bytes of xorshift noise from `seed` (test data that does not compress or repeat).
#[cfg(test)]
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Asserts that the writers `make` gives (one per disk) write the same bytes both ways
/// ([`written_both_ways`]) for each of [`disks_with_holes`]; `what` names the case.
#[cfg(test)]
pub(crate) fn assert_tables_last_bytes<W: Writer>(
    what: &str,
    make: impl Fn(&dyn Reader) -> W,
) -> Result<()> {
    for (name, reader) in disks_with_holes() {
        let (seekable, stream) = written_both_ways(&*reader, || make(&*reader))?;
        assert!(seekable == stream, "{what}, {name}: the layouts differ");
    }
    Ok(())
}

/// Disks with holes for [`written_both_ways`]: data across unit edges, a data extent of zeros,
/// a partial last unit, an empty disk, and a disk mapped as data throughout.
#[cfg(test)]
pub(crate) fn disks_with_holes() -> Vec<(&'static str, Box<dyn Reader>)> {
    use crate::formats::raw::RawReader;
    use crate::source::{HoledMem, MemSource};
    let random = noise;
    let mib = 1u64 << 20;
    let size = (24 << 20) + 3 * 512;
    let text = b"one pass, tables last. ".repeat(50_000);
    let mut dense = vec![0u8; 9 << 20];
    dense[(3 << 20) + 7..(5 << 20) + 7].copy_from_slice(&random(2 << 20, 9));
    vec![
        (
            "holes",
            Box::new(RawReader::new(Box::new(HoledMem::new(
                size as usize,
                &[
                    (0, random(mib as usize, 1)),
                    (mib + 4096, vec![0u8; 3 << 20]),
                    (6 * mib - 512, text[..mib as usize].to_vec()),
                    (13 * mib, random(5 * mib as usize, 2)),
                    (size - 600, vec![0x5a; 600]),
                ],
            )))) as Box<dyn Reader>,
        ),
        (
            "empty",
            Box::new(RawReader::new(Box::new(HoledMem::new(8 << 20, &[])))),
        ),
        (
            "dense",
            Box::new(RawReader::new(Box::new(MemSource::new(dense)))),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::raw::RawReader;
    use crate::source::HoledMem;

    /// Chunks take their places in chunk order whatever order their workers come in, runs of
    /// skipped chunks take none, and a failed chunk releases every later one's wait.
    #[test]
    fn turns_give_places_in_chunk_order_and_a_failure_ends_the_waits() {
        let turns = Turns::new(100);
        let abort = AtomicBool::new(false);
        let cancel = CancelToken::new();
        turns.skip(2, 3);
        // Chunks 0, 1, 5, 6, 7 each take 10 bytes, from threads started in reverse order.
        let places = std::thread::scope(|s| {
            let handles: Vec<_> = [7u64, 6, 5, 1, 0]
                .into_iter()
                .map(|i| {
                    let (turns, abort, cancel) = (&turns, &abort, &cancel);
                    s.spawn(move || (i, turns.take(i, 10, abort, cancel).ok()))
                })
                .collect();
            let mut got: Vec<_> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
            got.sort();
            got
        });
        let want: Vec<_> = [(0, 100), (1, 110), (5, 120), (6, 130), (7, 140)]
            .into_iter()
            .map(|(i, at)| (i, Some(at)))
            .collect();
        assert_eq!(places, want);
        // Chunk 8 fails: 9 and 10, already waiting, stop with an error.
        std::thread::scope(|s| {
            let waiting: Vec<_> = [9u64, 10]
                .into_iter()
                .map(|i| {
                    let (turns, abort, cancel) = (&turns, &abort, &cancel);
                    s.spawn(move || turns.take(i, 10, abort, cancel).is_err())
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(20));
            turns.fail();
            for w in waiting {
                assert!(w.join().unwrap_or(false));
            }
        });
    }

    /// Without the fill, the bytes between data extents are whatever a pooled buffer held
    /// before: units are still judged by the bytes read only, and the gaps are listed unread.
    #[test]
    fn an_unfilled_chunk_judges_units_by_the_bytes_read() -> Result<()> {
        let unit = 64 << 10;
        let len = 8 * unit;
        let reader = RawReader::new(Box::new(HoledMem::new(
            len,
            &[
                (1000, vec![0u8; 3000]),           // zeros in unit 0
                (unit as u64 + 10, vec![3u8; 20]), // data in unit 1
                (5 * unit as u64 - 8, vec![0u8; 16]),
                (6 * unit as u64 + 100, vec![9u8; 1]), // data in unit 6
            ],
        )));
        let pool = BufferPool::new(len, 1);
        for fill in [false, true] {
            let mut dirty = pool.get();
            dirty.as_mut_slice().fill(0xee);
            drop(dirty);
            let c = load_chunk(&reader, 0, len, unit, &pool, fill)?;
            let got: Vec<bool> = c.nonzero.iter().by_vals().collect();
            let want = [false, true, false, false, false, false, true, false];
            assert_eq!(got, want, "fill {fill}");
            assert_eq!(c.unread.first(), Some(&(0..1000)), "fill {fill}");
            assert_eq!(c.unread.last(), Some(&(6 * unit + 101..len)), "fill {fill}");
            if fill {
                let d = c.data.as_ref().expect("data");
                assert!(d[..1000].iter().all(|&b| b == 0));
                assert!(d[6 * unit + 101..].iter().all(|&b| b == 0));
            }
        }
        Ok(())
    }
}
