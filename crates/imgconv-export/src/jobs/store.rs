//! The job store: schema and migrations (SQLite or PostgreSQL), submission with client
//! tokens, queries, cancellation, the image catalogue, sessions, and recovery of dead
//! processes' and lapsed leases' jobs.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use imgconv::{Error, ErrorKind, Result};

use super::db::{vals, Db, Dialect, Row, StoreLocation};
use super::model::*;
use super::runner::abort_upload;
use crate::Credentials;

/// The job database.
pub struct JobStore {
    pub(super) db: Db,
    pub(super) location: StoreLocation,
    pub(super) options: StoreOptions,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This process's start time in clock ticks since boot (with the pid, it names the process).
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 7;

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

/// Version 3: leases (until when, in milliseconds since the epoch, and the holder's host).
const SCHEMA_V3: &str = "
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
";

/// Version 4: login sessions (ZStack's), kept in the store so that every instance knows them.
/// Only a hash of each session's id is stored.
const SCHEMA_V4: &str = "
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    expires INTEGER NOT NULL
);
";

/// Version 5: the parts stored in each job's multipart upload (size, MD5, ETag), so that a
/// job run again resumes its upload and sends only the parts it does not hold.
const SCHEMA_V5: &str = "
CREATE TABLE upload_parts (
    job_id TEXT NOT NULL,
    upload TEXT NOT NULL,
    part INTEGER NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (job_id, upload, part)
);
";

/// Version 6: accounts. Jobs and the images exports make belong to the account that
/// submitted them; client tokens are unique per provider and account; the catalogue of images
/// that may be exported (with their owners and the accounts they are shared with) lives here,
/// so that every instance of a fleet sees a change at once. The same statements serve both
/// databases.
const SCHEMA_V6: &str = "
ALTER TABLE jobs ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
CREATE INDEX jobs_account ON jobs (provider, account, created);
CREATE TABLE tokens_v6 (
    provider TEXT NOT NULL,
    account TEXT NOT NULL,
    token TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (provider, account, token)
);
INSERT INTO tokens_v6 (provider, account, token, fingerprint, job_id, created)
    SELECT provider, 'default', token, fingerprint, job_id, created FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_v6 RENAME TO tokens;
ALTER TABLE images ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
CREATE TABLE catalogue (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    owner TEXT,
    shared_with TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL
);
";

/// Version 7: who submitted each job (the caller's key id and the provider's request id), for
/// the audit lines of its later state changes; the id of what it exports (an image's), indexed
/// with the account, for a provider's per-image reads.
const SCHEMA_V7: &str = "
ALTER TABLE jobs ADD COLUMN caller_key TEXT;
ALTER TABLE jobs ADD COLUMN request_id TEXT;
ALTER TABLE jobs ADD COLUMN subject TEXT;
CREATE INDEX jobs_subject ON jobs (provider, account, subject, state);
";

/// SQLite's migrations: the statements that bring version N-1 to N.
const SQLITE_STEPS: [(i64, &str); 7] = [
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
    (5, SCHEMA_V5),
    (6, SCHEMA_V6),
    (7, SCHEMA_V7),
];

/// PostgreSQL's schema at version 4 (PostgreSQL stores start there). Integers are `BIGINT`;
/// `seq` keeps submission order within a second; the queue index serves claims.
const PG_V4: &str = "
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    progress BIGINT NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT,
    upload TEXT,
    runner_pid BIGINT,
    runner_start BIGINT,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT,
    lease_owner TEXT
);
CREATE INDEX jobs_queue ON jobs (state, created, seq);
CREATE TABLE tokens (
    provider TEXT NOT NULL,
    token TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (provider, token)
);
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    disk_format TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    expires BIGINT NOT NULL
);
";

/// PostgreSQL's version 5, as SQLite's.
const PG_V5: &str = "
CREATE TABLE upload_parts (
    job_id TEXT NOT NULL,
    upload TEXT NOT NULL,
    part BIGINT NOT NULL,
    size BIGINT NOT NULL,
    md5 TEXT NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (job_id, upload, part)
);
";

/// PostgreSQL's migrations, as SQLite's.
const PG_STEPS: [(i64, &str); 4] = [(4, PG_V4), (5, PG_V5), (6, SCHEMA_V6), (7, SCHEMA_V7)];

/// The key of the advisory lock that serialises migrations of a PostgreSQL store (instances
/// of a fleet that start at once migrate it once).
const PG_MIGRATION_LOCK: i64 = 0x696d_6763_6f6e_7601;

/// Milliseconds since the epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This host's name (lease holders are named by it).
pub(super) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The stored form of a session id.
fn session_hash(id: &str) -> String {
    fingerprint(&serde_json::Value::String(id.to_string()))
}

/// The schema version a database records (0: none yet).
pub(super) fn schema_version(db: &Db) -> Result<i64> {
    match db.dialect() {
        Dialect::Sqlite => db
            .query_opt("PRAGMA user_version", &[])?
            .map(|r| r.get(0))
            .unwrap_or(Ok(0)),
        Dialect::Postgres => {
            db.batch("CREATE TABLE IF NOT EXISTS imgconv_schema (version BIGINT NOT NULL)")?;
            db.query_opt("SELECT MAX(version) FROM imgconv_schema", &[])?
                .map(|r| r.get::<Option<i64>>(0).map(|v| v.unwrap_or(0)))
                .unwrap_or(Ok(0))
        }
    }
}

/// Bring the database to [`SCHEMA_VERSION`], one version at a time, in one transaction.
fn migrate(db: &Db) -> Result<()> {
    db.transaction(|tx| {
        if tx.dialect() == Dialect::Postgres {
            tx.execute("SELECT pg_advisory_xact_lock(?1)", vals![PG_MIGRATION_LOCK])?;
        }
        let version = schema_version(tx)?;
        if version > SCHEMA_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "job database: schema version {version} is newer than this imgconv's \
                     ({SCHEMA_VERSION})"
                ),
            ));
        }
        let steps: &[(i64, &str)] = match tx.dialect() {
            Dialect::Sqlite => &SQLITE_STEPS,
            Dialect::Postgres => &PG_STEPS,
        };
        for (to, sql) in steps {
            if version < *to {
                tx.batch(sql)?;
            }
        }
        if version < SCHEMA_VERSION {
            match tx.dialect() {
                Dialect::Sqlite => tx.batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?,
                Dialect::Postgres => {
                    tx.execute("DELETE FROM imgconv_schema", &[])?;
                    tx.execute(
                        "INSERT INTO imgconv_schema (version) VALUES (?1)",
                        vals![SCHEMA_VERSION],
                    )?;
                }
            }
        }
        Ok(())
    })
}

/// The columns [`row_to_job`] reads.
const JOB_COLUMNS: &str = "id, provider, state, cancel_requested, progress, message, spec, \
                           request, result, created, updated, attempts, runner_pid, account, \
                           caller_key, request_id";

impl JobStore {
    /// Open (or create) the store at `location` (a SQLite file, or a `postgres://` URL),
    /// and mark failed the jobs whose process is gone.
    pub fn open(location: impl Into<StoreLocation>) -> Result<JobStore> {
        JobStore::open_with(location, StoreOptions::default())
    }

    /// Open (or create) the store at `location`, migrating it to [`SCHEMA_VERSION`], and
    /// recover the jobs whose process is gone as `options` say.
    pub fn open_with(
        location: impl Into<StoreLocation>,
        options: StoreOptions,
    ) -> Result<JobStore> {
        let location = location.into();
        let db = Db::open(&location)?;
        migrate(&db)?;
        let store = JobStore {
            db,
            location,
            options,
        };
        store.recover()?;
        Ok(store)
    }

    /// Another store on the same database with the same options: a new connection, without
    /// migrating or recovering again (a pool's further connections).
    pub fn another(&self) -> Result<JobStore> {
        Ok(JobStore {
            db: Db::open(&self.location)?,
            location: self.location.clone(),
            options: self.options.clone(),
        })
    }

    /// A new connection to the same database (a runner's helper threads each have one).
    pub(super) fn connect(&self) -> Result<Db> {
        Db::open(&self.location)
    }

    /// The credentials jobs use: the store's, else the environment's.
    pub(super) fn credentials(&self) -> Result<Credentials> {
        match &self.options.credentials {
            Some(c) => Ok(c.clone()),
            None => Credentials::from_env(),
        }
    }

    /// The keys a job's upload is signed with: its account's own where its target names
    /// them, else `given`, else the store's ([`JobStore::credentials`]).
    pub(super) fn credentials_for(
        &self,
        target: &TargetSpec,
        given: Option<Credentials>,
    ) -> Result<Credentials> {
        if let TargetSpec::S3 {
            keys: Some(account),
            ..
        } = target
        {
            return self.options.account_keys.get(account).ok_or_else(|| {
                Error::new(
                    ErrorKind::AccessDenied,
                    format!("account '{account}' has no object-storage keys configured"),
                )
            });
        }
        given.map_or_else(|| self.credentials(), Ok)
    }

    /// Where the store lives.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    fn recover(&self) -> Result<()> {
        let rows = self.db.query(
            "SELECT id, runner_pid, runner_start, upload, spec, attempts FROM jobs \
             WHERE state = 'active' AND (lease_owner IS NULL OR lease_owner = ?1)",
            vals![host()],
        )?;
        for row in rows {
            let id: String = row.get(0)?;
            let pid: Option<u32> = row.get(1)?;
            let started: Option<u64> = row.get(2)?;
            let upload: Option<String> = row.get(3)?;
            let spec: String = row.get(4)?;
            let attempts: u32 = row.get(5)?;
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
            let requeue = self.options.recovery == Recovery::Requeue && attempts < MAX_ATTEMPTS;
            if requeue {
                // The next attempt resumes the upload (the output is reproducible).
                self.db.execute(
                    "UPDATE jobs SET state = 'queued', progress = 0, \
                     runner_pid = NULL, runner_start = NULL, lease_until = NULL, \
                     lease_owner = NULL, message = ?2, updated = ?3 \
                     WHERE id = ?1 AND state = 'active' AND attempts = ?4",
                    vals![
                        &id,
                        format!("requeued (attempt {attempts} of {MAX_ATTEMPTS}): {message}"),
                        now(),
                        attempts
                    ],
                )?;
                continue;
            }
            if let Some(upload) = upload {
                let spec: Option<JobSpec> = serde_json::from_str(&spec).ok();
                let abort = |s: JobSpec| {
                    let c = self.credentials_for(&s.target, None)?;
                    abort_upload(&s.target, &upload, c)
                };
                match spec.map(abort) {
                    Some(Ok(())) => message.push_str("; its pending upload was aborted"),
                    Some(Err(e)) => message.push_str(&format!(
                        "; its pending upload {upload} could not be aborted ({})",
                        e.message()
                    )),
                    None => {}
                }
            }
            if self.options.recovery == Recovery::Requeue {
                message = format!("{message} (after {attempts} attempts)");
            }
            self.db.execute(
                "UPDATE jobs SET state = 'failed', message = ?2, updated = ?3, \
                 lease_until = NULL WHERE id = ?1 AND state = 'active' AND attempts = ?4",
                vals![&id, message, now(), attempts],
            )?;
        }
        Ok(())
    }

    /// Put back in the queue (or fail, after [`MAX_ATTEMPTS`]) every active job whose lease
    /// has lapsed, after aborting the upload its runner had started; how many. Any process
    /// may call this; each job is reclaimed once, and its old runner's writes are refused from
    /// then on (they carry its attempt number).
    pub fn reclaim_expired(&self) -> Result<usize> {
        let t = now_ms();
        let rows = self.db.query(
            "SELECT id, upload, spec, attempts FROM jobs WHERE state = 'active' \
             AND lease_until IS NOT NULL AND lease_until < ?1",
            vals![t],
        )?;
        let mut n = 0;
        for row in rows {
            let id: String = row.get(0)?;
            let upload: Option<String> = row.get(1)?;
            let spec: String = row.get(2)?;
            let attempts: u32 = row.get(3)?;
            let mut message = format!("the runner's lease lapsed during attempt {attempts}");
            let requeue = attempts < MAX_ATTEMPTS;
            // A requeued job keeps its upload for the next attempt to resume.
            if let Some(upload) = upload.filter(|_| !requeue) {
                let spec: Option<JobSpec> = serde_json::from_str(&spec).ok();
                let abort = |s: JobSpec| {
                    let c = self.credentials_for(&s.target, None)?;
                    abort_upload(&s.target, &upload, c)
                };
                if let Some(Err(e)) = spec.map(abort) {
                    message.push_str(&format!(
                        "; its upload could not be aborted ({})",
                        e.message()
                    ));
                }
            }
            let state = if requeue { "queued" } else { "failed" };
            n += self.db.execute(
                "UPDATE jobs SET state = ?3, message = ?4, progress = 0, \
                 runner_pid = NULL, runner_start = NULL, lease_until = NULL, \
                 lease_owner = NULL, updated = ?5 WHERE id = ?1 AND attempts = ?2 \
                 AND state = 'active' AND lease_until < ?6",
                vals![&id, attempts, state, message, now(), t],
            )?;
        }
        Ok(n)
    }

    /// Submit a job for `account`, honouring `token` as the APIs define idempotency.
    /// `request` is what the responses echo; `fingerprint` tells requests apart under one
    /// token. The database enforces one job per provider, account and token, however many
    /// processes submit at once; another account's token names nothing of this one's.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        provider: &str,
        account: &str,
        id: &str,
        token: Option<&str>,
        fingerprint: &str,
        spec: &JobSpec,
        request: &serde_json::Value,
    ) -> Result<Submitted> {
        let t = now();
        let spec_text = serde_json::to_string(spec).map_err(|e| {
            Error::new(ErrorKind::Internal, "cannot record the job's spec").with_source(e)
        })?;
        let existing = self.db.transaction(|tx| {
            if let Some(token) = token {
                // Take the token (or the place of an expired one). A concurrent submission
                // with the same token waits here for this one's outcome and then finds it.
                let expired_before = t.saturating_sub(TOKEN_LIFETIME.as_secs());
                let took = tx.execute(
                    "INSERT INTO tokens (provider, account, token, fingerprint, job_id, \
                     created) VALUES (?1, ?7, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (provider, account, token) DO UPDATE SET \
                     fingerprint = excluded.fingerprint, job_id = excluded.job_id, \
                     created = excluded.created WHERE tokens.created <= ?6",
                    vals![provider, token, fingerprint, id, t, expired_before, account],
                )?;
                if took == 0 {
                    let row = tx
                        .query_opt(
                            "SELECT fingerprint, job_id FROM tokens \
                             WHERE provider = ?1 AND token = ?2 AND account = ?3",
                            vals![provider, token, account],
                        )?
                        .ok_or_else(|| Error::new(ErrorKind::Io, "job database: token lost"))?;
                    let (fp, job_id): (String, String) = (row.get(0)?, row.get(1)?);
                    if fp != fingerprint {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            "the client token was already used with a different request",
                        ));
                    }
                    return Ok(Some(job_id));
                }
            }
            tx.execute(
                "INSERT INTO jobs (id, provider, state, spec, request, created, updated, \
                 account) VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?5, ?6)",
                vals![id, provider, &spec_text, request.to_string(), t, account],
            )?;
            Ok(None)
        })?;
        match existing {
            Some(job_id) => Ok(Submitted::Existing(self.get(&job_id)?)),
            None => {
                self.announce();
                Ok(Submitted::New(self.get(id)?))
            }
        }
    }

    /// Tell the listeners on this store that a job was queued (PostgreSQL `NOTIFY`; nothing on
    /// SQLite). Best effort: workers also look for jobs on their own.
    pub(super) fn announce(&self) {
        if self.db.dialect() == Dialect::Postgres {
            let _ = self
                .db
                .execute("SELECT pg_notify(?1, '')", vals![super::db::JOBS_CHANNEL]);
        }
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Job> {
        self.db
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                vals![id],
            )?
            .map(|r| row_to_job(&r))
            .transpose()?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no export job '{id}'")))
    }

    /// Record who submitted job `id` (the caller's key id and the provider's request id) and
    /// the id of what it exports (`subject`: an image's, a volume's).
    pub fn record_origin(
        &self,
        id: &str,
        caller_key: &str,
        request_id: &str,
        subject: Option<&str>,
    ) -> Result<()> {
        self.db.execute(
            "UPDATE jobs SET caller_key = ?2, request_id = ?3, subject = ?4 WHERE id = ?1",
            vals![id, caller_key, request_id, subject.map(str::to_string)],
        )?;
        Ok(())
    }

    /// Whether `account` has a job of `provider` exporting `subject` that has not ended (one
    /// indexed read).
    pub fn exporting(&self, provider: &str, account: &str, subject: &str) -> Result<bool> {
        Ok(self
            .db
            .query_opt(
                "SELECT id FROM jobs WHERE provider = ?1 AND account = ?2 AND subject = ?3 \
                 AND state IN ('queued', 'active') LIMIT 1",
                vals![provider, account, subject],
            )?
            .is_some())
    }

    /// Tell the audit hook that job `id` changed to `event`.
    pub fn audit(&self, id: &str, event: &str) {
        if let Some(hook) = &self.options.audit {
            if let Ok(job) = self.get(id) {
                (hook.0)(&job, event);
            }
        }
    }

    /// One job of `account`: another account's job is not found, exactly as an id that
    /// never existed.
    pub fn get_of(&self, id: &str, account: &str) -> Result<Job> {
        self.db
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND account = ?2"),
                vals![id, account],
            )?
            .map(|r| row_to_job(&r))
            .transpose()?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no export job '{id}'")))
    }

    /// The job of `account` that `token` names for `provider` (a token that expired still
    /// names its job here), else its job `token` if it has one by that id: how a ZStack
    /// client polls its job by the name it gave it.
    pub fn job_by_token(&self, provider: &str, account: &str, token: &str) -> Result<Job> {
        let named = self.db.query_opt(
            "SELECT job_id FROM tokens WHERE provider = ?1 AND account = ?2 AND token = ?3",
            vals![provider, account, token],
        )?;
        match named {
            Some(r) => self.get_of(&r.get::<String>(0)?, account),
            None => self.get_of(token, account),
        }
    }

    /// The jobs of a provider that `account` submitted, newest first.
    pub fn list(&self, provider: &str, account: &str) -> Result<Vec<Job>> {
        self.db
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ?1 AND account = ?2 \
                     ORDER BY created DESC, id"
                ),
                vals![provider, account],
            )?
            .iter()
            .map(row_to_job)
            .collect()
    }

    /// Record the image that job `job_id` makes for `account`, stored at `path`.
    pub fn register_image(
        &self,
        id: &str,
        name: &str,
        path: &Path,
        disk_format: &str,
        job_id: &str,
        account: &str,
    ) -> Result<()> {
        self.db.execute(
            "INSERT INTO images (id, name, path, disk_format, job_id, created, account) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vals![
                id,
                name,
                path.to_string_lossy().into_owned(),
                disk_format,
                job_id,
                now(),
                account
            ],
        )?;
        Ok(())
    }

    /// An image that an export made, with the state of the job that makes it; `None` when
    /// no such image was registered.
    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>> {
        let Some(row) = self.db.query_opt(
            "SELECT id, name, path, disk_format, job_id, created, account FROM images \
             WHERE id = ?1",
            vals![id],
        )?
        else {
            return Ok(None);
        };
        let job_id: String = row.get(4)?;
        let job = self.get(&job_id)?;
        Ok(Some(ImageRecord {
            id: row.get(0)?,
            name: row.get(1)?,
            path: PathBuf::from(row.get::<String>(2)?),
            disk_format: row.get(3)?,
            job_id,
            state: job.state,
            size: job.result.map(|r| r.size),
            created: row.get(5)?,
            account: row.get(6)?,
        }))
    }

    /// Add `image` to the catalogue, or replace the entry of its id.
    pub fn put_image(&self, image: &CatalogueImage) -> Result<()> {
        let shared = serde_json::to_string(&image.shared_with).map_err(|e| {
            Error::new(ErrorKind::Internal, "cannot record an image").with_source(e)
        })?;
        self.db.execute(
            "INSERT INTO catalogue (id, path, owner, shared_with, created) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO UPDATE SET \
             path = excluded.path, owner = excluded.owner, shared_with = excluded.shared_with",
            vals![
                &image.id,
                image.path.to_string_lossy().into_owned(),
                image.owner.clone(),
                shared,
                now()
            ],
        )?;
        Ok(())
    }

    /// Remove an image from the catalogue; whether it was there.
    pub fn remove_image(&self, id: &str) -> Result<bool> {
        Ok(self
            .db
            .execute("DELETE FROM catalogue WHERE id = ?1", vals![id])?
            > 0)
    }

    /// An image of the catalogue, by id (one indexed read).
    pub fn catalogue_image(&self, id: &str) -> Result<Option<CatalogueImage>> {
        self.db
            .query_opt(
                "SELECT id, path, owner, shared_with FROM catalogue WHERE id = ?1",
                vals![id],
            )?
            .map(|r| row_to_catalogue(&r))
            .transpose()
    }

    /// The catalogue, by id.
    pub fn catalogue(&self) -> Result<Vec<CatalogueImage>> {
        self.db
            .query(
                "SELECT id, path, owner, shared_with FROM catalogue ORDER BY id",
                &[],
            )?
            .iter()
            .map(row_to_catalogue)
            .collect()
    }

    /// Record a login session `id` of `account`, valid until `expires` (seconds since the
    /// epoch); sessions that have expired are dropped.
    pub fn create_session(&self, id: &str, account: &str, expires: u64) -> Result<()> {
        self.db
            .execute("DELETE FROM sessions WHERE expires <= ?1", vals![now()])?;
        self.db.execute(
            "INSERT INTO sessions (id_hash, account, expires) VALUES (?1, ?2, ?3)",
            vals![session_hash(id), account, expires],
        )?;
        Ok(())
    }

    /// The account of a session that has not expired.
    pub fn session(&self, id: &str) -> Result<Option<String>> {
        self.db
            .query_opt(
                "SELECT account FROM sessions WHERE id_hash = ?1 AND expires > ?2",
                vals![session_hash(id), now()],
            )?
            .map(|r| r.get(0))
            .transpose()
    }

    /// End a session of `account`.
    pub fn delete_session(&self, id: &str, account: &str) -> Result<()> {
        self.db.execute(
            "DELETE FROM sessions WHERE id_hash = ?1 AND account = ?2",
            vals![session_hash(id), account],
        )?;
        Ok(())
    }

    /// Whether the database answers (one trivial query; a dropped PostgreSQL connection is
    /// made again first): what a health check asks.
    pub fn ping(&self) -> Result<()> {
        self.db.query("SELECT 1", &[]).map(drop)
    }

    /// How many jobs each provider has in each state.
    pub fn counts(&self) -> Result<Vec<(String, JobState, u64)>> {
        self.db
            .query(
                "SELECT provider, state, COUNT(*) FROM jobs GROUP BY provider, state",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, JobState::parse(&r.get::<String>(1)?), r.get(2)?)))
            .collect()
    }

    /// Ask a job to stop. A queued job is cancelled at once; an active one when its process
    /// next looks (the upload is aborted first). A finished job cannot be cancelled.
    pub fn cancel(&self, id: &str) -> Result<Job> {
        let (job, pending) = self.cancel_deferring(id)?;
        match pending {
            Some(p) => {
                p.run();
                self.forget_upload(id)?;
                self.get(id)
            }
            None => Ok(job),
        }
    }

    /// [`JobStore::cancel`] without contacting the storage: a queued job's kept upload is
    /// answered for the caller to abort ([`PendingAbort::run`]) with no store connection held,
    /// and then to [forget](JobStore::forget_upload).
    pub fn cancel_deferring(&self, id: &str) -> Result<(Job, Option<PendingAbort>)> {
        // A queued job may hold the upload of an interrupted attempt, kept for the next one.
        let kept = self
            .db
            .query_opt(
                "SELECT upload, spec FROM jobs WHERE id = ?1 AND state = 'queued' \
                 AND upload IS NOT NULL",
                vals![id],
            )?
            .and_then(|r| Some((r.get::<String>(0).ok()?, r.get::<String>(1).ok()?)));
        // One statement each: a job claimed in between is asked to stop, not left running.
        let queued = self.db.execute(
            "UPDATE jobs SET state = 'cancelled', message = 'cancelled', updated = ?2 \
             WHERE id = ?1 AND state = 'queued'",
            vals![id, now()],
        )?;
        if queued == 1 {
            self.audit(id, "cancelled");
        }
        let mut pending = None;
        if let (1, Some((upload, spec))) = (queued, kept) {
            if let Ok(spec) = serde_json::from_str::<JobSpec>(&spec) {
                if let Ok(credentials) = self.credentials_for(&spec.target, None) {
                    pending = Some(PendingAbort {
                        target: spec.target,
                        upload,
                        credentials,
                    });
                }
            }
            if pending.is_none() {
                self.forget_upload(id)?;
            }
        }
        if queued == 0 {
            let active = self.db.execute(
                "UPDATE jobs SET cancel_requested = 1, updated = ?2 \
                 WHERE id = ?1 AND state = 'active'",
                vals![id, now()],
            )?;
            if active == 0 {
                let job = self.get(id)?;
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("export job '{id}' has already ended ({})", job.state.name()),
                ));
            }
        }
        Ok((self.get(id)?, pending))
    }

    /// Forget a cancelled job's upload (aborted, or given up on).
    pub fn forget_upload(&self, id: &str) -> Result<()> {
        self.db.execute(
            "UPDATE jobs SET upload = NULL WHERE id = ?1 AND state = 'cancelled'",
            vals![id],
        )?;
        Ok(())
    }
}

/// The abort of a cancelled job's multipart upload, to run with no store connection held.
#[derive(Debug)]
pub struct PendingAbort {
    target: TargetSpec,
    upload: String,
    credentials: Credentials,
}

impl PendingAbort {
    /// Abort the upload (best effort: an upload left behind expires by the bucket's rules).
    pub fn run(self) {
        let _ = abort_upload(&self.target, &self.upload, self.credentials);
    }
}

fn row_to_catalogue(r: &Row) -> Result<CatalogueImage> {
    let shared: String = r.get(3)?;
    Ok(CatalogueImage {
        id: r.get(0)?,
        path: PathBuf::from(r.get::<String>(1)?),
        owner: r.get(2)?,
        shared_with: if shared.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&shared).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    "job database: a catalogue entry does not parse",
                )
                .with_source(e)
            })?
        },
    })
}

fn row_to_job(r: &Row) -> Result<Job> {
    let spec: String = r.get(6)?;
    let request: String = r.get(7)?;
    let result: Option<String> = r.get(8)?;
    let state: String = r.get(2)?;
    let progress: i64 = r.get(4)?;
    let bad = |e: serde_json::Error| {
        Error::new(ErrorKind::Io, "job database: a stored job does not parse").with_source(e)
    };
    Ok(Job {
        id: r.get(0)?,
        provider: r.get(1)?,
        state: JobState::parse(&state),
        cancel_requested: r.get::<i64>(3)? != 0,
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
        runner_pid: r.get(12)?,
        account: r.get(13)?,
        caller_key: r.get(14)?,
        request_id: r.get(15)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgconv::CancelToken;
    use std::time::Duration;

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

    /// Queue an AWS job `id` of the default account, no token, the test's spec.
    fn queue(s: &mut JobStore, id: &str) -> Result<Submitted> {
        s.submit(
            "aws",
            DEFAULT_ACCOUNT,
            id,
            None,
            "f",
            &spec(),
            &serde_json::json!({}),
        )
    }

    fn sqlite(name: &str) -> StoreLocation {
        let p =
            std::env::temp_dir().join(format!("imgconv-jobs-{name}-{}.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&p);
        StoreLocation::Sqlite(p)
    }

    fn postgres(name: &str) -> StoreLocation {
        StoreLocation::Postgres(imgconv_testkit::pg_database(name))
    }

    /// The test cluster accepts TLS only (`scripts/pg-cluster.sh start-tls`): every
    /// PostgreSQL test connects with `sslmode=verify-full`; a wrong CA fails with the cause
    /// named, and a plain connection is refused.
    #[test]
    fn postgres_is_reached_over_tls_verified_and_a_wrong_ca_is_named() -> Result<()> {
        let url = imgconv_testkit::pg_database("tls");
        assert!(
            url.contains("sslmode=verify-full") && url.contains("sslrootcert="),
            "the test cluster must accept TLS only (pg-cluster.sh start-tls): {url}"
        );
        let s = JobStore::open(StoreLocation::Postgres(url.clone()))?;
        s.ping()?;
        // Another CA: the server's certificate does not verify.
        let dir = std::env::temp_dir().join(format!("imgconv-wrong-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("scratch", e))?;
        let ca = dir.join("ca.crt");
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=another CA", "-keyout"])
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(&ca)
            .output()
            .map_err(|e| Error::io("openssl", e))?;
        assert!(made.status.success(), "{made:?}");
        let mut u = url::Url::parse(&url).map_err(|e| Error::invalid_argument(e.to_string()))?;
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "sslrootcert" {
                    ca.display().to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        let wrong = JobStore::open(StoreLocation::Postgres(u.to_string()))
            .err()
            .map(|e| e.to_string_with_causes());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            wrong
                .as_deref()
                .is_some_and(|m| m.contains("certificate verify failed")
                    && m.contains("cannot reach the job database")
                    && !m.contains("imgconv-test")),
            "{wrong:?}"
        );
        // Plain TCP: refused by the server.
        u.set_query(Some("sslmode=disable"));
        let plain = JobStore::open(StoreLocation::Postgres(u.to_string()))
            .err()
            .map(|e| e.to_string_with_causes());
        assert!(
            plain.as_deref().is_some_and(|m| m.contains("pg_hba.conf")),
            "{plain:?}"
        );
        Ok(())
    }

    fn cleanup(loc: &StoreLocation) {
        if let StoreLocation::Sqlite(p) = loc {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Each test runs on both backends.
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(#[test]
                fn $name() -> imgconv::Result<()> {
                    let loc = super::sqlite(stringify!($name));
                    super::$name(&loc)?;
                    super::cleanup(&loc);
                    Ok(())
                })*
            }
            mod on_postgres {
                $(#[test]
                fn $name() -> imgconv::Result<()> {
                    super::$name(&super::postgres(stringify!($name)))
                })*
            }
        };
    }

    on_both!(
        tokens_expire_after_a_day,
        one_token_sent_at_once_from_many_connections_makes_one_job,
        a_service_requeues_a_dead_processs_job_until_its_third_attempt,
        a_lapsed_lease_is_reclaimed_once_and_its_old_runner_is_fenced,
        a_newer_schema_is_refused_and_opening_again_changes_nothing,
        active_jobs_of_a_dead_process_fail_on_the_next_open,
        workers_run_queued_jobs_oldest_first_and_never_twice,
        sessions_and_images_are_shared_by_every_connection,
        each_account_sees_only_its_own_jobs_and_tokens,
    );

    /// Two accounts: the same client token makes two jobs; each lists, gets and cancels its
    /// own only, and the other's id is not found exactly as an unknown one (nothing changes).
    fn each_account_sees_only_its_own_jobs_and_tokens(loc: &StoreLocation) -> Result<()> {
        let mut s = JobStore::open(loc)?;
        let r = serde_json::json!({});
        let a = s.submit("aws", "111122223333", "ja", Some("t"), "f", &spec(), &r)?;
        let b = s.submit("aws", "444455556666", "jb", Some("t"), "f", &spec(), &r)?;
        assert!(matches!((&a, &b), (Submitted::New(_), Submitted::New(_))));
        assert_eq!(s.get("ja")?.account, "111122223333");
        let ids = |acc: &str| -> Result<Vec<String>> {
            Ok(s.list("aws", acc)?.into_iter().map(|j| j.id).collect())
        };
        assert_eq!(ids("111122223333")?, ["ja"]);
        assert_eq!(ids("444455556666")?, ["jb"]);
        assert!(ids(DEFAULT_ACCOUNT)?.is_empty());
        let unknown = s
            .get_of("nothing", "444455556666")
            .err()
            .map(|e| e.to_string());
        let others = s.get_of("ja", "444455556666").err().map(|e| e.to_string());
        assert_eq!(
            others.map(|m| m.replace("'ja'", "'nothing'")),
            unknown,
            "another account's job reads as an unknown id"
        );
        // Cancelling by another account goes through `get_of` first (the service's
        // providers do): the job is untouched.
        assert_eq!(s.get("ja")?.state, JobState::Queued);
        assert!(!s.get("ja")?.cancel_requested);
        Ok(())
    }

    fn tokens_expire_after_a_day(loc: &StoreLocation) -> Result<()> {
        let mut s = JobStore::open(loc)?;
        let r = serde_json::json!({});
        assert!(matches!(
            s.submit("aws", DEFAULT_ACCOUNT, "a", Some("t"), "f1", &spec(), &r)?,
            Submitted::New(_)
        ));
        match s.submit("aws", DEFAULT_ACCOUNT, "b", Some("t"), "f1", &spec(), &r)? {
            Submitted::Existing(j) => assert_eq!(j.id, "a"),
            other => panic!("{other:?}"),
        }
        let e = s
            .submit("aws", DEFAULT_ACCOUNT, "c", Some("t"), "f2", &spec(), &r)
            .err();
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::AlreadyExists));
        // The refused submission left no job behind.
        assert_eq!(
            s.get("c").err().map(|e| e.kind()),
            Some(ErrorKind::NotFound)
        );
        // Other providers have their own tokens.
        assert!(matches!(
            s.submit("oci", DEFAULT_ACCOUNT, "d", Some("t"), "f2", &spec(), &r)?,
            Submitted::New(_)
        ));
        // A day later the token names nothing.
        s.db.execute("UPDATE tokens SET created = created - 86401", &[])?;
        match s.submit("aws", DEFAULT_ACCOUNT, "e", Some("t"), "f2", &spec(), &r)? {
            Submitted::New(j) => assert_eq!(j.id, "e"),
            other => panic!("{other:?}"),
        }
        match s.submit("aws", DEFAULT_ACCOUNT, "f", Some("t"), "f2", &spec(), &r)? {
            Submitted::Existing(j) => assert_eq!(j.id, "e"),
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    fn one_token_sent_at_once_from_many_connections_makes_one_job(
        loc: &StoreLocation,
    ) -> Result<()> {
        JobStore::open(loc)?;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let submitters: Vec<_> = (0..8)
            .map(|n| {
                let (loc, barrier) = (loc.clone(), barrier.clone());
                std::thread::spawn(move || -> Result<String> {
                    let mut s = JobStore::open(&loc)?;
                    barrier.wait();
                    let r = serde_json::json!({});
                    let id = format!("job{n}");
                    match s.submit("aws", DEFAULT_ACCOUNT, &id, Some("same"), "f", &spec(), &r)? {
                        Submitted::New(j) | Submitted::Existing(j) => Ok(j.id),
                    }
                })
            })
            .collect();
        let ids: Vec<String> = submitters
            .into_iter()
            .map(|h| h.join().expect("submitter"))
            .collect::<Result<_>>()?;
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        let s = JobStore::open(loc)?;
        assert_eq!(s.list("aws", DEFAULT_ACCOUNT)?.len(), 1);
        Ok(())
    }

    /// Mark a job active under a process that does not exist.
    fn die(s: &JobStore, id: &str) -> Result<()> {
        s.db.execute(
            "UPDATE jobs SET state = 'active', attempts = attempts + 1, \
             runner_pid = 999999999, runner_start = 1 WHERE id = ?1",
            vals![id],
        )?;
        Ok(())
    }

    fn a_service_requeues_a_dead_processs_job_until_its_third_attempt(
        loc: &StoreLocation,
    ) -> Result<()> {
        let service = || {
            JobStore::open_with(
                loc,
                StoreOptions {
                    recovery: Recovery::Requeue,
                    ..StoreOptions::default()
                },
            )
        };
        let mut s = service()?;
        queue(&mut s, "j1")?;
        for attempt in 1..MAX_ATTEMPTS {
            die(&s, "j1")?;
            s = service()?;
            let j = s.get("j1")?;
            assert_eq!(j.state, JobState::Queued, "attempt {attempt}: {j:?}");
            assert_eq!(j.attempts, attempt);
            assert!(j.message.contains("requeued"), "{}", j.message);
        }
        die(&s, "j1")?;
        let j = service()?.get("j1")?;
        assert_eq!(j.state, JobState::Failed, "{j:?}");
        assert!(j.message.contains("after 3 attempts"), "{}", j.message);
        Ok(())
    }

    fn a_lapsed_lease_is_reclaimed_once_and_its_old_runner_is_fenced(
        loc: &StoreLocation,
    ) -> Result<()> {
        let leased = StoreOptions {
            recovery: Recovery::Requeue,
            lease: Some(Duration::from_secs(3)),
            ..StoreOptions::default()
        };
        let mut s = JobStore::open_with(loc, leased.clone())?;
        queue(&mut s, "j1")?;
        let first = s.claim("j1")?;
        assert_eq!(first, Some(1));
        assert_eq!(s.claim("j1")?, None, "claimed once");
        // The lease is in force: nothing to reclaim, from this store or another.
        let other = JobStore::open_with(loc, leased.clone())?;
        assert_eq!(other.reclaim_expired()?, 0);
        // It lapses (its runner stalled): another store takes it back once.
        s.db.execute("UPDATE jobs SET lease_until = lease_until - 10000", &[])?;
        assert_eq!(other.reclaim_expired()?, 1);
        assert_eq!(s.reclaim_expired()?, 0);
        let j = other.get("j1")?;
        assert_eq!((j.state, j.attempts), (JobState::Queued, 1), "{j:?}");
        assert!(j.message.contains("lease lapsed"), "{}", j.message);
        // Claimed again: the old runner's outcome no longer lands.
        assert_eq!(other.claim("j1")?, Some(2));
        s.set_fenced("j1", 1, JobState::Failed, "stale")?;
        assert_eq!(other.get("j1")?.state, JobState::Active);
        other.set_fenced("j1", 2, JobState::Cancelled, "cancelled")?;
        assert_eq!(other.get("j1")?.state, JobState::Cancelled);
        // A job that lapses on its third attempt fails.
        queue(&mut s, "j2")?;
        for _ in 0..MAX_ATTEMPTS {
            assert!(s.claim("j2")?.is_some());
            s.db.execute("UPDATE jobs SET lease_until = 0 WHERE id = 'j2'", &[])?;
            s.reclaim_expired()?;
        }
        let j = s.get("j2")?;
        assert_eq!(
            (j.state, j.attempts),
            (JobState::Failed, MAX_ATTEMPTS),
            "{j:?}"
        );
        Ok(())
    }

    fn a_newer_schema_is_refused_and_opening_again_changes_nothing(
        loc: &StoreLocation,
    ) -> Result<()> {
        // Instances that start at once migrate the store once.
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let loc = loc.clone();
                std::thread::spawn(move || JobStore::open(&loc).map(|_| ()))
            })
            .collect();
        for o in openers {
            o.join().expect("opener")?;
        }
        let mut s = JobStore::open(loc)?;
        assert_eq!(schema_version(&s.db)?, SCHEMA_VERSION);
        queue(&mut s, "kept")?;
        drop(s);
        let s = JobStore::open(loc)?;
        assert_eq!(s.get("kept")?.state, JobState::Queued);
        assert!(s.image("nothing")?.is_none());
        match s.db.dialect() {
            Dialect::Sqlite => s.db.batch("PRAGMA user_version = 99")?,
            Dialect::Postgres => s.db.batch("UPDATE imgconv_schema SET version = 99")?,
        }
        let newer = JobStore::open(loc).err().map(|e| e.kind());
        assert_eq!(newer, Some(ErrorKind::Unsupported));
        Ok(())
    }

    #[test]
    fn on_postgres_a_submission_through_one_connection_wakes_a_listener_on_another() -> Result<()> {
        let loc = postgres("listener");
        let mut s = JobStore::open(&loc)?;
        let mut listener =
            super::super::db::SubmissionListener::open(&loc)?.expect("PostgreSQL listens");
        assert!(
            !listener.wait(Duration::from_millis(200))?,
            "nothing announced yet"
        );
        queue(&mut s, "j1")?;
        // Delivered when the submission commits; the bound only keeps a broken test finite.
        assert!(listener.wait(Duration::from_secs(30))?);
        // A token that names an existing job queues nothing and announces nothing.
        s.submit(
            "aws",
            DEFAULT_ACCOUNT,
            "j2",
            Some("t"),
            "f",
            &spec(),
            &serde_json::json!({}),
        )?;
        assert!(listener.wait(Duration::from_secs(30))?);
        s.submit(
            "aws",
            DEFAULT_ACCOUNT,
            "j3",
            Some("t"),
            "f",
            &spec(),
            &serde_json::json!({}),
        )?;
        assert!(!listener.wait(Duration::from_millis(300))?);
        // SQLite has no listener.
        assert!(super::super::db::SubmissionListener::open(&sqlite("listener"))?.is_none());
        Ok(())
    }

    #[test]
    fn a_version_1_sqlite_database_is_migrated_and_keeps_its_jobs() -> Result<()> {
        let loc = sqlite("migrate");
        let StoreLocation::Sqlite(path) = &loc else {
            unreachable!()
        };
        {
            let conn = rusqlite::Connection::open(path).map_err(super::super::db::sqlite_err)?;
            let db = Db::Sqlite(conn);
            db.batch(SCHEMA_V1)?;
            db.execute(
                "INSERT INTO jobs (id, provider, state, spec, request, created, updated) \
                 VALUES ('old', 'aws', 'completed', ?1, '{}', 1, 2)",
                vals![serde_json::to_string(&spec()).unwrap_or_default()],
            )?;
        }
        let s = JobStore::open(&loc)?;
        assert_eq!(schema_version(&s.db)?, SCHEMA_VERSION);
        let j = s.get("old")?;
        assert_eq!((j.state, j.attempts), (JobState::Completed, 0));
        drop(s);
        cleanup(&loc);
        Ok(())
    }

    fn active_jobs_of_a_dead_process_fail_on_the_next_open(loc: &StoreLocation) -> Result<()> {
        {
            let mut s = JobStore::open(loc)?;
            queue(&mut s, "j1")?;
            s.db.execute(
                "UPDATE jobs SET state = 'active', runner_pid = 999999999, runner_start = 1",
                &[],
            )?;
        }
        let s = JobStore::open(loc)?;
        let j = s.get("j1")?;
        assert_eq!(j.state, JobState::Failed);
        assert!(j.message.contains("interrupted"), "{}", j.message);
        assert!(j.result.is_none());
        // Cancelling a finished job is refused; an unknown one is not found.
        assert_eq!(
            s.cancel("j1").err().map(|e| e.kind()),
            Some(ErrorKind::InvalidArgument)
        );
        assert_eq!(
            s.cancel("nope").err().map(|e| e.kind()),
            Some(ErrorKind::NotFound)
        );
        Ok(())
    }

    fn sessions_and_images_are_shared_by_every_connection(loc: &StoreLocation) -> Result<()> {
        let mut a = JobStore::open(loc)?;
        let b = JobStore::open(loc)?;
        a.create_session("s1", "admin", now() + 60)?;
        assert_eq!(b.session("s1")?.as_deref(), Some("admin"));
        b.delete_session("s1", "someone else")?;
        assert_eq!(a.session("s1")?.as_deref(), Some("admin"));
        b.delete_session("s1", "admin")?;
        assert_eq!(a.session("s1")?, None);
        a.create_session("old", "admin", now().saturating_sub(1))?;
        assert_eq!(b.session("old")?, None);
        a.submit(
            "huawei-evs",
            DEFAULT_ACCOUNT,
            "j",
            None,
            "f",
            &spec(),
            &serde_json::json!({}),
        )?;
        a.register_image(
            "img",
            "name",
            Path::new("/images/img.qcow2"),
            "qcow2",
            "j",
            DEFAULT_ACCOUNT,
        )?;
        let image = b.image("img")?.expect("registered");
        assert_eq!(
            (image.name.as_str(), image.state, image.size),
            ("name", JobState::Queued, None)
        );
        let counts = b.counts()?;
        assert_eq!(
            counts,
            vec![("huawei-evs".to_string(), JobState::Queued, 1)]
        );
        Ok(())
    }

    fn workers_run_queued_jobs_oldest_first_and_never_twice(loc: &StoreLocation) -> Result<()> {
        let tag = match loc {
            StoreLocation::Sqlite(_) => "sqlite",
            StoreLocation::Postgres(_) => "pg",
        };
        let dir =
            std::env::temp_dir().join(format!("imgconv-workers-{tag}-{}", std::process::id()));
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
        let mut s = JobStore::open(loc)?;
        let ids = [
            "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10", "gone",
        ];
        for (i, id) in ids.iter().enumerate() {
            s.submit("aws", DEFAULT_ACCOUNT, id, None, "f", &job(id), &r)?;
            // Submitted one second apart, a1 the oldest.
            s.db.execute(
                "UPDATE jobs SET created = created - ?2 WHERE id = ?1",
                vals![*id, 100 - i as i64],
            )?;
        }
        s.submit(
            "oci",
            DEFAULT_ACCOUNT,
            "other",
            None,
            "f",
            &job("other"),
            &r,
        )?;
        s.cancel("gone")?;
        let never = CancelToken::new();
        // One worker: the oldest queued job first.
        let first = s.run_next("aws", None, &never)?.expect("a queued job");
        assert_eq!(
            (first.id.as_str(), first.state),
            ("a1", JobState::Completed)
        );
        // Three workers on the same database share out the rest, each job once.
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let loc = loc.clone();
                std::thread::spawn(move || -> Result<Vec<String>> {
                    let store = JobStore::open(&loc)?;
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
        let mut expected: Vec<String> = ids[1..10].iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(ran, expected);
        assert!(s.run_next("aws", None, &never)?.is_none());
        // Each ran on its first attempt.
        for id in &ids[..10] {
            assert_eq!(s.get(id)?.attempts, 1, "{id}");
        }
        // The cancelled job and the other provider's job were not run.
        assert_eq!(s.get("gone")?.state, JobState::Cancelled);
        assert_eq!(s.get("other")?.state, JobState::Queued);
        assert!(!dir.join("gone.raw").exists() && !dir.join("other.raw").exists());
        for id in ["a1", "a2", "a10"] {
            let out = std::fs::read(dir.join(format!("{id}.raw"))).map_err(|e| Error::io(id, e))?;
            assert!(out.len() == 3 << 20 && out.iter().all(|&b| b == 7), "{id}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
