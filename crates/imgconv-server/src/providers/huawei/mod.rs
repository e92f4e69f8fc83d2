//! Huawei Cloud: IMS image export (`POST /v1/cloudimages/{image_id}/file`, `bucket_url`) and
//! EVS `os-volume_upload_image` (a new image from a volume), and their jobs (INIT, RUNNING,
//! SUCCESS, FAIL).
//!
//! The typed requests are what the HTTP bodies (`wire`) and the command line's JSON (the
//! SDKs' field names) both parse into.

mod wire;

use imgconv::{Error, ErrorKind, Format};
use imgconv_export::jobs::{Job, JobState, JobStore, Stores, TargetSpec};
use serde::{Deserialize, Serialize};

use super::shared::{
    cancel_job, find_job, json_request, record, submit_job, Answer, CliRequest, CliStore, Context,
    Failure, Submission,
};

registration!("Huawei's entry points (IMS and EVS).", "huawei", [IMS, EVS]);

/// The name IMS's export jobs are stored under.
pub(crate) const IMS: &str = "huawei-ims";
/// The name EVS's upload jobs are stored under.
pub(crate) const EVS: &str = "huawei-evs";

const TB: u64 = 1 << 40;

/// IMS `ExportImage`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportImageBody {
    /// `bucket:file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_url: Option<String>,
    /// qcow2, vhd, zvhd or vmdk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_format: Option<String>,
    /// Export as stored (no format given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_quick_export: Option<bool>,
}

/// IMS `ExportImage`: the image in the path and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportImage {
    /// The image.
    pub image_id: String,
    /// The body.
    pub body: ExportImageBody,
}

/// What an IMS job records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ImsRecord {
    #[serde(flatten)]
    body: ExportImageBody,
    #[serde(default)]
    image_id: String,
}

/// EVS `os-volume_upload_image`'s parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadImageParams {
    /// The new image's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// vhd (default), zvhd, zvhd2, raw or qcow2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<String>,
    /// bare (default) or ovf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_format: Option<String>,
    /// Upload an attached volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// The OS type.
    #[serde(default, rename = "__os_type", skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
}

/// EVS `os-volume_upload_image`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadImageBody {
    /// The parameters.
    #[serde(default, rename = "os-volume_upload_image")]
    pub params: Option<UploadImageParams>,
}

/// EVS `os-volume_upload_image`: the volume in the path and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadImage {
    /// The volume.
    pub volume_id: String,
    /// The body.
    pub body: UploadImageBody,
}

/// The volume type EVS answers with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeType {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its extra specifications (none).
    pub extra_specs: std::collections::BTreeMap<String, String>,
    /// Public.
    pub is_public: bool,
    /// None.
    pub qos_specs_id: Option<String>,
}

/// An upload as EVS answers it (what the job records, and its state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// The volume.
    pub id: String,
    /// The new image.
    pub image_id: String,
    /// Its name.
    pub image_name: String,
    /// Its format.
    pub disk_format: String,
    /// Its container.
    pub container_format: String,
    /// The volume's size, GiB.
    pub size: u64,
    /// The volume's type.
    pub volume_type: VolumeType,
    /// Empty.
    pub display_description: String,
    /// The OS type given.
    #[serde(default, rename = "__os_type", skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    /// `uploading`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// EVS's answer to an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadAnswer {
    /// The upload.
    #[serde(rename = "os-volume_upload_image")]
    pub upload: Upload,
}

/// A job's entities.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Entities {
    /// 0 to 1.
    pub process_percent: f64,
    /// The image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Where the object is, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Its MD5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

/// A job as `ShowJob` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HuaweiJob {
    /// Its id.
    pub job_id: String,
    /// `exportImage` or `volumeUploadImage`.
    pub job_type: String,
    /// INIT, RUNNING, SUCCESS, FAIL.
    pub status: String,
    /// RFC 3339.
    pub begin_time: String,
    /// RFC 3339 once ended, else empty.
    pub end_time: String,
    /// What it made.
    pub entities: Entities,
    /// On failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// On failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<String>,
}

/// IMS's answer to an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobId {
    /// The job.
    pub job_id: String,
}

fn ims(message: impl Into<String>) -> Failure {
    Failure::bad("IMG.0001", message)
}

fn evs(message: impl Into<String>) -> Failure {
    Failure::bad("EVS.2024", message)
}

/// IMS's codes for the store's errors.
pub(crate) fn ims_store_failure(e: &Error) -> Failure {
    match e.kind() {
        ErrorKind::NotFound => Failure::new(404, "IMG.0001", e.message()),
        // The job database is away.
        ErrorKind::Io => Failure::new(503, "IMG.0001", e.message()),
        ErrorKind::Internal => Failure::new(500, "IMG.0001", e.message()),
        _ => ims(e.message()),
    }
}

/// EVS's codes for the store's errors.
fn evs_store_failure(e: &Error) -> Failure {
    match e.kind() {
        ErrorKind::NotFound => Failure::new(404, "EVS.5404", e.message()),
        ErrorKind::Io => Failure::new(503, "EVS.5400", e.message()),
        ErrorKind::Internal => Failure::new(500, "EVS.5400", e.message()),
        _ => evs(e.message()),
    }
}

fn zvhd_refusal(code: &str, format: &str) -> Failure {
    Failure::bad(
        code,
        format!(
            "{format} has no public specification; imgconv does not write it (choose vhd, \
             qcow2 or vmdk)"
        ),
    )
}

/// IMS export of the context's disk into `bucket_url`: the job's id.
pub(crate) fn export_image(
    stores: &impl Stores,
    ctx: &Context,
    req: &ExportImage,
) -> Result<(JobId, Option<String>), Failure> {
    let b = &req.body;
    let bucket_url = b
        .bucket_url
        .as_deref()
        .ok_or_else(|| ims("bucket_url is required (bucket:file)"))?;
    let (bucket, file) = bucket_url
        .split_once(':')
        .filter(|(b, f)| !b.is_empty() && !f.is_empty())
        .ok_or_else(|| ims("bucket_url must be in the form bucket:file"))?;
    let quick = b.is_quick_export == Some(true);
    let requested = b.file_format.as_deref();
    if quick && requested.is_some() {
        return Err(ims(
            "file_format cannot be specified when is_quick_export is true",
        ));
    }
    let size = ctx.image_size().map_err(|e| ims(e.message()))?;
    if size >= TB {
        return Err(ims(format!(
            "the image is {size} bytes; images of 1 TB or more cannot be exported"
        )));
    }
    let fmt = if quick {
        // Fast export writes the image as it is stored.
        imgconv::open_image(&ctx.source, None)
            .map(|r| r.format())
            .map_err(|e| ims(e.message()))?
    } else {
        match requested {
            Some("qcow2") => Format::Qcow2,
            Some("vhd") => Format::Vhd,
            Some("vmdk") => Format::Vmdk,
            Some("zvhd") => return Err(zvhd_refusal("IMG.0001", "zvhd")),
            Some(other) => {
                return Err(ims(format!(
                    "file_format '{other}' is not one of qcow2, vhd, zvhd, vmdk"
                )))
            }
            None => return Err(ims("file_format is required")),
        }
    };
    let denied = |m: String| Failure::new(403, "IMG.0003", m);
    let spec = ctx.job(fmt, vec![], ctx.s3_target(bucket, file, denied)?);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let record = ImsRecord {
        body: b.clone(),
        image_id: req.image_id.clone(),
    };
    let accepted = submit_job(
        stores,
        ctx,
        &spec,
        Submission {
            kind: IMS,
            id: &id,
            token: None,
            request: &record,
            echo: &record,
            subject: Some(&req.image_id),
            failure: ims_store_failure,
        },
    )?;
    let run = accepted.run();
    Ok((
        JobId {
            job_id: accepted.job.id,
        },
        run,
    ))
}

/// Whether an EVS image name follows the rules.
fn name_ok(name: &str) -> bool {
    let n = name.chars().count();
    (1..=128).contains(&n)
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
}

/// EVS `os-volume_upload_image` of the context's disk (the volume): the new image, made in
/// the image store (registered in the catalogue) or as an object in the configured bucket.
pub(crate) fn upload_image(
    stores: &impl Stores,
    ctx: &Context,
    req: &UploadImage,
) -> Result<(UploadAnswer, Option<String>), Failure> {
    let p = req
        .body
        .params
        .as_ref()
        .ok_or_else(|| evs("the request body needs os-volume_upload_image"))?;
    let name = p
        .image_name
        .as_deref()
        .ok_or_else(|| evs("image_name is required"))?;
    if !name_ok(name) {
        return Err(evs(
            "image_name must be 1 to 128 characters of letters, digits, spaces, hyphens (-), \
             underscores (_) and periods (.), and cannot start or end with a space",
        ));
    }
    let disk_format = p.disk_format.as_deref().unwrap_or("vhd");
    let fmt = match disk_format {
        "vhd" => Format::Vhd,
        "raw" => Format::Raw,
        "qcow2" => Format::Qcow2,
        "zvhd" | "zvhd2" => return Err(zvhd_refusal("EVS.2024", disk_format)),
        other => {
            return Err(evs(format!(
                "disk_format '{other}' is not one of vhd, zvhd, zvhd2, raw, qcow2"
            )))
        }
    };
    let container = p.container_format.as_deref().unwrap_or("bare");
    if !matches!(container, "bare" | "ovf") {
        return Err(evs(format!(
            "container_format '{container}' is not one of bare, ovf"
        )));
    }
    if ctx.in_use && p.force != Some(true) {
        return Err(evs(
            "the volume is in use: set force to true to upload it anyway",
        ));
    }
    let size = ctx.image_size().map_err(|e| evs(e.message()))?;
    let image_id = uuid::Uuid::new_v4().to_string();
    let file = format!("{image_id}.{disk_format}");
    let target = match (&ctx.image_store, &ctx.bucket) {
        (Some(dir), _) => TargetSpec::Folder {
            dir: dir.clone(),
            name: file.clone(),
            base_url: url::Url::from_directory_path(dir)
                .map(|u| u.to_string())
                .map_err(|()| {
                    Failure::new(
                        500,
                        "EVS.5400",
                        "the image store must be an absolute folder",
                    )
                })?,
        },
        (None, Some((bucket, prefix))) => {
            let denied = |m: String| Failure::new(403, "EVS.1003", m);
            ctx.s3_target(bucket, &format!("{prefix}{file}"), denied)?
        }
        (None, None) => {
            return Err(Failure::new(
                500,
                "EVS.5400",
                "no image bucket is configured for this service",
            ))
        }
    };
    let spec = ctx.job(fmt, vec![], target);
    let recorded = Upload {
        id: req.volume_id.clone(),
        image_id: image_id.clone(),
        image_name: name.to_string(),
        disk_format: disk_format.to_string(),
        container_format: container.to_string(),
        size: size.div_ceil(1 << 30),
        volume_type: VolumeType {
            id: "0c4f0fe4-3e8b-4a2f-8c5a-1d6f0c1b2a3e".into(),
            name: "SATA".into(),
            is_public: true,
            ..VolumeType::default()
        },
        os_type: p.os_type.clone(),
        ..Upload::default()
    };
    let accepted = submit_job(
        stores,
        ctx,
        &spec,
        Submission {
            kind: EVS,
            id: &image_id,
            token: None,
            request: &req.body,
            echo: &recorded,
            subject: Some(&req.volume_id),
            failure: evs_store_failure,
        },
    )?;
    if let (Some(dir), true) = (&ctx.image_store, accepted.new) {
        stores
            .with(|s| {
                s.register_image(
                    &image_id,
                    name,
                    &dir.join(&file),
                    fmt.name(),
                    &accepted.job.id,
                    ctx.account(),
                )
            })
            .map_err(|e| evs_store_failure(&e))?;
    }
    let run = accepted.run();
    let upload = Upload {
        status: Some("uploading".into()),
        updated_at: Some(imgconv_export::jobs::rfc3339(accepted.job.updated)),
        ..record(&accepted.job)
    };
    Ok((UploadAnswer { upload }, run))
}

/// A job as `ShowJob` shows it.
pub(crate) fn job_view(job: &Job) -> HuaweiJob {
    let status = match job.state {
        JobState::Queued => "INIT",
        JobState::Active => "RUNNING",
        JobState::Completed => "SUCCESS",
        JobState::Failed | JobState::Cancelled => "FAIL",
    };
    let image_id = if job.provider == EVS {
        record::<Upload>(job).image_id
    } else {
        record::<ImsRecord>(job).image_id
    };
    let failed = matches!(job.state, JobState::Failed | JobState::Cancelled);
    HuaweiJob {
        job_id: job.id.clone(),
        job_type: if job.provider == EVS {
            "volumeUploadImage"
        } else {
            "exportImage"
        }
        .into(),
        status: status.into(),
        begin_time: imgconv_export::jobs::rfc3339(job.created),
        end_time: if job.state.is_final() {
            imgconv_export::jobs::rfc3339(job.updated)
        } else {
            String::new()
        },
        entities: Entities {
            process_percent: f64::from(job.progress) / 100.0,
            image_id: (!image_id.is_empty()).then_some(image_id),
            location: job.result.as_ref().map(|r| r.location.clone()),
            size: job.result.as_ref().map(|r| r.size),
            md5: job.result.as_ref().map(|r| r.md5.clone()),
        },
        error_code: failed.then(|| "IMG.0001".into()),
        fail_reason: failed.then(|| job.message.clone()),
    }
}

/// The job `id` of `account` (IMS's or EVS's); another account's is not found.
pub(crate) fn show_job(
    store: &mut JobStore,
    account: &str,
    id: &str,
) -> Result<HuaweiJob, Failure> {
    match find_job(store, account, &[IMS, EVS], id) {
        Ok(Some(job)) => Ok(job_view(&job)),
        Ok(None) => Err(Failure::new(
            404,
            "IMG.0040",
            format!("the job {id} does not exist"),
        )),
        Err(e) => Err(ims_store_failure(&e)),
    }
}

/// The error body of Huawei's services (`{"error": {"code", "message"}}`).
fn error_json(_request_id: &str, f: &Failure) -> serde_json::Value {
    serde_json::json!({ "error": { "code": f.code, "message": f.message } })
}

fn cli_submit(stores: &CliStore<'_>, ctx: &Context, r: &CliRequest<'_>) -> Result<Answer, Failure> {
    let (body, path_id) = (r.body, r.path_id);
    if r.kind == EVS {
        let volume_id = path_id.ok_or_else(|| evs("the volume_id is missing from the path"))?;
        let req = UploadImage {
            volume_id: volume_id.into(),
            body: json_request(body, evs)?,
        };
        let (a, run) = upload_image(stores, ctx, &req)?;
        return Ok(Answer {
            run,
            ..Answer::ok(&a)
        });
    }
    let image_id = path_id.ok_or_else(|| ims("the image_id is missing from the path"))?;
    let req = ExportImage {
        image_id: image_id.into(),
        body: json_request(body, ims)?,
    };
    let (a, run) = export_image(stores, ctx, &req)?;
    Ok(Answer {
        run,
        ..Answer::ok(&a)
    })
}

fn cli_describe(store: &mut JobStore, account: &str, id: &str) -> Result<Answer, Failure> {
    show_job(store, account, id).map(|j| Answer::ok(&j))
}

fn cli_list(store: &mut JobStore, account: &str, kind: &str) -> Result<Answer, Failure> {
    let jobs = store
        .list(kind, account)
        .map_err(|e| ims_store_failure(&e))?;
    let items: Vec<HuaweiJob> = jobs.iter().map(job_view).collect();
    Ok(Answer::ok(&items))
}

fn cli_cancel(stores: &CliStore<'_>, account: &str, id: &str) -> Result<Answer, Failure> {
    match cancel_job(stores, account, &[IMS, EVS], id) {
        Ok(Some(job)) => Ok(Answer::ok(&job_view(&job))),
        Ok(None) => Err(Failure::new(
            404,
            "IMG.0040",
            format!("the job {id} does not exist"),
        )),
        Err(e) => Err(ims_store_failure(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evs_names_follow_the_rules() {
        assert!(name_ok("test-image_1.0"));
        assert!(name_ok("镜像 一"));
        assert!(!name_ok(""));
        assert!(!name_ok(" lead"));
        assert!(!name_ok("trail "));
        assert!(!name_ok("bad/char"));
        assert!(!name_ok(&"x".repeat(129)));
        assert!(name_ok(&"x".repeat(128)));
    }
}
