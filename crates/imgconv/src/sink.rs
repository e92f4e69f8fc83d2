//! Where the output stream goes: an atomically published file, any `Write` (stdout), or memory.
//!
//! A [`Sink`] receives the output in file order. Dropping a sink without [`Sink::finish`]
//! abandons it: a file sink then leaves nothing behind. [`Output`] couples a sink with the
//! inline [`Digester`] so that every byte written is also hashed.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::buffer::Bytes;
use crate::digest::{Digest, DigestKind, Digester};
use crate::error::{Error, ErrorKind, Result};

/// A destination for the output byte stream, written strictly in order.
pub trait Sink: Send {
    /// Append bytes.
    fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Append `len` zero bytes; a sink that can leaves a hole instead of writing them.
    fn write_zeros(&mut self, len: u64) -> Result<()>;

    /// Bytes appended so far.
    fn position(&self) -> u64;

    /// Complete the output (flush, sync, publish). Without this call nothing is published.
    fn finish(self: Box<Self>) -> Result<()>;

    /// Whether [`Sink::write_at`] and [`Sink::read_at`] work.
    fn is_seekable(&self) -> bool {
        false
    }

    /// Overwrite bytes already appended (for formats whose header depends on what follows).
    /// Only seekable sinks can; the others refuse.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (offset, data);
        Err(not_seekable())
    }

    /// Read back bytes already appended (for digests of a file written out of order).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _ = (offset, buf);
        Err(not_seekable())
    }

    /// Drop what was appended past `len` (at most the current position): the output ends
    /// there. Only seekable sinks can; the others refuse.
    fn truncate(&mut self, len: u64) -> Result<()> {
        let _ = len;
        Err(not_seekable())
    }

    /// A handle that writes at given offsets from other threads ([`Placed`]), for sinks that
    /// are files; `None` for the others.
    fn placed(&self) -> Option<Placed> {
        None
    }

    /// Append `len` bytes that were already written at the current position through
    /// [`Sink::placed`]: the position moves on as if they had been written here.
    fn advance(&mut self, len: u64) -> Result<()> {
        let _ = len;
        Err(Error::new(
            ErrorKind::Internal,
            "internal error: this output takes no placed writes",
        ))
    }
}

/// Writes into a file output from the pipeline's workers, at offsets a writer's layout fixes
/// before the committing thread gets there (a RAW disk's data is at its own offset). The
/// committing thread then only [advances](Sink::advance) over them, in order: digests, the
/// position and the background flushes stay its own.
#[derive(Debug, Clone)]
pub struct Placed {
    file: Arc<File>,
    dest: Arc<PathBuf>,
    base: u64,
    /// One writer at a time: the file system serialises buffered writes to a file anyway
    /// (ext4 holds the inode's lock for each), and a second writer would spin on that lock
    /// in the kernel; waiting here sleeps, and the waiting worker's next read goes on.
    turn: Arc<Mutex<()>>,
}

impl Placed {
    /// Write `data` at `offset` of the output (counted from the output's base).
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        write_in_pieces(&self.file, data, self.base + offset)
            .map_err(|e| Error::io("cannot write the output", e).with_path(&*self.dest))
    }
}

fn not_seekable() -> Error {
    Error::unsupported("this output format needs a seekable file as its output, not a stream")
}

/// How a file output reserves its space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Zero runs become holes (sparse output).
    #[default]
    Off,
    /// Reserve the whole size with `fallocate` (reads as zeros, no data written).
    Falloc,
    /// Write every zero byte.
    Full,
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Preallocation::Off),
            "falloc" => Ok(Preallocation::Falloc),
            "full" => Ok(Preallocation::Full),
            other => Err(Error::invalid_argument(format!(
                "unknown preallocation '{other}' (known: off, falloc, full)"
            ))),
        }
    }
}

/// Options of a [`FileSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSinkOptions {
    /// Replace an existing file at the destination.
    pub overwrite: bool,
    /// How zero runs are stored.
    pub preallocation: Preallocation,
    /// The final size, if known in advance (used by `falloc` preallocation).
    pub expected_len: Option<u64>,
    /// `fsync` the file and its folder before publishing it (default: on).
    pub sync: bool,
}

impl Default for FileSinkOptions {
    fn default() -> Self {
        FileSinkOptions {
            overwrite: false,
            preallocation: Preallocation::Off,
            expected_len: None,
            sync: true,
        }
    }
}

/// How the not-yet-published file exists.
#[derive(Debug)]
enum Staging {
    /// An unnamed `O_TMPFILE` inode: it vanishes by itself if the process dies.
    Unnamed,
    /// A hidden temporary name in the destination folder, removed on drop.
    Named(PathBuf),
}

/// A file written under no name (or a temporary one) and published at its destination only
/// by [`Sink::finish`], after it is complete and synced.
#[derive(Debug)]
pub struct FileSink {
    file: Option<File>,
    dest: PathBuf,
    staging: Staging,
    pos: u64,
    opts: FileSinkOptions,
    flusher: Option<Flusher>,
    unflushed: u64,
}

/// Bytes written between two background `fdatasync` calls. Starting writeback while the
/// conversion runs overlaps the disk's work with ours, so the final sync has little left.
const FLUSH_EVERY: u64 = 128 << 20;

/// A thread that syncs the output's data when asked, while writing goes on.
#[derive(Debug)]
struct Flusher {
    tx: std::sync::mpsc::SyncSender<()>,
    handle: std::thread::JoinHandle<()>,
}

impl Flusher {
    fn start(file: &File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let handle = std::thread::Builder::new()
            .name("imgconv-flush".into())
            .spawn(move || {
                for () in rx {
                    // Errors surface again, and are reported, at the final sync.
                    let _ = file.sync_data();
                }
            })
            .ok()?;
        Some(Flusher { tx, handle })
    }

    /// Ask for a sync unless one is already pending.
    fn poke(&self) {
        let _ = self.tx.try_send(());
    }

    fn stop(self) {
        drop(self.tx);
        let _ = self.handle.join();
    }
}

/// Zeros written for `preallocation=full`.
static ZERO_BLOCK: [u8; 256 * 1024] = [0u8; 256 * 1024];

impl FileSink {
    /// Prepare an output at `dest`. Fails early with [`ErrorKind::AlreadyExists`] if `dest`
    /// exists and `overwrite` is off.
    pub fn create(dest: impl AsRef<Path>, opts: FileSinkOptions) -> Result<FileSink> {
        let dest = dest.as_ref().to_path_buf();
        if !opts.overwrite && std::fs::symlink_metadata(&dest).is_ok() {
            return Err(already_exists(&dest));
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (file, staging) = match open_unnamed(&dir) {
            Ok(file) => (file, Staging::Unnamed),
            Err(_) => {
                let tmp = temp_name(&dest);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(|e| Error::io("cannot create the output", e).with_path(&dest))?;
                (file, Staging::Named(tmp))
            }
        };
        if let (Preallocation::Falloc, Some(len)) = (opts.preallocation, opts.expected_len) {
            if len > 0 {
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len).map_err(
                    |e| Error::io("cannot preallocate the output", e.into()).with_path(&dest),
                )?;
            }
        }
        let flusher = if opts.sync {
            Flusher::start(&file)
        } else {
            None
        };
        Ok(FileSink {
            file: Some(file),
            dest,
            staging,
            pos: 0,
            opts,
            flusher,
            unflushed: 0,
        })
    }

    fn file(&self) -> Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Io, "the output is already closed"))
    }

    fn publish(&mut self) -> Result<()> {
        let dest = self.dest.clone();
        let file = self.file()?;
        match &self.staging {
            Staging::Unnamed => {
                let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
                if self.opts.overwrite {
                    // Link under a temporary name, then rename over the destination atomically.
                    let tmp = temp_name(&dest);
                    link_fd(&fd_path, &tmp).map_err(|e| publish_error(&dest, e))?;
                    std::fs::rename(&tmp, &dest).map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        publish_error(&dest, e)
                    })?;
                } else {
                    link_fd(&fd_path, &dest).map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            already_exists(&dest)
                        } else {
                            publish_error(&dest, e)
                        }
                    })?;
                }
            }
            Staging::Named(tmp) => {
                let tmp = tmp.clone();
                if self.opts.overwrite {
                    std::fs::rename(&tmp, &dest).map_err(|e| publish_error(&dest, e))?;
                } else {
                    // A hard link fails if the destination appeared meanwhile: never clobber.
                    std::fs::hard_link(&tmp, &dest).map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            already_exists(&dest)
                        } else {
                            publish_error(&dest, e)
                        }
                    })?;
                    let _ = std::fs::remove_file(&tmp);
                }
                self.staging = Staging::Unnamed;
            }
        }
        if self.opts.sync {
            if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(())
    }
}

fn already_exists(dest: &Path) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        "the output already exists and overwriting it was not asked for",
    )
    .with_path(dest)
}

fn publish_error(dest: &Path, e: io::Error) -> Error {
    Error::io("cannot publish the output", e).with_path(dest)
}

fn open_unnamed(dir: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    Ok(File::from(fd))
}

fn link_fd(fd_path: &str, dest: &Path) -> io::Result<()> {
    use rustix::fs::{linkat, AtFlags, CWD};
    linkat(CWD, fd_path, CWD, dest, AtFlags::SYMLINK_FOLLOW).map_err(io::Error::from)
}

/// The most bytes handed to the kernel in one write. The page cache sizes its folios by the
/// write: a 1 MiB or larger write asks the kernel for 1-2 MiB blocks of memory, and where free
/// memory has been handed back to a hypervisor (a balloon's free-page reporting works on such
/// blocks), each of those writes first waits for the host to supply the memory again. Measured
/// on a VM with a virtio balloon: the same 2 GiB conversion took 0.45-0.6 s with 128-512 KiB
/// writes and 1.6-1.8 s with 1 MiB writes (`dd` shows the same with `bs=1M` against
/// `bs=256K`). 256 KiB pieces keep large folios (64 pages) at a negligible cost in system calls.
const WRITE_PIECE: usize = 256 << 10;

/// `data` written at `offset` in pieces of at most [`WRITE_PIECE`].
fn write_in_pieces(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

fn temp_name(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.imgconv-{}-{n}.tmp", std::process::id()))
}

impl Sink for FileSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let pos = self.pos;
        write_in_pieces(self.file()?, data, pos)
            .map_err(|e| Error::io("cannot write the output", e).with_path(&self.dest))?;
        self.advance(data.len() as u64)
    }

    fn write_zeros(&mut self, len: u64) -> Result<()> {
        if self.opts.preallocation == Preallocation::Full {
            let mut left = len;
            while left > 0 {
                let step = left.min(ZERO_BLOCK.len() as u64) as usize;
                self.write(&ZERO_BLOCK[..step])?;
                left -= step as u64;
            }
        } else {
            // A new file reads as zeros wherever nothing was written: leave a hole.
            self.pos += len;
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn is_seekable(&self) -> bool {
        true
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > self.pos)
        {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal error: write past the output's end",
            ));
        }
        write_in_pieces(self.file()?, data, offset)
            .map_err(|e| Error::io("cannot write the output", e).with_path(&self.dest))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.pos {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal error: read past the output's end",
            ));
        }
        // Holes past the last write read as zeros; a short read means exactly that.
        let file = self.file()?;
        let mut done = 0;
        while done < buf.len() {
            let n = file
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(|e| Error::io("cannot read the output back", e).with_path(&self.dest))?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    fn placed(&self) -> Option<Placed> {
        let file = self.file.as_ref()?.try_clone().ok()?;
        Some(Placed {
            file: Arc::new(file),
            dest: Arc::new(self.dest.clone()),
            base: 0,
            turn: Arc::new(Mutex::new(())),
        })
    }

    fn advance(&mut self, len: u64) -> Result<()> {
        self.pos += len;
        self.unflushed += len;
        if self.unflushed >= FLUSH_EVERY {
            self.unflushed = 0;
            if let Some(f) = &self.flusher {
                f.poke();
            }
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        if len > self.pos {
            return Err(Error::new(
                ErrorKind::Internal,
                "internal error: truncating the output past its end",
            ));
        }
        self.file()?
            .set_len(len)
            .map_err(|e| Error::io("cannot set the output's size", e).with_path(&self.dest))?;
        self.pos = len;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
        let file = self.file()?;
        file.set_len(self.pos)
            .map_err(|e| Error::io("cannot set the output's size", e).with_path(&self.dest))?;
        if self.opts.sync {
            file.sync_all()
                .map_err(|e| Error::io("cannot sync the output", e).with_path(&self.dest))?;
        }
        self.publish()?;
        self.file = None;
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
        if let Staging::Named(tmp) = &self.staging {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A sink over any writer (stdout, a pipe, a socket): zeros are written out.
pub struct WriteSink<W: Write + Send> {
    inner: W,
    pos: u64,
}

impl<W: Write + Send> WriteSink<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        WriteSink { inner, pos: 0 }
    }
}

impl<W: Write + Send> Sink for WriteSink<W> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.inner
            .write_all(data)
            .map_err(|e| Error::io("cannot write the output", e))?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> Result<()> {
        let mut left = len;
        while left > 0 {
            let step = left.min(ZERO_BLOCK.len() as u64) as usize;
            self.write(&ZERO_BLOCK[..step])?;
            left -= step as u64;
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.inner
            .flush()
            .map_err(|e| Error::io("cannot flush the output", e))
    }
}

/// A sink that keeps nothing: it counts what is written (a rehearsal's digests come from the
/// [`Output`] around it).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink {
    pos: u64,
}

impl Sink for NullSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.pos += data.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> Result<()> {
        self.pos += len;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// A sink into memory; the bytes are in the shared vector once finished.
#[derive(Debug, Clone, Default)]
pub struct VecSink {
    buf: Arc<Mutex<Vec<u8>>>,
    pos: u64,
    seekable: bool,
}

impl VecSink {
    /// A new, empty sink, written in order only (as a pipe would be).
    pub fn new() -> Self {
        VecSink::default()
    }

    /// A new, empty sink that also takes [`Sink::write_at`] and [`Sink::read_at`] (as a file
    /// would), for writers that patch what they wrote.
    pub fn seekable() -> Self {
        VecSink {
            seekable: true,
            ..VecSink::default()
        }
    }

    /// The bytes written so far (a copy).
    pub fn contents(&self) -> Vec<u8> {
        self.buf.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Sink for VecSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let mut b = self
            .buf
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "memory sink poisoned"))?;
        b.extend_from_slice(data);
        self.pos += data.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> Result<()> {
        let len = usize::try_from(len)
            .map_err(|_| Error::new(ErrorKind::LimitExceeded, "too large for memory"))?;
        let mut b = self
            .buf
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "memory sink poisoned"))?;
        let new_len = b.len() + len;
        b.resize(new_len, 0);
        self.pos += len as u64;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn is_seekable(&self) -> bool {
        self.seekable
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut b = self
            .buf
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "memory sink poisoned"))?;
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(data.len())?));
        match range.and_then(|r| b.get_mut(r)).filter(|_| self.seekable) {
            Some(dst) => {
                dst.copy_from_slice(data);
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::Internal,
                "internal error: write outside what the memory sink holds",
            )),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let b = self
            .buf
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "memory sink poisoned"))?;
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(buf.len())?));
        match range.and_then(|r| b.get(r)).filter(|_| self.seekable) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::Internal,
                "internal error: read outside what the memory sink holds",
            )),
        }
    }

    fn truncate(&mut self, len: u64) -> Result<()> {
        let mut b = self
            .buf
            .lock()
            .map_err(|_| Error::new(ErrorKind::Io, "memory sink poisoned"))?;
        match usize::try_from(len) {
            Ok(n) if self.seekable && n <= b.len() => {
                b.truncate(n);
                self.pos = len;
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::Internal,
                "internal error: truncating outside what the memory sink holds",
            )),
        }
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The output stream: a sink plus the digests computed inline as it is written.
///
/// A format that must revisit what it wrote (compressed QCOW2's header) opens it with
/// [`Output::new_seekable`]: then nothing is hashed inline, and [`Output::finish`] reads the
/// finished file back once to compute the digests.
pub struct Output {
    sink: Box<dyn Sink>,
    digester: Digester,
    read_back: bool,
    /// Where the file a writer writes starts in the output ([`Output::set_base`]).
    base: u64,
}

/// Bytes read per step when digests are computed from a read-back.
const READ_BACK_STEP: usize = 4 << 20;

impl Output {
    /// An output into `sink`, hashing with each algorithm in `digests`.
    pub fn new(sink: Box<dyn Sink>, digests: &[DigestKind]) -> Result<Output> {
        Ok(Output {
            sink,
            digester: Digester::start(digests)?,
            read_back: false,
            base: 0,
        })
    }

    /// An output whose bytes may be overwritten with [`Output::write_at`]; digests come from
    /// reading the finished file back.
    pub fn new_seekable(sink: Box<dyn Sink>, digests: &[DigestKind]) -> Result<Output> {
        let mut out = Output::new(sink, digests)?;
        out.read_back = true;
        Ok(out)
    }

    /// Append shared bytes (handed to the digest threads without copying).
    pub fn write(&mut self, data: &Bytes) -> Result<()> {
        if !self.read_back {
            self.digester.data(data)?;
        }
        self.sink.write(data)
    }

    /// Append a zero run (a hole where the sink can).
    pub fn write_zeros(&mut self, len: u64) -> Result<()> {
        if !self.read_back {
            self.digester.zeros(len)?;
        }
        self.sink.write_zeros(len)
    }

    /// Overwrite bytes already appended; only for outputs made with [`Output::new_seekable`].
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.seekable_only("write_at")?;
        self.sink.write_at(self.base + offset, data)
    }

    /// Read back bytes already written (counted from the base); only for outputs made with
    /// [`Output::new_seekable`].
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.seekable_only("read_at")?;
        self.sink.read_at(self.base + offset, buf)
    }

    /// End the output at `len` bytes (counted from the base), dropping what was written past
    /// it; only for outputs made with [`Output::new_seekable`].
    pub(crate) fn truncate(&mut self, len: u64) -> Result<()> {
        self.seekable_only("truncate")?;
        self.sink.truncate(self.base + len)
    }

    /// An internal error unless the output was made with [`Output::new_seekable`] (an output
    /// hashed inline must be written in order).
    fn seekable_only(&self, what: &str) -> Result<()> {
        if self.read_back {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Internal,
                format!("internal error: {what} on an output hashed inline"),
            ))
        }
    }

    /// A handle for writing from the pipeline's workers at offsets known before commit (a
    /// file output only); the committing thread then calls [`Output::written`] for them.
    pub(crate) fn placed(&self) -> Option<Placed> {
        let mut p = self.sink.placed()?;
        p.base = self.base;
        Some(p)
    }

    /// Append `data`, which a worker already wrote at the current position through
    /// [`Output::placed`]: hashed and counted as [`Output::write`] would, not written again.
    pub(crate) fn written(&mut self, data: &Bytes) -> Result<()> {
        if !self.read_back {
            self.digester.data(data)?;
        }
        self.sink.advance(data.len() as u64)
    }

    /// Append `len` bytes of zeros that need no writing (a worker left them as a hole of the
    /// new file, after bytes it wrote through [`Output::placed`]): hashed and counted as
    /// [`Output::write_zeros`] would.
    pub(crate) fn written_zeros(&mut self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !self.read_back {
            self.digester.zeros(len)?;
        }
        self.sink.advance(len)
    }

    /// Whether bytes already written can be rewritten and read back ([`Output::new_seekable`]).
    pub(crate) fn is_seekable(&self) -> bool {
        self.read_back
    }

    /// Bytes appended so far, counted from the base.
    pub fn position(&self) -> u64 {
        self.sink.position() - self.base
    }

    /// Count positions (and [`Output::write_at`] offsets) from the output's byte `base`, at
    /// or before the current end: a package writer embeds a disk file whose own offsets start
    /// there (an OVA's VMDK inside its tar).
    pub(crate) fn set_base(&mut self, base: u64) {
        self.base = base.min(self.sink.position());
    }

    /// The SHA-256 of `len` bytes written from `offset` (counted from the base), read back
    /// from the sink; only for outputs made with [`Output::new_seekable`].
    pub(crate) fn sha256_of(&self, offset: u64, len: u64) -> Result<[u8; 32]> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let mut pos = 0u64;
        let mut buf = vec![0u8; READ_BACK_STEP.min(len as usize)];
        while pos < len {
            let n = (len - pos).min(READ_BACK_STEP as u64) as usize;
            self.sink.read_at(self.base + offset + pos, &mut buf[..n])?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(h.finalize().into())
    }

    /// Finish the digests, then complete and publish the sink. Returns the output's length
    /// and digests. If anything fails, nothing is published.
    pub fn finish(self) -> Result<(u64, Vec<Digest>)> {
        let len = self.sink.position();
        if self.read_back && self.digester.is_active() {
            let mut pos = 0u64;
            while pos < len {
                let n = (len - pos).min(READ_BACK_STEP as u64) as usize;
                let mut buf = vec![0u8; n];
                self.sink.read_at(pos, &mut buf)?;
                self.digester.data(&Bytes::from_vec(buf))?;
                pos += n as u64;
            }
        }
        let digests = self.digester.finish()?;
        self.sink.finish()?;
        Ok((len, digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imgconv-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn an_abandoned_file_sink_leaves_nothing() -> Result<()> {
        let dir = scratch("abandon");
        let mut sink = FileSink::create(dir.join("out.raw"), FileSinkOptions::default())?;
        sink.write(b"partial")?;
        drop(sink);
        assert!(entries(&dir).is_empty(), "left: {:?}", entries(&dir));
        Ok(())
    }

    #[test]
    fn a_finished_file_sink_appears_with_holes_and_exact_size() -> Result<()> {
        let dir = scratch("finish");
        let dest = dir.join("out.raw");
        let mut sink = Box::new(FileSink::create(&dest, FileSinkOptions::default())?);
        sink.write(b"ab")?;
        sink.write_zeros(10_000)?;
        sink.write(b"z")?;
        sink.finish()?;
        let data = std::fs::read(&dest).map_err(|e| Error::io("read", e))?;
        assert_eq!(data.len(), 10_003);
        assert_eq!(&data[..2], b"ab");
        assert_eq!(data[10_002], b'z');
        assert!(data[2..10_002].iter().all(|&b| b == 0));
        assert_eq!(entries(&dir), vec!["out.raw".to_string()]);
        Ok(())
    }

    #[test]
    fn an_existing_destination_is_refused_unless_overwrite() -> Result<()> {
        let dir = scratch("exists");
        let dest = dir.join("out.raw");
        std::fs::write(&dest, b"old").map_err(|e| Error::io("w", e))?;
        let err = FileSink::create(&dest, FileSinkOptions::default()).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::AlreadyExists));
        let opts = FileSinkOptions {
            overwrite: true,
            ..FileSinkOptions::default()
        };
        let mut sink = Box::new(FileSink::create(&dest, opts)?);
        sink.write(b"new!")?;
        sink.finish()?;
        assert_eq!(std::fs::read(&dest).ok().as_deref(), Some(&b"new!"[..]));
        assert_eq!(entries(&dir), vec!["out.raw".to_string()]);
        Ok(())
    }

    #[test]
    fn a_destination_that_appears_meanwhile_is_not_clobbered() -> Result<()> {
        let dir = scratch("race");
        let dest = dir.join("out.raw");
        let mut sink = Box::new(FileSink::create(&dest, FileSinkOptions::default())?);
        sink.write(b"mine")?;
        std::fs::write(&dest, b"theirs").map_err(|e| Error::io("w", e))?;
        let err = sink.finish().err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::AlreadyExists));
        assert_eq!(std::fs::read(&dest).ok().as_deref(), Some(&b"theirs"[..]));
        assert_eq!(entries(&dir), vec!["out.raw".to_string()]);
        Ok(())
    }

    #[test]
    fn full_preallocation_writes_the_zeros() -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = scratch("full");
        let dest = dir.join("out.raw");
        let opts = FileSinkOptions {
            preallocation: Preallocation::Full,
            ..FileSinkOptions::default()
        };
        let mut sink = Box::new(FileSink::create(&dest, opts)?);
        sink.write_zeros(1 << 20)?;
        sink.finish()?;
        let meta = std::fs::metadata(&dest).map_err(|e| Error::io("m", e))?;
        assert_eq!(meta.len(), 1 << 20);
        assert!(meta.blocks() * 512 >= 1 << 20);
        Ok(())
    }
}
