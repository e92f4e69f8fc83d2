//! The SQLite job store: schema and migrations, submission with client tokens, queries,
//! cancellation, the image catalogue, and recovery of dead processes' jobs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imgconv::{Error, ErrorKind, Result};
use rusqlite::{params, Connection, OptionalExtension};

use super::model::*;
use super::runner::abort_upload;
use crate::Credentials;

/// The job database.
pub struct JobStore {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) options: StoreOptions,
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn db_err(e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Io, format!("job database: {e}"))
}

/// This process's start time in clock ticks since boot (with the pid, it names the process).
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 4;

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
    if version < 3 {
        tx.execute_batch(SCHEMA_V3).map_err(db_err)?;
    }
    if version < 4 {
        tx.execute_batch(SCHEMA_V4).map_err(db_err)?;
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
    pub(super) fn credentials(&self) -> Result<Credentials> {
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
                 WHERE state = 'active' AND (lease_owner IS NULL OR lease_owner = ?1)",
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
            .query_map(params![host()], |r| {
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

    /// Put back in the queue (or fail, after [`MAX_ATTEMPTS`]) every active job whose lease
    /// has lapsed, after aborting the upload its runner had started; how many. Any process
    /// may call this; each job is reclaimed once, and its old runner's writes are refused from
    /// then on (they carry its attempt number).
    pub fn reclaim_expired(&self) -> Result<usize> {
        let t = now_ms();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, upload, spec, attempts FROM jobs WHERE state = 'active' \
                 AND lease_until IS NOT NULL AND lease_until < ?1",
            )
            .map_err(db_err)?;
        type Row = (String, Option<String>, String, u32);
        let rows: Vec<Row> = stmt
            .query_map(params![t], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(db_err)?;
        let mut n = 0;
        for (id, upload, spec, attempts) in rows {
            let mut message = format!("the runner's lease lapsed during attempt {attempts}");
            if let Some(upload) = upload {
                let spec: Option<JobSpec> = serde_json::from_str(&spec).ok();
                let creds = self.credentials();
                if let Some(Err(e)) =
                    spec.map(|s| creds.and_then(|c| abort_upload(&s.target, &upload, c)))
                {
                    message.push_str(&format!(
                        "; its upload could not be aborted ({})",
                        e.message()
                    ));
                }
            }
            let state = if attempts >= MAX_ATTEMPTS {
                "failed"
            } else {
                "queued"
            };
            n += self
                .conn
                .execute(
                    "UPDATE jobs SET state = ?3, message = ?4, progress = 0, upload = NULL, \
                     runner_pid = NULL, runner_start = NULL, lease_until = NULL, \
                     lease_owner = NULL, updated = ?5 WHERE id = ?1 AND attempts = ?2 \
                     AND state = 'active' AND lease_until < ?6",
                    params![id, attempts, state, message, now(), t],
                )
                .map_err(db_err)?;
        }
        Ok(n)
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
        // Immediate: two submissions with one token, from two processes, are serialised.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
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
                 result, created, updated, attempts, runner_pid FROM jobs WHERE id = ?1",
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
                 result, created, updated, attempts, runner_pid FROM jobs WHERE provider = ?1 \
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

    /// Record a login session `id` of `account`, valid until `expires` (seconds since the
    /// epoch); sessions that have expired are dropped.
    pub fn create_session(&self, id: &str, account: &str, expires: u64) -> Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE expires <= ?1", params![now()])
            .map_err(db_err)?;
        self.conn
            .execute(
                "INSERT INTO sessions (id_hash, account, expires) VALUES (?1, ?2, ?3)",
                params![session_hash(id), account, expires],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// The account of a session that has not expired.
    pub fn session(&self, id: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT account FROM sessions WHERE id_hash = ?1 AND expires > ?2",
                params![session_hash(id), now()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    /// End a session of `account`.
    pub fn delete_session(&self, id: &str, account: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM sessions WHERE id_hash = ?1 AND account = ?2",
                params![session_hash(id), account],
            )
            .map_err(db_err)?;
        Ok(())
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
        runner_pid: r.get(12)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgconv::CancelToken;

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

    /// Mark a job active under a process that does not exist.
    fn die(s: &JobStore, id: &str) -> Result<()> {
        s.conn
            .execute(
                "UPDATE jobs SET state = 'active', attempts = attempts + 1, \
                 runner_pid = 999999999, runner_start = 1 WHERE id = ?1",
                params![id],
            )
            .map_err(db_err)?;
        Ok(())
    }

    #[test]
    fn a_service_requeues_a_dead_processs_job_until_its_third_attempt() -> Result<()> {
        let path = db("requeue");
        let service = || {
            JobStore::open_with(
                &path,
                StoreOptions {
                    recovery: Recovery::Requeue,
                    ..StoreOptions::default()
                },
            )
        };
        let mut s = service()?;
        s.submit("aws", "j1", None, "f", &spec(), &serde_json::json!({}))?;
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
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn a_lapsed_lease_is_reclaimed_once_and_its_old_runner_is_fenced() -> Result<()> {
        let path = db("lease");
        let leased = StoreOptions {
            recovery: Recovery::Requeue,
            lease: Some(Duration::from_secs(3)),
            ..StoreOptions::default()
        };
        let mut s = JobStore::open_with(&path, leased.clone())?;
        s.submit("aws", "j1", None, "f", &spec(), &serde_json::json!({}))?;
        let first = s.claim("j1")?;
        assert_eq!(first, Some(1));
        assert_eq!(s.claim("j1")?, None, "claimed once");
        // The lease is in force: nothing to reclaim, from this store or another.
        let other = JobStore::open_with(&path, leased.clone())?;
        assert_eq!(other.reclaim_expired()?, 0);
        // It lapses (its runner stalled): another store takes it back once.
        s.conn
            .execute("UPDATE jobs SET lease_until = lease_until - 10000", [])
            .map_err(db_err)?;
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
        s.submit("aws", "j2", None, "f", &spec(), &serde_json::json!({}))?;
        for _ in 0..MAX_ATTEMPTS {
            assert!(s.claim("j2")?.is_some());
            s.conn
                .execute("UPDATE jobs SET lease_until = 0 WHERE id = 'j2'", [])
                .map_err(db_err)?;
            s.reclaim_expired()?;
        }
        let j = s.get("j2")?;
        assert_eq!(
            (j.state, j.attempts),
            (JobState::Failed, MAX_ATTEMPTS),
            "{j:?}"
        );
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_jobs() -> Result<()> {
        let path = db("migrate");
        {
            let conn = Connection::open(&path).map_err(db_err)?;
            conn.execute_batch(SCHEMA_V1).map_err(db_err)?;
            conn.execute(
                "INSERT INTO jobs (id, provider, state, spec, request, created, updated) \
                 VALUES ('old', 'aws', 'completed', ?1, '{}', 1, 2)",
                params![serde_json::to_string(&spec()).unwrap_or_default()],
            )
            .map_err(db_err)?;
        }
        let s = JobStore::open(&path)?;
        let version: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        assert_eq!(version, SCHEMA_VERSION);
        let j = s.get("old")?;
        assert_eq!((j.state, j.attempts), (JobState::Completed, 0));
        assert!(s.image("nothing")?.is_none());
        drop(s);
        // Opening again changes nothing; a newer schema is refused.
        JobStore::open(&path)?;
        Connection::open(&path)
            .and_then(|c| c.execute_batch("PRAGMA user_version = 99"))
            .map_err(db_err)?;
        let newer = JobStore::open(&path).err().map(|e| e.kind());
        assert_eq!(newer, Some(ErrorKind::Unsupported));
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
