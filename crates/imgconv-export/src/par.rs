//! OCI Object Storage pre-authenticated requests (PARs): an object PAR URL that allows writes
//! (`https://objectstorage.REGION.oraclecloud.com/p/TOKEN/n/NAMESPACE/b/BUCKET/o/OBJECT`)
//! needs no credentials. An output that fits in one part is sent with a single PUT; a larger
//! one by the PAR multipart protocol: a PUT with `opc-multipart: true` answers an `accessUri`,
//! each part is PUT to `<accessUri><partNum>` with its `Content-MD5`, a POST to the
//! `accessUri` commits, a DELETE aborts. The URL is a secret: messages name the object only.

use std::collections::BTreeMap;

use imgconv::{Error, ErrorKind, Result};
use url::Url;

use crate::parts::{delegate_sink, Backend, Http, Listed, PartSink, Transfer, Uploaded};

/// OCI's largest part.
pub const PAR_MAX_PART_SIZE: u64 = 50 << 30;

/// How to upload through a PAR: part size, parts in flight, retries, timeout.
#[derive(Debug, Clone)]
pub struct ParConfig {
    transfer: Transfer,
}

impl Default for ParConfig {
    fn default() -> Self {
        ParConfig {
            transfer: Transfer::new(1 << 20, PAR_MAX_PART_SIZE),
        }
    }
}

impl ParConfig {
    /// 4 parts in flight, 5 retries, parts sized so that 10,000 cover the output (at least
    /// 5 MiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// A fixed part size (1 MiB to 50 GiB).
    pub fn part_size(mut self, bytes: u64) -> Result<Self> {
        self.transfer = self.transfer.part_size(bytes)?;
        Ok(self)
    }

    /// Also trust the certificate authorities in the PEM file `bundle` (see
    /// [`crate::S3Config::ca_bundle`]).
    pub fn ca_bundle(mut self, bundle: &std::path::Path) -> Result<Self> {
        self.transfer = self.transfer.ca_bundle(bundle)?;
        Ok(self)
    }

    /// Parts uploaded at once.
    pub fn parallel_parts(mut self, n: usize) -> Self {
        self.transfer = self.transfer.parallel_parts(n);
        self
    }

    /// Call `hook` with the upload's `accessUri` when a multipart upload starts.
    pub fn on_upload_started(mut self, hook: crate::UploadHook) -> Self {
        self.transfer.on_upload = Some(hook);
        self
    }

    /// Ask `gate` right before the object is published; its error aborts the upload instead.
    pub fn before_publish(mut self, gate: crate::PublishGate) -> Self {
        self.transfer.before_publish = Some(gate);
        self
    }

    /// The unfinished upload of an earlier run of this export. A PAR cannot list an upload's
    /// parts, so it is aborted and the output is sent again in a new upload.
    pub fn resume_upload(mut self, upload: Option<String>) -> Self {
        self.transfer.resume = upload.map(|u| (u, BTreeMap::new()));
        self
    }

    /// Leave the multipart upload in place when the export fails or is stopped (the caller
    /// aborts it with [`ParSink::abort_upload`]).
    pub fn keep_upload_on_failure(mut self) -> Self {
        self.transfer.keep_upload = true;
        self
    }

    /// Attempts after the first for each request.
    pub fn retries(mut self, n: u32) -> Self {
        self.transfer = self.transfer.retries(n);
        self
    }

    /// How long a request may wait for the server before it counts as failed.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.transfer = self.transfer.timeout(timeout);
        self
    }
}

/// A PAR URL for an object, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct ParUrl {
    url: Url,
    object: String,
}

impl std::fmt::Debug for ParUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParUrl({})", self)
    }
}

/// Shows the host and the object, never the token.
impl std::fmt::Display for ParUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}/p/<token>/.../o/{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or(""),
            self.object
        )
    }
}

impl ParUrl {
    /// Whether `text` looks like an object PAR URL (`http(s)://.../p/.../o/OBJECT`).
    pub fn looks_like(text: &str) -> bool {
        (text.starts_with("https://") || text.starts_with("http://"))
            && text.contains("/p/")
            && text.contains("/o/")
    }

    /// Parse an object PAR URL.
    pub fn parse(text: &str) -> Result<ParUrl> {
        let bad = || {
            Error::invalid_argument(
                "not an object pre-authenticated request URL \
                 (https://objectstorage.REGION.oraclecloud.com/p/TOKEN/n/NS/b/BUCKET/o/OBJECT)",
            )
        };
        let url = Url::parse(text).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(bad());
        }
        let path = url.path().to_string();
        let (before, object) = path.rsplit_once("/o/").ok_or_else(bad)?;
        if !before.starts_with("/p/") || object.is_empty() || object.ends_with('/') {
            return Err(bad());
        }
        Ok(ParUrl {
            object: object.to_string(),
            url,
        })
    }

    /// The object's name (as in the URL).
    pub fn object(&self) -> &str {
        &self.object
    }
}

/// An OCI error answer (`{"code": ..., "message": ...}`) as an error; never the URL.
fn oci_error(code: u16, body: &str, what: &str, location: &str) -> Error {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let oci_code = json["code"].as_str().unwrap_or("");
    let kind = match code {
        401 | 403 => ErrorKind::AccessDenied,
        // Object Storage answers 404 for a PAR that does not exist, has expired or was
        // revoked.
        404 => ErrorKind::AccessDenied,
        400 => ErrorKind::InvalidArgument,
        _ => ErrorKind::Io,
    };
    let detail = match (oci_code, json["message"].as_str()) {
        ("", _) => format!("HTTP {code}"),
        (c, Some(m)) => format!("{c}: {m}"),
        (c, None) => c.to_string(),
    };
    let hint = if code == 404 {
        " (the pre-authenticated request may have expired or been revoked)"
    } else {
        ""
    };
    Error::new(kind, format!("{what} of {location} failed: {detail}{hint}"))
}

struct Par {
    http: Http,
    url: ParUrl,
}

impl Par {
    /// The upload's `accessUri` resolved against the PAR's host.
    fn access(&self, upload: &str, suffix: &str) -> Result<Url> {
        self.url
            .url
            .join(&format!("{upload}{suffix}"))
            .map_err(|e| Error::new(ErrorKind::Io, "bad accessUri from the server").with_source(e))
    }
}

impl Backend for Par {
    fn put_whole(&self, data: &[u8]) -> Result<()> {
        self.http
            .send("uploading", "PUT", &self.url.url, &[], Some(data))
            .map(|_| ())
    }

    fn create(&self) -> Result<String> {
        let headers = [("opc-multipart".to_string(), "true".to_string())];
        let what = "starting the upload";
        let reply = self
            .http
            .send(what, "PUT", &self.url.url, &headers, Some(&[]))?;
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
        match json["accessUri"].as_str() {
            Some(uri) if uri.starts_with('/') && uri.ends_with('/') => Ok(uri.to_string()),
            _ => Err(Error::new(
                ErrorKind::Io,
                format!("{what} of {}: no accessUri in the answer", self.url),
            )),
        }
    }

    fn put_part(&self, upload: &str, n: u16, data: &[u8]) -> Result<Uploaded> {
        let url = self.access(upload, &n.to_string())?;
        let reply = self
            .http
            .send(&format!("uploading part {n}"), "PUT", &url, &[], Some(data))?;
        Ok(Uploaded {
            etag: reply.etag,
            crc: None,
        })
    }

    fn complete(&self, upload: &str, _parts: &BTreeMap<u16, Uploaded>) -> Result<()> {
        let url = self.access(upload, "")?;
        self.http
            .send("committing the upload", "POST", &url, &[], Some(&[]))
            .map(|_| ())
    }

    fn set_cancel(&mut self, cancel: imgconv::CancelToken) {
        self.http.cancel = cancel;
    }

    fn abort(&self, upload: &str) {
        if let Ok(url) = self.access(upload, "") {
            let _ = self
                .http
                .send("aborting the upload", "DELETE", &url, &[], None);
        }
    }

    /// The PAR protocol has no request that lists an upload's parts.
    fn list_parts(&self, _upload: &str) -> Result<Option<BTreeMap<u16, Listed>>> {
        Ok(None)
    }

    fn reuse(&self, _listed: &Listed, _data: &[u8], _md5: &str) -> Option<Uploaded> {
        None
    }
}

/// A sink that uploads the stream through an OCI object PAR. Dropped without
/// [`imgconv::Sink::finish`], it aborts the multipart upload.
pub struct ParSink(PartSink<Par>);

delegate_sink!(ParSink);

impl ParSink {
    /// A sink for an output of about `expected_size` bytes. Nothing is sent until the first
    /// part is full (a PAR cannot be checked without writing).
    pub fn create(config: &ParConfig, url: &ParUrl, expected_size: u64) -> Result<ParSink> {
        let part_size = config.transfer.part_len(expected_size)?;
        let par = Par {
            http: config.transfer.http(url.to_string(), oci_error),
            url: url.clone(),
        };
        Ok(ParSink(PartSink::new(
            par,
            &config.transfer,
            part_size,
            crate::parts::MAX_PARTS,
        )))
    }

    /// Abort a multipart upload (its `accessUri`) that a process could not finish.
    pub fn abort_upload(config: &ParConfig, url: &ParUrl, access_uri: &str) {
        let par = Par {
            http: config.transfer.http(url.to_string(), oci_error),
            url: url.clone(),
        };
        par.abort(access_uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_urls_parse_and_never_show_the_token() -> Result<()> {
        let u = ParUrl::parse(
            "https://objectstorage.us-phoenix-1.oraclecloud.com/p/SeCrEt/n/ns/b/bkt/o/dir/disk.qcow2",
        )?;
        assert_eq!(u.object(), "dir/disk.qcow2");
        assert!(!u.to_string().contains("SeCrEt"));
        assert!(!format!("{u:?}").contains("SeCrEt"));
        for bad in [
            "https://host/n/ns/b/bkt/o/x",
            "https://host/p/t/n/ns/b/bkt/o/",
            "ftp://host/p/t/o/x",
            "https://host/p/t/n/ns/b/bkt/o/x?y=1",
        ] {
            assert!(ParUrl::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn oci_errors_map_to_kinds() {
        let e = oci_error(
            404,
            r#"{"code":"NotAuthorizedOrNotFound","message":"x"}"#,
            "uploading",
            "o",
        );
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
        assert!(e.message().contains("expired"));
        let e = oci_error(400, "", "uploading", "o");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
