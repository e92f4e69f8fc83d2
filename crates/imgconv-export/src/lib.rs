//! imgconv-export: conversions streamed straight into object storage.
//!
//! An [`S3Sink`] is an [`imgconv::Sink`]: the conversion writes its output into it in file
//! order, and it cuts the stream into parts that go to an S3-compatible bucket (AWS S3, and
//! Huawei OBS and OCI Object Storage through their S3-compatible endpoints) by multipart
//! upload, while the conversion goes on. Nothing touches the local disk; memory is bounded by
//! the part size times the parts in flight. The MD5 and SHA-256 that the conversion reports
//! are imgconv's own digests of the stream, never an ETag.
//!
//! ```no_run
//! use imgconv::{convert, open_image, CancelToken, ConvertOptions, Destination, DigestKind,
//!               Format, NoProgress};
//! use imgconv_export::{Credentials, S3Config, S3Location, S3Sink};
//!
//! # fn main() -> imgconv::Result<()> {
//! let reader = open_image("disk.qcow2", None)?;
//! let config = S3Config::new("https://s3.eu-west-1.amazonaws.com", "eu-west-1")?;
//! let to = S3Location::parse("s3://exports/disk.vmdk")?;
//! let sink = S3Sink::create(&config, Credentials::from_env()?, &to, reader.virtual_size())?;
//! let opts = ConvertOptions::new(Format::Vmdk).with_digests(&[DigestKind::Md5, DigestKind::Sha256]);
//! let summary = convert(&*reader, Destination::Sink(Box::new(sink)), &opts, &NoProgress,
//!                       &CancelToken::new())?;
//! println!("md5 {}", summary.digest(DigestKind::Md5).unwrap_or("-"));
//! # Ok(())
//! # }
//! ```

mod credentials;
pub mod destination;
mod export;
pub mod jobs;
mod oci;
mod par;
mod parts;
mod s3;
mod tls;

pub use credentials::{profile_setting, Credentials};
pub use export::{export, export_oci_archive, Exported, Target};
pub use oci::default_metadata as oci_image_metadata;
pub use par::{ParConfig, ParSink, ParUrl, PAR_MAX_PART_SIZE};
pub use parts::{PartHook, PartRecorder, PublishGate, StoredPart, UploadHook};
pub use s3::{S3Config, S3Location, S3Sink, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
