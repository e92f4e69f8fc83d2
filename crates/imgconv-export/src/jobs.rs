//! Export jobs: submit, run, status, cancel, list, kept in an SQLite database so that they
//! survive the process.
//!
//! A job is `queued` when submitted, `active` while a process runs it, then `completed`,
//! `failed` or `cancelled`. The process running a job records its pid and start time; a job
//! found `active` (or `queued` with a runner) whose process is gone is marked `failed` when the
//! store is next opened, so a killed process never leaves a job lost or reported complete
//! (its multipart upload, if any, was never completed, so no object exists).
//!
//! Idempotency follows the cloud APIs: a client token names a request for 24 hours; the same
//! token with the same request returns the same job, with a different request it is a
//! conflict. Cancelling an active job sets a flag that the running process polls; it aborts
//! the upload and marks the job `cancelled`.
//!
//! A store opened with [`Recovery::Requeue`] (what `imgconv serve` does) puts a dead
//! process's job back in the queue instead, after aborting its upload, until the job has been
//! attempted [`MAX_ATTEMPTS`] times; and with [`StoreOptions::interrupt_requeues`] a job whose
//! runner is stopped (the service shutting down) goes back to the queue rather than to
//! `cancelled`.
//!
//! The schema carries a version (`PRAGMA user_version`); [`JobStore::open`] migrates an older
//! database forward in one transaction. Version 1: jobs and tokens. Version 2: a job's
//! attempt count, and the image catalogue (images that exports made, such as Huawei EVS's
//! `os-volume_upload_image`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imgconv::{
    open_image, CancelToken, ConvertOptions, Error, ErrorKind, Format, Progress, Result,
    WriterOptions,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{export, Credentials, ParConfig, ParUrl, S3Config, S3Location, Target};

/// How long a client token names its request.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Where a job puts the object (credentials are not stored: they come from the
/// environment of the process that runs the job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetSpec {
    /// An S3-compatible bucket.
    S3 {
        /// Endpoint URL.
        endpoint: String,
        /// Signing region.
        region: String,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// An OCI pre-authenticated request URL (a secret, kept in the job database only).
    Par {
        /// The PAR URL.
        url: String,
    },
    /// A folder published under a base URL.
    Folder {
        /// The folder.
        dir: PathBuf,
        /// The file name.
        name: String,
        /// The URL the folder is served at.
        base_url: String,
    },
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The image to export.
    pub source: PathBuf,
    /// The output format (its name: raw, qcow2, vmdk, vhd, vdi).
    pub format: String,
    /// `-o` options for the output format.
    pub writer_options: Vec<String>,
    /// Compress where the format can.
    pub compress: bool,
    /// Where the object goes.
    pub target: TargetSpec,
    /// Wrap the QCOW2 in Oracle Cloud's `OCI` tar (with `image_metadata.json`).
    #[serde(default)]
    pub oci_archive: bool,
    /// The archive's `image_metadata.json` (default: [`crate::oci_image_metadata`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_metadata: Option<serde_json::Value>,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Submitted, not started.
    Queued,
    /// Running.
    Active,
    /// The object is in place.
    Completed,
    /// Stopped by an error; no object.
    Failed,
    /// Stopped on request; no object.
    Cancelled,
}

impl JobState {
    /// The state's name, as stored.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Active => "active",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "queued" => JobState::Queued,
            "active" => JobState::Active,
            "completed" => JobState::Completed,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A finished job's object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// Where the object is.
    pub location: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its MD5, hex.
    pub md5: String,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// The job's id (provider-style, e.g. `export-ami-0123456789abcdef0`).
    pub id: String,
    /// The API the job came from.
    pub provider: String,
    /// The state.
    pub state: JobState,
    /// Cancellation asked for and not yet done.
    pub cancel_requested: bool,
    /// Percent done, 0 to 100.
    pub progress: u8,
    /// What is happening or what went wrong.
    pub message: String,
    /// What the job does.
    pub spec: JobSpec,
    /// The provider's request fields that responses echo.
    pub request: serde_json::Value,
    /// The result, once completed.
    pub result: Option<JobResult>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Seconds since the epoch.
    pub updated: u64,
    /// How many times a runner has started it.
    pub attempts: u32,
}

/// What a submission answers besides errors.
#[derive(Debug)]
pub enum Submitted {
    /// A new job.
    New(Job),
    /// The token named this job already, for the same request.
    Existing(Job),
}

impl Submitted {
    /// The job either way.
    pub fn job(&self) -> &Job {
        match self {
            Submitted::New(j) | Submitted::Existing(j) => j,
        }
    }
}

/// How many times a job is started before an interruption fails it for good.
pub const MAX_ATTEMPTS: u32 = 3;

/// What opening a store does with the jobs of a process that died while running them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Mark them failed (`interrupted: ...`): the command line's one-shot jobs.
    #[default]
    Fail,
    /// Put them back in the queue (their upload aborted first) while they have had fewer
    /// than [`MAX_ATTEMPTS`] attempts: a service's jobs, which its workers run again.
    Requeue,
}

/// How a store behaves.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// What happens to the jobs of dead processes.
    pub recovery: Recovery,
    /// The keys for the object storage jobs upload to, and that aborting a dead job's upload
    /// uses (default: the environment's).
    pub credentials: Option<Credentials>,
    /// A job stopped by its runner's cancel token (not by [`JobStore::cancel`]) goes back to
    /// the queue instead of to `cancelled`: a service that shuts down hands its running jobs
    /// to the next start.
    pub interrupt_requeues: bool,
}

/// An image that an export made (registered when the job is submitted, usable once the job
/// has completed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRecord {
    /// The image's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The file it is (or will be) stored in.
    pub path: PathBuf,
    /// Its format's name.
    pub disk_format: String,
    /// The job that makes it.
    pub job_id: String,
    /// The job's state: the image is usable when it is `Completed`.
    pub state: JobState,
    /// Its size in bytes, once made.
    pub size: Option<u64>,
    /// Seconds since the epoch.
    pub created: u64,
}

/// The job database.
pub struct JobStore {
    conn: Connection,
    path: PathBuf,
    options: StoreOptions,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Io, format!("job database: {e}"))
}

/// This process's start time in clock ticks since boot (with the pid, it names the process).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A hex SHA-256 of a request, for telling requests apart under one token.
pub fn fingerprint(value: &serde_json::Value) -> String {
    crate::hex(&Sha256::digest(value.to_string().as_bytes()))
}

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 2;

/// Version 1: jobs and client tokens.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT,
    upload TEXT,
    runner_pid INTEGER,
    runner_start INTEGER,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    provider TEXT NOT NULL,
    token TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (provider, token)
);
";

/// Version 2: attempts per job; the catalogue of images that exports make.
const SCHEMA_V2: &str = "
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    disk_format TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created INTEGER NOT NULL
);
";

/// Bring the database to [`SCHEMA_VERSION`], one version at a time, in one transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "job database: schema version {version} is newer than this imgconv's \
                 ({SCHEMA_VERSION})"
            ),
        ));
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(db_err)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2).map_err(db_err)?;
    }
    if version < SCHEMA_VERSION {
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

impl JobStore {
    /// Open (or create) the database at `path`, and mark failed the jobs whose process is gone.
    pub fn open(path: impl AsRef<Path>) -> Result<JobStore> {
        JobStore::open_with(path, StoreOptions::default())
    }

    /// Open (or create) the database at `path`, migrating it to [`SCHEMA_VERSION`], and
    /// recover the jobs whose process is gone as `options` say.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<JobStore> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
        migrate(&mut conn)?;
        let store = JobStore {
            conn,
            path,
            options,
        };
        store.recover()?;
        Ok(store)
    }

    /// The credentials jobs use: the store's, else the environment's.
    fn credentials(&self) -> Result<Credentials> {
        match &self.options.credentials {
            Some(c) => Ok(c.clone()),
            None => Credentials::from_env(),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn recover(&self) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, runner_pid, runner_start, upload, spec, attempts FROM jobs \
                 WHERE state = 'active'",
            )
            .map_err(db_err)?;
        type Row = (
            String,
            Option<u32>,
            Option<u64>,
            Option<String>,
            String,
            u32,
        );
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(db_err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(db_err)?;
        for (id, pid, started, upload, spec, attempts) in rows {
            let alive = match (pid, started) {
                (Some(p), Some(s)) => start_time(p) == Some(s),
                _ => false,
            };
            if alive {
                continue;
            }
            let mut message = String::from(
                "interrupted: the process running the export stopped before it finished; \
                 no object was completed",
            );
            if let Some(upload) = upload {
                let spec: Option<JobSpec> = serde_json::from_str(&spec).ok();
                let creds = self.credentials();
                match spec.map(|s| creds.and_then(|c| abort_upload(&s.target, &upload, c))) {
                    Some(Ok(())) => message.push_str("; its pending upload was aborted"),
                    Some(Err(e)) => message.push_str(&format!(
                        "; its pending upload {upload} could not be aborted ({})",
                        e.message()
                    )),
                    None => {}
                }
            }
            if self.options.recovery == Recovery::Requeue && attempts < MAX_ATTEMPTS {
                self.conn
                    .execute(
                        "UPDATE jobs SET state = 'queued', progress = 0, upload = NULL, \
                         runner_pid = NULL, runner_start = NULL, message = ?2, updated = ?3 \
                         WHERE id = ?1 AND state = 'active'",
                        params![
                            id,
                            format!("requeued (attempt {attempts} of {MAX_ATTEMPTS}): {message}"),
                            now()
                        ],
                    )
                    .map_err(db_err)?;
                continue;
            }
            if self.options.recovery == Recovery::Requeue {
                message = format!("{message} (after {attempts} attempts)");
            }
            self.conn
                .execute(
                    "UPDATE jobs SET state = 'failed', message = ?2, updated = ?3 \
                     WHERE id = ?1 AND state = 'active'",
                    params![id, message, now()],
                )
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Submit a job, honouring `token` as the APIs define idempotency. `request` is what the
    /// responses echo; `fingerprint` tells requests apart under one token.
    pub fn submit(
        &mut self,
        provider: &str,
        id: &str,
        token: Option<&str>,
        fingerprint: &str,
        spec: &JobSpec,
        request: &serde_json::Value,
    ) -> Result<Submitted> {
        let t = now();
        let tx = self.conn.transaction().map_err(db_err)?;
        if let Some(token) = token {
            let found: Option<(String, String, u64)> = tx
                .query_row(
                    "SELECT fingerprint, job_id, created FROM tokens \
                     WHERE provider = ?1 AND token = ?2",
                    params![provider, token],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db_err)?;
            if let Some((fp, job_id, created)) = found {
                if t.saturating_sub(created) < TOKEN_LIFETIME.as_secs() {
                    if fp != fingerprint {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            "the client token was already used with a different request",
                        ));
                    }
                    drop(tx);
                    return Ok(Submitted::Existing(self.get(&job_id)?));
                }
                tx.execute(
                    "DELETE FROM tokens WHERE provider = ?1 AND token = ?2",
                    params![provider, token],
                )
                .map_err(db_err)?;
            }
        }
        let spec_text = serde_json::to_string(spec)
            .map_err(|e| Error::new(ErrorKind::Io, format!("job spec: {e}")))?;
        tx.execute(
            "INSERT INTO jobs (id, provider, state, spec, request, created, updated) \
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?5)",
            params![id, provider, spec_text, request.to_string(), t],
        )
        .map_err(db_err)?;
        if let Some(token) = token {
            tx.execute(
                "INSERT INTO tokens (provider, token, fingerprint, job_id, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![provider, token, fingerprint, id, t],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Submitted::New(self.get(id)?))
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Job> {
        self.conn
            .query_row(
                "SELECT id, provider, state, cancel_requested, progress, message, spec, request, \
                 result, created, updated, attempts FROM jobs WHERE id = ?1",
                params![id],
                row_to_job,
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no export job '{id}'")))
    }

    /// The jobs of a provider, newest first.
    pub fn list(&self, provider: &str) -> Result<Vec<Job>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, provider, state, cancel_requested, progress, message, spec, request, \
                 result, created, updated, attempts FROM jobs WHERE provider = ?1 \
                 ORDER BY created DESC, id",
            )
            .map_err(db_err)?;
        let jobs = stmt
            .query_map(params![provider], row_to_job)
            .map_err(db_err)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(jobs)
    }

    /// Record the image that job `job_id` makes, stored at `path`.
    pub fn register_image(
        &self,
        id: &str,
        name: &str,
        path: &Path,
        disk_format: &str,
        job_id: &str,
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO images (id, name, path, disk_format, job_id, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, name, path.to_string_lossy(), disk_format, job_id, now()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// An image that an export made, with the state of the job that makes it; `None` when
    /// no such image was registered.
    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        let row: Option<(String, String, String, String, String, u64)> = self
            .conn
            .query_row(
                "SELECT id, name, path, disk_format, job_id, created FROM images WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()
            .map_err(db_err)?;
        let Some((id, name, path, disk_format, job_id, created)) = row else {
            return Ok(None);
        };
        let job = self.get(&job_id)?;
        Ok(Some(ImageRecord {
            id,
            name,
            path: PathBuf::from(path),
            disk_format,
            job_id,
            state: job.state,
            size: job.result.map(|r| r.size),
            created,
        }))
    }

    /// How many jobs each provider has in each state.
    pub fn counts(&self) -> Result<Vec<(String, JobState, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT provider, state, COUNT(*) FROM jobs GROUP BY provider, state")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    JobState::parse(&r.get::<_, String>(1)?),
                    r.get::<_, u64>(2)?,
                ))
            })
            .map_err(db_err)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(rows)
    }

    /// Ask a job to stop. A queued job is cancelled at once; an active one when its process
    /// next looks (the upload is aborted first). A finished job cannot be cancelled.
    pub fn cancel(&self, id: &str) -> Result<Job> {
        let job = self.get(id)?;
        match job.state {
            JobState::Queued => {
                self.conn
                    .execute(
                        "UPDATE jobs SET state = 'cancelled', message = 'cancelled', \
                         updated = ?2 WHERE id = ?1",
                        params![id, now()],
                    )
                    .map_err(db_err)?;
            }
            JobState::Active => {
                self.conn
                    .execute(
                        "UPDATE jobs SET cancel_requested = 1, updated = ?2 WHERE id = ?1",
                        params![id, now()],
                    )
                    .map_err(db_err)?;
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("export job '{id}' has already ended ({})", job.state.name()),
                ))
            }
        }
        self.get(id)
    }

    fn set(&self, id: &str, state: JobState, message: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2, message = ?3, updated = ?4 WHERE id = ?1",
                params![id, state.name(), message, now()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Run a queued job in this process to its end; the job as it ended. `credentials` are
    /// used for S3 targets (else the environment's). Tripping `cancel` (a signal handler, say)
    /// cancels the job as [`JobStore::cancel`] does.
    pub fn run(
        &self,
        id: &str,
        credentials: Option<Credentials>,
        cancel: &CancelToken,
    ) -> Result<Job> {
        if !self.claim(id)? {
            return self.get(id);
        }
        self.run_claimed(id, credentials, cancel)
    }

    /// Claim the provider's oldest queued job and run it to its end, as [`JobStore::run`]
    /// does; `None` when no job of the provider is queued. Processes that call this on one
    /// database at once never run the same job twice: a job goes to whoever claims it first.
    /// A worker calls this until it answers `None`.
    pub fn run_next(
        &self,
        provider: &str,
        credentials: Option<Credentials>,
        cancel: &CancelToken,
    ) -> Result<Option<Job>> {
        self.run_next_of(Some(provider), credentials, cancel)
    }

    /// Like [`JobStore::run_next`], for the oldest queued job of any provider: a service's
    /// workers.
    pub fn run_next_any(
        &self,
        credentials: Option<Credentials>,
        cancel: &CancelToken,
    ) -> Result<Option<Job>> {
        self.run_next_of(None, credentials, cancel)
    }

    fn run_next_of(
        &self,
        provider: Option<&str>,
        credentials: Option<Credentials>,
        cancel: &CancelToken,
    ) -> Result<Option<Job>> {
        loop {
            let next: Option<String> = self
                .conn
                .query_row(
                    "SELECT id FROM jobs WHERE (?1 IS NULL OR provider = ?1) \
                     AND state = 'queued' ORDER BY created, rowid LIMIT 1",
                    params![provider],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(id) = next else {
                return Ok(None);
            };
            // Another worker may have taken it since: then look again.
            if self.claim(&id)? {
                return self.run_claimed(&id, credentials, cancel).map(Some);
            }
        }
    }

    /// Mark a queued job active and this process its runner; false when it is not queued.
    fn claim(&self, id: &str) -> Result<bool> {
        let pid = std::process::id();
        let claimed = self
            .conn
            .execute(
                "UPDATE jobs SET state = 'active', message = 'converting', runner_pid = ?2, \
                 runner_start = ?3, updated = ?4, attempts = attempts + 1 \
                 WHERE id = ?1 AND state = 'queued'",
                params![id, pid, start_time(pid), now()],
            )
            .map_err(db_err)?;
        Ok(claimed == 1)
    }

    /// Run a job this process has claimed.
    fn run_claimed(
        &self,
        id: &str,
        credentials: Option<Credentials>,
        cancel: &CancelToken,
    ) -> Result<Job> {
        let job = self.get(id)?;
        // The job's own token: tripped by a recorded cancellation or by the runner's token.
        let outer = cancel.clone();
        let cancel = CancelToken::new();
        let db = Connection::open(&self.path).map_err(db_err)?;
        db.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
        let progress = DbProgress {
            db: Mutex::new((db, 0, Instant::now())),
            id: id.to_string(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
        };
        // A watcher trips the token when a cancellation is recorded, whatever the export is
        // doing (converting, or waiting for its last parts).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (path, id, cancel, outer, stop) = (
                self.path.clone(),
                id.to_string(),
                cancel.clone(),
                outer.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let Ok(db) = Connection::open(&path) else {
                    return;
                };
                let _ = db.busy_timeout(Duration::from_secs(10));
                while !stop.load(Ordering::Relaxed) {
                    if outer.is_cancelled() {
                        cancel.cancel();
                        return;
                    }
                    let asked = db
                        .query_row(
                            "SELECT cancel_requested FROM jobs WHERE id = ?1",
                            params![id],
                            |r| r.get::<_, i64>(0),
                        )
                        .map(|v| v != 0)
                        .unwrap_or(false);
                    if asked {
                        cancel.cancel();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        // The upload's handle goes into the job, so that a later process can abort it if this
        // one dies.
        let recorder = {
            let db = Mutex::new(Connection::open(&self.path).map_err(db_err)?);
            let id = id.to_string();
            crate::UploadHook(std::sync::Arc::new(move |upload: &str| {
                if let Ok(db) = db.lock() {
                    let _ = db.busy_timeout(Duration::from_secs(10));
                    let _ = db.execute(
                        "UPDATE jobs SET upload = ?2 WHERE id = ?1",
                        params![id, upload],
                    );
                }
            }))
        };
        let credentials = match credentials {
            Some(c) => Some(c),
            None => self.options.credentials.clone(),
        };
        let outcome = run_spec(&job.spec, credentials, &progress, &cancel, recorder);
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        match outcome {
            Ok(r) => {
                let text = serde_json::to_string(&r).unwrap_or_default();
                self.conn
                    .execute(
                        "UPDATE jobs SET state = 'completed', progress = 100, message = \
                         'completed', result = ?2, updated = ?3 WHERE id = ?1",
                        params![id, text, now()],
                    )
                    .map_err(db_err)?;
            }
            Err(e) if e.kind() == ErrorKind::Cancelled => {
                let asked = self.get(id)?.cancel_requested;
                if !asked && outer.is_cancelled() && self.options.interrupt_requeues {
                    // The runner stopped (a service shutting down): the next start runs it
                    // again. Its upload was aborted when the export stopped.
                    self.conn
                        .execute(
                            "UPDATE jobs SET state = 'queued', progress = 0, upload = NULL, \
                             runner_pid = NULL, runner_start = NULL, attempts = \
                             MAX(attempts - 1, 0), message = 'requeued: the service stopped', \
                             updated = ?2 WHERE id = ?1",
                            params![id, now()],
                        )
                        .map_err(db_err)?;
                } else {
                    self.set(id, JobState::Cancelled, "cancelled")?;
                }
            }
            Err(e) => self.set(id, JobState::Failed, &e.to_string())?,
        }
        self.get(id)
    }
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let spec: String = r.get(6)?;
    let request: String = r.get(7)?;
    let result: Option<String> = r.get(8)?;
    let state: String = r.get(2)?;
    let progress: i64 = r.get(4)?;
    let bad = |e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(Job {
        id: r.get(0)?,
        provider: r.get(1)?,
        state: JobState::parse(&state),
        cancel_requested: r.get::<_, i64>(3)? != 0,
        progress: progress.clamp(0, 100) as u8,
        message: r.get(5)?,
        spec: serde_json::from_str(&spec).map_err(bad)?,
        request: serde_json::from_str(&request).map_err(bad)?,
        result: result
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(bad)?,
        created: r.get(9)?,
        updated: r.get(10)?,
        attempts: r.get(11)?,
    })
}

/// Progress into the database (at most every whole percent or second).
struct DbProgress {
    db: Mutex<(Connection, u8, Instant)>,
    id: String,
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for DbProgress {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let total = self.total.load(Ordering::Relaxed).max(1);
        // The last percent is kept for the end of the upload.
        let pct = ((done.min(total) * 99) / total) as u8;
        let Ok(mut db) = self.db.lock() else {
            return;
        };
        if pct == db.1 && db.2.elapsed() < Duration::from_secs(1) {
            return;
        }
        db.1 = pct;
        db.2 = Instant::now();
        let _ = db.0.execute(
            "UPDATE jobs SET progress = ?2, updated = ?3 WHERE id = ?1",
            params![self.id, pct, now()],
        );
    }
}

/// Abort the multipart upload `upload` of a job's target.
fn abort_upload(target: &TargetSpec, upload: &str, credentials: Credentials) -> Result<()> {
    match target {
        TargetSpec::S3 {
            endpoint,
            region,
            bucket,
            key,
        } => crate::S3Sink::abort_upload(
            &S3Config::new(endpoint, region)?.retries(2),
            credentials,
            &S3Location {
                bucket: bucket.clone(),
                key: key.clone(),
            },
            upload,
        ),
        TargetSpec::Par { url } => {
            crate::ParSink::abort_upload(
                &ParConfig::new().retries(2),
                &ParUrl::parse(url)?,
                upload,
            );
            Ok(())
        }
        TargetSpec::Folder { .. } => Ok(()),
    }
}

fn run_spec(
    spec: &JobSpec,
    credentials: Option<Credentials>,
    progress: &dyn Progress,
    cancel: &CancelToken,
    recorder: crate::UploadHook,
) -> Result<JobResult> {
    let format: Format = spec.format.parse()?;
    let mut options = ConvertOptions::new(format);
    let mut wo = WriterOptions::new();
    for o in &spec.writer_options {
        wo.extend(o)?;
    }
    options.writer_options = wo;
    options.compress = spec.compress;
    let target = match &spec.target {
        TargetSpec::S3 {
            endpoint,
            region,
            bucket,
            key,
        } => Target::S3 {
            config: S3Config::new(endpoint, region)?.on_upload_started(recorder),
            credentials: match credentials {
                Some(c) => c,
                None => Credentials::from_env()?,
            },
            location: S3Location {
                bucket: bucket.clone(),
                key: key.clone(),
            },
        },
        TargetSpec::Par { url } => Target::Par {
            config: ParConfig::new().on_upload_started(recorder),
            url: ParUrl::parse(url)?,
        },
        TargetSpec::Folder {
            dir,
            name,
            base_url,
        } => Target::Folder {
            dir: dir.clone(),
            name: name.clone(),
            base_url: url::Url::parse(base_url)
                .map_err(|e| Error::invalid_argument(format!("base URL: {e}")))?,
            overwrite: false,
        },
    };
    let reader = open_image(&spec.source, None)?;
    let scratch = std::env::temp_dir();
    let done = if spec.oci_archive {
        crate::export_oci_archive(
            &*reader,
            &target,
            &spec
                .oci_metadata
                .clone()
                .unwrap_or_else(crate::oci_image_metadata),
            progress,
            cancel,
        )?
    } else {
        export(&*reader, &target, &options, &scratch, progress, cancel)?
    };
    Ok(JobResult {
        location: done.location,
        size: done.size,
        md5: done.md5,
        sha256: done.sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            source: PathBuf::from("/nonexistent.raw"),
            format: "raw".into(),
            writer_options: vec![],
            compress: false,
            target: TargetSpec::Folder {
                dir: PathBuf::from("/tmp"),
                name: "x.raw".into(),
                base_url: "http://h/".into(),
            },
            oci_archive: false,
            oci_metadata: None,
        }
    }

    fn db(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("imgconv-jobs-{name}-{}.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn tokens_expire_after_a_day() -> Result<()> {
        let path = db("tokens");
        let mut s = JobStore::open(&path)?;
        let r = serde_json::json!({});
        assert!(matches!(
            s.submit("aws", "a", Some("t"), "f1", &spec(), &r)?,
            Submitted::New(_)
        ));
        match s.submit("aws", "b", Some("t"), "f1", &spec(), &r)? {
            Submitted::Existing(j) => assert_eq!(j.id, "a"),
            other => panic!("{other:?}"),
        }
        let e = s.submit("aws", "c", Some("t"), "f2", &spec(), &r).err();
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::AlreadyExists));
        // Other providers have their own tokens.
        assert!(matches!(
            s.submit("oci", "d", Some("t"), "f2", &spec(), &r)?,
            Submitted::New(_)
        ));
        // A day later the token names nothing.
        s.conn
            .execute("UPDATE tokens SET created = created - 86401", [])
            .map_err(db_err)?;
        match s.submit("aws", "e", Some("t"), "f2", &spec(), &r)? {
            Submitted::New(j) => assert_eq!(j.id, "e"),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn active_jobs_of_a_dead_process_fail_on_the_next_open() -> Result<()> {
        let path = db("recover");
        {
            let mut s = JobStore::open(&path)?;
            s.submit("aws", "j1", None, "f", &spec(), &serde_json::json!({}))?;
            s.conn
                .execute(
                    "UPDATE jobs SET state = 'active', runner_pid = 999999999, runner_start = 1",
                    [],
                )
                .map_err(db_err)?;
        }
        let s = JobStore::open(&path)?;
        let j = s.get("j1")?;
        assert_eq!(j.state, JobState::Failed);
        assert!(j.message.contains("interrupted"), "{}", j.message);
        assert!(j.result.is_none());
        // Cancelling a finished job is refused.
        assert!(s.cancel("j1").is_err());
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn workers_run_queued_jobs_oldest_first_and_never_twice() -> Result<()> {
        let path = db("workers");
        let dir = std::env::temp_dir().join(format!("imgconv-workers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("temp dir", e))?;
        let source = dir.join("in.raw");
        std::fs::write(&source, vec![7u8; 3 << 20]).map_err(|e| Error::io("source", e))?;
        let job = |name: &str| JobSpec {
            source: source.clone(),
            target: TargetSpec::Folder {
                dir: dir.clone(),
                name: format!("{name}.raw"),
                base_url: "http://h/".into(),
            },
            ..spec()
        };
        let r = serde_json::json!({});
        let mut s = JobStore::open(&path)?;
        for (i, id) in ["a1", "a2", "a3", "a4", "a5", "a6", "gone"]
            .iter()
            .enumerate()
        {
            s.submit("aws", id, None, "f", &job(id), &r)?;
            // Submitted one second apart, a1 the oldest.
            s.conn
                .execute(
                    "UPDATE jobs SET created = created - ?2 WHERE id = ?1",
                    params![id, 100 - i as i64],
                )
                .map_err(db_err)?;
        }
        s.submit("oci", "other", None, "f", &job("other"), &r)?;
        s.cancel("gone")?;
        let never = CancelToken::new();
        // One worker: the oldest queued job first.
        let first = s.run_next("aws", None, &never)?.expect("a queued job");
        assert_eq!(
            (first.id.as_str(), first.state),
            ("a1", JobState::Completed)
        );
        // Two workers on the same database share out the rest, each job once.
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || -> Result<Vec<String>> {
                    let store = JobStore::open(&path)?;
                    let never = CancelToken::new();
                    let mut ran = vec![];
                    while let Some(j) = store.run_next("aws", None, &never)? {
                        assert_eq!(j.state, JobState::Completed, "{}", j.message);
                        ran.push(j.id);
                    }
                    Ok(ran)
                })
            })
            .collect();
        let mut ran = vec![];
        for w in workers {
            ran.extend(w.join().expect("worker")?);
        }
        ran.sort();
        assert_eq!(ran, ["a2", "a3", "a4", "a5", "a6"]);
        assert!(s.run_next("aws", None, &never)?.is_none());
        // The cancelled job and the other provider's job were not run.
        assert_eq!(s.get("gone")?.state, JobState::Cancelled);
        assert_eq!(s.get("other")?.state, JobState::Queued);
        assert!(!dir.join("gone.raw").exists() && !dir.join("other.raw").exists());
        for id in ["a1", "a2", "a6"] {
            let out = std::fs::read(dir.join(format!("{id}.raw"))).map_err(|e| Error::io(id, e))?;
            assert!(out.len() == 3 << 20 && out.iter().all(|&b| b == 7), "{id}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}
