//! The S3-compatible sink: multipart upload in parallel, while the conversion runs.
//!
//! Requests are signed with SigV4 by `rusty-s3` (presigned URLs, valid for an hour) and sent
//! with `ureq`. Every part carries a `Content-MD5`, which the server checks. A part that fails
//! with a 5xx, 408 or 429 status, a timeout or a dropped connection is sent again after a
//! growing pause; a failure that retries do not fix, an error anywhere in the conversion, or a
//! cancellation aborts the multipart upload, so that neither an object nor orphaned parts
//! remain. An object no larger than one part is sent with a single PUT.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use imgconv::{Error, ErrorKind, Result, Sink};
use md5::{Digest as _, Md5};
use rusty_s3::actions::{CreateMultipartUpload, S3Action};
use rusty_s3::{Bucket, UrlStyle};
use url::Url;

use crate::credentials::Credentials;

/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// How long a signed request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct S3Config {
    endpoint: Url,
    region: String,
    path_style: bool,
    part_size: Option<u64>,
    parallel: usize,
    retries: u32,
    timeout: Duration,
}

impl S3Config {
    /// An endpoint (`https://s3.eu-west-1.amazonaws.com`, `https://obs.cn-north-4.myhuaweicloud.com`,
    /// `https://NAMESPACE.compat.objectstorage.REGION.oraclecloud.com`, `http://127.0.0.1:9000`)
    /// and its region. Path-style addressing, 4 parts in flight, 5 retries per request.
    pub fn new(endpoint: &str, region: &str) -> Result<S3Config> {
        let endpoint = Url::parse(endpoint).map_err(|e| {
            Error::invalid_argument(format!("endpoint '{endpoint}' is not a URL: {e}"))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(Error::invalid_argument(
                "the endpoint must be an http:// or https:// URL",
            ));
        }
        Ok(S3Config {
            endpoint,
            region: region.to_string(),
            path_style: true,
            part_size: None,
            parallel: 4,
            retries: 5,
            timeout: Duration::from_secs(120),
        })
    }

    /// Virtual-hosted addressing (`bucket.endpoint/key`) instead of path style.
    pub fn virtual_hosted(mut self) -> Self {
        self.path_style = false;
        self
    }

    /// A fixed part size (at least 5 MiB); by default the smallest whole number of MiB with
    /// which 10,000 parts cover the expected size.
    pub fn part_size(mut self, bytes: u64) -> Result<Self> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&bytes) {
            return Err(Error::invalid_argument(
                "the part size must be from 5 MiB to 5 GiB",
            ));
        }
        self.part_size = Some(bytes);
        Ok(self)
    }

    /// Parts uploaded at once (memory is about this many parts, plus one being filled).
    pub fn parallel_parts(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    /// Attempts after the first for each request.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// The part size for an output of about `expected` bytes.
    pub fn part_size_for(&self, expected: u64) -> u64 {
        self.part_size.unwrap_or_else(|| {
            expected
                .div_ceil(MAX_PARTS)
                .next_multiple_of(1 << 20)
                .clamp(MIN_PART_SIZE, MAX_PART_SIZE)
        })
    }
}

/// A bucket and a key: `s3://bucket/path/to/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
}

impl S3Location {
    /// Parse `s3://bucket/key` (also `obs://` and `oci://`, which name the same thing through
    /// those providers' S3-compatible endpoints).
    pub fn parse(text: &str) -> Result<S3Location> {
        let rest = ["s3://", "obs://", "oci://"]
            .iter()
            .find_map(|p| text.strip_prefix(p))
            .ok_or_else(|| {
                Error::invalid_argument(format!("'{text}' is not an s3://bucket/key location"))
            })?;
        match rest.split_once('/') {
            Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok(S3Location {
                bucket: b.to_string(),
                key: k.to_string(),
            }),
            _ => Err(Error::invalid_argument(format!(
                "'{text}' needs both a bucket and a key (s3://bucket/key)"
            ))),
        }
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// What every request needs.
struct Client {
    agent: ureq::Agent,
    bucket: Bucket,
    creds: rusty_s3::Credentials,
    key: String,
    location: String,
    retries: u32,
}

/// A body to send, or none.
enum Body<'a> {
    None,
    Bytes(&'a [u8]),
}

impl Client {
    /// Send `method` to `url` with `body`, retrying what can be retried; the response's
    /// status, `ETag` and body on success.
    fn send(
        &self,
        what: &str,
        method: &str,
        url: &Url,
        body: Body<'_>,
    ) -> Result<(String, String)> {
        let md5 = match body {
            Body::Bytes(b) if !b.is_empty() => {
                Some(base64::engine::general_purpose::STANDARD.encode(Md5::digest(b)))
            }
            _ => None,
        };
        let mut attempt = 0u32;
        loop {
            let mut req = self.agent.request_url(method, url);
            if let Some(m) = &md5 {
                req = req.set("Content-MD5", m);
            }
            let result = match body {
                Body::None => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
            };
            let retry = match result {
                Ok(resp) => {
                    let etag = resp.header("ETag").unwrap_or_default().to_string();
                    let text = resp.into_string().unwrap_or_default();
                    return Ok((etag, text));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let err = status_error(code, &text, what, &self.location);
                    if !(code >= 500 || code == 408 || code == 429) {
                        return Err(err);
                    }
                    err
                }
                Err(ureq::Error::Transport(t)) => Error::new(
                    ErrorKind::Io,
                    format!("{what} of {}: {}", self.location, t.kind()),
                ),
            };
            if attempt >= self.retries {
                return Err(Error::new(
                    retry.kind(),
                    format!("{} (after {} attempts)", retry.message(), attempt + 1),
                ));
            }
            std::thread::sleep(Duration::from_millis((100u64 << attempt.min(6)).min(5000)));
            attempt += 1;
        }
    }

    fn abort(&self, upload_id: &str) {
        let action = self
            .bucket
            .abort_multipart_upload(Some(&self.creds), &self.key, upload_id);
        let url = action.sign(SIGNED_FOR);
        let _ = self.send("aborting the upload", "DELETE", &url, Body::None);
    }
}

/// An S3 error response's `<Code>` and `<Message>`.
fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(&text[start..end])
}

fn status_error(code: u16, body: &str, what: &str, location: &str) -> Error {
    let s3code = xml_field(body, "Code").unwrap_or("");
    let message = xml_field(body, "Message").unwrap_or("");
    let kind = match (code, s3code) {
        (_, "NoSuchBucket") => ErrorKind::NotFound,
        (403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") => {
            ErrorKind::AccessDenied
        }
        (404, _) => ErrorKind::NotFound,
        (400, _) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Io,
    };
    let detail = match (s3code.is_empty(), message.is_empty()) {
        (false, false) => format!("{s3code}: {message}"),
        (false, true) => s3code.to_string(),
        _ => format!("HTTP {code}"),
    };
    Error::new(kind, format!("{what} of {location} failed: {detail}"))
}

fn copy(e: &Error) -> Error {
    Error::new(e.kind(), e.message())
}

/// A multipart upload under way.
struct Upload {
    id: String,
    tx: Option<SyncSender<(u16, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    etags: Arc<Mutex<BTreeMap<u16, String>>>,
    failure: Arc<Mutex<Option<Error>>>,
}

/// A sink that uploads the stream to an S3-compatible bucket. Dropped without
/// [`Sink::finish`] (an error, a cancellation), it aborts the upload.
pub struct S3Sink {
    client: Arc<Client>,
    parallel: usize,
    part_size: usize,
    buf: Vec<u8>,
    pos: u64,
    next_part: u16,
    upload: Option<Upload>,
}

impl S3Sink {
    /// A sink for an output of about `expected_size` bytes (the part size follows from it).
    /// Nothing is sent until the first part is full.
    pub fn create(
        config: &S3Config,
        credentials: Credentials,
        to: &S3Location,
        expected_size: u64,
    ) -> Result<S3Sink> {
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            config.endpoint.clone(),
            style,
            to.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| Error::invalid_argument(format!("bucket '{}': {e}", to.bucket)))?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(config.timeout)
            .timeout_write(config.timeout)
            .build();
        let part_size = usize::try_from(config.part_size_for(expected_size))
            .map_err(|_| Error::invalid_argument("part size too large"))?;
        let client = Client {
            agent,
            bucket,
            creds: credentials.signing(),
            key: to.key.clone(),
            location: to.to_string(),
            retries: config.retries,
        };
        // Check the bucket and the keys before any conversion work.
        let url = client
            .bucket
            .head_bucket(Some(&client.creds))
            .sign(SIGNED_FOR);
        if let Err(e) = client.send("checking the bucket", "HEAD", &url, Body::None) {
            return Err(match e.kind() {
                ErrorKind::NotFound => Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "bucket '{}' does not exist (at {})",
                        to.bucket, config.endpoint
                    ),
                ),
                _ => e,
            });
        }
        Ok(S3Sink {
            client: Arc::new(client),
            parallel: config.parallel,
            part_size,
            buf: Vec::with_capacity(part_size),
            pos: 0,
            next_part: 1,
            upload: None,
        })
    }

    /// The part size in use.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    fn start(&mut self) -> Result<&mut Upload> {
        if self.upload.is_none() {
            let c = &self.client;
            let action = c.bucket.create_multipart_upload(Some(&c.creds), &c.key);
            let url = action.sign(SIGNED_FOR);
            let (_, body) = c.send("starting the upload", "POST", &url, Body::Bytes(&[]))?;
            let created = CreateMultipartUpload::parse_response(&body).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("starting the upload of {}: bad answer: {e}", c.location),
                )
            })?;
            let id = created.upload_id().to_string();
            let (tx, rx) = sync_channel::<(u16, Vec<u8>)>(self.parallel);
            let rx = Arc::new(Mutex::new(rx));
            let etags = Arc::new(Mutex::new(BTreeMap::new()));
            let failure = Arc::new(Mutex::new(None));
            let workers = (0..self.parallel)
                .map(|_| {
                    let (rx, etags, failure) = (rx.clone(), etags.clone(), failure.clone());
                    let (client, id) = (self.client.clone(), id.clone());
                    std::thread::spawn(move || loop {
                        let next = rx.lock().ok().and_then(|r| r.recv().ok());
                        let Some((n, data)) = next else { return };
                        if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                            continue;
                        }
                        let action =
                            client
                                .bucket
                                .upload_part(Some(&client.creds), &client.key, n, &id);
                        let url = action.sign(SIGNED_FOR);
                        let what = format!("uploading part {n}");
                        match client.send(&what, "PUT", &url, Body::Bytes(&data)) {
                            Ok((etag, _)) => {
                                if let Ok(mut e) = etags.lock() {
                                    e.insert(n, etag);
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
                etags,
                failure,
            });
        }
        self.upload
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Io, "internal error: no upload"))
    }

    fn check_failure(&self) -> Result<()> {
        if let Some(u) = &self.upload {
            if let Some(e) = u.failure.lock().ok().and_then(|f| f.as_ref().map(copy)) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Hand a full part to the uploaders (blocks while `parallel` parts are queued).
    fn send_part(&mut self, data: Vec<u8>) -> Result<()> {
        self.check_failure()?;
        if u64::from(self.next_part) > MAX_PARTS {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                "the output needs more than 10,000 parts: give a larger part size",
            ));
        }
        let n = self.next_part;
        let upload = self.start()?;
        let tx = upload
            .tx
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Io, "internal error: uploaders stopped"))?;
        tx.send((n, data))
            .map_err(|_| Error::new(ErrorKind::Io, "the part uploaders stopped"))?;
        self.next_part += 1;
        Ok(())
    }

    fn fill(&mut self, mut data: &[u8]) -> Result<()> {
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
}

impl Sink for S3Sink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.fill(data)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.pos
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.upload.is_none() {
            // Small enough for one request.
            let c = self.client.clone();
            let action = c.bucket.put_object(Some(&c.creds), &c.key);
            let url = action.sign(SIGNED_FOR);
            c.send("uploading", "PUT", &url, Body::Bytes(&self.buf))?;
            return Ok(());
        }
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.send_part(last)?;
        }
        let mut upload = self
            .upload
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Io, "internal error: no upload"))?;
        drop(upload.tx.take());
        for w in upload.workers.drain(..) {
            let _ = w.join();
        }
        let c = self.client.clone();
        if let Some(e) = upload
            .failure
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(copy))
        {
            c.abort(&upload.id);
            return Err(e);
        }
        let etags = upload
            .etags
            .lock()
            .map(|e| e.clone())
            .map_err(|_| Error::new(ErrorKind::Io, "internal error: part list lost"))?;
        if etags.len() != usize::from(self.next_part - 1) {
            c.abort(&upload.id);
            return Err(Error::new(ErrorKind::Io, "a part was not uploaded"));
        }
        let action = c.bucket.complete_multipart_upload(
            Some(&c.creds),
            &c.key,
            &upload.id,
            etags.values().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        match c.send(
            "completing the upload",
            "POST",
            &url,
            Body::Bytes(body.as_bytes()),
        ) {
            // S3 can answer 200 with an error document for CompleteMultipartUpload.
            Ok((_, text)) if text.contains("<Error>") => {
                c.abort(&upload.id);
                Err(status_error(
                    500,
                    &text,
                    "completing the upload",
                    &c.location,
                ))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                c.abort(&upload.id);
                Err(e)
            }
        }
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        // Not finished: abandon the upload so that no parts are left behind.
        if let Some(mut upload) = self.upload.take() {
            if let Ok(mut f) = upload.failure.lock() {
                f.get_or_insert(Error::cancelled());
            }
            drop(upload.tx.take());
            for w in upload.workers.drain(..) {
                let _ = w.join();
            }
            self.client.abort(&upload.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() -> Result<()> {
        let l = S3Location::parse("s3://b/dir/disk.vmdk")?;
        assert_eq!((l.bucket.as_str(), l.key.as_str()), ("b", "dir/disk.vmdk"));
        assert!(S3Location::parse("s3://bucket").is_err());
        assert!(S3Location::parse("s3:///key").is_err());
        assert!(S3Location::parse("/tmp/x").is_err());
        Ok(())
    }

    #[test]
    fn ten_thousand_parts_cover_the_image() -> Result<()> {
        let c = S3Config::new("http://127.0.0.1:1", "us-east-1")?;
        assert_eq!(c.part_size_for(1 << 30), MIN_PART_SIZE);
        let big = 1u64 << 40;
        let p = c.part_size_for(big);
        assert!(p * MAX_PARTS >= big && p % (1 << 20) == 0);
        assert_eq!(c.clone().part_size(8 << 20)?.part_size_for(big), 8 << 20);
        Ok(())
    }

    #[test]
    fn s3_errors_map_to_kinds() {
        let body = "<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>";
        let e = status_error(404, body, "uploading", "s3://b/k");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.message().contains("NoSuchBucket: gone"));
        let e = status_error(
            403,
            "<Error><Code>SignatureDoesNotMatch</Code></Error>",
            "x",
            "y",
        );
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
    }
}
