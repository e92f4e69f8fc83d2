//! What every multipart destination shares: HTTP requests retried with backoff, and a sink
//! that cuts the stream into parts and uploads them on threads while the conversion goes on.
//!
//! Memory is bounded by the part size times (parts in flight + 1). An upload is started only
//! when a first part is full; an output that fits in one part is sent whole when the sink
//! finishes. A failure that retries do not fix, or a sink dropped without `finish` (an error
//! elsewhere, a cancellation), aborts the upload.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use imgconv::{CancelToken, Error, ErrorKind, Result, Sink};
use url::Url;

/// The most parts in one upload (S3 and OCI alike).
pub(crate) const MAX_PARTS: u64 = 10_000;

/// Called with a multipart upload's handle (S3 upload id, OCI `accessUri`) as soon as the
/// upload is created, so that a caller can record it and abort it later if this process dies.
#[derive(Clone)]
pub struct UploadHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for UploadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadHook")
    }
}

/// A part stored in a multipart upload, as a caller records it so that a later run can tell
/// which parts of the upload hold the bytes it would send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    /// Its size in bytes.
    pub size: u64,
    /// The MD5 of its bytes, hex.
    pub md5: String,
    /// The ETag the server answered.
    pub etag: String,
}

/// What a [`PartHook`] calls: the upload's handle, the part number and what was stored.
pub type PartRecorder = dyn Fn(&str, u16, &StoredPart) + Send + Sync;

/// Called each time a part is stored.
#[derive(Clone)]
pub struct PartHook(pub Arc<PartRecorder>);

impl std::fmt::Debug for PartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartHook")
    }
}

/// Asked right before an object is published (the multipart upload completed, or the single
/// PUT sent): an error stops the publication and aborts the upload. A job runner uses it to
/// check that it still holds the job's lease, so that a runner that lost its job never
/// publishes an object.
#[derive(Clone)]
pub struct PublishGate(pub Arc<dyn Fn() -> Result<()> + Send + Sync>);

impl std::fmt::Debug for PublishGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishGate")
    }
}

/// How parts are cut and sent, whatever the protocol.
#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    pub(crate) part_size: Option<u64>,
    pub(crate) min_part: u64,
    pub(crate) max_part: u64,
    pub(crate) parallel: usize,
    pub(crate) retries: u32,
    pub(crate) timeout: Duration,
    pub(crate) on_upload: Option<UploadHook>,
    pub(crate) before_publish: Option<PublishGate>,
    /// The roots server certificates may chain to (`None`: bundled and system roots).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// An unfinished upload of the same output to continue (its parts that hold the bytes
    /// this run produces are not sent again), with the parts recorded as stored in it.
    pub(crate) resume: Option<(String, BTreeMap<u16, StoredPart>)>,
    /// Called for each part stored.
    pub(crate) on_part: Option<PartHook>,
    /// Leave the upload in place when the export fails or stops (the caller retries it or
    /// aborts it), instead of aborting it.
    pub(crate) keep_upload: bool,
}

impl Transfer {
    /// Part sizes allowed from `min_part` to `max_part`; 4 parts in flight, 5 retries, 120 s.
    pub(crate) fn new(min_part: u64, max_part: u64) -> Transfer {
        Transfer {
            part_size: None,
            min_part,
            max_part,
            parallel: 4,
            retries: 5,
            timeout: Duration::from_secs(120),
            on_upload: None,
            before_publish: None,
            tls: None,
            resume: None,
            on_part: None,
            keep_upload: false,
        }
    }

    /// Trust the CAs in the PEM file `bundle` too.
    pub(crate) fn ca_bundle(mut self, bundle: &std::path::Path) -> Result<Self> {
        self.tls = Some(crate::tls::client_config(Some(bundle))?);
        Ok(self)
    }

    pub(crate) fn part_size(mut self, bytes: u64) -> Result<Self> {
        if !(self.min_part..=self.max_part).contains(&bytes) {
            return Err(Error::invalid_argument(format!(
                "the part size must be from {} MiB to {} GiB",
                self.min_part >> 20,
                self.max_part >> 30
            )));
        }
        self.part_size = Some(bytes);
        Ok(self)
    }

    pub(crate) fn parallel_parts(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    pub(crate) fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The given part size, or the smallest whole number of MiB (at least 5 MiB) with which
    /// 10,000 parts cover `expected` bytes.
    pub(crate) fn part_size_for(&self, expected: u64) -> u64 {
        self.part_size.unwrap_or_else(|| {
            expected
                .div_ceil(MAX_PARTS)
                .next_multiple_of(1 << 20)
                .clamp(self.min_part.max(5 << 20), self.max_part)
        })
    }

    /// `part_size_for` as a buffer length.
    pub(crate) fn part_len(&self, expected: u64) -> Result<usize> {
        usize::try_from(self.part_size_for(expected))
            .map_err(|_| Error::invalid_argument("part size too large"))
    }

    /// An HTTP client with these timeouts and retries.
    pub(crate) fn http(&self, location: String, decode: Decode) -> Http {
        Http {
            agent: Http::agent(self.timeout, self.tls.clone()),
            retries: self.retries,
            location,
            decode,
            cancel: CancelToken::new(),
        }
    }
}

/// Turns an error status into an error: (status, body, what was being done, location).
pub(crate) type Decode = fn(u16, &str, &str, &str) -> Error;

/// An HTTP client that retries what can be retried.
pub(crate) struct Http {
    pub(crate) agent: ureq::Agent,
    pub(crate) retries: u32,
    /// The destination, for messages.
    pub(crate) location: String,
    pub(crate) decode: Decode,
    /// Stops retries once cancelled.
    pub(crate) cancel: CancelToken,
}

/// What a successful request answered.
pub(crate) struct Reply {
    pub(crate) etag: String,
    pub(crate) body: String,
}

impl Http {
    /// An agent with these timeouts.
    pub(crate) fn agent(timeout: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> ureq::Agent {
        let builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(timeout)
            .timeout_write(timeout);
        // Bundled and system roots unless a bundle was given; the system's cannot fail to
        // load (unreadable entries are skipped), so the default always exists.
        match tls.or_else(|| crate::tls::client_config(None).ok()) {
            Some(config) => builder.tls_config(config).build(),
            None => builder.build(),
        }
    }

    /// Send `method` to `url` with `headers` and `body` (with its `Content-MD5` when it is not
    /// empty). A 5xx, 408 or 429 answer, a timeout or a dropped connection is tried again
    /// after a growing pause, up to the retry budget.
    pub(crate) fn send(
        &self,
        what: &str,
        method: &str,
        url: &Url,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        let md5 = body
            .filter(|b| !b.is_empty())
            .map(|b| base64::engine::general_purpose::STANDARD.encode(imgconv::digest::md5(b)));
        let mut attempt = 0u32;
        loop {
            let mut call = self.agent.request_url(method, url);
            for (k, v) in headers {
                call = call.set(k, v);
            }
            if let Some(m) = &md5 {
                call = call.set("Content-MD5", m);
            }
            let result = match body {
                None => call.call(),
                Some(b) => call.send_bytes(b),
            };
            let retry = match result {
                Ok(resp) => {
                    let etag = resp.header("ETag").unwrap_or_default().to_string();
                    let body = resp.into_string().unwrap_or_default();
                    return Ok(Reply { etag, body });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let err = (self.decode)(code, &text, what, &self.location);
                    if !(code >= 500 || code == 408 || code == 429) {
                        return Err(err);
                    }
                    err
                }
                Err(ureq::Error::Transport(t)) => {
                    // A certificate the client does not trust will not be trusted on the next
                    // attempt either.
                    let permanent = is_certificate_error(&t);
                    let err = Error::new(
                        ErrorKind::Io,
                        format!("{what} of {}: {}", self.location, t.kind()),
                    )
                    .with_source(t);
                    if permanent {
                        return Err(err);
                    }
                    err
                }
            };
            self.cancel.check()?;
            if attempt >= self.retries {
                return Err(retry.with_note(&format!(" (after {} attempts)", attempt + 1)));
            }
            std::thread::sleep(Duration::from_millis((100u64 << attempt.min(6)).min(5000)));
            attempt += 1;
        }
    }
}

/// Whether a transport error comes from the server's certificate (rustls refused it).
fn is_certificate_error(t: &ureq::Transport) -> bool {
    let mut cause = std::error::Error::source(t);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<rustls::Error>() {
            return matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(e) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return matches!(
                    e,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                );
            }
        }
        cause = c.source();
    }
    false
}

/// Call `write` with slices of zeros that add up to `len` bytes.
pub(crate) fn in_zero_pieces(len: u64, mut write: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        write(&ZEROS[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// What the server answered for a part.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    pub(crate) etag: String,
    /// The part's CRC-32C as sent, when the protocol carries one.
    pub(crate) crc: Option<String>,
}

/// A part an unfinished upload already holds: its size and ETag as the server lists it (some
/// S3-compatible servers list no ETag), and what was recorded when it was stored.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) etag: Option<String>,
    pub(crate) size: u64,
    pub(crate) recorded: Option<StoredPart>,
}

impl Listed {
    /// The answer for a part whose bytes are `data` (MD5 `md5`, hex) when this listed part
    /// holds exactly them: the same size, and the same MD5 by every checksum known (the
    /// recorded one, and the server's ETag when it is an MD5), at least one of them known.
    pub(crate) fn holds(&self, data: &[u8], md5: &str) -> Option<String> {
        if self.size != data.len() as u64 {
            return None;
        }
        let server = self
            .etag
            .as_deref()
            .map(|e| e.trim_matches('"'))
            .filter(|e| e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()));
        let recorded = self.recorded.as_ref().filter(|r| r.size == self.size);
        let known = [server, recorded.map(|r| r.md5.as_str())];
        let any = known.iter().any(Option::is_some);
        let all = known.iter().flatten().all(|k| k.eq_ignore_ascii_case(md5));
        if !(any && all) {
            return None;
        }
        self.etag
            .clone()
            .or_else(|| recorded.map(|r| r.etag.clone()))
    }
}

/// The MD5 of `data`, hex.
pub(crate) fn md5_hex(data: &[u8]) -> String {
    imgconv::digest::md5(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The requests of one multipart protocol.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Send the whole object in one request.
    fn put_whole(&self, data: &[u8]) -> Result<()>;
    /// Start a multipart upload; its handle.
    fn create(&self) -> Result<String>;
    /// Send part `n` (from 1).
    fn put_part(&self, upload: &str, n: u16, data: &[u8]) -> Result<Uploaded>;
    /// Assemble the parts into the object.
    fn complete(&self, upload: &str, parts: &BTreeMap<u16, Uploaded>) -> Result<()>;
    /// Drop the upload and its parts (best effort).
    fn abort(&self, upload: &str);
    /// The parts an unfinished upload holds; `None` when the protocol cannot list them.
    fn list_parts(&self, upload: &str) -> Result<Option<BTreeMap<u16, Listed>>>;
    /// The answer for a part whose bytes are `data` (MD5 `md5`, hex), when the listed part
    /// `listed` holds exactly them (it then need not be sent again).
    fn reuse(&self, listed: &Listed, data: &[u8], md5: &str) -> Option<Uploaded>;
    /// Stop retrying once `cancel` is cancelled.
    fn set_cancel(&mut self, cancel: CancelToken);
}

fn copy(e: &Error) -> Error {
    Error::new(e.kind(), e.message())
}

/// An upload under way.
struct Upload {
    id: String,
    tx: Option<SyncSender<(u16, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    done: Arc<Mutex<BTreeMap<u16, Uploaded>>>,
    failure: Arc<Mutex<Option<Error>>>,
}

impl Upload {
    fn failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|f| f.as_ref().map(copy))
    }

    /// Let the queued parts go, and wait for the uploaders.
    fn drain(&mut self) {
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The sink: parts of `part_size` bytes, `parallel` of them in flight.
pub(crate) struct PartSink<B: Backend> {
    backend: Arc<B>,
    parallel: usize,
    part_size: usize,
    max_parts: u64,
    buf: Vec<u8>,
    pos: u64,
    next_part: u16,
    upload: Option<Upload>,
    cancel: CancelToken,
    on_upload: Option<UploadHook>,
    before_publish: Option<PublishGate>,
    resume: Option<(String, BTreeMap<u16, StoredPart>)>,
    on_part: Option<PartHook>,
    keep_upload: bool,
    reused: Arc<std::sync::atomic::AtomicU64>,
}

impl<B: Backend> PartSink<B> {
    /// Stop (and abort the upload) when `cancel` is cancelled: no new part or retry starts,
    /// and `finish` fails with `Cancelled` once the requests in flight end. Call before
    /// writing.
    pub(crate) fn watch(&mut self, cancel: &CancelToken) {
        self.cancel = cancel.clone();
        if let Some(b) = Arc::get_mut(&mut self.backend) {
            b.set_cancel(cancel.clone());
        }
    }

    pub(crate) fn new(backend: B, transfer: &Transfer, part_size: usize, max_parts: u64) -> Self {
        let parallel = transfer.parallel;
        PartSink {
            backend: Arc::new(backend),
            parallel: parallel.max(1),
            part_size,
            max_parts,
            buf: Vec::with_capacity(part_size),
            pos: 0,
            next_part: 1,
            upload: None,
            cancel: CancelToken::new(),
            on_upload: transfer.on_upload.clone(),
            before_publish: transfer.before_publish.clone(),
            resume: transfer.resume.clone(),
            on_part: transfer.on_part.clone(),
            keep_upload: transfer.keep_upload,
            reused: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// The upload to write into: the one to resume, with the parts it holds, when it can be
    /// listed; else a new one (the old one aborted).
    fn open_upload(&mut self) -> Result<(String, BTreeMap<u16, Listed>)> {
        if let Some((old, recorded)) = self.resume.take() {
            match self.backend.list_parts(&old) {
                Ok(Some(mut parts)) => {
                    for (n, p) in parts.iter_mut() {
                        p.recorded = recorded.get(n).cloned();
                    }
                    return Ok((old, parts));
                }
                Ok(None) | Err(_) => self.backend.abort(&old),
            }
        }
        Ok((self.backend.create()?, BTreeMap::new()))
    }

    pub(crate) fn part_size(&self) -> usize {
        self.part_size
    }

    fn start(&mut self) -> Result<&mut Upload> {
        if self.upload.is_none() {
            let (id, listed) = self.open_upload()?;
            let listed = Arc::new(listed);
            if let Some(hook) = &self.on_upload {
                (hook.0)(&id);
            }
            let (tx, rx) = sync_channel::<(u16, Vec<u8>)>(self.parallel);
            let rx = Arc::new(Mutex::new(rx));
            let done = Arc::new(Mutex::new(BTreeMap::new()));
            let failure = Arc::new(Mutex::new(None));
            let workers = (0..self.parallel)
                .map(|_| {
                    let (rx, done, failure) = (rx.clone(), done.clone(), failure.clone());
                    let (backend, id) = (self.backend.clone(), id.clone());
                    let (listed, reused) = (listed.clone(), self.reused.clone());
                    let on_part = self.on_part.clone();
                    let cancel = self.cancel.clone();
                    std::thread::spawn(move || loop {
                        let next = rx.lock().ok().and_then(|r| r.recv().ok());
                        let Some((n, data)) = next else { return };
                        if cancel.is_cancelled()
                            || failure.lock().map(|f| f.is_some()).unwrap_or(true)
                        {
                            continue;
                        }
                        let listed_part = listed.get(&n);
                        let md5 =
                            (listed_part.is_some() || on_part.is_some()).then(|| md5_hex(&data));
                        let held = listed_part
                            .zip(md5.as_deref())
                            .and_then(|(l, m)| backend.reuse(l, &data, m));
                        if let Some(part) = held {
                            reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Ok(mut d) = done.lock() {
                                d.insert(n, part);
                            }
                            continue;
                        }
                        match backend.put_part(&id, n, &data) {
                            Ok(part) => {
                                if let (Some(hook), Some(md5)) = (&on_part, md5) {
                                    let stored = StoredPart {
                                        size: data.len() as u64,
                                        md5,
                                        etag: part.etag.clone(),
                                    };
                                    (hook.0)(&id, n, &stored);
                                }
                                if let Ok(mut d) = done.lock() {
                                    d.insert(n, part);
                                }
                            }
                            Err(err) => {
                                if let Ok(mut f) = failure.lock() {
                                    f.get_or_insert(err);
                                }
                            }
                        }
                    })
                })
                .collect();
            self.upload = Some(Upload {
                id,
                tx: Some(tx),
                workers,
                done,
                failure,
            });
        }
        self.upload
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal error: no upload"))
    }

    /// Hand a full part to the uploaders (blocks while `parallel` parts are queued).
    fn send_part(&mut self, data: Vec<u8>) -> Result<()> {
        self.cancel.check()?;
        if let Some(e) = self.upload.as_ref().and_then(Upload::failure) {
            return Err(e);
        }
        if u64::from(self.next_part) > self.max_parts {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the output needs more than {} parts: give a larger part size",
                    self.max_parts
                ),
            ));
        }
        let n = self.next_part;
        let upload = self.start()?;
        let tx = upload
            .tx
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal error: uploaders stopped"))?;
        tx.send((n, data))
            .map_err(|_| Error::new(ErrorKind::Io, "the part uploaders stopped"))?;
        self.next_part += 1;
        Ok(())
    }

    fn gate(&self) -> Result<()> {
        match &self.before_publish {
            Some(g) => (g.0)(),
            None => Ok(()),
        }
    }

    fn finish_upload(&mut self) -> Result<()> {
        if self.upload.is_none() {
            // Small enough for one request; an upload to resume is no longer needed.
            if let Some((old, _)) = self.resume.take() {
                self.backend.abort(&old);
            }
            self.gate()?;
            return self.backend.put_whole(&self.buf);
        }
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.send_part(last)?;
        }
        let mut upload = self
            .upload
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "internal error: no upload"))?;
        upload.drain();
        let outcome = match upload.failure() {
            _ if self.cancel.is_cancelled() => Err(Error::cancelled()),
            Some(e) => Err(e),
            None => upload
                .done
                .lock()
                .map(|d| d.clone())
                .map_err(|_| Error::new(ErrorKind::Internal, "internal error: part list lost"))
                .and_then(|parts| {
                    if parts.len() != usize::from(self.next_part - 1) {
                        return Err(Error::new(ErrorKind::Io, "a part was not uploaded"));
                    }
                    self.gate()?;
                    self.backend.complete(&upload.id, &parts)
                }),
        };
        if outcome.is_err() && !self.keep_upload {
            self.backend.abort(&upload.id);
        }
        outcome
    }
}

impl<B: Backend> Sink for PartSink<B> {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.pos += data.len() as u64;
        while !data.is_empty() {
            let room = self.part_size - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.part_size {
                let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
                self.send_part(full)?;
            }
        }
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> Result<()> {
        in_zero_pieces(len, |z| self.write(z))
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.finish_upload()
    }
}

impl<B: Backend> Drop for PartSink<B> {
    fn drop(&mut self) {
        // Not finished: abandon the upload so that no parts are left behind.
        if let Some(mut upload) = self.upload.take() {
            if let Ok(mut f) = upload.failure.lock() {
                f.get_or_insert(Error::cancelled());
            }
            upload.drain();
            if !self.keep_upload {
                self.backend.abort(&upload.id);
            }
        }
    }
}

/// Delegate [`Sink`] to a wrapped `PartSink`.
macro_rules! delegate_sink {
    ($outer:ty) => {
        impl imgconv::Sink for $outer {
            fn write(&mut self, data: &[u8]) -> imgconv::Result<()> {
                self.0.write(data)
            }
            fn write_zeros(&mut self, len: u64) -> imgconv::Result<()> {
                self.0.write_zeros(len)
            }
            fn position(&self) -> u64 {
                self.0.position()
            }
            fn finish(self: Box<Self>) -> imgconv::Result<()> {
                Box::new(self.0).finish()
            }
        }

        impl $outer {
            /// The part size in use.
            pub fn part_size(&self) -> usize {
                self.0.part_size()
            }

            /// Stop when `cancel` is cancelled: no new part or retry starts, the upload is
            /// aborted once the requests in flight end, and `finish` fails with `Cancelled`.
            pub fn watch(mut self, cancel: &imgconv::CancelToken) -> Self {
                self.0.watch(cancel);
                self
            }
        }
    };
}
pub(crate) use delegate_sink;
