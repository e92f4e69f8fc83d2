//! The pipeline: chunks read, zero-scanned and encoded in parallel, committed strictly in order.
//!
//! The committing thread keeps at most `window` chunks in flight on the rayon pool. Workers
//! read a chunk (never the ranges the map calls zero), scan it for zero units and run the
//! writer's encoder; results come back in any order and wait in a small reorder buffer until
//! every earlier chunk is committed. Memory is therefore bounded by the window (plus the
//! digest queues), whatever the image size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::buffer::BufferPool;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Plan;
use crate::planner::{self, chunk_size_for, load_chunk, load_planned_chunk};
use crate::progress::{CancelToken, Progress};
use crate::reader::Reader;
use crate::sink::Output;
use crate::writer::{Encoder, Writer, WriterSummary};

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
/// when it fits the writer (else the writer's plan is made here).
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
    let plan = match given {
        // A plan made earlier for this disk at this unit: no second planning read.
        Some(p)
            if writer.needs_plan()
                && p.unit_size() == unit
                && p.virtual_size() == reader.virtual_size() =>
        {
            Some(p.clone())
        }
        _ if writer.needs_plan() => Some(planner::plan_reporting(
            reader,
            unit,
            config.chunk_size,
            cancel,
            progress,
        )?),
        _ => None,
    };
    writer.begin(plan.as_ref(), out)?;
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
    let own_pool = if writer.light_encoder() && reader.light_decoder() && threads > 1 {
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
    scoped!(|scope| {
        let (tx, rx) = mpsc::channel::<Slot<<W::Encoder as Encoder>::Encoded>>();
        let mut pending = BTreeMap::new();
        let mut next_submit = 0u64;
        let mut next_commit = 0u64;
        let outcome = (|| {
            while next_commit < count {
                while next_submit < count && next_submit < next_commit + window {
                    let i = next_submit;
                    let tx = tx.clone();
                    let (pool, abort) = (&pool, &abort);
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
                                    load_planned_chunk(reader, off, len, unit_len, bits, pool)
                                }
                                None => load_chunk(reader, off, len, unit_len, pool),
                            };
                            chunk.and_then(|c| encoder.encode(c))
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
                        let _ = tx.send((i, result));
                    });
                    next_submit += 1;
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
