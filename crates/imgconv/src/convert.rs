//! `convert()`: a reader through the pipeline into a writer and a sink, with inline digests.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::digest::{Digest, DigestKind};
use crate::error::{Error, Result};
use crate::formats::options::WriterOptions;
use crate::formats::qcow2::{self, Qcow2CompressedWriter, Qcow2Options, Qcow2Writer};
use crate::formats::raw::{RawOptions, RawWriter};
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
    /// Wall time in seconds.
    pub seconds: f64,
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
            } else {
                Err(Error::unsupported(format!(
                    "VMDK subformat '{subformat}' is not supported by this version \
                     (streamOptimized and monolithicSparse are)"
                ))
                .with_format(Format::Vmdk))
            }
        }
        other => Err(unsupported_output(other)),
    }
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
        virtual_size: reader.virtual_size(),
        output_size,
        allocated_units: summary.allocated_units,
        unit_size: summary.unit_size,
        digests,
        seconds: started.elapsed().as_secs_f64(),
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
        other => Err(unsupported_output(other)),
    }
}
