//! ZStack over HTTP, as its Java `ZSClient` speaks it:
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
//! Errors are `{"error": {"code", "description", "details"}}`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{ApiJob, ExportImage};
use crate::auth::same_secret;
use crate::providers::shared::json_request;
use crate::providers::{Context, Failure};
use crate::wire::{Incoming, Wire};
use crate::{Caller, Service, Who};

/// Whether a request is ZStack's.
pub(crate) fn routes(_: &axum::http::Method, path: &str) -> bool {
    path.starts_with("/zstack/")
}

/// A request id.
pub(crate) fn request_id(_: &axum::http::HeaderMap) -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A ZStack error.
pub(crate) fn error(request_id: &str, f: &Failure) -> Wire {
    Wire::json(f.status, &super::error_json(request_id, f)).with_header("X-Request-Id", request_id)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn no_such_api() -> Failure {
    Failure::new(404, "SYS.1001", "no such API")
}

pub(crate) fn handle(svc: &Service, req: &Incoming<'_>) -> Wire {
    route(svc, req).unwrap_or_else(|f| error(req.request_id, &f))
}

fn route(svc: &Service, req: &Incoming<'_>) -> Result<Wire, Failure> {
    let live = svc.live();
    let z =
        live.config.zstack.as_ref().ok_or_else(|| {
            Failure::new(404, "SYS.1001", "ZStack is not configured on this service")
        })?;
    let seg = req.segments("/zstack/v1/").ok_or_else(no_such_api)?;
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    if let ("PUT", ["accounts", "login"]) = (req.method.as_str(), seg.as_slice()) {
        return login(svc, req, z.session_timeout_secs);
    }
    let account = session_of(svc, req)?;
    match (req.method.as_str(), seg.as_slice()) {
        ("PUT", ["backup-storage", bs, "actions"]) if *bs == z.backup_storage_uuid => {
            export(svc, req, z, &account)
        }
        ("GET", ["api-jobs", name]) => {
            match svc.with_store(|s| super::poll(s, &account, name))? {
                // A failed export polls as 503 with its error, as ZStack answers it.
                j @ ApiJob::Failed { .. } => Ok(Wire::json(503, &j)),
                j @ ApiJob::Done { .. } => Ok(Wire::json(200, &absolute(svc, j))),
                j @ ApiJob::Running { .. } => Ok(Wire::json(202, &absolute(svc, j))),
            }
        }
        ("DELETE", ["accounts", "sessions", id]) => svc
            .with_store(|s| s.delete_session(id, &account))
            .map(|()| Wire::json(200, &serde_json::json!({})))
            .map_err(|e| Failure::new(503, "SYS.1006", e.message())),
        _ => Err(no_such_api()),
    }
}

/// `logInByAccount`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogIn {
    #[serde(default)]
    log_in_by_account: Option<Credentials>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    #[serde(default)]
    account_name: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// A session as the login answers it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    uuid: String,
    account_uuid: String,
    user_uuid: String,
    expired_date: String,
    create_date: String,
}

#[derive(Serialize)]
struct Inventory {
    inventory: Session,
}

fn bad_body(_: String) -> Failure {
    Failure::bad("SYS.1007", "the request body is not a JSON object")
}

fn login(svc: &Service, req: &Incoming<'_>, timeout: u64) -> Result<Wire, Failure> {
    let b: LogIn = json_request(req.body, bad_body)?;
    let missing = || Failure::bad("SYS.1007", "logInByAccount needs accountName and password");
    let c = b.log_in_by_account.ok_or_else(missing)?;
    let (Some(name), Some(password)) = (c.account_name, c.password) else {
        return Err(missing());
    };
    let live = svc.live();
    let ok = live.config.callers.iter().any(|c| match c {
        Caller::Zstack {
            account,
            password_sha512,
            ..
        } => {
            account == &name
                && same_secret(
                    &password_sha512.to_ascii_lowercase(),
                    &password.to_ascii_lowercase(),
                )
        }
        _ => false,
    });
    if !ok {
        return Err(Failure::new(
            401,
            "ID.1001",
            "wrong account name or password",
        ));
    }
    let t = now();
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    svc.with_store(|s| s.create_session(&uuid, &name, t + timeout))
        .map_err(|e| Failure::new(503, "SYS.1006", e.message()))?;
    let account_uuid =
        imgconv_export::jobs::fingerprint(&serde_json::json!(name))[..32].to_string();
    Ok(Wire::json(
        200,
        &Inventory {
            inventory: Session {
                uuid,
                user_uuid: account_uuid.clone(),
                account_uuid,
                expired_date: imgconv_export::jobs::rfc3339(t + timeout),
                create_date: imgconv_export::jobs::rfc3339(t),
            },
        },
    ))
}

/// The account of the request's session (`Authorization: OAuth <session uuid>`), which
/// any instance on the same job store knows.
fn session_of(svc: &Service, req: &Incoming<'_>) -> Result<String, Failure> {
    let denied = |m: &str| Failure::new(401, "ID.1001", m);
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
        Err(e) => Err(Failure::new(503, "SYS.1006", e.message())),
    }
}

fn export(
    svc: &Service,
    req: &Incoming<'_>,
    z: &crate::Zstack,
    account: &str,
) -> Result<Wire, Failure> {
    let request = ExportImage {
        body: json_request(req.body, bad_body)?,
        job_uuid: req.header("x-job-uuid").map(str::to_string),
    };
    let image = request
        .body
        .params
        .as_ref()
        .and_then(|p| p.image_uuid.as_deref())
        .ok_or_else(|| {
            Failure::bad(
                "SYS.1007",
                "exportImageFromBackupStorage.imageUuid is required",
            )
        })?;
    let source = svc
        .image(image, account)
        .map_err(|e| super::store_failure(&e))?
        .ok_or_else(|| {
            Failure::new(
                404,
                "SYS.1007",
                format!("the image {image} is not on this backup storage"),
            )
        })?;
    let who = Who {
        account: account.to_string(),
        key: account.to_string(),
    };
    let ctx = Context {
        publish: Some((
            z.publish_dir.clone(),
            format!("{}/export/", svc.live().config.public_url),
        )),
        ..svc.context(&source, req, &who)
    };
    let (job, run) = super::export_image(&svc.store, &ctx, &request)?;
    if run.is_some() {
        svc.notify();
    }
    Ok(Wire::json(202, &absolute(svc, job)))
}

/// A relative `location` made absolute: ZSClient follows it as it is.
fn absolute(svc: &Service, job: ApiJob) -> ApiJob {
    match job {
        ApiJob::Running { location } if location.starts_with('/') => ApiJob::Running {
            location: format!("{}{location}", svc.live().config.public_url),
        },
        other => other,
    }
}
