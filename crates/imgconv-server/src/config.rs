//! The service's configuration file (TOML). Relative paths are relative to the file's folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use imgconv::{Error, Result};
use imgconv_export::jobs::StoreLocation;
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, `127.0.0.1:8787`.
    pub listen: SocketAddr,
    /// The absolute base URL clients reach this service at (ZStack job locations and image
    /// URLs are built on it).
    pub public_url: String,
    /// The job store: an SQLite file (one host), or a PostgreSQL URL
    /// `postgres://USER:PASSWORD@HOST:PORT/DBNAME` that a fleet of instances shares.
    pub db: String,
    /// Exports that run at once.
    #[serde(default = "one")]
    pub workers: usize,
    /// PEM certificate chain: with `tls_key`, the service speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted, bytes (default 1 MiB).
    #[serde(default = "max_body")]
    pub max_body: usize,
    /// Seconds a client has to send a whole request (default 30).
    #[serde(default = "request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds a worker holds a job without renewing its lease (default 30; renewed every
    /// third of it). A job whose lease lapses (its instance died or stalled) is taken over by
    /// any instance on the same job store.
    #[serde(default = "lease")]
    pub lease_secs: u64,
    /// An export whose storage stays unreachable past a request's retries is requeued and
    /// not started again before this many seconds, doubled at each further attempt (3
    /// attempts in all): with the default 30, the storage may be away for about 100 s.
    #[serde(default = "retry_delay")]
    pub retry_delay_secs: u64,
    /// The object storage exports go to.
    pub storage: Storage,
    /// Image ids the APIs name, and the disk files they stand for: a path (a public image,
    /// any account may export it) or `{ path, owner, shared_with }`.
    #[serde(default)]
    pub images: BTreeMap<String, Image>,
    /// EVS volume ids, and the disk files they stand for (owned as images are).
    #[serde(default)]
    pub volumes: BTreeMap<String, Image>,
    /// EC2 instance ids (`CreateInstanceExportTask`), and the disk files of their root
    /// volumes (owned as images are).
    #[serde(default)]
    pub instances: BTreeMap<String, Image>,
    /// The accounts' grants: the buckets each may export into, and its own storage keys.
    /// An account not listed may export into any bucket with the service's keys.
    #[serde(default)]
    pub accounts: Vec<Account>,
    /// Huawei IMS and EVS settings.
    pub huawei: Option<Huawei>,
    /// OCI settings.
    pub oci: Option<Oci>,
    /// ZStack settings.
    pub zstack: Option<Zstack>,
    /// Who may call.
    #[serde(default)]
    pub callers: Vec<Caller>,
}

fn one() -> usize {
    1
}
fn max_body() -> usize {
    1 << 20
}
fn request_timeout() -> u64 {
    30
}
fn lease() -> u64 {
    30
}
fn retry_delay() -> u64 {
    30
}
fn session_timeout() -> u64 {
    7200
}

/// An S3-compatible object storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Endpoint URL.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

/// A disk the APIs may export, and who may see it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "ImageEntry")]
pub struct Image {
    /// The disk file.
    pub path: PathBuf,
    /// The account that owns it; `None`: public (every account sees it).
    pub owner: Option<String>,
    /// Other accounts that may export it.
    pub shared_with: Vec<String>,
}

impl Image {
    /// A public image at `path`.
    pub fn public(path: impl Into<PathBuf>) -> Image {
        Image {
            path: path.into(),
            owner: None,
            shared_with: Vec::new(),
        }
    }

    /// Whether `account` may see (and export) it.
    pub fn visible_to(&self, account: &str) -> bool {
        match &self.owner {
            None => true,
            Some(o) => o == account || self.shared_with.iter().any(|a| a == account),
        }
    }
}

/// An image as the file writes it: a path, or a table.
#[derive(Deserialize)]
#[serde(untagged)]
enum ImageEntry {
    Path(PathBuf),
    Owned {
        path: PathBuf,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        shared_with: Vec<String>,
    },
}

impl From<ImageEntry> for Image {
    fn from(e: ImageEntry) -> Image {
        match e {
            ImageEntry::Path(path) => Image::public(path),
            ImageEntry::Owned {
                path,
                owner,
                shared_with,
            } => Image {
                path,
                owner,
                shared_with,
            },
        }
    }
}

/// An account's grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The account's id (an AWS account number, an OCI tenancy, a Huawei project, a ZStack
    /// account name): what its callers' `account` names.
    pub id: String,
    /// The buckets it may export into: `bucket`, or `bucket/prefix/` for the keys under a
    /// prefix. Absent: every bucket.
    pub buckets: Option<Vec<String>>,
    /// Its own object-storage keys (what AWS calls the `vmimport` role), and optionally its
    /// own endpoint and region; absent: the service's `[storage]`.
    pub storage: Option<AccountStorage>,
}

/// An account's own object storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountStorage {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Endpoint URL (default: the service's).
    pub endpoint: Option<String>,
    /// Signing region (default: the service's).
    pub region: Option<String>,
}

/// Huawei Cloud settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Huawei {
    /// The project id in the APIs' paths.
    pub project_id: String,
    /// Where EVS `os-volume_upload_image` writes the images it makes.
    pub image_store: PathBuf,
}

/// OCI settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oci {
    /// The Object Storage namespace that `[storage]` serves.
    pub namespace: String,
    /// The compartment the images are in.
    pub compartment_id: String,
}

/// ZStack settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zstack {
    /// The backup storage's UUID in the API's path.
    pub backup_storage_uuid: String,
    /// The folder exports go to, served at `public_url` + `/export/`.
    pub publish_dir: PathBuf,
    /// Seconds a login session lasts (default 7200).
    #[serde(default = "session_timeout")]
    pub session_timeout_secs: u64,
}

/// One caller's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "api", rename_all = "lowercase", deny_unknown_fields)]
pub enum Caller {
    /// AWS SigV4 keys.
    Aws {
        /// The account the key acts for (default `default`).
        #[serde(default)]
        account: Option<String>,
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: String,
    },
    /// An OCI API signing key.
    Oci {
        /// The account (tenancy) the key acts for (default `default`).
        #[serde(default)]
        account: Option<String>,
        /// `TENANCY/USER/FINGERPRINT`.
        key_id: String,
        /// The PEM public key.
        public_key_file: PathBuf,
    },
    /// Huawei AK/SK (IMS and EVS).
    Huawei {
        /// The account (project) the key acts for (default `default`).
        #[serde(default)]
        account: Option<String>,
        /// Access key.
        access_key: String,
        /// Secret key.
        secret_key: String,
    },
    /// A ZStack account.
    Zstack {
        /// Account name.
        account: String,
        /// Hex SHA-512 of the password, as ZStack clients send it.
        password_sha512: String,
    },
}

impl Caller {
    /// The provider this caller's key is for.
    pub fn provider(&self) -> crate::Provider {
        match self {
            Caller::Aws { .. } => crate::Provider::Aws,
            Caller::Oci { .. } => crate::Provider::Oci,
            Caller::Huawei { .. } => crate::Provider::Huawei,
            Caller::Zstack { .. } => crate::Provider::Zstack,
        }
    }

    /// The key id a verified request names (a ZStack account's login name).
    pub fn key_id(&self) -> &str {
        match self {
            Caller::Aws { access_key_id, .. } => access_key_id,
            Caller::Oci { key_id, .. } => key_id,
            Caller::Huawei { access_key, .. } => access_key,
            Caller::Zstack { account, .. } => account,
        }
    }

    /// The account this caller acts for (a ZStack account is its login name).
    pub fn account(&self) -> &str {
        let named = match self {
            Caller::Aws { account, .. }
            | Caller::Oci { account, .. }
            | Caller::Huawei { account, .. } => account.as_deref(),
            Caller::Zstack { account, .. } => Some(account.as_str()),
        };
        named
            .filter(|a| !a.is_empty())
            .unwrap_or(imgconv_export::jobs::DEFAULT_ACCOUNT)
    }
}

impl Config {
    /// The grants of `account`, if the file lists it.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    /// Read and check the file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path.display().to_string(), e))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, &base)
    }

    /// Parse a configuration; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config> {
        let mut c: Config = toml::from_str(text)
            .map_err(|e| Error::invalid_argument("configuration").with_source(e))?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let StoreLocation::Sqlite(p) = StoreLocation::parse(&c.db) {
            if p.is_relative() {
                c.db = base.join(p).to_string_lossy().into_owned();
            }
        }
        c.tls_cert.as_mut().map(abs);
        c.tls_key.as_mut().map(abs);
        for map in [&mut c.images, &mut c.volumes, &mut c.instances] {
            map.values_mut().for_each(|i| abs(&mut i.path));
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &c.accounts {
            if a.id.is_empty() || !seen.insert(a.id.as_str()) {
                return Err(Error::invalid_argument(format!(
                    "configuration: account '{}' is empty or listed twice",
                    a.id
                )));
            }
        }
        if let Some(h) = &mut c.huawei {
            abs(&mut h.image_store);
        }
        if let Some(z) = &mut c.zstack {
            abs(&mut z.publish_dir);
        }
        for caller in &mut c.callers {
            if let Caller::Oci {
                public_key_file, ..
            } = caller
            {
                abs(public_key_file);
            }
        }
        if c.lease_secs < 3 {
            return Err(Error::invalid_argument(
                "configuration: lease_secs must be at least 3",
            ));
        }
        if c.workers == 0 {
            return Err(Error::invalid_argument(
                "configuration: workers must be at least 1",
            ));
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return Err(Error::invalid_argument(
                "configuration: tls_cert and tls_key go together",
            ));
        }
        url::Url::parse(&c.public_url)
            .map_err(|e| Error::invalid_argument("configuration: public_url").with_source(e))?;
        c.public_url = c.public_url.trim_end_matches('/').to_string();
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_db(db: &str) -> Result<Config> {
        Config::parse(
            &format!(
                "listen = \"127.0.0.1:0\"\npublic_url = \"http://h/\"\ndb = \"{db}\"\n\
                 [storage]\nendpoint = \"http://s\"\nregion = \"r\"\n\
                 access_key_id = \"a\"\nsecret_access_key = \"b\"\n"
            ),
            Path::new("/etc/imgconv"),
        )
    }

    #[test]
    fn a_path_is_taken_from_the_config_folder_and_a_postgres_url_is_kept() -> Result<()> {
        assert_eq!(with_db("jobs.sqlite")?.db, "/etc/imgconv/jobs.sqlite");
        assert_eq!(with_db("/var/lib/jobs.sqlite")?.db, "/var/lib/jobs.sqlite");
        let url = "postgres://imgconv:pw@db.internal:5432/imgconv";
        assert_eq!(with_db(url)?.db, url);
        assert!(StoreLocation::parse(&with_db(url)?.db).is_postgres());
        Ok(())
    }

    #[test]
    fn a_parse_error_keeps_its_cause_out_of_the_message() {
        let Err(e) = Config::parse("listen = [", Path::new("/etc/imgconv")) else {
            panic!("a broken configuration parsed");
        };
        assert_eq!(e.kind(), imgconv::ErrorKind::InvalidArgument);
        assert_eq!(e.message(), "configuration");
        let cause = std::error::Error::source(&e).map(|c| c.to_string());
        assert!(cause.is_some_and(|c| !c.is_empty()));
        assert!(e.to_string_with_causes().starts_with("configuration: "));
    }
}
