//! An HTTPS front for a local server: TLS with a certificate from a throwaway CA made for the
//! test, the request forwarded over plain HTTP to the server behind, one request per connection
//! (the answer says `connection: close`).

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::http::read_head;

/// An HTTPS endpoint in front of `127.0.0.1:upstream`; stops when dropped.
pub struct TlsFront {
    port: u16,
    ca_pem: String,
    stop: Arc<AtomicBool>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let config = config.clone();
                std::thread::spawn(move || serve(conn, config, upstream));
            }
        });
        TlsFront {
            port,
            ca_pem: ca.pem(),
            stop,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
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
        let answer = TcpStream::connect(("127.0.0.1", upstream)).and_then(|mut up| {
            up.write_all(&req.head_closing())?;
            up.write_all(&body)?;
            let mut out = Vec::new();
            up.read_to_end(&mut out)?;
            Ok(out)
        });
        let Ok(answer) = answer else { return };
        // The answer as the server sent it, then this connection ends (it says so).
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(answer.len());
        let head = String::from_utf8_lossy(&answer[..head_end]).to_string();
        let mut lines: Vec<&str> = head
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .collect();
        lines.push("connection: close");
        let mut out = lines.join("\r\n").into_bytes();
        out.extend_from_slice(answer.get(head_end..).unwrap_or(&[]));
        let stream = tls.get_mut();
        let _ = stream.write_all(&out);
        let _ = stream.flush();
        stream.conn.send_close_notify();
        let _ = stream.flush();
    }
}
