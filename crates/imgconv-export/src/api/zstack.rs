//! ZStack `ExportImageFromBackupStorage`: an API job whose result is the published file's
//! `imageUrl` and `exportMd5Sum`.

use imgconv::Format;
use serde_json::{json, Value};

use super::*;
use crate::jobs::{Job, JobSpec, JobState, Stores, TargetSpec};

pub(super) fn zstack_submit(
    stores: &impl Stores,
    ctx: &Context,
    req: &Value,
) -> Result<Reply, ApiError> {
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
    // ZStack clients name their API job (X-Job-UUID, 32 hex digits): the name is the
    // submission's idempotency token within the account, and the job's own id is fresh (a
    // client's name must not collide with, or reveal, another account's job).
    let token = match ctx.headers.get("x-job-uuid") {
        Some(u) if u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(u.to_lowercase())
        }
        Some(_) => return Err(bad("SYS.1007", "X-Job-UUID must be 32 hexadecimal digits")),
        None => None,
    };
    // ZStack polls the job by the client's name; it is the job's id too unless that id is
    // taken (by another account's job: then the job gets a fresh id, and polls find it by
    // its name within the account, [`JobStore::job_by_token`]).
    let id = match &token {
        Some(t) if stores.with(|s| s.get(t)).is_err() => t.clone(),
        _ => hex_id(32),
    };
    let name = token.clone().unwrap_or_else(|| id.clone());
    let spec = JobSpec {
        source: ctx.source.clone(),
        format: fmt.name().into(),
        writer_options: vec![],
        compress: false,
        target: TargetSpec::Folder {
            dir,
            // Served to anyone who has the URL: a name nobody can guess from the ids
            // another account sees.
            name: format!("{image}-{}.{format}", hex_id(32)),
            base_url: base,
        },
        oci_archive: false,
        oci_metadata: None,
    };
    let echo = json!({ "imageUuid": image, "exportFormat": format, "jobUuid": name });
    let (job, new) = submit_job(
        Api::Zstack,
        stores,
        ctx,
        &id,
        token.as_deref(),
        req,
        &spec,
        &echo,
    )?;
    let mut reply = reply_for(
        &job,
        new,
        json!({ "location": format!("/zstack/v1/api-jobs/{}", job_name(&job)) }),
    );
    reply.status = 202;
    Ok(reply)
}

pub(super) fn zstack_result(job: &Job) -> Value {
    match (&job.state, &job.result) {
        (JobState::Completed, Some(r)) => json!({
            "imageUrl": r.location,
            "exportMd5Sum": r.md5,
        }),
        (JobState::Failed | JobState::Cancelled, _) => json!({
            "error": { "code": "SYS.1006", "description": "the export failed", "details": job.message }
        }),
        _ => json!({ "location": format!("/zstack/v1/api-jobs/{}", job_name(job)) }),
    }
}

/// The name a ZStack client polls a job by (its `X-Job-UUID`, else the job's id).
fn job_name(job: &Job) -> &str {
    job.request["jobUuid"].as_str().unwrap_or(&job.id)
}
