//! Huawei Cloud IMS and EVS over HTTP, signed with `SDK-HMAC-SHA256`:
//!
//! - `POST /v1/cloudimages/{image_id}/file`: export an image to OBS (`bucket_url`) → `job_id`;
//! - `GET /v1/{project_id}/jobs/{job_id}` and `GET /v1/cloudimages/job/{job_id}`: the job;
//! - `GET /v2/cloudimages?id=...`: images, including those EVS made;
//! - `POST /v2/{project_id}/volumes/{volume_id}/action` with `os-volume_upload_image`: a new
//!   image from a volume, converted into the image store and then exportable through IMS.
//!
//! Errors are `{"error": {"code", "message"}, "request_id"}`; authentication failures are the
//! API gateway's own `{"error_code", "error_msg", "request_id"}`.

use std::path::PathBuf;

use imgconv_export::jobs::JobState;
use serde::Serialize;

use super::{ExportImage, UploadImage};
use crate::auth::verify_huawei;
use crate::providers::shared::json_request;
use crate::providers::{Failure, Provider};
use crate::wire::{Incoming, Wire};
use crate::{Caller, Service, Who};

/// Whether a request is Huawei's.
pub(crate) fn routes(_: &axum::http::Method, path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/v2/")
}

/// A request id as Huawei writes them (32 hex digits).
pub(crate) fn request_id(_: &axum::http::HeaderMap) -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A Huawei error: `{"error": {"code", "message"}, "request_id"}`.
pub(crate) fn error(request_id: &str, f: &Failure) -> Wire {
    let mut body = super::error_json(request_id, f);
    body["request_id"] = request_id.into();
    Wire::json(f.status, &body).with_header("X-Request-Id", request_id)
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
    match route(svc, req, &who) {
        Ok(w) => w.with_header("X-Request-Id", req.request_id),
        Err(f) => error(req.request_id, &f),
    }
}

/// API Gateway's own shape, as Huawei's gateways answer authentication failures.
fn gateway_refusal(req: &Incoming<'_>, message: &str) -> Wire {
    Wire::json(
        401,
        &serde_json::json!({
            "error_code": "APIGW.0301",
            "error_msg": format!("Incorrect IAM authentication information: {message}"),
            "request_id": req.request_id,
        }),
    )
    .with_header("X-Request-Id", req.request_id)
}

fn no_such_api() -> Failure {
    Failure::new(
        404,
        "APIGW.0101",
        "The API does not exist or has not been published",
    )
}

fn route(svc: &Service, req: &Incoming<'_>, who: &Who) -> Result<Wire, Failure> {
    let seg = req.segments("/").ok_or_else(no_such_api)?;
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let live = svc.live();
    let project = live.config.huawei.as_ref().map(|h| h.project_id.as_str());
    match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["v1", "cloudimages", id, "file"]) => ims_export(svc, req, who, id),
        ("GET", ["v1", p, "jobs", job]) if Some(*p) == project => show_job(svc, who, job),
        ("GET", ["v1", "cloudimages", "job", job]) => show_job(svc, who, job),
        ("GET", ["v2", "cloudimages"]) => list_images(svc, req, who),
        ("POST", ["v2", p, "volumes", volume, "action"]) if Some(*p) == project => {
            evs_upload(svc, req, who, volume)
        }
        _ => Err(no_such_api()),
    }
}

fn show_job(svc: &Service, who: &Who, id: &str) -> Result<Wire, Failure> {
    let job = svc.with_store(|s| super::show_job(s, &who.account, id))?;
    Ok(Wire::json(200, &job))
}

/// An image `account` may see: in the catalogue, or made by its own EVS upload (then only
/// once made). Any other is not found.
fn image_source(svc: &Service, account: &str, id: &str) -> Result<PathBuf, Failure> {
    let gone = || Failure::new(404, "IMG.0004", format!("the image {id} does not exist"));
    match svc.with_store(|s| s.catalogue_image(id)) {
        Ok(Some(image)) if image.visible_to(account) => return Ok(image.path),
        Ok(Some(_)) => return Err(gone()),
        Ok(None) => {}
        Err(e) => return Err(super::ims_store_failure(&e)),
    }
    match svc
        .with_store(|s| s.image(id))
        .map_err(|e| super::ims_store_failure(&e))?
    {
        Some(img) if img.account != account => Err(gone()),
        Some(img) if img.state == JobState::Completed => Ok(img.path),
        Some(img) => Err(Failure::bad(
            "IMG.0004",
            format!(
                "the image {id} is not active (its upload is {})",
                img.state.name()
            ),
        )),
        None => Err(gone()),
    }
}

fn ims_export(svc: &Service, req: &Incoming<'_>, who: &Who, id: &str) -> Result<Wire, Failure> {
    let source = image_source(svc, &who.account, id)?;
    let request = ExportImage {
        image_id: id.to_string(),
        body: json_request(req.body, |_| {
            Failure::bad("IMG.0001", "the request body is not a JSON object")
        })?,
    };
    let ctx = svc.context(&source, req, who);
    let (answer, run) = super::export_image(&svc.store, &ctx, &request)?;
    if run.is_some() {
        svc.notify();
    }
    Ok(Wire::json(200, &answer))
}

fn evs_upload(svc: &Service, req: &Incoming<'_>, who: &Who, volume: &str) -> Result<Wire, Failure> {
    let live = svc.live();
    let source = Service::visible(&live.config.volumes, volume, &who.account).ok_or_else(|| {
        Failure::new(
            404,
            "EVS.5404",
            format!("the volume {volume} does not exist"),
        )
    })?;
    let request = UploadImage {
        volume_id: volume.to_string(),
        body: json_request(req.body, |_| {
            Failure::bad("EVS.2024", "the request body is not a JSON object")
        })?,
    };
    let ctx = svc.context(source, req, who);
    let (answer, run) = super::upload_image(&svc.store, &ctx, &request)?;
    if run.is_some() {
        svc.notify();
    }
    Ok(Wire::json(202, &answer))
}

/// An image as `ListImages` shows it.
#[derive(Serialize)]
struct ImageView {
    id: String,
    name: String,
    status: String,
    disk_format: String,
    __image_source_type: &'static str,
    __imagetype: &'static str,
    visibility: &'static str,
    min_disk: u64,
    size: u64,
    created_at: String,
    updated_at: String,
    #[serde(rename = "self")]
    link: String,
}

impl ImageView {
    fn new(
        id: &str,
        name: &str,
        status: &str,
        disk_format: &str,
        size: Option<u64>,
        created: u64,
    ) -> ImageView {
        ImageView {
            id: id.into(),
            name: name.into(),
            status: status.into(),
            disk_format: disk_format.into(),
            __image_source_type: "uds",
            __imagetype: "private",
            visibility: "private",
            min_disk: size.map(|s| s.div_ceil(1 << 30)).unwrap_or(0),
            size: size.unwrap_or(0),
            created_at: imgconv_export::jobs::rfc3339(created),
            updated_at: imgconv_export::jobs::rfc3339(created),
            link: format!("/v2/images/{id}"),
        }
    }
}

#[derive(Serialize)]
struct Images {
    images: Vec<ImageView>,
}

fn list_images(svc: &Service, req: &Incoming<'_>, who: &Who) -> Result<Wire, Failure> {
    let account = who.account.as_str();
    let wanted = req.query_value("id");
    let catalogue = match &wanted {
        Some(w) => svc.with_store(|s| s.catalogue_image(w).map(|i| i.into_iter().collect())),
        None => svc.with_store(|s| s.catalogue()),
    };
    let catalogue: Vec<imgconv_export::jobs::CatalogueImage> =
        catalogue.map_err(|e| super::ims_store_failure(&e))?;
    let mut images = vec![];
    for image in catalogue.iter().filter(|i| i.visible_to(account)) {
        let (id, path) = (&image.id, &image.path);
        // Told by its magic bytes: a listing opens no image.
        let format = imgconv::detect_format(path)
            .map(|f| f.name().to_string())
            .unwrap_or_default();
        let size = std::fs::metadata(path).ok().map(|m| m.len());
        images.push(ImageView::new(id, id, "active", &format, size, 0));
    }
    if let Some(w) = &wanted {
        if let Some(img) = svc
            .with_store(|s| s.image(w))
            .map_err(|e| super::ims_store_failure(&e))?
            .filter(|i| i.account == account)
        {
            let status = match img.state {
                JobState::Queued | JobState::Active => "saving",
                JobState::Completed => "active",
                JobState::Failed | JobState::Cancelled => "killed",
            };
            images.push(ImageView::new(
                &img.id,
                &img.name,
                status,
                &img.disk_format,
                img.size,
                img.created,
            ));
        }
    }
    Ok(Wire::json(200, &Images { images }))
}
