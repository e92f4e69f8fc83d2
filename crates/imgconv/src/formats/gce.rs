//! Google Compute Engine image packages: `disk.raw` in a gzip-compressed tar in GNU format,
//! as Compute Engine's image import takes them.
//!
//! Writer: the tar header, the disk and the tar's end, gzip-compressed in parallel: every
//! chunk of the disk is its own gzip member (libdeflate), which `gzip -d`, GNU tar, Python
//! and Go (the importer) read as one stream; an all-zero chunk's member is compressed once and
//! reused. The disk is rounded up to a whole GiB by default (Compute Engine disks are whole
//! GB; `-o round_to_gib=off` keeps the exact size); `-o compression_level=1..12` (default 6).
//!
//! Reader: straight from the `.tar.gz`, never extracted. A gzip stream cannot be read at an
//! offset, so it is decoded forward as reads ask; the last [`BACK`] bytes decoded are kept
//! so that the pipeline's reads, which arrive nearly in order, are served from them; a read
//! further back restarts the decoding (slow but correct). The member `disk.raw` is found
//! by its tar header (plain, long-name, PAX or GNU sparse, `tar -S`); its holes read as
//! zeros without decoding anything.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::buffer::Bytes;
use crate::error::{Error, ErrorKind, Result};
use crate::formats::options::WriterOptions;
use crate::formats::package::{ArchiveBytes, MemberSource, Packaged};
use crate::formats::raw::{RawReader, RAW_UNIT};
use crate::formats::tar::{self, Flavor};
use crate::model::{Chunk, Format, Plan};
use crate::reader::Reader;
use crate::sink::Output;
use crate::source::Source;
use crate::writer::{Encoder, Writer, WriterSummary};

/// The member Compute Engine reads.
pub(crate) const DISK_NAME: &str = "disk.raw";
const GIB: u64 = 1 << 30;
/// Decoded bytes kept behind the furthest read.
const BACK: u64 = 64 << 20;
/// The largest `disk.raw` read (a sparse member's header can claim any size).
const MAX_DISK: u64 = 64 << 40;
/// The step the decoder advances by.
const STEP: usize = 1 << 20;

fn bad(at: u64, msg: impl Into<String>) -> Error {
    Error::invalid_image(Format::Gce, at, msg)
}

/// Options of the GCE package writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GceOptions {
    /// Round the disk up to a whole GiB.
    pub round: bool,
    /// libdeflate's level, 1 to 12.
    pub level: i32,
}

impl GceOptions {
    /// The option names GCE takes.
    pub(crate) const KNOWN: &'static [&'static str] = &["round_to_gib", "compression_level"];

    /// Take GCE's options.
    pub(crate) fn parse(mut opts: WriterOptions) -> Result<GceOptions> {
        let round = match opts.take("round_to_gib").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(o) => {
                return Err(Error::invalid_argument(format!(
                    "round_to_gib '{o}' is not on or off"
                )))
            }
        };
        let level = opts.take_level(6)?;
        opts.finish(Format::Gce, Self::KNOWN)?;
        Ok(GceOptions { round, level })
    }
}

/// One gzip member holding `data`.
fn gzip_member(level: i32, data: &[u8]) -> Result<Vec<u8>> {
    let lvl = libdeflater::CompressionLvl::new(level)
        .map_err(|_| Error::invalid_argument(format!("compression level {level}")))?;
    let mut c = libdeflater::Compressor::new(lvl);
    let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
    let n = c
        .gzip_compress(data, &mut out)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("gzip: {e}")))?;
    out.truncate(n);
    Ok(out)
}

/// Compresses chunks into gzip members; all-zero chunks of a length seen before reuse its
/// member.
#[derive(Debug)]
pub(crate) struct GzEncoder {
    level: i32,
    zeros: Mutex<Vec<(usize, Bytes)>>,
}

impl GzEncoder {
    fn zero_member(&self, len: usize) -> Result<Bytes> {
        let mut cache = self
            .zeros
            .lock()
            .map_err(|_| Error::new(ErrorKind::Internal, "internal error: poisoned cache"))?;
        if let Some((_, b)) = cache.iter().find(|(l, _)| *l == len) {
            return Ok(b.clone());
        }
        let b = Bytes::from_vec(gzip_member(self.level, &vec![0u8; len])?);
        if cache.len() < 8 {
            cache.push((len, b.clone()));
        }
        Ok(b)
    }
}

impl Encoder for GzEncoder {
    type Encoded = Bytes;

    fn encode(&self, chunk: Chunk) -> Result<Bytes> {
        match &chunk.data {
            Some(d) if chunk.nonzero.any() => Ok(Bytes::from_vec(gzip_member(self.level, d)?)),
            _ => self.zero_member(chunk.len),
        }
    }
}

/// The GCE package writer.
#[derive(Debug)]
pub(crate) struct GceWriter {
    opts: GceOptions,
    size: u64,
    disk_size: u64,
    mtime: u64,
    note: Option<String>,
    written: u64,
}

impl GceWriter {
    /// A writer for a disk of `size` bytes.
    pub(crate) fn new(size: u64, opts: GceOptions) -> Result<GceWriter> {
        let disk_size = if opts.round {
            size.max(1).checked_next_multiple_of(GIB).ok_or_else(|| {
                Error::new(ErrorKind::LimitExceeded, "the disk is too large")
                    .with_format(Format::Gce)
            })?
        } else {
            size
        };
        let note = (disk_size != size).then(|| {
            format!(
                "disk.raw rounded up from {size} to {disk_size} bytes (a whole GiB, as Compute \
                 Engine disks are; -o round_to_gib=off keeps the size); the added tail reads as \
                 zeros"
            )
        });
        Ok(GceWriter {
            opts,
            size,
            disk_size,
            mtime: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            note,
            written: 0,
        })
    }
}

impl Writer for GceWriter {
    type Encoder = GzEncoder;

    fn format(&self) -> Format {
        Format::Gce
    }

    fn unit_size(&self) -> u64 {
        RAW_UNIT
    }

    fn needs_plan(&self) -> bool {
        false
    }

    fn output_len(&self) -> Option<u64> {
        None
    }

    fn measure_needs_plan(&self) -> bool {
        false
    }

    fn measure(&self, _plan: Option<&Plan>) -> Result<crate::writer::Measure> {
        // An upper bound: stored (uncompressed) gzip of the whole tar.
        let tar = tar::BLOCK + self.disk_size.next_multiple_of(tar::BLOCK) + 2 * tar::BLOCK;
        let tar = tar.next_multiple_of(tar::RECORD);
        let bound = tar + tar / 16_000 * 5 + 64 * (tar / (1 << 20) + 2);
        Ok(crate::writer::Measure {
            required: bound,
            fully_allocated: bound,
            exact: false,
        })
    }

    fn light_encoder(&self) -> bool {
        false
    }

    fn disk_size(&self) -> Option<u64> {
        Some(self.disk_size)
    }

    fn notes(&self) -> Vec<String> {
        self.note.iter().cloned().collect()
    }

    fn embeds_ids(&self) -> bool {
        true
    }

    fn set_identity(&mut self, identity: &crate::identity::Identity) {
        self.mtime = identity.epoch();
    }

    fn encoder(&self) -> GzEncoder {
        GzEncoder {
            level: self.opts.level,
            zeros: Mutex::new(Vec::new()),
        }
    }

    fn begin(&mut self, _plan: Option<&Plan>, out: &mut Output) -> Result<()> {
        let h = tar::header(DISK_NAME, self.disk_size, self.mtime, Flavor::Gnu);
        out.write(&Bytes::from_vec(gzip_member(self.opts.level, &h)?))
    }

    fn commit(&mut self, member: Bytes, out: &mut Output) -> Result<()> {
        self.written += 1;
        out.write(&member)
    }

    fn finish(self, out: &mut Output) -> Result<WriterSummary> {
        // The padding up to the rounded size, in 1 MiB members of zeros (one compressed once).
        let mut left = self.disk_size - self.size;
        if left > 0 {
            let enc = self.encoder();
            while left > 0 {
                let n = left.min(1 << 20) as usize;
                out.write(&enc.zero_member(n)?)?;
                left -= n as u64;
            }
        }
        let data_end = tar::BLOCK + self.disk_size;
        let end =
            (data_end + tar::padding(data_end) + 2 * tar::BLOCK).next_multiple_of(tar::RECORD);
        let tail = vec![0u8; (end - data_end) as usize];
        out.write(&Bytes::from_vec(gzip_member(self.opts.level, &tail)?))?;
        Ok(WriterSummary {
            format: Format::Gce,
            allocated_units: self.size.div_ceil(RAW_UNIT),
            unit_size: RAW_UNIT,
        })
    }
}

/// Reads the gzip file `src` as a byte stream.
struct SourceReader {
    src: Arc<Box<dyn Source>>,
    at: u64,
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.src.len().saturating_sub(self.at);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src
            .read_exact_at(self.at, &mut buf[..n])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The decoder's state: where it is, and the last bytes it produced.
struct Decoding {
    decoder: flate2::read::MultiGzDecoder<std::io::BufReader<SourceReader>>,
    /// Bytes decoded so far.
    pos: u64,
    /// The last pieces decoded: (offset, bytes), at most [`BACK`] bytes in all.
    recent: VecDeque<(u64, Vec<u8>)>,
    kept: u64,
    /// Why decoding failed, once it has: every later read gives the same answer (a decoder
    /// past an error reads as an early end, which would call a corrupt archive truncated to
    /// whichever thread asked next).
    failed: Option<String>,
}

/// The decompressed tar of a `.tar.gz`, read forward.
pub(crate) struct GzArchive {
    src: Arc<Box<dyn Source>>,
    state: Mutex<Decoding>,
}

impl GzArchive {
    fn new(src: Box<dyn Source>) -> GzArchive {
        let src = Arc::new(src);
        GzArchive {
            state: Mutex::new(Self::start(&src)),
            src,
        }
    }

    fn start(src: &Arc<Box<dyn Source>>) -> Decoding {
        let reader = SourceReader {
            src: Arc::clone(src),
            at: 0,
        };
        Decoding {
            decoder: flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(
                1 << 20,
                reader,
            )),
            pos: 0,
            recent: VecDeque::new(),
            kept: 0,
            failed: None,
        }
    }

    /// Copy what `recent` holds of `[at, at + buf.len())` into `buf`.
    fn copy_out(d: &Decoding, at: u64, buf: &mut [u8]) {
        let end = at + buf.len() as u64;
        for (off, piece) in &d.recent {
            let (lo, hi) = ((*off).max(at), (off + piece.len() as u64).min(end));
            if lo < hi {
                buf[(lo - at) as usize..(hi - at) as usize]
                    .copy_from_slice(&piece[(lo - off) as usize..(hi - off) as usize]);
            }
        }
    }
}

impl ArchiveBytes for GzArchive {
    fn read_exact_at(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        let mut d = self
            .state
            .lock()
            .map_err(|_| Error::new(ErrorKind::Internal, "internal error: poisoned decoder"))?;
        if let Some(why) = &d.failed {
            return Err(bad(0, why.clone()));
        }
        let end = at + buf.len() as u64;
        let oldest = d.recent.front().map_or(d.pos, |(o, _)| *o);
        if at < oldest {
            *d = Self::start(&self.src);
        }
        let result = Self::decode_to(&mut d, at, end, buf);
        if let Err(e) = &result {
            d.failed = Some(e.message().to_string());
        }
        result
    }
}

impl GzArchive {
    /// Decode forward until `end`, then copy `[at, end)` into `buf`.
    fn decode_to(d: &mut Decoding, at: u64, end: u64, buf: &mut [u8]) -> Result<()> {
        while d.pos < end {
            let mut piece = vec![0u8; STEP];
            let mut got = 0;
            while got < STEP {
                match d.decoder.read(&mut piece[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(bad(
                            0,
                            format!(
                                "the gzip stream ends early, near tar offset {} (truncated)",
                                d.pos
                            ),
                        ))
                    }
                    Err(e) => {
                        return Err(bad(
                            0,
                            format!("the gzip stream is corrupt near tar offset {}: {e}", d.pos),
                        ))
                    }
                }
            }
            if got == 0 {
                return Err(bad(
                    0,
                    format!(
                        "the archive ends at {} bytes, inside the disk (truncated)",
                        d.pos
                    ),
                ));
            }
            piece.truncate(got);
            let pos = d.pos;
            d.pos += got as u64;
            d.kept += got as u64;
            d.recent.push_back((pos, piece));
            while d.kept > BACK && d.recent.len() > 1 {
                let (o, p) = d
                    .recent
                    .front()
                    .map(|(o, p)| (*o, p.len() as u64))
                    .unwrap_or((0, 0));
                // Keep what this read still needs.
                if o + p > at {
                    break;
                }
                d.recent.pop_front();
                d.kept -= p;
            }
        }
        Self::copy_out(d, at, buf);
        Ok(())
    }
}

/// Open a GCE package: find `disk.raw` and read it as RAW.
pub(crate) fn open(src: Box<dyn Source>) -> Result<Box<dyn Reader>> {
    let mut magic = [0u8; 2];
    src.read_exact_at(0, &mut magic)
        .map_err(|_| bad(0, "the file is too short for a .tar.gz"))?;
    if magic != [0x1f, 0x8b] {
        return Err(bad(0, "not gzip-compressed (no gzip magic)"));
    }
    let actual_size = src.allocated_size();
    let compressed = src.len();
    let archive = Arc::new(GzArchive::new(src));
    let mut read = |at: u64, buf: &mut [u8]| archive.read_exact_at(at, buf);
    let found = tar::find_member(Format::Gce, None, &mut read, &|m| {
        m.regular && m.name.trim_start_matches("./") == DISK_NAME
    })?;
    let member = found.ok_or_else(|| bad(0, "the archive holds no disk.raw"))?;
    if member.size > MAX_DISK {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "disk.raw claims {} bytes, more than the {MAX_DISK}-byte limit (64 TiB, Compute \
                 Engine's largest disk)",
                member.size
            ),
        )
        .with_format(Format::Gce));
    }
    let sparse = member.sparse.is_some();
    let source = MemberSource::new(Arc::clone(&archive), member);
    Ok(Box::new(Packaged {
        format: Format::Gce,
        inner: Box::new(RawReader::new(Box::new(source))),
        details: vec![
            ("member".into(), DISK_NAME.into()),
            ("sparse member".into(), sparse.to_string()),
            ("compressed size".into(), compressed.to_string()),
        ],
        actual_size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemSource;
    use std::io::Write;

    /// A `.tar.gz` holding a `disk.raw` of `len` pseudo-random bytes, compressed in one
    /// gzip member.
    fn tar_gz(len: usize) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..8].copy_from_slice(b"disk.raw");
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{len:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = b'0';
        h[257..265].copy_from_slice(b"ustar  \0");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut tar = h.to_vec();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        tar.extend((0..len).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 7) as u8
        }));
        tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&tar).expect("compress");
        gz.finish().expect("compress")
    }

    #[test]
    fn a_corrupt_stream_is_called_corrupt_by_every_read_after_the_first() -> Result<()> {
        let len = 8 << 20;
        let mut bytes = tar_gz(len);
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0xa5;
        }
        let reader = open(Box::new(MemSource::new(bytes)))?;
        let mut buf = vec![0u8; 4096];
        let first = reader.read_at(len as u64 - 4096, &mut buf).err();
        let first = first.map(|e| e.message().to_string()).unwrap_or_default();
        assert!(first.contains("corrupt"), "{first}");
        // Another read, elsewhere and further back: the same answer, not an early end.
        for at in [len as u64 - 8192, 0, 1 << 20] {
            let again = reader.read_at(at, &mut buf).err();
            let again = again.map(|e| e.message().to_string()).unwrap_or_default();
            assert_eq!(again, first, "read at {at}");
        }
        Ok(())
    }
}
