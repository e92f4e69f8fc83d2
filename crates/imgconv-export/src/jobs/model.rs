//! What a job is: its spec, state, result, and the store's options.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Credentials;

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
        /// The account whose own object-storage keys sign the upload ([`KeyRing`]); `None`:
        /// the service's keys.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keys: Option<String>,
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

    pub(super) fn parse(s: &str) -> JobState {
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
    /// The process id of its runner while it is active (on the lease holder's host).
    pub runner_pid: Option<u32>,
    /// The account that submitted it: only that account sees, polls and cancels it.
    pub account: String,
    /// The key id of the caller that submitted it (for the audit lines), if recorded.
    pub caller_key: Option<String>,
    /// The provider's request id of its submission (for the audit lines), if recorded.
    pub request_id: Option<String>,
}

/// Told of each change of a job's state a store or runner makes (`started`, `completed`,
/// `failed`, `cancelled`, `requeued`), with the job as it is then: a service writes its audit
/// lines from it.
#[derive(Clone)]
pub struct AuditHook(pub std::sync::Arc<AuditFn>);

/// What an [`AuditHook`] calls: the job as it is, and the event's name.
pub type AuditFn = dyn Fn(&Job, &str) + Send + Sync;

impl std::fmt::Debug for AuditHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditHook")
    }
}

/// An image of the catalogue: an id the APIs may name, the disk file it stands for, and who
/// may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CatalogueImage {
    /// The id the APIs name.
    pub id: String,
    /// The disk file.
    pub path: PathBuf,
    /// The account that owns it; `None`: public (every account sees it).
    pub owner: Option<String>,
    /// Other accounts that may export it.
    pub shared_with: Vec<String>,
}

impl CatalogueImage {
    /// Whether `account` may see (and export) it.
    pub fn visible_to(&self, account: &str) -> bool {
        match &self.owner {
            None => true,
            Some(o) => o == account || self.shared_with.iter().any(|a| a == account),
        }
    }
}

/// The account of callers, jobs and images that name none (a configuration without
/// accounts is one account).
pub const DEFAULT_ACCOUNT: &str = "default";

/// The accounts' own object-storage keys, by account id, that a job's upload uses when its
/// target names the account ([`TargetSpec::S3`]'s `keys`). Shared by every clone, and
/// replaced whole when the service's configuration is read again.
#[derive(Clone, Default)]
pub struct KeyRing(
    std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, Credentials>>>,
);

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .0
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_tuple("KeyRing").field(&names).finish()
    }
}

impl KeyRing {
    /// The keys of `account`, if it has its own.
    pub fn get(&self, account: &str) -> Option<Credentials> {
        self.0.read().ok()?.get(account).cloned()
    }

    /// Replace every account's keys.
    pub fn replace(&self, keys: std::collections::BTreeMap<String, Credentials>) {
        if let Ok(mut m) = self.0.write() {
            *m = keys;
        }
    }
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
    /// Put them back in the queue (their upload kept, for the next attempt to resume) while
    /// they have had fewer than [`MAX_ATTEMPTS`] attempts, as well as jobs that failed with an
    /// I/O error: a service's jobs, which its workers run again.
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
    /// A job stopped by its runner's cancel token (not by [`super::JobStore::cancel`]) goes back to
    /// the queue instead of to `cancelled`: a service that shuts down hands its running jobs
    /// to the next start.
    pub interrupt_requeues: bool,
    /// Runners hold their job by a lease of this length, renewed by a heartbeat every third
    /// of it; a job whose lease lapsed goes back to the queue ([`super::JobStore::reclaim_expired`])
    /// and its old runner can no longer write to it or publish its object. `None`: no lease
    /// (a dead runner is found by its process id only, on this host).
    pub lease: Option<Duration>,
    /// The accounts' own keys, for jobs whose target names an account.
    pub account_keys: KeyRing,
    /// Told of each state change of a job.
    pub audit: Option<AuditHook>,
    /// A job requeued after an I/O error (storage unreachable past a request's retries) is
    /// not claimed again before this delay, doubled at each further attempt: the storage gets
    /// time to come back. Zero: claimed again at once.
    pub retry_delay: Duration,
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
    /// The account it belongs to (the one whose export made it).
    pub account: String,
}

/// A hex SHA-256 of a request, for telling requests apart under one token.
pub fn fingerprint(value: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

/// `YYYY-MM-DDThh:mm:ssZ` (RFC 3339, UTC) of `unix` seconds, as the APIs show times.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
