//! OCI Compute's REST: `POST /20160918/images/{imageId}/actions/export`
//! (`ExportImageDetails`), `GET /20160918/workRequests/{id}`, `GET /20160918/workRequests`
//! (`ListWorkRequests`) and `GET /20160918/images/{id}`,
//! signed with HTTP signatures; errors as `{"code", "message"}` with `opc-request-id`.

use axum::http::HeaderMap;

use super::{ExportImage, Image};
use crate::auth::verify_oci;
use crate::providers::shared::json_request;
use crate::providers::{Failure, Provider};
use crate::wire::{Incoming, Wire};
use crate::{Service, Who};

/// Whether a request is OCI's.
pub(crate) fn routes(_: &axum::http::Method, path: &str) -> bool {
    path.starts_with("/20160918/")
}

/// The request id: the client's `opc-request-id` when it is sane, else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("opc-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 98 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            uuid::Uuid::new_v4()
                .to_string()
                .replace('-', "")
                .to_uppercase()
        })
}

/// An OCI error: `{"code", "message"}`.
pub(crate) fn error(request_id: &str, f: &Failure) -> Wire {
    Wire::json(f.status, &super::error_json(request_id, f))
        .with_header("opc-request-id", request_id)
}

pub(crate) fn handle(svc: &Service, req: &Incoming<'_>) -> Wire {
    let live = svc.live();
    let who = match verify_oci(&req.signed(), |k| live.oci_keys.get(k)) {
        Ok(key) => svc.who(Provider::Oci, &key),
        Err(e) => {
            return error(
                req.request_id,
                &Failure::new(401, "NotAuthenticated", e.message()),
            )
        }
    };
    let compartment = live.config.oci.as_ref().map(|o| o.compartment_id.as_str());
    let seg = req.segments("/20160918/").unwrap_or_default();
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let outcome = match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["images", id, "actions", "export"]) => export(svc, req, &who, id),
        ("GET", ["workRequests", id]) => svc
            .with_store(|s| super::get_work_request(s, &who.account, id, compartment))
            .map(|w| Wire::json(200, &w)),
        ("GET", ["workRequests"]) => list_work_requests(svc, req, &who, compartment),
        ("GET", ["images", id]) => image(svc, &who, id, compartment),
        _ => Err(super::not_found()),
    };
    match outcome {
        Ok(w) => w.with_header("opc-request-id", req.request_id),
        Err(f) => error(req.request_id, &f),
    }
}

fn export(svc: &Service, req: &Incoming<'_>, who: &Who, id: &str) -> Result<Wire, Failure> {
    let source = svc
        .image(id, &who.account)
        .map_err(|e| super::store_failure(&e))?
        .ok_or_else(super::not_found)?;
    let details: super::ExportImageDetails = json_request(req.body, |_| {
        Failure::bad(
            "InvalidParameter",
            "the body is not an ExportImageDetails JSON object",
        )
    })?;
    // The namespace the request names must be the one the storage serves.
    let live = svc.live();
    let ns = live.config.oci.as_ref().map(|o| o.namespace.as_str());
    let uri = details.destination_uri.as_deref();
    let named = details.namespace_name.clone().or_else(|| {
        let u = url::Url::parse(uri?).ok()?;
        let mut p = u.path_segments()?;
        (p.next() == Some("n")).then(|| p.next().map(str::to_string))?
    });
    if let (Some(named), Some(ns)) = (named.as_deref(), ns) {
        if named != ns && !uri.is_some_and(|u| u.contains("/p/")) {
            return Err(Failure::bad(
                "InvalidParameter",
                format!("the namespace '{named}' is not served here"),
            ));
        }
    }
    let request = ExportImage {
        image_id: id.to_string(),
        details,
        retry_token: req.header("opc-retry-token").map(str::to_string),
        if_match: req.header("if-match").map(str::to_string),
    };
    let ctx = svc.context(&source, req, who);
    let (job, run, etag) = super::export_image(&svc.store, &ctx, &request)?;
    if run.is_some() {
        svc.notify();
    }
    let compartment = live.config.oci.as_ref().map(|o| o.compartment_id.as_str());
    let image = Image::new(id, compartment, "EXPORTING", job.created);
    Ok(Wire::json(200, &image)
        .with_header("opc-work-request-id", &job.id)
        .with_header("etag", &etag))
}

fn image(svc: &Service, who: &Who, id: &str, compartment: Option<&str>) -> Result<Wire, Failure> {
    let source = svc
        .image(id, &who.account)
        .map_err(|e| super::store_failure(&e))?
        .ok_or_else(super::not_found)?;
    let etag = super::image_etag(&source);
    let exporting = svc
        .with_store(|s| s.exporting(super::KIND, &who.account, id))
        .map_err(|e| super::store_failure(&e))?;
    let state = if exporting { "EXPORTING" } else { "AVAILABLE" };
    Ok(Wire::json(200, &Image::new(id, compartment, state, 0)).with_header("etag", &etag))
}

/// `GET /20160918/workRequests?compartmentId=...[&resourceId=...][&limit=N][&page=TOKEN]`:
/// the caller's own work requests, paged by `opc-next-page`.
fn list_work_requests(
    svc: &Service,
    req: &Incoming<'_>,
    who: &Who,
    compartment: Option<&str>,
) -> Result<Wire, Failure> {
    let asked = req
        .query_value("compartmentId")
        .ok_or_else(|| Failure::bad("MissingParameter", "compartmentId is required"))?;
    let number = |name: &str, default: usize, max: usize| -> Result<usize, Failure> {
        match req.query_value(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| Failure::bad("InvalidParameter", format!("{name} is not valid"))),
        }
    };
    let limit = number("limit", 100, 1000)?.max(1);
    let page = number("page", 0, usize::MAX)?;
    if compartment.is_some_and(|c| c != asked) {
        // Another compartment holds none of this service's work requests.
        return Ok(Wire::json(200, &Vec::<super::WorkRequest>::new()));
    }
    let resource = req.query_value("resourceId");
    let (items, next) = svc.with_store(|s| {
        super::list_work_requests(
            s,
            &who.account,
            compartment,
            resource.as_deref(),
            page,
            limit,
        )
    })?;
    let w = Wire::json(200, &items);
    Ok(match next {
        Some(n) => w.with_header("opc-next-page", &n),
        None => w,
    })
}
