//! Exports from the command line: `imgconv IN s3://bucket/key.EXT --endpoint URL` into a real
//! S3-compatible server that checks signatures (`s3s-fs`), into an OCI pre-authenticated
//! request, and into a folder published under a base URL. Every object is downloaded and
//! checked against the digests imgconv printed and, by qemu-img, against the source.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imgconv_testkit::{
    Fault, FaultProxy, ParServer, Rule, S3Server, TlsFront, ACCESS_KEY, SECRET_KEY,
};

use crate::tools::*;

/// A 26 MiB disk: incompressible data (so that every format needs several 5 MiB parts),
/// zeros, holes and text.
fn source(dir: &Path) -> PathBuf {
    let img = Image::new(dir.join("src.raw"), 26 * MIB + 1024)
        .data(0, 6 * MIB as usize)
        .zeros(6 * MIB, 2 * MIB as usize)
        .data(10 * MIB + 512, 7 * MIB as usize)
        .data(20 * MIB, 3 * MIB as usize)
        .data(26 * MIB, 1024);
    img.done()
}

/// `imgconv` with the server's keys in the environment.
fn with_keys() -> Command {
    imgconv_with_keys(ACCESS_KEY, SECRET_KEY)
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).expect("JSON result")
}

/// Write `bytes` to `dir/name` and check them against the printed result.
fn check_object(dir: &Path, name: &str, bytes: &[u8], result: &serde_json::Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write object");
    assert_eq!(result["output-size"], bytes.len() as u64, "{name}");
    assert_eq!(result["digests"]["md5"], md5sum(&path), "{name}");
    assert_eq!(result["digests"]["sha256"], sha256sum(&path), "{name}");
    path
}

#[test]
fn exports_to_s3_in_each_format_match_their_digests_and_the_source() {
    let dir = scratch("export-s3");
    let src = source(&dir);
    let server = S3Server::start("cli-formats");
    let scratch_dir = dir.join("scratch");
    std::fs::create_dir_all(&scratch_dir).expect("scratch dir");
    for (key, args, qemu_fmt, multipart) in [
        (
            "d.vmdk",
            &["-o", "subformat=streamOptimized"][..],
            "vmdk",
            true,
        ),
        ("d.vhd", &[][..], "vpc", true),
        ("d.qcow2", &[][..], "qcow2", true),
        ("dc.qcow2", &["-c"][..], "qcow2", true),
        ("d.raw", &[][..], "raw", true),
        (
            "small.vmdk",
            &["-o", "subformat=streamOptimized", "-O", "vmdk"][..],
            "vmdk",
            false,
        ),
    ] {
        let input = if multipart {
            src.clone()
        } else {
            mixed_source(&dir)
        };
        let out = ok(with_keys()
            .arg(&input)
            .arg(format!("s3://exports/{key}"))
            .args(["--endpoint", &server.endpoint(), "--region", "us-east-1"])
            .args(["--part-size", "5M", "--output", "json", "--scratch-dir"])
            .arg(&scratch_dir)
            .args(args));
        let result = json(&out);
        assert_eq!(result["url"], format!("s3://exports/{key}"));
        let bytes = server.download(key).expect("object");
        assert_eq!(
            bytes.len() > 10 << 20,
            multipart,
            "{key}: {} bytes",
            bytes.len()
        );
        let object = check_object(&dir, key, &bytes, &result);
        assert_eq!(
            qemu_compare_formats(&input, "raw", &object, qemu_fmt),
            0,
            "{key} differs from the source"
        );
        if qemu_fmt == "qcow2" {
            let check = tool("qemu-img", &["check", "-f", "qcow2", path_str(&object)]);
            assert!(check.status.success(), "{key}: {check:?}");
        }
    }
    assert!(entries(&scratch_dir).is_empty(), "scratch file left behind");
    // Human output: md5sum-style lines naming the object. The endpoint and region come
    // from the environment, the S3-specific variable before the general one.
    let out = ok(with_keys()
        .arg(&src)
        .arg("s3://exports/h.vhd")
        .env("AWS_ENDPOINT_URL_S3", server.endpoint())
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1"));
    let h = dir.join("h.vhd");
    std::fs::write(&h, server.download("h.vhd").expect("object")).expect("write");
    assert_eq!(qemu_compare_formats(&src, "raw", &h, "vpc"), 0);
    assert!(
        out.contains(&format!("MD5 (s3://exports/h.vhd) = {}", md5sum(&h))),
        "{out}"
    );
    assert!(
        out.contains(&format!("SHA256 (s3://exports/h.vhd) = {}", sha256sum(&h))),
        "{out}"
    );
    // --endpoint wins over the environment; AWS_ENDPOINT_URL alone serves too.
    let small = mixed_source(&dir);
    ok(with_keys()
        .arg(&small)
        .arg("s3://exports/flag.vhd")
        .args(["--endpoint", &server.endpoint()])
        .env("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"));
    ok(with_keys()
        .arg(&small)
        .arg("obs://exports/general.vhd")
        .env("AWS_ENDPOINT_URL", server.endpoint()));
    // No keys in the environment: keys, region and endpoint from a profile of the shared
    // config file, as the AWS CLI keeps them.
    let config = dir.join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[default]\nregion = eu-west-1\n[profile export]\nregion = us-east-1\n\
             endpoint_url = {}\naws_access_key_id = {ACCESS_KEY}\n\
             aws_secret_access_key = {SECRET_KEY}\n",
            server.endpoint()
        ),
    )
    .expect("config");
    ok(with_keys()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_PROFILE", "export")
        .arg(&small)
        .arg("s3://exports/profile.vhd"));
    for key in ["flag.vhd", "general.vhd", "profile.vhd"] {
        let path = dir.join(key);
        std::fs::write(&path, server.download(key).expect("object")).expect("write");
        assert_eq!(
            qemu_compare_formats(&small, "raw", &path, "vpc"),
            0,
            "{key}"
        );
    }
}

#[test]
fn packages_and_vhdx_export_to_s3_streamed_and_whole() {
    // OVA (rehearsed, then streamed: no scratch file), GCE tar.gz and VHDX into a bucket.
    let dir = scratch("export-s3-packages");
    let src = source(&dir);
    let server = S3Server::start("cli-packages");
    let scratch_dir = dir.join("scratch");
    std::fs::create_dir_all(&scratch_dir).expect("scratch dir");
    for (key, args) in [
        ("vm.ova", &[][..]),
        ("image.tar.gz", &["-o", "round_to_gib=off"][..]),
        ("d.vhdx", &["-o", "block_size=1M"][..]),
    ] {
        let out = ok(with_keys()
            .arg(&src)
            .arg(format!("s3://exports/{key}"))
            .args(["--endpoint", &server.endpoint(), "--region", "us-east-1"])
            .args(["--part-size", "5M", "--output", "json", "--scratch-dir"])
            .arg(&scratch_dir)
            .args(args));
        let result = json(&out);
        let bytes = server.download(key).expect("object");
        assert!(bytes.len() > 10 << 20, "{key}: multipart");
        let object = check_object(&dir, key, &bytes, &result);
        assert!(
            std::fs::read_dir(&scratch_dir)
                .expect("scratch")
                .next()
                .is_none(),
            "{key}: streamed, no scratch file"
        );
        let x = dir.join(format!("x-{key}"));
        std::fs::create_dir_all(&x).expect("dir");
        match key {
            "vm.ova" => {
                let list = ok(Command::new("tar").current_dir(&x).arg("-tf").arg(&object));
                assert_eq!(list, "vm.ovf\nvm.mf\nvm-disk1.vmdk\n");
                ok(Command::new("tar").current_dir(&x).arg("-xf").arg(&object));
                let mf = std::fs::read_to_string(x.join("vm.mf")).expect("mf");
                assert!(mf.contains(&sha256sum(&x.join("vm-disk1.vmdk"))), "{mf}");
                assert!(mf.contains(&sha256sum(&x.join("vm.ovf"))), "{mf}");
                assert_eq!(
                    qemu_compare_formats(&src, "raw", &x.join("vm-disk1.vmdk"), "vmdk"),
                    0
                );
            }
            "image.tar.gz" => {
                let list = ok(Command::new("tar").current_dir(&x).arg("-tzf").arg(&object));
                assert_eq!(list, "disk.raw\n");
                ok(Command::new("tar").current_dir(&x).arg("-xzf").arg(&object));
                assert_eq!(md5sum(&x.join("disk.raw")), md5sum(&src));
            }
            _ => {
                assert_eq!(qemu_compare_formats(&src, "raw", &object, "vhdx"), 0);
            }
        }
    }
}

#[test]
fn export_errors_have_their_exit_codes() {
    let dir = scratch("export-errors");
    let src = mixed_source(&dir);
    let server = S3Server::start("cli-errors");
    let ep = server.endpoint();
    let err = fails_with(
        with_keys()
            .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
            .arg(&src)
            .arg("s3://exports/a.vmdk")
            .args(["--endpoint", &ep]),
        11,
    );
    assert!(!err.contains("wrong-secret-value"), "{err}");
    assert!(
        err.contains("access denied") || err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    let err = fails_with(
        with_keys()
            .arg(&src)
            .arg("s3://missing/a.vmdk")
            .args(["--endpoint", &ep]),
        3,
    );
    assert!(err.contains("bucket 'missing' does not exist"), "{err}");
    // No keys anywhere.
    let err = fails_with(
        imgconv()
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .arg(&src)
            .arg("s3://exports/a.vmdk")
            .args(["--endpoint", &ep]),
        2,
    );
    assert!(err.contains("no credentials"), "{err}");
    // An object that exists is kept unless --force.
    ok(with_keys()
        .arg(&src)
        .arg("s3://exports/a.vhd")
        .args(["--endpoint", &ep]));
    let first = server.download("a.vhd").expect("object");
    let err = fails_with(
        with_keys()
            .arg(&src)
            .arg("s3://exports/a.vhd")
            .args(["--endpoint", &ep, "-O", "raw"]),
        5,
    );
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(server.download("a.vhd").expect("object"), first);
    ok(with_keys().arg(&src).arg("s3://exports/a.vhd").args([
        "--endpoint",
        &ep,
        "-O",
        "raw",
        "--force",
    ]));
    assert_eq!(
        server.download("a.vhd").expect("object").len() as u64,
        9 * MIB + 3072
    );
    // Usage errors.
    for (args, needle) in [
        (vec!["obs://b/k.vmdk"], "needs --endpoint"),
        (
            vec!["s3://b/k.txt", "--endpoint", &ep],
            "cannot tell the output format",
        ),
        (vec!["s3://b", "--endpoint", &ep], "bucket and a key"),
        (vec!["out.vmdk", "--endpoint", &ep], "apply to s3://"),
        (
            vec!["https://example.com/x.vmdk"],
            "pre-authenticated request URL",
        ),
        (
            vec!["-", "-O", "raw", "--publish-url", "http://h/"],
            "needs a file output",
        ),
        (
            vec!["s3://b/k.vmdk", "--endpoint", &ep, "--part-size", "1M"],
            "part size",
        ),
    ] {
        let err = fails_with(with_keys().arg(&src).args(&args).current_dir(&dir), 2);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn an_interrupted_export_leaves_no_object_and_no_upload() {
    let dir = scratch("export-interrupt");
    let src = source(&dir);
    let server = S3Server::start("cli-interrupt");
    let before = server.files();
    // Part 3 stalls, so the export is under way when it is interrupted.
    let proxy = FaultProxy::start(
        server.port(),
        vec![Rule::first(
            "PUT",
            "partNumber=3",
            vec![Fault::Stall(Duration::from_secs(2))],
        )],
    );
    let child = with_keys()
        .arg(&src)
        .arg("s3://exports/i.raw")
        .args(["--endpoint", &proxy.endpoint(), "--part-size", "5M"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    proxy.wait_for("partNumber=3");
    let pid = child.id().to_string();
    assert!(tool("kill", &["-INT", &pid]).status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(server.download("i.raw").is_none(), "no object");
    let records = proxy.records();
    assert!(
        records
            .iter()
            .any(|r| r.method == "DELETE" && r.status == Some(204)),
        "aborted: {records:#?}"
    );
    assert_eq!(
        server.files(),
        before,
        "no upload left in the server's storage"
    );
}

#[test]
fn exports_through_an_oci_par_and_to_a_published_folder() {
    let dir = scratch("export-par");
    let src = source(&dir);
    let par = ParServer::start();
    let url = par.par_url("disk.vmdk");
    let out = ok(imgconv().arg(&src).arg(&url).args([
        "-o",
        "subformat=streamOptimized",
        "--part-size",
        "5M",
    ]));
    assert!(
        !out.contains("pAr-T0ken"),
        "the PAR token is a secret: {out}"
    );
    let bytes = par.object("disk.vmdk").expect("object");
    let object = dir.join("par.vmdk");
    std::fs::write(&object, &bytes).expect("write");
    assert!(
        out.contains(&format!(
            "MD5 (http://127.0.0.1/p/<token>/.../o/disk.vmdk) = {}",
            md5sum(&object)
        )),
        "{out}"
    );
    assert_eq!(qemu_compare_formats(&src, "raw", &object, "vmdk"), 0);
    let parts = par
        .requests()
        .iter()
        .filter(|(m, t)| m == "PUT" && t.contains("/u/"))
        .count();
    assert!(parts >= 3, "multipart: {:?}", par.requests());
    assert_eq!(par.pending_uploads(), 0);

    let published = dir.join("www");
    std::fs::create_dir_all(&published).expect("folder");
    let out = ok(imgconv()
        .arg(&src)
        .arg(published.join("disk 1.qcow2"))
        .args([
            "--publish-url",
            "http://store.example:8000/images",
            "--output",
            "json",
        ]));
    let result = json(&out);
    assert_eq!(
        result["url"],
        "http://store.example:8000/images/disk%201.qcow2"
    );
    let file = published.join("disk 1.qcow2");
    assert_eq!(result["digests"]["md5"], md5sum(&file));
    assert_eq!(entries(&published), ["disk 1.qcow2", "disk 1.qcow2.md5"]);
    let check = Command::new("md5sum")
        .args(["-c", "disk 1.qcow2.md5"])
        .current_dir(&published)
        .output()
        .expect("md5sum");
    assert!(check.status.success(), "{check:?}");
    assert_eq!(qemu_compare_formats(&src, "raw", &file, "qcow2"), 0);
}

#[test]
fn a_full_disk_under_the_scratch_file_exits_7_and_uploads_nothing() {
    // Compressed QCOW2 goes through a scratch file; a file-size limit stands in for a full
    // disk under it (EFBIG as ENOSPC would be; SIGXFSZ ignored). The storage server was
    // started before the limit and is not under it.
    let dir = scratch("export-scratch-full");
    let src = source(&dir);
    let s3 = S3Server::start("export-scratch-full");
    let scratch_dir = dir.join("tmp");
    std::fs::create_dir_all(&scratch_dir).expect("scratch folder");
    let script = format!(
        "trap '' XFSZ; ulimit -f 4096; exec '{}' -c '{}' s3://exports/full.qcow2 \
         --endpoint '{}' --scratch-dir '{}'",
        env!("CARGO_BIN_EXE_imgconv"),
        src.display(),
        s3.endpoint(),
        scratch_dir.display()
    );
    // The same environment as every export test (keys, no profile files), run by bash.
    let with = with_keys();
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script]);
    for (k, v) in with.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let err = fails_with(&mut cmd, 7);
    assert!(err.contains("cannot write the output"), "{err}");
    assert!(entries(&scratch_dir).is_empty(), "the scratch file is gone");
    assert!(
        s3.files().iter().all(|f| !f.contains("full.qcow2")),
        "{:?}",
        s3.files()
    );
}

#[test]
fn an_endpoint_behind_a_private_ca_is_trusted_with_ca_bundle_or_ssl_cert_file_only() {
    let dir = scratch("export-private-ca");
    let src = mixed_source(&dir);
    let s3 = S3Server::start("export-private-ca");
    let front = TlsFront::start(s3.port());
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, front.ca_pem()).expect("CA file");
    let export = |key: &str| {
        let mut c = with_keys();
        c.arg(&src)
            .arg(format!("s3://exports/{key}"))
            .args(["--endpoint", &front.endpoint()]);
        c
    };
    // Unknown issuer: refused, nothing uploaded, the cause named.
    let err = fails_with(&mut export("untrusted.vhd"), 6);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(s3.download("untrusted.vhd").is_none());
    // The bundle on the command line...
    ok(export("bundle.vhd").arg("--ca-bundle").arg(&ca));
    // ...or in SSL_CERT_FILE, as the system's store reads it.
    ok(export("env.vhd").env("SSL_CERT_FILE", &ca));
    for key in ["bundle.vhd", "env.vhd"] {
        let object = dir.join(key);
        std::fs::write(&object, s3.download(key).expect("object")).expect("write");
        assert_eq!(
            qemu_compare_formats(&src, "raw", &object, "vpc"),
            0,
            "{key}"
        );
    }
    // A bundle that holds no certificate is a usage error.
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate").expect("bad file");
    let err = fails_with(export("bad.vhd").arg("--ca-bundle").arg(&bad), 2);
    assert!(err.contains("CA bundle"), "{err}");
}
