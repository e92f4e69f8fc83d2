//! Huawei Cloud IMS image export (`bucket_url`) and EVS `os-volume_upload_image`, and their
//! jobs (INIT, RUNNING, SUCCESS, FAIL).

use super::rfc3339;
use imgconv::Format;
use serde_json::{json, Value};

use super::*;
use crate::jobs::{Job, JobSpec, JobState, Stores, TargetSpec};

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

pub(super) fn ims_submit(
    stores: &impl Stores,
    ctx: &Context,
    req: &Value,
) -> Result<Reply, ApiError> {
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
    let id = uuid::Uuid::new_v4().simple().to_string();
    let spec = JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: opts,
        compress: false,
        target: s3_target(Api::HuaweiIms, ctx, bucket, file)?,
        oci_archive: false,
        oci_metadata: None,
    };
    let mut echo = req.clone();
    echo["image_id"] = json!(image_id);
    let (job, new) = submit_job(Api::HuaweiIms, stores, ctx, &id, None, req, &spec, &echo)?;
    Ok(reply_for(&job, new, json!({ "job_id": job.id })))
}

pub(super) fn huawei_job(job: &Job, job_type: &str) -> Value {
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

pub(super) fn evs_submit(
    stores: &impl Stores,
    ctx: &Context,
    req: &Value,
) -> Result<Reply, ApiError> {
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
    let image_id = uuid::Uuid::new_v4().to_string();
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
        (None, Some((bucket, prefix))) => {
            s3_target(Api::HuaweiEvs, ctx, bucket, &format!("{prefix}{file}"))?
        }
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
    let (job, new) = submit_job(
        Api::HuaweiEvs,
        stores,
        ctx,
        &image_id,
        None,
        req,
        &spec,
        &echo,
    )?;
    if let (Some(dir), true) = (&ctx.image_store, new) {
        stores
            .with(|s| {
                s.register_image(
                    &image_id,
                    name,
                    &dir.join(&file),
                    fmt.name(),
                    &job.id,
                    ctx.account(),
                )
            })
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
