//! `imgconv export --api ...`: each provider's documented example request (testdata/export-api)
//! becomes a job that uploads an object which converts back to the source, with a response in
//! the provider's shape; validation errors in each provider's error shape; idempotency; dry
//! run; cancellation; and a job whose process was killed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgconv_testkit::{Fault, FaultProxy, Rule, S3Server, ACCESS_KEY, SECRET_KEY};
use serde_json::Value;

use crate::tools::*;

fn request(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/export-api")
        .join(name)
}

thread_local! {
    /// The PostgreSQL URL this thread's test passes as `--db` (none: a SQLite file).
    static PG_URL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Run `test` with `--db` a fresh PostgreSQL database on the test cluster.
fn on_postgres(name: &str, test: fn()) {
    PG_URL.with(|u| *u.borrow_mut() = Some(imgconv_testkit::pg_database(name)));
    test();
}

/// A scratch folder for `name`, apart for the PostgreSQL runs.
fn scratch_db(name: &str) -> PathBuf {
    match PG_URL.with(|u| u.borrow().is_some()) {
        true => scratch(&format!("{name}-pg")),
        false => scratch(name),
    }
}

/// `imgconv export --api API --db DIR/jobs.sqlite` (or the PostgreSQL URL) with the server's
/// keys.
fn api(dir: &Path, which: &str) -> Command {
    let mut c = imgconv_with_keys(ACCESS_KEY, SECRET_KEY);
    c.args(["export", "--api", which, "--db"]);
    match PG_URL.with(|u| u.borrow().clone()) {
        Some(url) => c.arg(url),
        None => c.arg(dir.join("jobs.sqlite")),
    };
    c
}

/// Run; (exit code, stdout as JSON, stderr).
fn answer(cmd: &mut Command) -> (i32, Value, String) {
    let out = cmd.output().expect("run");
    let body = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code().unwrap_or(-1),
        body,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).expect("write request");
    p
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
}

/// Compare an object's bytes, as `fmt`, with the source.
fn same_content(dir: &Path, src: &Path, name: &str, bytes: &[u8], fmt: &str) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write object");
    assert_eq!(qemu_compare_formats(src, "raw", &p, fmt), 0, "{name}");
}

#[test]
fn each_providers_example_request_exports_an_object_that_reads_back() {
    let dir = scratch("api-examples");
    let src = mixed_source(&dir);
    let s3 = S3Server::start("api-examples");
    for b in [
        "amzn-s3-demo-export-bucket",
        "export-bucket",
        "ims-image",
        "evs-images",
    ] {
        s3.create_bucket(b);
    }
    let ep = s3.endpoint();

    // AWS: answer as documented, object at PREFIX + task id + .vmdk, streamOptimized.
    let (code, body, _) = answer(
        api(&dir, "aws")
            .arg("--request")
            .arg(request("aws-export-image.json"))
            .arg("--image")
            .arg(&src)
            .args(["--endpoint", &ep]),
    );
    assert_eq!(code, 0, "{body}");
    for field in [
        "Description",
        "DiskImageFormat",
        "ExportImageTaskId",
        "ImageId",
        "Progress",
        "S3ExportLocation",
        "Status",
        "StatusMessage",
    ] {
        assert!(
            body.get(field).is_some(),
            "AWS answer lacks {field}: {body}"
        );
    }
    assert_eq!(body["Status"], "active");
    assert_eq!(body["Progress"], "0");
    let task = body["ExportImageTaskId"]
        .as_str()
        .expect("task id")
        .to_string();
    assert!(
        task.starts_with("export-ami-") && task.len() == 28,
        "{task}"
    );
    let key = format!("exports/{task}.vmdk");
    let bytes = s3
        .download_from("amzn-s3-demo-export-bucket", &key)
        .expect("AWS object");
    same_content(&dir, &src, "aws.vmdk", &bytes, "vmdk");
    let (_, d, _) = answer(api(&dir, "aws").args(["--describe", &task]));
    let t = &d["ExportImageTasks"][0];
    assert_eq!(t["Status"], "completed", "{d}");
    assert_eq!(t["ExportImageTaskId"], task.as_str());
    assert!(t.get("Progress").is_none(), "{d}");
    let (_, l, _) = answer(api(&dir, "aws").arg("--list"));
    assert_eq!(l["ExportImageTasks"].as_array().map(Vec::len), Some(1));

    // OCI: the image with lifecycleState EXPORTING, the work request in a header.
    let (code, body, err) = answer(
        api(&dir, "oci")
            .arg("--request")
            .arg(request("oci-export-image.json"))
            .arg("--image")
            .arg(&src)
            .args([
                "--image-id",
                "ocid1.image.oc1..exampleuniqueID",
                "--endpoint",
                &ep,
            ]),
    );
    assert_eq!(code, 0, "{body} {err}");
    assert_eq!(body["lifecycleState"], "EXPORTING");
    assert_eq!(body["id"], "ocid1.image.oc1..exampleuniqueID");
    let wr = err
        .lines()
        .find_map(|l| l.strip_prefix("opc-work-request-id: "))
        .expect("opc-work-request-id header")
        .to_string();
    let bytes = s3
        .download_from("export-bucket", "exported-image.qcow2")
        .expect("OCI object");
    same_content(&dir, &src, "oci.qcow2", &bytes, "qcow2");
    let (_, w, _) = answer(api(&dir, "oci").args(["--describe", &wr]));
    assert_eq!(w["status"], "SUCCEEDED", "{w}");
    assert_eq!(w["operationType"], "ExportImage");
    assert_eq!(w["percentComplete"], 100.0);

    // Huawei IMS: job_id, then the job as the job API shows it.
    let (code, body, _) = answer(
        api(&dir, "huawei-ims")
            .arg("--request")
            .arg(request("huawei-ims-export.json"))
            .arg("--image")
            .arg(&src)
            .args([
                "--image-id",
                "d164b5df-1bc3-4c3f-893e-3e471fd16e64",
                "--endpoint",
                &ep,
            ]),
    );
    assert_eq!(code, 0, "{body}");
    let job = body["job_id"].as_str().expect("job_id").to_string();
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    let bytes = s3
        .download_from("ims-image", "centos70.qcow2")
        .expect("IMS object");
    same_content(&dir, &src, "ims.qcow2", &bytes, "qcow2");
    let (_, j, _) = answer(api(&dir, "huawei-ims").args(["--describe", &job]));
    assert_eq!(j["status"], "SUCCESS", "{j}");
    assert_eq!(j["job_type"], "exportImage");

    // Huawei EVS: os-volume_upload_image echoed with status uploading and the new image id.
    let (code, body, _) = answer(
        api(&dir, "huawei-evs")
            .arg("--request")
            .arg(request("huawei-evs-upload-image.json"))
            .arg("--image")
            .arg(&src)
            .args(["--image-id", "0c6fc1a0-2b5c-4b2d-9a1b-6b1a4c9d1f2e"])
            .args(["--endpoint", &ep, "--bucket", "s3://evs-images/images/"]),
    );
    assert_eq!(code, 0, "{body}");
    let up = &body["os-volume_upload_image"];
    for field in [
        "id",
        "image_id",
        "image_name",
        "disk_format",
        "container_format",
        "status",
        "size",
        "volume_type",
        "updated_at",
        "display_description",
    ] {
        assert!(up.get(field).is_some(), "EVS answer lacks {field}: {body}");
    }
    assert_eq!(up["status"], "uploading");
    assert_eq!(up["image_name"], "test");
    let image_id = up["image_id"].as_str().expect("image id");
    let bytes = s3
        .download_from("evs-images", &format!("images/{image_id}.vhd"))
        .expect("EVS object");
    same_content(&dir, &src, "evs.vhd", &bytes, "vpc");

    // ZStack: 202 with the API job's location, then imageUrl and exportMd5Sum.
    let store = dir.join("bs");
    std::fs::create_dir_all(&store).expect("folder");
    let (code, body, err) = answer(
        api(&dir, "zstack")
            .arg("--request")
            .arg(request("zstack-export-image.json"))
            .arg("--image")
            .arg(&src)
            .arg("--publish-dir")
            .arg(&store)
            .args(["--publish-url", "http://172.20.0.5:8000/export"]),
    );
    assert_eq!(code, 0, "{body}");
    assert!(err.contains("status: 202"), "{err}");
    let location = body["location"].as_str().expect("location");
    let job = location.rsplit('/').next().expect("job uuid");
    let (_, r, _) = answer(api(&dir, "zstack").args(["--describe", job]));
    let name = published(&r["imageUrl"], "a603e80ea18f424f8a5f00371d484537", "qcow2");
    let file = store.join(name);
    assert_eq!(r["exportMd5Sum"], md5sum(&file));
    assert_eq!(qemu_compare_formats(&src, "raw", &file, "qcow2"), 0);
}

#[test]
fn an_aws_instance_export_request_writes_an_ova_named_after_its_task() {
    // The CLI's JSON names the S3 part `ExportToS3Task`, as the SDKs do.
    let dir = scratch("api-instance");
    let src = mixed_source(&dir);
    let s3 = S3Server::start("api-instance");
    s3.create_bucket("amzn-s3-demo-export-bucket");
    let (code, body, _) = answer(
        api(&dir, "aws")
            .arg("--request")
            .arg(request("aws-export-instance.json"))
            .arg("--image")
            .arg(&src)
            .args(["--endpoint", &s3.endpoint()]),
    );
    assert_eq!(code, 0, "{body}");
    let t = &body["ExportTask"];
    assert_eq!(t["State"], "active", "{body}");
    assert_eq!(
        t["InstanceExportDetails"]["InstanceId"],
        "i-1234567890abcdef0"
    );
    assert_eq!(t["InstanceExportDetails"]["TargetEnvironment"], "vmware");
    let task = t["ExportTaskId"].as_str().expect("task id").to_string();
    assert!(task.starts_with("export-i-"), "{task}");
    let key = format!("RHEL5/{task}.ova");
    assert_eq!(t["ExportToS3Task"]["S3Key"], key.as_str());
    let bytes = s3
        .download_from("amzn-s3-demo-export-bucket", &key)
        .expect("the OVA");
    let ova = dir.join("instance.ova");
    std::fs::write(&ova, &bytes).expect("write");
    let list = ok(Command::new("tar").arg("-tf").arg(&ova));
    assert_eq!(list, format!("{task}.ovf\n{task}.mf\n{task}-disk1.vmdk\n"));
    let back = dir.join("back.raw");
    ok(imgconv().arg(&ova).arg(&back));
    assert_eq!(md5sum(&back), md5sum(&src));
    let (_, d, _) = answer(api(&dir, "aws").args(["--describe", &task]));
    assert_eq!(d["ExportTasks"][0]["State"], "completed", "{d}");
    // A RAW disk in an ova container: EC2's error.
    let mut req = read_json(&request("aws-export-instance.json"));
    req["ExportToS3Task"]["DiskImageFormat"] = "RAW".into();
    let (code, body, _) = answer(
        api(&dir, "aws")
            .arg("--request")
            .arg(write(&dir, "raw-ova.json", &req))
            .arg("--image")
            .arg(&src)
            .args(["--endpoint", &s3.endpoint()]),
    );
    assert_ne!(code, 0);
    assert_eq!(body["Errors"][0]["Code"], "InvalidParameterValue", "{body}");
}

#[test]
fn each_provider_rejects_bad_requests_in_its_own_error_shape() {
    let dir = scratch("api-invalid");
    let src = mixed_source(&dir);
    let huge = dir.join("huge.raw");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse 1 TiB");
    let ep = "http://127.0.0.1:9";
    let aws = read_json(&request("aws-export-image.json"));
    let mut cases: Vec<(&str, Value, PathBuf, Vec<&str>, &str)> = Vec::new();
    let mut v = aws.clone();
    v["DiskImageFormat"] = "QCOW2".into();
    cases.push(("aws", v, src.clone(), vec![], "InvalidParameterValue"));
    let mut v = aws.clone();
    v["Description"] = "x".repeat(256).into();
    cases.push(("aws", v, src.clone(), vec![], "InvalidParameterValue"));
    let mut v = read_json(&request("oci-export-image.json"));
    v["exportFormat"] = "VHDX".into();
    cases.push((
        "oci",
        v,
        src.clone(),
        vec!["--image-id", "ocid1.image.x"],
        "InvalidParameter",
    ));
    cases.push((
        "oci",
        read_json(&request("oci-export-image.json")),
        src.clone(),
        vec![
            "--image-id",
            "ocid1.image.x",
            "--header",
            "if-match:not-the-etag",
        ],
        "NoEtagMatch",
    ));
    let mut v = read_json(&request("huawei-ims-export.json"));
    v["is_quick_export"] = true.into();
    cases.push((
        "huawei-ims",
        v,
        src.clone(),
        vec!["--image-id", "i"],
        "IMG.0001",
    ));
    cases.push((
        "huawei-ims",
        read_json(&request("huawei-ims-export.json")),
        huge.clone(),
        vec!["--image-id", "i"],
        "IMG.0001",
    ));
    let mut v = read_json(&request("huawei-ims-export.json"));
    v["file_format"] = "zvhd".into();
    cases.push((
        "huawei-ims",
        v,
        src.clone(),
        vec!["--image-id", "i"],
        "IMG.0001",
    ));
    for name in [" lead", "trail ", "", "bad/name", &"x".repeat(129)] {
        let mut v = read_json(&request("huawei-evs-upload-image.json"));
        v["os-volume_upload_image"]["image_name"] = name.into();
        cases.push((
            "huawei-evs",
            v,
            src.clone(),
            vec!["--image-id", "vol"],
            "EVS.2024",
        ));
    }
    for f in ["zvhd2", "vmdk"] {
        let mut v = read_json(&request("huawei-evs-upload-image.json"));
        v["os-volume_upload_image"]["disk_format"] = f.into();
        cases.push((
            "huawei-evs",
            v,
            src.clone(),
            vec!["--image-id", "vol"],
            "EVS.2024",
        ));
    }
    let mut v = read_json(&request("zstack-export-image.json"));
    v["exportImageFromBackupStorage"]["exportFormat"] = "iso".into();
    cases.push((
        "zstack",
        v,
        src.clone(),
        vec!["--publish-dir", ".", "--publish-url", "http://h/"],
        "SYS.1007",
    ));

    for (i, (which, req, image, extra, code)) in cases.into_iter().enumerate() {
        let file = write(&dir, &format!("bad-{i}.json"), &req);
        let (exit, body, _) = answer(
            api(&dir, which)
                .arg("--request")
                .arg(&file)
                .arg("--image")
                .arg(&image)
                .args(["--endpoint", ep, "--bucket", "s3://b/"])
                .args(&extra)
                .current_dir(&dir),
        );
        assert_eq!(exit, 1, "{which} case {i}: {body}");
        let found = match which {
            "aws" => &body["Errors"][0]["Code"],
            "oci" => &body["code"],
            _ => &body["error"]["code"],
        };
        assert_eq!(found, code, "{which} case {i}: {body}");
        let message = match which {
            "aws" => &body["Errors"][0]["Message"],
            "zstack" => &body["error"]["details"],
            "oci" => &body["message"],
            _ => &body["error"]["message"],
        };
        assert!(message.as_str().is_some_and(|m| !m.is_empty()), "{body}");
        if which.starts_with("huawei") && req.to_string().contains("zvhd") {
            assert!(
                message
                    .as_str()
                    .unwrap_or("")
                    .contains("no public specification"),
                "{body}"
            );
        }
    }
}

#[test]
fn on_postgres_tokens_make_requests_idempotent_and_dry_runs_upload_nothing() {
    on_postgres(
        "api-idempotent",
        tokens_make_requests_idempotent_and_dry_runs_upload_nothing,
    );
}

#[test]
fn tokens_make_requests_idempotent_and_dry_runs_upload_nothing() {
    let dir = scratch_db("api-idempotent");
    let src = mixed_source(&dir);
    let s3 = S3Server::start(&dir.file_name().unwrap_or_default().to_string_lossy());
    s3.create_bucket("amzn-s3-demo-export-bucket");
    let ep = s3.endpoint();
    let mut req = read_json(&request("aws-export-image.json"));
    req["ClientToken"] = "token-123".into();
    let file = write(&dir, "req.json", &req);
    let submit = |f: &Path| {
        answer(
            api(&dir, "aws")
                .arg("--request")
                .arg(f)
                .arg("--image")
                .arg(&src)
                .args(["--endpoint", &ep]),
        )
    };
    let (c1, a, _) = submit(&file);
    let before = s3.files();
    let (c2, b, _) = submit(&file);
    assert_eq!((c1, c2), (0, 0));
    assert_eq!(
        a["ExportImageTaskId"], b["ExportImageTaskId"],
        "same token, same job"
    );
    assert_eq!(s3.files(), before, "uploaded once");
    // Same token, another request: a conflict.
    req["Description"] = "another".into();
    let other = write(&dir, "other.json", &req);
    let (c3, e, _) = submit(&other);
    assert_eq!(c3, 1);
    assert_eq!(e["Errors"][0]["Code"], "IdempotentParameterMismatch", "{e}");
    // Dry run: the provider's DryRunOperation answer, nothing uploaded, no job.
    let mut dry = read_json(&request("aws-export-image.json"));
    dry["DryRun"] = true.into();
    let dry = write(&dir, "dry.json", &dry);
    let (c4, d, err) = submit(&dry);
    assert_eq!(c4, 1);
    assert!(err.contains("status: 412"), "{err}");
    assert_eq!(d["Errors"][0]["Code"], "DryRunOperation", "{d}");
    assert_eq!(s3.files(), before, "a dry run uploads nothing");
    let (_, l, _) = answer(api(&dir, "aws").arg("--list"));
    assert_eq!(l["ExportImageTasks"].as_array().map(Vec::len), Some(1));
    // RAW and VHD outputs are also measured.
    for f in ["RAW", "VHD"] {
        let mut v = read_json(&request("aws-export-image.json"));
        v["DryRun"] = true.into();
        v["DiskImageFormat"] = f.into();
        let v = write(&dir, "dry-f.json", &v);
        let (c, d, _) = submit(&v);
        assert_eq!(c, 1);
        assert_eq!(d["Errors"][0]["Code"], "DryRunOperation", "{f}: {d}");
    }
    assert_eq!(s3.files(), before, "a dry run uploads nothing");
    // A dry run checks the bucket.
    let mut gone = read_json(&request("aws-export-image.json"));
    gone["DryRun"] = true.into();
    gone["S3ExportLocation"]["S3Bucket"] = "no-such-bucket".into();
    let gone = write(&dir, "gone.json", &gone);
    let (c5, g, _) = submit(&gone);
    assert_eq!(c5, 1);
    assert_eq!(g["Errors"][0]["Code"], "InvalidParameterValue", "{g}");
    assert!(
        g["Errors"][0]["Message"]
            .as_str()
            .unwrap_or("")
            .contains("no-such-bucket"),
        "{g}"
    );

    // OCI's opc-retry-token works the same way.
    s3.create_bucket("export-bucket");
    let oci = |token: &str, req: &Path| {
        answer(
            api(&dir, "oci")
                .arg("--request")
                .arg(req)
                .arg("--image")
                .arg(&src)
                .args(["--image-id", "ocid1.image.x", "--endpoint", &ep])
                .args(["--header", &format!("opc-retry-token:{token}")]),
        )
    };
    let (_, _, e1) = oci("retry-1", &request("oci-export-image.json"));
    let (_, _, e2) = oci("retry-1", &request("oci-export-image.json"));
    let wr = |e: &str| {
        e.lines()
            .find(|l| l.starts_with("opc-work-request-id"))
            .map(str::to_string)
    };
    assert_eq!(wr(&e1), wr(&e2));
    let mut changed = read_json(&request("oci-export-image.json"));
    changed["objectName"] = "other.qcow2".into();
    let changed = write(&dir, "oci-other.json", &changed);
    let (c, body, _) = oci("retry-1", &changed);
    assert_eq!(c, 1);
    assert_eq!(body["code"], "InvalidatedRetryToken", "{body}");
}

/// Start an AWS export through a proxy that stalls part 2, and wait until it is under way;
/// the child and the task id.
fn stalled_export(dir: &Path, src: &Path, proxy: &FaultProxy) -> (std::process::Child, String) {
    let mut child = api(dir, "aws")
        .arg("--request")
        .arg(request("aws-export-image.json"))
        .arg("--image")
        .arg(src)
        .args(["--endpoint", &proxy.endpoint()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut text = String::new();
    let started = Instant::now();
    let task = loop {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut out, &mut buf).expect("read");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            break v["ExportImageTaskId"].as_str().expect("task").to_string();
        }
        assert!(
            n > 0 && started.elapsed() < Duration::from_secs(30),
            "{text}"
        );
    };
    proxy.wait_for("partNumber=2");
    (child, task)
}

/// A proxy to `s3` that stalls the first attempt at part 2 for `secs` seconds.
fn stalling_proxy(s3: &S3Server, secs: u64) -> FaultProxy {
    FaultProxy::start(
        s3.port(),
        vec![Rule::first(
            "PUT",
            "partNumber=2",
            vec![Fault::Stall(Duration::from_secs(secs))],
        )],
    )
}

/// A source large enough for several 5 MiB parts.
fn big_source(dir: &Path) -> PathBuf {
    Image::new(dir.join("big.raw"), 24 * MIB)
        .data(0, 8 * MIB as usize)
        .data(12 * MIB, 10 * MIB as usize)
        .done()
}

#[test]
fn cancelling_an_active_job_leaves_no_object_and_no_upload() {
    let dir = scratch("api-cancel");
    let src = big_source(&dir);
    let s3 = S3Server::start("api-cancel");
    s3.create_bucket("amzn-s3-demo-export-bucket");
    let before = s3.files();
    let proxy = stalling_proxy(&s3, 2);
    let (child, task) = stalled_export(&dir, &src, &proxy);
    let (code, _, _) = answer(api(&dir, "aws").args(["--cancel", &task]));
    assert_eq!(code, 0);
    let (_, d, _) = answer(api(&dir, "aws").args(["--describe", &task]));
    assert_eq!(d["ExportImageTasks"][0]["Status"], "deleting", "{d}");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let (_, d, _) = answer(api(&dir, "aws").args(["--describe", &task]));
    assert_eq!(d["ExportImageTasks"][0]["Status"], "deleted", "{d}");
    assert_eq!(s3.files(), before, "no object and no pending upload");
    assert!(proxy
        .records()
        .iter()
        .any(|r| r.method == "DELETE" && r.status == Some(204)));

    // Ctrl-C on the process running a job does the same.
    let proxy = stalling_proxy(&s3, 2);
    let (child, task) = stalled_export(&dir, &src, &proxy);
    let pid = child.id().to_string();
    assert!(tool("kill", &["-INT", &pid]).status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let (_, d, _) = answer(api(&dir, "aws").args(["--describe", &task]));
    assert_eq!(d["ExportImageTasks"][0]["Status"], "deleted", "{d}");
    assert_eq!(s3.files(), before, "no object and no pending upload");
}

#[test]
fn a_job_whose_process_was_killed_shows_as_failed_never_complete() {
    let dir = scratch("api-killed");
    let src = big_source(&dir);
    let s3 = S3Server::start("api-killed");
    s3.create_bucket("amzn-s3-demo-export-bucket");
    let before = s3.files();
    let proxy = stalling_proxy(&s3, 5);
    let (mut child, task) = stalled_export(&dir, &src, &proxy);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // Requests the dead process had already handed over still finish at the server (a part
    // can land after an abort); the process is "started again" once they have.
    let settle = Instant::now();
    while proxy.in_progress() > 0 {
        assert!(
            settle.elapsed() < Duration::from_secs(20),
            "requests never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, d, _) = answer(api(&dir, "aws").args(["--describe", &task]));
    let t = &d["ExportImageTasks"][0];
    assert_eq!(t["Status"], "deleted", "{d}");
    let message = t["StatusMessage"].as_str().unwrap_or("");
    assert!(message.contains("interrupted"), "{d}");
    // The upload the dead process had started was recorded, and is aborted on recovery.
    assert!(message.contains("pending upload was aborted"), "{d}");
    // s3s-fs keeps the temporary file of a request cut off mid-body (`.tmp.N.internal.part`);
    // no object, upload marker or part remains.
    let left: Vec<String> = s3
        .files()
        .into_iter()
        .filter(|f| !(f.starts_with(".tmp.") && f.ends_with(".internal.part")))
        .collect();
    assert_eq!(left, before, "no object and no pending upload");
}

#[test]
fn oci_exports_its_own_format_through_a_pre_authenticated_request() {
    let dir = scratch("api-oci-par");
    let src = big_source(&dir);
    let par = imgconv_testkit::ParServer::start();
    // The etag the first answer gives is the one if-match must carry. This first export is
    // in OCI's own format without --image-metadata: the archive holds the default metadata.
    let probe = write(
        &dir,
        "probe.json",
        &serde_json::json!({ "destinationType": "objectStorageUri",
            "destinationUri": par.par_url("probe.oci"), "exportFormat": "OCI" }),
    );
    let (code, _, err) = answer(
        api(&dir, "oci")
            .arg("--request")
            .arg(&probe)
            .arg("--image")
            .arg(&src)
            .args(["--image-id", "ocid1.image.oc1..x"]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("pAr-T0ken"), "the PAR is a secret: {err}");
    let etag = err
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("etag")
        .to_string();
    let probe_archive = dir.join("probe.oci");
    std::fs::write(&probe_archive, par.object("probe.oci").expect("object")).expect("write");
    let probe_dir = dir.join("probe");
    std::fs::create_dir_all(&probe_dir).expect("dir");
    let x = tool(
        "tar",
        &["-xf", path_str(&probe_archive), "-C", path_str(&probe_dir)],
    );
    assert!(x.status.success(), "{x:?}");
    assert_eq!(
        read_json(&probe_dir.join("image_metadata.json")),
        imgconv_export::oci_image_metadata()
    );
    // exportFormat left out: OCI's own format, a tar of the metadata and the QCOW2. The
    // image's launch options come from the service (--image-metadata), not the request.
    let metadata = serde_json::json!({ "version": 2, "operatingSystem": "Oracle Linux",
        "operatingSystemVersion": "9",
        "externalLaunchOptions": { "firmware": "UEFI_64", "networkType": "VFIO",
            "bootVolumeType": "PARAVIRTUALIZED", "launchMode": "NATIVE" } });
    let metadata_file = write(&dir, "image_metadata.json", &metadata);
    let req = write(
        &dir,
        "par.json",
        &serde_json::json!({ "destinationType": "objectStorageUri",
            "destinationUri": par.par_url("image.oci") }),
    );
    let (code, body, err) = answer(
        api(&dir, "oci")
            .arg("--request")
            .arg(&req)
            .arg("--image")
            .arg(&src)
            .args([
                "--image-id",
                "ocid1.image.oc1..x",
                "--header",
                &format!("if-match:{etag}"),
            ])
            .arg("--image-metadata")
            .arg(&metadata_file),
    );
    assert_eq!(code, 0, "{body} {err}");
    let archive = dir.join("image.oci");
    std::fs::write(&archive, par.object("image.oci").expect("object")).expect("write");
    let parts = par
        .requests()
        .iter()
        .filter(|(m, t)| m == "PUT" && t.contains("/u/"))
        .count();
    assert!(
        parts >= 3,
        "the archive went up in parts: {:?}",
        par.requests()
    );
    let list = tool("tar", &["-tf", path_str(&archive)]);
    assert!(list.status.success(), "{list:?}");
    assert_eq!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["image_metadata.json", "output.QCOW2"]
    );
    let out = dir.join("x");
    std::fs::create_dir_all(&out).expect("dir");
    let x = tool("tar", &["-xf", path_str(&archive), "-C", path_str(&out)]);
    assert!(x.status.success(), "{x:?}");
    assert_eq!(read_json(&out.join("image_metadata.json")), metadata);
    let disk = out.join("output.QCOW2");
    let check = tool("qemu-img", &["check", "-f", "qcow2", path_str(&disk)]);
    assert!(check.status.success(), "{check:?}");
    assert_eq!(qemu_compare_formats(&src, "raw", &disk, "qcow2"), 0);
    assert_eq!(par.pending_uploads(), 0);
    // Metadata that is not a JSON object, or given to another API, is a usage error.
    let not_object = dir.join("list.json");
    std::fs::write(&not_object, "[1, 2]").expect("write");
    for (which, file, says) in [
        ("oci", &not_object, "not a JSON object"),
        ("aws", &metadata_file, "is for --api oci"),
    ] {
        let out = api(&dir, which)
            .arg("--request")
            .arg(&req)
            .arg("--image")
            .arg(&src)
            .arg("--image-metadata")
            .arg(file)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{which}: {err}");
        assert!(err.contains(says), "{which}: {err}");
        assert!(out.stdout.is_empty(), "{which}: no answer on a usage error");
    }
}

#[test]
fn on_postgres_queued_jobs_run_later_by_id_or_by_a_worker() {
    on_postgres("api-worker", queued_jobs_run_later_by_id_or_by_a_worker);
}

#[test]
fn queued_jobs_run_later_by_id_or_by_a_worker() {
    let dir = scratch_db("api-worker");
    let src = mixed_source(&dir);
    let store = dir.join("bs");
    std::fs::create_dir_all(&store).expect("folder");
    // Three ZStack exports answered and left queued.
    let mut jobs = vec![];
    for uuid in [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
    ] {
        let mut req = read_json(&request("zstack-export-image.json"));
        req["exportImageFromBackupStorage"]["imageUuid"] = uuid.into();
        let req = write(&dir, &format!("{uuid}.json"), &req);
        let (code, body, err) = answer(
            api(&dir, "zstack")
                .arg("--request")
                .arg(&req)
                .arg("--image")
                .arg(&src)
                .arg("--publish-dir")
                .arg(&store)
                .args(["--publish-url", "http://172.20.0.5:8000/export", "--no-run"]),
        );
        assert_eq!(code, 0, "{body} {err}");
        let location = body["location"].as_str().expect("location");
        jobs.push(location.rsplit('/').next().expect("job uuid").to_string());
    }
    assert!(entries(&store).is_empty(), "--no-run converted nothing");
    let (_, r, err) = answer(api(&dir, "zstack").args(["--describe", &jobs[0]]));
    assert!(
        err.contains("status: 202"),
        "still running as ZStack sees it: {err}"
    );
    assert!(r.get("imageUrl").is_none(), "{r}");
    // One by its id...
    let (code, r, err) = answer(api(&dir, "zstack").args(["--run", &jobs[1]]));
    assert_eq!(code, 0, "{err}");
    published(&r["imageUrl"], "22222222222222222222222222222222", "qcow2");
    // ...the rest by a worker, oldest first, one JSON line each; then nothing is left.
    let out = api(&dir, "zstack").arg("--work").output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let urls: Vec<&str> = lines
        .iter()
        .map(|l| l["imageUrl"].as_str().expect("imageUrl"))
        .collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    for (line, uuid) in lines.iter().zip(["1111", "3333"]) {
        let file = store.join(published(&line["imageUrl"], &uuid.repeat(8), "qcow2"));
        assert_eq!(line["exportMd5Sum"], md5sum(&file));
        assert_eq!(qemu_compare_formats(&src, "raw", &file, "qcow2"), 0);
    }
    let out = api(&dir, "zstack").arg("--work").output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "an empty queue runs nothing");
    // A worker takes no request of its own.
    let out = api(&dir, "zstack")
        .args(["--work", "--list"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn ctrl_c_stops_a_worker_and_leaves_the_rest_queued() {
    let dir = scratch("api-worker-cancel");
    let src = big_source(&dir);
    let s3 = S3Server::start("api-worker-cancel");
    s3.create_bucket("amzn-s3-demo-export-bucket");
    let before = s3.files();
    let proxy = stalling_proxy(&s3, 3);
    let mut tasks = vec![];
    for _ in 0..2 {
        let (code, body, err) = answer(
            api(&dir, "aws")
                .arg("--request")
                .arg(request("aws-export-image.json"))
                .arg("--image")
                .arg(&src)
                .args(["--endpoint", &proxy.endpoint(), "--no-run"]),
        );
        assert_eq!(code, 0, "{body} {err}");
        tasks.push(
            body["ExportImageTaskId"]
                .as_str()
                .expect("task")
                .to_string(),
        );
    }
    let worker = api(&dir, "aws")
        .arg("--work")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    proxy.wait_for("partNumber=2");
    assert!(tool("kill", &["-INT", &worker.id().to_string()])
        .status
        .success());
    let out = worker.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let status = |task: &str| {
        let (_, d, _) = answer(api(&dir, "aws").args(["--describe", task]));
        d["ExportImageTasks"][0]["Status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        status(&tasks[0]),
        "deleted",
        "the oldest job ran and was cancelled"
    );
    assert_eq!(s3.files(), before, "no object and no pending upload");
    // The next worker runs the job left queued, and only that one.
    let out = api(&dir, "aws").arg("--work").output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(status(&tasks[0]), "deleted");
    assert_eq!(status(&tasks[1]), "completed");
    let key = format!("exports/{}.vmdk", tasks[1]);
    let bytes = s3
        .download_from("amzn-s3-demo-export-bucket", &key)
        .expect("the second job's object");
    same_content(&dir, &src, "second.vmdk", &bytes, "vmdk");
}

#[test]
fn a_postgres_job_store_that_cannot_be_reached_is_a_clear_error_without_its_password() {
    for (url, code, needle) in [
        (
            "postgres://imgconv:hunter2@127.0.0.1:1/jobs",
            6,
            "job database postgres://imgconv:***@127.0.0.1:1/jobs",
        ),
        (
            "postgres://imgconv:hunter2@127.0.0.1:1/jobs?no_such_option=1",
            2,
            "invalid connection string",
        ),
    ] {
        let out = imgconv()
            .args(["export", "--api", "aws", "--list", "--db", url])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("hunter2"), "the password is shown: {err}");
    }
}

/// The file name of a ZStack `imageUrl` under `http://172.20.0.5:8000/export/`: the image's
/// id, a random part nobody can guess from the ids (32 hex digits), and the format's
/// extension.
fn published(url: &Value, image: &str, ext: &str) -> String {
    let url = url.as_str().expect("imageUrl");
    let name = url
        .strip_prefix("http://172.20.0.5:8000/export/")
        .unwrap_or_else(|| panic!("{url}"));
    let random = name
        .strip_prefix(&format!("{image}-"))
        .and_then(|r| r.strip_suffix(&format!(".{ext}")))
        .unwrap_or_else(|| panic!("{url}"));
    assert!(
        random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
        "{url}"
    );
    name.to_string()
}
