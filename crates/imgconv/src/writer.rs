//! The writer contract: a plan known before the first byte, output in file order, parallel
//! encoding, ordered commit, and an explicit `finish`.

use serde::Serialize;

use crate::buffer::Bytes;
use crate::error::Result;
use crate::model::{Chunk, Format, Plan};
use crate::sink::Output;

/// Write the planned units of a chunk loaded from a plan: each run of consecutive planned
/// units is one write (they are consecutive in the output too), and a short last unit is
/// padded to a whole one. With `all_units`, unplanned runs are written as zeros as well (fixed
/// layouts). Returns the number of units written.
pub(crate) fn write_unit_runs(units: &Units, out: &mut Output, all_units: bool) -> Result<u64> {
    let chunk = &units.chunk;
    let unit = chunk.unit;
    let mut written = 0u64;
    for (range, planned) in chunk.runs() {
        if !planned && !all_units {
            continue;
        }
        let len = range.len();
        let n = len.div_ceil(unit);
        let pad = (n * unit - len) as u64;
        match (&chunk.data, planned) {
            // A worker wrote these already (padding left as a hole): account for them.
            (Some(d), true) if units.written => {
                out.written(&d.slice(range))?;
                out.written_zeros(pad)?;
            }
            (Some(d), true) => {
                out.write(&d.slice(range))?;
                out.write_zeros(pad)?;
            }
            _ => out.write_zeros(len as u64 + pad)?,
        }
        written += n as u64;
    }
    Ok(written)
}

/// What [`write_unit_runs`] writes for `len` bytes of zero chunks of `unit`-byte units:
/// nothing, or with `all_units` (fixed layouts) zeros up to whole units, as holes where the
/// output can. Returns the number of units written.
pub(crate) fn write_zero_units(
    len: u64,
    unit: u64,
    all_units: bool,
    out: &mut Output,
) -> Result<u64> {
    if !all_units {
        return Ok(0);
    }
    let units = len.div_ceil(unit);
    out.write_zeros(units * unit)?;
    Ok(units)
}

/// Record, for a writer that [defers its tables](Writer::defers_tables), that units
/// `first..first + len` hold data where `nonzero` says so (`len` is its length).
pub(crate) fn mark_units(
    units: &mut bitvec::vec::BitVec,
    first: u64,
    nonzero: &bitvec::slice::BitSlice,
    format: Format,
) -> Result<()> {
    let first = usize::try_from(first).unwrap_or(usize::MAX);
    match first
        .checked_add(nonzero.len())
        .and_then(|end| units.get_mut(first..end))
    {
        Some(dst) => {
            dst.copy_from_bitslice(nonzero);
            Ok(())
        }
        None => Err(crate::error::Error::new(
            crate::error::ErrorKind::Internal,
            format!("internal error: data past the end of the {format} disk"),
        )),
    }
}

/// What a writer that [defers its tables](Writer::defers_tables) is given to keep room for
/// them ([`Writer::begin_deferred`]).
pub struct Deferral<'a> {
    /// Every unit that can hold data: the units the input's data extents touch.
    pub bound: &'a Plan,
    /// The input, for what the bound leaves open.
    pub reader: &'a dyn crate::reader::Reader,
    /// Stops a look into the input that takes long.
    pub cancel: &'a crate::progress::CancelToken,
}

/// Keep `len` bytes of room at the start of `out` (a hole where it can) and return the empty
/// bitmap of `units` units that a deferring writer fills in as chunks come.
pub(crate) fn keep_room(out: &mut Output, len: u64, units: usize) -> Result<bitvec::vec::BitVec> {
    out.write_zeros(len)?;
    Ok(bitvec::vec::BitVec::repeat(false, units))
}

/// Everything before the data, written in order ([`FrontWriter::new`] with `None`) or, for a
/// writer that [defers its tables](Writer::defers_tables), over the room kept for it at the
/// start of the output (with `Some(0)`): the same calls give the same bytes either way.
pub(crate) struct FrontWriter<'a> {
    out: &'a mut Output,
    at: Option<u64>,
}

impl<'a> FrontWriter<'a> {
    /// Append to `out` (`at` is `None`), or overwrite it from `at`.
    pub(crate) fn new(out: &'a mut Output, at: Option<u64>) -> FrontWriter<'a> {
        FrontWriter { out, at }
    }

    /// Bytes.
    pub(crate) fn write(&mut self, data: &Bytes) -> Result<()> {
        match &mut self.at {
            None => self.out.write(data),
            Some(at) => {
                self.out.write_at(*at, data)?;
                *at += data.len() as u64;
                Ok(())
            }
        }
    }

    /// Zeros: a hole appended, or the room left as it is (it was kept as zeros).
    pub(crate) fn zeros(&mut self, len: u64) -> Result<()> {
        match &mut self.at {
            None => self.out.write_zeros(len),
            Some(at) => {
                *at += len;
                Ok(())
            }
        }
    }

    /// Where the next byte goes.
    pub(crate) fn position(&self) -> u64 {
        self.at.unwrap_or_else(|| self.out.position())
    }
}

/// The plan a writer's [`Writer::measure`] was promised (it answers `measure_needs_plan`).
pub(crate) fn plan_given(plan: Option<&Plan>) -> Result<&Plan> {
    plan.ok_or_else(|| {
        crate::error::Error::new(
            crate::error::ErrorKind::Internal,
            "internal error: measuring this output needs the input's plan",
        )
    })
}

/// A writer's parallel step: turn a chunk into what `commit` emits (compress, checksum, ...).
/// Runs on the worker pool, many chunks at once.
pub trait Encoder: Sync {
    /// The encoded form of one chunk.
    type Encoded: Send;

    /// Encode one chunk.
    fn encode(&self, chunk: Chunk) -> Result<Self::Encoded>;

    /// Whether a chunk's [`unread`](Chunk::unread) ranges must hold zeros in its `data`
    /// (the default). An encoder that never looks at those bytes answers `false` and spares
    /// the fill: a 32 MiB block holding 1 MiB of data is then 31 MiB of nothing.
    fn fills_unread(&self) -> bool {
        true
    }

    /// Whether, and where, [`Encoder::write_placed`] writes chunks from the workers.
    fn placement(&self) -> Placement {
        Placement::Committed
    }

    /// Bytes the encoded chunk takes in the output, for [`Placement::Appended`].
    fn placed_len(&self, encoded: &Self::Encoded) -> u64 {
        let _ = encoded;
        0
    }

    /// Write the encoded form of the chunk into `out` now, on the worker, from output offset
    /// `at` (the chunk's disk offset for [`Placement::Guest`], the place its turn gave it for
    /// [`Placement::Appended`]), and mark in it what was written, so that [`Writer::commit`]
    /// only accounts for those bytes ([`Output::written`]). Called only where
    /// [`Encoder::placement`] is not [`Placement::Committed`].
    fn write_placed(
        &self,
        encoded: &mut Self::Encoded,
        at: u64,
        out: &crate::sink::Placed,
    ) -> Result<()> {
        let _ = (encoded, at, out);
        Ok(())
    }
}

/// Where an encoder's chunks go in a file output, and who writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The committing thread writes each chunk when its turn comes (the default).
    Committed,
    /// Each chunk's bytes go at its own disk offset (RAW, fixed VHD): the worker that read
    /// it writes it.
    Guest,
    /// Each chunk's bytes follow the previous chunk's, [`Encoder::placed_len`] of them (data
    /// stored packed in guest order): the worker that read it writes it once every earlier
    /// chunk has taken its room.
    Appended,
}

/// The encoder of writers that store data as it is, the units holding data one after the
/// other in guest order (QCOW2 uncompressed, monolithicSparse VMDK, VDI): chunks pass
/// through untouched, and into a file the worker that read a chunk writes its units.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PassThrough {
    /// Every unit is stored, zeros included (fixed layouts): nothing is placed by workers.
    pub all_units: bool,
}

/// A chunk through [`PassThrough`]: its units holding data, and whether a worker already
/// wrote them.
#[derive(Debug)]
pub(crate) struct Units {
    /// The chunk.
    pub chunk: Chunk,
    /// Its units holding data were written by the worker ([`Placement::Appended`]).
    pub written: bool,
}

impl Encoder for PassThrough {
    type Encoded = Units;

    fn encode(&self, chunk: Chunk) -> Result<Units> {
        Ok(Units {
            chunk,
            written: false,
        })
    }

    fn placement(&self) -> Placement {
        if self.all_units {
            Placement::Committed
        } else {
            Placement::Appended
        }
    }

    fn placed_len(&self, units: &Units) -> u64 {
        let c = &units.chunk;
        c.nonzero.count_ones() as u64 * c.unit as u64
    }

    fn write_placed(&self, units: &mut Units, at: u64, out: &crate::sink::Placed) -> Result<()> {
        let c = &units.chunk;
        let Some(data) = &c.data else {
            // Never read: the committing thread writes what it stands for (zeros, if any).
            return Ok(());
        };
        // Data runs one after the other from `at`; a short last unit's padding stays a hole
        // of the new file, read as zeros.
        let mut pos = at;
        for (range, stored) in c.runs() {
            if stored {
                out.write_at(pos, &data[range.clone()])?;
                pos += range.len().div_ceil(c.unit) as u64 * c.unit as u64;
            }
        }
        units.written = true;
        Ok(())
    }
}

/// The sizes `imgconv measure` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Measure {
    /// Bytes the output needs for this input.
    pub required: u64,
    /// Bytes the output would need if every unit were allocated.
    pub fully_allocated: u64,
    /// Whether `required` is the exact size of the output; when `false` (compressed layouts)
    /// it is an upper bound.
    pub exact: bool,
}

impl Measure {
    /// The sizes of a layout whose length does not depend on the content.
    pub fn fixed(len: u64) -> Measure {
        Measure {
            required: len,
            fully_allocated: len,
            exact: true,
        }
    }
}

/// What a finished writer reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriterSummary {
    /// The output format.
    pub format: Format,
    /// Units that hold data in the output.
    pub allocated_units: u64,
    /// The unit size.
    pub unit_size: u64,
}

/// One output format's writer.
///
/// The pipeline calls, in order: [`Writer::begin`] once (with the plan when
/// [`Writer::needs_plan`]), then [`Writer::commit`] for every chunk in ascending order, then
/// [`Writer::finish`]. Everything is emitted into [`Output`] in file order.
pub trait Writer: Send {
    /// The parallel encoding step.
    type Encoder: Encoder;

    /// The output format.
    fn format(&self) -> Format;

    /// The allocation unit in bytes (a power of two).
    fn unit_size(&self) -> u64;

    /// Whether the layout depends on the allocation plan (header and tables come first).
    fn needs_plan(&self) -> bool;

    /// The exact output length, if known before writing.
    fn output_len(&self) -> Option<u64>;

    /// Whether the writer revisits bytes it wrote ([`Output::write_at`]), so that it needs a
    /// seekable file and its digests come from a read-back.
    fn needs_seek(&self) -> bool {
        false
    }

    /// The size of the virtual disk written, when the format rounds the input's size (to
    /// whole sectors, or a whole MiB for Azure); `None` when it is the input's size.
    fn disk_size(&self) -> Option<u64> {
        None
    }

    /// Whether encoding is cheap next to writing (no compression): the committing thread,
    /// which does the writing, then counts as one of the cores, and the workers are one fewer.
    fn light_encoder(&self) -> bool {
        true
    }

    /// Things the user should know about this output (a rounded size, say).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Derive every id and date the output holds from `identity` instead of randomness and
    /// the clock (reproducible output). Writers whose output holds none ignore it.
    fn set_identity(&mut self, identity: &crate::identity::Identity) {
        let _ = identity;
    }

    /// Whether the output holds ids or dates ([`Writer::set_identity`] matters).
    fn embeds_ids(&self) -> bool {
        false
    }

    /// Whether [`Writer::measure`] needs the input's plan (the output's size depends on which
    /// units hold data).
    fn measure_needs_plan(&self) -> bool {
        self.output_len().is_none()
    }

    /// The size of the output this writer would write for an input whose plan (in this
    /// writer's unit) is `plan`, and with every unit allocated: what `imgconv measure` reports.
    /// The default serves writers whose [`Writer::output_len`] is known.
    fn measure(&self, plan: Option<&Plan>) -> Result<Measure> {
        let _ = plan;
        self.output_len().map(Measure::fixed).ok_or_else(|| {
            crate::error::Error::new(
                crate::error::ErrorKind::Internal,
                "internal error: this writer cannot measure its output",
            )
        })
    }

    /// Whether the writer can write the data as chunks arrive and its header and tables last,
    /// into room kept for them at the front ([`Writer::begin_deferred`]): one pass over the
    /// input instead of a planning pass first. The pipeline uses it only for an output that
    /// can be rewritten and read back, with no digests computed inline (they would need the
    /// finished file read back).
    fn defers_tables(&self) -> bool {
        false
    }

    /// Start a conversion whose header and tables are written in [`Writer::finish`]: the
    /// input's [`Deferral::bound`] marks every unit that can hold data, from which the writer
    /// keeps room for its tables; it may look into [`Deferral::reader`] for what the bound
    /// leaves open (cheaply: the conversion reads the data next). Chunks then come
    /// loaded without a plan (their `nonzero` bits tell which units hold data), and the
    /// output must be seekable. The bytes written must be the same as with [`Writer::begin`]
    /// and the exact plan. Answer `false`, writing nothing, to have the plan made first after
    /// all (where the room is likely to differ from what the data needs).
    fn begin_deferred(&mut self, input: &Deferral, out: &mut Output) -> Result<bool> {
        let _ = (input, out);
        Ok(false)
    }

    /// The encoder the workers share.
    fn encoder(&self) -> Self::Encoder;

    /// Emit what precedes the data.
    fn begin(&mut self, plan: Option<&Plan>, out: &mut Output) -> Result<()>;

    /// Emit one encoded chunk; chunks arrive in ascending guest order.
    fn commit(
        &mut self,
        encoded: <Self::Encoder as Encoder>::Encoded,
        out: &mut Output,
    ) -> Result<()>;

    /// Emit `len` bytes of virtual disk from `offset` that read as zeros: whole chunks the
    /// pipeline did not load (a hole of any length costs one call), ascending like
    /// [`Writer::commit`]. Answer `false` to have them committed as zero chunks one by one
    /// instead (the default).
    fn commit_zeros(&mut self, offset: u64, len: u64, out: &mut Output) -> Result<bool> {
        let _ = (offset, len, out);
        Ok(false)
    }

    /// Emit what follows the data and report.
    fn finish(self, out: &mut Output) -> Result<WriterSummary>;
}
