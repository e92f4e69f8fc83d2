//! The cloud "export image" APIs on top of [`crate::jobs`]: each adapter takes the request a
//! service received (body, path id, headers) and answers the response it must return, in the
//! provider's own shape, field names and error structure.
//!
//! | API | request | answer | status words |
//! | --- | --- | --- | --- |
//! | `aws` | EC2 `ExportImage` | `ExportImageTaskId`, `Status`, `Progress`, ... | active, completed, deleting, deleted |
//! | `aws` | EC2 `CreateInstanceExportTask` (`ContainerFormat` `ova`, or the disk alone) | `ExportTask`: `ExportTaskId`, `State`, `ExportToS3Task` | active, cancelling, cancelled, completed |
//! | `oci` | `ExportImage` (`ExportImageDetails`, `opc-retry-token`, `if-match`) | the image, `opc-work-request-id` | ACCEPTED, IN_PROGRESS, SUCCEEDED, FAILED, CANCELING, CANCELED |
//! | `huawei-ims` | `POST /v1/cloudimages/{image_id}/file` | `job_id` | INIT, RUNNING, SUCCESS, FAIL |
//! | `huawei-evs` | `os-volume_upload_image` | `os-volume_upload_image` | uploading, active, error |
//! | `zstack` | `ExportImageFromBackupStorage` | `imageUrl`, `exportMd5Sum` | (job) Processing, Succeeded, Failed |
//!
//! ZVHD and ZVHD2 (Huawei) have no public specification: such requests get the provider's
//! error, never a file under that name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use imgconv::{Error, ErrorKind};
use serde_json::{json, Value};

use crate::jobs::{fingerprint, Job, JobSpec, JobStore, Stores, Submitted, TargetSpec};

mod aws;
mod huawei;
mod oci;
mod zstack;

use aws::{aws_describe, aws_submit};
use huawei::{evs_submit, huawei_job, ims_submit};
pub use oci::oci_image_etag;
use oci::{oci_submit, oci_work_request};
use zstack::{zstack_result, zstack_submit};

/// The APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// AWS EC2 ExportImage.
    Aws,
    /// OCI Compute ExportImage.
    Oci,
    /// Huawei Cloud IMS image export.
    HuaweiIms,
    /// Huawei Cloud EVS `os-volume_upload_image`.
    HuaweiEvs,
    /// ZStack ExportImageFromBackupStorage.
    Zstack,
}

impl std::str::FromStr for Api {
    type Err = Error;
    fn from_str(s: &str) -> Result<Api, Error> {
        Ok(match s {
            "aws" => Api::Aws,
            "oci" => Api::Oci,
            "huawei-ims" => Api::HuaweiIms,
            "huawei-evs" => Api::HuaweiEvs,
            "zstack" => Api::Zstack,
            other => {
                return Err(Error::invalid_argument(format!(
                    "unknown API '{other}' (aws, oci, huawei-ims, huawei-evs, zstack)"
                )))
            }
        })
    }
}

impl Api {
    /// The name jobs are stored under.
    pub fn name(self) -> &'static str {
        match self {
            Api::Aws => "aws",
            Api::Oci => "oci",
            Api::HuaweiIms => "huawei-ims",
            Api::HuaweiEvs => "huawei-evs",
            Api::Zstack => "zstack",
        }
    }
}

/// What the service knows that the request does not say: the image the request names, and
/// where buckets and folders are.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The disk the request's image (or volume) id stands for.
    pub source: PathBuf,
    /// The id in the request's path (OCI and IMS image id, EVS volume id), if any.
    pub path_id: Option<String>,
    /// Request headers, names in lower case (`opc-retry-token`, `if-match`).
    pub headers: BTreeMap<String, String>,
    /// S3-compatible endpoint and region for bucket destinations.
    pub endpoint: Option<(String, String)>,
    /// For EVS, which names no destination: bucket and key prefix.
    pub bucket: Option<(String, String)>,
    /// For ZStack: the folder the backup storage serves, and its base URL.
    pub publish: Option<(PathBuf, String)>,
    /// For EVS: the volume is attached (then `force` is needed).
    pub in_use: bool,
    /// For OCI's own format: the image's `image_metadata.json` (its launch options, OS),
    /// which the request does not carry; `None` writes [`crate::oci_image_metadata`].
    pub oci_metadata: Option<Value>,
    /// The object storage keys (a dry run checks them); `None`: the environment's.
    pub credentials: Option<crate::Credentials>,
    /// For EVS: a folder to make the new image in (it is registered in the store's image
    /// catalogue under the answered `image_id`), instead of an object in [`Context::bucket`].
    pub image_store: Option<PathBuf>,
    /// The account the caller acts for: the job is its own ([`crate::jobs::DEFAULT_ACCOUNT`]
    /// when empty).
    pub account: String,
    /// The buckets (`bucket`, or `bucket/prefix/`) the account may export into; `None`:
    /// every bucket. A destination outside them is refused before anything is written.
    pub buckets: Option<Vec<String>>,
    /// Sign the upload with the account's own object-storage keys (the job names the
    /// account; the runner finds its keys), instead of [`Context::credentials`].
    pub own_keys: bool,
    /// The key id of the caller (recorded with a new job, for the audit lines).
    pub caller_key: String,
    /// The provider's request id of this request (recorded with a new job).
    pub request_id: String,
}

impl Context {
    /// The account the caller acts for.
    pub fn account(&self) -> &str {
        if self.account.is_empty() {
            crate::jobs::DEFAULT_ACCOUNT
        } else {
            &self.account
        }
    }

    /// Whether the account may write `key` into `bucket`.
    pub fn may_write(&self, bucket: &str, key: &str) -> bool {
        let Some(grants) = &self.buckets else {
            return true;
        };
        grants.iter().any(|g| match g.split_once('/') {
            // `bucket/prefix`: keys under the prefix only (a prefix ends where it says).
            Some((b, prefix)) => b == bucket && key.starts_with(prefix),
            None => g == bucket,
        })
    }
}

/// An answer: HTTP status, body, and the job to run (a new one).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: Value,
    /// Response headers (OCI's `opc-work-request-id`, `etag`).
    pub headers: BTreeMap<String, String>,
    /// A job that was created and should now be run.
    pub run: Option<String>,
}

/// A provider-level error: its HTTP status, code and message.
#[derive(Debug, Clone)]
struct ApiError {
    status: u16,
    code: String,
    message: String,
}

fn bad(code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: 400,
        code: code.into(),
        message: message.into(),
    }
}

impl Api {
    fn error(self, e: &ApiError) -> Reply {
        let request_id = uuid::Uuid::new_v4().to_string();
        let body = match self {
            Api::Aws => json!({
                "Errors": [{ "Code": e.code, "Message": e.message }],
                "RequestID": request_id,
            }),
            Api::Oci => json!({ "code": e.code, "message": e.message }),
            Api::HuaweiIms | Api::HuaweiEvs => {
                json!({ "error": { "code": e.code, "message": e.message } })
            }
            Api::Zstack => json!({
                "error": { "code": e.code, "description": e.message, "details": e.message }
            }),
        };
        Reply {
            status: e.status,
            body,
            headers: BTreeMap::new(),
            run: None,
        }
    }

    /// Map a library error to this API's codes.
    fn error_of(self, e: &Error) -> ApiError {
        let (status, code) = match (self, e.kind()) {
            (Api::Aws, ErrorKind::AlreadyExists) => (400, "IdempotentParameterMismatch"),
            (Api::Aws, ErrorKind::NotFound) => (400, "InvalidExportImageTaskId.NotFound"),
            (Api::Aws, ErrorKind::InvalidArgument) => (400, "IncorrectState"),
            (Api::Aws, _) => (500, "InternalError"),
            // Not IncorrectState: the SDK retries that one for minutes.
            (Api::Oci, ErrorKind::AlreadyExists) => (409, "InvalidatedRetryToken"),
            (Api::Oci, ErrorKind::NotFound) => (404, "NotAuthorizedOrNotFound"),
            (Api::Oci, ErrorKind::InvalidArgument) => (409, "IncorrectState"),
            (Api::Oci, _) => (500, "InternalServerError"),
            (Api::HuaweiIms, ErrorKind::NotFound) => (404, "IMG.0001"),
            (Api::HuaweiIms, _) => (400, "IMG.0001"),
            (Api::HuaweiEvs, ErrorKind::NotFound) => (404, "EVS.5404"),
            (Api::HuaweiEvs, _) => (400, "EVS.2024"),
            (Api::Zstack, _) => (503, "SYS.1006"),
        };
        ApiError {
            status,
            code: code.into(),
            message: e.message().to_string(),
        }
    }

    /// Handle an export request.
    ///
    /// A store connection is taken for each store operation only: none is held while the
    /// image is opened or measured or the storage is contacted.
    pub fn submit(self, stores: &impl Stores, ctx: &Context, request: &Value) -> Reply {
        let outcome = match self {
            Api::Aws => aws_submit(stores, ctx, request),
            Api::Oci => oci_submit(stores, ctx, request),
            Api::HuaweiIms => ims_submit(stores, ctx, request),
            Api::HuaweiEvs => evs_submit(stores, ctx, request),
            Api::Zstack => zstack_submit(stores, ctx, request),
        };
        outcome.unwrap_or_else(|e| self.error(&e))
    }

    /// Describe a job of `account` (AWS DescribeExportImageTasks, OCI GetWorkRequest, Huawei
    /// job query, ZStack API job): another account's job is not found.
    pub fn describe(self, store: &JobStore, account: &str, id: &str) -> Reply {
        match store.get_of(id, account) {
            Ok(job) if job.provider == self.name() => {
                let mut r = ok(self.describe_body(&job));
                if self == Api::Zstack && !job.state.is_final() {
                    r.status = 202;
                }
                r
            }
            Ok(_) => self.error(&self.error_of(&Error::new(
                ErrorKind::NotFound,
                format!("no export job '{id}'"),
            ))),
            Err(e) => self.error(&self.error_of(&e)),
        }
    }

    /// Every job of this API that `account` submitted.
    pub fn list(self, store: &JobStore, account: &str) -> Reply {
        match store.list(self.name(), account) {
            Ok(jobs) => {
                let items: Vec<Value> = jobs.iter().map(|j| self.describe_body(j)).collect();
                ok(match self {
                    Api::Aws => json!({
                        "ExportImageTasks": items
                            .iter()
                            .filter_map(|v| v.get("ExportImageTasks").map(|t| t[0].clone()))
                            .collect::<Vec<_>>(),
                        "ExportTasks": items
                            .iter()
                            .filter_map(|v| v.get("ExportTasks").map(|t| t[0].clone()))
                            .collect::<Vec<_>>(),
                    }),
                    _ => json!(items),
                })
            }
            Err(e) => self.error(&self.error_of(&e)),
        }
    }

    /// Cancel a job of `account` (AWS CancelExportTask, OCI CancelWorkRequest, ...): another
    /// account's job is not found, and nothing changes. A queued job's kept upload is aborted
    /// with no store connection held.
    pub fn cancel(self, stores: &impl Stores, account: &str, id: &str) -> Reply {
        let outcome = stores.with(|store| {
            store.get_of(id, account).and_then(|j| {
                if j.provider == self.name() {
                    store.cancel_deferring(id)
                } else {
                    Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no export job '{id}'"),
                    ))
                }
            })
        });
        let outcome = outcome.and_then(|(job, pending)| match pending {
            Some(p) => {
                p.run();
                stores.with(|s| s.forget_upload(id).and_then(|()| s.get(id)))
            }
            None => Ok(job),
        });
        match outcome {
            Ok(job) => match self {
                Api::Aws => ok(json!({})),
                _ => ok(self.describe_body(&job)),
            },
            Err(e) => self.error(&self.error_of(&e)),
        }
    }

    fn describe_body(self, job: &Job) -> Value {
        match self {
            Api::Aws => aws_describe(job),
            Api::Oci => oci_work_request(job),
            Api::HuaweiIms => huawei_job(job, "exportImage"),
            Api::HuaweiEvs => huawei_job(job, "volumeUploadImage"),
            Api::Zstack => zstack_result(job),
        }
    }
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body,
        headers: BTreeMap::new(),
        run: None,
    }
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

/// `n` (at most 32) random lower-case hex digits.
fn hex_id(n: usize) -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(n);
    id
}

/// `YYYY-MM-DDThh:mm:ssZ` (RFC 3339, UTC) of `unix` seconds, as the APIs show times.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Submit and turn the outcome into a reply with `body`.
#[allow(clippy::too_many_arguments)]
fn submit_job(
    api: Api,
    stores: &impl Stores,
    ctx: &Context,
    id: &str,
    token: Option<&str>,
    request: &Value,
    spec: &JobSpec,
    echo: &Value,
) -> Result<(Job, bool), ApiError> {
    // The request and the image it names; not the job's own (random) id or object key.
    let fp = fingerprint(&json!({ "request": request, "source": spec.source }));
    stores.with(
        |store| match store.submit(api.name(), ctx.account(), id, token, &fp, spec, echo) {
            Ok(Submitted::New(job)) => {
                store
                    .record_origin(
                        &job.id,
                        &ctx.caller_key,
                        &ctx.request_id,
                        ctx.path_id.as_deref(),
                    )
                    .map_err(|e| api.error_of(&e))?;
                store.audit(&job.id, "submitted");
                Ok((job, true))
            }
            Ok(Submitted::Existing(job)) => Ok((job, false)),
            Err(e) => Err(api.error_of(&e)),
        },
    )
}

fn reply_for(job: &Job, new: bool, body: Value) -> Reply {
    Reply {
        status: 200,
        body,
        headers: BTreeMap::new(),
        run: new.then(|| job.id.clone()),
    }
}

fn s3_target(api: Api, ctx: &Context, bucket: &str, key: &str) -> Result<TargetSpec, ApiError> {
    if !ctx.may_write(bucket, key) {
        return Err(api.access_denied(bucket, key));
    }
    let (endpoint, region) = ctx.endpoint.clone().ok_or_else(|| ApiError {
        status: 500,
        code: "InternalError".into(),
        message: "no object storage endpoint is configured for this service".into(),
    })?;
    Ok(TargetSpec::S3 {
        endpoint,
        region,
        bucket: bucket.into(),
        key: key.into(),
        keys: ctx.own_keys.then(|| ctx.account().to_string()),
    })
}

impl Api {
    /// The provider's answer to a destination the account was not granted.
    fn access_denied(self, bucket: &str, key: &str) -> ApiError {
        let (status, code) = match self {
            Api::Aws => (403, "UnauthorizedOperation"),
            Api::Oci => (404, "NotAuthorizedOrNotFound"),
            Api::HuaweiIms => (403, "IMG.0003"),
            Api::HuaweiEvs => (403, "EVS.1003"),
            Api::Zstack => (403, "SYS.1002"),
        };
        ApiError {
            status,
            code: code.into(),
            message: format!(
                "You are not authorized to write s3://{bucket}/{key}: the bucket is not \
                 granted to this account"
            ),
        }
    }
}

fn image_size(ctx: &Context) -> Result<u64, Error> {
    imgconv::open_image(&ctx.source, None).map(|r| r.virtual_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_a_bucket_or_the_keys_under_a_bucket_prefix() {
        let ctx = |grants: Option<&[&str]>| Context {
            buckets: grants.map(|g| g.iter().map(|s| s.to_string()).collect()),
            ..Context::default()
        };
        assert!(ctx(None).may_write("any", "key"));
        let c = ctx(Some(&["team-a", "shared/team-a/"]));
        assert!(c.may_write("team-a", "x/y.raw"));
        assert!(c.may_write("shared", "team-a/y.raw"));
        assert!(!c.may_write("shared", "team-b/y.raw"));
        assert!(!c.may_write("shared", "team-a"));
        assert!(!c.may_write("team-a-other", "x"));
        assert!(!c.may_write("team", "a/x"));
        assert!(!ctx(Some(&[])).may_write("team-a", "x"));
        assert_eq!(ctx(None).account(), crate::jobs::DEFAULT_ACCOUNT);
    }

    #[test]
    fn times_are_rfc3339_utc_and_ids_are_fresh_hex() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        let (a, b) = (hex_id(17), hex_id(17));
        assert_ne!(a, b);
        assert!(
            a.len() == 17 && a.chars().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }
}
