//! Cost grows with the data, never with the holes: a 1 TiB sparse RAW holding 64 MiB of data
//! converts into every output format reading at most the data plus 1% through its source, and
//! leaves in the page cache no more of the input than its data (the holes are never read, nor
//! read ahead), nor more than 256 MiB of input and output together.
//!
//! What the page cache holds of a file is asked of the kernel with `cachestat(2)` (Linux 6.5
//! and later); the test fails where the kernel does not answer it.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use imgconv::{
    convert, open_image, open_source, CancelToken, ConvertOptions, Destination, FileSource, Format,
    Mapping, NoProgress, Sink, Source, WriterOptions,
};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 1 << 40;
const PIECES: u64 = 64;
const DATA: u64 = PIECES * MIB;

/// A file source that counts the bytes read through it.
struct Counting {
    inner: FileSource,
    read: Arc<AtomicU64>,
}

impl Source for Counting {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> imgconv::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_exact_at(offset, buf)
    }
    fn extent(&self, offset: u64, max_len: u64) -> imgconv::Result<Mapping> {
        self.inner.extent(offset, max_len)
    }
    fn read_ahead(&self, offset: u64, len: u64) -> bool {
        self.inner.read_ahead(offset, len)
    }
    fn allocated_size(&self) -> Option<u64> {
        self.inner.allocated_size()
    }
    fn path(&self) -> Option<&Path> {
        self.inner.path()
    }
}

/// An output that keeps nothing but its length (for the GCE package: see below).
struct Counted(u64);

impl Sink for Counted {
    fn write(&mut self, data: &[u8]) -> imgconv::Result<()> {
        self.0 += data.len() as u64;
        Ok(())
    }
    fn write_zeros(&mut self, len: u64) -> imgconv::Result<()> {
        self.0 += len;
        Ok(())
    }
    fn position(&self) -> u64 {
        self.0
    }
    fn finish(self: Box<Self>) -> imgconv::Result<()> {
        Ok(())
    }
}

/// Bytes of `path` in the page cache, as `cachestat(2)` counts them.
fn cached(path: &Path) -> u64 {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = File::open(path).expect("open for cachestat");
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: cachestat(fd, range, stat, flags) reads one `Range` and writes one `Stat`, both
    // laid out as the kernel's `struct cachestat_range` and `struct cachestat` (all u64), and
    // alive for the call; the descriptor is open. No safe binding offers this call, and it is
    // the only way to ask what a 1 TiB file has in the page cache without walking its pages.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    assert_eq!(
        r,
        0,
        "cachestat(2) failed ({}): this test needs Linux 6.5 or later",
        std::io::Error::last_os_error()
    );
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    stat.nr_cache * page
}

/// Write back and drop `path`'s pages from the page cache.
fn evict(path: &Path) {
    let file = File::open(path).expect("open to evict");
    file.sync_all().expect("sync");
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
}

/// The 1 TiB input: 64 pieces of 1 MiB at scattered 4 KiB-aligned offsets (every other one
/// random, the rest text), holes everywhere else.
fn input(dir: &Path) -> (PathBuf, Vec<(u64, Vec<u8>)>) {
    let path = dir.join("sparse-1t.raw");
    let f = File::create(&path).expect("create");
    f.set_len(SIZE).expect("size");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let text: Vec<u8> = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        .iter()
        .copied()
        .cycle()
        .take(MIB as usize)
        .collect();
    let step = SIZE / PIECES;
    let mut pieces = Vec::new();
    for i in 0..PIECES {
        let at = i * step + (next() % (step - MIB)) / 4096 * 4096;
        let piece: Vec<u8> = if i % 2 == 0 {
            (0..MIB).map(|_| next() as u8).collect()
        } else {
            text.clone()
        };
        f.write_all_at(&piece, at).expect("write");
        pieces.push((at, piece));
    }
    drop(f);
    (path, pieces)
}

#[test]
fn a_1_tib_sparse_image_converts_reading_only_its_data_and_caching_no_hole() {
    let dir = std::env::temp_dir().join(format!("imgconv-holes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (src, pieces) = input(&dir);
    let cases: &[(Format, &str, bool)] = &[
        (Format::Raw, "", false),
        (Format::Qcow2, "", false),
        (Format::Qcow2, "", true),
        (Format::Vmdk, "subformat=streamOptimized", false),
        (Format::Vmdk, "subformat=monolithicSparse", false),
        (Format::Vhd, "subformat=dynamic", false),
        (Format::Vhd, "subformat=fixed", false),
        (Format::Vhdx, "subformat=dynamic", false),
        (Format::Vhdx, "subformat=fixed", false),
        (Format::Vdi, "", false),
        (Format::Vdi, "subformat=fixed", false),
        (Format::Ova, "", false),
        (Format::Gce, "", false),
    ];
    let mut failures = Vec::new();
    for &(format, options, compress) in cases {
        let what = format!("{format} {options}{}", if compress { " -c" } else { "" });
        evict(&src);
        let read = Arc::new(AtomicU64::new(0));
        let source = Counting {
            inner: FileSource::open(&src).expect("open"),
            read: Arc::clone(&read),
        };
        let reader = open_source(Box::new(source), Some(Format::Raw)).expect("open RAW");
        let mut opts = ConvertOptions::new(format);
        opts.writer_options = WriterOptions::parse(options).expect("options");
        opts.compress = compress;
        let out = dir.join(format!("out.{}", format.name()));
        // The GCE package stores its disk.raw whole (a plain tar member, as Compute Engine
        // imports it): 1 TiB of zeros is about 1 GiB of gzip members, which a file output
        // would hold in the page cache as written data. It goes to a sink that counts bytes.
        let dest = if format == Format::Gce {
            Destination::Sink(Box::new(Counted(0)))
        } else {
            Destination::File {
                path: out.clone(),
                overwrite: true,
                sync: false,
            }
        };
        let summary = convert(&*reader, dest, &opts, &NoProgress, &CancelToken::new())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let read = read.load(Ordering::Relaxed);
        let in_cache = cached(&src);
        let out_cache = if format == Format::Gce {
            0
        } else {
            cached(&out)
        };
        eprintln!(
            "{what}: read {read} bytes through the source ({:.3}x the data), input {} MiB \
             and output {} MiB in the page cache, output {} bytes",
            read as f64 / DATA as f64,
            in_cache / MIB,
            out_cache / MIB,
            summary.output_size
        );
        if read > DATA + DATA / 100 {
            failures.push(format!("{what}: read {read} bytes for {DATA} of data"));
        }
        if in_cache > DATA + DATA / 100 {
            failures.push(format!("{what}: {in_cache} bytes of the input cached"));
        }
        if in_cache + out_cache >= 256 * MIB {
            failures.push(format!(
                "{what}: the page cache grew by {} MiB",
                (in_cache + out_cache) / MIB
            ));
        }
        // And the output holds the input, compared whole (every reader looks through to its
        // file's holes); and the output converted back to RAW reads its data and its tables
        // only, whatever its layout stores as holes (a fixed VDI's or VHDX's whole blocks).
        if format != Format::Gce {
            let written = open_image(&out, Some(format)).expect("open the output");
            let again = open_image(&src, Some(Format::Raw)).expect("open the input");
            if format != Format::Ova {
                // What the output file holds (its data, the zeros its layout stores, its
                // tables), never its holes.
                let (back, stored) = read_back_to_raw(&out, format, &what);
                eprintln!("{what} back to RAW: read {back} bytes of {stored} stored");
                if back > stored + stored / 100 {
                    failures.push(format!(
                        "{what} back to RAW: read {back} bytes, {stored} stored"
                    ));
                }
            }
            let whole = true;
            if whole {
                let same = imgconv::compare(&*again, &*written, &CancelToken::new())
                    .unwrap_or_else(|e| panic!("{what}: compare: {e}"));
                assert!(
                    matches!(same, imgconv::Comparison::Identical { .. }),
                    "{what}: output differs: {same:?}"
                );
            } else {
                for (at, piece) in &pieces {
                    let mut got = vec![0u8; piece.len()];
                    written.read_at(*at, &mut got).expect("read the output");
                    assert!(got == *piece, "{what}: the piece at {at} differs");
                }
            }
        } else {
            assert!(summary.output_size > 0, "{what}: empty output");
        }
        let _ = std::fs::remove_file(&out);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Convert the `format` image at `path` to RAW (into a sink that keeps nothing): the bytes
/// read through its file, and the bytes its file stores (allocated, holes left out).
fn read_back_to_raw(path: &Path, format: Format, what: &str) -> (u64, u64) {
    let read = Arc::new(AtomicU64::new(0));
    let source = Counting {
        inner: FileSource::open(path).expect("open"),
        read: Arc::clone(&read),
    };
    let reader = open_source(Box::new(source), Some(format)).expect("open");
    convert(
        &*reader,
        Destination::Sink(Box::new(Counted(0))),
        &ConvertOptions::new(Format::Raw),
        &NoProgress,
        &CancelToken::new(),
    )
    .unwrap_or_else(|e| panic!("{what} to RAW: {e}"));
    let stored = FileSource::open(path)
        .ok()
        .and_then(|f| f.allocated_size())
        .unwrap_or(0);
    (read.load(Ordering::Relaxed), stored)
}

/// Images qemu-img makes whose files are mostly holes where the format says "stored": a
/// static VDI, a fixed VHDX, a QCOW2 with `preallocation=metadata` and a fixed VHD, of a 1 TiB
/// disk holding 64 MiB. Each converts reading what its file stores (its data and tables),
/// never its holes, and reads back as the input. Fails when qemu-img is missing.
#[test]
fn images_qemu_img_made_with_holes_convert_reading_what_their_files_store() {
    let dir = std::env::temp_dir().join(format!("imgconv-holes-qemu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (src, _) = input(&dir);
    for (format, qemu_format, opts) in [
        (Format::Vdi, "vdi", "static=on"),
        (Format::Vhdx, "vhdx", "subformat=fixed"),
        (Format::Qcow2, "qcow2", "preallocation=metadata"),
        (Format::Vhd, "vpc", "subformat=fixed,force_size=on"),
    ] {
        let img = dir.join(format!("made.{qemu_format}"));
        let made = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", qemu_format, "-o", opts])
            .arg(&src)
            .arg(&img)
            .status()
            .expect("qemu-img is required (the README's test command installs it)");
        assert!(
            made.success(),
            "qemu-img convert -O {qemu_format} -o {opts}"
        );
        let (read, stored) = read_back_to_raw(&img, format, &format!("{qemu_format} {opts}"));
        eprintln!("{qemu_format} {opts}: read {read} bytes, {stored} stored");
        assert!(
            read <= stored + stored / 100,
            "{qemu_format} {opts}: read {read} bytes, the file stores {stored}"
        );
        let again = open_image(&src, Some(Format::Raw)).expect("open the input");
        let made = open_image(&img, Some(format)).expect("open the image");
        let same = imgconv::compare(&*again, &*made, &CancelToken::new())
            .unwrap_or_else(|e| panic!("{qemu_format}: compare: {e}"));
        assert!(
            matches!(same, imgconv::Comparison::Identical { .. }),
            "{qemu_format} {opts}: differs: {same:?}"
        );
        let _ = std::fs::remove_file(&img);
    }
    // A monolithicFlat VMDK: the descriptor names a RAW extent file, which the reader opens
    // itself; what it read of that file is what the page cache holds of it afterwards.
    let img = dir.join("made.vmdk");
    let made = std::process::Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
        ])
        .arg(&src)
        .arg(&img)
        .status()
        .expect("qemu-img is required (the README's test command installs it)");
    assert!(
        made.success(),
        "qemu-img convert -O vmdk -o subformat=monolithicFlat"
    );
    let flat = dir.join("made-flat.vmdk");
    evict(&flat);
    let reader = open_image(&img, Some(Format::Vmdk)).expect("open");
    convert(
        &*reader,
        Destination::Sink(Box::new(Counted(0))),
        &ConvertOptions::new(Format::Raw),
        &NoProgress,
        &CancelToken::new(),
    )
    .expect("monolithicFlat to RAW");
    let in_cache = cached(&flat);
    eprintln!("vmdk monolithicFlat: {in_cache} bytes of the extent cached");
    assert!(
        in_cache <= DATA + DATA / 100,
        "monolithicFlat: {in_cache} bytes of the extent file read"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk of 64 GiB holding one MiB at the start of every 8 GiB: each read of a piece waits
/// until read-ahead has been asked for the piece two further on (or the last), and fails after
/// 30 s without it.
struct FarApart {
    advised: std::sync::Mutex<u64>,
    ready: std::sync::Condvar,
}

const FAR_SIZE: u64 = 64 << 30;
const FAR_STEP: u64 = 8 << 30;

impl FarApart {
    fn piece(offset: u64) -> u64 {
        offset / FAR_STEP
    }
}

impl Source for FarApart {
    fn len(&self) -> u64 {
        FAR_SIZE
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> imgconv::Result<()> {
        let k = Self::piece(offset);
        let need = (k + 2).min(FAR_SIZE / FAR_STEP - 1);
        let advised = self.advised.lock().expect("lock");
        let (advised, _) = self
            .ready
            .wait_timeout_while(advised, std::time::Duration::from_secs(30), |a| *a < need)
            .expect("lock");
        if *advised < need {
            return Err(imgconv::Error::new(
                imgconv::ErrorKind::Io,
                format!("piece {k} read with read-ahead asked only up to piece {advised}"),
            ));
        }
        buf.fill(k as u8 + 1);
        Ok(())
    }
    fn extent(&self, offset: u64, max_len: u64) -> imgconv::Result<Mapping> {
        let start = Self::piece(offset) * FAR_STEP;
        let (extent, end) = if offset < start + MIB {
            (imgconv::Extent::Data, start + MIB)
        } else {
            (imgconv::Extent::Unallocated, start + FAR_STEP)
        };
        Ok(Mapping {
            extent,
            len: (end - offset).min(max_len),
        })
    }
    fn read_ahead(&self, offset: u64, len: u64) -> bool {
        if len > 0 {
            let mut advised = self.advised.lock().expect("lock");
            *advised = (*advised).max(Self::piece(offset + len - 1));
            self.ready.notify_all();
        }
        true
    }
}

#[test]
fn read_ahead_stays_a_window_ahead_however_far_apart_the_data_lies() {
    // RAW is written by the pipeline alone; QCOW2 is planned first, then written: both keep
    // several pieces of data asked for ahead of the one being read, although each piece lies
    // 2048 chunks past the last.
    for format in [Format::Raw, Format::Qcow2] {
        let source = FarApart {
            advised: std::sync::Mutex::new(0),
            ready: std::sync::Condvar::new(),
        };
        let reader = open_source(Box::new(source), Some(Format::Raw)).expect("open RAW");
        let opts = ConvertOptions::new(format);
        let summary = convert(
            &*reader,
            Destination::Sink(Box::new(Counted(0))),
            &opts,
            &NoProgress,
            &CancelToken::new(),
        )
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(summary.output_size > 0, "{format}: empty output");
    }
}
