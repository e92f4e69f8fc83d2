//! `convert()`: a reader through the pipeline into a writer and a sink, with inline digests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::digest::{Digest, DigestKind};
use crate::error::{Error, ErrorKind, Result};
use crate::formats::gce::{GceOptions, GceWriter};
use crate::formats::options::WriterOptions;
use crate::formats::ova::{KnownDisk, OvaOptions, OvaWriter};
use crate::formats::qcow2::{Qcow2CompressedWriter, Qcow2Options, Qcow2Writer};
use crate::formats::raw::{RawOptions, RawWriter};
use crate::formats::vdi::{VdiOptions, VdiWriter};
use crate::formats::vhd::{DiskType, VhdDynamicWriter, VhdFixedWriter, VhdOptions};
use crate::formats::vhdx::{VhdxOptions, VhdxWriter};
use crate::formats::vmdk::{SparseWriter, StreamWriter, VmdkOptions};
use crate::identity::{content_digest, Identity};
use crate::model::{Format, Plan};
use crate::pipeline::{self, PipelineConfig};
use crate::planner;
use crate::progress::{CancelToken, Progress};
use crate::reader::Reader;
use crate::sink::{FileSink, FileSinkOptions, Output, Preallocation, Sink};
use crate::writer::{Measure, Writer, WriterSummary};

/// What to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The output format.
    pub format: Format,
    /// `-o` options for the output format.
    pub writer_options: WriterOptions,
    /// Digests of the output stream to compute inline.
    pub digests: Vec<DigestKind>,
    /// Compress the output where the format can (`-c`).
    pub compress: bool,
    /// Pipeline tuning.
    pub pipeline: PipelineConfig,
    /// An allocation plan computed earlier ([`plan_for`]) for the same reader: used instead of
    /// planning again when its unit is the writer's. `measure` uses it too.
    pub plan: Option<Arc<Plan>>,
    /// Reproducible output: every id and date the output holds (VMDK CID and content ids,
    /// VHD unique id and timestamp, VDI uuids) is derived from the input's content digest,
    /// the format and options, and this epoch (seconds since 1970, as `SOURCE_DATE_EPOCH`),
    /// which is also the date written. Costs one more read of the input's data when the
    /// output format holds ids. `None`: random ids and the current time.
    pub deterministic: Option<u64>,
    /// The output's file name (without folders), for an OVA, which names its members and
    /// virtual system after it. A file destination's own name is used when this is `None`; a
    /// stream's is `disk`.
    pub output_name: Option<String>,
}

impl ConvertOptions {
    /// Produce `format` with default options and no digests.
    pub fn new(format: Format) -> Self {
        ConvertOptions {
            format,
            writer_options: WriterOptions::new(),
            digests: Vec::new(),
            compress: false,
            pipeline: PipelineConfig::default(),
            plan: None,
            deterministic: None,
            output_name: None,
        }
    }

    /// The identity of this output of `reader` when [`ConvertOptions::deterministic`] asks for
    /// one (reads the input to digest its content).
    fn identity_for(&self, reader: &dyn Reader, cancel: &CancelToken) -> Result<Option<Identity>> {
        let Some(epoch) = self.deterministic else {
            return Ok(None);
        };
        let content = content_digest(reader, cancel)?;
        let options = format!(
            "{}|{:?}|{}",
            self.format, self.writer_options, self.compress
        );
        Ok(Some(Identity::derive(&content, &options, epoch)))
    }

    /// Use `plan` (from [`plan_for`] on the same reader) instead of planning again.
    pub fn with_plan(mut self, plan: Option<Arc<Plan>>) -> Self {
        self.plan = plan;
        self
    }

    /// Whether the writer these options select for a disk of `virtual_size` bytes writes out
    /// of order, so that it needs a seekable destination (a file) rather than a stream (as
    /// compressed QCOW2 does: its tables and header come last). The writer answers.
    pub fn needs_seekable_output(&self, virtual_size: u64) -> Result<bool> {
        with_writer(virtual_size, "disk.vmdk", self, NeedsSeek)
    }

    /// Also compute these digests of the output.
    pub fn with_digests(mut self, digests: &[DigestKind]) -> Self {
        self.digests = digests.to_vec();
        self
    }
}

/// Where the output goes.
pub enum Destination {
    /// A file, published atomically at `path` on success.
    File {
        /// The destination path.
        path: PathBuf,
        /// Replace an existing file.
        overwrite: bool,
        /// `fsync` before publishing (on by default in the CLI).
        sync: bool,
    },
    /// Any sink (stdout, memory, an upload).
    Sink(Box<dyn Sink>),
}

impl Destination {
    /// A file destination that refuses to overwrite and syncs.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Destination::File {
            path: path.into(),
            overwrite: false,
            sync: true,
        }
    }
}

/// What a finished conversion reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The input format.
    pub input_format: Format,
    /// The output format.
    pub output_format: Format,
    /// Size of the virtual disk.
    pub virtual_size: u64,
    /// Length of the output stream (the file size).
    pub output_size: u64,
    /// Units of the output that hold data, and their size.
    pub allocated_units: u64,
    /// The output's unit size.
    pub unit_size: u64,
    /// The digests of the output stream.
    pub digests: Vec<Digest>,
    /// The file the digests describe, when it is not the destination itself (monolithicFlat
    /// VMDK: the `-flat.vmdk` extent, which holds the data).
    pub digested_file: Option<PathBuf>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Things the user should know about the output (a size rounded up, say).
    pub notes: Vec<String>,
}

impl Summary {
    /// The digest of `kind`, if computed.
    pub fn digest(&self, kind: DigestKind) -> Option<&str> {
        self.digests
            .iter()
            .find(|d| d.kind == kind)
            .map(|d| d.hex.as_str())
    }
}

/// Convert `reader` into `dest` as `opts` say. On any error (or cancellation) nothing is
/// published at a file destination.
pub fn convert(
    reader: &dyn Reader,
    dest: Destination,
    opts: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Summary> {
    let started = Instant::now();
    let name = match &dest {
        Destination::File { path, .. } => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk.vmdk".into()),
        Destination::Sink(_) => "disk.vmdk".into(),
    };
    let run_it = RunWriter {
        reader,
        dest,
        opts,
        progress,
        cancel,
        started,
    };
    with_writer(reader.virtual_size(), &name, opts, run_it)
}

/// What is done with the writer that a [`ConvertOptions`] selects ([`with_writer`]).
trait WriterUse {
    type Out;
    /// Use `writer`, whose file output is preallocated as `preallocation` says.
    fn writer<W: Writer>(self, writer: W, preallocation: Preallocation) -> Result<Self::Out>;
    /// A monolithicFlat VMDK: a descriptor and a RAW extent, two files.
    fn flat_vmdk(self, options: VmdkOptions) -> Result<Self::Out>;
    /// An OVA of a disk of `size` bytes: by default the writer that patches its first members
    /// in place (a seekable output).
    fn ova(self, size: u64, options: OvaOptions) -> Result<Self::Out>
    where
        Self: Sized,
    {
        self.writer(OvaWriter::new(size, options, None)?, Preallocation::Off)
    }
}

/// Build the writer `opts` select for a disk of `size` bytes (a VMDK's extent named after
/// `name`) and hand it to `user`. The one place that maps options to writers.
fn with_writer<U: WriterUse>(
    size: u64,
    name: &str,
    opts: &ConvertOptions,
    user: U,
) -> Result<U::Out> {
    match opts.format {
        Format::Raw => {
            let raw = RawOptions::parse(opts.writer_options.clone())?;
            user.writer(RawWriter::new(size), raw.preallocation)
        }
        Format::Qcow2 => {
            let q = Qcow2Options::parse(opts.writer_options.clone(), opts.compress)?;
            if q.compression.is_some() {
                user.writer(Qcow2CompressedWriter::new(size, q)?, Preallocation::Off)
            } else {
                user.writer(Qcow2Writer::new(size, q)?, Preallocation::Off)
            }
        }
        Format::Vmdk => {
            let (subformat, v) = VmdkOptions::parse(opts.writer_options.clone(), name)?;
            if subformat.eq_ignore_ascii_case("streamOptimized") {
                user.writer(StreamWriter::new(size, v)?, Preallocation::Off)
            } else if subformat.eq_ignore_ascii_case("monolithicSparse") {
                user.writer(SparseWriter::new(size, v)?, Preallocation::Off)
            } else if subformat.eq_ignore_ascii_case("monolithicFlat") {
                user.flat_vmdk(v)
            } else {
                Err(Error::unsupported(format!(
                    "VMDK subformat '{subformat}' is not supported by this version \
                     (streamOptimized, monolithicSparse and monolithicFlat are)"
                ))
                .with_format(Format::Vmdk))
            }
        }
        Format::Vdi => {
            let v = VdiOptions::parse(opts.writer_options.clone())?;
            user.writer(VdiWriter::new(size, v)?, Preallocation::Off)
        }
        Format::Vhdx => {
            let v = VhdxOptions::parse(opts.writer_options.clone())?;
            user.writer(VhdxWriter::new(size, v)?, Preallocation::Off)
        }
        Format::Ova => {
            // The name without its extension(s): `vm.ova` gives `vm`.
            let name = opts.output_name.as_deref().unwrap_or(name);
            let stem = name.split('.').next().unwrap_or("");
            let stem = if stem.is_empty() || stem == "-" {
                "disk"
            } else {
                stem
            };
            let o = OvaOptions::parse(opts.writer_options.clone(), stem)?;
            user.ova(size, o)
        }
        Format::Gce => {
            let g = GceOptions::parse(opts.writer_options.clone())?;
            user.writer(GceWriter::new(size, g)?, Preallocation::Off)
        }
        Format::Vhd => {
            let v = VhdOptions::parse(opts.writer_options.clone())?;
            if v.kind == DiskType::Fixed {
                user.writer(VhdFixedWriter::new(size, v)?, Preallocation::Off)
            } else {
                user.writer(VhdDynamicWriter::new(size, v)?, Preallocation::Off)
            }
        }
    }
}

/// A conversion: the writer runs into a sink made for it.
struct RunWriter<'a> {
    reader: &'a dyn Reader,
    dest: Destination,
    opts: &'a ConvertOptions,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    started: Instant,
}

impl RunWriter<'_> {
    /// Run `writer` (its ids already set) into a sink made for the destination.
    fn run<W: Writer>(self, writer: W, preallocation: Preallocation) -> Result<Summary> {
        let sink = make_sink(self.dest, preallocation, writer.output_len())?;
        run(
            self.reader,
            writer,
            sink,
            self.opts,
            self.progress,
            self.cancel,
            self.started,
        )
    }
}

impl WriterUse for RunWriter<'_> {
    type Out = Summary;

    fn writer<W: Writer>(self, mut writer: W, preallocation: Preallocation) -> Result<Summary> {
        if writer.embeds_ids() {
            if let Some(id) = self.opts.identity_for(self.reader, self.cancel)? {
                writer.set_identity(&id);
            }
        }
        self.run(writer, preallocation)
    }

    fn ova(self, size: u64, options: OvaOptions) -> Result<Summary> {
        let seekable = match &self.dest {
            Destination::File { .. } => true,
            Destination::Sink(s) => s.is_seekable(),
        };
        // Both runs of a rehearsed package must write the same disk bytes: the same ids.
        let identity = self
            .opts
            .identity_for(self.reader, self.cancel)?
            .unwrap_or_else(Identity::random);
        let known = if seekable {
            None
        } else {
            // The rehearsal: the disk file alone, into nothing, for its size and SHA-256.
            let mut disk = OvaWriter::disk_writer(size, &options)?;
            disk.set_identity(&identity);
            let mut rehearsal = self.opts.clone();
            rehearsal.digests = vec![DigestKind::Sha256];
            let s = run(
                self.reader,
                disk,
                Box::new(crate::sink::NullSink::default()),
                &rehearsal,
                &crate::progress::NoProgress,
                self.cancel,
                self.started,
            )?;
            let sha = s.digest(DigestKind::Sha256).unwrap_or_default();
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(sha, &mut sha256).map_err(|_| {
                Error::new(ErrorKind::Internal, "internal error: no rehearsal digest")
            })?;
            Some(KnownDisk {
                len: s.output_size,
                sha256,
                populated: s.allocated_units * s.unit_size,
            })
        };
        let mut writer = OvaWriter::new(size, options, known)?;
        writer.set_identity(&identity);
        self.run(writer, Preallocation::Off)
    }

    fn flat_vmdk(self, mut options: VmdkOptions) -> Result<Summary> {
        options.identity = self.opts.identity_for(self.reader, self.cancel)?;
        flat_vmdk(
            self.reader,
            self.dest,
            options,
            self.opts,
            self.progress,
            self.cancel,
            self.started,
        )
    }
}

/// The plan the selected writer needs, if it needs one.
struct PlanFor<'a> {
    reader: &'a dyn Reader,
    chunk_size: u64,
    cancel: &'a CancelToken,
}

impl WriterUse for PlanFor<'_> {
    type Out = Option<Plan>;

    fn writer<W: Writer>(self, writer: W, _: Preallocation) -> Result<Option<Plan>> {
        if !writer.needs_plan() {
            return Ok(None);
        }
        planner::plan(
            self.reader,
            writer.unit_size(),
            self.chunk_size,
            self.cancel,
        )
        .map(Some)
    }

    fn flat_vmdk(self, _: VmdkOptions) -> Result<Option<Plan>> {
        Ok(None)
    }
}

/// The allocation plan the writer that `opts` select needs for `reader` (`None` when it needs
/// none), computed once: hand it to [`measure`] and [`convert`] with
/// [`ConvertOptions::with_plan`] and neither reads the data to plan again.
pub fn plan_for(
    reader: &dyn Reader,
    opts: &ConvertOptions,
    cancel: &CancelToken,
) -> Result<Option<Plan>> {
    let user = PlanFor {
        reader,
        chunk_size: opts.pipeline.chunk_size,
        cancel,
    };
    with_writer(reader.virtual_size(), "disk.vmdk", opts, user)
}

/// `opts`'s plan if it fits (its unit and disk size), else a new one.
fn reuse_or_plan(
    reader: &dyn Reader,
    opts: &ConvertOptions,
    unit: u64,
    cancel: &CancelToken,
) -> Result<Arc<Plan>> {
    match &opts.plan {
        Some(p) if p.unit_size() == unit && p.virtual_size() == reader.virtual_size() => {
            Ok(Arc::clone(p))
        }
        _ => planner::plan(reader, unit, opts.pipeline.chunk_size, cancel).map(Arc::new),
    }
}

/// Whether the selected writer writes out of order (asks the writer).
struct NeedsSeek;

impl WriterUse for NeedsSeek {
    type Out = bool;

    fn writer<W: Writer>(self, writer: W, _: Preallocation) -> Result<bool> {
        Ok(writer.needs_seek())
    }

    fn flat_vmdk(self, _: VmdkOptions) -> Result<bool> {
        // Two files: no single seekable output serves; the conversion says so itself.
        Ok(false)
    }

    fn ova(self, _: u64, _: OvaOptions) -> Result<bool> {
        // Into a stream the package is rehearsed, then written in order.
        Ok(false)
    }
}

/// monolithicFlat: the disk as a RAW `<name>-flat.vmdk` (whole sectors), then the descriptor
/// at the destination. Both are published atomically, the descriptor last; if it fails, the
/// flat file is removed. The digests are those of the flat extent, which holds the data.
fn flat_vmdk(
    reader: &dyn Reader,
    dest: Destination,
    v: VmdkOptions,
    opts: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
    started: Instant,
) -> Result<Summary> {
    let Destination::File {
        path,
        overwrite,
        sync,
    } = dest
    else {
        return Err(Error::unsupported(
            "monolithicFlat VMDK is two files (descriptor and -flat extent): it needs a file output",
        ));
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let flat_name = format!("{stem}-flat.vmdk");
    let flat = path.with_file_name(&flat_name);
    // Check the descriptor's name before the long part: it is published last.
    if !overwrite && std::fs::symlink_metadata(&path).is_ok() {
        return Err(Error::new(
            crate::error::ErrorKind::AlreadyExists,
            "the output already exists and overwriting it was not asked for",
        )
        .with_path(&path));
    }
    let size = reader.virtual_size();
    let sectors = size.div_ceil(512);
    let writer = RawWriter::padded(size, sectors * 512);
    let flat_sink = make_sink(
        Destination::File {
            path: flat.clone(),
            overwrite,
            sync,
        },
        Preallocation::Off,
        Some(sectors * 512),
    )?;
    let mut summary = run(reader, writer, flat_sink, opts, progress, cancel, started)?;
    let text = crate::formats::vmdk::flat_descriptor(sectors, &v, &flat_name);
    let publish = (|| {
        let mut sink = Box::new(FileSink::create(
            &path,
            FileSinkOptions {
                overwrite,
                sync,
                ..FileSinkOptions::default()
            },
        )?);
        sink.write(text.as_bytes())?;
        sink.finish()
    })();
    if let Err(e) = publish {
        let _ = std::fs::remove_file(&flat);
        return Err(e);
    }
    summary.output_format = Format::Vmdk;
    summary.digested_file = Some(flat);
    Ok(summary)
}

fn make_sink(
    dest: Destination,
    preallocation: Preallocation,
    expected_len: Option<u64>,
) -> Result<Box<dyn Sink>> {
    Ok(match dest {
        Destination::File {
            path,
            overwrite,
            sync,
        } => Box::new(FileSink::create(
            path,
            FileSinkOptions {
                overwrite,
                preallocation,
                expected_len,
                sync,
            },
        )?),
        Destination::Sink(s) => s,
    })
}

fn run<W: Writer>(
    reader: &dyn Reader,
    writer: W,
    sink: Box<dyn Sink>,
    opts: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
    started: Instant,
) -> Result<Summary> {
    let output_format = writer.format();
    let virtual_size = writer.disk_size().unwrap_or(reader.virtual_size());
    let notes = writer.notes();
    let mut out = if writer.needs_seek() {
        if !sink.is_seekable() {
            return Err(Error::unsupported(format!(
                "this {output_format} output is written out of order and needs a file, not a stream"
            )));
        }
        Output::new_seekable(sink, &opts.digests)?
    } else if writer.defers_tables()
        && sink.is_seekable()
        && opts.digests.is_empty()
        && opts.plan.is_none()
    {
        // Data as it comes, tables last: one pass over the input instead of two. With
        // digests asked, the planned layout keeps them inline (a read-back would cost more).
        Output::new_seekable(sink, &opts.digests)?
    } else {
        Output::new(sink, &opts.digests)?
    };
    let (summary, _plan): (WriterSummary, _) = pipeline::run(
        reader,
        writer,
        &mut out,
        &opts.pipeline,
        opts.plan.as_deref(),
        progress,
        cancel,
    )?;
    cancel.check()?;
    let (output_size, digests) = out.finish()?;
    Ok(Summary {
        input_format: reader.format(),
        output_format,
        virtual_size,
        output_size,
        allocated_units: summary.allocated_units,
        unit_size: summary.unit_size,
        digests,
        digested_file: None,
        seconds: started.elapsed().as_secs_f64(),
        notes,
    })
}

/// The sizes an output of `opts.format` would need for `reader` (`imgconv measure`).
pub fn measure(
    reader: &dyn Reader,
    opts: &ConvertOptions,
    cancel: &CancelToken,
) -> Result<Measure> {
    let user = MeasureWith {
        reader,
        opts,
        cancel,
    };
    with_writer(reader.virtual_size(), "disk.vmdk", opts, user)
}

/// `measure`: the selected writer sizes its output, from the input's plan when it needs it.
struct MeasureWith<'a> {
    reader: &'a dyn Reader,
    opts: &'a ConvertOptions,
    cancel: &'a CancelToken,
}

impl WriterUse for MeasureWith<'_> {
    type Out = Measure;

    fn writer<W: Writer>(self, writer: W, _: Preallocation) -> Result<Measure> {
        let plan = if writer.measure_needs_plan() {
            Some(reuse_or_plan(
                self.reader,
                self.opts,
                writer.unit_size(),
                self.cancel,
            )?)
        } else {
            None
        };
        writer.measure(plan.as_deref())
    }

    fn flat_vmdk(self, _: VmdkOptions) -> Result<Measure> {
        // The -flat extent: whole sectors (its descriptor is a separate text file).
        Ok(Measure::fixed(
            self.reader.virtual_size().div_ceil(512) * 512,
        ))
    }
}
