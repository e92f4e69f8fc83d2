//! Just enough HTTP/1.1 for the test servers: requests with a `Content-Length` body, and
//! responses read to the end of the connection.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A listener on a free port of 127.0.0.1 that hands each connection to `handle` on a thread
/// of its own; stops accepting when dropped.
pub(crate) struct LocalListener {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl LocalListener {
    pub(crate) fn start(
        what: &str,
        handle: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> LocalListener {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {what}: {e}"));
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, handle) = (stop.clone(), Arc::new(handle));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let handle = handle.clone();
                std::thread::spawn(move || handle(conn));
            }
        });
        LocalListener { port, stop }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Send `req` (head and body) to `127.0.0.1:upstream` on a connection the server closes after
/// answering; the answer's status, and the answer rewritten to say `connection: close` (the
/// client's connection ends with it too).
pub(crate) fn forward(req: &Request, upstream: u16) -> Option<(Option<u16>, Vec<u8>)> {
    let answer = TcpStream::connect(("127.0.0.1", upstream))
        .and_then(|mut up| {
            up.write_all(&req.head_closing())?;
            up.write_all(&req.body)?;
            let mut out = Vec::new();
            up.read_to_end(&mut out)?;
            Ok(out)
        })
        .ok()?;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(answer.len());
    let head = String::from_utf8_lossy(&answer[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(answer.get(head_end..).unwrap_or(&[]));
    Some((status, out))
}

/// A request as received.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Path and query, as sent.
    pub(crate) target: String,
    /// Header names in lower case, values as sent.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request head with `Connection: close`, as bytes to forward.
    pub(crate) fn head_closing(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (k, v) in &self.headers {
            if k != "connection" {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("connection: close\r\n\r\n");
        head.into_bytes()
    }
}

/// Read one request's head; `None` at the end of the connection. The body is left unread.
pub(crate) fn read_head(r: &mut impl BufRead) -> Option<(Request, usize)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    Some((
        Request {
            method,
            target,
            headers,
            body: Vec::new(),
        },
        len,
    ))
}

/// Read one whole request.
pub(crate) fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let (mut req, len) = read_head(r)?;
    req.body = vec![0; len];
    r.read_exact(&mut req.body).ok()?;
    Some(req)
}

/// Write a response with a body and the given extra headers.
pub(crate) fn respond(
    w: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}
