//! Opening an image: detect (or take) its format and build the format's reader.

use std::path::Path;

use crate::detect::detect_source;
use crate::error::{ErrorKind, Result};
use crate::formats::qcow2::Qcow2Reader;
use crate::formats::raw::RawReader;
use crate::formats::vdi::VdiReader;
use crate::formats::vhd::{self, VhdReader};
use crate::formats::vhdx::VhdxReader;
use crate::formats::vmdk::VmdkReader;
use crate::model::{Format, ImageInfo};
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
    open_source_disk(source, format, 1)
}

/// Open the image at `path`; in a package holding several disks (an OVA), the disk `disk`,
/// counted from 1.
pub fn open_image_disk(
    path: impl AsRef<Path>,
    format: Option<Format>,
    disk: usize,
) -> Result<Box<dyn Reader>> {
    let path = path.as_ref();
    let source = FileSource::open(path)?;
    open_source_disk(Box::new(source), format, disk).map_err(|e| e.with_path(path))
}

/// Open an image from any [`Source`]; in a package, its disk `disk` (from 1).
pub fn open_source_disk(
    source: Box<dyn Source>,
    format: Option<Format>,
    disk: usize,
) -> Result<Box<dyn Reader>> {
    let format = match format {
        Some(f) => f,
        None => detect_source(source.as_ref())?,
    };
    if disk != 1 && format != Format::Ova {
        return Err(crate::error::Error::invalid_argument(format!(
            "--disk {disk}: a {format} image holds one disk"
        )));
    }
    open_format(source, format, disk)
}

/// The disk inside a package: any format but another package.
pub(crate) fn open_packaged_disk(source: Box<dyn Source>) -> Result<Box<dyn Reader>> {
    let format = detect_source(source.as_ref())?;
    if matches!(format, Format::Ova | Format::Gce) {
        return Err(crate::error::Error::unsupported(format!(
            "the package holds another package ({format}) as its disk"
        )));
    }
    open_format(source, format, 1)
}

fn open_format(source: Box<dyn Source>, format: Format, disk: usize) -> Result<Box<dyn Reader>> {
    match format {
        Format::Raw => Ok(Box::new(RawReader::new(source))),
        Format::Qcow2 => Ok(Box::new(Qcow2Reader::open(source)?)),
        Format::Vmdk => Ok(Box::new(VmdkReader::open(source)?)),
        Format::Vdi => Ok(Box::new(VdiReader::open(source)?)),
        Format::Vhd => Ok(Box::new(VhdReader::open(source)?)),
        Format::Vhdx => Ok(Box::new(VhdxReader::open(source)?)),
        Format::Ova => crate::formats::ova::open(source, disk),
        Format::Gce => crate::formats::gce::open(source),
    }
}

/// What `imgconv info` shows for the image at `path`. An image whose format is recognised but
/// refused (a QCOW2 with a backing file, say) still gets its basic facts and a `refused` line
/// naming the feature; other errors are returned as they are.
pub fn inspect(path: impl AsRef<Path>, format: Option<Format>) -> Result<ImageInfo> {
    let path = path.as_ref();
    let err = match open_image(path, format) {
        Ok(reader) => return Ok(reader.info()),
        Err(e) => e,
    };
    if err.kind() != ErrorKind::Unsupported {
        return Err(err);
    }
    let source = FileSource::open(path)?;
    let detected = match format {
        Some(f) => f,
        None => detect_source(&source)?,
    };
    let mut info = match detected {
        Format::Vhd => vhd::describe(&source)?,
        Format::Qcow2 => crate::formats::qcow2::header::describe(&source)?,
        _ => return Err(err),
    };
    info.details
        .push(("refused".into(), err.message().to_string()));
    Ok(info)
}
