//! The OCI pre-authenticated request sink against a server that implements the PAR protocol
//! as Oracle documents it (`imgconv_testkit::ParServer`): a single PUT for a small object,
//! the multipart protocol for a large one (also through injected faults), abort on failure,
//! and a refused PAR.

mod common;

use common::export;
use imgconv::{ErrorKind, Format, Summary};
use imgconv_export::{ParConfig, ParSink, ParUrl};
use imgconv_testkit::{Fault, FaultProxy, ParServer, Rule};

fn check(object: Vec<u8>, summary: &Summary, d: &[u8], format: Format) {
    common::check(object, summary, d, format, "object");
}

/// A disk with zeros and random data; `mib` MiB plus 3 KiB.
fn disk(mib: usize) -> Vec<u8> {
    imgconv_testkit::mixed_disk(mib, 0x0bad_cafe_1234_5678)
}

#[test]
fn small_objects_go_in_one_put_and_large_ones_by_the_par_multipart_protocol() {
    let server = ParServer::start();
    let config = ParConfig::new().part_size(5 << 20).expect("part size");

    let small = disk(2);
    let url = ParUrl::parse(&server.par_url("small.vhd")).expect("PAR URL");
    let sink = ParSink::create(&config, &url, small.len() as u64).expect("sink");
    let summary = export(sink, &small, Format::Vhd).expect("export");
    check(
        server.object("small.vhd").expect("object"),
        &summary,
        &small,
        Format::Vhd,
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "one PUT: {reqs:?}");
    assert_eq!(reqs[0].0, "PUT");

    let large = disk(23);
    for (name, format) in [("large.vmdk", Format::Vmdk), ("large.qcow2", Format::Qcow2)] {
        let before = server.requests().len();
        let url = ParUrl::parse(&server.par_url(name)).expect("PAR URL");
        let sink = ParSink::create(&config, &url, large.len() as u64).expect("sink");
        let summary = export(sink, &large, format).expect("export");
        check(
            server.object(name).expect("object"),
            &summary,
            &large,
            format,
        );
        let reqs: Vec<_> = server.requests().split_off(before);
        let parts = reqs
            .iter()
            .filter(|(m, t)| m == "PUT" && t.contains("/u/"))
            .count();
        assert!(parts >= 3, "at least three parts: {reqs:?}");
        assert_eq!(reqs.first().map(|r| r.0.as_str()), Some("PUT"));
        assert!(reqs.first().is_some_and(|r| r.1.contains("/o/")));
        assert_eq!(reqs.last().map(|r| r.0.as_str()), Some("POST"), "committed");
    }
    assert_eq!(server.pending_uploads(), 0);
}

#[test]
fn par_parts_are_retried_through_faults_and_a_lost_cause_is_aborted() {
    let server = ParServer::start();
    let d = disk(16);
    let proxy = FaultProxy::start(
        server.port(),
        vec![
            Rule::first("PUT", "/2", vec![Fault::Status(503), Fault::Drop]),
            Rule::always("PUT", "/doomed.raw/id/upload-0002/3", Fault::Status(500)),
        ],
    );
    let through = |object: &str| {
        server.par_url(object).replace(
            &format!("http://127.0.0.1:{}/", server.port()),
            &format!("{}/", proxy.endpoint()),
        )
    };
    let config = ParConfig::new()
        .part_size(5 << 20)
        .expect("part size")
        .retries(2);
    let url = ParUrl::parse(&through("faulty.raw")).expect("PAR URL");
    let sink = ParSink::create(&config, &url, d.len() as u64).expect("sink");
    let summary = export(sink, &d, Format::Raw).expect("export despite faults");
    check(
        server.object("faulty.raw").expect("object"),
        &summary,
        &d,
        Format::Raw,
    );
    let records = proxy.records();
    for r in records
        .iter()
        .filter(|r| r.fault.is_none() && r.body_len > 0)
    {
        assert_eq!(r.md5_ok, Some(true), "Content-MD5 of {}", r.target);
    }
    assert_eq!(records.iter().filter(|r| r.fault.is_some()).count(), 2);

    let url = ParUrl::parse(&through("doomed.raw")).expect("PAR URL");
    let sink = ParSink::create(&config, &url, d.len() as u64).expect("sink");
    let err = export(sink, &d, Format::Raw).expect_err("part 3 never goes through");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("part 3"), "{err}");
    assert!(
        !err.to_string().contains("pAr-T0ken"),
        "the token is a secret: {err}"
    );
    assert!(server.object("doomed.raw").is_none(), "no object");
    assert_eq!(server.pending_uploads(), 0, "the upload was aborted");
    assert!(server
        .requests()
        .iter()
        .any(|(m, t)| m == "DELETE" && t.contains("upload-0002")));
}

#[test]
fn a_par_that_does_not_exist_is_refused_clearly() {
    let server = ParServer::start();
    let d = disk(1);
    let wrong = server.par_url("x.raw").replace("pAr-T0ken_9f3c", "expired");
    let url = ParUrl::parse(&wrong).expect("PAR URL");
    let sink = ParSink::create(&ParConfig::new(), &url, d.len() as u64).expect("sink");
    let err = export(sink, &d, Format::Raw).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(!err.to_string().contains("/p/expired"), "{err}");
}
