//! The S3-compatible sink: multipart upload in parallel, while the conversion runs.
//!
//! Requests are signed with SigV4 by `rusty-s3` (presigned URLs, valid for an hour) and sent
//! with `ureq`. Every part carries a `Content-MD5` and an `x-amz-checksum-crc32c` (a signed
//! header; the upload is created with `x-amz-checksum-algorithm: CRC32C` and completed with
//! each part's checksum), both of which the server checks. A part that fails
//! with a 5xx, 408 or 429 status, a timeout or a dropped connection is sent again after a
//! growing pause; a failure that retries do not fix, an error anywhere in the conversion, or a
//! cancellation aborts the multipart upload, so that neither an object nor orphaned parts
//! remain (unless the caller keeps it to resume: [`S3Config::keep_upload_on_failure`],
//! [`S3Config::resume_upload`]). An object no larger than one part is sent with a single PUT.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use imgconv::{Error, ErrorKind, Result};
use rusty_s3::actions::{CreateMultipartUpload, S3Action};
use rusty_s3::{Bucket, Map, UrlStyle};
use url::Url;

use crate::credentials::Credentials;
use crate::parts::{delegate_sink, Backend, Http, Listed, PartSink, Reply, Transfer, Uploaded};

/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = crate::parts::MAX_PARTS;
/// How long a signed request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct S3Config {
    endpoint: Url,
    region: String,
    path_style: bool,
    transfer: Transfer,
    crc32c: bool,
    overwrite: bool,
}

impl S3Config {
    /// An endpoint (`https://s3.eu-west-1.amazonaws.com`, `https://obs.cn-north-4.myhuaweicloud.com`,
    /// `https://NAMESPACE.compat.objectstorage.REGION.oraclecloud.com`, `http://127.0.0.1:9000`)
    /// and its region. Path-style addressing, 4 parts in flight, 5 retries per request.
    pub fn new(endpoint: &str, region: &str) -> Result<S3Config> {
        let endpoint = Url::parse(endpoint).map_err(|e| {
            Error::invalid_argument(format!("endpoint '{endpoint}' is not a URL")).with_source(e)
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
            transfer: Transfer::new(MIN_PART_SIZE, MAX_PART_SIZE),
            crc32c: true,
            overwrite: false,
        })
    }

    /// Virtual-hosted addressing (`bucket.endpoint/key`) instead of path style.
    pub fn virtual_hosted(mut self) -> Self {
        self.path_style = false;
        self
    }

    /// A fixed part size (5 MiB to 5 GiB); by default the smallest whole number of MiB with
    /// which 10,000 parts cover the expected size.
    pub fn part_size(mut self, bytes: u64) -> Result<Self> {
        self.transfer = self.transfer.part_size(bytes)?;
        Ok(self)
    }

    /// Parts uploaded at once (memory is about this many parts, plus one being filled); 4 by
    /// default.
    pub fn parallel_parts(mut self, n: usize) -> Self {
        self.transfer = self.transfer.parallel_parts(n);
        self
    }

    /// Attempts after the first for each request; 5 by default.
    pub fn retries(mut self, n: u32) -> Self {
        self.transfer = self.transfer.retries(n);
        self
    }

    /// How long a request may wait for the server before it counts as failed (and is retried);
    /// 120 s by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.transfer = self.transfer.timeout(timeout);
        self
    }

    /// Replace an object that already exists at the key; by default such an export is refused
    /// before anything is converted.
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }

    /// Call `hook` with the upload id when a multipart upload starts (to record it, so that
    /// [`S3Sink::abort_upload`] can clean up after a process that died).
    pub fn on_upload_started(mut self, hook: crate::UploadHook) -> Self {
        self.transfer.on_upload = Some(hook);
        self
    }

    /// Continue the unfinished multipart upload `upload` of this same output (an export run
    /// again after a crash or a lost lease): its parts are listed (ListParts) and those that
    /// hold the bytes this run produces, by size and ETag (the part's MD5), are not sent
    /// again. An upload that cannot be listed (gone, expired) is replaced by a new one;
    /// `recorded` are the parts an earlier run recorded as stored ([`S3Config::on_part_stored`]):
    /// a part is reused when its size and MD5 agree with every checksum known for it.
    pub fn resume_upload(
        mut self,
        upload: Option<String>,
        recorded: BTreeMap<u16, crate::StoredPart>,
    ) -> Self {
        self.transfer.resume = upload.map(|u| (u, recorded));
        self
    }

    /// Call `hook` each time a part is stored (to record it for a later run that resumes the
    /// upload).
    pub fn on_part_stored(mut self, hook: crate::PartHook) -> Self {
        self.transfer.on_part = Some(hook);
        self
    }

    /// Leave the multipart upload in place when the export fails or is stopped, for a run
    /// that resumes it or a caller that aborts it ([`S3Sink::abort_upload`]).
    pub fn keep_upload_on_failure(mut self) -> Self {
        self.transfer.keep_upload = true;
        self
    }

    /// Ask `gate` right before the object is published; its error aborts the upload instead.
    pub fn before_publish(mut self, gate: crate::PublishGate) -> Self {
        self.transfer.before_publish = Some(gate);
        self
    }

    /// Also trust the certificate authorities in the PEM file `bundle` (a private endpoint
    /// behind an internal CA). The bundled Mozilla roots and the system's store (including
    /// `SSL_CERT_FILE`) are always trusted.
    pub fn ca_bundle(mut self, bundle: &std::path::Path) -> Result<Self> {
        self.transfer = self.transfer.ca_bundle(bundle)?;
        Ok(self)
    }

    /// Leave out the `x-amz-checksum-crc32c` headers, for S3-compatible services that reject
    /// them (the parts keep their `Content-MD5`).
    pub fn without_crc32c(mut self) -> Self {
        self.crc32c = false;
        self
    }

    /// The part size for an output of about `expected` bytes.
    pub fn part_size_for(&self, expected: u64) -> u64 {
        self.transfer.part_size_for(expected)
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

/// The S3 requests, signed.
struct S3 {
    http: Http,
    bucket: Bucket,
    creds: rusty_s3::Credentials,
    key: String,
    crc32c: bool,
}

impl S3 {
    fn new(config: &S3Config, credentials: Credentials, to: &S3Location) -> Result<S3> {
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
        .map_err(|e| Error::invalid_argument(format!("bucket '{}'", to.bucket)).with_source(e))?;
        Ok(S3 {
            http: config.transfer.http(to.to_string(), status_error),
            bucket,
            creds: credentials.signing(),
            key: to.key.clone(),
            crc32c: config.crc32c,
        })
    }
}

/// A signed request: its URL and the headers that the signature covers.
struct Signed {
    url: Url,
    headers: Vec<(String, String)>,
}

/// Sign `action`, with `headers` among the signed ones.
fn sign<'a, A: S3Action<'a>>(mut action: A, headers: &[(&'static str, &str)]) -> Signed {
    let map: &mut Map<'a> = action.headers_mut();
    for (k, v) in headers {
        map.insert(*k, v.to_string());
    }
    let headers = map
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Signed {
        url: action.sign(SIGNED_FOR),
        headers,
    }
}

/// The base64 of a big-endian CRC-32C, as `x-amz-checksum-crc32c` carries it.
fn crc32c_base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}

/// Escape text for an XML element.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The `CompleteMultipartUpload` document, with each part's checksum when there is one.
fn complete_body(parts: &BTreeMap<u16, Uploaded>) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (n, p) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag>",
            xml_escape(&p.etag)
        ));
        if let Some(c) = &p.crc {
            xml.push_str(&format!("<ChecksumCRC32C>{c}</ChecksumCRC32C>"));
        }
        xml.push_str("</Part>");
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

impl S3 {
    fn send(&self, what: &str, method: &str, req: &Signed, body: Option<&[u8]>) -> Result<Reply> {
        self.http.send(what, method, &req.url, &req.headers, body)
    }

    /// Send `data` as part `n` of `upload`, or as the whole object.
    fn put(&self, what: &str, part: Option<(u16, &str)>, data: &[u8]) -> Result<Uploaded> {
        let crc = self.crc32c.then(|| crc32c_base64(data));
        let headers: Vec<(&'static str, &str)> = crc
            .as_deref()
            .map(|c| ("x-amz-checksum-crc32c", c))
            .into_iter()
            .collect();
        let signed = match part {
            Some((n, id)) => sign(
                self.bucket.upload_part(Some(&self.creds), &self.key, n, id),
                &headers,
            ),
            None => sign(
                self.bucket.put_object(Some(&self.creds), &self.key),
                &headers,
            ),
        };
        let reply = self.send(what, "PUT", &signed, Some(data))?;
        Ok(Uploaded {
            etag: reply.etag,
            crc,
        })
    }
}

impl Backend for S3 {
    fn put_whole(&self, data: &[u8]) -> Result<()> {
        self.put("uploading", None, data).map(|_| ())
    }

    fn create(&self) -> Result<String> {
        let action = self
            .bucket
            .create_multipart_upload(Some(&self.creds), &self.key);
        let algorithm: &[(&'static str, &str)] = if self.crc32c {
            &[("x-amz-checksum-algorithm", "CRC32C")]
        } else {
            &[]
        };
        let reply = self.send(
            "starting the upload",
            "POST",
            &sign(action, algorithm),
            Some(&[]),
        )?;
        let created = CreateMultipartUpload::parse_response(&reply.body).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "starting the upload of {}: bad answer: {e}",
                    self.http.location
                ),
            )
        })?;
        Ok(created.upload_id().to_string())
    }

    fn put_part(&self, upload: &str, n: u16, data: &[u8]) -> Result<Uploaded> {
        self.put(&format!("uploading part {n}"), Some((n, upload)), data)
    }

    fn complete(&self, upload: &str, parts: &BTreeMap<u16, Uploaded>) -> Result<()> {
        let action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            &self.key,
            upload,
            std::iter::empty(),
        );
        let body = complete_body(parts);
        let what = "completing the upload";
        let reply = self.send(what, "POST", &sign(action, &[]), Some(body.as_bytes()))?;
        // S3 can answer 200 with an error document for CompleteMultipartUpload.
        if reply.body.contains("<Error>") {
            return Err(status_error(500, &reply.body, what, &self.http.location));
        }
        Ok(())
    }

    fn set_cancel(&mut self, cancel: imgconv::CancelToken) {
        self.http.cancel = cancel;
    }

    fn abort(&self, upload: &str) {
        let action = self
            .bucket
            .abort_multipart_upload(Some(&self.creds), &self.key, upload);
        let _ = self.send("aborting the upload", "DELETE", &sign(action, &[]), None);
    }

    fn list_parts(&self, upload: &str) -> Result<Option<BTreeMap<u16, Listed>>> {
        let mut parts = BTreeMap::new();
        let mut marker: Option<u16> = None;
        // At most 10,000 parts, 1,000 a page.
        for _ in 0..11 {
            let mut action = self.bucket.list_parts(Some(&self.creds), &self.key, upload);
            action.set_max_parts(1000);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let what = "listing the parts of the upload";
            let reply = self.send(what, "GET", &sign(action, &[]), None)?;
            let page: PartsPage = quick_xml::de::from_str(&reply.body).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("{what} of {}: bad answer: {e}", self.http.location),
                )
            })?;
            for p in page.parts {
                parts.insert(
                    p.number,
                    Listed {
                        etag: p.etag,
                        size: p.size,
                        recorded: None,
                    },
                );
            }
            match page.next {
                Some(m) if page.truncated && marker != Some(m) => marker = Some(m),
                _ => break,
            }
        }
        Ok(Some(parts))
    }

    fn reuse(&self, listed: &Listed, data: &[u8], md5: &str) -> Option<Uploaded> {
        listed.holds(data, md5).map(|etag| Uploaded {
            etag,
            crc: self.crc32c.then(|| crc32c_base64(data)),
        })
    }
}

/// One page of a `ListParts` answer (only what resuming needs; S3-compatible services leave
/// out some of the other fields).
#[derive(Debug, serde::Deserialize)]
struct PartsPage {
    #[serde(rename = "Part", default)]
    parts: Vec<PagePart>,
    #[serde(rename = "IsTruncated", default)]
    truncated: bool,
    #[serde(rename = "NextPartNumberMarker", default)]
    next: Option<u16>,
}

/// A part in a `ListParts` answer.
#[derive(Debug, serde::Deserialize)]
struct PagePart {
    #[serde(rename = "PartNumber")]
    number: u16,
    #[serde(rename = "ETag", default)]
    etag: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
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
        _ if code == 403 => {
            "HTTP 403, access denied: check the keys, the region and the bucket's policy".into()
        }
        _ => format!("HTTP {code}"),
    };
    Error::new(kind, format!("{what} of {location} failed: {detail}"))
}

/// A sink that uploads the stream to an S3-compatible bucket. Dropped without
/// [`imgconv::Sink::finish`] (an error, a cancellation), it aborts the upload.
pub struct S3Sink(PartSink<S3>);

delegate_sink!(S3Sink);

impl S3Sink {
    /// A sink for an output of about `expected_size` bytes (the part size follows from it).
    /// The bucket and the keys are checked at once; no object data is sent until the first
    /// part is full.
    pub fn create(
        config: &S3Config,
        credentials: Credentials,
        to: &S3Location,
        expected_size: u64,
    ) -> Result<S3Sink> {
        let part_size = config.transfer.part_len(expected_size)?;
        let s3 = S3::new(config, credentials, to)?;
        // Check the bucket and the keys before any conversion work.
        let head = sign(s3.bucket.head_bucket(Some(&s3.creds)), &[]);
        if let Err(e) = s3.send("checking the bucket", "HEAD", &head, None) {
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
        if !config.overwrite {
            let head = sign(s3.bucket.head_object(Some(&s3.creds), &s3.key), &[]);
            match s3.send("checking the key", "HEAD", &head, None) {
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("{to} already exists and replacing it was not asked for"),
                    ))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(S3Sink(PartSink::new(
            s3,
            &config.transfer,
            part_size,
            MAX_PARTS,
        )))
    }

    /// Abort a multipart upload that a process started and could not finish (it died).
    pub fn abort_upload(
        config: &S3Config,
        credentials: Credentials,
        to: &S3Location,
        upload_id: &str,
    ) -> Result<()> {
        let s3 = S3::new(config, credentials, to)?;
        let action = s3
            .bucket
            .abort_multipart_upload(Some(&s3.creds), &s3.key, upload_id);
        s3.send("aborting the upload", "DELETE", &sign(action, &[]), None)
            .map(drop)
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
