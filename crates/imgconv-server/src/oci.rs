//! OCI Compute: `POST /20160918/images/{imageId}/actions/export` (`ExportImageDetails`),
//! `GET /20160918/workRequests/{id}` and `GET /20160918/images/{id}`, with HTTP signatures.

use imgconv_export::api::rfc3339;
use imgconv_export::api::Api;
use serde_json::{json, Value};

use crate::auth::verify_oci;
use crate::wire::{error, Incoming, Wire};
use crate::{Provider, Service};

fn err(req: &Incoming<'_>, status: u16, code: &str, message: &str) -> Wire {
    error(Provider::Oci, req.request_id, status, code, message)
}

fn not_found(req: &Incoming<'_>) -> Wire {
    err(
        req,
        404,
        "NotAuthorizedOrNotFound",
        "Authorization failed or requested resource not found.",
    )
}

pub(crate) fn handle(svc: &Service, req: &Incoming<'_>) -> Wire {
    let live = svc.live();
    let who = match verify_oci(&req.signed(), |k| live.oci_keys.get(k)) {
        Ok(key) => svc.who(Provider::Oci, &key),
        Err(e) => return err(req, 401, "NotAuthenticated", e.message()),
    };
    let account = who.account.as_str();
    let Some(seg) = req.segments("/20160918/") else {
        return not_found(req);
    };
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let w = match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["images", id, "actions", "export"]) => export(svc, req, &who, id),
        ("GET", ["workRequests", id]) => work_request(svc, req, account, id),
        ("GET", ["images", id]) => image(svc, req, account, id),
        _ => not_found(req),
    };
    w.with_header("opc-request-id", req.request_id)
}

fn image_body(svc: &Service, id: &str, state: &str) -> Value {
    json!({
        "id": id,
        "compartmentId": svc.live().config.oci.as_ref().map(|o| o.compartment_id.clone()),
        "displayName": id,
        "lifecycleState": state,
        "operatingSystem": "Custom",
        "operatingSystemVersion": "",
        "createImageAllowed": true,
        "launchMode": "PARAVIRTUALIZED",
        "timeCreated": rfc3339(0),
    })
}

fn export(svc: &Service, req: &Incoming<'_>, who: &crate::Who, id: &str) -> Wire {
    let account = who.account.as_str();
    let Some(source) = svc.image(id, account) else {
        return not_found(req);
    };
    let body: Value = match serde_json::from_slice(req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return err(
                req,
                400,
                "InvalidParameter",
                "the body is not an ExportImageDetails JSON object",
            )
        }
    };
    // The namespace the request names must be the one the storage serves.
    let live = svc.live();
    let ns = live.config.oci.as_ref().map(|o| o.namespace.as_str());
    let named = body
        .get("namespaceName")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            let uri = body.get("destinationUri")?.as_str()?;
            let u = url::Url::parse(uri).ok()?;
            let mut p = u.path_segments()?;
            (p.next() == Some("n")).then(|| p.next().map(str::to_string))?
        });
    if let (Some(named), Some(ns)) = (named.as_deref(), ns) {
        if named != ns
            && !body
                .get("destinationUri")
                .and_then(Value::as_str)
                .is_some_and(|u| u.contains("/p/"))
        {
            return err(
                req,
                400,
                "InvalidParameter",
                &format!("the namespace '{named}' is not served here"),
            );
        }
    }
    let ctx = svc.context(&source, Some(id), req, who);
    let reply = Api::Oci.submit(&svc.store, &ctx, &body);
    if reply.run.is_some() {
        svc.notify();
    }
    if reply.status != 200 {
        return err(
            req,
            reply.status,
            reply.body["code"].as_str().unwrap_or("InternalServerError"),
            reply.body["message"].as_str().unwrap_or(""),
        );
    }
    let mut image = image_body(svc, id, "EXPORTING");
    image["timeCreated"] = reply.body["timeCreated"].clone();
    let mut w = Wire::json(200, &image);
    for (k, v) in &reply.headers {
        w = w.with_header(k, v);
    }
    w
}

fn work_request(svc: &Service, req: &Incoming<'_>, account: &str, id: &str) -> Wire {
    let reply = svc.with_store(|s| Api::Oci.describe(s, account, id));
    if reply.status != 200 {
        return not_found(req);
    }
    let mut w = reply.body;
    w["compartmentId"] = json!(svc
        .live()
        .config
        .oci
        .as_ref()
        .map(|o| o.compartment_id.clone()));
    if w["status"] != "ACCEPTED" {
        w["timeStarted"] = w["timeAccepted"].clone();
    }
    Wire::json(200, &w)
}

fn image(svc: &Service, req: &Incoming<'_>, account: &str, id: &str) -> Wire {
    let Some(source) = svc.image(id, account) else {
        return not_found(req);
    };
    let etag = imgconv_export::api::oci_image_etag(&source);
    let exporting = svc.with_store(|s| s.exporting(Api::Oci.name(), account, id));
    let state = if exporting.unwrap_or(false) {
        "EXPORTING"
    } else {
        "AVAILABLE"
    };
    Wire::json(200, &image_body(svc, id, state)).with_header("etag", &etag)
}
