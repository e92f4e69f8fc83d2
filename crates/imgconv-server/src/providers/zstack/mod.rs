//! ZStack `ExportImageFromBackupStorage`: an API job whose result is the published file's
//! `imageUrl` and `exportMd5Sum`; and the login sessions its callers hold.
//!
//! The typed request is what the HTTP body and `X-Job-UUID` (`wire`) and the command
//! line's JSON both parse into.

mod wire;

use imgconv::{Error, Format};
use imgconv_export::jobs::{Job, JobState, JobStore, Stores, TargetSpec};
use serde::{Deserialize, Serialize};

use super::shared::{
    cancel_job, find_job, hex_id, json_request, record, submit_job, Answer, CliRequest, CliStore,
    Context, Failure, Submission,
};

registration!("ZStack's entry points.", "zstack", [KIND]);

/// The name ZStack's jobs are stored under.
pub(crate) const KIND: &str = "zstack";

/// `exportImageFromBackupStorage`'s parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportParams {
    /// The image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuid: Option<String>,
    /// qcow2 (default), raw, vmdk, vhd or vdi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_format: Option<String>,
    /// The backup storage (also in the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_storage_uuid: Option<String>,
}

/// The body of `ExportImageFromBackupStorage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportBody {
    /// The parameters.
    #[serde(
        default,
        rename = "exportImageFromBackupStorage",
        skip_serializing_if = "Option::is_none"
    )]
    pub params: Option<ExportParams>,
}

/// `ExportImageFromBackupStorage`: the body and the client's name of its API job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportImage {
    /// The body.
    pub body: ExportBody,
    /// `X-Job-UUID`.
    pub job_uuid: Option<String>,
}

/// What a job records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default)]
    image_uuid: String,
    #[serde(default)]
    export_format: String,
    /// The name the client polls by.
    #[serde(default)]
    job_uuid: String,
}

/// ZStack's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// The code.
    pub code: String,
    /// The description.
    pub description: String,
    /// The details.
    pub details: String,
}

/// An API job as a poll shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ApiJob {
    /// Still running: where to poll (relative to the service's public URL).
    Running {
        /// `/zstack/v1/api-jobs/NAME`.
        location: String,
    },
    /// Done.
    #[serde(rename_all = "camelCase")]
    Done {
        /// The published file's URL.
        image_url: String,
        /// Its MD5.
        export_md5_sum: String,
    },
    /// Failed.
    Failed {
        /// What went wrong.
        error: ErrorBody,
    },
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::bad("SYS.1007", message)
}

/// ZStack's code for the store's errors.
fn store_failure(e: &Error) -> Failure {
    Failure::new(503, "SYS.1006", e.message())
}

/// `ExportImageFromBackupStorage` of the context's disk into the published folder.
pub(crate) fn export_image(
    stores: &impl Stores,
    ctx: &Context,
    req: &ExportImage,
) -> Result<(ApiJob, Option<String>), Failure> {
    let params = req
        .body
        .params
        .as_ref()
        .ok_or_else(|| bad("the request body needs exportImageFromBackupStorage"))?;
    let image = params
        .image_uuid
        .as_deref()
        .ok_or_else(|| bad("imageUuid is required"))?;
    let format = params.export_format.as_deref().unwrap_or("qcow2");
    let fmt = match format {
        "qcow2" => Format::Qcow2,
        "raw" => Format::Raw,
        "vmdk" => Format::Vmdk,
        "vhd" => Format::Vhd,
        "vdi" => Format::Vdi,
        other => {
            return Err(bad(format!(
                "exportFormat '{other}' is not one of qcow2, raw, vmdk, vhd, vdi"
            )))
        }
    };
    let (dir, base) = ctx.publish.clone().ok_or_else(|| {
        Failure::new(
            503,
            "SYS.1006",
            "the backup storage has no published folder configured",
        )
    })?;
    // ZStack clients name their API job (X-Job-UUID, 32 hex digits): the name is the
    // submission's idempotency token within the account, and the job's own id is fresh (a
    // client's name must not collide with, or reveal, another account's job).
    let token = match &req.job_uuid {
        Some(u) if u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(u.to_lowercase())
        }
        Some(_) => return Err(bad("X-Job-UUID must be 32 hexadecimal digits")),
        None => None,
    };
    // ZStack polls the job by the client's name; it is the job's id too unless that id is
    // taken (by another account's job: then the job gets a fresh id, and polls find it by
    // its name within the account, `JobStore::job_by_token`).
    let id = match &token {
        Some(t) if stores.with(|s| s.get(t)).is_err() => t.clone(),
        _ => hex_id(32),
    };
    let name = token.clone().unwrap_or_else(|| id.clone());
    let spec = ctx.job(
        fmt,
        vec![],
        TargetSpec::Folder {
            dir,
            // Served to anyone who has the URL: a name nobody can guess from the ids
            // another account sees.
            name: format!("{image}-{}.{format}", hex_id(32)),
            base_url: base,
        },
    );
    let record = Record {
        image_uuid: image.to_string(),
        export_format: format.to_string(),
        job_uuid: name,
    };
    let accepted = submit_job(
        stores,
        ctx,
        &spec,
        Submission {
            kind: KIND,
            id: &id,
            token: token.as_deref(),
            request: &req.body,
            echo: &record,
            subject: Some(image),
            failure: store_failure,
        },
    )?;
    let run = accepted.run();
    Ok((
        ApiJob::Running {
            location: location(&accepted.job),
        },
        run,
    ))
}

/// Where a job is polled, relative to the service's public URL.
fn location(job: &Job) -> String {
    let r: Record = record(job);
    let name = if r.job_uuid.is_empty() {
        &job.id
    } else {
        &r.job_uuid
    };
    format!("/zstack/v1/api-jobs/{name}")
}

/// A job as a poll shows it.
pub(crate) fn api_job(job: &Job) -> ApiJob {
    match (&job.state, &job.result) {
        (JobState::Completed, Some(r)) => ApiJob::Done {
            image_url: r.location.clone(),
            export_md5_sum: r.md5.clone(),
        },
        (JobState::Failed | JobState::Cancelled, _) => ApiJob::Failed {
            error: ErrorBody {
                code: "SYS.1006".into(),
                description: "the export failed".into(),
                details: job.message.clone(),
            },
        },
        _ => ApiJob::Running {
            location: location(job),
        },
    }
}

/// The API job `account` named `name` (its `X-Job-UUID`, or the job's id); another
/// account's is not found.
pub(crate) fn poll(store: &mut JobStore, account: &str, name: &str) -> Result<ApiJob, Failure> {
    let gone = || Failure::new(404, "SYS.1001", format!("no API job {name}"));
    match store.job_by_token(KIND, account, name) {
        Ok(j) if j.provider == KIND => Ok(api_job(&j)),
        Err(e) if e.kind() != imgconv::ErrorKind::NotFound => Err(store_failure(&e)),
        _ => Err(gone()),
    }
}

/// The error body of ZStack (`{"error": {"code", "description", "details"}}`).
fn error_json(_request_id: &str, f: &Failure) -> serde_json::Value {
    serde_json::json!({
        "error": { "code": f.code, "description": f.message, "details": f.message }
    })
}

fn cli_submit(stores: &CliStore<'_>, ctx: &Context, r: &CliRequest<'_>) -> Result<Answer, Failure> {
    let req = ExportImage {
        body: json_request(r.body, bad)?,
        job_uuid: r.header("x-job-uuid"),
    };
    let (job, run) = export_image(stores, ctx, &req)?;
    Ok(Answer {
        status: 202,
        run,
        ..Answer::ok(&job)
    })
}

fn answer(job: &Job) -> Answer {
    let view = api_job(job);
    let status = match view {
        ApiJob::Running { .. } => 202,
        _ => 200,
    };
    Answer {
        status,
        ..Answer::ok(&view)
    }
}

fn cli_describe(store: &mut JobStore, account: &str, id: &str) -> Result<Answer, Failure> {
    match find_job(store, account, &[KIND], id) {
        Ok(Some(job)) => Ok(answer(&job)),
        Ok(None) => poll(store, account, id).map(|v| Answer::ok(&v)),
        Err(e) => Err(store_failure(&e)),
    }
}

fn cli_list(store: &mut JobStore, account: &str, _kind: &str) -> Result<Answer, Failure> {
    let jobs = store.list(KIND, account).map_err(|e| store_failure(&e))?;
    let items: Vec<ApiJob> = jobs.iter().map(api_job).collect();
    Ok(Answer::ok(&items))
}

fn cli_cancel(stores: &CliStore<'_>, account: &str, id: &str) -> Result<Answer, Failure> {
    match cancel_job(stores, account, &[KIND], id) {
        Ok(Some(job)) => Ok(Answer::ok(&api_job(&job))),
        Ok(None) => Err(Failure::new(404, "SYS.1001", format!("no API job {id}"))),
        Err(e) => Err(store_failure(&e)),
    }
}
