//! Which certificates an object-storage server may present: the bundled Mozilla roots, the
//! system's store (which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`), and an optional PEM
//! bundle of private CAs (a private S3/OBS endpoint behind an internal CA).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use imgconv::{Error, ErrorKind, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The client settings for these roots, plus the certificates of `bundle` if given.
pub(crate) fn client_config(bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    static DEFAULT: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> =
        OnceLock::new();
    match bundle {
        None => DEFAULT
            .get_or_init(|| build(None).map_err(|e| e.message().to_string()))
            .clone()
            .map_err(|m| Error::new(ErrorKind::Io, m)),
        Some(path) => build(Some(path)),
    }
}

fn build(bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system's store; certificates it cannot parse are skipped, as browsers skip them.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = bundle {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<std::result::Result<_, _>>())
            .map_err(|e| {
                Error::invalid_argument("CA bundle: not a PEM certificate file")
                    .with_source(e)
                    .with_path(path)
            })?;
        if certs.is_empty() {
            return Err(
                Error::invalid_argument("CA bundle: no certificate in the file").with_path(path),
            );
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                Error::invalid_argument("CA bundle: unusable certificate")
                    .with_source(e)
                    .with_path(path)
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Internal, "TLS settings").with_source(e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_must_hold_pem_certificates() {
        let dir = std::env::temp_dir().join(format!("imgconv-tls-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let empty = dir.join("empty.pem");
        let _ = std::fs::write(&empty, "no certificate here\n");
        for path in [empty.as_path(), Path::new("/nonexistent/ca.pem")] {
            let kind = client_config(Some(path)).err().map(|e| e.kind());
            assert_eq!(kind, Some(ErrorKind::InvalidArgument), "{}", path.display());
        }
        // The file system's answer is the cause, not part of the message.
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem"))).err();
        assert!(missing.is_some_and(|e| std::error::Error::source(&e).is_some()));
        assert!(client_config(None).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
