//! One call from a reader to a published object: [`export`] converts into the [`Target`]
//! (an S3-compatible bucket, an OCI pre-authenticated request, or a local folder published
//! under a base URL) and answers where the object is, its size, MD5 and SHA-256.
//!
//! Formats written in file order stream straight into the upload. Compressed QCOW2 is written
//! out of order (its tables and header come after the data), so it is converted into a
//! scratch file first (in `scratch_dir`, deleted afterwards whatever happens) and the file is
//! then uploaded; its digests come from reading the finished file back. The scratch file is
//! as large as the compressed image.

use std::io::Read;
use std::path::{Path, PathBuf};

use imgconv::{
    convert, CancelToken, ConvertOptions, Destination, DigestKind, Error, ErrorKind, Progress,
    Reader, Result, Sink, Summary,
};
use url::Url;

use crate::{Credentials, ParConfig, ParSink, ParUrl, S3Config, S3Location, S3Sink};

/// Where an export goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// An S3-compatible bucket (AWS S3, Huawei OBS, OCI's S3-compatible endpoint, ...).
    S3 {
        /// Endpoint, region and transfer settings.
        config: S3Config,
        /// The keys.
        credentials: Credentials,
        /// Bucket and key.
        location: S3Location,
    },
    /// An OCI object pre-authenticated request URL.
    Par {
        /// Transfer settings.
        config: ParConfig,
        /// The PAR.
        url: ParUrl,
    },
    /// A file in a folder that a web server publishes under `base_url` (what ZStack's image
    /// store and similar backup storages hand out). An `NAME.md5` file in `md5sum` format is
    /// written next to it.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// The file name.
        name: String,
        /// The URL the folder is served at.
        base_url: Url,
        /// Replace an existing file.
        overwrite: bool,
    },
}

/// A finished export.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The conversion's report (its digests are of the object as stored).
    pub summary: Summary,
    /// Where the object is: `s3://bucket/key`, the PAR with its token hidden, or the
    /// published URL of a folder export.
    pub location: String,
    /// The object's size in bytes.
    pub size: u64,
    /// The object's MD5, hex.
    pub md5: String,
    /// The object's SHA-256, hex.
    pub sha256: String,
}

/// About how large the output of `options` can get for `reader`, to size the parts.
fn expected_size(reader: &dyn Reader) -> u64 {
    let v = reader.virtual_size();
    // Metadata of every format stays well under 1% plus 64 MiB.
    v.saturating_add(v / 100).saturating_add(64 << 20)
}

/// Convert `reader` as `options` say into `target`. MD5 and SHA-256 are always computed (and
/// any other digest `options` lists). On an error or a cancellation nothing is published: an
/// upload is aborted, a folder file is not created.
pub fn export(
    reader: &dyn Reader,
    target: &Target,
    options: &ConvertOptions,
    scratch_dir: &Path,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Exported> {
    let mut options = options.clone();
    for kind in [DigestKind::Md5, DigestKind::Sha256] {
        if !options.digests.contains(&kind) {
            options.digests.push(kind);
        }
    }
    if let Target::Folder {
        dir,
        name,
        base_url,
        overwrite,
    } = target
    {
        return to_folder(
            reader, dir, name, base_url, *overwrite, &options, progress, cancel,
        );
    }
    let expected = expected_size(reader);
    if options.output_name.is_none() {
        // The object's name, for formats that name things after it (an OVA's members).
        options.output_name = object_name(target);
    }
    let make_sink = || upload_sink(target, expected, cancel);
    let location = location_of(target);
    let summary = if options.needs_seekable_output(reader.virtual_size())? {
        via_scratch(
            reader,
            make_sink()?,
            &options,
            scratch_dir,
            progress,
            cancel,
        )?
    } else {
        convert(
            reader,
            Destination::Sink(make_sink()?),
            &options,
            progress,
            cancel,
        )?
    };
    finished(summary, location)
}

/// The upload sink for a bucket or PAR target.
fn upload_sink(target: &Target, expected: u64, cancel: &CancelToken) -> Result<Box<dyn Sink>> {
    Ok(match target {
        Target::S3 {
            config,
            credentials,
            location,
        } => {
            Box::new(S3Sink::create(config, credentials.clone(), location, expected)?.watch(cancel))
        }
        Target::Par { config, url } => {
            Box::new(ParSink::create(config, url, expected)?.watch(cancel))
        }
        Target::Folder { .. } => {
            return Err(Error::unsupported(
                "this export goes to object storage, not to a folder",
            ))
        }
    })
}

/// The last part of the object's key or URL path.
fn object_name(target: &Target) -> Option<String> {
    let whole = location_of(target);
    let path = whole.split(['?', '#']).next().unwrap_or("");
    path.rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

fn location_of(target: &Target) -> String {
    match target {
        Target::S3 { location, .. } => location.to_string(),
        Target::Par { url, .. } => url.to_string(),
        Target::Folder { base_url, name, .. } => format!("{base_url}{name}"),
    }
}

/// Export `reader` in Oracle Cloud's `OCI` format: one tar holding `image_metadata.json`
/// (`metadata`) and `output.QCOW2`, streamed into a bucket or PAR target in one pass (the
/// QCOW2's exact size is measured first, for its tar header). The digests are the archive's.
/// With `epoch` (seconds since 1970), the archive is reproducible: its entries are dated then.
pub fn export_oci_archive(
    reader: &dyn Reader,
    target: &Target,
    metadata: &serde_json::Value,
    epoch: Option<u64>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Exported> {
    // One planning read serves both the size the tar header declares and the conversion:
    // the source is read twice in all (plan, then convert), not three times.
    let options = ConvertOptions::new(imgconv::Format::Qcow2);
    let plan = imgconv::plan_for(reader, &options, cancel)?.map(std::sync::Arc::new);
    let options = options.with_plan(plan);
    let disk = imgconv::measure(reader, &options, cancel)?.required;
    let sink = upload_sink(target, disk.saturating_add(1 << 20), cancel)?;
    let digests: crate::oci::Digests = Default::default();
    let archive = crate::oci::OciArchiveSink::new(sink, metadata, disk, epoch, digests.clone())?;
    let summary = convert(
        reader,
        Destination::Sink(Box::new(archive)),
        &options,
        progress,
        cancel,
    )?;
    let digests = digests.lock().ok().and_then(|d| d.clone()).ok_or_else(|| {
        Error::new(
            ErrorKind::Internal,
            "internal error: archive digests missing",
        )
    })?;
    let find = |k: DigestKind| {
        digests
            .iter()
            .find(|d| d.kind == k)
            .map(|d| d.hex.clone())
            .unwrap_or_default()
    };
    let tar_len = 512
        + (metadata_len(metadata)?).next_multiple_of(512)
        + 512
        + disk.next_multiple_of(512)
        + 1024;
    Ok(Exported {
        size: tar_len,
        location: location_of(target),
        md5: find(DigestKind::Md5),
        sha256: find(DigestKind::Sha256),
        summary,
    })
}

fn metadata_len(metadata: &serde_json::Value) -> Result<u64> {
    serde_json::to_vec_pretty(metadata)
        .map(|v| v.len() as u64)
        .map_err(|e| Error::new(ErrorKind::Internal, "image metadata").with_source(e))
}

fn finished(summary: Summary, location: String) -> Result<Exported> {
    let digest = |k| {
        summary
            .digest(k)
            .map(str::to_string)
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal error: digest missing"))
    };
    let (md5, sha256) = (digest(DigestKind::Md5)?, digest(DigestKind::Sha256)?);
    Ok(Exported {
        size: summary.output_size,
        location,
        md5,
        sha256,
        summary,
    })
}

/// A scratch file removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Convert into a scratch file, then stream the file into `sink`.
fn via_scratch(
    reader: &dyn Reader,
    mut sink: Box<dyn Sink>,
    options: &ConvertOptions,
    scratch_dir: &Path,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Summary> {
    let scratch = Scratch(scratch_dir.join(format!(
        ".imgconv-export-{}-{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )));
    let summary = convert(
        reader,
        Destination::File {
            path: scratch.0.clone(),
            overwrite: false,
            sync: false,
        },
        options,
        progress,
        cancel,
    )?;
    let mut file =
        std::fs::File::open(&scratch.0).map_err(|e| Error::io("reading the scratch file", e))?;
    let mut buf = vec![0u8; 8 << 20];
    loop {
        cancel.check()?;
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("reading the scratch file", e))?;
        if n == 0 {
            break;
        }
        sink.write(&buf[..n])?;
    }
    if sink.position() != summary.output_size {
        return Err(Error::new(
            ErrorKind::Io,
            "the scratch file changed size while it was uploaded",
        ));
    }
    sink.finish()?;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn to_folder(
    reader: &dyn Reader,
    dir: &Path,
    name: &str,
    base_url: &Url,
    overwrite: bool,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Exported> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(Error::invalid_argument(format!(
            "'{name}' is not a plain file name"
        )));
    }
    let mut base = base_url.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let url = base
        .join(&url_escape(name))
        .map_err(|e| Error::invalid_argument("base URL").with_source(e))?;
    let path = dir.join(name);
    let summary = convert(
        reader,
        Destination::File {
            path: path.clone(),
            overwrite,
            sync: true,
        },
        options,
        progress,
        cancel,
    )?;
    let exported = finished(summary, url.to_string())?;
    let sidecar = dir.join(format!("{name}.md5"));
    std::fs::write(&sidecar, format!("{}  {name}\n", exported.md5))
        .map_err(|e| Error::io("writing the MD5 file", e).with_path(&sidecar))?;
    Ok(exported)
}

/// Percent-encode a file name for a URL path segment.
fn url_escape(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_for_urls() {
        assert_eq!(url_escape("disk 1#.qcow2"), "disk%201%23.qcow2");
    }
}
