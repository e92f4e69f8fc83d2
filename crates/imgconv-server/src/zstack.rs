//! ZStack, as its Java `ZSClient` speaks it:
//!
//! - `PUT /zstack/v1/accounts/login` with `{"logInByAccount":{"accountName","password"}}` (the
//!   password as hex SHA-512) → a session (`inventory.uuid`) that expires;
//! - `PUT /zstack/v1/backup-storage/{uuid}/actions` with `Authorization: OAuth <session>`,
//!   `X-Job-UUID` and `{"exportImageFromBackupStorage":{...}}` → 202 and the API job's
//!   absolute `location`;
//! - `GET` of that location: 202 while the export runs, 200 `{"imageUrl","exportMd5Sum"}` when
//!   done, 503 with the error when it failed;
//! - `DELETE /zstack/v1/accounts/sessions/{uuid}`: log out.
//!
//! The exported file is served at `imageUrl` (`public_url/export/NAME`, GET, HEAD and Range).

use std::time::{SystemTime, UNIX_EPOCH};

use imgconv_export::api::rfc3339;
use imgconv_export::api::{Api, Context};
use serde_json::{json, Value};

use crate::auth::same_secret;
use crate::wire::{error, Incoming, Wire};
use crate::{Caller, Provider, Service};

fn err(req: &Incoming<'_>, status: u16, code: &str, message: &str) -> Wire {
    error(Provider::Zstack, req.request_id, status, code, message)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn handle(svc: &Service, req: &Incoming<'_>) -> Wire {
    let live = svc.live();
    let Some(z) = &live.config.zstack else {
        return err(
            req,
            404,
            "SYS.1001",
            "ZStack is not configured on this service",
        );
    };
    let Some(seg) = req.segments("/zstack/v1/") else {
        return err(req, 404, "SYS.1001", "no such API");
    };
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    if let ("PUT", ["accounts", "login"]) = (req.method.as_str(), seg.as_slice()) {
        return login(svc, req, z.session_timeout_secs);
    }
    let account = match session_of(svc, req) {
        Ok(a) => a,
        Err(w) => return w,
    };
    match (req.method.as_str(), seg.as_slice()) {
        ("PUT", ["backup-storage", bs, "actions"]) if *bs == z.backup_storage_uuid => {
            export(svc, req, z, &account)
        }
        ("GET", ["api-jobs", id]) => poll(svc, req, &account, id),
        ("DELETE", ["accounts", "sessions", id]) => {
            match svc.with_store(|s| s.delete_session(id, &account)) {
                Ok(()) => Wire::json(200, &json!({})),
                Err(e) => err(req, 503, "SYS.1006", e.message()),
            }
        }
        _ => err(req, 404, "SYS.1001", "no such API"),
    }
}

fn body(req: &Incoming<'_>) -> Result<Value, Wire> {
    match serde_json::from_slice(req.body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(err(
            req,
            400,
            "SYS.1007",
            "the request body is not a JSON object",
        )),
    }
}

fn login(svc: &Service, req: &Incoming<'_>, timeout: u64) -> Wire {
    let b = match body(req) {
        Ok(b) => b,
        Err(w) => return w,
    };
    let p = &b["logInByAccount"];
    let (Some(name), Some(password)) = (p["accountName"].as_str(), p["password"].as_str()) else {
        return err(
            req,
            400,
            "SYS.1007",
            "logInByAccount needs accountName and password",
        );
    };
    let live = svc.live();
    let ok = live.config.callers.iter().any(|c| match c {
        Caller::Zstack {
            account,
            password_sha512,
            ..
        } => {
            account == name
                && same_secret(
                    &password_sha512.to_ascii_lowercase(),
                    &password.to_ascii_lowercase(),
                )
        }
        _ => false,
    });
    if !ok {
        return err(req, 401, "ID.1001", "wrong account name or password");
    }
    let t = now();
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    if let Err(e) = svc.with_store(|s| s.create_session(&uuid, name, t + timeout)) {
        return err(req, 503, "SYS.1006", e.message());
    }
    let account_uuid = imgconv_export::jobs::fingerprint(&json!(name))[..32].to_string();
    Wire::json(
        200,
        &json!({ "inventory": {
            "uuid": uuid,
            "accountUuid": account_uuid,
            "userUuid": account_uuid,
            "expiredDate": rfc3339(t + timeout),
            "createDate": rfc3339(t),
        }}),
    )
}

/// The account of the request's session (`Authorization: OAuth <session uuid>`), which
/// any instance on the same job store knows.
fn session_of(svc: &Service, req: &Incoming<'_>) -> Result<String, Wire> {
    let denied = |m: &str| err(req, 401, "ID.1001", m);
    let token = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("OAuth "))
        .ok_or_else(|| {
            denied("the request has no session (Authorization: OAuth <session uuid>)")
        })?;
    match svc.with_store(|s| s.session(token.trim())) {
        Ok(Some(account)) => Ok(account),
        Ok(None) => Err(denied(
            "the session does not exist or has expired; log in again",
        )),
        Err(e) => Err(err(req, 503, "SYS.1006", e.message())),
    }
}

fn export(svc: &Service, req: &Incoming<'_>, z: &crate::Zstack, account: &str) -> Wire {
    let b = match body(req) {
        Ok(b) => b,
        Err(w) => return w,
    };
    let Some(image) = b["exportImageFromBackupStorage"]["imageUuid"].as_str() else {
        return err(
            req,
            400,
            "SYS.1007",
            "exportImageFromBackupStorage.imageUuid is required",
        );
    };
    let Some(source) = svc.image(image, account) else {
        return err(
            req,
            404,
            "SYS.1007",
            &format!("the image {image} is not on this backup storage"),
        );
    };
    let ctx = Context {
        publish: Some((
            z.publish_dir.clone(),
            format!("{}/export/", svc.live().config.public_url),
        )),
        ..svc.context(
            &source,
            None,
            req,
            &crate::Who {
                account: account.to_string(),
                key: account.to_string(),
            },
        )
    };
    let reply = Api::Zstack.submit(&svc.store, &ctx, &b);
    if reply.run.is_some() {
        svc.notify();
    }
    if reply.status >= 300 {
        let e = &reply.body["error"];
        return err(
            req,
            reply.status,
            e["code"].as_str().unwrap_or("SYS.1006"),
            e["description"].as_str().unwrap_or(""),
        );
    }
    Wire::json(202, &absolute(svc, reply.body))
}

/// A relative `location` made absolute: ZSClient follows it as it is.
fn absolute(svc: &Service, mut body: Value) -> Value {
    if let Some(l) = body["location"].as_str().filter(|l| l.starts_with('/')) {
        body["location"] = json!(format!("{}{l}", svc.live().config.public_url));
    }
    body
}

fn poll(svc: &Service, req: &Incoming<'_>, account: &str, id: &str) -> Wire {
    let job = match svc.with_store(|s| s.job_by_token(Api::Zstack.name(), account, id)) {
        Ok(j) if j.provider == Api::Zstack.name() => j,
        _ => return err(req, 404, "SYS.1001", &format!("no API job {id}")),
    };
    let reply = svc.with_store(|s| Api::Zstack.describe(s, account, &job.id));
    if reply.body.get("error").is_some() {
        // A failed export polls as 503 with its error, as ZStack answers it.
        return Wire::json(503, &reply.body);
    }
    Wire::json(reply.status, &absolute(svc, reply.body))
}
