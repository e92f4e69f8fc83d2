//! Export jobs: submit, run, status, cancel, list, kept in a database so that they survive the
//! process: a SQLite file, or a PostgreSQL database that many hosts share ([`StoreLocation`]).
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
//! process's job back in the queue instead, and a job that failed with an I/O error (a network
//! error past the retries, say), until the job has been attempted [`MAX_ATTEMPTS`] times; and
//! with [`StoreOptions::interrupt_requeues`] a job whose runner is stopped (the service
//! shutting down) goes back to the queue rather than to `cancelled`. A requeued job keeps its
//! multipart upload: its output is reproducible, so the next attempt lists the upload's parts
//! and sends only those it does not hold. The upload is aborted when the job ends failed or
//! cancelled.
//!
//! The schema carries a version (SQLite: `PRAGMA user_version`; PostgreSQL: the table
//! `imgconv_schema`); [`JobStore::open`] migrates an older database forward in one
//! transaction (on PostgreSQL under an advisory lock, so that processes opening it at once
//! migrate it once). Version 1: jobs and tokens. Version 2: a job's attempt count, and the
//! image catalogue (images that exports made, such as Huawei EVS's `os-volume_upload_image`).
//! Version 3: leases. Version 4: login sessions. Version 5: the parts stored in each job's
//! upload. PostgreSQL stores start at version 4.
//!
//! Workers claim the oldest queued job in one statement (PostgreSQL: `FOR UPDATE SKIP
//! LOCKED`), under a lease that a heartbeat renews; every later write about the job carries
//! its attempt number, so a runner whose lease lapsed and whose job was taken back
//! ([`JobStore::reclaim_expired`]) can change nothing.

mod db;
mod model;
mod pool;
mod runner;
mod store;

pub use db::{StoreLocation, SubmissionListener};
pub use model::{
    fingerprint, rfc3339, AuditFn, AuditHook, CatalogueImage, ImageRecord, Job, JobResult, JobSpec,
    JobState, KeyRing, Recovery, StoreOptions, Submitted, TargetSpec, DEFAULT_ACCOUNT,
    MAX_ATTEMPTS, TOKEN_LIFETIME,
};
pub use pool::{StorePool, Stores};
pub use store::{JobStore, PendingAbort, SCHEMA_VERSION};
