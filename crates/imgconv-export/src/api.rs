//! The cloud "export image" APIs on top of [`crate::jobs`]: each adapter takes the request a
//! service received (body, path id, headers) and answers the response it must return, in the
//! provider's own shape, field names and error structure.
//!
//! | API | request | answer | status words |
//! | --- | --- | --- | --- |
//! | `aws` | EC2 `ExportImage` | `ExportImageTaskId`, `Status`, `Progress`, ... | active, completed, deleting, deleted |
//! | `oci` | `ExportImage` (`ExportImageDetails`, `opc-retry-token`, `if-match`) | the image, `opc-work-request-id` | ACCEPTED, IN_PROGRESS, SUCCEEDED, FAILED, CANCELING, CANCELED |
//! | `huawei-ims` | `POST /v1/cloudimages/{image_id}/file` | `job_id` | INIT, RUNNING, SUCCESS, FAIL |
//! | `huawei-evs` | `os-volume_upload_image` | `os-volume_upload_image` | uploading, active, error |
//! | `zstack` | `ExportImageFromBackupStorage` | `imageUrl`, `exportMd5Sum` | (job) Processing, Succeeded, Failed |
//!
//! ZVHD and ZVHD2 (Huawei) have no public specification: such requests get the provider's
//! error, never a file under that name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use imgconv::clock::rfc3339;
use imgconv::ids::{random_u64, random_uuid, uuid_text, UuidLayout};
use imgconv::{Error, ErrorKind, Format};
use serde_json::{json, Value};

use crate::jobs::{fingerprint, Job, JobSpec, JobState, JobStore, Submitted, TargetSpec};

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
        let request_id = uuid_text(&random_uuid(UuidLayout::BigEndian));
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
    pub fn submit(self, store: &mut JobStore, ctx: &Context, request: &Value) -> Reply {
        let outcome = match self {
            Api::Aws => aws_submit(store, ctx, request),
            Api::Oci => oci_submit(store, ctx, request),
            Api::HuaweiIms => ims_submit(store, ctx, request),
            Api::HuaweiEvs => evs_submit(store, ctx, request),
            Api::Zstack => zstack_submit(store, ctx, request),
        };
        outcome.unwrap_or_else(|e| self.error(&e))
    }

    /// Describe a job (AWS DescribeExportImageTasks, OCI GetWorkRequest, Huawei job query,
    /// ZStack API job).
    pub fn describe(self, store: &JobStore, id: &str) -> Reply {
        match store.get(id) {
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

    /// Every job of this API.
    pub fn list(self, store: &JobStore) -> Reply {
        match store.list(self.name()) {
            Ok(jobs) => {
                let items: Vec<Value> = jobs.iter().map(|j| self.describe_body(j)).collect();
                ok(match self {
                    Api::Aws => json!({
                        "ExportImageTasks": items
                            .iter()
                            .map(|v| v["ExportImageTasks"][0].clone())
                            .collect::<Vec<_>>()
                    }),
                    _ => json!(items),
                })
            }
            Err(e) => self.error(&self.error_of(&e)),
        }
    }

    /// Cancel a job (AWS CancelExportTask, OCI CancelWorkRequest, ...).
    pub fn cancel(self, store: &JobStore, id: &str) -> Reply {
        match store.get(id).and_then(|j| {
            if j.provider == self.name() {
                store.cancel(id)
            } else {
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no export job '{id}'"),
                ))
            }
        }) {
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

fn hex_id(n: usize) -> String {
    let a = random_u64(n as u64);
    let b = random_u64(a);
    format!("{a:016x}{b:016x}")[..n].to_string()
}

/// Submit and turn the outcome into a reply with `body`.
#[allow(clippy::too_many_arguments)]
fn submit_job(
    api: Api,
    store: &mut JobStore,
    id: &str,
    token: Option<&str>,
    request: &Value,
    spec: &JobSpec,
    echo: &Value,
) -> Result<(Job, bool), ApiError> {
    // The request and the image it names; not the job's own (random) id or object key.
    let fp = fingerprint(&json!({ "request": request, "source": spec.source }));
    match store.submit(api.name(), id, token, &fp, spec, echo) {
        Ok(Submitted::New(job)) => Ok((job, true)),
        Ok(Submitted::Existing(job)) => Ok((job, false)),
        Err(e) => Err(api.error_of(&e)),
    }
}

fn reply_for(job: &Job, new: bool, body: Value) -> Reply {
    Reply {
        status: 200,
        body,
        headers: BTreeMap::new(),
        run: new.then(|| job.id.clone()),
    }
}

fn s3_target(ctx: &Context, bucket: &str, key: &str) -> Result<TargetSpec, ApiError> {
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
    })
}

fn image_size(ctx: &Context) -> Result<u64, Error> {
    imgconv::open_image(&ctx.source, None).map(|r| r.virtual_size())
}

// ---------------------------------------------------------------------------------------
// AWS EC2 ExportImage

fn aws_submit(store: &mut JobStore, ctx: &Context, req: &Value) -> Result<Reply, ApiError> {
    let format = str_field(req, "DiskImageFormat").ok_or_else(|| {
        bad(
            "MissingParameter",
            "The request must contain the parameter DiskImageFormat",
        )
    })?;
    let (fmt, ext, opts): (Format, &str, Vec<String>) = match format {
        "VMDK" => (Format::Vmdk, "vmdk", vec!["subformat=streamOptimized".into()]),
        "RAW" => (Format::Raw, "raw", vec![]),
        "VHD" => (Format::Vhd, "vhd", vec![]),
        other => {
            return Err(bad(
                "InvalidParameterValue",
                format!("Value ({other}) for parameter DiskImageFormat is invalid. Valid values: VMDK, RAW, VHD"),
            ))
        }
    };
    let image_id = str_field(req, "ImageId").ok_or_else(|| {
        bad(
            "MissingParameter",
            "The request must contain the parameter ImageId",
        )
    })?;
    let loc = req.get("S3ExportLocation").ok_or_else(|| {
        bad(
            "MissingParameter",
            "The request must contain the parameter S3ExportLocation",
        )
    })?;
    let bucket = str_field(loc, "S3Bucket").ok_or_else(|| {
        bad(
            "MissingParameter",
            "The request must contain the parameter S3ExportLocation.S3Bucket",
        )
    })?;
    let prefix = str_field(loc, "S3Prefix").unwrap_or("");
    let description = str_field(req, "Description").unwrap_or("");
    if description.chars().count() > 255 {
        return Err(bad(
            "InvalidParameterValue",
            "Value for parameter Description is invalid. The maximum length is 255 characters.",
        ));
    }
    let id = format!("export-ami-{}", hex_id(17));
    let key = format!("{prefix}{id}.{ext}");
    let spec = JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: opts,
        compress: false,
        target: s3_target(ctx, bucket, &key)?,
        oci_archive: false,
        oci_metadata: None,
    };
    let tags: Vec<Value> = req
        .get("TagSpecifications")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| str_field(t, "ResourceType") == Some("export-image-task"))
        .flat_map(|t| {
            t.get("Tags")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let mut echo = json!({
        "Description": description,
        "DiskImageFormat": format,
        "ImageId": image_id,
        "S3ExportLocation": loc,
        "Tags": tags,
    });
    if let Some(role) = str_field(req, "RoleName") {
        echo["RoleName"] = json!(role);
    }
    if req.get("DryRun").and_then(Value::as_bool) == Some(true) {
        // Validate what can be without uploading: the image opens, the bucket exists and the
        // keys are accepted.
        let size = image_size(ctx).map_err(|e| bad("InvalidParameterValue", e.message()))?;
        if fmt != Format::Vmdk {
            // The output is planned as the export would plan it (VMDK has no measure).
            let reader = imgconv::open_image(&ctx.source, None)
                .map_err(|e| bad("InvalidParameterValue", e.message()))?;
            imgconv::measure(
                &*reader,
                &imgconv::ConvertOptions::new(fmt),
                &imgconv::CancelToken::new(),
            )
            .map_err(|e| bad("InvalidParameterValue", e.message()))?;
        }
        if let TargetSpec::S3 {
            endpoint,
            region,
            bucket,
            key,
        } = &spec.target
        {
            let checked = crate::S3Config::new(endpoint, region).and_then(|c| {
                let creds = match &ctx.credentials {
                    Some(c) => c.clone(),
                    None => crate::Credentials::from_env()?,
                };
                let to = crate::S3Location {
                    bucket: bucket.clone(),
                    key: key.clone(),
                };
                crate::S3Sink::create(&c, creds, &to, size).map(drop)
            });
            match checked {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(bad(
                        "InvalidParameterValue",
                        format!("The given S3 bucket ({bucket}) does not exist."),
                    ))
                }
                Err(e) => {
                    return Err(ApiError {
                        status: 403,
                        code: "UnauthorizedOperation".into(),
                        message: e.message().to_string(),
                    })
                }
            }
        }
        return Err(ApiError {
            status: 412,
            code: "DryRunOperation".into(),
            message: "Request would have succeeded, but DryRun flag is set.".into(),
        });
    }
    let mut canonical = req.clone();
    if let Some(o) = canonical.as_object_mut() {
        o.remove("ClientToken");
    }
    let (job, new) = submit_job(
        Api::Aws,
        store,
        &id,
        str_field(req, "ClientToken"),
        &canonical,
        &spec,
        &echo,
    )?;
    let mut body = job.request.clone();
    body["ExportImageTaskId"] = json!(job.id);
    body["Progress"] = json!(job.progress.to_string());
    body["Status"] = json!("active");
    body["StatusMessage"] = json!("validating");
    Ok(reply_for(&job, new, body))
}

fn aws_describe(job: &Job) -> Value {
    let (status, message) = match (job.state, job.cancel_requested) {
        (JobState::Queued, _) => ("active", "validating".to_string()),
        (JobState::Active, true) => ("deleting", "cancelling".to_string()),
        (JobState::Active, false) => ("active", "converting".to_string()),
        (JobState::Completed, _) => ("completed", String::new()),
        (JobState::Cancelled, _) => ("deleted", "Task was cancelled.".to_string()),
        (JobState::Failed, _) => ("deleted", job.message.clone()),
    };
    let mut t = job.request.clone();
    t["ExportImageTaskId"] = json!(job.id);
    t["Status"] = json!(status);
    if !message.is_empty() {
        t["StatusMessage"] = json!(message);
    }
    if job.state == JobState::Active || job.state == JobState::Queued {
        t["Progress"] = json!(job.progress.to_string());
    }
    json!({ "ExportImageTasks": [t] })
}

// ---------------------------------------------------------------------------------------
// OCI ExportImage

/// The image's etag: changes when the source file does.
fn oci_etag(ctx: &Context) -> String {
    let meta = std::fs::metadata(&ctx.source).ok();
    let stamp = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let len = meta.map(|m| m.len()).unwrap_or(0);
    fingerprint(&json!([len, stamp.to_string()]))[..32].to_string()
}

fn oci_submit(store: &mut JobStore, ctx: &Context, req: &Value) -> Result<Reply, ApiError> {
    let image_id = ctx.path_id.clone().ok_or_else(|| {
        bad(
            "MissingParameter",
            "the image OCID is missing from the path",
        )
    })?;
    let etag = oci_etag(ctx);
    if let Some(m) = ctx.headers.get("if-match") {
        if m != &etag && m != "*" {
            return Err(ApiError {
                status: 412,
                code: "NoEtagMatch".into(),
                message: "The if-match header does not match the image's current etag".into(),
            });
        }
    }
    let format = str_field(req, "exportFormat").unwrap_or("OCI");
    let (fmt, oci_archive) = match format {
        "QCOW2" => (Format::Qcow2, false),
        "VMDK" => (Format::Vmdk, false),
        "VHD" => (Format::Vhd, false),
        "VDI" => (Format::Vdi, false),
        "OCI" => (Format::Qcow2, true),
        other => {
            return Err(bad(
                "InvalidParameter",
                format!("exportFormat '{other}' is not one of QCOW2, VMDK, OCI, VHD, VDI"),
            ))
        }
    };
    let target = match str_field(req, "destinationType") {
        Some("objectStorageUri") => {
            let uri = str_field(req, "destinationUri")
                .ok_or_else(|| bad("MissingParameter", "destinationUri is required"))?;
            if crate::ParUrl::looks_like(uri) {
                crate::ParUrl::parse(uri).map_err(|e| bad("InvalidParameter", e.message()))?;
                TargetSpec::Par { url: uri.into() }
            } else {
                // https://objectstorage.REGION.oraclecloud.com/n/NS/b/BUCKET/o/OBJECT
                let u = url::Url::parse(uri)
                    .map_err(|_| bad("InvalidParameter", "destinationUri is not a URL"))?;
                let parts: Vec<&str> = u.path().trim_start_matches('/').splitn(6, '/').collect();
                match parts.as_slice() {
                    ["n", _, "b", bucket, "o", object] if !object.is_empty() => {
                        s3_target(ctx, bucket, object)?
                    }
                    _ => {
                        return Err(bad(
                            "InvalidParameter",
                            "destinationUri must be an object URL (/n/NS/b/BUCKET/o/OBJECT) or a pre-authenticated request",
                        ))
                    }
                }
            }
        }
        Some("objectStorageTuple") => {
            let bucket = str_field(req, "bucketName")
                .ok_or_else(|| bad("MissingParameter", "bucketName is required"))?;
            let object = str_field(req, "objectName")
                .ok_or_else(|| bad("MissingParameter", "objectName is required"))?;
            s3_target(ctx, bucket, object)?
        }
        _ => {
            return Err(bad(
                "InvalidParameter",
                "destinationType must be objectStorageUri or objectStorageTuple",
            ))
        }
    };
    let id = format!("ocid1.coreservicesworkrequest.oc1..{}", hex_id(32));
    let spec = JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: vec![],
        compress: false,
        target,
        oci_archive,
        oci_metadata: if oci_archive {
            ctx.oci_metadata.clone()
        } else {
            None
        },
    };
    let mut echo = req.clone();
    if let Some(o) = echo.as_object_mut() {
        // A PAR URL is a secret: not echoed.
        if matches!(spec.target, TargetSpec::Par { .. }) {
            o.insert(
                "destinationUri".into(),
                json!("<pre-authenticated request>"),
            );
        }
        o.insert("imageId".into(), json!(image_id));
        o.insert("etag".into(), json!(etag));
    }
    let (job, new) = submit_job(
        Api::Oci,
        store,
        &id,
        ctx.headers.get("opc-retry-token").map(String::as_str),
        req,
        &spec,
        &echo,
    )?;
    let body = json!({
        "id": image_id,
        "lifecycleState": "EXPORTING",
        "timeCreated": rfc3339(job.created),
    });
    let mut reply = reply_for(&job, new, body);
    reply
        .headers
        .insert("opc-work-request-id".into(), job.id.clone());
    reply.headers.insert("etag".into(), etag);
    Ok(reply)
}

fn oci_work_request(job: &Job) -> Value {
    let status = match (job.state, job.cancel_requested) {
        (JobState::Queued, _) => "ACCEPTED",
        (JobState::Active, true) => "CANCELING",
        (JobState::Active, false) => "IN_PROGRESS",
        (JobState::Completed, _) => "SUCCEEDED",
        (JobState::Failed, _) => "FAILED",
        (JobState::Cancelled, _) => "CANCELED",
    };
    let mut w = json!({
        "id": job.id,
        "operationType": "ExportImage",
        "status": status,
        "percentComplete": f64::from(job.progress),
        "timeAccepted": rfc3339(job.created),
        "resources": [{
            "entityType": "image",
            "actionType": "RELATED",
            "identifier": job.request["imageId"],
        }],
    });
    if job.state.is_final() {
        w["timeFinished"] = json!(rfc3339(job.updated));
    }
    if job.state == JobState::Failed {
        w["errors"] = json!([{ "code": "InternalError", "message": job.message }]);
    }
    w
}

// ---------------------------------------------------------------------------------------
// Huawei IMS and EVS

const TB: u64 = 1 << 40;

fn zvhd_refusal(code: &str, format: &str) -> ApiError {
    ApiError {
        status: 400,
        code: code.into(),
        message: format!(
            "{format} has no public specification; imgconv does not write it (choose vhd, \
             qcow2 or vmdk)"
        ),
    }
}

fn ims_submit(store: &mut JobStore, ctx: &Context, req: &Value) -> Result<Reply, ApiError> {
    let image_id = ctx
        .path_id
        .clone()
        .ok_or_else(|| bad("IMG.0001", "the image_id is missing from the path"))?;
    let bucket_url = str_field(req, "bucket_url")
        .ok_or_else(|| bad("IMG.0001", "bucket_url is required (bucket:file)"))?;
    let (bucket, file) = bucket_url
        .split_once(':')
        .filter(|(b, f)| !b.is_empty() && !f.is_empty())
        .ok_or_else(|| bad("IMG.0001", "bucket_url must be in the form bucket:file"))?;
    let quick = req.get("is_quick_export").and_then(Value::as_bool) == Some(true);
    let requested = str_field(req, "file_format");
    if quick && requested.is_some() {
        return Err(bad(
            "IMG.0001",
            "file_format cannot be specified when is_quick_export is true",
        ));
    }
    let size = image_size(ctx).map_err(|e| bad("IMG.0001", e.message()))?;
    if size >= TB {
        return Err(bad(
            "IMG.0001",
            format!("the image is {size} bytes; images of 1 TB or more cannot be exported"),
        ));
    }
    let (fmt, opts) = if quick {
        // Fast export writes the image as it is stored.
        let f = imgconv::open_image(&ctx.source, None)
            .map(|r| r.format())
            .map_err(|e| bad("IMG.0001", e.message()))?;
        (f, vec![])
    } else {
        match requested {
            Some("qcow2") => (Format::Qcow2, vec![]),
            Some("vhd") => (Format::Vhd, vec![]),
            Some("vmdk") => (Format::Vmdk, vec![]),
            Some("zvhd") => return Err(zvhd_refusal("IMG.0001", "zvhd")),
            Some(other) => {
                return Err(bad(
                    "IMG.0001",
                    format!("file_format '{other}' is not one of qcow2, vhd, zvhd, vmdk"),
                ))
            }
            None => return Err(bad("IMG.0001", "file_format is required")),
        }
    };
    let id = uuid_text(&random_uuid(UuidLayout::BigEndian)).replace('-', "");
    let spec = JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: opts,
        compress: false,
        target: s3_target(ctx, bucket, file)?,
        oci_archive: false,
        oci_metadata: None,
    };
    let mut echo = req.clone();
    echo["image_id"] = json!(image_id);
    let (job, new) = submit_job(Api::HuaweiIms, store, &id, None, req, &spec, &echo)?;
    Ok(reply_for(&job, new, json!({ "job_id": job.id })))
}

fn huawei_job(job: &Job, job_type: &str) -> Value {
    let status = match job.state {
        JobState::Queued => "INIT",
        JobState::Active => "RUNNING",
        JobState::Completed => "SUCCESS",
        JobState::Failed | JobState::Cancelled => "FAIL",
    };
    let mut v = json!({
        "job_id": job.id,
        "job_type": job_type,
        "status": status,
        "begin_time": rfc3339(job.created),
        "end_time": if job.state.is_final() { rfc3339(job.updated) } else { String::new() },
        "entities": { "process_percent": f64::from(job.progress) / 100.0 },
    });
    if let Some(id) = job.request.get("image_id") {
        v["entities"]["image_id"] = id.clone();
    }
    if let Some(r) = &job.result {
        v["entities"]["location"] = json!(r.location);
        v["entities"]["size"] = json!(r.size);
        v["entities"]["md5"] = json!(r.md5);
    }
    if matches!(job.state, JobState::Failed | JobState::Cancelled) {
        v["error_code"] = json!("IMG.0001");
        v["fail_reason"] = json!(job.message);
    }
    v
}

fn evs_name_ok(name: &str) -> bool {
    let n = name.chars().count();
    (1..=128).contains(&n)
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
}

fn evs_submit(store: &mut JobStore, ctx: &Context, req: &Value) -> Result<Reply, ApiError> {
    let volume_id = ctx
        .path_id
        .clone()
        .ok_or_else(|| bad("EVS.2024", "the volume_id is missing from the path"))?;
    let body = req
        .get("os-volume_upload_image")
        .ok_or_else(|| bad("EVS.2024", "the request body needs os-volume_upload_image"))?;
    let name =
        str_field(body, "image_name").ok_or_else(|| bad("EVS.2024", "image_name is required"))?;
    if !evs_name_ok(name) {
        return Err(bad(
            "EVS.2024",
            "image_name must be 1 to 128 characters of letters, digits, spaces, hyphens (-), \
             underscores (_) and periods (.), and cannot start or end with a space",
        ));
    }
    let disk_format = str_field(body, "disk_format").unwrap_or("vhd");
    let fmt = match disk_format {
        "vhd" => Format::Vhd,
        "raw" => Format::Raw,
        "qcow2" => Format::Qcow2,
        "zvhd" | "zvhd2" => return Err(zvhd_refusal("EVS.2024", disk_format)),
        other => {
            return Err(bad(
                "EVS.2024",
                format!("disk_format '{other}' is not one of vhd, zvhd, zvhd2, raw, qcow2"),
            ))
        }
    };
    let container = str_field(body, "container_format").unwrap_or("bare");
    if !matches!(container, "bare" | "ovf") {
        return Err(bad(
            "EVS.2024",
            format!("container_format '{container}' is not one of bare, ovf"),
        ));
    }
    let force = body.get("force").and_then(Value::as_bool).unwrap_or(false);
    if ctx.in_use && !force {
        return Err(bad(
            "EVS.2024",
            "the volume is in use: set force to true to upload it anyway",
        ));
    }
    let size = image_size(ctx).map_err(|e| bad("EVS.2024", e.message()))?;
    let image_id = uuid_text(&random_uuid(UuidLayout::BigEndian));
    let file = format!("{image_id}.{disk_format}");
    let target = match (&ctx.image_store, &ctx.bucket) {
        (Some(dir), _) => TargetSpec::Folder {
            dir: dir.clone(),
            name: file.clone(),
            base_url: url::Url::from_directory_path(dir)
                .map(|u| u.to_string())
                .map_err(|()| ApiError {
                    status: 500,
                    code: "EVS.5400".into(),
                    message: "the image store must be an absolute folder".into(),
                })?,
        },
        (None, Some((bucket, prefix))) => s3_target(ctx, bucket, &format!("{prefix}{file}"))?,
        (None, None) => {
            return Err(ApiError {
                status: 500,
                code: "EVS.5400".into(),
                message: "no image bucket is configured for this service".into(),
            })
        }
    };
    let spec = JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: vec![],
        compress: false,
        target,
        oci_archive: false,
        oci_metadata: None,
    };
    let mut echo = json!({
        "id": volume_id,
        "image_id": image_id,
        "image_name": name,
        "disk_format": disk_format,
        "container_format": container,
        "size": size.div_ceil(1 << 30),
        "volume_type": {
            "id": "0c4f0fe4-3e8b-4a2f-8c5a-1d6f0c1b2a3e",
            "name": "SATA",
            "description": "",
            "extra_specs": {},
            "is_public": true,
            "qos_specs_id": null,
        },
        "display_description": "",
    });
    if let Some(os) = str_field(body, "__os_type") {
        echo["__os_type"] = json!(os);
    }
    let (job, new) = submit_job(Api::HuaweiEvs, store, &image_id, None, req, &spec, &echo)?;
    if let (Some(dir), true) = (&ctx.image_store, new) {
        store
            .register_image(&image_id, name, &dir.join(&file), fmt.name(), &job.id)
            .map_err(|e| Api::HuaweiEvs.error_of(&e))?;
    }
    let mut out = job.request.clone();
    out["status"] = json!("uploading");
    out["updated_at"] = json!(rfc3339(job.updated));
    Ok(reply_for(
        &job,
        new,
        json!({ "os-volume_upload_image": out }),
    ))
}

// ---------------------------------------------------------------------------------------
// ZStack ExportImageFromBackupStorage

fn zstack_submit(store: &mut JobStore, ctx: &Context, req: &Value) -> Result<Reply, ApiError> {
    let params = req.get("exportImageFromBackupStorage").ok_or_else(|| {
        bad(
            "SYS.1007",
            "the request body needs exportImageFromBackupStorage",
        )
    })?;
    let image =
        str_field(params, "imageUuid").ok_or_else(|| bad("SYS.1007", "imageUuid is required"))?;
    let format = str_field(params, "exportFormat").unwrap_or("qcow2");
    let fmt = match format {
        "qcow2" => Format::Qcow2,
        "raw" => Format::Raw,
        "vmdk" => Format::Vmdk,
        "vhd" => Format::Vhd,
        "vdi" => Format::Vdi,
        other => {
            return Err(bad(
                "SYS.1007",
                format!("exportFormat '{other}' is not one of qcow2, raw, vmdk, vhd, vdi"),
            ))
        }
    };
    let (dir, base) = ctx.publish.clone().ok_or_else(|| ApiError {
        status: 503,
        code: "SYS.1006".into(),
        message: "the backup storage has no published folder configured".into(),
    })?;
    // ZStack clients name their API job (X-Job-UUID, 32 hex digits); else one is made.
    let id = match ctx.headers.get("x-job-uuid") {
        Some(u) if u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit()) => u.to_lowercase(),
        Some(_) => return Err(bad("SYS.1007", "X-Job-UUID must be 32 hexadecimal digits")),
        None => uuid_text(&random_uuid(UuidLayout::BigEndian)).replace('-', ""),
    };
    let spec = JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: vec![],
        compress: false,
        target: TargetSpec::Folder {
            dir,
            name: format!("{image}.{format}"),
            base_url: base,
        },
        oci_archive: false,
        oci_metadata: None,
    };
    let echo = json!({ "imageUuid": image, "exportFormat": format });
    // The job's UUID doubles as its idempotency token: a client that sends it again gets
    // the same job.
    let token = ctx.headers.get("x-job-uuid").map(|_| id.clone());
    let (job, new) = submit_job(Api::Zstack, store, &id, token.as_deref(), req, &spec, &echo)?;
    let mut reply = reply_for(
        &job,
        new,
        json!({ "location": format!("/zstack/v1/api-jobs/{}", job.id) }),
    );
    reply.status = 202;
    Ok(reply)
}

fn zstack_result(job: &Job) -> Value {
    match (&job.state, &job.result) {
        (JobState::Completed, Some(r)) => json!({
            "imageUrl": r.location,
            "exportMd5Sum": r.md5,
        }),
        (JobState::Failed | JobState::Cancelled, _) => json!({
            "error": { "code": "SYS.1006", "description": "the export failed", "details": job.message }
        }),
        _ => json!({ "location": format!("/zstack/v1/api-jobs/{}", job.id) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evs_names_follow_the_rules() {
        assert!(evs_name_ok("test-image_1.0"));
        assert!(evs_name_ok("镜像 一"));
        assert!(!evs_name_ok(""));
        assert!(!evs_name_ok(" lead"));
        assert!(!evs_name_ok("trail "));
        assert!(!evs_name_ok("bad/char"));
        assert!(!evs_name_ok(&"x".repeat(129)));
        assert!(evs_name_ok(&"x".repeat(128)));
    }
}
