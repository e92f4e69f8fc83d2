//! What the package readers (OVA, GCE) share: a source over one member of a tar archive
//! (with a GNU sparse map's holes), and a reader that presents the disk inside under the
//! package's format.

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Extent, Format, ImageInfo, Location, Mapping};
use crate::reader::Reader;
use crate::source::Source;

use super::tar::Member;

/// Reads bytes of the archive a member is in.
pub(crate) trait ArchiveBytes: Send + Sync {
    /// Fill `buf` from the archive's offset `at`.
    fn read_exact_at(&self, at: u64, buf: &mut [u8]) -> Result<()>;
}

impl ArchiveBytes for Box<dyn Source> {
    fn read_exact_at(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        Source::read_exact_at(self.as_ref(), at, buf)
    }
}

/// One member of an archive as a [`Source`]: its file's bytes, holes of a sparse member
/// reading as zeros (and reported as holes).
pub(crate) struct MemberSource<A: ArchiveBytes> {
    archive: Arc<A>,
    member: Member,
    /// For a sparse member: (file offset, length, offset in the archive) of each segment.
    segments: Option<Vec<(u64, u64, u64)>>,
}

impl<A: ArchiveBytes> MemberSource<A> {
    /// The member `member` of `archive`.
    pub(crate) fn new(archive: Arc<A>, member: Member) -> Self {
        let segments = member.sparse.as_ref().map(|segs| {
            let mut at = member.data_at;
            segs.iter()
                .map(|&(off, len)| {
                    let s = (off, len, at);
                    at += len;
                    s
                })
                .collect()
        });
        MemberSource {
            archive,
            member,
            segments,
        }
    }

    /// The segment holding `pos`, or the index of the next one.
    fn find(&self, segs: &[(u64, u64, u64)], pos: u64) -> std::result::Result<usize, usize> {
        match segs.binary_search_by(|&(off, _, _)| off.cmp(&pos)) {
            Ok(i) => Ok(i),
            Err(0) => Err(0),
            Err(i) if pos < segs[i - 1].0 + segs[i - 1].1 => Ok(i - 1),
            Err(i) => Err(i),
        }
    }
}

impl<A: ArchiveBytes> Source for MemberSource<A> {
    fn len(&self) -> u64 {
        self.member.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.member.size)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    "internal error: read past the end of an archive member",
                )
            })?;
        let Some(segs) = &self.segments else {
            return self
                .archive
                .read_exact_at(self.member.data_at + offset, buf);
        };
        let mut pos = offset;
        while pos < end {
            let done = (pos - offset) as usize;
            let n = match self.find(segs, pos) {
                Ok(i) => {
                    let (off, len, at) = segs[i];
                    let n = (off + len).min(end) - pos;
                    self.archive
                        .read_exact_at(at + (pos - off), &mut buf[done..done + n as usize])?;
                    n
                }
                Err(i) => {
                    let next = segs.get(i).map_or(end, |s| s.0).min(end);
                    buf[done..done + (next - pos) as usize].fill(0);
                    next - pos
                }
            };
            pos += n;
        }
        Ok(())
    }

    fn extent(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let Some(segs) = &self.segments else {
            return Ok(Mapping {
                extent: Extent::Data,
                len: max_len,
            });
        };
        let end = offset.saturating_add(max_len).min(self.member.size);
        let (extent, stop) = match self.find(segs, offset) {
            Ok(i) => (Extent::Data, segs[i].0 + segs[i].1),
            Err(i) => (Extent::Unallocated, segs.get(i).map_or(end, |s| s.0)),
        };
        Ok(Mapping {
            extent,
            len: stop.min(end).saturating_sub(offset).max(1),
        })
    }
}

/// The disk inside a package, presented under the package's format: everything but the
/// format and `info` is the inner reader's.
pub(crate) struct Packaged {
    /// The package format.
    pub format: Format,
    /// The disk's reader.
    pub inner: Box<dyn Reader>,
    /// Facts about the package, shown before the disk's own by `info`.
    pub details: Vec<(String, String)>,
    /// Bytes the package file occupies.
    pub actual_size: Option<u64>,
}

impl Reader for Packaged {
    fn format(&self) -> Format {
        self.format
    }

    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        self.inner.map(offset, max_len)
    }

    fn locate(&self, offset: u64, max_len: u64) -> Result<Location> {
        // Offsets inside the package are not the disk file's: report none.
        let m = self.inner.map(offset, max_len)?;
        Ok(Location::unstored(m, false))
    }

    fn check(&self, report: &mut crate::check::CheckReport) -> Result<()> {
        self.inner.check(report)
    }

    fn info(&self) -> ImageInfo {
        let inner = self.inner.info();
        let mut details = self.details.clone();
        details.push(("disk format".into(), inner.format.to_string()));
        details.extend(inner.details);
        ImageInfo {
            format: self.format,
            virtual_size: inner.virtual_size,
            actual_size: self.actual_size,
            details,
        }
    }

    fn light_decoder(&self) -> bool {
        self.inner.light_decoder()
    }

    fn read_ahead(&self, offset: u64, len: u64) -> bool {
        self.inner.read_ahead(offset, len)
    }
}
