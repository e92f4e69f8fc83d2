//! Positional byte sources that readers parse images from: a file (with `SEEK_DATA`/`SEEK_HOLE`)
//! or memory. Every read is positional (`pread`), so one source serves many threads at once
//! with no cursor and no lock on the read path.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Extent, Mapping};

/// Fill `buf` from `offset` of `src` as [`Source::read_exact_at`] does, without reading the
/// parts that are holes of the file (they read as zeros): a table the format sizes by the
/// disk (a VMDK's grain tables, a QCOW2 L2 table) that its writer left as a hole costs no read.
pub(crate) fn read_holed(src: &dyn Source, offset: u64, buf: &mut [u8]) -> Result<()> {
    let end = offset.saturating_add(buf.len() as u64);
    if end > src.len() {
        // Past the end: the plain read reports the truncation.
        return src.read_exact_at(offset, buf);
    }
    let mut pos = offset;
    while pos < end {
        let m = src.extent(pos, end - pos)?;
        let len = m.len.clamp(1, end - pos);
        let at = (pos - offset) as usize;
        let part = &mut buf[at..at + len as usize];
        if m.extent == Extent::Data {
            src.read_exact_at(pos, part)?;
        } else {
            part.fill(0);
        }
        pos += len;
    }
    Ok(())
}

/// A positional, thread-safe byte source.
pub trait Source: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> u64;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` from `offset`. Reading past the end is an error (the image is truncated).
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// What the file system knows of `[offset, offset + max_len)`: [`Extent::Data`] or
    /// [`Extent::Unallocated`] (a hole), and for how long. The default says "data" for the
    /// whole range, which is always correct, only slower to convert.
    fn extent(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let _ = offset;
        Ok(Mapping {
            extent: Extent::Data,
            len: max_len,
        })
    }

    /// Start bringing `[offset, offset + len)` into memory, and answer whether small reads
    /// anywhere in it are then cheap (a planning probe reads a few KiB here and there). The
    /// default knows nothing of the storage and answers `false`.
    fn read_ahead(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }

    /// Bytes the source occupies on its storage, if known.
    fn allocated_size(&self) -> Option<u64> {
        None
    }

    /// The path it was opened from, if any (for error messages).
    fn path(&self) -> Option<&Path> {
        None
    }
}

/// A file or block device read with `pread`.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    len: u64,
    /// Whether `SEEK_DATA`/`SEEK_HOLE` are trusted for this file (regular files only).
    seek_data: bool,
    /// The last data run and the last hole the file system reported, whole (`[start, end)`).
    runs: Mutex<KnownRuns>,
}

/// What `SEEK_DATA`/`SEEK_HOLE` last answered. `SEEK_HOLE` walks the file system's map from the
/// offset to the next hole, however far that is, holding the inode's lock (tmpfs walks page by
/// page). Asked chunk by chunk through a long data run, it would walk the rest of the run each
/// time, so the answers are kept and chunks inside a known run need no system call.
#[derive(Debug, Default, Clone, Copy)]
struct KnownRuns {
    data: Option<(u64, u64)>,
    hole: Option<(u64, u64)>,
}

impl KnownRuns {
    fn lookup(&self, offset: u64, end: u64) -> Option<Mapping> {
        let hit = |run: Option<(u64, u64)>, extent| match run {
            Some((s, e)) if s <= offset && offset < e => Some(Mapping {
                extent,
                len: e.min(end) - offset,
            }),
            _ => None,
        };
        hit(self.data, Extent::Data).or_else(|| hit(self.hole, Extent::Unallocated))
    }
}

impl FileSource {
    /// Open `path` for reading. A missing path is [`ErrorKind::NotFound`]; a directory or
    /// anything else that is neither a regular file nor a block device is
    /// [`ErrorKind::NotAFile`].
    pub fn open(path: impl AsRef<Path>) -> Result<FileSource> {
        use std::os::unix::fs::FileTypeExt;
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| {
            let kind = e.kind();
            let err = Error::io("cannot open the input", e).with_path(path);
            if kind == io::ErrorKind::NotFound {
                Error::new(ErrorKind::NotFound, "the input does not exist").with_path(path)
            } else {
                err
            }
        })?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            let what = if ft.is_dir() {
                "a directory"
            } else {
                "neither a regular file nor a block device"
            };
            return Err(Error::new(
                ErrorKind::NotAFile,
                format!("the input is {what}, not a disk image"),
            )
            .with_path(path));
        }
        let file =
            File::open(path).map_err(|e| Error::io("cannot open the input", e).with_path(path))?;
        let len = if ft.is_block_device() {
            use std::io::Seek;
            (&file)
                .seek(io::SeekFrom::End(0))
                .map_err(|e| Error::io("cannot size the block device", e).with_path(path))?
        } else {
            meta.len()
        };
        let source = FileSource {
            file,
            path: path.to_path_buf(),
            len,
            seek_data: ft.is_file(),
            runs: Mutex::default(),
        };
        source.no_read_ahead_into_holes(&meta);
        Ok(source)
    }

    /// Turn the kernel's own read-ahead off for a file with holes. It reads ahead of every
    /// sequential read by up to the device's `read_ahead_kb` (often several MiB), whatever
    /// lies there: past the end of each data run it fills the page cache with zero pages of
    /// the hole that follows, which costs system time and pushes out what others had cached.
    /// Reads then bring in what they ask for, and read-ahead is what [`Source::read_ahead`]
    /// is asked for, which callers give for data ranges only. A file without holes keeps the
    /// kernel's read-ahead: there is no hole to read into.
    fn no_read_ahead_into_holes(&self, meta: &std::fs::Metadata) {
        use std::os::unix::fs::MetadataExt;
        if self.seek_data && meta.blocks().saturating_mul(512) < self.len {
            // Advice only: if the kernel refuses it, reads still work.
            let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::Random);
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Fail if a regular file is now shorter than when it was opened.
    fn check_length(&self, offset: u64) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io("cannot stat the input", e).with_path(&self.path))?
            .len();
        if self.seek_data && now < self.len {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the input shrank from {} to {now} bytes while being read",
                    self.len
                ),
            )
            .with_path(&self.path)
            .with_offset(offset));
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        "the input ended early (was it truncated while being read?)",
                    )
                    .with_path(&self.path)
                    .with_offset(pos));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io("cannot read the input", e)
                        .with_path(&self.path)
                        .with_offset(pos))
                }
            }
        }
        Ok(())
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        use rustix::fs::{seek, SeekFrom};
        use rustix::io::Errno;
        let whole = Mapping {
            extent: Extent::Data,
            len: max_len,
        };
        if !self.seek_data || max_len == 0 {
            return Ok(whole);
        }
        let end = offset.saturating_add(max_len);
        let known = *self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = known.lookup(offset, end) {
            return Ok(m);
        }
        let remember = |data: bool, run: (u64, u64)| {
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            if data {
                runs.data = Some(run);
            } else {
                runs.hole = Some(run);
            }
        };
        // lseek(SEEK_DATA/SEEK_HOLE) returns its answer and does not disturb positional reads,
        // so concurrent calls from several threads are safe without a lock.
        match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(data) if data > offset => {
                remember(false, (offset, data));
                Ok(Mapping {
                    extent: Extent::Unallocated,
                    len: (data.min(end)) - offset,
                })
            }
            Ok(_) => match seek(&self.file, SeekFrom::Hole(offset)) {
                Ok(hole) if hole > offset => {
                    remember(true, (offset, hole));
                    Ok(Mapping {
                        extent: Extent::Data,
                        len: hole.min(end) - offset,
                    })
                }
                // A hole at `offset` right after SEEK_DATA said data: the file changed under
                // us; reading is the safe answer.
                _ => Ok(whole),
            },
            // ENXIO: no data at or after offset: a hole up to the end of the file, unless the
            // file shrank under us, which must not pass for zeros.
            Err(Errno::NXIO) => {
                // Not remembered: every answer here checks the length again.
                self.check_length(offset)?;
                Ok(Mapping {
                    extent: Extent::Unallocated,
                    len: max_len,
                })
            }
            // The file system cannot say (EINVAL, EOPNOTSUPP): read and detect zeros.
            Err(_) => Ok(whole),
        }
    }

    /// `posix_fadvise(WILLNEED)`: the kernel reads the range in the background (nothing to
    /// do for a file already in memory, such as one on tmpfs), so the probe's scattered
    /// reads find it cached instead of waiting for the disk one by one. Callers advise data
    /// ranges only: over a hole the kernel would fill the page cache with zero pages.
    fn read_ahead(&self, offset: u64, len: u64) -> bool {
        // (A zero length would mean "to the end of the file" to the kernel: skipped.)
        if let Some(len) = std::num::NonZeroU64::new(len.min(self.len.saturating_sub(offset))) {
            // Advice only: if the kernel refuses it, the reads still work, only slower.
            let _ =
                rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::WillNeed);
        }
        true
    }

    fn allocated_size(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// An in-memory source (tests, fuzzing, and callers holding an image in memory).
#[derive(Debug, Clone)]
pub struct MemSource {
    data: Arc<[u8]>,
}

impl MemSource {
    /// A source over `data`.
    pub fn new(data: impl Into<Arc<[u8]>>) -> Self {
        MemSource { data: data.into() }
    }
}

impl Source for MemSource {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).ok();
        let range = start.and_then(|s| Some(s..s.checked_add(buf.len())?));
        match range.and_then(|r| self.data.get(r)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => {
                Err(Error::new(ErrorKind::Io, "read past the end of the input").with_offset(offset))
            }
        }
    }

    fn read_ahead(&self, _offset: u64, _len: u64) -> bool {
        true
    }
}

/// An in-memory source with holes: the ranges listed are data, the rest reads as zeros and
/// is mapped unallocated (as a sparse file is), for tests of what follows the map.
#[cfg(test)]
pub(crate) struct HoledMem {
    mem: MemSource,
    data: Vec<std::ops::Range<u64>>,
}

#[cfg(test)]
impl HoledMem {
    /// `len` bytes holding `pieces` (offset, bytes), sorted and apart; the rest is holes.
    pub(crate) fn new(len: usize, pieces: &[(u64, Vec<u8>)]) -> HoledMem {
        let mut bytes = vec![0u8; len];
        let mut data = Vec::new();
        for (at, b) in pieces {
            bytes[*at as usize..*at as usize + b.len()].copy_from_slice(b);
            data.push(*at..*at + b.len() as u64);
        }
        HoledMem {
            mem: MemSource::new(bytes),
            data,
        }
    }
}

#[cfg(test)]
impl Source for HoledMem {
    fn len(&self) -> u64 {
        self.mem.len()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read_exact_at(offset, buf)
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let end = offset + max_len;
        for r in &self.data {
            if r.contains(&offset) {
                return Ok(Mapping {
                    extent: Extent::Data,
                    len: r.end.min(end) - offset,
                });
            }
            if r.start > offset {
                return Ok(Mapping {
                    extent: Extent::Unallocated,
                    len: r.start.min(end) - offset,
                });
            }
        }
        Ok(Mapping {
            extent: Extent::Unallocated,
            len: max_len,
        })
    }

    fn read_ahead(&self, _offset: u64, _len: u64) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_source_refuses_reads_past_the_end() {
        let src = MemSource::new(vec![1u8; 10]);
        let mut buf = [0u8; 4];
        assert!(src.read_exact_at(6, &mut buf).is_ok());
        assert!(src.read_exact_at(7, &mut buf).is_err());
        assert!(src.read_exact_at(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn opening_a_directory_is_not_a_file() {
        let err = FileSource::open(std::env::temp_dir())
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::NotAFile));
    }

    #[test]
    fn remembered_runs_answer_as_the_file_system_does() -> Result<()> {
        const MIB: u64 = 1 << 20;
        let path = std::env::temp_dir().join(format!("imgconv-runs-{}.raw", std::process::id()));
        let file = File::create(&path).map_err(|e| Error::io("create", e))?;
        file.set_len(16 * MIB).map_err(|e| Error::io("size", e))?;
        for (at, len) in [(MIB, 4 * MIB), (9 * MIB, MIB), (12 * MIB + 4096, 8192)] {
            file.write_all_at(&vec![7u8; len as usize], at)
                .map_err(|e| Error::io("write", e))?;
        }
        drop(file);
        // Each answer of one long-lived source (asked forward, backward, then in a scattered
        // order, with several chunk sizes) must equal a fresh source's, which asks the file
        // system itself.
        let cached = FileSource::open(&path)?;
        let step = 256 * 1024;
        let mut offsets: Vec<u64> = (0..16 * MIB).step_by(step).collect();
        let back: Vec<u64> = offsets.iter().rev().copied().collect();
        let scattered: Vec<u64> = (0..offsets.len())
            .map(|i| offsets[(i * 37) % offsets.len()])
            .collect();
        offsets.extend(back);
        offsets.extend(scattered);
        for (i, &off) in offsets.iter().enumerate() {
            let max_len = [step as u64, 3 * MIB, 16 * MIB - off][i % 3].min(16 * MIB - off);
            let fresh = FileSource::open(&path)?.extent(off, max_len)?;
            let got = cached.extent(off, max_len)?;
            assert_eq!(
                (got.extent, got.len),
                (fresh.extent, fresh.len),
                "at {off}+{max_len}"
            );
        }
        // Bytes written are never reported as a hole.
        for (at, len) in [(MIB, 4 * MIB), (9 * MIB, MIB), (12 * MIB + 4096, 8192)] {
            for off in (at..at + len).step_by(4096) {
                assert_eq!(cached.extent(off, 4096)?.extent, Extent::Data, "at {off}");
            }
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn opening_a_missing_path_is_not_found() {
        let err = FileSource::open("/nonexistent/imgconv/x.raw")
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::NotFound));
    }
}
