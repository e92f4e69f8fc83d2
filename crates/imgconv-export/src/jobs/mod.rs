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

mod db;
mod model;
mod runner;
mod store;

pub use db::StoreLocation;
pub use model::{
    fingerprint, ImageRecord, Job, JobResult, JobSpec, JobState, Recovery, StoreOptions, Submitted,
    TargetSpec, MAX_ATTEMPTS, TOKEN_LIFETIME,
};
pub use store::{JobStore, SCHEMA_VERSION};
