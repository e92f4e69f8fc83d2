//! OCI Compute: `ExportImage` (`ExportImageDetails`, `opc-retry-token`, `if-match`), its work
//! request (ACCEPTED, IN_PROGRESS, SUCCEEDED, FAILED, CANCELING, CANCELED) and the image's
//! `GetImage` view with its `etag`.
//!
//! The typed request is what the HTTP body and headers (`wire`) and the command line's
//! JSON (the SDK's `ExportImageDetails` field names) both parse into.

mod wire;

use imgconv::{Error, ErrorKind, Format};
use imgconv_export::jobs::{fingerprint, Job, JobState, JobStore, Stores, TargetSpec};
use serde::{Deserialize, Serialize};

use super::shared::{
    cancel_job, find_job, hex_id, json_request, record, submit_job, Answer, CliRequest, CliStore,
    Context, Failure, Submission,
};

registration!("OCI's entry points.", "oci", [KIND]);

/// The name OCI's jobs are stored under.
pub(crate) const KIND: &str = "oci";

/// `ExportImageDetails` (its subtypes `ExportImageViaObjectStorageUriDetails`,
/// `...TupleDetails`, told apart by `destinationType`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportImageDetails {
    /// `objectStorageUri` or `objectStorageTuple`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_type: Option<String>,
    /// The object's URL, or a pre-authenticated request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_uri: Option<String>,
    /// The namespace (tuple).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_name: Option<String>,
    /// The bucket (tuple).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,
    /// The object (tuple).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_name: Option<String>,
    /// QCOW2, VMDK, OCI (default), VHD or VDI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_format: Option<String>,
}

/// `ExportImage`: the image in the path, the details in the body, and two headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportImage {
    /// The image's OCID.
    pub image_id: String,
    /// The body.
    pub details: ExportImageDetails,
    /// `opc-retry-token`.
    pub retry_token: Option<String>,
    /// `if-match`.
    pub if_match: Option<String>,
}

/// What an export job records: the details (a pre-authenticated request's URL masked) and
/// the image with its etag then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(flatten)]
    details: ExportImageDetails,
    #[serde(default)]
    image_id: String,
    #[serde(default)]
    etag: String,
}

/// An image as `GetImage` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The OCID.
    pub id: String,
    /// The compartment.
    pub compartment_id: Option<String>,
    /// The name.
    pub display_name: String,
    /// AVAILABLE or EXPORTING.
    pub lifecycle_state: String,
    /// `Custom`.
    pub operating_system: String,
    /// Empty.
    pub operating_system_version: String,
    /// Yes.
    pub create_image_allowed: bool,
    /// `PARAVIRTUALIZED`.
    pub launch_mode: String,
    /// RFC 3339.
    pub time_created: String,
}

impl Image {
    /// The view of image `id` in `compartment`.
    pub fn new(id: &str, compartment: Option<&str>, state: &str, created: u64) -> Image {
        Image {
            id: id.into(),
            compartment_id: compartment.map(str::to_string),
            display_name: id.into(),
            lifecycle_state: state.into(),
            operating_system: "Custom".into(),
            operating_system_version: String::new(),
            create_image_allowed: true,
            launch_mode: "PARAVIRTUALIZED".into(),
            time_created: imgconv_export::jobs::rfc3339(created),
        }
    }
}

/// A work request's resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// `image`.
    pub entity_type: String,
    /// `RELATED`.
    pub action_type: String,
    /// The image's OCID.
    pub identifier: String,
}

/// A work request's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkRequestError {
    /// The code.
    pub code: String,
    /// The message.
    pub message: String,
}

/// A work request as `GetWorkRequest` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkRequest {
    /// Its OCID.
    pub id: String,
    /// `ExportImage`.
    pub operation_type: String,
    /// ACCEPTED, IN_PROGRESS, SUCCEEDED, FAILED, CANCELING, CANCELED.
    pub status: String,
    /// The compartment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compartment_id: Option<String>,
    /// 0 to 100.
    pub percent_complete: f64,
    /// RFC 3339.
    pub time_accepted: String,
    /// Once started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_started: Option<String>,
    /// Once ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_finished: Option<String>,
    /// The image.
    pub resources: Vec<Resource>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<WorkRequestError>>,
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::bad("InvalidParameter", message)
}

/// OCI's codes for the store's errors.
pub(crate) fn store_failure(e: &Error) -> Failure {
    let (status, code) = match e.kind() {
        ErrorKind::AlreadyExists => (409, "InvalidatedRetryToken"),
        ErrorKind::NotFound => (404, "NotAuthorizedOrNotFound"),
        // Not IncorrectState: the SDK retries that one for minutes.
        ErrorKind::InvalidArgument => (409, "IncorrectState"),
        // The job database is away: never "not found", which a waiter takes as gone.
        ErrorKind::Io => (503, "ServiceUnavailable"),
        _ => (500, "InternalServerError"),
    };
    Failure::new(status, code, e.message())
}

/// OCI's not-found, which is also its answer to what the caller may not see.
pub(crate) fn not_found() -> Failure {
    Failure::new(
        404,
        "NotAuthorizedOrNotFound",
        "Authorization failed or requested resource not found.",
    )
}

/// The etag of the OCI image whose disk is `source` (what `GetImage` answers and
/// `ExportImage`'s `if-match` is compared with): changes when the file does.
pub fn image_etag(source: &std::path::Path) -> String {
    let meta = std::fs::metadata(source).ok();
    let stamp = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let len = meta.map(|m| m.len()).unwrap_or(0);
    fingerprint(&serde_json::json!([len, stamp.to_string()]))[..32].to_string()
}

/// The destination of `details`.
fn target(ctx: &Context, d: &ExportImageDetails) -> Result<TargetSpec, Failure> {
    let denied = |m: String| Failure::new(404, "NotAuthorizedOrNotFound", m);
    match d.destination_type.as_deref() {
        Some("objectStorageUri") => {
            let uri = d
                .destination_uri
                .as_deref()
                .ok_or_else(|| Failure::bad("MissingParameter", "destinationUri is required"))?;
            if imgconv_export::ParUrl::looks_like(uri) {
                imgconv_export::ParUrl::parse(uri).map_err(|e| invalid(e.message()))?;
                return Ok(TargetSpec::Par { url: uri.into() });
            }
            // https://objectstorage.REGION.oraclecloud.com/n/NS/b/BUCKET/o/OBJECT
            let u = url::Url::parse(uri).map_err(|_| invalid("destinationUri is not a URL"))?;
            let parts: Vec<&str> = u.path().trim_start_matches('/').splitn(6, '/').collect();
            match parts.as_slice() {
                ["n", _, "b", bucket, "o", object] if !object.is_empty() => {
                    ctx.s3_target(bucket, object, denied)
                }
                _ => Err(invalid(
                    "destinationUri must be an object URL (/n/NS/b/BUCKET/o/OBJECT) or a pre-authenticated request",
                )),
            }
        }
        Some("objectStorageTuple") => {
            let bucket = d
                .bucket_name
                .as_deref()
                .ok_or_else(|| Failure::bad("MissingParameter", "bucketName is required"))?;
            let object = d
                .object_name
                .as_deref()
                .ok_or_else(|| Failure::bad("MissingParameter", "objectName is required"))?;
            ctx.s3_target(bucket, object, denied)
        }
        _ => Err(invalid(
            "destinationType must be objectStorageUri or objectStorageTuple",
        )),
    }
}

/// `ExportImage` of the context's disk: the work request's job (new, or the one its retry
/// token names) and the image's etag.
pub(crate) fn export_image(
    stores: &impl Stores,
    ctx: &Context,
    req: &ExportImage,
) -> Result<(Job, Option<String>, String), Failure> {
    let etag = image_etag(&ctx.source);
    if let Some(m) = &req.if_match {
        if m != &etag && m != "*" {
            return Err(Failure::new(
                412,
                "NoEtagMatch",
                "The if-match header does not match the image's current etag",
            ));
        }
    }
    let d = &req.details;
    let format = d.export_format.as_deref().unwrap_or("OCI");
    let (fmt, oci_archive) = match format {
        "QCOW2" => (Format::Qcow2, false),
        "VMDK" => (Format::Vmdk, false),
        "VHD" => (Format::Vhd, false),
        "VDI" => (Format::Vdi, false),
        "OCI" => (Format::Qcow2, true),
        other => {
            return Err(invalid(format!(
                "exportFormat '{other}' is not one of QCOW2, VMDK, OCI, VHD, VDI"
            )))
        }
    };
    let target = target(ctx, d)?;
    let par = matches!(target, TargetSpec::Par { .. });
    let mut spec = ctx.job(fmt, vec![], target);
    spec.oci_archive = oci_archive;
    spec.oci_metadata = ctx.oci_metadata.clone().filter(|_| oci_archive);
    let mut details = d.clone();
    if par {
        // A pre-authenticated request's URL is a secret: not echoed.
        details.destination_uri = Some("<pre-authenticated request>".into());
    }
    let record = Record {
        details,
        image_id: req.image_id.clone(),
        etag: etag.clone(),
    };
    let id = format!("ocid1.coreservicesworkrequest.oc1..{}", hex_id(32));
    let accepted = submit_job(
        stores,
        ctx,
        &spec,
        Submission {
            kind: KIND,
            id: &id,
            token: req.retry_token.as_deref(),
            request: d,
            echo: &record,
            subject: Some(&req.image_id),
            failure: store_failure,
        },
    )?;
    let run = accepted.run();
    Ok((accepted.job, run, etag))
}

/// A job as its work request.
pub(crate) fn work_request(job: &Job, compartment: Option<&str>) -> WorkRequest {
    let status = match (job.state, job.cancel_requested) {
        (JobState::Queued, _) => "ACCEPTED",
        (JobState::Active, true) => "CANCELING",
        (JobState::Active, false) => "IN_PROGRESS",
        (JobState::Completed, _) => "SUCCEEDED",
        (JobState::Failed, _) => "FAILED",
        (JobState::Cancelled, _) => "CANCELED",
    };
    let accepted = imgconv_export::jobs::rfc3339(job.created);
    let r: Record = record(job);
    WorkRequest {
        id: job.id.clone(),
        operation_type: "ExportImage".into(),
        status: status.into(),
        compartment_id: compartment.map(str::to_string),
        percent_complete: f64::from(job.progress),
        time_started: (status != "ACCEPTED").then(|| accepted.clone()),
        time_accepted: accepted,
        time_finished: job
            .state
            .is_final()
            .then(|| imgconv_export::jobs::rfc3339(job.updated)),
        resources: vec![Resource {
            entity_type: "image".into(),
            action_type: "RELATED".into(),
            identifier: r.image_id,
        }],
        errors: (job.state == JobState::Failed).then(|| {
            vec![WorkRequestError {
                code: "InternalError".into(),
                message: job.message.clone(),
            }]
        }),
    }
}

/// The work request `id` of `account`; another account's is not found.
pub(crate) fn get_work_request(
    store: &mut JobStore,
    account: &str,
    id: &str,
    compartment: Option<&str>,
) -> Result<WorkRequest, Failure> {
    match find_job(store, account, &[KIND], id) {
        Ok(Some(job)) => Ok(work_request(&job, compartment)),
        Ok(None) => Err(not_found()),
        Err(e) => Err(store_failure(&e)),
    }
}

/// `ListWorkRequests` of `account` in `compartment` (the service's), those about
/// `resource` (an image's OCID) if given, from `page` (an offset) on, at most `limit`: the
/// page and the next page's token. Another account's work requests are never listed.
pub(crate) fn list_work_requests(
    store: &mut JobStore,
    account: &str,
    compartment: Option<&str>,
    resource: Option<&str>,
    page: usize,
    limit: usize,
) -> Result<(Vec<WorkRequest>, Option<String>), Failure> {
    let jobs = store.list(KIND, account).map_err(|e| store_failure(&e))?;
    let all: Vec<WorkRequest> = jobs
        .iter()
        .map(|j| work_request(j, compartment))
        .filter(|w| resource.is_none_or(|r| w.resources.iter().any(|x| x.identifier == r)))
        .collect();
    let next = (page + limit < all.len()).then(|| (page + limit).to_string());
    Ok((all.into_iter().skip(page).take(limit).collect(), next))
}

/// The error body of OCI (`code`, `message`).
fn error_json(_request_id: &str, f: &Failure) -> serde_json::Value {
    serde_json::json!({ "code": f.code, "message": f.message })
}

fn cli_submit(stores: &CliStore<'_>, ctx: &Context, r: &CliRequest<'_>) -> Result<Answer, Failure> {
    let image_id = r.path_id.ok_or_else(|| {
        Failure::bad(
            "MissingParameter",
            "the image OCID is missing from the path",
        )
    })?;
    let req = ExportImage {
        image_id: image_id.into(),
        details: json_request(r.body, invalid)?,
        retry_token: r.header("opc-retry-token"),
        if_match: r.header("if-match"),
    };
    let (job, run, etag) = export_image(stores, ctx, &req)?;
    let image = Image::new(image_id, None, "EXPORTING", job.created);
    Ok(Answer {
        headers: vec![
            ("opc-work-request-id".into(), job.id.clone()),
            ("etag".into(), etag),
        ],
        run,
        ..Answer::ok(&image)
    })
}

fn cli_describe(store: &mut JobStore, account: &str, id: &str) -> Result<Answer, Failure> {
    get_work_request(store, account, id, None).map(|w| Answer::ok(&w))
}

fn cli_list(store: &mut JobStore, account: &str, _kind: &str) -> Result<Answer, Failure> {
    let jobs = store.list(KIND, account).map_err(|e| store_failure(&e))?;
    let items: Vec<WorkRequest> = jobs.iter().map(|j| work_request(j, None)).collect();
    Ok(Answer::ok(&items))
}

fn cli_cancel(stores: &CliStore<'_>, account: &str, id: &str) -> Result<Answer, Failure> {
    match cancel_job(stores, account, &[KIND], id) {
        Ok(Some(job)) => Ok(Answer::ok(&work_request(&job, None))),
        Ok(None) => Err(not_found()),
        Err(e) => Err(store_failure(&e)),
    }
}
