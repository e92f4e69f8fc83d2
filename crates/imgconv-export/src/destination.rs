//! Where an output goes, resolved once for every caller (the command line, `imgconv serve`,
//! an embedding service): an output name that is a bucket URL (`s3://`, `obs://`, `oci://`)
//! or an OCI pre-authenticated request, the endpoint and region as the AWS CLI finds them,
//! transfer settings, and a published folder.

use std::path::{Path, PathBuf};

use imgconv::{Error, Result};

use crate::{Credentials, ParConfig, ParUrl, S3Config, S3Location, Target};

/// An upload destination named where an output path goes.
#[derive(Debug, Clone)]
pub enum Remote {
    /// A bucket and key; `scheme` is `s3`, `obs` or `oci`.
    S3 {
        /// The URL's scheme.
        scheme: String,
        /// Bucket and key.
        location: S3Location,
    },
    /// An OCI pre-authenticated request.
    Par(ParUrl),
}

impl Remote {
    /// The name whose extension tells the output format (the key or object name).
    pub fn name(&self) -> PathBuf {
        match self {
            Remote::S3 { location, .. } => PathBuf::from(&location.key),
            Remote::Par(url) => PathBuf::from(url.object()),
        }
    }
}

/// The upload destination `output` names, if it names one; `None` for a local path. An
/// http(s) URL that is not a pre-authenticated request is refused.
pub fn parse_remote(output: &Path) -> Result<Option<Remote>> {
    let Some(text) = output.to_str() else {
        return Ok(None);
    };
    if let Some((scheme @ ("s3" | "obs" | "oci"), _)) = text.split_once("://") {
        return Ok(Some(Remote::S3 {
            scheme: scheme.to_string(),
            location: S3Location::parse(text)?,
        }));
    }
    if ParUrl::looks_like(text) {
        return Ok(Some(Remote::Par(ParUrl::parse(text)?)));
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        return Err(Error::invalid_argument(
            "an http(s) output must be an OCI pre-authenticated request URL \
             (.../p/TOKEN/n/NS/b/BUCKET/o/OBJECT); for other buckets use s3://BUCKET/KEY \
             with an endpoint",
        ));
    }
    Ok(None)
}

/// A variable of the environment, unless it is unset or empty.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The signing region: `given`, else `$AWS_REGION`, `$AWS_DEFAULT_REGION`, the profile's
/// `region` in the shared config file, `us-east-1`.
pub fn resolve_region(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| env_var("AWS_REGION"))
        .or_else(|| env_var("AWS_DEFAULT_REGION"))
        .or_else(|| crate::profile_setting("region"))
        .unwrap_or_else(|| "us-east-1".into())
}

/// The S3-compatible endpoint: `given`, else `$AWS_ENDPOINT_URL_S3`, `$AWS_ENDPOINT_URL`,
/// the profile's `endpoint_url` in the shared config file (where the AWS CLI and SDKs look).
pub fn resolve_endpoint(given: Option<&str>) -> Option<String> {
    given
        .map(str::to_string)
        .or_else(|| env_var("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env_var("AWS_ENDPOINT_URL"))
        .or_else(|| crate::profile_setting("endpoint_url"))
}

/// How uploads are made: what a caller may set, the rest from the environment and defaults.
#[derive(Debug, Clone, Default)]
pub struct UploadSettings {
    /// The S3-compatible endpoint (else [`resolve_endpoint`]; for `s3://`, then AWS's).
    pub endpoint: Option<String>,
    /// The signing region (else [`resolve_region`]).
    pub region: Option<String>,
    /// Virtual-hosted-style bucket addressing.
    pub virtual_hosted: bool,
    /// Leave out the CRC-32C part checksums.
    pub no_crc32c: bool,
    /// Part size in bytes.
    pub part_size: Option<u64>,
    /// Parts in flight.
    pub parallel_parts: Option<usize>,
    /// Retries per request.
    pub retries: Option<u32>,
    /// Replace an existing object or file.
    pub overwrite: bool,
    /// A PEM bundle of CAs to trust besides the bundled and system roots.
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl UploadSettings {
    /// The S3 configuration for a bucket URL of `scheme` (`s3`, `obs`, `oci`): only `s3://`
    /// has a default endpoint (AWS's, in the region).
    pub fn s3_config(&self, scheme: &str) -> Result<S3Config> {
        let region = resolve_region(self.region.as_deref());
        let endpoint = match (resolve_endpoint(self.endpoint.as_deref()), scheme) {
            (Some(ep), _) => ep,
            (None, "s3") => format!("https://s3.{region}.amazonaws.com"),
            (None, _) => {
                return Err(Error::invalid_argument(format!(
                    "{scheme}:// needs an endpoint (or $AWS_ENDPOINT_URL_S3) (OBS: \
                     https://obs.REGION.myhuaweicloud.com; OCI: \
                     https://NAMESPACE.compat.objectstorage.REGION.oraclecloud.com)"
                )))
            }
        };
        let mut c = self.transfer(
            S3Config::new(&endpoint, &region)?.overwrite(self.overwrite),
            S3Config::part_size,
            S3Config::parallel_parts,
            S3Config::retries,
        )?;
        if self.virtual_hosted {
            c = c.virtual_hosted();
        }
        if self.no_crc32c {
            c = c.without_crc32c();
        }
        if let Some(bundle) = &self.ca_bundle {
            c = c.ca_bundle(bundle)?;
        }
        Ok(c)
    }

    /// The configuration for an OCI pre-authenticated request.
    pub fn par_config(&self) -> Result<ParConfig> {
        let c = self.transfer(
            ParConfig::new(),
            ParConfig::part_size,
            ParConfig::parallel_parts,
            ParConfig::retries,
        )?;
        match &self.ca_bundle {
            Some(bundle) => c.ca_bundle(bundle),
            None => Ok(c),
        }
    }

    /// Apply the part size, parts in flight and retries through a config's own setters.
    fn transfer<C>(
        &self,
        mut c: C,
        part_size: fn(C, u64) -> Result<C>,
        parallel: fn(C, usize) -> C,
        retries: fn(C, u32) -> C,
    ) -> Result<C> {
        if let Some(p) = self.part_size {
            c = part_size(c, p)?;
        }
        if let Some(n) = self.parallel_parts {
            c = parallel(c, n);
        }
        if let Some(n) = self.retries {
            c = retries(c, n);
        }
        Ok(c)
    }

    /// The target for `remote`, with the environment's keys for a bucket.
    pub fn target(&self, remote: Remote) -> Result<Target> {
        Ok(match remote {
            Remote::S3 { scheme, location } => Target::S3 {
                config: self.s3_config(&scheme)?,
                credentials: Credentials::from_env()?,
                location,
            },
            Remote::Par(url) => Target::Par {
                config: self.par_config()?,
                url,
            },
        })
    }
}

/// A file output published under `base_url` (an http or https URL): the folder target.
pub fn folder_target(output: &Path, base_url: &str, overwrite: bool) -> Result<Target> {
    let base_url = url::Url::parse(base_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "the publish URL '{base_url}' is not an http(s) URL"
            ))
        })?;
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid_argument("the output needs a UTF-8 file name"))?
        .to_string();
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Target::Folder {
        dir,
        name,
        base_url,
        overwrite,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_name_buckets_pars_or_files() {
        let r = parse_remote(Path::new("obs://b/k/disk.vhd")).ok().flatten();
        assert!(
            matches!(&r, Some(Remote::S3 { scheme, location }) if scheme == "obs" && location.key == "k/disk.vhd"),
            "{r:?}"
        );
        assert!(matches!(parse_remote(Path::new("disk.raw")), Ok(None)));
        assert!(parse_remote(Path::new("https://example.com/disk.raw")).is_err());
        let par = "https://objectstorage.eu-frankfurt-1.oraclecloud.com/p/TOKEN/n/ns/b/bk/o/d.vmdk";
        let r = parse_remote(Path::new(par)).ok().flatten();
        assert_eq!(r.map(|r| r.name()), Some(PathBuf::from("d.vmdk")));
    }

    #[test]
    fn only_s3_has_a_default_endpoint() {
        let s = UploadSettings {
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..UploadSettings::default()
        };
        assert!(s.s3_config("obs").is_ok());
        let t = folder_target(Path::new("/srv/x/disk.qcow2"), "ftp://h/", false);
        assert!(t.is_err());
        let t = folder_target(Path::new("disk.qcow2"), "http://h/images/", true);
        assert!(
            matches!(t, Ok(Target::Folder { dir, name, .. }) if dir == Path::new(".") && name == "disk.qcow2")
        );
    }
}
