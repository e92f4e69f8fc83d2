//! A proxy that fails chosen requests on their way to the server.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use md5::{Digest as _, Md5};

use crate::http::{forward, read_head, respond, LocalListener, Request};

/// What the proxy does to a request instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Read the request, then close the connection without an answer.
    Drop,
    /// Close the connection halfway through the request's body.
    DropMidBody,
    /// Read the request, say nothing for this long, then close the connection.
    Stall(Duration),
}

/// Which requests fail, and how: the first `faults.len()` requests with `method` whose target
/// contains `contains` get those faults in order; with `always`, every such request after them
/// gets it too.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The HTTP method.
    pub method: String,
    /// A piece of the path or query (`partNumber=2`).
    pub contains: String,
    /// The faults for the first matching requests.
    pub faults: Vec<Fault>,
    /// The fault for every later matching request.
    pub always: Option<Fault>,
}

impl Rule {
    /// The first matching requests get `faults`, later ones go through.
    pub fn first(method: &str, contains: &str, faults: Vec<Fault>) -> Rule {
        Rule {
            method: method.into(),
            contains: contains.into(),
            faults,
            always: None,
        }
    }

    /// Every matching request gets `fault`.
    pub fn always(method: &str, contains: &str, fault: Fault) -> Rule {
        Rule {
            method: method.into(),
            contains: contains.into(),
            faults: Vec::new(),
            always: Some(fault),
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Record {
    /// The HTTP method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// The server's status, when forwarded.
    pub status: Option<u16>,
    /// Bytes in the body.
    pub body_len: usize,
    /// Whether the body matched its `Content-MD5` (`None`: no such header).
    pub md5_ok: Option<bool>,
    /// Whether the body matched its `x-amz-checksum-crc32c` (`None`: no such header).
    pub crc32c_ok: Option<bool>,
    /// When its head arrived.
    pub at: std::time::Instant,
}

struct Shared {
    upstream: u16,
    rules: Vec<Rule>,
    seen: Mutex<Vec<usize>>,
    records: Mutex<Vec<Record>>,
    forwarding: std::sync::atomic::AtomicUsize,
}

/// A proxy on a free port of 127.0.0.1 to a server on `upstream`; stops when dropped.
pub struct FaultProxy {
    listener: LocalListener,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Start the proxy.
    pub fn start(upstream: u16, rules: Vec<Rule>) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream,
            seen: Mutex::new(vec![0; rules.len()]),
            rules,
            records: Mutex::new(Vec::new()),
            forwarding: std::sync::atomic::AtomicUsize::new(0),
        });
        let s = shared.clone();
        let listener = LocalListener::start("proxy", move |conn| serve(conn, &s));
        FaultProxy { listener, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.listener.port())
    }

    /// Requests under way: from their head until answered, failed or cut off (a stalled one
    /// counts until its stall ends).
    pub fn in_progress(&self) -> usize {
        self.shared.forwarding.load(Ordering::SeqCst)
    }

    /// Every request seen so far.
    pub fn records(&self) -> Vec<Record> {
        self.shared
            .records
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Wait until a request whose target contains `needle` (say `partNumber=2`) has come;
    /// panics after 30 s.
    pub fn wait_for(&self, needle: &str) {
        let started = std::time::Instant::now();
        while !self.records().iter().any(|r| r.target.contains(needle)) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "no request for {needle} came"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn fault_for(s: &Shared, req: &Request) -> Option<Fault> {
    let mut seen = s.seen.lock().ok()?;
    for (i, rule) in s.rules.iter().enumerate() {
        if rule.method == req.method && req.target.contains(&rule.contains) {
            let n = seen[i];
            seen[i] += 1;
            return rule.faults.get(n).cloned().or_else(|| rule.always.clone());
        }
    }
    None
}

fn checks(req: &Request) -> (Option<bool>, Option<bool>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let md5 = req
        .header("content-md5")
        .map(|v| v == b64.encode(Md5::digest(&req.body)));
    let crc = req
        .header("x-amz-checksum-crc32c")
        .map(|v| v == b64.encode(crc32c::crc32c(&req.body).to_be_bytes()));
    (md5, crc)
}

fn serve(conn: TcpStream, s: &Shared) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut client = write_half;
    let mut reader = BufReader::new(conn);
    while let Some((mut req, len)) = read_head(&mut reader) {
        let _busy = Busy::new(&s.forwarding);
        let fault = fault_for(s, &req);
        let mut record = Record {
            method: req.method.clone(),
            target: req.target.clone(),
            fault: fault.clone(),
            status: None,
            body_len: len,
            md5_ok: None,
            crc32c_ok: None,
            at: std::time::Instant::now(),
        };
        if fault == Some(Fault::DropMidBody) {
            let mut half = vec![0; len / 2];
            let _ = reader.read_exact(&mut half);
            push(s, record);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        req.body = vec![0; len];
        if reader.read_exact(&mut req.body).is_err() {
            return;
        }
        (record.md5_ok, record.crc32c_ok) = checks(&req);
        match fault {
            Some(Fault::Status(code)) => {
                push(s, record);
                let body = format!(
                    "<Error><Code>InternalError</Code><Message>injected {code}</Message></Error>"
                );
                let _ = respond(&mut client, code, &[], body.as_bytes());
                continue;
            }
            Some(Fault::Drop) => {
                push(s, record);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Stall(d)) => {
                push(s, record);
                std::thread::sleep(d);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::DropMidBody) | None => {}
        }
        // Forward on a fresh connection that the server closes after answering; the
        // client's connection ends with this answer, and says so.
        let Some((status, out)) = forward(&req, s.upstream) else {
            push(s, record);
            return;
        };
        record.status = status;
        push(s, record);
        let _ = client.write_all(&out);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
}

/// Counts a request from its head to its end, whichever way it ends.
struct Busy<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Busy<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Busy(n)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn push(s: &Shared, r: Record) {
    if let Ok(mut v) = s.records.lock() {
        v.push(r);
    }
}
