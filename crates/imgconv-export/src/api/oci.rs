//! OCI Compute `ExportImage` (`ExportImageDetails`, `opc-retry-token`, `if-match`) and its
//! work request.

use super::rfc3339;
use imgconv::Format;
use serde_json::{json, Value};

use super::*;
use crate::jobs::{Job, JobSpec, JobState, Stores, TargetSpec};

/// The image's etag: changes when the source file does.
fn oci_etag(ctx: &Context) -> String {
    oci_image_etag(&ctx.source)
}

/// The etag of the OCI image whose disk is `source` (what `GetImage` answers and
/// `ExportImage`'s `if-match` is compared with): changes when the file does.
pub fn oci_image_etag(source: &std::path::Path) -> String {
    let meta = std::fs::metadata(source).ok();
    let stamp = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let len = meta.map(|m| m.len()).unwrap_or(0);
    fingerprint(&json!([len, stamp.to_string()]))[..32].to_string()
}

pub(super) fn oci_submit(
    stores: &impl Stores,
    ctx: &Context,
    req: &Value,
) -> Result<Reply, ApiError> {
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
                        s3_target(Api::Oci, ctx, bucket, object)?
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
            s3_target(Api::Oci, ctx, bucket, object)?
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
        stores,
        ctx,
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

pub(super) fn oci_work_request(job: &Job) -> Value {
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
