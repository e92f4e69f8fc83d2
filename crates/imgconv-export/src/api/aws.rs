//! AWS EC2 `ExportImage`: validation, the export task, and its states (active, completed,
//! deleting, deleted); and `CreateInstanceExportTask` (an instance's disk as an OVA, or a
//! VMDK, VHD or RAW), whose tasks have their own shape and states (active, cancelling,
//! cancelled, completed).

use imgconv::Format;
use serde_json::{json, Value};

use super::*;
use crate::jobs::{Job, JobSpec, JobState, Stores, TargetSpec};

pub(super) fn aws_submit(
    stores: &impl Stores,
    ctx: &Context,
    req: &Value,
) -> Result<Reply, ApiError> {
    if req.get("InstanceId").is_some() {
        return instance_submit(stores, ctx, req);
    }
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
    let description = description(req)?;
    let id = format!("export-ami-{}", hex_id(17));
    let key = format!("{prefix}{id}.{ext}");
    let spec = s3_job(ctx, fmt, opts, bucket, &key)?;
    let tags = tags_for(req, "export-image-task");
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
        // The output is measured as the export would write it (which reads the image).
        let reader = imgconv::open_image(&ctx.source, None)
            .map_err(|e| bad("InvalidParameterValue", e.message()))?;
        let mut options = imgconv::ConvertOptions::new(fmt);
        for o in &spec.writer_options {
            options
                .writer_options
                .extend(o)
                .map_err(|e| bad("InvalidParameterValue", e.message()))?;
        }
        imgconv::measure(&*reader, &options, &imgconv::CancelToken::new())
            .map_err(|e| bad("InvalidParameterValue", e.message()))?;
        if let TargetSpec::S3 {
            endpoint,
            region,
            bucket,
            key,
            ..
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
        stores,
        ctx,
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

/// The job of an export of the context's disk as `fmt` (with `opts`) to `bucket`/`key`.
fn s3_job(
    ctx: &Context,
    fmt: Format,
    opts: Vec<String>,
    bucket: &str,
    key: &str,
) -> Result<JobSpec, ApiError> {
    Ok(JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: opts,
        compress: false,
        target: s3_target(Api::Aws, ctx, bucket, key)?,
        oci_archive: false,
        oci_metadata: None,
    })
}

/// The tags of `TagSpecifications` given for `resource` (EC2 ignores the others).
fn tags_for(req: &Value, resource: &str) -> Vec<Value> {
    req.get("TagSpecifications")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| str_field(t, "ResourceType") == Some(resource))
        .flat_map(|t| {
            t.get("Tags")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The task's description: at most 255 characters.
fn description(req: &Value) -> Result<&str, ApiError> {
    let d = str_field(req, "Description").unwrap_or("");
    if d.chars().count() > 255 {
        return Err(bad(
            "InvalidParameterValue",
            "Value for parameter Description is invalid. The maximum length is 255 characters.",
        ));
    }
    Ok(d)
}

/// The prefix of instance export task ids (image export tasks have `export-ami-`).
pub(super) const INSTANCE_TASK: &str = "export-i-";

/// `CreateInstanceExportTask`: the instance's disk (the context's source) into the bucket, as
/// `PREFIX + TASK + .ova` (OVF, manifest and a streamOptimized VMDK, members named after the
/// task) or as the disk format alone.
fn instance_submit(stores: &impl Stores, ctx: &Context, req: &Value) -> Result<Reply, ApiError> {
    let instance = str_field(req, "InstanceId").unwrap_or("");
    let target_env = str_field(req, "TargetEnvironment").ok_or_else(|| {
        bad(
            "MissingParameter",
            "The request must contain the parameter TargetEnvironment",
        )
    })?;
    if !["citrix", "vmware", "microsoft"].contains(&target_env) {
        return Err(bad(
            "InvalidParameterValue",
            format!("Value ({target_env}) for parameter TargetEnvironment is invalid. Valid values: citrix, vmware, microsoft"),
        ));
    }
    // `ExportToS3` on the wire; `ExportToS3Task` as the SDKs and the CLI's JSON name it.
    let s3 = req
        .get("ExportToS3")
        .or_else(|| req.get("ExportToS3Task"))
        .ok_or_else(|| {
            bad(
                "MissingParameter",
                "The request must contain the parameter ExportToS3",
            )
        })?;
    let bucket = str_field(s3, "S3Bucket").ok_or_else(|| {
        bad(
            "MissingParameter",
            "The request must contain the parameter ExportToS3.S3Bucket",
        )
    })?;
    let prefix = str_field(s3, "S3Prefix").unwrap_or("");
    let disk_format = str_field(s3, "DiskImageFormat")
        .unwrap_or("VMDK")
        .to_ascii_uppercase();
    let container = str_field(s3, "ContainerFormat");
    let (fmt, ext, mut opts): (Format, &str, Vec<String>) = match (container, disk_format.as_str())
    {
        (Some("ova"), "VMDK") => (Format::Ova, "ova", vec![]),
        (Some("ova"), other) => {
            return Err(bad(
                "InvalidParameterValue",
                format!("An ova container holds VMDK disks, not {other}"),
            ))
        }
        (Some(other), _) => {
            return Err(bad(
                "InvalidParameterValue",
                format!("Value ({other}) for parameter ContainerFormat is invalid. Valid values: ova"),
            ))
        }
        (None, "VMDK") => (Format::Vmdk, "vmdk", vec!["subformat=streamOptimized".into()]),
        (None, "RAW") => (Format::Raw, "raw", vec![]),
        (None, "VHD") => (Format::Vhd, "vhd", vec![]),
        (None, other) => {
            return Err(bad(
                "InvalidParameterValue",
                format!("Value ({other}) for parameter DiskImageFormat is invalid. Valid values: VMDK, RAW, VHD"),
            ))
        }
    };
    let description = description(req)?;
    let id = format!("{INSTANCE_TASK}{}", hex_id(17));
    let key = format!("{prefix}{id}.{ext}");
    if fmt == Format::Ova {
        opts.push(format!("name={id}"));
    }
    let spec = s3_job(ctx, fmt, opts, bucket, &key)?;
    let tags = tags_for(req, "export-instance-task");
    let mut to_s3 = json!({
        "DiskImageFormat": disk_format,
        "S3Bucket": bucket,
        "S3Key": key,
    });
    if let Some(c) = container {
        to_s3["ContainerFormat"] = json!(c);
    }
    let echo = json!({
        "Description": description,
        "InstanceExportDetails": { "InstanceId": instance, "TargetEnvironment": target_env },
        "ExportToS3Task": to_s3,
        "Tags": tags,
    });
    let (job, new) = submit_job(Api::Aws, stores, ctx, &id, None, req, &spec, &echo)?;
    let t = instance_task(&job);
    Ok(reply_for(&job, new, json!({ "ExportTask": t })))
}

/// An instance export task as EC2 shows it.
fn instance_task(job: &Job) -> Value {
    let (state, message) = match (job.state, job.cancel_requested) {
        (JobState::Queued | JobState::Active, false) => ("active", String::new()),
        (JobState::Queued | JobState::Active, true) => ("cancelling", String::new()),
        (JobState::Completed, _) => ("completed", String::new()),
        (JobState::Cancelled, _) => ("cancelled", "Task was cancelled.".to_string()),
        (JobState::Failed, _) => ("cancelled", job.message.clone()),
    };
    let mut t = job.request.clone();
    t["ExportTaskId"] = json!(job.id);
    t["State"] = json!(state);
    if !message.is_empty() {
        t["StatusMessage"] = json!(message);
    }
    t
}

pub(super) fn aws_describe(job: &Job) -> Value {
    if job.id.starts_with(INSTANCE_TASK) {
        return json!({ "ExportTasks": [instance_task(job)] });
    }
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
