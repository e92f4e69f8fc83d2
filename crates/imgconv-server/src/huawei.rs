//! Huawei Cloud IMS and EVS, signed with `SDK-HMAC-SHA256`:
//!
//! - `POST /v1/cloudimages/{image_id}/file`: export an image to OBS (`bucket_url`) → `job_id`;
//! - `GET /v1/{project_id}/jobs/{job_id}` and `GET /v1/cloudimages/job/{job_id}`: the job;
//! - `GET /v2/cloudimages?id=...`: images, including those EVS made;
//! - `POST /v2/{project_id}/volumes/{volume_id}/action` with `os-volume_upload_image`: a new
//!   image from a volume, converted into the image store and then exportable through IMS.

use std::path::PathBuf;

use imgconv_export::api::rfc3339;
use imgconv_export::api::Api;
use imgconv_export::jobs::JobState;
use serde_json::{json, Value};

use crate::auth::verify_huawei;
use crate::wire::{error, Incoming, Wire};
use crate::{is_not_found, Caller, Provider, Service};

fn err(req: &Incoming<'_>, status: u16, code: &str, message: &str) -> Wire {
    error(Provider::Huawei, req.request_id, status, code, message)
}

pub(crate) fn handle(svc: &Service, req: &Incoming<'_>) -> Wire {
    let live = svc.live();
    let auth = verify_huawei(&req.signed(), |k| {
        crate::secret(
            &live.config,
            |c| match c {
                Caller::Huawei {
                    access_key,
                    secret_key,
                    ..
                } => Some((access_key.as_str(), secret_key.as_str())),
                _ => None,
            },
            k,
        )
    });
    let key = match auth {
        Ok(key) => key,
        Err(e) => return gateway_refusal(req, e.message()),
    };
    let who = svc.who(Provider::Huawei, &key);
    let w = route(svc, req, &who);
    w.with_header("X-Request-Id", req.request_id)
}

/// API Gateway's own shape, as Huawei's gateways answer authentication failures.
fn gateway_refusal(req: &Incoming<'_>, message: &str) -> Wire {
    Wire::json(
        401,
        &json!({
            "error_code": "APIGW.0301",
            "error_msg": format!("Incorrect IAM authentication information: {message}"),
            "request_id": req.request_id,
        }),
    )
    .with_header("X-Request-Id", req.request_id)
}

fn route(svc: &Service, req: &Incoming<'_>, who: &crate::Who) -> Wire {
    let account = who.account.as_str();
    let Some(seg) = req.segments("/") else {
        return err(
            req,
            404,
            "APIGW.0101",
            "The API does not exist or has not been published",
        );
    };
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let live = svc.live();
    let project = live.config.huawei.as_ref().map(|h| h.project_id.as_str());
    match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["v1", "cloudimages", id, "file"]) => ims_export(svc, req, who, id),
        ("GET", ["v1", p, "jobs", job]) if Some(*p) == project => job_of(svc, req, account, job),
        ("GET", ["v1", "cloudimages", "job", job]) => job_of(svc, req, account, job),
        ("GET", ["v2", "cloudimages"]) => list_images(svc, req, account),
        ("POST", ["v2", p, "volumes", volume, "action"]) if Some(*p) == project => {
            evs_upload(svc, req, who, volume)
        }
        _ => err(
            req,
            404,
            "APIGW.0101",
            "The API does not exist or has not been published",
        ),
    }
}

fn json_body(req: &Incoming<'_>) -> Result<Value, Wire> {
    match serde_json::from_slice(req.body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(err(
            req,
            400,
            "IMG.0001",
            "the request body is not a JSON object",
        )),
    }
}

/// An image `account` may see: configured, or made by its own EVS upload (then only once
/// made). Any other is not found.
fn image_source(svc: &Service, account: &str, id: &str) -> Result<PathBuf, (u16, String)> {
    match svc.with_store(|s| s.catalogue_image(id)) {
        Ok(Some(image)) if image.visible_to(account) => return Ok(image.path),
        Ok(Some(_)) => return Err((404, format!("the image {id} does not exist"))),
        Ok(None) => {}
        Err(e) => return Err((500, e.message().to_string())),
    }
    match svc.with_store(|s| s.image(id)) {
        Ok(Some(img)) if img.account != account => {
            Err((404, format!("the image {id} does not exist")))
        }
        Ok(Some(img)) if img.state == JobState::Completed => Ok(img.path),
        Ok(Some(img)) => Err((
            400,
            format!(
                "the image {id} is not active (its upload is {})",
                img.state.name()
            ),
        )),
        _ => Err((404, format!("the image {id} does not exist"))),
    }
}

fn submitted(
    svc: &Service,
    req: &Incoming<'_>,
    reply: imgconv_export::api::Reply,
    ok: u16,
) -> Wire {
    if reply.run.is_some() {
        svc.notify();
    }
    if reply.status != 200 {
        let e = &reply.body["error"];
        return err(
            req,
            reply.status,
            e["code"].as_str().unwrap_or("IMG.0001"),
            e["message"].as_str().unwrap_or(""),
        );
    }
    Wire::json(ok, &reply.body)
}

fn ims_export(svc: &Service, req: &Incoming<'_>, who: &crate::Who, id: &str) -> Wire {
    let account = who.account.as_str();
    let source = match image_source(svc, account, id) {
        Ok(p) => p,
        Err((status, m)) => return err(req, status, "IMG.0004", &m),
    };
    let body = match json_body(req) {
        Ok(b) => b,
        Err(w) => return w,
    };
    let ctx = svc.context(&source, Some(id), req, who);
    let reply = Api::HuaweiIms.submit(&svc.store, &ctx, &body);
    submitted(svc, req, reply, 200)
}

fn job_of(svc: &Service, req: &Incoming<'_>, account: &str, id: &str) -> Wire {
    let job = match svc.with_store(|s| s.get_of(id, account)) {
        Ok(j) => j,
        Err(e) if is_not_found(&e) => {
            return err(
                req,
                404,
                "IMG.0040",
                &format!("the job {id} does not exist"),
            )
        }
        Err(e) => return err(req, 500, "IMG.0001", e.message()),
    };
    let api = match job.provider.as_str() {
        "huawei-ims" => Api::HuaweiIms,
        "huawei-evs" => Api::HuaweiEvs,
        _ => {
            return err(
                req,
                404,
                "IMG.0040",
                &format!("the job {id} does not exist"),
            )
        }
    };
    let reply = svc.with_store(|s| api.describe(s, account, id));
    Wire::json(reply.status, &reply.body)
}

fn image_view(
    id: &str,
    name: &str,
    status: &str,
    format: &str,
    size: Option<u64>,
    created: u64,
) -> Value {
    json!({
        "id": id,
        "name": name,
        "status": status,
        "disk_format": format,
        "__image_source_type": "uds",
        "__imagetype": "private",
        "visibility": "private",
        "min_disk": size.map(|s| s.div_ceil(1 << 30)).unwrap_or(0),
        "size": size.unwrap_or(0),
        "created_at": rfc3339(created),
        "updated_at": rfc3339(created),
        "self": format!("/v2/images/{id}"),
    })
}

fn list_images(svc: &Service, req: &Incoming<'_>, account: &str) -> Wire {
    let wanted = req.query_value("id");
    let mut images = vec![];
    let catalogue = match &wanted {
        Some(w) => svc.with_store(|s| s.catalogue_image(w).map(|i| i.into_iter().collect())),
        None => svc.with_store(|s| s.catalogue()),
    };
    let catalogue: Vec<imgconv_export::jobs::CatalogueImage> = match catalogue {
        Ok(c) => c,
        Err(e) => return err(req, 500, "IMG.0001", e.message()),
    };
    for image in catalogue.iter().filter(|i| i.visible_to(account)) {
        let (id, path) = (&image.id, &image.path);
        let format = imgconv::open_image(path, None)
            .map(|r| r.format().name().to_string())
            .unwrap_or_default();
        let size = std::fs::metadata(path).ok().map(|m| m.len());
        images.push(image_view(id, id, "active", &format, size, 0));
    }
    if let Some(w) = &wanted {
        if let Ok(Some(img)) = svc
            .with_store(|s| s.image(w))
            .map(|i| i.filter(|i| i.account == account))
        {
            let status = match img.state {
                JobState::Queued | JobState::Active => "saving",
                JobState::Completed => "active",
                JobState::Failed | JobState::Cancelled => "killed",
            };
            images.push(image_view(
                &img.id,
                &img.name,
                status,
                &img.disk_format,
                img.size,
                img.created,
            ));
        }
    }
    Wire::json(200, &json!({ "images": images }))
}

fn evs_upload(svc: &Service, req: &Incoming<'_>, who: &crate::Who, volume: &str) -> Wire {
    let account = who.account.as_str();
    let live = svc.live();
    let Some(source) = Service::visible(&live.config.volumes, volume, account) else {
        return err(
            req,
            404,
            "EVS.5404",
            &format!("the volume {volume} does not exist"),
        );
    };
    let body = match json_body(req) {
        Ok(b) => b,
        Err(_) => {
            return err(
                req,
                400,
                "EVS.2024",
                "the request body is not a JSON object",
            )
        }
    };
    let ctx = svc.context(source, Some(volume), req, who);
    let reply = Api::HuaweiEvs.submit(&svc.store, &ctx, &body);
    submitted(svc, req, reply, 202)
}
