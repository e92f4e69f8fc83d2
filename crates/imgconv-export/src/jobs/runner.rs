//! Running a job: claiming it, the export with progress written to the store, cancellation
//! through the store, and the outcome recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::db::{vals, Db};
use super::model::*;
use super::store::{host, now, now_ms, start_time, JobStore};
use crate::{export, Credentials, ParConfig, ParUrl, S3Config, S3Location, Target};
use imgconv::{
    open_image, CancelToken, ConvertOptions, Error, ErrorKind, Format, Progress, Result,
    WriterOptions,
};

impl JobStore {
    /// Run a queued job in this process to its end; the job as it ended. `credentials` are
    /// used for S3 targets (else the environment's). Tripping `cancel` (a signal handler, say)
    /// cancels the job as [`JobStore::cancel`] does.
    pub fn run(
        &self,
        id: &str,
        credentials: Option<Credentials>,
        cancel: &CancelToken,
    ) -> Result<Job> {
        let Some(token) = self.claim(id)? else {
            return self.get(id);
        };
        self.run_claimed(id, token, credentials, cancel)
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
        // A stopped runner claims nothing more.
        if cancel.is_cancelled() {
            return Ok(None);
        }
        // The oldest queued job, claimed in one statement. PostgreSQL locks the row it
        // picks and skips rows that other workers' claims hold.
        let dialect = self.db.dialect();
        let pid = std::process::id();
        let claimed = self.db.query_opt(
            &format!(
                "UPDATE jobs SET state = 'active', message = 'converting', runner_pid = ?2, \
                 runner_start = ?3, updated = ?4, attempts = attempts + 1, \
                 lease_until = ?5, lease_owner = ?6 WHERE state = 'queued' AND id = (\
                 SELECT id FROM jobs WHERE (CAST(?1 AS TEXT) IS NULL OR provider = ?1) \
                 AND state = 'queued' AND (lease_until IS NULL OR lease_until <= ?7) \
                 ORDER BY created, {} LIMIT 1{}) \
                 RETURNING id, attempts",
                dialect.fifo(),
                dialect.skip_locked()
            ),
            vals![
                provider,
                pid,
                start_time(pid),
                now(),
                self.lease_until(),
                host(),
                now_ms()
            ],
        )?;
        // None: nothing queued (or, on PostgreSQL, all of it being claimed by others).
        let Some(row) = claimed else {
            return Ok(None);
        };
        let id: String = row.get(0)?;
        let token: u32 = row.get(1)?;
        self.run_claimed(&id, token, credentials, cancel).map(Some)
    }

    /// Until when a claim made now holds, in milliseconds (with leases).
    fn lease_until(&self) -> Option<i64> {
        self.options.lease.map(|l| now_ms() + l.as_millis() as i64)
    }

    /// Mark a queued job active, this process its runner (with a lease when the store has
    /// leases); its attempt number, the fencing token every later write carries. `None` when
    /// it is not queued (another runner took it).
    pub(super) fn claim(&self, id: &str) -> Result<Option<u32>> {
        let pid = std::process::id();
        self.db
            .query_opt(
                "UPDATE jobs SET state = 'active', message = 'converting', runner_pid = ?2, \
                 runner_start = ?3, updated = ?4, attempts = attempts + 1, lease_until = ?5, \
                 lease_owner = ?6 WHERE id = ?1 AND state = 'queued' RETURNING attempts",
                vals![id, pid, start_time(pid), now(), self.lease_until(), host()],
            )?
            .map(|r| r.get(0))
            .transpose()
    }

    /// Write an outcome of attempt `token`; nothing when the job is no longer that attempt's.
    pub(super) fn set_fenced(
        &self,
        id: &str,
        token: u32,
        state: JobState,
        message: &str,
    ) -> Result<()> {
        self.db.execute(
            "UPDATE jobs SET state = ?3, message = ?4, updated = ?5, lease_until = NULL \
             WHERE id = ?1 AND attempts = ?2 AND state = 'active'",
            vals![id, token, state.name(), message, now()],
        )?;
        Ok(())
    }

    /// Run a job this process has claimed.
    fn run_claimed(
        &self,
        id: &str,
        token: u32,
        credentials: Option<Credentials>,
        cancel: &CancelToken,
    ) -> Result<Job> {
        let job = self.get(id)?;
        self.audit(id, "started");
        // The job's own token: tripped by a recorded cancellation or by the runner's token.
        let outer = cancel.clone();
        let cancel = CancelToken::new();
        let progress = DbProgress {
            db: Mutex::new((self.connect()?, 0, Instant::now())),
            id: id.to_string(),
            token,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
        };
        // A watcher trips the token when a cancellation is recorded, whatever the export is
        // doing (converting, or waiting for its last parts).
        // With leases it is also the heartbeat: it renews the lease every third of it, and a
        // renewal that finds the job no longer this attempt's (reclaimed) stops the export.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lease = self.options.lease;
        let watcher = {
            let (location, id, cancel, outer, stop, lost) = (
                self.location.clone(),
                id.to_string(),
                cancel.clone(),
                outer.clone(),
                stop.clone(),
                lost.clone(),
            );
            std::thread::spawn(move || {
                let Ok(db) = Db::open(&location) else {
                    return;
                };
                let mut renewed = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(lease) = lease.filter(|l| renewed.elapsed() >= *l / 3) {
                        renewed = Instant::now();
                        let held = db.execute(
                            "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND attempts = ?2 \
                             AND state = 'active'",
                            vals![&id, token, now_ms() + lease.as_millis() as i64],
                        );
                        if matches!(held, Ok(0)) {
                            lost.store(true, Ordering::SeqCst);
                            cancel.cancel();
                            return;
                        }
                    }
                    if outer.is_cancelled() {
                        cancel.cancel();
                        return;
                    }
                    let asked = db
                        .query_opt(
                            "SELECT cancel_requested FROM jobs WHERE id = ?1",
                            vals![&id],
                        )
                        .ok()
                        .flatten()
                        .and_then(|r| r.get::<i64>(0).ok())
                        .is_some_and(|v| v != 0);
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
            let db = Mutex::new(self.connect()?);
            let id = id.to_string();
            crate::UploadHook(std::sync::Arc::new(move |upload: &str| {
                if let Ok(db) = db.lock() {
                    let _ = db.execute(
                        "UPDATE jobs SET upload = ?2 WHERE id = ?1 AND attempts = ?3",
                        vals![&id, upload, token],
                    );
                }
            }))
        };
        // The account's own keys where the target names them; else the caller's or the
        // store's. An account whose keys are gone fails the job, never falls back.
        let credentials = match &job.spec.target {
            TargetSpec::S3 { keys: Some(_), .. } => {
                self.credentials_for(&job.spec.target, None).map(Some)
            }
            _ => Ok(credentials.or_else(|| self.options.credentials.clone())),
        };
        // An earlier attempt's unfinished upload (it crashed, lost its lease or was stopped):
        // the output is reproducible, so the parts it holds are this attempt's parts too.
        let resume = match self.recorded_upload(id)? {
            Some(upload) => {
                let parts = self.recorded_parts(id, &upload)?;
                Some((upload, parts))
            }
            None => None,
        };
        // Each part stored is recorded, for the attempt that may resume this one.
        let part_recorder = {
            let db = Mutex::new(self.connect()?);
            let id = id.to_string();
            crate::PartHook(std::sync::Arc::new(
                move |upload: &str, n: u16, p: &crate::StoredPart| {
                    if let Ok(db) = db.lock() {
                        let _ = db.execute(
                            "INSERT INTO upload_parts (job_id, upload, part, size, md5, etag) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (job_id, upload, part) \
                             DO UPDATE SET size = excluded.size, md5 = excluded.md5, \
                             etag = excluded.etag",
                            vals![&id, upload, i64::from(n), p.size as i64, &p.md5, &p.etag],
                        );
                    }
                },
            ))
        };
        // Right before the object is published: still this attempt's job, with time left on
        // its lease (a third of it, so that no reclaim can come before the publication).
        let gate = {
            let db = Mutex::new(self.connect()?);
            let id = id.to_string();
            crate::PublishGate(std::sync::Arc::new(move || {
                let db = db
                    .lock()
                    .map_err(|_| Error::new(ErrorKind::Io, "job database lock"))?;
                let row = db
                    .query_opt(
                        "SELECT state, attempts, lease_until FROM jobs WHERE id = ?1",
                        vals![&id],
                    )?
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, "the job is gone"))?;
                let (state, attempts, until): (String, u32, Option<i64>) =
                    (row.get(0)?, row.get(1)?, row.get(2)?);
                let margin = lease.map(|l| l.as_millis() as i64 / 3).unwrap_or(0);
                let held = state == "active"
                    && attempts == token
                    && (lease.is_none() || until.is_some_and(|u| u > now_ms() + margin));
                if held {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::Cancelled,
                        "the job was taken over by another runner; nothing is published",
                    ))
                }
            }))
        };
        let (outcome, credentials) = match credentials {
            Ok(credentials) => (
                run_spec(
                    &job.spec,
                    job.created,
                    credentials.clone(),
                    resume,
                    &progress,
                    &cancel,
                    (recorder, part_recorder),
                    gate,
                ),
                credentials,
            ),
            Err(e) => (Err(e), None),
        };
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        if lost.load(Ordering::SeqCst) {
            // Reclaimed: the job is another attempt's now; this one writes nothing.
            return self.get(id);
        }
        match outcome {
            Ok(r) => {
                let text = serde_json::to_string(&r).unwrap_or_default();
                self.db.execute(
                    "UPDATE jobs SET state = 'completed', progress = 100, message = \
                     'completed', result = ?2, updated = ?3, lease_until = NULL \
                     WHERE id = ?1 AND attempts = ?4 AND state = 'active'",
                    vals![id, text, now(), token],
                )?;
            }
            Err(e) if e.kind() == ErrorKind::Cancelled => {
                let asked = self.get(id)?.cancel_requested;
                if !asked && outer.is_cancelled() && self.options.interrupt_requeues {
                    // The runner stopped (a service shutting down): the next start runs it
                    // again, and resumes its upload.
                    self.db.execute(
                        "UPDATE jobs SET state = 'queued', progress = 0, \
                         runner_pid = NULL, runner_start = NULL, attempts = CASE WHEN \
                         attempts > 0 THEN attempts - 1 ELSE 0 END, message = 'requeued: the \
                         service stopped', lease_until = NULL, lease_owner = NULL, \
                         updated = ?2 WHERE id = ?1 AND attempts = ?3 AND state = 'active'",
                        vals![id, now(), token],
                    )?;
                } else {
                    self.drop_upload(id, token, &job.spec, credentials);
                    self.set_fenced(id, token, JobState::Cancelled, "cancelled")?;
                }
            }
            Err(e)
                if e.kind() == ErrorKind::Io
                    && self.options.recovery == Recovery::Requeue
                    && token < MAX_ATTEMPTS =>
            {
                // A network error past the retries (or another I/O error): the next attempt
                // resumes the upload, after the retry delay (doubled at each attempt; a
                // queued job's `lease_until` is the time before which no worker claims it).
                let delay = self
                    .options
                    .retry_delay
                    .saturating_mul(1 << token.saturating_sub(1).min(16));
                let not_before = (!delay.is_zero()).then(|| now_ms() + delay.as_millis() as i64);
                let when = match not_before {
                    Some(_) => format!(", again in {} s", delay.as_secs()),
                    None => String::new(),
                };
                self.db.execute(
                    "UPDATE jobs SET state = 'queued', progress = 0, runner_pid = NULL, \
                     runner_start = NULL, lease_until = ?5, lease_owner = NULL, \
                     message = ?2, updated = ?3 WHERE id = ?1 AND attempts = ?4 \
                     AND state = 'active'",
                    vals![
                        id,
                        format!(
                            "requeued (attempt {token} of {MAX_ATTEMPTS}{when}): {}",
                            e.to_string_with_causes()
                        ),
                        now(),
                        token,
                        not_before
                    ],
                )?;
            }
            Err(e) => {
                self.drop_upload(id, token, &job.spec, credentials);
                self.set_fenced(id, token, JobState::Failed, &e.to_string_with_causes())?;
            }
        }
        let ended = self.get(id)?;
        let event = match ended.state {
            JobState::Queued => "requeued",
            s => s.name(),
        };
        self.audit(id, event);
        Ok(ended)
    }

    /// The parts recorded as stored in job `id`'s upload `upload`.
    fn recorded_parts(
        &self,
        id: &str,
        upload: &str,
    ) -> Result<std::collections::BTreeMap<u16, crate::StoredPart>> {
        let rows = self.db.query(
            "SELECT part, size, md5, etag FROM upload_parts WHERE job_id = ?1 AND upload = ?2",
            vals![id, upload],
        )?;
        let mut parts = std::collections::BTreeMap::new();
        for r in rows {
            let (n, size, md5, etag): (i64, i64, String, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            if let (Ok(n), Ok(size)) = (u16::try_from(n), u64::try_from(size)) {
                parts.insert(n, crate::StoredPart { size, md5, etag });
            }
        }
        Ok(parts)
    }

    /// The multipart upload recorded for job `id`, if any.
    fn recorded_upload(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query_opt("SELECT upload FROM jobs WHERE id = ?1", vals![id])?
            .and_then(|r| r.get::<Option<String>>(0).ok().flatten()))
    }

    /// Abort the upload recorded for job `id` (it ends without an object), best effort; only
    /// while the job is still attempt `token`'s (a runner that was taken over leaves the
    /// upload to the one that took over).
    fn drop_upload(&self, id: &str, token: u32, spec: &JobSpec, credentials: Option<Credentials>) {
        let row = self.db.query_opt(
            "SELECT upload FROM jobs WHERE id = ?1 AND attempts = ?2 AND state = 'active'",
            vals![id, token],
        );
        if let Ok(Some(upload)) =
            row.map(|r| r.and_then(|r| r.get::<Option<String>>(0).ok().flatten()))
        {
            let creds = self.credentials_for(&spec.target, credentials);
            if let Ok(c) = creds {
                let _ = abort_upload(&spec.target, &upload, c);
            }
            let _ = self.db.execute(
                "UPDATE jobs SET upload = NULL WHERE id = ?1 AND attempts = ?2",
                vals![id, token],
            );
        }
    }
}

/// Progress into the database (at most every whole percent or second).
struct DbProgress {
    db: Mutex<(Db, u8, Instant)>,
    id: String,
    token: u32,
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
            "UPDATE jobs SET progress = ?2, updated = ?3 WHERE id = ?1 AND attempts = ?4 \
             AND state = 'active'",
            vals![&self.id, pct, now(), self.token],
        );
    }
}

/// Abort the multipart upload `upload` of a job's target.
pub(super) fn abort_upload(
    target: &TargetSpec,
    upload: &str,
    credentials: Credentials,
) -> Result<()> {
    match target {
        TargetSpec::S3 {
            endpoint,
            region,
            bucket,
            key,
            ..
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

/// Run one job's export. Its output is reproducible, dated when the job was created: a
/// retried job writes the same bytes.
#[allow(clippy::too_many_arguments)]
fn run_spec(
    spec: &JobSpec,
    created: u64,
    credentials: Option<Credentials>,
    resume: Option<(String, std::collections::BTreeMap<u16, crate::StoredPart>)>,
    progress: &dyn Progress,
    cancel: &CancelToken,
    (recorder, part_recorder): (crate::UploadHook, crate::PartHook),
    gate: crate::PublishGate,
) -> Result<JobResult> {
    let format: Format = spec.format.parse()?;
    let mut options = ConvertOptions::new(format);
    let mut wo = WriterOptions::new();
    for o in &spec.writer_options {
        wo.extend(o)?;
    }
    options.writer_options = wo;
    options.compress = spec.compress;
    options.deterministic = Some(created);
    let (upload, recorded) = match resume {
        Some((u, parts)) => (Some(u), parts),
        None => (None, Default::default()),
    };
    let target = match &spec.target {
        TargetSpec::S3 {
            endpoint,
            region,
            bucket,
            key,
            ..
        } => Target::S3 {
            config: S3Config::new(endpoint, region)?
                .on_upload_started(recorder)
                .on_part_stored(part_recorder)
                .before_publish(gate)
                .resume_upload(upload, recorded)
                .keep_upload_on_failure(),
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
            config: ParConfig::new()
                .on_upload_started(recorder)
                .before_publish(gate)
                .resume_upload(upload)
                .keep_upload_on_failure(),
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
                .map_err(|e| Error::invalid_argument("base URL").with_source(e))?,
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
            Some(created),
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
