//! `convert()`: a reader through the pipeline into a writer and a sink, with inline digests.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::digest::{Digest, DigestKind};
use crate::error::{Error, Result};
use crate::formats::options::WriterOptions;
use crate::formats::qcow2::{self, Qcow2CompressedWriter, Qcow2Options, Qcow2Writer};
use crate::formats::raw::{RawOptions, RawWriter};
use crate::formats::vdi::{VdiOptions, VdiWriter};
use crate::formats::vhd::{self, DiskType, VhdDynamicWriter, VhdFixedWriter, VhdOptions};
use crate::formats::vmdk::{SparseWriter, StreamWriter, VmdkOptions};
use crate::model::Format;
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
        }
    }

    /// Whether this output is written out of order, so that it needs a seekable destination
    /// (a file) rather than a stream: compressed QCOW2, whose tables and header come last.
    pub fn needs_seekable_output(&self) -> bool {
        self.format == Format::Qcow2 && self.compress
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
    match opts.format {
        Format::Raw => {
            let raw = RawOptions::parse(opts.writer_options.clone())?;
            let writer = RawWriter::new(reader.virtual_size());
            let sink = make_sink(dest, raw.preallocation, writer.output_len())?;
            run(reader, writer, sink, opts, progress, cancel, started)
        }
        Format::Qcow2 => {
            let q = Qcow2Options::parse(opts.writer_options.clone(), opts.compress)?;
            let sink = make_sink(dest, Preallocation::Off, None)?;
            if q.compression.is_some() {
                let writer = Qcow2CompressedWriter::new(reader.virtual_size(), q)?;
                run(reader, writer, sink, opts, progress, cancel, started)
            } else {
                let writer = Qcow2Writer::new(reader.virtual_size(), q)?;
                run(reader, writer, sink, opts, progress, cancel, started)
            }
        }
        Format::Vmdk => {
            let name = match &dest {
                Destination::File { path, .. } => path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "disk.vmdk".into()),
                Destination::Sink(_) => "disk.vmdk".into(),
            };
            let (subformat, v) = VmdkOptions::parse(opts.writer_options.clone(), &name)?;
            let size = reader.virtual_size();
            if subformat.eq_ignore_ascii_case("streamOptimized") {
                let writer = StreamWriter::new(size, v)?;
                let sink = make_sink(dest, Preallocation::Off, None)?;
                run(reader, writer, sink, opts, progress, cancel, started)
            } else if subformat.eq_ignore_ascii_case("monolithicSparse") {
                let writer = SparseWriter::new(size, v)?;
                let sink = make_sink(dest, Preallocation::Off, None)?;
                run(reader, writer, sink, opts, progress, cancel, started)
            } else if subformat.eq_ignore_ascii_case("monolithicFlat") {
                flat_vmdk(reader, dest, v, opts, progress, cancel, started)
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
            let writer = VdiWriter::new(reader.virtual_size(), v)?;
            let sink = make_sink(dest, Preallocation::Off, None)?;
            run(reader, writer, sink, opts, progress, cancel, started)
        }
        Format::Vhd => {
            let v = VhdOptions::parse(opts.writer_options.clone())?;
            let size = reader.virtual_size();
            if v.kind == DiskType::Fixed {
                let writer = VhdFixedWriter::new(size, v)?;
                let sink = make_sink(dest, Preallocation::Off, writer.output_len())?;
                run(reader, writer, sink, opts, progress, cancel, started)
            } else {
                let writer = VhdDynamicWriter::new(size, v)?;
                let sink = make_sink(dest, Preallocation::Off, None)?;
                run(reader, writer, sink, opts, progress, cancel, started)
            }
        }
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
            "the output already exists (use --force to overwrite it)",
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

fn unsupported_output(format: Format) -> Error {
    Error::unsupported(format!(
        "writing {format} images is not supported by this version"
    ))
    .with_format(format)
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
    } else {
        Output::new(sink, &opts.digests)?
    };
    let (summary, _plan): (WriterSummary, _) =
        pipeline::run(reader, writer, &mut out, &opts.pipeline, progress, cancel)?;
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
    match opts.format {
        Format::Raw => {
            RawOptions::parse(opts.writer_options.clone())?;
            // RAW needs the virtual size whatever the content, as qemu-img reports it.
            let size = reader.virtual_size();
            Ok(Measure {
                required: size,
                fully_allocated: size,
            })
        }
        Format::Qcow2 => {
            let q = Qcow2Options::parse(opts.writer_options.clone(), opts.compress)?;
            let plan = planner::plan(reader, q.cluster_size(), opts.pipeline.chunk_size, cancel)?;
            Ok(qcow2::measure(&plan, &q))
        }
        Format::Vhd => {
            let v = VhdOptions::parse(opts.writer_options.clone())?;
            let size = reader.virtual_size();
            let plan = if v.kind == DiskType::Dynamic {
                Some(planner::plan(
                    reader,
                    v.block_size,
                    opts.pipeline.chunk_size,
                    cancel,
                )?)
            } else {
                None
            };
            vhd::measure(size, plan.as_ref(), &v)
        }
        other => Err(unsupported_output(other)),
    }
}
