//! The providers whose export-image APIs the service speaks. Each folder holds all of one
//! provider: its wire parsing into typed requests, its semantics (validation, the job it
//! queues, the views of its tasks) and its error shapes. The HTTP layer finds the provider by
//! the request's path and hands it the request (`Provider::handle`); the job store persists.
//! Each folder registers its entry points in one `Registration` (its `REGISTRATION`);
//! adding a provider is its folder, a variant of [`Provider`] and the line in
//! `Provider::registration` that names its registration.
//!
//! | provider | requests | task states |
//! | --- | --- | --- |
//! | `aws` | EC2 `ExportImage`, `CreateInstanceExportTask` (`ova`, or the disk alone), their describes, `CancelExportTask` | active, completed, deleting, deleted; active, cancelling, cancelled, completed |
//! | `oci` | `ExportImage` (`ExportImageDetails`, `opc-retry-token`, `if-match`), `GetWorkRequest`, `ListWorkRequests`, `GetImage` | ACCEPTED, IN_PROGRESS, SUCCEEDED, FAILED, CANCELING, CANCELED |
//! | `huawei` | IMS `POST /v1/cloudimages/{image_id}/file`, EVS `os-volume_upload_image`, their jobs | INIT, RUNNING, SUCCESS, FAIL |
//! | `zstack` | `ExportImageFromBackupStorage` and its API job | (job) Processing, Succeeded, Failed |
//!
//! ZVHD and ZVHD2 (Huawei) have no public specification: such requests get the provider's
//! error, never a file under that name.

/// A provider folder's `REGISTRATION`: its name, the names its jobs are stored under, and the
/// entry points every folder names alike (`wire::{routes, handle, error, request_id}`, and
/// `cli_submit`, `cli_describe`, `cli_list`, `cli_cancel`, `error_json` for the command line).
macro_rules! registration {
    ($doc:literal, $name:literal, [$($kind:expr),+]) => {
        #[doc = $doc]
        pub(crate) const REGISTRATION: super::Registration = super::Registration {
            name: $name,
            kinds: &[$($kind),+],
            routes: wire::routes,
            handle: wire::handle,
            error: wire::error,
            request_id: wire::request_id,
            commands: super::Commands {
                submit: cli_submit,
                describe: cli_describe,
                list: cli_list,
                cancel: cli_cancel,
                error: error_json,
            },
        };
    };
}

pub mod aws;
pub mod huawei;
pub mod oci;
mod shared;
pub mod zstack;

use axum::http::{HeaderMap, Method};
use imgconv::{Error, Result};
use imgconv_export::jobs::JobStore;

pub use shared::{Answer, CliRequest, CliStore, Context, Failure};

use crate::wire::{Incoming, Wire};
use crate::Service;

/// The providers the service speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Provider {
    /// AWS EC2.
    Aws,
    /// OCI Compute.
    Oci,
    /// Huawei Cloud IMS and EVS.
    Huawei,
    /// ZStack.
    Zstack,
}

/// A provider's entry points, which its folder registers.
pub(crate) struct Registration {
    /// The label used in metrics and logs.
    pub(crate) name: &'static str,
    /// The names its jobs are stored under (its APIs, as `imgconv export --api` names them).
    pub(crate) kinds: &'static [&'static str],
    /// Whether a request's method and path are its.
    pub(crate) routes: fn(&Method, &str) -> bool,
    /// Verify, parse and answer a request.
    pub(crate) handle: fn(&Service, &Incoming<'_>) -> Wire,
    /// A failure in its error shape, with the request id.
    pub(crate) error: fn(&str, &Failure) -> Wire,
    /// The request id of a request with these headers.
    pub(crate) request_id: fn(&HeaderMap) -> String,
    /// What the command line does with it.
    pub(crate) commands: Commands,
}

/// The command line's entry points of a provider.
pub(crate) struct Commands {
    pub(crate) submit: fn(&CliStore<'_>, &Context, &CliRequest<'_>) -> Result<Answer, Failure>,
    pub(crate) describe: fn(&mut JobStore, &str, &str) -> Result<Answer, Failure>,
    pub(crate) list: fn(&mut JobStore, &str, &str) -> Result<Answer, Failure>,
    pub(crate) cancel: fn(&CliStore<'_>, &str, &str) -> Result<Answer, Failure>,
    /// The JSON of a failure, with the request id.
    pub(crate) error: fn(&str, &Failure) -> serde_json::Value,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 4] = [
        Provider::Aws,
        Provider::Oci,
        Provider::Huawei,
        Provider::Zstack,
    ];

    /// The provider's entry points.
    pub(crate) fn registration(self) -> &'static Registration {
        match self {
            Provider::Aws => &aws::REGISTRATION,
            Provider::Oci => &oci::REGISTRATION,
            Provider::Huawei => &huawei::REGISTRATION,
            Provider::Zstack => &zstack::REGISTRATION,
        }
    }

    /// The label used in metrics and logs.
    pub fn name(self) -> &'static str {
        self.registration().name
    }

    /// The provider a request's path belongs to; `None`: the service's own routes.
    pub(crate) fn of(method: &Method, path: &str) -> Option<Provider> {
        Provider::ALL
            .into_iter()
            .find(|p| (p.registration().routes)(method, path))
    }

    /// Verify, parse and answer a request of this provider.
    pub(crate) fn handle(self, svc: &Service, req: &Incoming<'_>) -> Wire {
        (self.registration().handle)(svc, req)
    }

    /// A failure in this provider's own error shape.
    pub(crate) fn error(self, request_id: &str, f: &Failure) -> Wire {
        (self.registration().error)(request_id, f)
    }

    /// The request id: the client's where the provider lets it choose one, else a new one
    /// in the provider's style.
    pub(crate) fn request_id(self, headers: &HeaderMap) -> String {
        (self.registration().request_id)(headers)
    }
}

/// One API as `imgconv export --api NAME` drives it, on a job store of its own: the same
/// typed requests and semantics as the service's, with the provider's JSON shapes on the
/// command line (a request file in, the answer out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cli {
    provider: Provider,
    /// The name its jobs are stored under (Huawei's IMS and EVS are one provider).
    kind: &'static str,
}

impl std::str::FromStr for Cli {
    type Err = Error;
    fn from_str(s: &str) -> Result<Cli> {
        Provider::ALL
            .into_iter()
            .find_map(|provider| {
                let kind = provider.registration().kinds.iter().find(|k| **k == s)?;
                Some(Cli { provider, kind })
            })
            .ok_or_else(|| {
                let known: Vec<&str> = Provider::ALL
                    .iter()
                    .flat_map(|p| p.registration().kinds.iter().copied())
                    .collect();
                Error::invalid_argument(format!("unknown API '{s}' ({})", known.join(", ")))
            })
    }
}

impl Cli {
    /// The provider.
    pub fn provider(self) -> Provider {
        self.provider
    }

    /// The name this API's jobs are stored under.
    pub fn kind(self) -> &'static str {
        self.kind
    }

    fn commands(self) -> &'static Commands {
        &self.provider.registration().commands
    }

    /// Submit the request (the provider's JSON body; `headers` by lower-case name, such as
    /// OCI's `opc-retry-token` and `if-match` or ZStack's `x-job-uuid`; `path_id` the id its
    /// path would hold).
    pub fn submit(
        self,
        stores: &CliStore<'_>,
        ctx: &Context,
        body: &[u8],
        headers: &std::collections::BTreeMap<String, String>,
        path_id: Option<&str>,
    ) -> Answer {
        let request = CliRequest {
            body,
            headers,
            path_id,
            kind: self.kind,
        };
        (self.commands().submit)(stores, ctx, &request).unwrap_or_else(|f| self.failure(&f))
    }

    /// Describe a job of `account`.
    pub fn describe(self, store: &mut JobStore, account: &str, id: &str) -> Answer {
        (self.commands().describe)(store, account, id).unwrap_or_else(|f| self.failure(&f))
    }

    /// Every job of this API that `account` submitted.
    pub fn list(self, store: &mut JobStore, account: &str) -> Answer {
        (self.commands().list)(store, account, self.kind).unwrap_or_else(|f| self.failure(&f))
    }

    /// Cancel a job of `account`.
    pub fn cancel(self, stores: &CliStore<'_>, account: &str, id: &str) -> Answer {
        (self.commands().cancel)(stores, account, id).unwrap_or_else(|f| self.failure(&f))
    }

    fn failure(self, f: &Failure) -> Answer {
        let request_id = uuid::Uuid::new_v4().to_string();
        Answer {
            status: f.status,
            headers: Vec::new(),
            body: (self.commands().error)(&request_id, f),
            run: None,
        }
    }
}
