//! An HTTPS front for a local server: TLS with a certificate from a throwaway CA made for the
//! test, the request forwarded over plain HTTP to the server behind, one request per connection
//! (the answer says `connection: close`).

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::http::{forward, read_head, LocalListener};

/// An HTTPS endpoint in front of `127.0.0.1:upstream`; stops when dropped.
pub struct TlsFront {
    listener: LocalListener,
    ca_pem: String,
}

impl TlsFront {
    /// Start it: a new CA, a certificate for `127.0.0.1` signed by it, a listener.
    pub fn start(upstream: u16) -> TlsFront {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imgconv test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("parameters");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let chain = vec![cert.der().clone()];
        let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .expect("server key DER");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .expect("server TLS settings");
        let config = Arc::new(config);
        let listener = LocalListener::start("TLS front", move |conn| {
            serve(conn, config.clone(), upstream)
        });
        TlsFront {
            listener,
            ca_pem: ca.pem(),
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.listener.port())
    }

    /// The CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

fn serve(conn: TcpStream, config: Arc<rustls::ServerConfig>, upstream: u16) {
    let Ok(server) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = BufReader::new(rustls::StreamOwned::new(server, conn));
    if let Some((req, len)) = read_head(&mut tls) {
        let mut body = vec![0; len];
        if tls.read_exact(&mut body).is_err() {
            return;
        }
        let req = crate::http::Request { body, ..req };
        let Some((_, out)) = forward(&req, upstream) else {
            return;
        };
        let stream = tls.get_mut();
        let _ = stream.write_all(&out);
        let _ = stream.flush();
        stream.conn.send_close_notify();
        let _ = stream.flush();
    }
}
