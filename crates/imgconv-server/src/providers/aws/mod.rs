//! AWS EC2: `ExportImage` (its tasks: active, completed, deleting, deleted) and
//! `CreateInstanceExportTask` (an instance's disk as an OVA, or a VMDK, VHD or RAW; its tasks:
//! active, cancelling, cancelled, completed), their describes and `CancelExportTask`.
//!
//! The typed requests here are what the Query protocol's form (`wire`) and the command
//! line's JSON (the field names of the SDKs' JSON, `aws ec2 export-image
//! --cli-input-json`) both parse into; the task views serialize to that JSON and are written
//! as EC2's XML by `wire`.

mod wire;

use imgconv::{Error, ErrorKind, Format};
use imgconv_export::jobs::{JobState, JobStore, Stores, TargetSpec};
use serde::{Deserialize, Serialize};

use super::shared::{
    cancel_job, find_job, hex_id, json_request, record, submit_job, Accepted, Answer, CliRequest,
    CliStore, Context, Failure, Submission,
};

#[doc(hidden)]
pub use wire::fuzz_form;

registration!("EC2's entry points.", "aws", [KIND]);

/// The name EC2's jobs are stored under.
pub(crate) const KIND: &str = "aws";

/// The prefix of instance export task ids (image export tasks have `export-ami-`).
const INSTANCE_TASK: &str = "export-i-";

/// An EC2 tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    /// The key.
    #[serde(default)]
    pub key: String,
    /// The value.
    #[serde(default)]
    pub value: String,
}

/// `TagSpecifications`: tags for one resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagSpecification {
    /// The resource type the tags are for (`export-image-task`, `export-instance-task`).
    #[serde(default)]
    pub resource_type: Option<String>,
    /// The tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// `ExportImage`'s `S3ExportLocation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct S3ExportLocation {
    /// The bucket.
    #[serde(default, rename = "S3Bucket")]
    pub s3_bucket: Option<String>,
    /// The key prefix.
    #[serde(default, rename = "S3Prefix", skip_serializing_if = "Option::is_none")]
    pub s3_prefix: Option<String>,
}

/// `ExportImage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportImage {
    /// The client token (idempotency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// The description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// VMDK, RAW or VHD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_image_format: Option<String>,
    /// Check without exporting.
    #[serde(default)]
    pub dry_run: bool,
    /// The image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Where the object goes.
    #[serde(
        default,
        rename = "S3ExportLocation",
        skip_serializing_if = "Option::is_none"
    )]
    pub s3_export_location: Option<S3ExportLocation>,
    /// The role (`vmimport`) named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_specifications: Vec<TagSpecification>,
}

/// `CreateInstanceExportTask`'s `ExportToS3` (`ExportToS3Task` as the SDKs' JSON names it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportToS3 {
    /// `ova`, or none (the disk alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_format: Option<String>,
    /// VMDK (default), RAW or VHD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_image_format: Option<String>,
    /// The bucket.
    #[serde(default, rename = "S3Bucket", skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// The key prefix.
    #[serde(default, rename = "S3Prefix", skip_serializing_if = "Option::is_none")]
    pub s3_prefix: Option<String>,
}

/// `CreateInstanceExportTask`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateInstanceExportTask {
    /// The instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// citrix, vmware or microsoft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_environment: Option<String>,
    /// The description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where and how.
    #[serde(
        default,
        rename = "ExportToS3",
        alias = "ExportToS3Task",
        skip_serializing_if = "Option::is_none"
    )]
    pub export_to_s3: Option<ExportToS3>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_specifications: Vec<TagSpecification>,
}

/// An EC2 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `ExportImage`.
    ExportImage(ExportImage),
    /// `CreateInstanceExportTask`.
    ExportInstance(CreateInstanceExportTask),
}

/// An image export task as EC2 shows it (`ExportImageTasks` items). Its request fields are
/// what the job records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageTask {
    /// The description.
    #[serde(default)]
    pub description: String,
    /// The format.
    #[serde(default)]
    pub disk_image_format: String,
    /// The image.
    #[serde(default)]
    pub image_id: String,
    /// Where the object goes.
    #[serde(default, rename = "S3ExportLocation")]
    pub s3_export_location: S3ExportLocation,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The role named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    /// The task's id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub export_image_task_id: String,
    /// Percent done, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// active, completed, deleting, deleted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// What is happening or went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

/// An instance export task's `InstanceExportDetails`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceExportDetails {
    /// The instance.
    #[serde(default)]
    pub instance_id: String,
    /// citrix, vmware or microsoft.
    #[serde(default)]
    pub target_environment: String,
}

/// An instance export task's `ExportToS3Task`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExportToS3Task {
    /// `ova`, if a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_format: Option<String>,
    /// The disk's format.
    #[serde(default)]
    pub disk_image_format: String,
    /// The bucket.
    #[serde(default, rename = "S3Bucket")]
    pub s3_bucket: String,
    /// The object's key.
    #[serde(default, rename = "S3Key")]
    pub s3_key: String,
}

/// An instance export task as EC2 shows it (`ExportTasks` items, `ExportTask`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceTask {
    /// The description.
    #[serde(default)]
    pub description: String,
    /// The instance.
    #[serde(default)]
    pub instance_export_details: InstanceExportDetails,
    /// Where and how.
    #[serde(default, rename = "ExportToS3Task")]
    pub export_to_s3_task: ExportToS3Task,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The task's id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub export_task_id: String,
    /// active, cancelling, cancelled, completed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

/// A task of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// An image export task.
    Image(ImageTask),
    /// An instance export task.
    Instance(InstanceTask),
}

fn missing(name: &str) -> Failure {
    Failure::bad(
        "MissingParameter",
        format!("The request must contain the parameter {name}"),
    )
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::bad("InvalidParameterValue", message)
}

/// EC2's codes for the store's errors.
fn store_failure(e: &Error) -> Failure {
    let (status, code) = match e.kind() {
        ErrorKind::AlreadyExists => (400, "IdempotentParameterMismatch"),
        ErrorKind::NotFound => (400, "InvalidExportImageTaskId.NotFound"),
        ErrorKind::InvalidArgument => (400, "IncorrectState"),
        // The job database is away: EC2's answer the SDKs retry.
        ErrorKind::Io => (503, "Unavailable"),
        _ => (500, "InternalError"),
    };
    Failure::new(status, code, e.message())
}

/// EC2's answer to a bucket the account was not granted.
fn denied(message: String) -> Failure {
    Failure::new(403, "UnauthorizedOperation", message)
}

/// The output of a disk format name: format, file extension, writer options.
fn disk_format(name: &str) -> Option<(Format, &'static str, Vec<String>)> {
    Some(match name {
        "VMDK" => (
            Format::Vmdk,
            "vmdk",
            vec!["subformat=streamOptimized".into()],
        ),
        "RAW" => (Format::Raw, "raw", vec![]),
        "VHD" => (Format::Vhd, "vhd", vec![]),
        _ => return None,
    })
}

/// The tags of `specs` given for `resource` (EC2 ignores the others).
fn tags_for(specs: &[TagSpecification], resource: &str) -> Vec<Tag> {
    specs
        .iter()
        .filter(|t| t.resource_type.as_deref() == Some(resource))
        .flat_map(|t| t.tags.iter().cloned())
        .collect()
}

/// A task's description: at most 255 characters.
fn description(d: Option<&str>) -> Result<String, Failure> {
    let d = d.unwrap_or("");
    if d.chars().count() > 255 {
        return Err(invalid(
            "Value for parameter Description is invalid. The maximum length is 255 characters.",
        ));
    }
    Ok(d.to_string())
}

/// `ExportImage` of the context's disk: the task (new, or the one its client token names).
pub(crate) fn export_image(
    stores: &impl Stores,
    ctx: &Context,
    req: &ExportImage,
) -> Result<(ImageTask, Option<String>), Failure> {
    let format = req
        .disk_image_format
        .as_deref()
        .ok_or_else(|| missing("DiskImageFormat"))?;
    let (fmt, ext, opts) = disk_format(format).ok_or_else(|| {
        invalid(format!(
            "Value ({format}) for parameter DiskImageFormat is invalid. Valid values: VMDK, RAW, VHD"
        ))
    })?;
    let image_id = req.image_id.as_deref().ok_or_else(|| missing("ImageId"))?;
    let loc = req
        .s3_export_location
        .as_ref()
        .ok_or_else(|| missing("S3ExportLocation"))?;
    let bucket = loc
        .s3_bucket
        .as_deref()
        .ok_or_else(|| missing("S3ExportLocation.S3Bucket"))?;
    let prefix = loc.s3_prefix.as_deref().unwrap_or("");
    let recorded = ImageTask {
        description: description(req.description.as_deref())?,
        disk_image_format: format.to_string(),
        image_id: image_id.to_string(),
        s3_export_location: loc.clone(),
        tags: tags_for(&req.tag_specifications, "export-image-task"),
        role_name: req.role_name.clone(),
        ..ImageTask::default()
    };
    let id = format!("export-ami-{}", hex_id(17));
    let key = format!("{prefix}{id}.{ext}");
    let spec = ctx.job(fmt, opts, ctx.s3_target(bucket, &key, denied)?);
    if req.dry_run {
        return Err(dry_run(ctx, &spec));
    }
    let token = req.client_token.as_deref();
    let canonical = ExportImage {
        client_token: None,
        ..req.clone()
    };
    let accepted = submit_job(
        stores,
        ctx,
        &spec,
        Submission {
            kind: KIND,
            id: &id,
            token,
            request: &canonical,
            echo: &recorded,
            subject: Some(image_id),
            failure: store_failure,
        },
    )?;
    let run = accepted.run();
    let job = accepted.job;
    let task = ImageTask {
        export_image_task_id: job.id.clone(),
        progress: Some(job.progress.to_string()),
        status: "active".into(),
        status_message: Some("validating".into()),
        ..record(&job)
    };
    Ok((task, run))
}

/// A dry run: what can be checked without uploading (the image opens, the output is
/// measured as the export would write it, the bucket exists and the keys are accepted);
/// EC2's `DryRunOperation` when all is well.
fn dry_run(ctx: &Context, spec: &imgconv_export::jobs::JobSpec) -> Failure {
    let checked = (|| {
        let size = ctx.image_size().map_err(|e| invalid(e.message()))?;
        let reader = imgconv::open_image(&ctx.source, None).map_err(|e| invalid(e.message()))?;
        let format: Format = spec
            .format
            .parse()
            .map_err(|e: Error| invalid(e.message()))?;
        let mut options = imgconv::ConvertOptions::new(format);
        for o in &spec.writer_options {
            options
                .writer_options
                .extend(o)
                .map_err(|e| invalid(e.message()))?;
        }
        imgconv::measure(&*reader, &options, &imgconv::CancelToken::new())
            .map_err(|e| invalid(e.message()))?;
        let TargetSpec::S3 {
            endpoint,
            region,
            bucket,
            key,
            ..
        } = &spec.target
        else {
            return Ok(());
        };
        let checked = imgconv_export::S3Config::new(endpoint, region).and_then(|c| {
            let creds = match &ctx.credentials {
                Some(c) => c.clone(),
                None => imgconv_export::Credentials::from_env()?,
            };
            let to = imgconv_export::S3Location {
                bucket: bucket.clone(),
                key: key.clone(),
            };
            imgconv_export::S3Sink::create(&c, creds, &to, size).map(drop)
        });
        match checked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(invalid(format!(
                "The given S3 bucket ({bucket}) does not exist."
            ))),
            Err(e) => Err(Failure::new(403, "UnauthorizedOperation", e.message())),
        }
    })();
    match checked {
        Ok(()) => Failure::new(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ),
        Err(f) => f,
    }
}

/// `CreateInstanceExportTask`: the instance's disk (the context's source) into the bucket, as
/// `PREFIX + TASK + .ova` (OVF, manifest and a streamOptimized VMDK, members named after the
/// task) or as the disk format alone.
pub(crate) fn export_instance(
    stores: &impl Stores,
    ctx: &Context,
    req: &CreateInstanceExportTask,
) -> Result<(InstanceTask, Option<String>), Failure> {
    let instance = req.instance_id.as_deref().unwrap_or("");
    let target_env = req
        .target_environment
        .as_deref()
        .ok_or_else(|| missing("TargetEnvironment"))?;
    if !["citrix", "vmware", "microsoft"].contains(&target_env) {
        return Err(invalid(format!(
            "Value ({target_env}) for parameter TargetEnvironment is invalid. Valid values: citrix, vmware, microsoft"
        )));
    }
    let s3 = req
        .export_to_s3
        .as_ref()
        .ok_or_else(|| missing("ExportToS3"))?;
    let bucket = s3
        .s3_bucket
        .as_deref()
        .ok_or_else(|| missing("ExportToS3.S3Bucket"))?;
    let prefix = s3.s3_prefix.as_deref().unwrap_or("");
    let format = s3
        .disk_image_format
        .as_deref()
        .unwrap_or("VMDK")
        .to_ascii_uppercase();
    let container = s3.container_format.as_deref();
    let (fmt, ext, mut opts) = match container {
        Some("ova") if format == "VMDK" => (Format::Ova, "ova", vec![]),
        Some("ova") => {
            return Err(invalid(format!(
                "An ova container holds VMDK disks, not {format}"
            )))
        }
        Some(other) => {
            return Err(invalid(format!(
                "Value ({other}) for parameter ContainerFormat is invalid. Valid values: ova"
            )))
        }
        None => disk_format(&format).ok_or_else(|| {
            invalid(format!(
                "Value ({format}) for parameter DiskImageFormat is invalid. Valid values: VMDK, RAW, VHD"
            ))
        })?,
    };
    let id = format!("{INSTANCE_TASK}{}", hex_id(17));
    let key = format!("{prefix}{id}.{ext}");
    if fmt == Format::Ova {
        opts.push(format!("name={id}"));
    }
    let spec = ctx.job(fmt, opts, ctx.s3_target(bucket, &key, denied)?);
    let record = InstanceTask {
        description: description(req.description.as_deref())?,
        instance_export_details: InstanceExportDetails {
            instance_id: instance.to_string(),
            target_environment: target_env.to_string(),
        },
        export_to_s3_task: ExportToS3Task {
            container_format: container.map(str::to_string),
            disk_image_format: format.clone(),
            s3_bucket: bucket.to_string(),
            s3_key: key,
        },
        tags: tags_for(&req.tag_specifications, "export-instance-task"),
        ..InstanceTask::default()
    };
    let accepted = submit_job(
        stores,
        ctx,
        &spec,
        Submission {
            kind: KIND,
            id: &id,
            token: None,
            request: req,
            echo: &record,
            subject: Some(instance),
            failure: store_failure,
        },
    )?;
    let run = accepted.run();
    Ok((instance_task(&accepted), run))
}

fn instance_task(a: &Accepted) -> InstanceTask {
    match task(&a.job) {
        Task::Instance(t) => t,
        Task::Image(_) => InstanceTask::default(),
    }
}

/// A job as EC2 shows it.
pub(crate) fn task(job: &imgconv_export::jobs::Job) -> Task {
    if job.id.starts_with(INSTANCE_TASK) {
        let (state, message) = match (job.state, job.cancel_requested) {
            (JobState::Queued | JobState::Active, false) => ("active", None),
            (JobState::Queued | JobState::Active, true) => ("cancelling", None),
            (JobState::Completed, _) => ("completed", None),
            (JobState::Cancelled, _) => ("cancelled", Some("Task was cancelled.".to_string())),
            (JobState::Failed, _) => ("cancelled", Some(job.message.clone())),
        };
        return Task::Instance(InstanceTask {
            export_task_id: job.id.clone(),
            state: state.into(),
            status_message: message.filter(|m| !m.is_empty()),
            ..record(job)
        });
    }
    let (status, message) = match (job.state, job.cancel_requested) {
        (JobState::Queued, _) => ("active", "validating".to_string()),
        (JobState::Active, true) => ("deleting", "cancelling".to_string()),
        (JobState::Active, false) => ("active", "converting".to_string()),
        (JobState::Completed, _) => ("completed", String::new()),
        (JobState::Cancelled, _) => ("deleted", "Task was cancelled.".to_string()),
        (JobState::Failed, _) => ("deleted", job.message.clone()),
    };
    let running = matches!(job.state, JobState::Active | JobState::Queued);
    Task::Image(ImageTask {
        export_image_task_id: job.id.clone(),
        status: status.into(),
        status_message: (!message.is_empty()).then_some(message),
        progress: running.then(|| job.progress.to_string()),
        ..record(job)
    })
}

/// The tasks of `account` (every one, or those `ids` name: an id that is not the account's
/// is `Ok(Err(id))`, as EC2 answers an unknown one).
pub(crate) fn tasks(
    store: &mut JobStore,
    account: &str,
    ids: &[&str],
) -> Result<Result<Vec<Task>, String>, Failure> {
    if ids.is_empty() {
        let jobs = store.list(KIND, account).map_err(|e| store_failure(&e))?;
        return Ok(Ok(jobs.iter().map(task).collect()));
    }
    let mut out = Vec::new();
    for id in ids {
        match find_job(store, account, &[KIND], id).map_err(|e| store_failure(&e))? {
            Some(job) => out.push(task(&job)),
            None => return Ok(Err((*id).to_string())),
        }
    }
    Ok(Ok(out))
}

/// `CancelExportTask` of a task of `account`: another account's task is not found, and
/// nothing changes.
pub(crate) fn cancel(stores: &impl Stores, account: &str, id: &str) -> Result<(), Failure> {
    match cancel_job(stores, account, &[KIND], id) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Failure::bad(
            "InvalidExportTaskID.NotFound",
            format!("The export task ID '{id}' does not exist"),
        )),
        Err(e) => Err(store_failure(&e)),
    }
}

/// The error body of the command line (the SDKs' JSON of an EC2 error).
fn error_json(request_id: &str, f: &Failure) -> serde_json::Value {
    serde_json::json!({
        "Errors": [{ "Code": f.code, "Message": f.message }],
        "RequestID": request_id,
    })
}

/// The request of the command line: an `ExportImage`, or a `CreateInstanceExportTask` when
/// it names an instance.
fn cli_request(body: &[u8]) -> Result<Request, Failure> {
    let refusal = |m: String| Failure::bad("InvalidParameterValue", m);
    let names_instance = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("InstanceId").is_some());
    Ok(if names_instance {
        Request::ExportInstance(json_request(body, refusal)?)
    } else {
        Request::ExportImage(json_request(body, refusal)?)
    })
}

fn cli_submit(stores: &CliStore<'_>, ctx: &Context, r: &CliRequest<'_>) -> Result<Answer, Failure> {
    let (view, run) = match cli_request(r.body)? {
        Request::ExportImage(r) => {
            let (t, run) = export_image(stores, ctx, &r)?;
            (serde_json::to_value(t), run)
        }
        Request::ExportInstance(r) => {
            let (t, run) = export_instance(stores, ctx, &r)?;
            (
                serde_json::to_value(t).map(|t| serde_json::json!({ "ExportTask": t })),
                run,
            )
        }
    };
    Ok(Answer {
        run,
        ..Answer::ok(&view.unwrap_or_default())
    })
}

fn task_json(tasks: &[Task]) -> serde_json::Value {
    let (mut images, mut instances) = (Vec::new(), Vec::new());
    for t in tasks {
        match t {
            Task::Image(t) => images.push(serde_json::to_value(t).unwrap_or_default()),
            Task::Instance(t) => instances.push(serde_json::to_value(t).unwrap_or_default()),
        }
    }
    serde_json::json!({ "ExportImageTasks": images, "ExportTasks": instances })
}

fn cli_describe(store: &mut JobStore, account: &str, id: &str) -> Result<Answer, Failure> {
    match tasks(store, account, &[id])? {
        Ok(t) => {
            let mut v = task_json(&t);
            // Only the list the task belongs to.
            if let Some(o) = v.as_object_mut() {
                o.retain(|_, l| l.as_array().is_some_and(|a| !a.is_empty()));
            }
            Ok(Answer::ok(&v))
        }
        Err(id) => Err(Failure::bad(
            "InvalidExportImageTaskId.NotFound",
            format!("The export image task ID '{id}' does not exist"),
        )),
    }
}

fn cli_list(store: &mut JobStore, account: &str, _kind: &str) -> Result<Answer, Failure> {
    let t = tasks(store, account, &[])?.unwrap_or_default();
    Ok(Answer::ok(&task_json(&t)))
}

fn cli_cancel(stores: &CliStore<'_>, account: &str, id: &str) -> Result<Answer, Failure> {
    cancel(stores, account, id).map(|()| Answer::ok(&serde_json::json!({})))
}
