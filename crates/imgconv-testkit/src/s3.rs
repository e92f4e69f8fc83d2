//! `s3s-fs`, started with access keys on a free port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};
use url::Url;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "test-access-key";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "test-secret-key-0123456789";

/// A running `s3s-fs` with a bucket `exports`; killed when dropped.
pub struct S3Server {
    child: Child,
    port: u16,
    root: PathBuf,
    access: String,
    secret: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl S3Server {
    /// Start the server (the binary is `$IMGCONV_S3S_FS`, or `s3s-fs` on `PATH`); `name`
    /// keeps each test's storage apart.
    pub fn start(name: &str) -> S3Server {
        S3Server::start_with_keys(name, ACCESS_KEY, SECRET_KEY)
    }

    /// Start a server that accepts only the keys `access` and `secret` (an account's own
    /// storage, which the service's keys cannot write).
    pub fn start_with_keys(name: &str, access: &str, secret: &str) -> S3Server {
        let root = std::env::temp_dir().join(format!("imgconv-s3-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("exports")).expect("server root");
        let port = crate::free_port();
        let bin = std::env::var("IMGCONV_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access, "--secret-key", secret])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "s3s-fs is required ({bin}: {e}); the test command installs it, \
                     or set IMGCONV_S3S_FS"
                )
            });
        let server = S3Server {
            child,
            port,
            root,
            access: access.to_string(),
            secret: secret.to_string(),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("s3s-fs did not start");
    }

    /// Add a bucket (a folder in the server's storage).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).expect("bucket folder");
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bucket(&self) -> Bucket {
        self.bucket_named("exports")
    }

    fn bucket_named(&self, name: &str) -> Bucket {
        Bucket::new(
            Url::parse(&self.endpoint()).expect("url"),
            UrlStyle::Path,
            name.to_string(),
            "us-east-1".to_string(),
        )
        .expect("bucket")
    }

    /// GET an object of bucket `exports`; `None` when there is none.
    pub fn download(&self, key: &str) -> Option<Vec<u8>> {
        self.download_from("exports", key)
    }

    /// GET an object of `bucket`; `None` when there is none.
    pub fn download_from(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let creds = Credentials::new(&self.access, &self.secret);
        let url = self
            .bucket_named(bucket)
            .get_object(Some(&creds), key)
            .sign(Duration::from_secs(600));
        match ureq::get(url.as_str()).call() {
            Ok(resp) => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut resp.into_reader(), &mut out).expect("body");
                Some(out)
            }
            Err(ureq::Error::Status(404, _)) => None,
            Err(e) => panic!("GET {key}: {e}"),
        }
    }

    /// How many parts ListParts shows for an upload (`None` when the server answers 404).
    /// `s3s-fs` has no ListMultipartUploads, and lists the part files that remain for an
    /// upload id whether or not the upload exists; [`S3Server::files`] shows its markers.
    pub fn listed_parts(&self, key: &str, upload_id: &str) -> Option<usize> {
        let creds = Credentials::new(&self.access, &self.secret);
        let url = self
            .bucket()
            .list_parts(Some(&creds), key, upload_id)
            .sign(Duration::from_secs(600));
        match ureq::get(url.as_str()).call() {
            Ok(r) => Some(r.into_string().expect("body").matches("<Part>").count()),
            Err(ureq::Error::Status(404, _)) => None,
            Err(e) => panic!("ListParts: {e}"),
        }
    }

    /// Every file under the server's storage, relative to it (objects, metadata, uploads).
    pub fn files(&self) -> Vec<String> {
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
