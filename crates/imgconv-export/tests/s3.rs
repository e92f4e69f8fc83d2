//! The S3 sink against a real S3-compatible server that checks SigV4 signatures (`s3s-fs`,
//! which the README's test command installs): single-part and multipart exports in every
//! streamable format, digests against the downloaded bytes, the content converted back, bad
//! credentials, a missing bucket, and an abandoned upload that leaves nothing behind.

use std::time::Duration;

mod common;

use common::{export, read_back};
use imgconv::{DigestKind, ErrorKind, Format, Sink};
use imgconv_export::{Credentials, S3Config, S3Location, S3Sink};
use imgconv_testkit::{hex, Fault, FaultProxy, Rule, S3Server, ACCESS_KEY, SECRET_KEY};
use md5::Digest as _;

fn config(endpoint: &str) -> S3Config {
    S3Config::new(endpoint, "us-east-1")
        .expect("config")
        .retries(1)
}

fn creds() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None)
}

/// A disk with zeros and random data; `mib` MiB plus 3 KiB.
fn disk(mib: usize) -> Vec<u8> {
    imgconv_testkit::mixed_disk(mib, 0x1234_5678_9abc_def0)
}

#[test]
fn exports_in_every_streamable_format_verify_single_and_multipart() {
    let s = S3Server::start("formats");
    let creds = creds();
    let small = disk(3);
    let large = disk(23);
    for (name, d, format, part) in [
        ("small.vmdk", &small, Format::Vmdk, None),
        ("small.vhd", &small, Format::Vhd, None),
        ("large.raw", &large, Format::Raw, Some(5u64 << 20)),
        ("large.vmdk", &large, Format::Vmdk, Some(5 << 20)),
        ("large.vhd", &large, Format::Vhd, Some(5 << 20)),
        ("large.qcow2", &large, Format::Qcow2, Some(5 << 20)),
    ] {
        let mut config = config(&s.endpoint());
        if let Some(p) = part {
            config = config.part_size(p).expect("part size");
        }
        let to = S3Location::parse(&format!("s3://exports/{name}")).expect("location");
        let sink = S3Sink::create(&config, creds.clone(), &to, d.len() as u64).expect("sink");
        let summary = export(sink, d, format).expect("export");
        let object = s.download(name).expect("object");
        if part.is_some() {
            assert!(object.len() > 2 * (5 << 20), "{name}: at least three parts");
        } else {
            assert!(object.len() < 5 << 20, "{name}: one part");
        }
        common::check(object, &summary, d, format, name);
    }
    // Only the objects and their metadata: no upload left pending.
    let files = s.files();
    assert!(
        files.iter().all(|f| !f.to_lowercase().contains("upload")),
        "{files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.starts_with("exports/")).count(),
        6
    );
}

#[test]
fn wrong_keys_and_a_missing_bucket_fail_clearly() {
    let s = S3Server::start("errors");
    let d = disk(6);
    let config = config(&s.endpoint()).part_size(5 << 20).expect("part size");
    let to = S3Location::parse("s3://exports/x.raw").expect("location");
    let bad = Credentials::new(ACCESS_KEY, "not-the-secret", None);
    let err = S3Sink::create(&config, bad, &to, d.len() as u64)
        .err()
        .expect("wrong secret");
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");

    let good = creds();
    let nowhere = S3Location::parse("s3://no-such-bucket/x.raw").expect("location");
    let err = S3Sink::create(&config, good, &nowhere, d.len() as u64)
        .err()
        .expect("missing bucket");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
}

#[test]
fn an_abandoned_upload_is_aborted_and_leaves_nothing() {
    let s = S3Server::start("abort");
    let before = s.files();
    let config = config(&s.endpoint()).part_size(5 << 20).expect("part size");
    let to = S3Location::parse("s3://exports/half.raw").expect("location");
    let mut sink = S3Sink::create(&config, creds(), &to, 20 << 20).expect("sink");
    sink.write(&vec![7u8; 12 << 20]).expect("two parts sent");
    drop(sink);
    assert_eq!(s.files(), before, "parts or an object left behind");
}

/// The upload id in a part request's query.
fn upload_id(target: &str) -> Option<String> {
    target
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("uploadId="))
        .map(str::to_string)
}

#[test]
fn parts_carry_content_md5_and_crc32c_and_survive_injected_faults() {
    let s = S3Server::start("faults");
    // Part 2: a 500, then a dropped connection; part 3: dropped halfway through its body,
    // then a 503; part 4: a stall longer than the timeout. Each then goes through.
    let proxy = FaultProxy::start(
        s.port(),
        vec![
            Rule::first("PUT", "partNumber=2", vec![Fault::Status(500), Fault::Drop]),
            Rule::first(
                "PUT",
                "partNumber=3",
                vec![Fault::DropMidBody, Fault::Status(503)],
            ),
            Rule::first(
                "PUT",
                "partNumber=4",
                vec![Fault::Stall(Duration::from_secs(3))],
            ),
        ],
    );
    let d = disk(23);
    let config = config(&proxy.endpoint())
        .retries(3)
        .timeout(Duration::from_secs(1))
        .part_size(5 << 20)
        .expect("part size");
    let to = S3Location::parse("s3://exports/faulty.vmdk").expect("location");
    let sink = S3Sink::create(&config, creds(), &to, d.len() as u64).expect("sink");
    let summary = export(sink, &d, Format::Vmdk).expect("export despite faults");
    let object = s.download("faulty.vmdk").expect("object");
    assert_eq!(
        summary.digest(DigestKind::Md5),
        Some(hex(&md5::Md5::digest(&object)).as_str())
    );
    let mut back = read_back(object, Format::Vmdk);
    back.truncate(d.len());
    assert!(back == d, "content differs");

    let records = proxy.records();
    let parts: Vec<_> = records
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
        .collect();
    let delivered = parts.iter().filter(|p| p.status == Some(200)).count();
    assert!(delivered >= 4, "at least four parts: {parts:#?}");
    assert_eq!(
        parts.len(),
        delivered + 5,
        "five faults, each retried: {parts:#?}"
    );
    for p in parts.iter().filter(|p| p.fault.is_none()) {
        assert_eq!(p.status, Some(200), "{p:?}");
        assert_eq!(p.md5_ok, Some(true), "Content-MD5 of {}", p.target);
        assert_eq!(
            p.crc32c_ok,
            Some(true),
            "x-amz-checksum-crc32c of {}",
            p.target
        );
    }
    for (part, faults) in [
        ("partNumber=2&", 2),
        ("partNumber=3&", 2),
        ("partNumber=4&", 1),
    ] {
        let n = parts
            .iter()
            .filter(|p| format!("{}&", p.target).contains(part) && p.fault.is_some())
            .count();
        assert_eq!(n, faults, "{part}");
    }
    // The upload was declared with CRC32C and completed.
    assert!(records
        .iter()
        .any(|r| r.method == "POST" && r.target.contains("uploads")));
    assert!(records
        .iter()
        .any(|r| r.method == "POST" && r.target.contains("uploadId=") && r.status == Some(200)));
}

#[test]
fn failures_beyond_the_retry_budget_abort_the_upload() {
    let s = S3Server::start("budget");
    let before = s.files();
    let proxy = FaultProxy::start(
        s.port(),
        vec![Rule::always("PUT", "partNumber=3", Fault::Status(500))],
    );
    let d = disk(23);
    let config = config(&proxy.endpoint())
        .retries(2)
        .part_size(5 << 20)
        .expect("part size");
    let to = S3Location::parse("s3://exports/doomed.raw").expect("location");
    let sink = S3Sink::create(&config, creds(), &to, d.len() as u64).expect("sink");
    let err = export(sink, &d, Format::Raw).expect_err("part 3 never goes through");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("part 3"), "{err}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");

    let records = proxy.records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.target.contains("partNumber=3&") || r.target.ends_with("partNumber=3"))
            .count(),
        3
    );
    let id = records
        .iter()
        .find_map(|r| upload_id(&r.target))
        .expect("an upload was started");
    assert!(
        records
            .iter()
            .any(|r| r.method == "DELETE" && r.target.contains(&id) && r.status == Some(204)),
        "the upload was aborted: {records:#?}"
    );
    assert!(s.download("doomed.raw").is_none(), "no object");
    assert!(
        matches!(s.listed_parts("doomed.raw", &id), None | Some(0)),
        "parts left behind"
    );
    // The server keeps an upload as a marker file plus part files: none remain.
    assert_eq!(s.files(), before, "nothing left in the server's storage");
}
