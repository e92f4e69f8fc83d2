//! What every provider's semantics use: the context of a request, a provider-level failure,
//! queueing a job, the bucket grant check, and finding or cancelling an account's own job.

use std::path::PathBuf;

use imgconv::{Error, ErrorKind};
use imgconv_export::jobs::{fingerprint, Job, JobSpec, Stores, Submitted, TargetSpec};
use serde::Serialize;

/// What the service knows that a request does not say: the image the request names, the
/// caller and its account with its grants, and where buckets and folders are.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The disk the request's image (or volume) id stands for.
    pub source: PathBuf,
    /// S3-compatible endpoint and region for bucket destinations.
    pub endpoint: Option<(String, String)>,
    /// For EVS, which names no destination: bucket and key prefix.
    pub bucket: Option<(String, String)>,
    /// For ZStack: the folder the backup storage serves, and its base URL.
    pub publish: Option<(PathBuf, String)>,
    /// For EVS: the volume is attached (then `force` is needed).
    pub in_use: bool,
    /// For OCI's own format: the image's `image_metadata.json` (its launch options, OS),
    /// which the request does not carry; `None` writes [`imgconv_export::oci_image_metadata`].
    pub oci_metadata: Option<serde_json::Value>,
    /// The object storage keys (a dry run checks them); `None`: the environment's.
    pub credentials: Option<imgconv_export::Credentials>,
    /// For EVS: a folder to make the new image in (it is registered in the store's image
    /// catalogue under the answered `image_id`), instead of an object in [`Context::bucket`].
    pub image_store: Option<PathBuf>,
    /// The account the caller acts for: the job is its own
    /// ([`imgconv_export::jobs::DEFAULT_ACCOUNT`] when empty).
    pub account: String,
    /// The buckets (`bucket`, or `bucket/prefix/`) the account may export into; `None`:
    /// every bucket. A destination outside them is refused before anything is written.
    pub buckets: Option<Vec<String>>,
    /// Sign the upload with the account's own object-storage keys (the job names the
    /// account; the runner finds its keys), instead of [`Context::credentials`].
    pub own_keys: bool,
    /// The key id of the caller (recorded with a new job, for the audit lines).
    pub caller_key: String,
    /// The provider's request id of this request (recorded with a new job).
    pub request_id: String,
}

impl Context {
    /// The account the caller acts for.
    pub fn account(&self) -> &str {
        if self.account.is_empty() {
            imgconv_export::jobs::DEFAULT_ACCOUNT
        } else {
            &self.account
        }
    }

    /// Whether the account may write `key` into `bucket`.
    pub fn may_write(&self, bucket: &str, key: &str) -> bool {
        let Some(grants) = &self.buckets else {
            return true;
        };
        grants.iter().any(|g| match g.split_once('/') {
            // `bucket/prefix`: keys under the prefix only (a prefix ends where it says).
            Some((b, prefix)) => b == bucket && key.starts_with(prefix),
            None => g == bucket,
        })
    }

    /// The S3 target `bucket`/`key` if the account was granted it; else `denied`, the
    /// provider's access error.
    pub(crate) fn s3_target(
        &self,
        bucket: &str,
        key: &str,
        denied: impl FnOnce(String) -> Failure,
    ) -> Result<TargetSpec, Failure> {
        if !self.may_write(bucket, key) {
            return Err(denied(format!(
                "You are not authorized to write s3://{bucket}/{key}: the bucket is not \
                 granted to this account"
            )));
        }
        let (endpoint, region) = self.endpoint.clone().ok_or_else(|| {
            Failure::new(
                500,
                "InternalError",
                "no object storage endpoint is configured for this service",
            )
        })?;
        Ok(TargetSpec::S3 {
            endpoint,
            region,
            bucket: bucket.into(),
            key: key.into(),
            keys: self.own_keys.then(|| self.account().to_string()),
        })
    }

    /// The virtual size of the request's disk.
    pub(crate) fn image_size(&self) -> Result<u64, Error> {
        imgconv::open_image(&self.source, None).map(|r| r.virtual_size())
    }

    /// The job that exports the request's disk as `format` (with `writer_options`) to
    /// `target`.
    pub(crate) fn job(
        &self,
        format: imgconv::Format,
        writer_options: Vec<String>,
        target: TargetSpec,
    ) -> JobSpec {
        JobSpec {
            source: self.source.clone(),
            format: format.name().into(),
            writer_options,
            compress: false,
            target,
            oci_archive: false,
            oci_metadata: None,
        }
    }
}

/// A provider-level failure: its HTTP status, code and message, which each provider writes
/// in its own error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The HTTP status.
    pub status: u16,
    /// The provider's error code.
    pub code: String,
    /// The message.
    pub message: String,
}

impl Failure {
    /// A failure.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A 400 failure.
    pub fn bad(code: &str, message: impl Into<String>) -> Failure {
        Failure::new(400, code, message)
    }
}

/// The command line's answer: the HTTP status the service would give, its headers, and
/// the provider's JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Response headers (OCI's `opc-work-request-id`, `etag`).
    pub headers: Vec<(String, String)>,
    /// The provider's JSON body.
    pub body: serde_json::Value,
    /// A job that was created and should now be run.
    pub run: Option<String>,
}

impl Answer {
    /// A 200 answer of `view`.
    pub(crate) fn ok(view: &impl Serialize) -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: serde_json::to_value(view).unwrap_or_default(),
            run: None,
        }
    }
}

/// The job store the command line drives a provider on (one connection, one thread).
pub type CliStore<'a> = std::cell::RefCell<&'a mut imgconv_export::jobs::JobStore>;

/// A request as the command line gives it: the provider's JSON body, headers by lower-case
/// name (OCI's `opc-retry-token` and `if-match`, ZStack's `x-job-uuid`), the id its path
/// would hold, and the API (the name its jobs are stored under: `huawei-ims`, ...).
#[derive(Debug, Clone, Copy)]
pub struct CliRequest<'a> {
    /// The JSON body.
    pub body: &'a [u8],
    /// Headers by lower-case name.
    pub headers: &'a std::collections::BTreeMap<String, String>,
    /// The id in the path (an image's, a volume's).
    pub path_id: Option<&'a str>,
    /// The API's job kind.
    pub kind: &'a str,
}

impl CliRequest<'_> {
    /// A header's value.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).cloned()
    }
}

/// A submission accepted: the job, and whether it is new (then it should be run).
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) job: Job,
    pub(crate) new: bool,
}

impl Accepted {
    /// The job to run, if new.
    pub(crate) fn run(&self) -> Option<String> {
        self.new.then(|| self.job.id.clone())
    }
}

/// What a submission records besides the job: the provider's name for it (`kind`), its id,
/// the client token, the request as told apart under that token (`request`, with the token
/// itself left out), and the fields its views echo (`echo`).
pub(crate) struct Submission<'a, R: Serialize, E: Serialize> {
    pub(crate) kind: &'static str,
    pub(crate) id: &'a str,
    pub(crate) token: Option<&'a str>,
    pub(crate) request: &'a R,
    pub(crate) echo: &'a E,
    /// The id of what the job exports (an image's, a volume's), if the request names one.
    pub(crate) subject: Option<&'a str>,
    /// The provider's mapping of store errors.
    pub(crate) failure: fn(&Error) -> Failure,
}

/// Queue the job `spec` for the context's account (or find the one its token names), with
/// its origin recorded and audited.
pub(crate) fn submit_job<R: Serialize, E: Serialize>(
    stores: &impl Stores,
    ctx: &Context,
    spec: &JobSpec,
    s: Submission<'_, R, E>,
) -> Result<Accepted, Failure> {
    let internal = |e: serde_json::Error| Failure::new(500, "InternalError", e.to_string());
    let request = serde_json::to_value(s.request).map_err(internal)?;
    let echo = serde_json::to_value(s.echo).map_err(internal)?;
    // The request and the image it names; not the job's own (random) id or object key.
    let fp = fingerprint(&serde_json::json!({ "request": request, "source": spec.source }));
    stores.with(|store| {
        match store.submit(s.kind, ctx.account(), s.id, s.token, &fp, spec, &echo) {
            Ok(Submitted::New(job)) => {
                store
                    .record_origin(&job.id, &ctx.caller_key, &ctx.request_id, s.subject)
                    .map_err(|e| (s.failure)(&e))?;
                store.audit(&job.id, "submitted");
                Ok(Accepted { job, new: true })
            }
            Ok(Submitted::Existing(job)) => Ok(Accepted { job, new: false }),
            Err(e) => Err((s.failure)(&e)),
        }
    })
}

/// The job `id` of `account` if it is one of `kinds`; `None` for an id that does not exist,
/// another account's and another API's alike (no existence leak). `Err` only when the store
/// fails.
pub(crate) fn find_job(
    store: &mut imgconv_export::jobs::JobStore,
    account: &str,
    kinds: &[&str],
    id: &str,
) -> Result<Option<Job>, Error> {
    match store.get_of(id, account) {
        Ok(job) if kinds.contains(&job.provider.as_str()) => Ok(Some(job)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Cancel the job `id` of `account` if it is one of `kinds` (`None` as [`find_job`]): a
/// queued job's kept upload is aborted with no store connection held.
pub(crate) fn cancel_job(
    stores: &impl Stores,
    account: &str,
    kinds: &[&str],
    id: &str,
) -> Result<Option<Job>, Error> {
    let found = stores.with(|store| match find_job(store, account, kinds, id)? {
        Some(_) => store.cancel_deferring(id).map(Some),
        None => Ok(None),
    })?;
    match found {
        Some((_, Some(pending))) => {
            pending.run();
            stores
                .with(|s| s.forget_upload(id).and_then(|()| s.get(id)))
                .map(Some)
        }
        Some((job, None)) => Ok(Some(job)),
        None => Ok(None),
    }
}

/// A job's echoed fields as the provider's record type (a record that does not read gives
/// the type's default: views never fail on a stored row).
pub(crate) fn record<T: serde::de::DeserializeOwned + Default>(job: &Job) -> T {
    // Read from the stored value in place: a describe or list reads one per job.
    T::deserialize(&job.request).unwrap_or_default()
}

/// `n` (at most 32) random lower-case hex digits.
pub(crate) fn hex_id(n: usize) -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(n);
    id
}

/// A JSON body as the typed request `T`; `refusal` when it is not one.
pub(crate) fn json_request<T: serde::de::DeserializeOwned>(
    body: &[u8],
    refusal: impl FnOnce(String) -> Failure,
) -> Result<T, Failure> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v @ serde_json::Value::Object(_)) => serde_json::from_value(v).map_err(|e| {
            refusal(format!(
                "the request body does not hold the fields asked: {e}"
            ))
        }),
        _ => Err(refusal("the request body is not a JSON object".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_a_bucket_or_the_keys_under_a_bucket_prefix() {
        let ctx = |grants: Option<&[&str]>| Context {
            buckets: grants.map(|g| g.iter().map(|s| s.to_string()).collect()),
            ..Context::default()
        };
        assert!(ctx(None).may_write("any", "key"));
        let c = ctx(Some(&["team-a", "shared/team-a/"]));
        assert!(c.may_write("team-a", "x/y.raw"));
        assert!(c.may_write("shared", "team-a/y.raw"));
        assert!(!c.may_write("shared", "team-b/y.raw"));
        assert!(!c.may_write("shared", "team-a"));
        assert!(!c.may_write("team-a-other", "x"));
        assert!(!c.may_write("team", "a/x"));
        assert!(!ctx(Some(&[])).may_write("team-a", "x"));
        assert_eq!(ctx(None).account(), imgconv_export::jobs::DEFAULT_ACCOUNT);
    }

    #[test]
    fn ids_are_fresh_hex() {
        let (a, b) = (hex_id(17), hex_id(17));
        assert_ne!(a, b);
        assert!(
            a.len() == 17 && a.chars().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }

    /// Another account's job reads, and cancels, as an id that does not exist, and nothing
    /// changes; its own account cancels it.
    #[test]
    fn another_accounts_job_is_not_found_and_is_not_cancelled() -> imgconv::Result<()> {
        use imgconv_export::jobs::{JobState, JobStore};
        let dir = std::env::temp_dir().join(format!("imgconv-providers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| imgconv::Error::io("scratch", e))?;
        let db = dir.join("cancel.sqlite");
        let _ = std::fs::remove_file(&db);
        let store = std::sync::Mutex::new(JobStore::open(&db)?);
        let spec = JobSpec {
            source: "/nonexistent".into(),
            format: "raw".into(),
            writer_options: vec![],
            compress: false,
            target: TargetSpec::Folder {
                dir: dir.clone(),
                name: "x.raw".into(),
                base_url: "file:///".into(),
            },
            oci_archive: false,
            oci_metadata: None,
        };
        let a = Context {
            account: "111122223333".into(),
            ..Context::default()
        };
        let accepted = submit_job(
            &store,
            &a,
            &spec,
            Submission {
                kind: "aws",
                id: "ja",
                token: None,
                request: &(),
                echo: &(),
                subject: None,
                failure: |e| Failure::new(500, "InternalError", e.message()),
            },
        )
        .map_err(|f| imgconv::Error::invalid_argument(f.message))?;
        assert!(accepted.new);
        let b = "444455556666";
        let mut guard = store.lock().unwrap_or_else(|e| e.into_inner());
        assert!(find_job(&mut guard, b, &["aws"], "ja")?.is_none());
        assert!(find_job(&mut guard, "111122223333", &["oci"], "ja")?.is_none());
        assert!(find_job(&mut guard, "111122223333", &["aws"], "ja")?.is_some());
        drop(guard);
        assert!(cancel_job(&store, b, &["aws"], "ja")?.is_none());
        assert!(cancel_job(&store, b, &["aws"], "never")?.is_none());
        let job = store.lock().unwrap_or_else(|e| e.into_inner()).get("ja")?;
        assert_eq!((job.state, job.cancel_requested), (JobState::Queued, false));
        let job = cancel_job(&store, "111122223333", &["aws"], "ja")?;
        assert_eq!(job.map(|j| j.state), Some(JobState::Cancelled));
        Ok(())
    }
}
