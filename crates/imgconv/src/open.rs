//! Opening an image: detect (or take) its format and build the format's reader.

use std::path::Path;

use crate::detect::detect_source;
use crate::error::{Error, Result};
use crate::formats::qcow2::Qcow2Reader;
use crate::formats::raw::RawReader;
use crate::model::Format;
use crate::reader::Reader;
use crate::source::{FileSource, Source};

/// Open the image at `path`, as `format` if given, else as its magic bytes say.
pub fn open_image(path: impl AsRef<Path>, format: Option<Format>) -> Result<Box<dyn Reader>> {
    let path = path.as_ref();
    let source = FileSource::open(path)?;
    open_source(Box::new(source), format).map_err(|e| e.with_path(path))
}

/// Open an image from any [`Source`].
pub fn open_source(source: Box<dyn Source>, format: Option<Format>) -> Result<Box<dyn Reader>> {
    let format = match format {
        Some(f) => f,
        None => detect_source(source.as_ref())?,
    };
    match format {
        Format::Raw => Ok(Box::new(RawReader::new(source))),
        Format::Qcow2 => Ok(Box::new(Qcow2Reader::open(source)?)),
        other => Err(Error::unsupported(format!(
            "reading {other} images is not supported by this version (use -f raw to read the \
             file byte for byte)"
        ))
        .with_format(other)),
    }
}
