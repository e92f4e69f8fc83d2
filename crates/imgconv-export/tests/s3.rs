//! The S3 sink against a real S3-compatible server that checks SigV4 signatures (`s3s-fs`,
//! which the README's test command installs): single-part and multipart exports in every
//! streamable format, digests against the downloaded bytes, the content converted back, bad
//! credentials, a missing bucket, and an abandoned upload that leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use imgconv::{
    convert, open_source, CancelToken, ConvertOptions, Destination, DigestKind, ErrorKind, Format,
    MemSource, NoProgress, Sink, Summary,
};
use imgconv_export::{Credentials, S3Config, S3Location, S3Sink};
use md5::Digest as _;

const KEY: &str = "test-access-key";
const SECRET: &str = "test-secret-key-0123456789";

struct Server {
    child: Child,
    port: u16,
    root: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> String {
    std::env::var("IMGCONV_S3S_FS").unwrap_or_else(|_| "s3s-fs".into())
}

/// Start `s3s-fs` with keys on a free port, with bucket `exports`.
fn server(name: &str) -> Server {
    let root = std::env::temp_dir().join(format!("imgconv-s3-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("exports")).expect("root");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child: Child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs is required (the test command installs it; or set IMGCONV_S3S_FS)");
    // The server is killed and waited for when it drops, whatever happens next.
    let server = Server { child, port, root };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("s3s-fs did not start");
}

impl Server {
    fn config(&self) -> S3Config {
        S3Config::new(&format!("http://127.0.0.1:{}", self.port), "us-east-1")
            .expect("config")
            .retries(1)
    }

    /// GET the object through the server.
    fn download(&self, key: &str) -> Vec<u8> {
        let bucket = rusty_s3::Bucket::new(
            url::Url::parse(&format!("http://127.0.0.1:{}", self.port)).expect("url"),
            rusty_s3::UrlStyle::Path,
            "exports".to_string(),
            "us-east-1".to_string(),
        )
        .expect("bucket");
        let creds = rusty_s3::Credentials::new(KEY, SECRET);
        use rusty_s3::S3Action as _;
        let url = bucket
            .get_object(Some(&creds), key)
            .sign(Duration::from_secs(600));
        let resp = ureq::get(url.as_str()).call().expect("GET object");
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut out).expect("body");
        out
    }

    /// Every file under the server's root, relative to it.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap_or(&p).display().to_string());
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.root, &self.root, &mut v);
        v.sort();
        v
    }
}

/// A disk with holes, zeros and random data; `mib` MiB plus 3 KiB.
fn disk(mib: usize) -> Vec<u8> {
    let mut d = vec![0u8; mib * (1 << 20) + 3072];
    let mut x = 0x1234_5678_9abc_def0u64;
    let n = d.len();
    for (i, b) in d.iter_mut().enumerate() {
        if (i / (1 << 20)) % 3 != 1 || i + 4096 > n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    d
}

fn export(sink: S3Sink, disk: &[u8], format: Format) -> imgconv::Result<Summary> {
    let reader = open_source(Box::new(MemSource::new(disk.to_vec())), Some(Format::Raw))?;
    let opts = ConvertOptions::new(format).with_digests(&[DigestKind::Md5, DigestKind::Sha256]);
    convert(
        &*reader,
        Destination::Sink(Box::new(sink)),
        &opts,
        &NoProgress,
        &CancelToken::new(),
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The object's content read back as a disk, through imgconv's own reader for `format`.
fn read_back(object: Vec<u8>, format: Format) -> Vec<u8> {
    let r = open_source(Box::new(MemSource::new(object)), Some(format)).expect("open object");
    let mut out = vec![0u8; r.virtual_size() as usize];
    r.read_at(0, &mut out).expect("read object");
    out
}

#[test]
fn exports_in_every_streamable_format_verify_single_and_multipart() {
    let s = server("formats");
    let creds = Credentials::new(KEY, SECRET, None);
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
        let mut config = s.config();
        if let Some(p) = part {
            config = config.part_size(p).expect("part size");
        }
        let to = S3Location::parse(&format!("s3://exports/{name}")).expect("location");
        let sink = S3Sink::create(&config, creds.clone(), &to, d.len() as u64).expect("sink");
        let summary = export(sink, d, format).expect("export");
        let object = s.download(name);
        assert_eq!(object.len() as u64, summary.output_size, "{name}");
        if part.is_some() {
            assert!(object.len() > 2 * (5 << 20), "{name}: at least three parts");
        } else {
            assert!(object.len() < 5 << 20, "{name}: one part");
        }
        assert_eq!(
            summary.digest(DigestKind::Md5),
            Some(hex(&md5::Md5::digest(&object)).as_str()),
            "{name}"
        );
        assert_eq!(
            summary.digest(DigestKind::Sha256),
            Some(hex(&sha2::Sha256::digest(&object)).as_str()),
            "{name}"
        );
        let mut back = read_back(object, format);
        back.truncate(d.len());
        assert!(back == *d, "{name}: content differs");
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
    let s = server("errors");
    let d = disk(6);
    let config = s.config().part_size(5 << 20).expect("part size");
    let to = S3Location::parse("s3://exports/x.raw").expect("location");
    let bad = Credentials::new(KEY, "not-the-secret", None);
    let err = S3Sink::create(&config, bad, &to, d.len() as u64)
        .err()
        .expect("wrong secret");
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");

    let good = Credentials::new(KEY, SECRET, None);
    let nowhere = S3Location::parse("s3://no-such-bucket/x.raw").expect("location");
    let err = S3Sink::create(&config, good, &nowhere, d.len() as u64)
        .err()
        .expect("missing bucket");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
}

#[test]
fn an_abandoned_upload_is_aborted_and_leaves_nothing() {
    let s = server("abort");
    let before = s.files();
    let config = s.config().part_size(5 << 20).expect("part size");
    let to = S3Location::parse("s3://exports/half.raw").expect("location");
    let creds = Credentials::new(KEY, SECRET, None);
    let mut sink = S3Sink::create(&config, creds, &to, 20 << 20).expect("sink");
    sink.write(&vec![7u8; 12 << 20]).expect("two parts sent");
    drop(sink);
    assert_eq!(s.files(), before, "parts or an object left behind");
}
