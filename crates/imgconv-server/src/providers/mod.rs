//! The providers whose export-image APIs the service speaks. Each folder holds all of one
//! provider: its wire parsing into typed requests, its semantics (validation, the job it
//! queues, the views of its tasks) and its error shapes. The HTTP layer finds the provider by
//! the request's path and hands it the request ([`Provider::handle`]); the job store persists.
//! Adding a provider is its folder and one line in each `match` of [`Provider`].
//!
//! | provider | requests | task states |
//! | --- | --- | --- |
//! | `aws` | EC2 `ExportImage`, `CreateInstanceExportTask` (`ova`, or the disk alone), their describes, `CancelExportTask` | active, completed, deleting, deleted; active, cancelling, cancelled, completed |
//! | `oci` | `ExportImage` (`ExportImageDetails`, `opc-retry-token`, `if-match`), `GetWorkRequest`, `GetImage` | ACCEPTED, IN_PROGRESS, SUCCEEDED, FAILED, CANCELING, CANCELED |
//! | `huawei` | IMS `POST /v1/cloudimages/{image_id}/file`, EVS `os-volume_upload_image`, their jobs | INIT, RUNNING, SUCCESS, FAIL |
//! | `zstack` | `ExportImageFromBackupStorage` and its API job | (job) Processing, Succeeded, Failed |
//!
//! ZVHD and ZVHD2 (Huawei) have no public specification: such requests get the provider's
//! error, never a file under that name.

pub mod aws;
pub mod huawei;
pub mod oci;
mod shared;
pub mod zstack;

use axum::http::{HeaderMap, Method};
use imgconv::{Error, Result};

pub use shared::{Answer, Context, Failure};

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

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 4] = [
        Provider::Aws,
        Provider::Oci,
        Provider::Huawei,
        Provider::Zstack,
    ];

    /// The label used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Oci => "oci",
            Provider::Huawei => "huawei",
            Provider::Zstack => "zstack",
        }
    }

    /// The provider a request's path belongs to; `None`: the service's own routes.
    pub(crate) fn of(method: &Method, path: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| match p {
            Provider::Aws => aws::routes(method, path),
            Provider::Oci => oci::routes(path),
            Provider::Huawei => huawei::routes(path),
            Provider::Zstack => zstack::routes(path),
        })
    }

    /// Verify, parse and answer a request of this provider.
    pub(crate) fn handle(self, svc: &Service, req: &Incoming<'_>) -> Wire {
        match self {
            Provider::Aws => aws::handle(svc, req),
            Provider::Oci => oci::handle(svc, req),
            Provider::Huawei => huawei::handle(svc, req),
            Provider::Zstack => zstack::handle(svc, req),
        }
    }

    /// A failure in this provider's own error shape.
    pub(crate) fn error(self, request_id: &str, f: &Failure) -> Wire {
        match self {
            Provider::Aws => aws::error(request_id, f),
            Provider::Oci => oci::error(request_id, f),
            Provider::Huawei => huawei::error(request_id, f),
            Provider::Zstack => zstack::error(request_id, f),
        }
    }

    /// The request id: the client's where the provider lets it choose one, else a new one
    /// in the provider's style.
    pub(crate) fn request_id(self, headers: &HeaderMap) -> String {
        match self {
            Provider::Aws => uuid::Uuid::new_v4().to_string(),
            Provider::Oci => oci::request_id(headers),
            Provider::Huawei => uuid::Uuid::new_v4().simple().to_string(),
            Provider::Zstack => uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// One API as `imgconv export --api NAME` drives it, on a job store of its own: the same
/// typed requests and semantics as the service's, with the provider's JSON shapes on the
/// command line (a request file in, the answer out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cli {
    provider: Provider,
    /// Huawei's two APIs (IMS image export, EVS volume upload) are one provider.
    evs: bool,
}

impl std::str::FromStr for Cli {
    type Err = Error;
    fn from_str(s: &str) -> Result<Cli> {
        let (provider, evs) = match s {
            "aws" => (Provider::Aws, false),
            "oci" => (Provider::Oci, false),
            "huawei-ims" => (Provider::Huawei, false),
            "huawei-evs" => (Provider::Huawei, true),
            "zstack" => (Provider::Zstack, false),
            other => {
                return Err(Error::invalid_argument(format!(
                    "unknown API '{other}' (aws, oci, huawei-ims, huawei-evs, zstack)"
                )))
            }
        };
        Ok(Cli { provider, evs })
    }
}

impl Cli {
    /// The provider.
    pub fn provider(self) -> Provider {
        self.provider
    }

    /// The name this API's jobs are stored under.
    pub fn kind(self) -> &'static str {
        match (self.provider, self.evs) {
            (Provider::Aws, _) => aws::KIND,
            (Provider::Oci, _) => oci::KIND,
            (Provider::Huawei, false) => huawei::IMS,
            (Provider::Huawei, true) => huawei::EVS,
            (Provider::Zstack, _) => zstack::KIND,
        }
    }

    /// Submit the request (the provider's JSON body; `headers` by lower-case name, such as
    /// OCI's `opc-retry-token` and `if-match` or ZStack's `x-job-uuid`; `path_id` the id its
    /// path would hold).
    pub fn submit(
        self,
        stores: &impl imgconv_export::jobs::Stores,
        ctx: &Context,
        body: &[u8],
        headers: &std::collections::BTreeMap<String, String>,
        path_id: Option<&str>,
    ) -> Answer {
        let header = |n: &str| headers.get(n).cloned();
        let outcome = match self.provider {
            Provider::Aws => aws::cli_submit(stores, ctx, body),
            Provider::Oci => oci::cli_submit(
                stores,
                ctx,
                body,
                path_id,
                header("opc-retry-token"),
                header("if-match"),
            ),
            Provider::Huawei => huawei::cli_submit(stores, ctx, body, path_id, self.evs),
            Provider::Zstack => {
                zstack::cli_submit(stores, ctx, body, header("x-job-uuid").as_deref())
            }
        };
        outcome.unwrap_or_else(|f| self.failure(&f))
    }

    /// Describe a job of `account`.
    pub fn describe(
        self,
        store: &mut imgconv_export::jobs::JobStore,
        account: &str,
        id: &str,
    ) -> Answer {
        let outcome = match self.provider {
            Provider::Aws => aws::cli_describe(store, account, id),
            Provider::Oci => oci::cli_describe(store, account, id),
            Provider::Huawei => huawei::cli_describe(store, account, id),
            Provider::Zstack => zstack::cli_describe(store, account, id),
        };
        outcome.unwrap_or_else(|f| self.failure(&f))
    }

    /// Every job of this API that `account` submitted.
    pub fn list(self, store: &mut imgconv_export::jobs::JobStore, account: &str) -> Answer {
        let outcome = match self.provider {
            Provider::Aws => aws::cli_list(store, account),
            Provider::Oci => oci::cli_list(store, account),
            Provider::Huawei => huawei::cli_list(store, account, self.kind()),
            Provider::Zstack => zstack::cli_list(store, account),
        };
        outcome.unwrap_or_else(|f| self.failure(&f))
    }

    /// Cancel a job of `account`.
    pub fn cancel(
        self,
        stores: &impl imgconv_export::jobs::Stores,
        account: &str,
        id: &str,
    ) -> Answer {
        let outcome = match self.provider {
            Provider::Aws => aws::cli_cancel(stores, account, id),
            Provider::Oci => oci::cli_cancel(stores, account, id),
            Provider::Huawei => huawei::cli_cancel(stores, account, id),
            Provider::Zstack => zstack::cli_cancel(stores, account, id),
        };
        outcome.unwrap_or_else(|f| self.failure(&f))
    }

    fn failure(self, f: &Failure) -> Answer {
        let request_id = uuid::Uuid::new_v4().to_string();
        let body = match self.provider {
            Provider::Aws => aws::error_json(&request_id, f),
            Provider::Oci => oci::error_json(f),
            Provider::Huawei => huawei::error_json(f),
            Provider::Zstack => zstack::error_json(f),
        };
        Answer {
            status: f.status,
            headers: Vec::new(),
            body,
            run: None,
        }
    }
}
