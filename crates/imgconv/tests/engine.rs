//! Engine tests through the public API: pipeline order and content, the planner, failure and
//! cancellation cleanup.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use imgconv::{
    convert, open_source, plan, CancelToken, ConvertOptions, Destination, DigestKind, Error,
    ErrorKind, Extent, Format, ImageInfo, Mapping, MemSource, NoProgress, PipelineConfig, Progress,
    Reader, UnitIndex, VecSink,
};

fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // Data, then zeros, then data again, in runs that straddle chunk and unit edges.
    for (i, b) in v.iter_mut().enumerate() {
        let block = i / 3000;
        if block % 3 != 1 {
            *b = (i % 251) as u8 | 1;
        }
    }
    v
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imgconv-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn small_chunks_and_a_tiny_window_still_commit_in_order() -> imgconv::Result<()> {
    let data = pattern(1_000_003);
    let reader = open_source(Box::new(MemSource::new(data.clone())), Some(Format::Raw))?;
    let sink = VecSink::new();
    let mut opts = ConvertOptions::new(Format::Raw).with_digests(&[DigestKind::Md5]);
    opts.pipeline = PipelineConfig {
        chunk_size: 4096,
        window: 3,
    };
    let summary = convert(
        &*reader,
        Destination::Sink(Box::new(sink.clone())),
        &opts,
        &NoProgress,
        &CancelToken::new(),
    )?;
    assert_eq!(sink.contents(), data);
    assert_eq!(
        summary.digest(DigestKind::Md5),
        Some(
            imgconv::digest::digest_bytes(DigestKind::Md5, &data)?
                .hex
                .as_str()
        )
    );
    Ok(())
}

#[test]
fn the_plan_marks_exactly_the_units_with_non_zero_bytes() -> imgconv::Result<()> {
    let mut data = vec![0u8; 10 * 65536 + 100];
    data[65536 * 3 + 7] = 1;
    data[10 * 65536 + 99] = 2;
    let reader = open_source(Box::new(MemSource::new(data)), Some(Format::Raw))?;
    let p = plan(&*reader, 65536, 1 << 20, &CancelToken::new())?;
    assert_eq!(p.units(), 11);
    let set: Vec<u64> = (0..p.units())
        .filter(|&i| p.is_allocated(UnitIndex(i)))
        .collect();
    assert_eq!(set, vec![3, 10]);
    assert_eq!(p.allocated_units(), 2);
    Ok(())
}

/// A reader that claims to be 64 MiB of data and fails at one offset, like a disk that
/// vanishes under the conversion.
struct FailingReader {
    fail_at: u64,
}

impl Reader for FailingReader {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn virtual_size(&self) -> u64 {
        64 << 20
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> imgconv::Result<()> {
        if offset + buf.len() as u64 > self.fail_at {
            return Err(Error::new(ErrorKind::Io, "device vanished").with_offset(offset));
        }
        buf.fill(0xAB);
        Ok(())
    }
    fn map(&self, _offset: u64, max_len: u64) -> imgconv::Result<Mapping> {
        Ok(Mapping {
            extent: Extent::Data,
            len: max_len,
        })
    }
    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: Format::Raw,
            virtual_size: self.virtual_size(),
            actual_size: None,
            details: Vec::new(),
        }
    }
}

#[test]
fn a_read_error_half_way_publishes_nothing() {
    let dir = tmp("read-error");
    let reader = FailingReader { fail_at: 40 << 20 };
    let err = convert(
        &reader,
        Destination::file(dir.join("out.raw")),
        &ConvertOptions::new(Format::Raw).with_digests(&[DigestKind::Sha256]),
        &NoProgress,
        &CancelToken::new(),
    )
    .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Io));
    assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(99), 0);
}

/// Cancels once a number of bytes are done.
struct CancelAfter {
    after: u64,
    done: AtomicU64,
    token: CancelToken,
}

impl Progress for CancelAfter {
    fn advance(&self, bytes: u64) {
        if self.done.fetch_add(bytes, Ordering::SeqCst) + bytes >= self.after {
            self.token.cancel();
        }
    }
}

#[test]
fn cancelling_half_way_publishes_nothing() {
    let dir = tmp("cancel");
    let reader = FailingReader { fail_at: u64::MAX };
    let token = CancelToken::new();
    let progress = CancelAfter {
        after: 16 << 20,
        done: AtomicU64::new(0),
        token: token.clone(),
    };
    let err = convert(
        &reader,
        Destination::file(dir.join("out.raw")),
        &ConvertOptions::new(Format::Raw),
        &progress,
        &token,
    )
    .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Cancelled));
    assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(99), 0);
}

/// A 12 KiB + 100 B disk whose map says: data at [1000, 5000) and [9000, 9100), a hole
/// elsewhere. The data extents hold non-zero bytes except [3000, 5000), which is zeros.
struct HoleyReader;

const HOLEY_SIZE: u64 = 12388;
const HOLEY_DATA: [(u64, u64); 2] = [(1000, 5000), (9000, 9100)];

impl Reader for HoleyReader {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn virtual_size(&self) -> u64 {
        HOLEY_SIZE
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> imgconv::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            let pos = offset + i as u64;
            let in_data = HOLEY_DATA.iter().any(|&(s, e)| (s..e).contains(&pos));
            *b = u8::from(in_data && !(3000..5000).contains(&pos)) * 0x5A;
        }
        Ok(())
    }
    fn map(&self, offset: u64, max_len: u64) -> imgconv::Result<Mapping> {
        let end = offset + max_len;
        for &(s, e) in &HOLEY_DATA {
            if (s..e).contains(&offset) {
                return Ok(Mapping {
                    extent: Extent::Data,
                    len: e.min(end) - offset,
                });
            }
            if offset < s {
                return Ok(Mapping {
                    extent: Extent::Unallocated,
                    len: s.min(end) - offset,
                });
            }
        }
        Ok(Mapping {
            extent: Extent::Unallocated,
            len: max_len,
        })
    }
    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: Format::Raw,
            virtual_size: HOLEY_SIZE,
            actual_size: None,
            details: Vec::new(),
        }
    }
}

#[test]
fn the_plan_scans_only_data_extents_and_catches_units_they_straddle() -> imgconv::Result<()> {
    // 1 KiB units: data bytes at [1000, 3000) touch units 0..=2, the zero data at
    // [3000, 5000) sets nothing, and [9000, 9100) touches unit 8.
    let p = plan(&HoleyReader, 1024, 4096, &CancelToken::new())?;
    let set: Vec<u64> = (0..p.units())
        .filter(|&i| p.is_allocated(UnitIndex(i)))
        .collect();
    assert_eq!(set, vec![0, 1, 2, 8]);
    Ok(())
}

#[test]
fn a_disk_with_holes_converts_to_its_exact_content() -> imgconv::Result<()> {
    let sink = VecSink::new();
    let mut opts = ConvertOptions::new(Format::Raw);
    opts.pipeline = PipelineConfig {
        chunk_size: 4096,
        window: 2,
    };
    convert(
        &HoleyReader,
        Destination::Sink(Box::new(sink.clone())),
        &opts,
        &NoProgress,
        &CancelToken::new(),
    )?;
    let mut want = vec![0u8; HOLEY_SIZE as usize];
    HoleyReader.read_at(0, &mut want)?;
    assert_eq!(sink.contents(), want);
    Ok(())
}

#[test]
fn only_compressed_inputs_count_as_heavy_to_read() -> imgconv::Result<()> {
    // Light input and light output leave a core to the committing thread; an input whose
    // data must be inflated keeps every core for the workers.
    let data = pattern(3 << 20);
    let raw = open_source(Box::new(MemSource::new(data.clone())), Some(Format::Raw))?;
    assert!(raw.light_decoder());
    for (format, options, light) in [
        (Format::Vmdk, "subformat=streamOptimized", false),
        (Format::Vmdk, "subformat=monolithicSparse", true),
        (Format::Qcow2, "", false),
        (Format::Vhd, "subformat=dynamic", true),
        (Format::Vdi, "", true),
    ] {
        let sink = VecSink::new();
        let mut opts = ConvertOptions::new(format);
        opts.writer_options = imgconv::WriterOptions::parse(options)?;
        convert(
            &*raw,
            Destination::Sink(Box::new(sink.clone())),
            &opts,
            &NoProgress,
            &CancelToken::new(),
        )?;
        let image = open_source(Box::new(MemSource::new(sink.contents())), Some(format))?;
        assert_eq!(image.light_decoder(), light, "{format:?} {options}");
    }
    Ok(())
}

/// A RAW disk that counts the bytes read from it.
struct CountingDisk {
    data: Vec<u8>,
    read: AtomicU64,
}

impl Reader for CountingDisk {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> imgconv::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.data[at..at + buf.len()]);
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn map(&self, offset: u64, max_len: u64) -> imgconv::Result<Mapping> {
        Ok(Mapping {
            extent: Extent::Data,
            len: max_len.min(self.virtual_size() - offset),
        })
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: Format::Raw,
            virtual_size: self.virtual_size(),
            actual_size: None,
            details: vec![],
        }
    }
}

#[test]
fn a_plan_made_once_serves_measure_and_convert_so_the_source_is_read_twice() -> imgconv::Result<()>
{
    let disk = CountingDisk {
        data: pattern(8 << 20),
        read: AtomicU64::new(0),
    };
    let size = disk.virtual_size();
    let cancel = CancelToken::new();
    for format in [Format::Qcow2, Format::Vhd] {
        disk.read.store(0, Ordering::Relaxed);
        let opts = ConvertOptions::new(format);
        let planned = imgconv::plan_for(&disk, &opts, &cancel)?.map(std::sync::Arc::new);
        assert!(planned.is_some(), "{format} writers plan");
        let opts = opts.with_plan(planned);
        let measured = imgconv::measure(&disk, &opts, &cancel)?;
        let sink = VecSink::new();
        let summary = convert(
            &disk,
            Destination::Sink(Box::new(sink.clone())),
            &opts,
            &NoProgress,
            &cancel,
        )?;
        assert_eq!(summary.output_size, measured.required, "{format}");
        // One planning read (which may stop early in a unit that holds data), one conversion
        // read.
        let read = disk.read.load(Ordering::Relaxed);
        assert!(
            read > size && read <= 2 * size,
            "{format}: {read} bytes read"
        );
    }
    // Without a plan handed over, measure and convert each plan: three reads.
    disk.read.store(0, Ordering::Relaxed);
    let opts = ConvertOptions::new(Format::Qcow2);
    imgconv::measure(&disk, &opts, &cancel)?;
    convert(
        &disk,
        Destination::Sink(Box::new(VecSink::new())),
        &opts,
        &NoProgress,
        &cancel,
    )?;
    assert_eq!(disk.read.load(Ordering::Relaxed), 3 * size);
    Ok(())
}

/// Convert `reader` with `opts` (64 KiB chunks, a window of 16: many chunks written out of
/// order) into a stream and into a file at `path`, deterministically: the file must hold the
/// stream's bytes and have its digests of `kinds`.
fn filed_as_streamed(
    reader: &dyn Reader,
    format: Format,
    options: &str,
    kinds: &[DigestKind],
    path: &std::path::Path,
) -> imgconv::Result<()> {
    let mut opts = ConvertOptions::new(format).with_digests(kinds);
    // The same ids and dates both ways (a VHD footer holds both).
    opts.deterministic = Some(0);
    if !options.is_empty() {
        opts.writer_options.extend(options)?;
    }
    opts.pipeline = PipelineConfig {
        chunk_size: 64 << 10,
        window: 16,
    };
    let sink = VecSink::new();
    let streamed = convert(
        reader,
        Destination::Sink(Box::new(sink.clone())),
        &opts,
        &NoProgress,
        &CancelToken::new(),
    )?;
    let filed = convert(
        reader,
        Destination::file(path),
        &opts,
        &NoProgress,
        &CancelToken::new(),
    )?;
    let bytes = std::fs::read(path).map_err(|e| Error::io("output", e))?;
    assert!(
        bytes == sink.contents(),
        "{format} {options} {kinds:?}: the bytes differ"
    );
    for kind in kinds {
        assert_eq!(
            filed.digest(*kind),
            streamed.digest(*kind),
            "{format} {options}"
        );
    }
    Ok(())
}

/// Into a file, the writers that store their units packed in guest order (QCOW2, VDI,
/// monolithicSparse VMDK, dynamic VHD, VHDX) have each chunk's units written by the worker that read it, at the
/// place its turn gives it: the file and its digests must be those of the same conversion
/// into a stream, planned (digests asked) or tables last, with small chunks, a wide window,
/// runs of chunks storing nothing, units holding zeros inside chunks holding data and a short
/// last unit.
#[test]
fn packed_chunks_written_by_the_workers_give_the_streamed_bytes() -> imgconv::Result<()> {
    let len = (40 << 20) + 7 * 512;
    let mut data = vec![0u8; len];
    for k in 0..40usize {
        if k % 3 != 2 {
            let at = k * 1_000_003;
            for (j, b) in data[at..at + 70_000].iter_mut().enumerate() {
                *b = ((j * 7 + k) % 251) as u8 | 1;
            }
        }
    }
    data[len - 100..].fill(0xa5);
    let reader = open_source(Box::new(MemSource::new(data)), Some(Format::Raw))?;
    let dir = tmp("packed");
    for (format, options) in [
        (Format::Qcow2, ""),
        (Format::Vdi, ""),
        (Format::Vdi, "subformat=fixed"),
        (Format::Vmdk, "subformat=monolithicSparse"),
        (Format::Vhd, "subformat=dynamic"),
        (Format::Vhd, "subformat=dynamic,block_size=524288"),
        (Format::Vhdx, ""),
        (Format::Vhdx, "block_size=1M"),
        (Format::Vhdx, "subformat=fixed,block_size=1M"),
    ] {
        for kinds in [&[][..], &[DigestKind::Md5, DigestKind::Sha256][..]] {
            // A VMDK names its extent after its file: the stream's is "disk.vmdk".
            let sub = dir.join(format!("{format}-{options}-{}", kinds.len()));
            std::fs::create_dir_all(&sub).map_err(|e| Error::io("mkdir", e))?;
            filed_as_streamed(&*reader, format, options, kinds, &sub.join("disk.vmdk"))?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Into a file, RAW and fixed VHD chunks are written by the workers that read them, at their
/// offsets, while the committing thread hashes them in order: the file and its digests must
/// be those of the same conversion into a stream, with small chunks and a wide window so that
/// many chunks are written out of order.
#[test]
fn chunks_written_by_the_workers_give_the_streamed_bytes_and_digests() -> imgconv::Result<()> {
    let data = pattern(9_000_011);
    let reader = open_source(Box::new(MemSource::new(data)), Some(Format::Raw))?;
    let dir = tmp("placed");
    let kinds = [DigestKind::Md5, DigestKind::Sha256, DigestKind::Crc32c];
    for (format, options) in [
        (Format::Raw, ""),
        (Format::Raw, "preallocation=full"),
        (Format::Vhd, "subformat=fixed"),
    ] {
        let path = dir.join(format!("out-{format}-{options}"));
        filed_as_streamed(&*reader, format, options, &kinds, &path)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
