//! `imgconv serve` driven by the providers' own SDKs (boto3, oci, huaweicloudsdkims,
//! huaweicloudsdkevs 3.0.69; installed by the README's test command into `target/sdk-venv`)
//! and by ZStack's raw HTTP, with the exports going to a local S3-compatible server and read
//! back with qemu-img; signatures refused; hostile requests; kill -9 and SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgconv_export::jobs::{JobState, JobStore, StoreLocation};
use imgconv_testkit::{free_port, Fault, FaultProxy, Rule, S3Server, ACCESS_KEY, SECRET_KEY};
use serde_json::{json, Value};

use crate::tools::*;

const AMI: &str = "ami-0abcdef1234567890";
const INSTANCE: &str = "i-0abcdef1234567890";
const OCI_IMAGE: &str = "ocid1.image.oc1..aaaaexample";
const HW_IMAGE: &str = "d164b5df-1bc3-4c3f-893e-3e471fd16e64";
const BROKEN_IMAGE: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const VOLUME: &str = "5bd5a8e0-7a1b-4c47-a1f8-c0a9fd0cae34";
const PROJECT: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const BACKUP_STORAGE: &str = "3f1c8d2a9b7e4c6d8e0f1a2b3c4d5e6f";
const AWS_KEY: &str = "AKIDEXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const HW_AK: &str = "HWAKEXAMPLE0123456789";
const HW_SK: &str = "hw-secret-key-example-0123456789";
const TENANCY: &str = "ocid1.tenancy.oc1..t";
const USER: &str = "ocid1.user.oc1..u";
const ZS_PASSWORD: &str = "password";

/// The SDKs' Python (`$IMGCONV_SDK_PYTHON`, else the test command's venv).
fn python() -> PathBuf {
    let p = std::env::var_os("IMGCONV_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/sdk-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: the README's test command installs the providers' SDKs there",
        p.display()
    );
    p
}

/// Run a scenario of `tests/sdk/clients.py`; what it saw.
fn sdk(scenario: &str, args: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/clients.py");
    let out = Command::new(python())
        .arg(script)
        .arg(scenario)
        .arg(args.to_string())
        .output()
        .expect("run the SDK client");
    assert!(
        out.status.success(),
        "{scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client's JSON")
}

/// A running `imgconv serve`; killed when dropped.
struct Served {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    dir: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Everything a test's service needs: folder, images, keys, storage.
struct Setup {
    dir: PathBuf,
    src: PathBuf,
    s3: S3Server,
    oci_key: PathBuf,
    fingerprint: String,
    /// The `db` setting: `jobs.sqlite` in the folder, or a database on the test cluster.
    db: String,
}

/// The job store a test's instances share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

fn setup(name: &str) -> Setup {
    setup_on(name, Backend::Sqlite)
}

fn setup_on(name: &str, backend: Backend) -> Setup {
    let dir = scratch(name);
    let src = mixed_source(&dir);
    qemu_make(&src, "qcow2", "cluster_size=65536", &dir.join("web.qcow2"));
    // An image that cannot be read: its exports fail.
    std::fs::write(dir.join("broken.qcow2"), b"QFI\xfbnot really a qcow2 image").expect("broken");
    let s3 = S3Server::start(name);
    let keys = sdk(
        "oci_keys",
        &json!({ "private": dir.join("oci.pem"), "public": dir.join("oci_public.pem") }),
    );
    Setup {
        fingerprint: keys["fingerprint"]
            .as_str()
            .expect("fingerprint")
            .to_string(),
        oci_key: dir.join("oci.pem"),
        db: match backend {
            Backend::Sqlite => "jobs.sqlite".into(),
            Backend::Postgres => imgconv_testkit::pg_database(name),
        },
        dir,
        src,
        s3,
    }
}

impl Setup {
    fn config(&self, port: u16, storage: &str) -> String {
        let d = self.dir.display();
        format!(
            r#"listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
db = "{db}"
workers = 1
request_timeout_secs = 3

[storage]
endpoint = "{storage}"
region = "us-east-1"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[images]
"{AMI}" = "{d}/web.qcow2"
"{OCI_IMAGE}" = "{d}/web.qcow2"
"{HW_IMAGE}" = "{d}/web.qcow2"
"{BROKEN_IMAGE}" = "{d}/broken.qcow2"
"big" = "{d}/big.raw"

[volumes]
"{VOLUME}" = "{d}/src.raw"

[instances]
"{INSTANCE}" = "{d}/web.qcow2"

[huawei]
project_id = "{PROJECT}"
image_store = "uploaded"

[oci]
namespace = "mynamespace"
compartment_id = "ocid1.compartment.oc1..example"

[zstack]
backup_storage_uuid = "{BACKUP_STORAGE}"
publish_dir = "export"

[[callers]]
api = "aws"
access_key_id = "{AWS_KEY}"
secret_access_key = "{AWS_SECRET}"

[[callers]]
api = "oci"
key_id = "{TENANCY}/{USER}/{fp}"
public_key_file = "oci_public.pem"

[[callers]]
api = "huawei"
access_key = "{HW_AK}"
secret_key = "{HW_SK}"

[[callers]]
api = "zstack"
account = "admin"
password_sha512 = "{pw}"
"#,
            fp = self.fingerprint,
            pw = sha512_hex(ZS_PASSWORD),
            db = self.db,
        )
    }

    /// Start the service with its storage at `storage`.
    fn serve(&self, storage: &str) -> Served {
        self.serve_named("serve", storage, "")
    }

    /// Start an instance whose configuration is `NAME.toml` (instances in one folder share
    /// the job store, the image store and the published folder), with `extra` settings.
    fn serve_named(&self, name: &str, storage: &str, extra: &str) -> Served {
        self.serve_edited(name, storage, |text| {
            text.replacen("workers = 1\n", &format!("workers = 1\n{extra}"), 1)
        })
    }

    /// Start an instance whose configuration is the usual one as `edit` changes it.
    fn serve_edited(&self, name: &str, storage: &str, edit: impl Fn(String) -> String) -> Served {
        let port = free_port();
        let config = self.dir.join(format!("{name}.toml"));
        let text = edit(self.config(port, storage));
        std::fs::write(&config, text).expect("config");
        let mut s = Served {
            child: None,
            port,
            config,
            dir: self.dir.clone(),
        };
        s.start();
        s
    }

    /// The SDK clients' arguments.
    fn args(&self, served: &Served, more: Value) -> Value {
        let mut a = json!({
            "endpoint": served.url(),
            "s3": self.s3.endpoint(),
            "s3_key": ACCESS_KEY,
            "s3_secret": SECRET_KEY,
            "key": AWS_KEY,
            "secret": AWS_SECRET,
            "bucket": "exports",
            "ak": HW_AK,
            "sk": HW_SK,
            "project": PROJECT,
            "volume": VOLUME,
            "tenancy": TENANCY,
            "user": USER,
            "fingerprint": self.fingerprint,
            "key_file": self.oci_key,
            "namespace": "mynamespace",
            "account": "admin",
            "password": ZS_PASSWORD,
            "bs": BACKUP_STORAGE,
            "broken": BROKEN_IMAGE,
        });
        if let (Some(o), Value::Object(m)) = (a.as_object_mut(), more) {
            o.extend(m);
        }
        a
    }

    /// The object (or file) at `path` reads back as the source, as `format`.
    fn same(&self, path: &Path, format: &str) {
        assert_eq!(
            qemu_compare_formats(&self.src, "raw", path, format),
            0,
            "{} differs from the source",
            path.display()
        );
    }

    fn store(&self) -> JobStore {
        let location = match StoreLocation::parse(&self.db) {
            StoreLocation::Sqlite(p) => StoreLocation::Sqlite(self.dir.join(p)),
            pg => pg,
        };
        JobStore::open(location).expect("job store")
    }
}

fn sha512_hex(s: &str) -> String {
    let out = Command::new("sha512sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha512sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

impl Served {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log =
            std::fs::File::create(self.dir.join(format!("serve-{}.log", self.port))).expect("log");
        let child = imgconv()
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start imgconv serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((200, _)) = raw(
                self.port,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("imgconv serve did not answer /healthz: {}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("serve-{}.log", self.port)))
            .unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send a signal and leave the process be (SIGSTOP, SIGCONT).
    fn nudge(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        c.wait().expect("wait")
    }
}

/// One raw HTTP exchange; (status, body).
fn raw(port: u16, request: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(request).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Storage files that are neither objects nor their metadata: pending uploads.
fn uploads(s3: &S3Server) -> Vec<String> {
    s3.files()
        .into_iter()
        .filter(|f| f.contains("upload") || f.contains(".part"))
        .collect()
}

#[test]
fn boto3_exports_vmdk_raw_and_vhd_that_read_back_with_tokens_and_dry_runs() {
    let s = setup("serve-aws");
    let served = s.serve(&s.s3.endpoint());
    for (format, qemu) in [("VMDK", "vmdk"), ("RAW", "raw"), ("VHD", "vpc")] {
        let out = s.dir.join(format!("aws.{qemu}"));
        let r = sdk(
            "aws_export",
            &s.args(
                &served,
                json!({ "format": format, "image": AMI, "out": out }),
            ),
        );
        assert_eq!(r["status"], "completed", "{r}");
        s.same(&out, qemu);
        if format != "VMDK" {
            // Two tasks or more: a page of one has a next page.
            assert!(r["next"].is_string(), "{r}");
        }
    }
    let before = s.s3.files();
    let r = sdk("aws_idempotent", &s.args(&served, json!({ "image": AMI })));
    assert_eq!(r["first"], r["second"], "{r}");
    assert_eq!(r["dry_run"], "DryRunOperation", "{r}");
    let added: Vec<_> =
        s.s3.files()
            .into_iter()
            .filter(|f| !before.contains(f) && f.starts_with("exports/"))
            .collect();
    assert_eq!(added.len(), 1, "one task's object only: {added:?}");
    assert!(added[0].starts_with("exports/idem/"), "{added:?}");
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
}

/// Accounts, with boto3: account A (111122223333) owns an image and is granted its bucket
/// `team-a`; B (444455556666) sees A's image only where A shared it and may write under
/// `exports/b/` only; C (777788889999) has its own storage and keys. B's list, describe and
/// cancel of A's task, and B's export of A's private image, answer exactly as for ids that do
/// not exist, and change nothing; B writing into A's bucket is refused with EC2's access
/// error and nothing is written; the same ClientToken from A and B makes two tasks; C's object
/// is written into its own storage with its own keys (the service's storage accepts only the
/// service's keys, C's only C's).
#[test]
fn aws_accounts_see_and_export_only_what_they_own_or_were_granted() {
    const A: &str = "111122223333";
    const B: &str = "444455556666";
    let s = setup("serve-accounts");
    s.s3.create_bucket("team-a");
    let own_key = "own-access-key";
    let own_secret = "own-secret-key-0123456789";
    let own = S3Server::start_with_keys("serve-accounts-own", own_key, own_secret);
    let d = s.dir.display();
    let served = s.serve_edited("serve", &s.s3.endpoint(), |text| {
        let images = format!(
            "[images]\n\
             \"ami-a\" = {{ path = \"{d}/web.qcow2\", owner = \"{A}\" }}\n\
             \"ami-shared\" = {{ path = \"{d}/web.qcow2\", owner = \"{A}\", \
             shared_with = [\"{B}\", \"777788889999\"] }}\n"
        );
        let mut t = text.replacen("[images]\n", &images, 1);
        t.push_str(&format!(
            r#"
[[callers]]
api = "aws"
account = "{A}"
access_key_id = "AKIDACCOUNTA"
secret_access_key = "secret-of-account-a"

[[callers]]
api = "aws"
account = "{B}"
access_key_id = "AKIDACCOUNTB"
secret_access_key = "secret-of-account-b"

[[callers]]
api = "aws"
account = "777788889999"
access_key_id = "AKIDACCOUNTC"
secret_access_key = "secret-of-account-c"

[[accounts]]
id = "{A}"
buckets = ["team-a"]

[[accounts]]
id = "{B}"
buckets = ["exports/b/"]

[[accounts]]
id = "777788889999"
storage = {{ access_key_id = "{own_key}", secret_access_key = "{own_secret}", endpoint = "{own_endpoint}" }}
"#,
            own_endpoint = own.endpoint(),
        ));
        t
    });
    let r = sdk(
        "aws_accounts",
        &s.args(
            &served,
            json!({
                "key": "AKIDACCOUNTA", "secret": "secret-of-account-a",
                "key_b": "AKIDACCOUNTB", "secret_b": "secret-of-account-b",
                "key_c": "AKIDACCOUNTC", "secret_c": "secret-of-account-c",
                "bucket_a": "team-a", "image_a": "ami-a", "image_shared": "ami-shared",
            }),
        ),
    );
    let task_a = r["task_a"].as_str().expect("A's task");
    let listed = |k: &str| r[k].as_array().cloned().unwrap_or_default();
    assert!(listed("a_lists").contains(&json!(task_a)), "{r}");
    assert!(!listed("b_lists").contains(&json!(task_a)), "{r}");
    assert_eq!(r["b_describes_a"], r["b_describes_unknown"], "{r}");
    assert_eq!(
        r["b_describes_a"][1], "InvalidExportImageTaskId.NotFound",
        "{r}"
    );
    assert_eq!(r["b_cancels_a"], r["b_cancels_unknown"], "{r}");
    assert!(
        r["b_cancels_a"].is_array(),
        "B's cancel of A's task was accepted: {r}"
    );
    assert_eq!(r["b_exports_a_image"], r["b_exports_unknown_image"], "{r}");
    assert_eq!(r["b_exports_a_image"][1], "InvalidAMIID.NotFound", "{r}");
    assert_eq!(
        r["b_into_a_bucket"],
        json!([403, "UnauthorizedOperation"]),
        "{r}"
    );
    assert_eq!(
        r["b_into_a_bucket_dry"],
        json!([403, "UnauthorizedOperation"]),
        "{r}"
    );
    assert_ne!(
        r["task_b"], r["task_a"],
        "one ClientToken, two accounts: {r}"
    );
    // B's cancel changed nothing: A's task completed.
    assert_eq!(r["a_status"], "completed", "{r}");
    assert_eq!(r["b_status"], "completed", "{r}");
    let key = |k: &str| r[k].as_str().expect("key").to_string();
    let a_obj = s.dir.join("account-a.raw");
    let bytes =
        s.s3.download_from("team-a", &key("a_key"))
            .expect("A's object");
    std::fs::write(&a_obj, bytes).expect("write");
    s.same(&a_obj, "raw");
    assert!(s.s3.download(&key("b_key")).is_some(), "{r}");
    assert!(
        !s.s3.files().iter().any(|f| f.starts_with("team-a/b/")),
        "nothing of B's in A's bucket: {:?}",
        s.s3.files()
    );
    // C's object is in C's storage, written with C's keys; none in the service's.
    assert_eq!(r["c_status"], "completed", "{r}");
    let c_obj = s.dir.join("account-c.raw");
    std::fs::write(&c_obj, own.download(&key("c_key")).expect("C's object")).expect("write");
    s.same(&c_obj, "raw");
    assert!(s.s3.download(&key("c_key")).is_none(), "{r}");
    // The store recorded each task's account.
    let store = s.store();
    assert_eq!(
        store.get(task_a).map(|j| j.account).ok().as_deref(),
        Some(A)
    );
    // An audit line per state change of A's task: account, caller's key id, request id, job.
    let audit: Vec<Value> = served
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "audit" && l["fields"]["job"] == task_a)
        .map(|l| l["fields"].clone())
        .collect();
    let events: Vec<&str> = audit.iter().filter_map(|f| f["event"].as_str()).collect();
    assert_eq!(events, ["submitted", "started", "completed"], "{audit:?}");
    for f in &audit {
        assert_eq!(f["account"], A, "{f}");
        assert_eq!(f["caller_key"], "AKIDACCOUNTA", "{f}");
        assert!(
            f["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{f}"
        );
    }
}

/// Accounts with the OCI SDK (two tenancies, two signing keys) and Huawei's SDKs (two AK/SK
/// pairs): the other account's work requests, jobs, private images and volumes answer as ids
/// that do not exist; images shared with B export for B; B's export into A's bucket is refused
/// with the provider's access error and writes nothing; one retry token from each account
/// makes two work requests.
#[test]
fn oci_and_huawei_accounts_see_and_export_only_what_they_own_or_were_granted() {
    let s = setup("serve-accounts-oci-hw");
    s.s3.create_bucket("team-a");
    let key = |n: &str| -> String {
        let k = sdk(
            "oci_keys",
            &json!({ "private": s.dir.join(format!("{n}.pem")), "public": s.dir.join(format!("{n}_public.pem")) }),
        );
        k["fingerprint"].as_str().expect("fingerprint").to_string()
    };
    let (fp_a, fp_b) = (key("oci-a"), key("oci-b"));
    let d = s.dir.display();
    let (hw_a, hw_shared) = (
        "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
    );
    let volume_a = "7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e";
    let served = s.serve_edited("serve", &s.s3.endpoint(), |text| {
        let images = format!(
            "[images]\n\
             \"ocid1.image.oc1..privatea\" = {{ path = \"{d}/web.qcow2\", owner = \"tenancy-a\" }}\n\
             \"ocid1.image.oc1..shared\" = {{ path = \"{d}/web.qcow2\", owner = \"tenancy-a\", shared_with = [\"tenancy-b\"] }}\n\
             \"{hw_a}\" = {{ path = \"{d}/web.qcow2\", owner = \"project-a\" }}\n\
             \"{hw_shared}\" = {{ path = \"{d}/web.qcow2\", owner = \"project-a\", shared_with = [\"project-b\"] }}\n"
        );
        let volumes =
            format!("[volumes]\n\"{volume_a}\" = {{ path = \"{d}/src.raw\", owner = \"project-a\" }}\n");
        let mut t = text
            .replacen("[images]\n", &images, 1)
            .replacen("[volumes]\n", &volumes, 1);
        t.push_str(&format!(
            r#"
[[callers]]
api = "oci"
account = "tenancy-a"
key_id = "ocid1.tenancy.oc1..a/{USER}/{fp_a}"
public_key_file = "oci-a_public.pem"

[[callers]]
api = "oci"
account = "tenancy-b"
key_id = "ocid1.tenancy.oc1..b/{USER}/{fp_b}"
public_key_file = "oci-b_public.pem"

[[callers]]
api = "huawei"
account = "project-a"
access_key = "HWAKACCOUNTA000000000"
secret_key = "hw-secret-of-account-a"

[[callers]]
api = "huawei"
account = "project-b"
access_key = "HWAKACCOUNTB000000000"
secret_key = "hw-secret-of-account-b"

[[accounts]]
id = "tenancy-a"
buckets = ["team-a"]

[[accounts]]
id = "tenancy-b"
buckets = ["exports/b/"]

[[accounts]]
id = "project-a"
buckets = ["team-a"]

[[accounts]]
id = "project-b"
buckets = ["exports/b/"]
"#
        ));
        t
    });
    let r = sdk(
        "oci_accounts",
        &s.args(
            &served,
            json!({
                "tenancy": "ocid1.tenancy.oc1..a", "fingerprint": fp_a,
                "key_file": s.dir.join("oci-a.pem"),
                "tenancy_b": "ocid1.tenancy.oc1..b", "fingerprint_b": fp_b,
                "key_file_b": s.dir.join("oci-b.pem"),
                "bucket_a": "team-a", "image_a": "ocid1.image.oc1..privatea",
                "image_shared": "ocid1.image.oc1..shared",
                "compartment": "ocid1.compartment.oc1..example",
            }),
        ),
    );
    // ListWorkRequests: A's two exports, B's one; by resource, the shared image's export is
    // B's alone.
    let (wa, wb) = (&r["wa"], &r["wb"]);
    assert_eq!(r["a_lists"].as_array().map(Vec::len), Some(2), "{r}");
    assert!(
        r["a_lists"]
            .as_array()
            .is_some_and(|l| l.contains(wa) && !l.contains(wb)),
        "{r}"
    );
    assert_eq!(r["b_lists"], json!([wb]), "{r}");
    assert_eq!(r["a_lists_shared"], json!([]), "{r}");
    assert_eq!(r["b_lists_shared"], json!([wb]), "{r}");
    assert_eq!(
        r["b_gets_a_work_request"], r["b_gets_unknown_work_request"],
        "{r}"
    );
    assert_eq!(
        r["b_gets_a_work_request"],
        json!([404, "NotAuthorizedOrNotFound"]),
        "{r}"
    );
    assert_eq!(r["b_gets_a_image"], r["b_gets_unknown_image"], "{r}");
    assert_eq!(r["b_exports_a_image"], r["b_exports_unknown_image"], "{r}");
    assert_eq!(
        r["b_exports_a_image"],
        json!([404, "NotAuthorizedOrNotFound"]),
        "{r}"
    );
    assert_eq!(
        r["b_into_a_bucket"],
        json!([404, "NotAuthorizedOrNotFound"]),
        "{r}"
    );
    assert_eq!(r["two_work_requests"], true, "{r}");
    assert_eq!(r["a_status"], "SUCCEEDED", "{r}");
    assert_eq!(r["b_status"], "SUCCEEDED", "{r}");
    assert!(s.s3.download_from("team-a", "a/a.qcow2").is_some());
    assert!(s.s3.download("b/b.qcow2").is_some());
    let h = sdk(
        "huawei_accounts",
        &s.args(
            &served,
            json!({
                "ak": "HWAKACCOUNTA000000000", "sk": "hw-secret-of-account-a",
                "ak_b": "HWAKACCOUNTB000000000", "sk_b": "hw-secret-of-account-b",
                "bucket_a": "team-a", "image_a": hw_a, "image_shared": hw_shared,
                "volume_a": volume_a,
            }),
        ),
    );
    assert_eq!(h["b_shows_a_job"], h["b_shows_unknown_job"], "{h}");
    assert_eq!(h["b_shows_a_job"][0], 404, "{h}");
    assert_eq!(h["b_exports_a_image"], h["b_exports_unknown_image"], "{h}");
    assert_eq!(h["b_exports_a_image"][0], 404, "{h}");
    assert_eq!(h["b_into_a_bucket"], json!([403, "IMG.0003"]), "{h}");
    assert_eq!(
        h["b_uploads_a_volume"], h["b_uploads_unknown_volume"],
        "{h}"
    );
    assert_eq!(h["b_uploads_a_volume"][0], 404, "{h}");
    let lists = |k: &str| h[k].as_array().cloned().unwrap_or_default();
    assert!(lists("a_lists").contains(&json!(hw_a)), "{h}");
    assert!(!lists("b_lists").contains(&json!(hw_a)), "{h}");
    assert!(lists("b_lists").contains(&json!(hw_shared)), "{h}");
    assert_eq!(h["a_status"], "SUCCESS", "{h}");
    assert_eq!(h["b_status"], "SUCCESS", "{h}");
    assert!(s.s3.download_from("team-a", "a/hw-a.qcow2").is_some());
    assert!(s.s3.download("b/hw-b.qcow2").is_some());
    assert!(
        !s.s3.files().iter().any(|f| f.starts_with("team-a/b/")),
        "nothing of B's in A's bucket: {:?}",
        s.s3.files()
    );
}

/// Two ZStack accounts: B's poll of A's job is answered as an unknown job's; B naming its
/// job as A did (X-Job-UUID) gets a job of its own; the published files' names cannot be
/// guessed from the image and format.
#[test]
fn zstack_accounts_poll_only_their_own_jobs() {
    let s = setup("serve-zstack-accounts");
    let d = s.dir.display();
    let served = s.serve_edited("serve", &s.s3.endpoint(), |t| {
        let private = format!(
            "[images]\n\"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1\" = {{ path = \"{d}/web.qcow2\", owner = \"admin\" }}\n"
        );
        let mut t = t.replacen("[images]\n", &private, 1);
        t.push_str(&format!(
            "\n[[callers]]\napi = \"zstack\"\naccount = \"tenant-b\"\npassword_sha512 = \"{}\"\n",
            sha512_hex("password-b")
        ));
        t
    });
    let r = sdk(
        "zstack_accounts",
        &s.args(
            &served,
            json!({
                "image": AMI, "account_b": "tenant-b", "password_b": "password-b",
                "image_private": "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
            }),
        ),
    );
    assert_eq!(r["b_polls_a"], r["b_polls_unknown"], "{r}");
    assert_eq!(r["b_polls_a"], 404, "{r}");
    assert_eq!(r["b_exports_a_image"], r["b_exports_unknown_image"], "{r}");
    assert_eq!(r["b_exports_a_image"][0], 404, "{r}");
    assert_eq!(r["b_same_name"], 202, "{r}");
    assert_eq!(r["a"][0], 200, "{r}");
    assert_eq!(r["b"][0], 200, "{r}");
    let (a_url, b_url) = (
        r["a"][1].as_str().unwrap_or(""),
        r["b"][1].as_str().unwrap_or(""),
    );
    assert_ne!(a_url, b_url, "{r}");
    for url in [a_url, b_url] {
        let name = url.rsplit('/').next().unwrap_or("");
        assert!(
            name.starts_with(AMI) && name.len() > AMI.len() + 30,
            "{url}"
        );
    }
}

#[test]
fn boto3_exports_an_instance_as_an_ova_that_reads_back() {
    let s = setup("serve-aws-instance");
    let served = s.serve(&s.s3.endpoint());
    let out = s.dir.join("instance.ova");
    let r = sdk(
        "aws_instance_export",
        &s.args(&served, json!({ "instance": INSTANCE, "out": out })),
    );
    assert_eq!(r["refused"], "InvalidParameterValue", "{r}");
    assert_eq!(r["unknown"], "InvalidInstanceID.NotFound", "{r}");
    let task = r["task"].as_str().expect("task id");
    let x = s.dir.join("instance");
    std::fs::create_dir_all(&x).expect("folder");
    let list = ok(Command::new("tar").current_dir(&x).arg("-tf").arg(&out));
    assert_eq!(
        list,
        format!("{task}.ovf\n{task}.mf\n{task}-disk1.vmdk\n"),
        "the OVA's members, named after the task"
    );
    ok(Command::new("tar").current_dir(&x).arg("-xf").arg(&out));
    let mf = std::fs::read_to_string(x.join(format!("{task}.mf"))).expect("manifest");
    assert!(
        mf.contains(&sha256sum(&x.join(format!("{task}-disk1.vmdk")))),
        "{mf}"
    );
    s.same(&x.join(format!("{task}-disk1.vmdk")), "vmdk");
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
}

#[test]
fn boto3_cancels_an_active_task_leaving_no_object_and_no_upload() {
    let s = setup("serve-aws-cancel");
    let before = s.s3.files();
    // The storage holds part 2 for a long while: the export stays active.
    let (proxy, served, id) = stalled_export(&s, 3, Duration::from_secs(20));
    proxy.wait_for("partNumber=2");
    let r = sdk("aws_cancel", &s.args(&served, json!({ "task": id })));
    assert_eq!(r["before"], "active", "{r}");
    assert_eq!(r["status"], "deleted", "{r}");
    // The abort reaches the storage once the stalled request has ended.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !proxy.records().iter().any(|r| r.method == "DELETE") {
        assert!(
            Instant::now() < deadline,
            "the multipart upload was not aborted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while proxy.in_progress() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> =
        s.s3.files()
            .into_iter()
            .filter(|f| !before.contains(f) && !f.contains(".tmp."))
            .collect();
    assert!(left.is_empty(), "no object, no upload: {left:?}");
}

#[test]
fn oci_sdk_exports_by_tuple_and_uri_with_etags_and_retry_tokens() {
    let s = setup("serve-oci");
    let served = s.serve(&s.s3.endpoint());
    let out = s.dir.join("oci.out");
    let r = sdk(
        "oci_export",
        &s.args(&served, json!({ "image": OCI_IMAGE, "out": out })),
    );
    assert_eq!(r["tuple"]["status"], "SUCCEEDED", "{r}");
    assert_eq!(r["uri"]["status"], "SUCCEEDED", "{r}");
    s.same(&s.dir.join("oci.out.tuple"), "qcow2");
    s.same(&s.dir.join("oci.out.uri"), "vmdk");
    assert_eq!(r["image_state"], "AVAILABLE", "{r}");
    assert_eq!(r["if_match"], json!([412, "NoEtagMatch"]), "{r}");
    // GetImage answers the etag that ExportImage's if-match accepts.
    assert!(r["etag"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_eq!(r["if_match_etag"], "SUCCEEDED", "{r}");
    assert_eq!(r["retry_same"], true, "{r}");
    assert_eq!(
        r["retry_conflict"],
        json!([409, "InvalidatedRetryToken"]),
        "{r}"
    );
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
}

#[test]
fn huawei_sdks_export_an_image_and_a_volume_made_into_one() {
    let s = setup("serve-huawei");
    let served = s.serve(&s.s3.endpoint());
    let out = s.dir.join("hw.out");
    let r = sdk(
        "huawei_export",
        &s.args(&served, json!({ "image": HW_IMAGE, "out": out })),
    );
    s.same(&s.dir.join("hw.out.ims"), "qcow2");
    s.same(&s.dir.join("hw.out.evs"), "vpc");
    let states = r["states"].as_array().expect("states");
    assert!(states.contains(&json!("active")), "{r}");
    // The new image lives in the image store, as qcow2.
    let made = s
        .dir
        .join("uploaded")
        .join(format!("{}.qcow2", r["new_image"].as_str().expect("id")));
    s.same(&made, "qcow2");
}

#[test]
fn zstack_exports_into_the_published_folder_and_failures_poll_as_503() {
    let s = setup("serve-zstack");
    let served = s.serve(&s.s3.endpoint());
    let out = s.dir.join("zs.qcow2");
    let r = sdk(
        "zstack_export",
        &s.args(&served, json!({ "image": HW_IMAGE, "out": out })),
    );
    assert_eq!(r["ok"]["status"], 200, "{r}");
    let url = r["ok"]["body"]["imageUrl"].as_str().expect("imageUrl");
    assert!(
        url.starts_with(&format!("{}/export/", served.url())),
        "{url}"
    );
    assert_eq!(r["md5_matches"], true, "{r}");
    s.same(&out, "qcow2");
    assert_eq!(r["range"][0], 206, "{r}");
    assert_eq!(r["range"][1], true, "{r}");
    assert_eq!(r["head"], json!([200, true]), "{r}");
    assert_eq!(r["broken"]["status"], 503, "{r}");
    assert!(
        r["broken"]["body"]["error"]["details"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{r}"
    );
}

#[test]
fn bad_signatures_get_each_providers_authentication_error_and_queue_nothing() {
    let s = setup("serve-auth");
    let served = s.serve(&s.s3.endpoint());
    let a = s.args(&served, json!({ "image": AMI }));
    let aws = sdk("aws_auth", &a);
    assert_eq!(
        aws["wrong_secret"],
        json!([403, "SignatureDoesNotMatch"]),
        "{aws}"
    );
    assert_eq!(
        aws["tampered"],
        json!([403, "SignatureDoesNotMatch"]),
        "{aws}"
    );
    assert_eq!(aws["stale"], json!([400, "RequestExpired"]), "{aws}");
    let oci = sdk("oci_auth", &s.args(&served, json!({ "image": OCI_IMAGE })));
    for case in ["wrong_key", "tampered", "stale"] {
        assert_eq!(oci[case], json!([401, "NotAuthenticated"]), "{case}: {oci}");
    }
    let hw = sdk(
        "huawei_auth",
        &s.args(&served, json!({ "image": HW_IMAGE })),
    );
    for case in ["wrong_secret", "tampered", "stale"] {
        assert_eq!(hw[case], json!([401, "APIGW.0301"]), "{case}: {hw}");
    }
    let zs = sdk(
        "zstack_auth",
        &s.args(&served, json!({ "image": HW_IMAGE })),
    );
    for case in ["wrong_password", "no_session", "unknown_session"] {
        assert_eq!(zs[case], json!([401, "ID.1001"]), "{case}: {zs}");
    }
    let store = s.store();
    for p in ["aws", "oci", "huawei-ims", "huawei-evs", "zstack"] {
        assert!(
            store
                .list(p, imgconv_export::jobs::DEFAULT_ACCOUNT)
                .expect("list")
                .is_empty(),
            "{p} has jobs"
        );
    }
}

#[test]
fn hostile_requests_get_errors_in_each_providers_shape_and_the_server_lives() {
    let s = setup("serve-hostile");
    let served = s.serve(&s.s3.endpoint());
    let big = "x".repeat(2 << 20);
    let post = |path: &str, ctype: &str, body: &str, extra: &str| -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let get = |path: &str, extra: &str| -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n")
            .into_bytes()
    };
    let put = |path: &str, body: &str, extra: &str| -> Vec<u8> {
        format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let form = "application/x-www-form-urlencoded";
    let aws_auth = "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\r\nX-Amz-Date: 20260101T000000Z\r\n";
    let oci_auth = "Authorization: Signature keyId=\"a/b/c\",signature=\"AAAA\",headers=\"date (request-target) host\"\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n";
    let hw_auth = "Authorization: SDK-HMAC-SHA256 Access=HWAKEXAMPLE0123456789, SignedHeaders=host;x-sdk-date, Signature=00\r\nX-Sdk-Date: 20260101T000000Z\r\n";
    let zs_auth = "Authorization: OAuth 00000000000000000000000000000000\r\n";
    // (name, request, provider: how its errors look)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("aws no auth", post("/", form, "Action=ExportImage&Version=2016-11-15", ""), "aws"),
        ("aws bad signature", post("/", form, "Action=ExportImage", aws_auth), "aws"),
        ("aws garbage auth", post("/", form, "Action=ExportImage", "Authorization: AWS4-HMAC-SHA256 Credential=/,,=,\r\n"), "aws"),
        ("aws unknown action", post("/", form, "Action=Nope", aws_auth), "aws"),
        ("aws bad form", post("/", form, "%%%&&&==%ZZ", aws_auth), "aws"),
        ("aws not utf-8", post("/", form, "Action=\u{fffd}", aws_auth), "aws"),
        ("aws oversized", post("/", form, &big, ""), "aws"),
        ("aws truncated", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nConnection: close\r\n\r\nAction=Export".to_vec(), "aws"),
        ("oci no auth", post("/20160918/images/x/actions/export", "application/json", "{}", ""), "oci"),
        ("oci bad auth", post("/20160918/images/x/actions/export", "application/json", "{}", oci_auth), "oci"),
        ("oci malformed sig", post("/20160918/images/x/actions/export", "application/json", "{}", "Authorization: Signature keyId=\"unterminated\r\n"), "oci"),
        ("oci dotdot", get("/20160918/images/..%2F..%2Fetc%2Fpasswd", oci_auth), "oci"),
        ("oci nul", get("/20160918/workRequests/a%00b", oci_auth), "oci"),
        ("oci bad json", post("/20160918/images/x/actions/export", "application/json", "{\"destinationType\":", oci_auth), "oci"),
        ("oci oversized", post("/20160918/images/x/actions/export", "application/json", &big, ""), "oci"),
        ("oci unknown path", get("/20160918/nothing/here", ""), "oci"),
        ("huawei no auth", post("/v1/cloudimages/x/file", "application/json", "{}", ""), "huawei"),
        ("huawei bad auth", post("/v1/cloudimages/x/file", "application/json", "{}", hw_auth), "huawei"),
        ("huawei dotdot", get(&format!("/v1/{PROJECT}/jobs/..%2F..%2Fjobs.sqlite"), hw_auth), "huawei"),
        ("huawei nul", get("/v1/cloudimages/job/%00", hw_auth), "huawei"),
        ("huawei bad json", post("/v1/cloudimages/x/file", "application/json", "[1,2", hw_auth), "huawei"),
        ("huawei oversized", post(&format!("/v2/{PROJECT}/volumes/v/action"), "application/json", &big, ""), "huawei"),
        ("zstack bad login json", put("/zstack/v1/accounts/login", "{\"logInByAccount\":", ""), "zstack"),
        ("zstack login missing fields", put("/zstack/v1/accounts/login", "{\"logInByAccount\":{}}", ""), "zstack"),
        ("zstack login not an object", put("/zstack/v1/accounts/login", "42", ""), "zstack"),
        ("zstack no session", put(&format!("/zstack/v1/backup-storage/{BACKUP_STORAGE}/actions"), "{}", ""), "zstack"),
        ("zstack bad session", put(&format!("/zstack/v1/backup-storage/{BACKUP_STORAGE}/actions"), "{}", zs_auth), "zstack"),
        ("zstack dotdot job", get("/zstack/v1/api-jobs/..%2F..", zs_auth), "zstack"),
        ("zstack oversized", put("/zstack/v1/accounts/login", &big, ""), "zstack"),
        ("zstack unknown", get("/zstack/v1/nothing", ""), "zstack"),
        ("export dotdot", get("/export/..%2Fjobs.sqlite", ""), "files"),
        ("export traversal", get("/export/../serve.toml", ""), "files"),
    ];
    assert!(cases.len() >= 30);
    for (name, req, provider) in &cases {
        let Some((status, body)) = raw(served.port, req) else {
            panic!("{name}: no answer");
        };
        assert!((400..500).contains(&status), "{name}: {status} {body}");
        let shaped = match *provider {
            "aws" => {
                body.contains("<Response><Errors><Error><Code>") && body.contains("<RequestID>")
            }
            "oci" => serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v["code"].is_string() && v["message"].is_string()),
            "huawei" => serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v["error"]["code"].is_string() || v["error_code"].is_string()),
            "zstack" => {
                serde_json::from_str::<Value>(&body).is_ok_and(|v| v["error"]["code"].is_string())
            }
            _ => !body.contains("listen") && !body.contains("SQLite"),
        };
        assert!(
            shaped,
            "{name}: not in the provider's error shape: {status} {body}"
        );
    }
    // A client that sends half a request and waits is cut off; others are still served.
    let mut slow = TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .expect("half a head");
    assert_eq!(
        raw(
            served.port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .map(|r| r.0),
        Some(200)
    );
    let store = s.store();
    for p in ["aws", "oci", "huawei-ims", "huawei-evs", "zstack"] {
        assert!(
            store
                .list(p, imgconv_export::jobs::DEFAULT_ACCOUNT)
                .expect("list")
                .is_empty(),
            "{p} has jobs"
        );
    }
}

/// Submit a VMDK export of the big image through boto3 without waiting; its task id.
fn submit_big(s: &Setup, served: &Served) -> String {
    let code = r#"
import sys, json
sys.path.insert(0, sys.argv[2])
import clients
a = json.loads(sys.argv[1])
r = clients.ec2_client(a).export_image(DiskImageFormat="VMDK", ImageId="big",
    S3ExportLocation={"S3Bucket": "exports", "S3Prefix": "crash/"})
print(r["ExportImageTaskId"])
"#;
    let out = Command::new(python())
        .args(["-c", code])
        .arg(s.args(served, json!({})).to_string())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Wait until the job is active (converting).
fn wait_active(s: &Setup, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if s.store().get(id).is_ok_and(|j| j.state == JobState::Active) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("job {id} never started");
}

fn wait_completed(s: &Setup, served: &Served, id: &str) -> String {
    let r = sdk("aws_wait_completed", &s.args(served, json!({ "task": id })));
    r["status"].as_str().expect("status").to_string()
}

/// A 24 MiB image of noise as image `big`, storage behind a proxy that holds the first part 2
/// for `stall`, the service started on it, and a VMDK export of `big` under way.
fn stalled_export(s: &Setup, seed: u64, stall: Duration) -> (FaultProxy, Served, String) {
    std::fs::write(s.dir.join("big.raw"), noise(seed, 24 * MIB as usize)).expect("big image");
    let proxy = FaultProxy::start(
        s.s3.port(),
        vec![Rule::first(
            "PUT",
            "partNumber=2",
            vec![Fault::Stall(stall)],
        )],
    );
    let served = s.serve(&proxy.endpoint());
    let id = submit_big(s, &served);
    wait_active(s, &id);
    (proxy, served, id)
}

/// Wait until the proxy has no request under way (30 s at most).
fn drained(proxy: &FaultProxy) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.in_progress() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The object of export `id` reads back as the big image.
fn same_as_big(s: &Setup, id: &str) {
    let out = s.dir.join(format!("{id}.vmdk"));
    let object =
        s.s3.download(&format!("crash/{id}.vmdk"))
            .expect("the object");
    std::fs::write(&out, object).expect("write");
    assert_eq!(
        qemu_compare_formats(&s.dir.join("big.raw"), "raw", &out, "vmdk"),
        0
    );
}

/// `SIGHUP` with a new caller key in the file: the key works at once (it was refused
/// before); an export under way (its upload held up by the storage) is not interrupted and
/// completes in its first attempt; pollers that run through the reload all get answers.
#[test]
fn sighup_puts_a_new_key_in_force_without_dropping_a_request_or_an_export() {
    let s = setup("serve-sighup");
    let (_proxy, served, id) = stalled_export(&s, 23, Duration::from_secs(3));
    let new_key = json!({ "key": "AKIDADDEDBYRELOAD", "secret": "secret-added-by-reload" });
    let export_with_new_key = || {
        let mut args = s.args(&served, json!({ "image": AMI, "prefix": "reload/" }));
        if let (Some(a), Some(k)) = (args.as_object_mut(), new_key.as_object()) {
            a.extend(k.clone());
        }
        sdk("aws_export_or_error", &args)
    };
    assert_eq!(export_with_new_key()["error"], json!([401, "AuthFailure"]));
    let poll_args = s.args(&served, json!({ "clients": 4, "seconds": 3, "task": id }));
    let pollers = std::thread::spawn(move || sdk("poll_load", &poll_args));
    std::thread::sleep(Duration::from_millis(500));
    let mut text = std::fs::read_to_string(&served.config).expect("config");
    text.push_str(
        "\n[[callers]]\napi = \"aws\"\naccess_key_id = \"AKIDADDEDBYRELOAD\"\n\
         secret_access_key = \"secret-added-by-reload\"\n",
    );
    std::fs::write(&served.config, text).expect("config");
    served.nudge("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = export_with_new_key();
        if r.get("error").is_none() || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r["status"], "completed", "{r} {}", served.log());
    let load = pollers.join().expect("pollers");
    assert_eq!(load["failures"], 0, "{load}");
    assert!(load["requests"].as_u64().is_some_and(|n| n > 0), "{load}");
    assert_eq!(wait_completed(&s, &served, &id), "completed");
    let job = s.store().get(&id).expect("job");
    assert_eq!(job.attempts, 1, "the export was interrupted: {job:?}");
    assert!(
        served.log().contains("configuration reloaded"),
        "{}",
        served.log()
    );
}

#[test]
fn a_killed_server_runs_its_export_again_after_a_restart() {
    let s = setup("serve-kill");
    let (proxy, mut served, id) = stalled_export(&s, 5, Duration::from_secs(5));
    proxy.wait_for("partNumber=2");
    served.signal("-KILL");
    // The dead process's requests end at the storage (s3s-fs, unlike S3, takes parts of an
    // upload that was aborted, so one landing after the recovery's abort would stay).
    drained(&proxy);
    // Back, with the storage answering at once: the job is queued again and completes.
    let mut again = s.serve(&s.s3.endpoint());
    assert_eq!(wait_completed(&s, &again, &id), "completed");
    let job = s.store().get(&id).expect("job");
    assert_eq!(job.attempts, 2, "{job:?}");
    same_as_big(&s, &id);
    // The first attempt's upload was aborted; none is left.
    drained(&proxy);
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
    assert_eq!(again.signal("-TERM").code(), Some(0));
}

/// The part numbers of the parts a proxy saw stored (PUT answered 200).
fn stored_parts(proxy: &FaultProxy) -> std::collections::BTreeSet<u64> {
    proxy
        .records()
        .iter()
        .filter(|r| r.method == "PUT" && r.status == Some(200))
        .filter_map(|r| part_number(&r.target))
        .collect()
}

/// The `partNumber` of a request target.
fn part_number(target: &str) -> Option<u64> {
    let at = target.find("partNumber=")? + "partNumber=".len();
    let digits: String = target[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn a_killed_servers_export_resumes_its_upload_and_sends_only_the_missing_parts() {
    let s = setup("serve-resume");
    // 64 MiB of noise: a streamOptimized VMDK of 13 parts of 5 MiB.
    let big = s.dir.join("big.raw");
    std::fs::write(&big, noise(11, 64 * MIB as usize)).expect("big image");
    // Parts 7 to 10 are held (one for each uploader), so that exactly 6 are stored.
    let hold = |n: u32| {
        Rule::first(
            "PUT",
            &format!("partNumber={n}&"),
            vec![Fault::Stall(Duration::from_secs(6))],
        )
    };
    let proxy = FaultProxy::start(s.s3.port(), (7..=10).map(hold).collect());
    let mut served = s.serve(&proxy.endpoint());
    let id = submit_big(&s, &served);
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_parts(&proxy).len() < 6
        || !proxy
            .records()
            .iter()
            .any(|r| r.target.contains("partNumber=10&"))
    {
        assert!(Instant::now() < deadline, "{:?}", proxy.records().len());
        std::thread::sleep(Duration::from_millis(50));
    }
    served.signal("-KILL");
    drained(&proxy);
    let held = stored_parts(&proxy);
    assert_eq!(held, (1..=6).collect(), "stored before the kill");

    // Started again: the job names its storage by the proxy's address, which counts what the
    // second attempt sends (the held parts now go through).
    let before = proxy.records().len();
    let mut again = s.serve(&proxy.endpoint());
    assert_eq!(wait_completed(&s, &again, &id), "completed");
    let object =
        s.s3.download(&format!("crash/{id}.vmdk"))
            .expect("the object");
    let parts = (object.len() as u64).div_ceil(5 * MIB);
    assert!(parts >= 10, "{parts} parts");
    let records = proxy.records()[before..].to_vec();
    let sent: Vec<u64> = records
        .iter()
        .filter(|r| r.method == "PUT")
        .filter_map(|r| part_number(&r.target))
        .collect();
    let missing: Vec<u64> = (7..=parts).collect();
    let mut sorted = sent.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, missing,
        "only the missing parts are sent, once each"
    );
    assert!(
        records
            .iter()
            .any(|r| r.method == "GET" && r.target.contains("uploadId=")),
        "the upload's parts are listed"
    );
    assert!(
        !records
            .iter()
            .any(|r| r.method == "POST" && r.target.contains("uploads")),
        "no new upload is started"
    );
    let job = s.store().get(&id).expect("job");
    assert_eq!(job.attempts, 2, "{job:?}");
    same_as_big(&s, &id);

    // The object and its digests are those of an uninterrupted export: a conversion dated at
    // the job's creation.
    let plain = s.dir.join("uninterrupted");
    std::fs::create_dir_all(&plain).expect("folder");
    let local = plain.join("disk.vmdk");
    ok(imgconv()
        .env("SOURCE_DATE_EPOCH", job.created.to_string())
        .args(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized"])
        .arg(&big)
        .arg(&local));
    let copy = s.dir.join("object.vmdk");
    std::fs::write(&copy, &object).expect("write");
    let result = job.result.expect("result");
    assert_eq!(sha256sum(&copy), sha256sum(&local));
    assert_eq!(result.sha256, sha256sum(&local));
    assert_eq!(result.md5, md5sum(&local));
    drained(&proxy);
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
    assert_eq!(again.signal("-TERM").code(), Some(0));
}

#[test]
fn an_export_that_fails_past_its_retries_runs_again_after_the_delay_and_resumes_its_upload() {
    let s = setup("serve-retry-resume");
    let big = s.dir.join("big.raw");
    std::fs::write(&big, noise(12, 64 * MIB as usize)).expect("big image");
    // Part 8 fails more often than a part is retried (1 + 5 attempts): the first attempt of
    // the job fails with a network error; the storage then answers again.
    let proxy = FaultProxy::start(
        s.s3.port(),
        vec![Rule::first(
            "PUT",
            "partNumber=8&",
            vec![Fault::Status(503); 6],
        )],
    );
    let mut served = s.serve_named("serve", &proxy.endpoint(), "retry_delay_secs = 3\n");
    let id = submit_big(&s, &served);
    assert_eq!(wait_completed(&s, &served, &id), "completed");
    let job = s.store().get(&id).expect("job");
    assert_eq!(job.attempts, 2, "{job:?}");
    // What each attempt sent: the second sent only what the first had not stored.
    let records = proxy.records();
    let first_end = records
        .iter()
        .rposition(|r| r.target.contains("partNumber=8&") && r.fault.is_some())
        .expect("part 8 failed");
    let stored_first: std::collections::BTreeSet<u64> = records[..first_end]
        .iter()
        .filter(|r| r.method == "PUT" && r.status == Some(200))
        .filter_map(|r| part_number(&r.target))
        .collect();
    let object =
        s.s3.download(&format!("crash/{id}.vmdk"))
            .expect("the object");
    let parts = (object.len() as u64).div_ceil(5 * MIB);
    let listed = records
        .iter()
        .position(|r| r.method == "GET" && r.target.contains("uploadId="))
        .expect("the second attempt lists the upload's parts");
    let mut sent: Vec<u64> = records[listed..]
        .iter()
        .filter(|r| r.method == "PUT")
        .filter_map(|r| part_number(&r.target))
        .collect();
    sent.sort_unstable();
    let missing: Vec<u64> = (1..=parts).filter(|n| !stored_first.contains(n)).collect();
    assert!(!stored_first.is_empty(), "the first attempt stored parts");
    // The second attempt waited the retry delay after the first one's last failure.
    let waited = records[listed].at.duration_since(records[first_end].at);
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert_eq!(
        sent, missing,
        "only the parts the first attempt did not store"
    );
    same_as_big(&s, &id);
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
    assert_eq!(served.signal("-TERM").code(), Some(0));
}

#[test]
fn sigterm_requeues_the_running_export_exits_0_and_the_next_start_finishes_it() {
    let s = setup("serve-term");
    let (_proxy, mut served, id) = stalled_export(&s, 7, Duration::from_secs(4));
    let t = Instant::now();
    assert_eq!(served.signal("-TERM").code(), Some(0), "{}", served.log());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let job = s.store().get(&id).expect("job");
    assert_eq!(job.state, JobState::Queued, "{job:?}");
    let again = s.serve(&s.s3.endpoint());
    assert_eq!(wait_completed(&s, &again, &id), "completed");
    same_as_big(&s, &id);
}

#[test]
fn health_metrics_and_a_json_log_line_per_request() {
    let s = setup("serve-ops");
    let mut served = s.serve(&s.s3.endpoint());
    let out = s.dir.join("ops.raw");
    sdk(
        "aws_export",
        &s.args(
            &served,
            json!({ "format": "RAW", "image": AMI, "out": out }),
        ),
    );
    let (status, metrics) = raw(
        served.port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("metrics");
    assert_eq!(status, 200);
    for needle in [
        "imgconv_jobs{provider=\"aws\",state=\"completed\"} 1",
        "imgconv_http_requests_total{provider=\"aws\",status=\"200\"}",
        "imgconv_export_duration_seconds_count 1",
        "imgconv_exported_bytes_total ",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
    assert_eq!(served.signal("-TERM").code(), Some(0));
    let log = served.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request")
        .collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["fields"]["request_id"].is_string() && l["fields"]["status"].is_number()),
        "{log}"
    );
}

#[test]
fn with_a_certificate_and_key_the_service_speaks_https() {
    let s = setup("serve-tls");
    let made = tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            path_str(&s.dir.join("key.pem")),
            "-out",
            path_str(&s.dir.join("cert.pem")),
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let port = free_port();
    let config = s.dir.join("serve.toml");
    let text = s.config(port, &s.s3.endpoint()).replace(
        "public_url = \"http://",
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\npublic_url = \"https://",
    );
    std::fs::write(&config, text).expect("config");
    let mut served = Served {
        child: Some(
            imgconv()
                .args(["serve", "--config"])
                .arg(&config)
                .stderr(Stdio::null())
                .spawn()
                .expect("serve"),
        ),
        port,
        config,
        dir: s.dir.clone(),
    };
    let cert = s.dir.join("cert.pem");
    let url = format!("https://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tool("curl", &["-s", "--cacert", path_str(&cert), &url]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
            break;
        }
        assert!(Instant::now() < deadline, "no HTTPS answer: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plain HTTP on the same port gets no answer of the API.
    let plain = raw(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        plain.as_ref().is_none_or(|(status, _)| *status != 200),
        "{plain:?}"
    );
    assert_eq!(served.signal("-TERM").code(), Some(0));
}

#[test]
fn zstack_sessions_expire() {
    let s = setup("serve-zstack-expiry");
    let port = free_port();
    let config = s.dir.join("serve.toml");
    let text = s.config(port, &s.s3.endpoint()).replace(
        "publish_dir = \"export\"",
        "publish_dir = \"export\"\nsession_timeout_secs = 1",
    );
    std::fs::write(&config, text).expect("config");
    let mut served = Served {
        child: None,
        port,
        config,
        dir: s.dir.clone(),
    };
    served.start();
    let r = sdk(
        "zstack_expiry",
        &s.args(&served, json!({ "image": HW_IMAGE })),
    );
    assert_eq!(r["fresh"], 202, "{r}");
    assert_eq!(r["expired"], json!([401, "ID.1001"]), "{r}");
}

/// Two instances on one job store, the storage behind a proxy that holds the first part 2 for
/// `stall`; the export of `big` under way, and which instance runs it.
fn fleet(s: &Setup, stall: Duration) -> (FaultProxy, Served, Served, String, bool) {
    std::fs::write(s.dir.join("big.raw"), noise(11, 24 * MIB as usize)).expect("big image");
    let proxy = FaultProxy::start(
        s.s3.port(),
        vec![Rule::first(
            "PUT",
            "partNumber=2",
            vec![Fault::Stall(stall)],
        )],
    );
    let a = s.serve_named("a", &proxy.endpoint(), "lease_secs = 3\n");
    let b = s.serve_named("b", &proxy.endpoint(), "lease_secs = 3\n");
    let id = submit_big(s, &a);
    wait_active(s, &id);
    proxy.wait_for("partNumber=2");
    let runner = s.store().get(&id).expect("job").runner_pid;
    let a_runs = runner == Some(a.pid());
    assert!(a_runs || runner == Some(b.pid()), "{runner:?}");
    (proxy, a, b, id, a_runs)
}

#[test]
fn a_stalled_instance_is_fenced_and_another_takes_over_its_export() {
    stalled_instance_fenced(Backend::Sqlite);
}

#[test]
fn on_postgres_a_stalled_instance_is_fenced_and_another_takes_over_its_export() {
    stalled_instance_fenced(Backend::Postgres);
}

fn stalled_instance_fenced(backend: Backend) {
    let s = setup_on(&format!("serve-fence-{backend:?}"), backend);
    let (proxy, a, b, id, a_runs) = fleet(&s, Duration::from_secs(8));
    let (stalled, other) = if a_runs { (&a, &b) } else { (&b, &a) };
    // Stopped past its lease: the other instance takes the job back and completes it.
    stalled.nudge("-STOP");
    assert_eq!(wait_completed(&s, other, &id), "completed");
    stalled.nudge("-CONT");
    // The resumed instance finds its lease gone: it stops, publishes nothing, writes nothing.
    std::thread::sleep(Duration::from_secs(3));
    drained(&proxy);
    let job = s.store().get(&id).expect("job");
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Completed, 2),
        "{job:?}"
    );
    published_once(&s, &id, &proxy);
}

/// The export's object is the big image's, it was completed (published) once through the
/// proxy, and no multipart upload is left behind.
fn published_once(s: &Setup, id: &str, proxy: &FaultProxy) {
    same_as_big(s, id);
    let completions = proxy
        .records()
        .iter()
        .filter(|r| r.method == "POST" && r.target.contains("uploadId="))
        .count();
    assert_eq!(completions, 1, "the object was published once");
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
}

#[test]
fn a_killed_instances_export_completes_on_another_after_the_lease() {
    killed_instance_taken_over(Backend::Sqlite);
}

#[test]
fn on_postgres_a_killed_instances_export_completes_on_another_after_the_lease() {
    killed_instance_taken_over(Backend::Postgres);
}

fn killed_instance_taken_over(backend: Backend) {
    let s = setup_on(&format!("serve-fleet-kill-{backend:?}"), backend);
    let (proxy, mut a, mut b, id, a_runs) = fleet(&s, Duration::from_secs(6));
    let (dead, alive) = if a_runs { (&mut a, &b) } else { (&mut b, &a) };
    dead.signal("-KILL");
    assert_eq!(wait_completed(&s, alive, &id), "completed");
    let job = s.store().get(&id).expect("job");
    assert_eq!(job.attempts, 2, "{job:?}");
    drained(&proxy);
    published_once(&s, &id, &proxy);
}

#[test]
fn a_cancel_reaches_the_instance_running_the_export_and_one_token_makes_one_job() {
    cancel_across_and_one_token(Backend::Sqlite);
}

#[test]
fn on_postgres_a_cancel_reaches_the_instance_running_the_export_and_one_token_makes_one_job() {
    cancel_across_and_one_token(Backend::Postgres);
}

fn cancel_across_and_one_token(backend: Backend) {
    let s = setup_on(&format!("serve-fleet-cancel-{backend:?}"), backend);
    let (_proxy, a, b, id, a_runs) = fleet(&s, Duration::from_secs(20));
    let other = if a_runs { &b } else { &a };
    let r = sdk("aws_cancel", &s.args(other, json!({ "task": id })));
    assert_eq!(r["status"], "deleted", "{r}");
    let r = sdk(
        "aws_same_token_concurrently",
        &s.args(&a, json!({ "image": AMI, "endpoints": [a.url(), b.url()] })),
    );
    assert_eq!(r["ids"][0], r["ids"][1], "{r}");
}

#[test]
fn zstack_sessions_are_known_to_every_instance_on_the_store() {
    zstack_sessions_shared(Backend::Sqlite);
}

#[test]
fn on_postgres_zstack_sessions_are_known_to_every_instance_on_the_store() {
    zstack_sessions_shared(Backend::Postgres);
}

fn zstack_sessions_shared(backend: Backend) {
    let s = setup_on(&format!("serve-zstack-fleet-{backend:?}"), backend);
    let a = s.serve_named("a", &s.s3.endpoint(), "");
    let b = s.serve_named("b", &s.s3.endpoint(), "");
    let out = s.dir.join("zs-fleet.raw");
    let r = sdk(
        "zstack_across",
        &s.args(
            &a,
            json!({ "image": HW_IMAGE, "out": out, "endpoints": [a.url(), b.url()] }),
        ),
    );
    assert_eq!(r["poll"], 200, "{r}");
    assert_eq!(r["download"], 200, "{r}");
    assert_eq!(r["md5_matches"], true, "{r}");
    assert_eq!(r["after_logout"], 401, "{r}");
    s.same(&out, "raw");
}

/// `imgconv images add` through one instance's configuration, then an export of that id
/// through another instance of a PostgreSQL fleet, with no restart; `list` shows it; `remove`
/// makes it not found everywhere; bad arguments get their exit codes.
#[test]
fn on_postgres_images_added_at_run_time_export_through_every_instance() {
    let s = setup_on("serve-pg-images", Backend::Postgres);
    let a = s.serve_named("a", &s.s3.endpoint(), "");
    let b = s.serve_named("b", &s.s3.endpoint(), "");
    let export = |via: &Served| {
        sdk(
            "aws_export_or_error",
            &s.args(
                via,
                json!({ "image": "ami-0added0at0run0time", "prefix": "added/" }),
            ),
        )
    };
    assert_eq!(
        export(&b)["error"],
        json!([400, "InvalidAMIID.NotFound"]),
        "not added yet"
    );
    let images = |args: &[&str]| {
        imgconv()
            .args(["images", "--config"])
            .arg(&a.config)
            .args(args)
            .output()
            .expect("imgconv images")
    };
    let web = s.dir.join("web.qcow2");
    let added = images(&["add", "ami-0added0at0run0time", web.to_str().expect("path")]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let listed = images(&["list", "--output", "json"]);
    let list: Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|i| i["id"] == "ami-0added0at0run0time"
                && i["path"] == json!(web.canonicalize().expect("canonical")))),
        "{list}"
    );
    let r = export(&b);
    assert_eq!(r["status"], "completed", "{r}");
    let out = s.dir.join("added.raw");
    std::fs::write(
        &out,
        s.s3.download(r["key"].as_str().expect("key"))
            .expect("object"),
    )
    .expect("write");
    s.same(&out, "raw");
    let removed = images(&["remove", "ami-0added0at0run0time"]);
    assert!(removed.status.success());
    assert_eq!(export(&a)["error"], json!([400, "InvalidAMIID.NotFound"]));
    assert_eq!(export(&b)["error"], json!([400, "InvalidAMIID.NotFound"]));
    // Removing again, or adding a file that is not there: not found (3).
    assert_eq!(
        images(&["remove", "ami-0added0at0run0time"]).status.code(),
        Some(3)
    );
    assert_eq!(
        images(&[
            "add",
            "ami-x",
            s.dir.join("nothing.qcow2").to_str().expect("p")
        ])
        .status
        .code(),
        Some(3)
    );
    assert_eq!(
        images(&["add", "", web.to_str().expect("p")]).status.code(),
        Some(2)
    );
}

#[test]
fn on_postgres_three_instances_run_24_exports_from_every_api_once_each() {
    let s = setup_on("serve-pg-three", Backend::Postgres);
    // Every request to the storage passes a proxy that records it.
    let proxy = FaultProxy::start(s.s3.port(), vec![]);
    let instances: Vec<Served> = ["a", "b", "c"]
        .iter()
        .map(|n| s.serve_named(n, &proxy.endpoint(), "lease_secs = 5\n"))
        .collect();
    let out = s.dir.join("fleet");
    std::fs::create_dir_all(&out).expect("out");
    let endpoints: Vec<String> = instances.iter().map(Served::url).collect();
    let r = sdk(
        "fleet_round_robin",
        &s.args(
            &instances[0],
            json!({ "image": AMI, "oci_image": OCI_IMAGE, "hw_image": HW_IMAGE,
                    "endpoints": endpoints, "count": 24, "out": out }),
        ),
    );
    let exports = r["exports"].as_array().expect("exports");
    assert_eq!(exports.len(), 24, "{r}");
    // Every poll through every instance saw the same final state.
    for e in exports {
        let seen = e["seen"].as_array().expect("seen");
        assert_eq!(seen.len(), 3, "{e}");
        assert!(seen.iter().all(|v| *v == seen[0]), "{e}");
        s.same(
            Path::new(e["file"].as_str().expect("file")),
            e["format"].as_str().expect("format"),
        );
    }
    // Each job ran once (one attempt) and its object was published once.
    let store = s.store();
    let mut jobs = vec![];
    for p in ["aws", "oci", "huawei-ims"] {
        jobs.extend(
            store
                .list(p, imgconv_export::jobs::DEFAULT_ACCOUNT)
                .expect("list"),
        );
    }
    assert_eq!(jobs.len(), 24);
    assert!(
        jobs.iter()
            .all(|j| j.state == JobState::Completed && j.attempts == 1),
        "{jobs:?}"
    );
    let records = proxy.records();
    for e in exports {
        let key = e["key"].as_str().expect("key");
        let publications = records
            .iter()
            .filter(|rec| rec.target.contains(key))
            .filter(|rec| {
                (rec.method == "POST" && rec.target.contains("uploadId="))
                    || (rec.method == "PUT" && !rec.target.contains("partNumber="))
            })
            .count();
        assert_eq!(publications, 1, "{key} published {publications} times");
    }
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
    let runners: std::collections::BTreeSet<_> = jobs.iter().map(|j| j.runner_pid).collect();
    eprintln!("24 exports ran on {} instances", runners.len());
}

/// A PostgreSQL cluster of a test's own (the suite's shared one cannot stop under the other
/// tests), from `scripts/pg-cluster.sh`: stopped and started again at will, removed at the end.
struct OwnCluster {
    dir: PathBuf,
    url: String,
}

impl OwnCluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-cluster.sh")
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(Self::script())
            .args(args)
            .output()
            .expect("pg-cluster.sh");
        assert!(
            out.status.success(),
            "pg-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn start(name: &str) -> OwnCluster {
        let dir = std::env::temp_dir().join(format!("imgconv-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = Self::run(&["start-tls", dir.to_str().expect("path")]);
        OwnCluster { dir, url }
    }

    /// Stop the server: `fast` (a clean shutdown) or `immediate` (as if killed).
    fn pause(&self, mode: &str) {
        Self::run(&["pause", self.dir.to_str().expect("path"), mode]);
    }

    fn resume(&self) {
        Self::run(&["resume", self.dir.to_str().expect("path")]);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .args(["stop", self.dir.to_str().unwrap_or("")])
            .output();
    }
}

/// The job database stopped (cleanly, then as if killed) under three instances while an
/// export is mid-upload: every provider's SDK call gets a 503 in its own shape (never "not
/// found"), `/healthz` says 503 and then 200 again, and the export completes once with the
/// right object, with no upload left.
#[test]
fn on_postgres_a_database_outage_gets_503s_in_each_providers_shape_and_exports_complete_once() {
    let pg = OwnCluster::start("outage");
    let mut s = setup_on("serve-pg-outage", Backend::Sqlite);
    s.db = pg.url.clone();
    std::fs::write(s.dir.join("big.raw"), noise(23, 24 * MIB as usize)).expect("big image");
    // Each round's export holds its part 2 (twice: the first attempt and its retry) for 5 s
    // each: it is mid-upload while the database is away.
    let stall = || Fault::Stall(Duration::from_secs(5));
    let proxy = FaultProxy::start(
        s.s3.port(),
        vec![Rule::first(
            "PUT",
            "partNumber=2&",
            vec![stall(), stall(), stall(), stall()],
        )],
    );
    let instances: Vec<Served> = ["a", "b", "c"]
        .iter()
        .map(|n| s.serve_named(n, &proxy.endpoint(), "lease_secs = 6\n"))
        .collect();
    let endpoints: Vec<String> = instances.iter().map(Served::url).collect();
    let ids = sdk(
        "outage_ids",
        &s.args(
            &instances[0],
            json!({ "oci_image": OCI_IMAGE, "hw_image": HW_IMAGE, "zs_image": AMI,
                    "backup_storage": BACKUP_STORAGE }),
        ),
    );
    for (round, mode) in ["fast", "immediate"].iter().enumerate() {
        let task = submit_big(&s, &instances[round + 1]);
        // The export is under way (its part 2 is held) before the database goes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !proxy
            .records()
            .iter()
            .filter(|r| r.target.contains("partNumber=2&"))
            .any(|r| r.target.contains(&task))
        {
            assert!(
                Instant::now() < deadline,
                "{mode}: the export did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pg.pause(mode);
        let mut args = s.args(&instances[0], ids.clone());
        args["task"] = json!(task);
        args["endpoints"] = json!(endpoints);
        let away = sdk("outage_calls", &args);
        assert_eq!(away["aws"], json!([503, "Unavailable"]), "{mode}: {away}");
        assert_eq!(
            away["oci"],
            json!([503, "ServiceUnavailable"]),
            "{mode}: {away}"
        );
        assert_eq!(away["huawei"][0], 503, "{mode}: {away}");
        assert_eq!(away["zstack"], json!([503, "SYS.1006"]), "{mode}: {away}");
        assert_eq!(away["healthz"], json!([503, 503, 503]), "{mode}: {away}");
        std::thread::sleep(Duration::from_secs(4));
        pg.resume();
        let back = sdk("outage_calls", &args);
        assert_eq!(back["healthz"], json!([200, 200, 200]), "{mode}: {back}");
        assert_eq!(back["aws"], json!([200, null]), "{mode}: {back}");
        assert_eq!(back["oci"], json!([200, null]), "{mode}: {back}");
        assert_eq!(back["huawei"], json!([200, null]), "{mode}: {back}");
        assert_eq!(
            wait_completed(&s, &instances[0], &task),
            "completed",
            "{mode}"
        );
        same_as_big(&s, &task);
        // Published once: one completion of its upload at the storage.
        let completions = proxy
            .records()
            .iter()
            .filter(|r| {
                r.method == "POST" && r.target.contains(&task) && r.target.contains("uploadId=")
            })
            .count();
        assert_eq!(completions, 1, "{mode}: {:?}", proxy.records());
    }
    drained(&proxy);
    assert!(uploads(&s.s3).is_empty(), "{:?}", s.s3.files());
    drop(instances);
}
