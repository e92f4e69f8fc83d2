//! imgconv: a disk-image conversion engine.
//!
//! Data flows `Reader → planner → pipeline → Writer → Sink`: a [`Reader`] exposes a virtual
//! disk with positional reads and an extent map; the planner knows which of a writer's units
//! hold data before a byte is written; the pipeline reads, zero-scans and encodes chunks in
//! parallel on rayon and commits them in order; a [`Writer`] emits its format in file order;
//! the [`Sink`] publishes the result atomically (or streams it), while MD5, SHA-256 and CRC32C
//! of the output are computed inline on threads of their own.
//!
//! ```
//! use imgconv::{convert, open_source, CancelToken, ConvertOptions, Destination, DigestKind,
//!               Format, MemSource, NoProgress, VecSink};
//!
//! # fn main() -> imgconv::Result<()> {
//! // A 1 MiB RAW disk with a little data at the start.
//! let mut disk = vec![0u8; 1 << 20];
//! disk[..5].copy_from_slice(b"hello");
//! let reader = open_source(Box::new(MemSource::new(disk.clone())), Some(Format::Raw))?;
//!
//! let sink = VecSink::new();
//! let opts = ConvertOptions::new(Format::Raw).with_digests(&[DigestKind::Md5, DigestKind::Sha256]);
//! let summary = convert(&*reader, Destination::Sink(Box::new(sink.clone())), &opts,
//!                       &NoProgress, &CancelToken::new())?;
//!
//! assert_eq!(sink.contents(), disk);
//! assert_eq!(summary.output_size, 1 << 20);
//! println!("md5 {}", summary.digest(DigestKind::Md5).unwrap_or("-"));
//! # Ok(())
//! # }
//! ```
//!
//! Every image is untrusted: parsing never panics, never allocates from an unchecked field and
//! never opens a file that an image names. Errors carry a stable [`ErrorKind`].

// Lengths bounded by a chunk or unit size are converted between u64 and usize freely; that is
// lossless only where usize is 64 bits wide.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("imgconv supports 64-bit targets only");

pub(crate) mod buffer;
pub(crate) mod bytes;
pub(crate) mod check;
pub(crate) mod compare;
pub(crate) mod convert;
pub(crate) mod detect;
pub mod digest;
pub(crate) mod error;
pub(crate) mod formats;
#[doc(hidden)]
pub mod fuzz_support;
pub(crate) mod identity;
pub(crate) mod inspect;
pub(crate) mod model;
pub(crate) mod open;
pub(crate) mod pipeline;
pub(crate) mod planner;
pub(crate) mod progress;
pub(crate) mod reader;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod writer;
pub(crate) mod zero;

pub use buffer::Bytes;
pub use check::{check_image, CheckReport, Finding, Problem, MAX_FINDINGS};
pub use compare::{compare, Comparison};
pub use convert::{convert, measure, plan_for, ConvertOptions, Destination, Summary};
pub use detect::detect_format;
pub use digest::{Digest, DigestKind};
pub use error::{Error, ErrorKind, Result};
pub use formats::options::{parse_size, WriterOptions};
pub use identity::{content_digest, Identity};
pub use inspect::{map_image, MapEntry};
pub use model::{Chunk, Plan};
pub use model::{Extent, Format, ImageInfo, Location, Mapping, UnitIndex};
pub use open::{inspect, open_image, open_image_disk, open_source, open_source_disk};
pub use pipeline::PipelineConfig;
pub use planner::plan;
pub use progress::{CancelToken, NoProgress, Progress};
pub use reader::Reader;
pub use sink::{
    FileSink, FileSinkOptions, NullSink, Output, Preallocation, Sink, VecSink, WriteSink,
};
pub use source::{FileSource, MemSource, Source};
pub use writer::{Encoder, Measure, Writer, WriterSummary};
