//! The bodies of the service's fuzz targets (`fuzz/fuzz_targets/server_*.rs`), which the test
//! suite also runs on their seeds (`fuzz/seeds/server_*`).
//!
//! - [`server_request`]: any request through routing, every provider's signature check, the
//!   body limits' error shapes and the error rendering. The fuzzer holds no key, so nothing may
//!   be accepted: no job may ever be queued, and each signature check must refuse.
//! - [`server_api_bodies`]: any body, behind the signature, through each provider's request
//!   parsing and validation (EC2's form, the JSON bodies of OCI, IMS, EVS and ZStack).

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use imgconv_export::jobs::JobStore;

use crate::providers::{aws, Cli, Context};
use crate::wire::Incoming;
use crate::{auth, dispatch, Config, Provider, Service};

/// A folder of this process's own for the fuzzing service.
fn scratch() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("imgconv-server-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

fn service() -> &'static Arc<Service> {
    static SERVICE: OnceLock<Arc<Service>> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let dir = scratch();
        let key = openssl::rsa::Rsa::generate(2048)
            .and_then(|k| k.public_key_to_pem())
            .unwrap_or_default();
        let _ = std::fs::write(dir.join("oci.pem"), key);
        let _ = std::fs::remove_file(dir.join("jobs.sqlite"));
        let text = r#"
listen = "127.0.0.1:1"
public_url = "http://127.0.0.1:1"
db = "jobs.sqlite"
[storage]
endpoint = "http://127.0.0.1:1"
region = "us-east-1"
access_key_id = "k"
secret_access_key = "s"
[images]
"ami-1" = "/nonexistent/web.qcow2"
[volumes]
"v-1" = "/nonexistent/data.raw"
[huawei]
project_id = "p"
image_store = "uploaded"
[oci]
namespace = "ns"
compartment_id = "c"
[zstack]
backup_storage_uuid = "bs"
publish_dir = "export"
[[callers]]
api = "aws"
access_key_id = "AKID"
secret_access_key = "aws-secret-the-fuzzer-does-not-know"
[[callers]]
api = "oci"
key_id = "t/u/f"
public_key_file = "oci.pem"
[[callers]]
api = "huawei"
access_key = "HWAK"
secret_key = "huawei-secret-the-fuzzer-does-not-know"
[[callers]]
api = "zstack"
account = "admin"
password_sha512 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#;
        let config = Config::parse(text, &dir).unwrap_or_else(|e| panic!("fuzz config: {e}"));
        Service::new(config).unwrap_or_else(|e| panic!("fuzz service: {e}"))
    })
}

/// `METHOD TARGET\nName: value\n...\n\nBODY`; `None` when the head is not even that.
fn parse(data: &[u8]) -> Option<(Method, String, String, HeaderMap, Vec<u8>)> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], data[i + 2..].to_vec()),
        None => (data, Vec::new()),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, target) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = HeaderMap::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            headers.append(k, v);
        }
    }
    Some((method, path.to_string(), query.to_string(), headers, body))
}

/// Any request: refused, in its provider's shape, and nothing queued.
pub fn server_request(data: &[u8]) {
    let Some((method, path, query, headers, body)) = parse(data) else {
        return;
    };
    let svc = service();
    let req = Incoming {
        method: &method,
        path: &path,
        query: &query,
        headers: &headers,
        body: &body,
        request_id: "fuzz",
    };
    let signed = req.signed();
    let refused = "a signature check accepted a request nobody signed";
    assert!(
        auth::verify_sigv4(&signed, "ec2", |_| Some(
            "aws-secret-the-fuzzer-does-not-know"
        ))
        .is_err(),
        "{refused}"
    );
    assert!(
        auth::verify_huawei(&signed, |_| Some("huawei-secret-the-fuzzer-does-not-know")).is_err(),
        "{refused}"
    );
    let live = svc.live();
    assert!(
        auth::verify_oci(&signed, |k| live.oci_keys.get(k)).is_err(),
        "{refused}"
    );
    let provider = Provider::of(&method, &path);
    let answer = dispatch(svc, provider, &req);
    let open = matches!(path.as_str(), "/healthz" | "/metrics");
    assert!(
        open || answer.status >= 400,
        "{method} {path} was answered {} without a signature",
        answer.status
    );
    let jobs = svc.with_store(|s| s.counts()).unwrap_or_default();
    assert!(
        jobs.is_empty(),
        "a job was queued without a signature: {jobs:?}"
    );
}

fn store() -> &'static std::sync::Mutex<JobStore> {
    static STORE: OnceLock<std::sync::Mutex<JobStore>> = OnceLock::new();
    STORE.get_or_init(|| {
        let path = scratch().join("bodies.sqlite");
        let _ = std::fs::remove_file(&path);
        std::sync::Mutex::new(JobStore::open(&path).unwrap_or_else(|e| panic!("fuzz store: {e}")))
    })
}

/// Any body (the first byte picks the provider) through the provider's parsing and
/// validation, as it arrives behind a good signature. The image does not exist and no storage
/// is configured, so nothing runs.
pub fn server_api_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let store = store();
    let ctx = Context {
        source: "/nonexistent/image.qcow2".into(),
        ..Context::default()
    };
    match which % 5 {
        0 => aws::fuzz_form(store, &ctx, body),
        n => {
            let api: Cli = ["oci", "huawei-ims", "huawei-evs", "zstack"][usize::from(n - 1)]
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
            let headers = std::collections::BTreeMap::new();
            let mut guard = store.lock().unwrap_or_else(|e| e.into_inner());
            let one = std::cell::RefCell::new(&mut *guard);
            let reply = api.submit(&one, &ctx, body, &headers, Some("image-1"));
            assert!(reply.status >= 400 || reply.run.is_some(), "{reply:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/seeds")
            .join(target);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .collect();
        assert!(out.len() >= 5, "{} seeds in {}", out.len(), dir.display());
        out.push(Vec::new());
        out
    }

    /// The request target's seeds are refused, in their providers' shapes, and queue nothing.
    #[test]
    fn server_request_seeds() {
        for s in seeds("server_request") {
            server_request(&s);
        }
        // The seeds do reach the service (they are requests, not noise).
        assert!(parse(b"POST /?Action=ExportImage\nHost: x\n\nAction=ExportImage").is_some());
    }

    #[test]
    fn server_api_bodies_seeds() {
        for s in seeds("server_api_bodies") {
            server_api_bodies(&s);
        }
    }
}
