//! imgconv-server: `imgconv serve`, the cloud export-image APIs over HTTP.
//!
//! One process answers AWS EC2 (`ExportImage`, `DescribeExportImageTasks`,
//! `CancelExportTask`; the Query protocol with XML answers), OCI Compute (`ExportImage`,
//! `GetWorkRequest`, `GetImage`), Huawei IMS (image export, job queries, image list) and EVS
//! (`os-volume_upload_image`), and ZStack (`ExportImageFromBackupStorage` and its API jobs),
//! each in its provider's wire format and error shape, with its provider's request signature
//! verified. Each provider lives in its own folder under [`providers`] (typed requests,
//! semantics, wire format, error shapes); exports are queued in the job store
//! (`imgconv-export`'s jobs) and run by worker threads; the HTTP layer here only reads,
//! routes and times requests.
//!
//! ```no_run
//! # fn main() -> imgconv::Result<()> {
//! let config = imgconv_server::Config::load(std::path::Path::new("serve.toml"))?;
//! // Blocks until SIGTERM or SIGINT; running exports go back to the queue.
//! imgconv_server::run(config)
//! # }
//! ```
//!
//! A service that has its own router mounts [`router`] on a [`Service`] and runs
//! [`Service::start_workers`] itself.

mod auth;
mod config;
#[doc(hidden)]
pub mod fuzz_support;
mod metrics;
pub mod providers;
mod wire;
mod workers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use imgconv::{CancelToken, Error, Result};
use imgconv_export::jobs::{JobStore, KeyRing, Recovery, StoreOptions, StorePool, Stores};

/// Connections to the job store each instance keeps for its requests (its workers have their
/// own): requests use them at once, and none is held while an image is opened or measured or
/// storage is contacted.
const STORE_CONNECTIONS: usize = 8;
use imgconv_export::Credentials;
use openssl::pkey::{PKey, Public};

pub use auth::{verify_huawei, verify_oci, verify_sigv4, AuthError, Signed, MAX_SKEW};
pub use config::{Account, AccountStorage, Caller, Config, Huawei, Image, Oci, Storage, Zstack};
pub use providers::Provider;
pub use wire::Wire;
pub use workers::Workers;

use crate::metrics::Metrics;

/// The service: configuration, callers' keys, the job store and counters.
pub struct Service {
    /// What a `SIGHUP` may change: callers, accounts, storage, provider settings.
    live: std::sync::RwLock<Arc<Live>>,
    /// Connections to the job store: a request takes one per store operation.
    store: StorePool,
    /// The accounts' own object-storage keys (the runners read them by account).
    account_keys: KeyRing,
    metrics: Metrics,
    wake: (Mutex<u64>, Condvar),
    stopping: AtomicBool,
    cancel: CancelToken,
}

/// The configuration in force, with what is derived from it. Requests take the one in force
/// when they start and keep it to their end; a reload puts a new one in place.
struct Live {
    config: Config,
    /// The service's object-storage keys.
    credentials: Credentials,
    oci_keys: BTreeMap<String, PKey<Public>>,
}

impl Live {
    fn new(config: Config) -> Result<Live> {
        let credentials = Credentials::new(
            &config.storage.access_key_id,
            &config.storage.secret_access_key,
            None,
        );
        let mut oci_keys = BTreeMap::new();
        for c in &config.callers {
            if let Caller::Oci {
                key_id,
                public_key_file,
                ..
            } = c
            {
                let pem = std::fs::read(public_key_file)
                    .map_err(|e| Error::io(public_key_file.display().to_string(), e))?;
                let key = PKey::public_key_from_pem(&pem).map_err(|e| {
                    Error::invalid_argument(format!(
                        "{}: not a PEM public key: {e}",
                        public_key_file.display()
                    ))
                })?;
                oci_keys.insert(key_id.clone(), key);
            }
        }
        for dir in [
            config.huawei.as_ref().map(|h| &h.image_store),
            config.zstack.as_ref().map(|z| &z.publish_dir),
        ]
        .into_iter()
        .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        }
        Ok(Live {
            config,
            credentials,
            oci_keys,
        })
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("listen", &self.live().config.listen)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Open the job store (queuing again the exports of a process that died) and load the
    /// callers' keys.
    pub fn new(config: Config) -> Result<Arc<Service>> {
        let live = Live::new(config)?;
        let account_keys = KeyRing::default();
        account_keys.replace(own_keys(&live.config));
        let store = JobStore::open_with(
            live.config.db.as_str(),
            store_options(&live.config, &live.credentials, &account_keys),
        )?;
        // The file's images join the catalogue, which `imgconv images` changes at run time.
        for (id, image) in &live.config.images {
            store.put_image(&catalogue_entry(id, image))?;
        }
        let store = StorePool::new(store, STORE_CONNECTIONS)?;
        Ok(Arc::new(Service {
            live: std::sync::RwLock::new(Arc::new(live)),
            store,
            account_keys,
            metrics: Metrics::default(),
            wake: (Mutex::new(0), Condvar::new()),
            stopping: AtomicBool::new(false),
            cancel: CancelToken::new(),
        }))
    }

    /// The configuration in force.
    fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The configuration in force (a reload replaces it; this one stays as it is).
    pub fn config(&self) -> Config {
        self.live().config.clone()
    }

    /// Put `config` in force (what `SIGHUP` does): callers, accounts, storage keys, provider
    /// settings and the file's images take effect for the requests and jobs that start from
    /// now; requests and exports under way finish as they began. The address, the job store,
    /// the worker count and TLS stay as the service started (they need a restart). On any
    /// error the configuration in force stays.
    pub fn reload(&self, mut config: Config) -> Result<()> {
        let old = self.live();
        let kept = &old.config;
        let mut unchanged = Vec::new();
        if config.listen != kept.listen {
            unchanged.push("listen");
        }
        if config.db != kept.db {
            unchanged.push("db");
        }
        if config.workers != kept.workers {
            unchanged.push("workers");
        }
        if config.tls_cert != kept.tls_cert || config.tls_key != kept.tls_key {
            unchanged.push("tls");
        }
        if let (Some(new), Some(old)) = (&mut config.zstack, &kept.zstack) {
            if new.publish_dir != old.publish_dir {
                unchanged.push("zstack.publish_dir");
                new.publish_dir = old.publish_dir.clone();
            }
        }
        config.listen = kept.listen;
        config.db = kept.db.clone();
        config.workers = kept.workers;
        config.tls_cert = kept.tls_cert.clone();
        config.tls_key = kept.tls_key.clone();
        let live = Live::new(config)?;
        self.with_store(|s| {
            live.config
                .images
                .iter()
                .try_for_each(|(id, image)| s.put_image(&catalogue_entry(id, image)))
        })?;
        self.account_keys.replace(own_keys(&live.config));
        match self.live.write() {
            Ok(mut l) => *l = Arc::new(live),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(live),
        }
        if !unchanged.is_empty() {
            tracing::warn!(
                settings = %unchanged.join(", "),
                "configuration reloaded; these settings need a restart and were kept"
            );
        } else {
            tracing::info!("configuration reloaded");
        }
        Ok(())
    }

    /// Run a closure on a connection to the job store (held for the closure only).
    fn with_store<T>(&self, f: impl FnOnce(&mut JobStore) -> T) -> T {
        self.store.with(f)
    }

    /// What a provider's semantics need to know beyond the request: the source, the
    /// caller's account with its grants, and where its storage is (the account's own, else
    /// the service's).
    fn context(
        &self,
        source: &std::path::Path,
        req: &wire::Incoming<'_>,
        who: &Who,
    ) -> providers::Context {
        let account = who.account.as_str();
        let live = self.live();
        let grants = live.config.account(account);
        let own = grants.and_then(|a| a.storage.as_ref());
        let storage = &live.config.storage;
        let (endpoint, region, credentials) = match own {
            Some(o) => (
                o.endpoint
                    .clone()
                    .unwrap_or_else(|| storage.endpoint.clone()),
                o.region.clone().unwrap_or_else(|| storage.region.clone()),
                Credentials::new(&o.access_key_id, &o.secret_access_key, None),
            ),
            None => (
                storage.endpoint.clone(),
                storage.region.clone(),
                live.credentials.clone(),
            ),
        };
        providers::Context {
            source: source.to_path_buf(),
            endpoint: Some((endpoint, region)),
            credentials: Some(credentials),
            image_store: live.config.huawei.as_ref().map(|h| h.image_store.clone()),
            account: account.to_string(),
            buckets: grants.and_then(|a| a.buckets.clone()),
            own_keys: own.is_some(),
            caller_key: who.key.clone(),
            request_id: req.request_id.to_string(),
            ..providers::Context::default()
        }
    }

    /// Who a verified key of `provider` is: the key and the account it acts for.
    fn who(&self, provider: Provider, key: &str) -> Who {
        Who {
            account: self.account_of(provider, key),
            key: key.to_string(),
        }
    }

    /// The account a verified key of `provider` acts for.
    fn account_of(&self, provider: Provider, key: &str) -> String {
        self.live()
            .config
            .callers
            .iter()
            .find(|c| c.provider() == provider && c.key_id() == key)
            .map_or(imgconv_export::jobs::DEFAULT_ACCOUNT, Caller::account)
            .to_string()
    }

    /// The disk behind image `id` of the catalogue (in the job store, which every instance
    /// of a fleet shares) if `account` may see it: an image it may not see is not found,
    /// exactly as one that does not exist.
    /// `Err` only when the store fails (the database is away): never "not found" then.
    fn image(&self, id: &str, account: &str) -> Result<Option<std::path::PathBuf>> {
        Ok(self
            .with_store(|s| s.catalogue_image(id))?
            .filter(|i| i.visible_to(account))
            .map(|i| i.path))
    }

    /// The disk behind `id` in `images` if `account` may see it: an image it may not see is
    /// not found, exactly as one that does not exist.
    fn visible<'a>(
        images: &'a BTreeMap<String, Image>,
        id: &str,
        account: &str,
    ) -> Option<&'a std::path::Path> {
        images
            .get(id)
            .filter(|i| i.visible_to(account))
            .map(|i| i.path.as_path())
    }

    /// Tell the workers a job was queued.
    fn notify(&self) {
        let (lock, cv) = &self.wake;
        if let Ok(mut n) = lock.lock() {
            *n += 1;
        }
        cv.notify_all();
    }

    /// Stop: no new jobs start, and running exports stop and go back to the queue.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        self.wake.1.notify_all();
    }
}

/// The secret of caller key `key` among the callers `pick` takes (key, secret) from.
fn secret<'c>(
    config: &'c Config,
    pick: impl Fn(&'c Caller) -> Option<(&'c str, &'c str)>,
    key: &str,
) -> Option<&'c str> {
    config
        .callers
        .iter()
        .filter_map(pick)
        .find(|(k, _)| *k == key)
        .map(|(_, s)| s)
}

/// A verified caller: its key id (a ZStack account's name) and the account it acts for.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    pub(crate) account: String,
    pub(crate) key: String,
}

fn store_options(config: &Config, credentials: &Credentials, keys: &KeyRing) -> StoreOptions {
    StoreOptions {
        recovery: Recovery::Requeue,
        credentials: Some(credentials.clone()),
        interrupt_requeues: true,
        lease: Some(Duration::from_secs(config.lease_secs)),
        account_keys: keys.clone(),
        audit: Some(imgconv_export::jobs::AuditHook(Arc::new(audit_line))),
        retry_delay: Duration::from_secs(config.retry_delay_secs),
    }
}

/// The audit line of a job's state change: the account, the caller's key id, the provider's
/// request id of its submission, and the job.
fn audit_line(job: &imgconv_export::jobs::Job, event: &str) {
    tracing::info!(
        target: "audit",
        event,
        job = %job.id,
        provider = %job.provider,
        account = %job.account,
        caller_key = job.caller_key.as_deref().unwrap_or(""),
        request_id = job.request_id.as_deref().unwrap_or(""),
        attempts = job.attempts,
        "job {event}"
    );
}

/// The job store of `config`, opened as the service opens it (for `imgconv images`).
pub fn open_store(config: &Config) -> Result<JobStore> {
    let credentials = Credentials::new(
        &config.storage.access_key_id,
        &config.storage.secret_access_key,
        None,
    );
    let keys = KeyRing::default();
    keys.replace(own_keys(config));
    JobStore::open_with(
        config.db.as_str(),
        store_options(config, &credentials, &keys),
    )
}

/// An image of the configuration as a catalogue entry.
pub fn catalogue_entry(id: &str, image: &Image) -> imgconv_export::jobs::CatalogueImage {
    imgconv_export::jobs::CatalogueImage {
        id: id.to_string(),
        path: image.path.clone(),
        owner: image.owner.clone(),
        shared_with: image.shared_with.clone(),
    }
}

/// The accounts that have their own object-storage keys, and those keys.
fn own_keys(config: &Config) -> BTreeMap<String, Credentials> {
    config
        .accounts
        .iter()
        .filter_map(|a| {
            let s = a.storage.as_ref()?;
            Some((
                a.id.clone(),
                Credentials::new(&s.access_key_id, &s.secret_access_key, None),
            ))
        })
        .collect()
}

/// The service's routes: the providers' APIs, `/healthz`, `/metrics`, and the ZStack export
/// folder under `/export/`.
pub fn router(service: Arc<Service>) -> Router {
    let mut r = Router::new();
    // The folder served is the one the service started with.
    if let Some(z) = &service.config().zstack {
        r = r.nest_service(
            "/export",
            tower_http::services::ServeDir::new(&z.publish_dir),
        );
    }
    r.fallback(handle).with_state(service)
}

/// One request: read (bounded in size and time), verified, answered in its provider's shape.
async fn handle(State(svc): State<Arc<Service>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let provider = Provider::of(&parts.method, &path);
    let request_id = match provider {
        Some(p) => p.request_id(&parts.headers),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let (limit, timeout) = {
        let live = svc.live();
        (
            live.config.max_body,
            Duration::from_secs(live.config.request_timeout_secs),
        )
    };
    let body = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await;
    let answer = match body {
        Err(_) => refusal(
            provider,
            &request_id,
            408,
            "RequestTimeout",
            "the request body did not arrive in time",
        ),
        Ok(Err(_)) => refusal(
            provider,
            &request_id,
            413,
            "RequestEntityTooLarge",
            &format!("the request body is larger than {limit} bytes or was cut off"),
        ),
        Ok(Ok(bytes)) => {
            let svc2 = svc.clone();
            let (method, headers, rid) = (
                parts.method.clone(),
                parts.headers.clone(),
                request_id.clone(),
            );
            let (p, q) = (path.clone(), query.clone());
            let joined = tokio::task::spawn_blocking(move || {
                let req = wire::Incoming {
                    method: &method,
                    path: &p,
                    query: &q,
                    headers: &headers,
                    body: &bytes,
                    request_id: &rid,
                };
                dispatch(&svc2, provider, &req)
            })
            .await;
            joined.unwrap_or_else(|_| {
                refusal(
                    provider,
                    &request_id,
                    500,
                    "InternalError",
                    "the request could not be handled",
                )
            })
        }
    };
    svc.metrics.request(provider, answer.status);
    tracing::info!(
        request_id = %request_id,
        provider = provider.map_or("service", Provider::name),
        method = %parts.method,
        path = %path,
        status = answer.status,
        millis = started.elapsed().as_millis() as u64,
        "request"
    );
    answer.into_response()
}

/// An error in the shape of `provider`, or the service's own (`{"error": message}`).
fn refusal(
    provider: Option<Provider>,
    request_id: &str,
    status: u16,
    code: &str,
    message: &str,
) -> Wire {
    match provider {
        Some(p) => p.error(request_id, &providers::Failure::new(status, code, message)),
        None => Wire::json(status, &serde_json::json!({ "error": message })),
    }
}

fn dispatch(svc: &Service, provider: Option<Provider>, req: &wire::Incoming<'_>) -> Wire {
    match provider {
        Some(p) => p.handle(svc, req),
        None => match (req.method.as_str(), req.path) {
            // Healthy when the job database answers: an instance that cannot reach it can
            // neither take requests nor run exports.
            ("GET" | "HEAD", "/healthz") => match svc.with_store(|s| s.ping()) {
                Ok(()) => Wire::text(200, "ok\n"),
                Err(e) => Wire::text(
                    503,
                    &format!("unavailable: {}\n", e.to_string_with_causes()),
                ),
            },
            ("GET", "/metrics") => Wire {
                content_type: "text/plain; version=0.0.4".into(),
                ..Wire::text(200, &svc.metrics.render(svc))
            },
            _ => Wire::json(404, &serde_json::json!({ "error": "not found" })),
        },
    }
}

impl IntoResponse for Wire {
    fn into_response(self) -> Response {
        let mut b = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("content-type", self.content_type);
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.body(Body::from(self.body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// Serve `config` until SIGTERM or SIGINT: answer the APIs, run exports on the workers.
/// On a signal it stops accepting, puts the running exports back in the queue (their uploads
/// aborted) and returns.
pub fn run(config: Config) -> Result<()> {
    run_reloading(config, None)
}

/// [`run`] the configuration file at `path`; `SIGHUP` reads it again and puts it in force
/// ([`Service::reload`]) without dropping a request or an export.
pub fn run_file(path: &std::path::Path) -> Result<()> {
    run_reloading(Config::load(path)?, Some(path.to_path_buf()))
}

fn run_reloading(config: Config, path: Option<std::path::PathBuf>) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMGCONV_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("async runtime", e))?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    let listen = config.listen;
    let service = Service::new(config)?;
    let workers = service.start_workers();
    let app = router(service.clone());
    let handle = axum_server::Handle::new();
    let outcome = runtime.block_on(async {
        let h = handle.clone();
        let svc = service.clone();
        if let Some(path) = path {
            let svc = service.clone();
            tokio::spawn(async move { reload_on_hangup(svc, path).await });
        }
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping: no new requests; running exports go back to the queue");
            svc.stop();
            h.graceful_shutdown(Some(Duration::from_secs(3)));
        });
        let make = app.into_make_service();
        match tls {
            Some((cert, key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .map_err(|e| Error::io(cert.display().to_string(), e))?;
                let mut server = axum_server::bind_rustls(listen, tls).handle(handle.clone());
                configure(server.http_builder());
                server.serve(make).await
            }
            None => {
                let mut server = axum_server::bind(listen).handle(handle.clone());
                configure(server.http_builder());
                server.serve(make).await
            }
        }
        .map_err(|e| Error::io(format!("listening on {listen}"), e))
    });
    service.stop();
    workers.join(Duration::from_secs(8));
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// Slow clients: headers must arrive within 10 seconds.
fn configure(b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
}

/// Each `SIGHUP`: read the configuration file again and put it in force; a file that does
/// not load is reported and the configuration in force stays.
async fn reload_on_hangup(svc: Arc<Service>, path: std::path::PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the configuration will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        let (svc, path) = (svc.clone(), path.clone());
        let outcome =
            tokio::task::spawn_blocking(move || Config::load(&path).and_then(|c| svc.reload(c)))
                .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(
                error = %e.to_string_with_causes(),
                "configuration not reloaded; the one in force stays"
            ),
            Err(e) => tracing::error!(error = %e, "configuration not reloaded"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
