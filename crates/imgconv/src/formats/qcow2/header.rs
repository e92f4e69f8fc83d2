//! The QCOW2 header (qemu `docs/interop/qcow2.txt`, "Header"), big-endian.
//!
//! ```text
//!   0  u32 magic "QFI\xfb"            40  u64 l1_table_offset
//!   4  u32 version (2 or 3)           48  u64 refcount_table_offset
//!   8  u64 backing_file_offset        56  u32 refcount_table_clusters
//!  16  u32 backing_file_size          60  u32 nb_snapshots
//!  20  u32 cluster_bits               64  u64 snapshots_offset
//!  24  u64 size (virtual, bytes)      -- version 3 only --
//!  32  u32 crypt_method               72  u64 incompatible_features
//!  36  u32 l1_size (entries)          80  u64 compatible_features
//!                                     88  u64 autoclear_features
//!                                     96  u32 refcount_order
//!                                    100  u32 header_length
//!                                    104  u8  compression_type (if header_length > 104)
//! ```

use crate::bytes::{be32, be64};
use crate::error::{Error, ErrorKind, Result};
use crate::model::Format;

/// `QFI\xfb`.
pub(crate) const MAGIC: u32 = 0x5146_49fb;
/// Size of a version 2 header.
pub(crate) const V2_HEADER_LEN: usize = 72;
/// The version 3 header imgconv writes (with the compression type field and padding).
pub(crate) const V3_HEADER_LEN: usize = 112;
// The version 2 fields end at byte 72; version 3 adds fields up to the compression type at
// byte 104, padded to a multiple of 8.
const _: () = assert!(V2_HEADER_LEN == 72 && (104 + 1usize).next_multiple_of(8) == V3_HEADER_LEN);

/// Smallest cluster: 512 B (cluster_bits 9), as qemu allows.
pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster: 2 MiB (cluster_bits 21), as qemu allows.
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table read into memory: 32 MiB, qemu's own limit (`QCOW_MAX_L1_SIZE`); with
/// 64 KiB clusters that still addresses far beyond any real disk.
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest virtual size accepted: 2^61 bytes (qemu's `QCOW_MAX_...` range; larger values only
/// serve to overflow arithmetic).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// Incompatible feature bit 0: the image was not closed cleanly (refcounts may be stale).
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image is marked corrupt.
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: the compression type field is not zlib.
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
pub(crate) const INCOMPAT_EXTL2: u64 = 1 << 4;
/// The incompatible bits this reader understands.
pub(crate) const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Raw deflate (qemu inflates with a 4 KiB window).
    Zlib,
    /// Zstandard frames.
    Zstd,
}

impl Compression {
    /// The name qemu-img uses.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// A validated QCOW2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// File offset of the L1 table.
    pub l1_table_offset: u64,
    /// File offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// File offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (v3).
    pub incompatible: u64,
    /// Compatible feature bits (v3).
    pub compatible: u64,
    /// Autoclear feature bits (v3).
    pub autoclear: u64,
    /// log2 of the refcount width in bits (v2: 4).
    pub refcount_order: u32,
    /// Header length in bytes (v2: 72).
    pub header_length: u32,
    /// Compression of compressed clusters.
    pub compression: Compression,
}

fn bad(offset: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Qcow2, offset, msg)
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::unsupported(msg).with_format(Format::Qcow2)
}

impl Header {
    /// The cluster size in bytes.
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128-bit with subcluster bitmaps.
    pub(crate) fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// Bytes per L2 entry.
    pub(crate) fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// Guest clusters one L2 table maps.
    pub(crate) fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Parse and validate `buf` (the first bytes of a file of `file_len` bytes; at least
    /// [`V3_HEADER_LEN`] bytes, zero-padded if the file is shorter).
    pub(crate) fn parse(buf: &[u8], file_len: u64) -> Result<Header> {
        if buf.len() < V3_HEADER_LEN {
            return Err(bad(0, "header buffer too short"));
        }
        if file_len < V2_HEADER_LEN as u64 {
            return Err(bad(file_len, "the file ends inside the QCOW2 header"));
        }
        if be32(buf, 0) != MAGIC {
            return Err(bad(0, "not a QCOW2 image (bad magic)"));
        }
        let version = be32(buf, 4);
        match version {
            2 | 3 => {}
            1 => {
                return Err(refuse(
                    "QCOW version 1 images are not supported (only QCOW2 versions 2 and 3)",
                ))
            }
            v => {
                return Err(refuse(format!(
                    "QCOW2 version {v} is not supported (only 2 and 3)"
                )))
            }
        }
        let backing_file_offset = be64(buf, 8);
        let backing_file_size = be32(buf, 16);
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(
                20,
                format!(
                    "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
                ),
            ));
        }
        let size = be64(buf, 24);
        if size > MAX_VIRTUAL_SIZE {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("virtual size {size} exceeds the limit of {MAX_VIRTUAL_SIZE} bytes"),
            )
            .with_format(Format::Qcow2)
            .with_offset(24));
        }
        let crypt_method = be32(buf, 32);
        let (mut incompatible, mut compatible, mut autoclear) = (0, 0, 0);
        let (mut refcount_order, mut header_length) = (4, V2_HEADER_LEN as u32);
        let mut compression = Compression::Zlib;
        if version == 3 {
            if file_len < 104 {
                return Err(bad(
                    file_len,
                    "the file ends inside the QCOW2 version 3 header",
                ));
            }
            incompatible = be64(buf, 72);
            compatible = be64(buf, 80);
            autoclear = be64(buf, 88);
            refcount_order = be32(buf, 96);
            header_length = be32(buf, 100);
            if header_length < 104 || header_length % 8 != 0 {
                return Err(bad(
                    100,
                    format!("header_length {header_length} is invalid"),
                ));
            }
            if u64::from(header_length) > (1u64 << cluster_bits)
                || u64::from(header_length) > file_len
            {
                return Err(bad(
                    100,
                    format!("header_length {header_length} exceeds the cluster or the file"),
                ));
            }
            if refcount_order > 6 {
                return Err(bad(
                    96,
                    format!("refcount_order {refcount_order} is above 6"),
                ));
            }
            if header_length > 104 {
                compression = match buf[104] {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    t => {
                        return Err(refuse(format!(
                            "compression type {t} is not supported (zlib and zstd are)"
                        )))
                    }
                };
            }
            let unknown = incompatible & !INCOMPAT_KNOWN;
            if unknown != 0 {
                return Err(refuse(format!(
                    "unknown incompatible feature bits {unknown:#x}: this image needs a newer reader"
                )));
            }
            if (compression == Compression::Zstd) != (incompatible & INCOMPAT_COMPRESSION != 0) {
                return Err(bad(
                    72,
                    "the compression-type feature bit and field disagree",
                ));
            }
            if incompatible & INCOMPAT_DATA_FILE != 0 {
                return Err(refuse(
                    "the image keeps its data in an external data file; imgconv does not open files an image names",
                ));
            }
            if incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(Error::new(
                    ErrorKind::InvalidImage,
                    "the image is marked corrupt (run qemu-img check -r all on a copy first)",
                )
                .with_format(Format::Qcow2));
            }
            if incompatible & INCOMPAT_EXTL2 != 0 && cluster_bits < 14 {
                return Err(bad(
                    20,
                    "extended L2 entries need clusters of at least 16 KiB",
                ));
            }
        }
        if crypt_method != 0 {
            return Err(refuse("encrypted QCOW2 images are not supported"));
        }
        if backing_file_offset != 0 || backing_file_size != 0 {
            return Err(refuse(backing_message(
                buf,
                backing_file_offset,
                backing_file_size,
            )));
        }
        let h = Header {
            version,
            cluster_bits,
            size,
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible,
            compatible,
            autoclear,
            refcount_order,
            header_length,
            compression,
        };
        h.check_tables(file_len)?;
        Ok(h)
    }

    fn check_tables(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("the L1 table ({l1_bytes} bytes) exceeds the {MAX_L1_BYTES}-byte limit"),
            )
            .with_format(Format::Qcow2)
            .with_offset(36));
        }
        let needed = self.size.div_ceil(cs).div_ceil(self.l2_entries());
        if u64::from(self.l1_size) < needed {
            return Err(bad(
                36,
                format!(
                    "l1_size {} is too small for the virtual size (needs {needed})",
                    self.l1_size
                ),
            ));
        }
        if self.l1_size > 0 {
            check_table(self.l1_table_offset, l1_bytes, cs, file_len, "L1 table", 40)?;
            if self.l1_table_offset < cs {
                return Err(bad(40, "the L1 table overlaps the header"));
            }
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        check_table(
            self.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
            "refcount table",
            48,
        )?;
        if self.refcount_table_offset < cs {
            return Err(bad(48, "the refcount table overlaps the header"));
        }
        Ok(())
    }
}

/// A table must be cluster-aligned and lie inside the file.
fn check_table(
    offset: u64,
    len: u64,
    cs: u64,
    file_len: u64,
    what: &str,
    field: u64,
) -> Result<()> {
    if offset % cs != 0 {
        return Err(bad(
            field,
            format!("the {what} offset {offset} is not cluster-aligned"),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(bad(
            field,
            format!("the {what} ({len} bytes at {offset}) lies beyond the end of the file"),
        )),
    }
}

/// Name the backing file in the refusal when its name is inside the header buffer.
fn backing_message(buf: &[u8], offset: u64, size: u32) -> String {
    let name = usize::try_from(offset)
        .ok()
        .and_then(|o| buf.get(o..o.checked_add(size as usize)?))
        .map(|n| String::from_utf8_lossy(n).into_owned());
    match name {
        Some(n) if !n.is_empty() => format!(
            "the image has a backing file ('{n}'); imgconv does not open files an image names \
             (flatten it first: qemu-img convert, or qemu-img rebase -b '')"
        ),
        _ => "the image has a backing file; imgconv does not open files an image names \
              (flatten it first)"
            .to_string(),
    }
}

/// What `imgconv info` can show of an image whose header [`Header::parse`] refused: its
/// virtual size and the raw fields of [`peek`].
pub(crate) fn describe(src: &dyn crate::source::Source) -> Result<crate::model::ImageInfo> {
    let mut head = vec![0u8; 4096];
    let n = src.len().min(head.len() as u64) as usize;
    src.read_exact_at(0, &mut head[..n])?;
    Ok(crate::model::ImageInfo {
        format: Format::Qcow2,
        virtual_size: be64(&head, 24),
        actual_size: src.allocated_size(),
        details: peek(&head),
    })
}

/// Facts `imgconv info` can show of a header that [`Header::parse`] refused: the raw fields,
/// without trusting any of them beyond bounds checks.
pub(crate) fn peek(buf: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if buf.len() < V3_HEADER_LEN || be32(buf, 0) != MAGIC {
        return out;
    }
    let version = be32(buf, 4);
    out.push(("version".into(), version.to_string()));
    let bits = be32(buf, 20);
    if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        out.push(("cluster_size".into(), (1u64 << bits).to_string()));
    }
    let (off, len) = (be64(buf, 8), be32(buf, 16) as usize);
    // qemu limits backing file names to 1023 bytes; only a name inside the probe is shown.
    if off != 0 && len > 0 && len <= 1023 {
        if let Some(name) = usize::try_from(off).ok().and_then(|o| buf.get(o..o + len)) {
            out.push((
                "backing file".into(),
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
    }
    if be32(buf, 32) != 0 {
        out.push(("encrypted".into(), "yes".into()));
    }
    if version >= 3 {
        out.push((
            "incompatible features".into(),
            format!("{:#x}", be64(buf, 72)),
        ));
    }
    out
}

/// Write a header for the given fields into the first bytes of `out` (one cluster, zeroed).
pub(crate) fn encode(h: &Header, out: &mut [u8]) {
    let put32 = |o: &mut [u8], at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |o: &mut [u8], at: usize, v: u64| o[at..at + 8].copy_from_slice(&v.to_be_bytes());
    put32(out, 0, MAGIC);
    put32(out, 4, h.version);
    put32(out, 20, h.cluster_bits);
    put64(out, 24, h.size);
    put32(out, 36, h.l1_size);
    put64(out, 40, h.l1_table_offset);
    put64(out, 48, h.refcount_table_offset);
    put32(out, 56, h.refcount_table_clusters);
    put32(out, 60, h.nb_snapshots);
    put64(out, 64, h.snapshots_offset);
    if h.version == 3 {
        put64(out, 72, h.incompatible);
        put64(out, 80, h.compatible);
        put64(out, 88, h.autoclear);
        put32(out, 96, h.refcount_order);
        put32(out, 100, h.header_length);
        out[104] = match h.compression {
            Compression::Zlib => 0,
            Compression::Zstd => 1,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v3 header: 64 KiB clusters, 1 MiB disk, L1 at 0x30000 (1 entry),
    /// refcount table at 0x10000 (1 cluster), in a file of 0x40000 bytes.
    fn v3() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(b"QFI\xfb"); //          magic
        b[4..8].copy_from_slice(&3u32.to_be_bytes()); //  version
        b[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster_bits
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes()); // size
        b[36..40].copy_from_slice(&1u32.to_be_bytes()); // l1_size
        b[40..48].copy_from_slice(&0x30000u64.to_be_bytes()); // l1_table_offset
        b[48..56].copy_from_slice(&0x10000u64.to_be_bytes()); // refcount_table_offset
        b[56..60].copy_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
        b[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order
        b[100..104].copy_from_slice(&112u32.to_be_bytes()); // header_length
        b
    }

    const LEN: u64 = 0x40000;

    fn kind(b: &[u8], len: u64) -> Option<ErrorKind> {
        Header::parse(b, len).err().map(|e| e.kind())
    }

    #[test]
    fn a_valid_v3_header_parses() -> Result<()> {
        let h = Header::parse(&v3(), LEN)?;
        assert_eq!((h.version, h.cluster_size(), h.size), (3, 65536, 1 << 20));
        assert_eq!(h.compression, Compression::Zlib);
        Ok(())
    }

    #[test]
    fn bad_magic_and_versions_are_refused() {
        let mut b = v3();
        b[0] = b'X';
        assert_eq!(kind(&b, LEN), Some(ErrorKind::InvalidImage));
        for (v, k) in [(1u32, ErrorKind::Unsupported), (4, ErrorKind::Unsupported)] {
            let mut b = v3();
            b[4..8].copy_from_slice(&v.to_be_bytes());
            assert_eq!(kind(&b, LEN), Some(k), "version {v}");
        }
    }

    #[test]
    fn cluster_bits_8_and_22_are_refused() {
        for bits in [8u32, 22] {
            let mut b = v3();
            b[20..24].copy_from_slice(&bits.to_be_bytes());
            assert_eq!(kind(&b, LEN), Some(ErrorKind::InvalidImage), "bits {bits}");
        }
    }

    #[test]
    fn an_l1_beyond_the_memory_limit_is_a_limit_error() {
        let mut b = v3();
        b[36..40].copy_from_slice(&(8u32 << 20).to_be_bytes()); // 64 MiB of L1
        assert_eq!(kind(&b, u64::MAX), Some(ErrorKind::LimitExceeded));
    }

    #[test]
    fn tables_must_be_aligned_inside_the_file_and_off_the_header() {
        let mut b = v3();
        b[40..48].copy_from_slice(&0x30001u64.to_be_bytes());
        assert_eq!(kind(&b, LEN), Some(ErrorKind::InvalidImage));
        let mut b = v3();
        b[40..48].copy_from_slice(&0x100000u64.to_be_bytes());
        assert_eq!(kind(&b, LEN), Some(ErrorKind::InvalidImage));
        let mut b = v3();
        b[48..56].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(kind(&b, LEN), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn refused_features_are_named() {
        let cases: [(usize, &[u8], &str); 4] = [
            (72, &(1u64 << 9).to_be_bytes(), "incompatible"),
            (72, &INCOMPAT_DATA_FILE.to_be_bytes(), "external data file"),
            (32, &1u32.to_be_bytes(), "encrypted"),
            (8, &0x200u64.to_be_bytes(), "backing file"),
        ];
        for (at, bytes, word) in cases {
            let mut b = v3();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let err = Header::parse(&b, LEN)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(word), "{word}: {err}");
        }
    }

    #[test]
    fn a_backing_file_is_named_in_the_refusal() {
        let mut b = v3();
        b[8..16].copy_from_slice(&200u64.to_be_bytes());
        b[16..20].copy_from_slice(&8u32.to_be_bytes());
        b[200..208].copy_from_slice(b"base.img");
        let err = Header::parse(&b, LEN)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("'base.img'"), "{err}");
    }

    #[test]
    fn a_truncated_header_is_refused() {
        assert_eq!(kind(&v3(), 50), Some(ErrorKind::InvalidImage));
        assert_eq!(kind(&v3(), 90), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn encode_then_parse_round_trips() -> Result<()> {
        let h = Header::parse(&v3(), LEN)?;
        let mut out = vec![0u8; 512];
        encode(&h, &mut out);
        assert_eq!(Header::parse(&out, LEN)?, h);
        Ok(())
    }
}
