//! What the sink tests share: converting a disk in memory into a sink, and checking an object.

#![allow(dead_code)]

use imgconv::{
    convert, open_source, CancelToken, ConvertOptions, Destination, DigestKind, Format, MemSource,
    NoProgress, Sink, Summary,
};
use imgconv_testkit::hex;
use md5::Digest as _;

/// Convert the RAW `disk` into `sink` as `format`, with MD5 and SHA-256.
pub(crate) fn export(
    sink: impl Sink + 'static,
    disk: &[u8],
    format: Format,
) -> imgconv::Result<Summary> {
    let reader = open_source(Box::new(MemSource::new(disk.to_vec())), Some(Format::Raw))?;
    let opts = ConvertOptions::new(format).with_digests(&[DigestKind::Md5, DigestKind::Sha256]);
    convert(
        &*reader,
        Destination::Sink(Box::new(sink)),
        &opts,
        &NoProgress,
        &CancelToken::new(),
    )
}

/// The object's content read back as a disk, through imgconv's own reader for `format`.
pub(crate) fn read_back(object: Vec<u8>, format: Format) -> Vec<u8> {
    let r = open_source(Box::new(MemSource::new(object)), Some(format)).expect("open object");
    let mut out = vec![0u8; r.virtual_size() as usize];
    r.read_at(0, &mut out).expect("read object");
    out
}

/// The object has the size and digests the conversion reported, and reads back as `disk`.
pub(crate) fn check(object: Vec<u8>, summary: &Summary, disk: &[u8], format: Format, name: &str) {
    assert_eq!(object.len() as u64, summary.output_size, "{name}");
    assert_eq!(
        summary.digest(DigestKind::Md5),
        Some(hex(&md5::Md5::digest(&object)).as_str()),
        "{name}"
    );
    assert_eq!(
        summary.digest(DigestKind::Sha256),
        Some(hex(&sha2::Sha256::digest(&object)).as_str()),
        "{name}"
    );
    let mut back = read_back(object, format);
    back.truncate(disk.len());
    assert!(back == disk, "{name}: content differs");
}
