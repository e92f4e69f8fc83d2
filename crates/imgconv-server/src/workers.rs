//! The worker threads: each claims the oldest queued export and runs it on the engine's own
//! threads; the HTTP side never waits for one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imgconv_export::jobs::{JobStore, StoreLocation, SubmissionListener};

use crate::{store_options, Service};

/// The running workers.
#[derive(Debug)]
pub struct Workers(Vec<JoinHandle<()>>);

impl Workers {
    /// Wait for the workers to end (after [`Service::stop`]), at most `within`.
    pub fn join(self, within: Duration) {
        let deadline = Instant::now() + within;
        for h in self.0 {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Service {
    /// Start the configured number of workers.
    pub fn start_workers(self: &Arc<Self>) -> Workers {
        let config = self.config();
        let mut threads: Vec<JoinHandle<()>> = (0..config.workers)
            .map(|n| {
                let svc = self.clone();
                std::thread::Builder::new()
                    .name(format!("export-worker-{n}"))
                    .spawn(move || work(&svc))
                    .unwrap_or_else(|e| panic!("cannot start a worker thread: {e}"))
            })
            .collect();
        // On a shared PostgreSQL store, a job queued through another instance wakes this
        // one's idle workers at once (instead of at their next look, within a second).
        if StoreLocation::parse(&config.db).is_postgres() {
            let svc = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("job-listener".into())
                    .spawn(move || listen(&svc))
                    .unwrap_or_else(|e| panic!("cannot start the listener thread: {e}")),
            );
        }
        Workers(threads)
    }
}

/// Wake the workers whenever any instance announces a submission.
fn listen(svc: &Service) {
    let location = StoreLocation::parse(&svc.config().db);
    let mut listener = None;
    while !svc.stopping.load(Ordering::SeqCst) {
        if listener.is_none() {
            match SubmissionListener::open(&location) {
                Ok(l) => listener = l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for submissions; retrying");
                    std::thread::sleep(Duration::from_secs(2));
                    continue;
                }
            }
            if listener.is_none() {
                return;
            }
        }
        let Some(l) = listener.as_mut() else {
            return;
        };
        match l.wait(Duration::from_secs(1)) {
            Ok(true) => svc.notify(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "listening for submissions failed; reconnecting");
                listener = None;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn work(svc: &Service) {
    // The store may be out of reach for a while (a database restarting): try again.
    let store = loop {
        let live = svc.live();
        match JobStore::open_with(
            live.config.db.as_str(),
            store_options(&live.config, &live.credentials, &svc.account_keys),
        ) {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(error = %e, "worker cannot open the job store; retrying");
                if svc.stopping.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    let mut seen = 0;
    while !svc.stopping.load(Ordering::SeqCst) {
        // Jobs whose runner (here or on another instance) stopped renewing its lease.
        match store.reclaim_expired() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "took back jobs whose lease lapsed"),
            Err(e) => tracing::error!(error = %e, "could not take back lapsed jobs"),
        }
        let started = Instant::now();
        // The service's storage keys in force now (a reload may have changed them).
        let keys = svc.live().credentials.clone();
        match store.run_next_any(Some(keys), &svc.cancel) {
            Ok(Some(job)) => {
                let bytes = job.result.as_ref().map(|r| r.size).unwrap_or(0);
                svc.metrics
                    .export(job.state.name(), started.elapsed(), bytes);
                tracing::info!(
                    job = %job.id,
                    provider = %job.provider,
                    state = job.state.name(),
                    attempts = job.attempts,
                    message = %job.message,
                    "export ended"
                );
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "worker could not run a job"),
        }
        // Nothing queued: wait for a submission (or look again in a second).
        let (lock, cv) = &svc.wake;
        if let Ok(n) = lock.lock() {
            if *n == seen && !svc.stopping.load(Ordering::SeqCst) {
                let _ = cv
                    .wait_timeout(n, Duration::from_secs(1))
                    .map(|(n, _)| seen = *n);
            } else {
                seen = *n;
            }
        }
    }
}
