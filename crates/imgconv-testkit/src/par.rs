//! OCI Object Storage pre-authenticated requests, as Oracle documents them for object PARs
//! that allow writes:
//!
//! - `PUT <par>` with a body stores the object;
//! - `PUT <par>` with `opc-multipart: true` starts a multipart upload and answers JSON with
//!   `uploadId` and `accessUri` (a path, `/p/<token>/n/<ns>/b/<bucket>/u/<object>/id/<uploadId>/`);
//! - `PUT <accessUri><partNum>` stores a part (checked against `Content-MD5` when given) and
//!   answers its `etag`;
//! - `POST <accessUri>` commits the parts in part-number order; `DELETE <accessUri>` aborts.
//!
//! A token other than the server's is answered 404, as Object Storage does.

use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use md5::{Digest as _, Md5};

use crate::http::{read_request, respond, Request};

const NAMESPACE: &str = "testns";
const BUCKET: &str = "exports";

#[derive(Default)]
struct State {
    objects: HashMap<String, Vec<u8>>,
    uploads: HashMap<String, (String, BTreeMap<u32, Vec<u8>>)>,
    next_id: u64,
    requests: Vec<(String, String)>,
}

/// The server; stops when dropped.
pub struct ParServer {
    port: u16,
    token: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for ParServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl ParServer {
    /// Start on a free port of 127.0.0.1.
    pub fn start() -> ParServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let token = "pAr-T0ken_9f3c".to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2, tok) = (state.clone(), stop.clone(), token.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (st, tok) = (st.clone(), tok.clone());
                std::thread::spawn(move || serve(conn, &st, &tok));
            }
        });
        ParServer {
            port,
            token,
            state,
            stop,
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PAR URL for writing `object`.
    pub fn par_url(&self, object: &str) -> String {
        format!(
            "http://127.0.0.1:{}/p/{}/n/{NAMESPACE}/b/{BUCKET}/o/{object}",
            self.port, self.token
        )
    }

    /// A stored object.
    pub fn object(&self, name: &str) -> Option<Vec<u8>> {
        self.state.lock().ok()?.objects.get(name).cloned()
    }

    /// Multipart uploads neither committed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        self.state.lock().map(|s| s.uploads.len()).unwrap_or(0)
    }

    /// Every request's method and target, in order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>, token: &str) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        let (status, headers, body) = handle(&req, state, token);
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if close {
            headers.push(("connection", "close"));
        }
        if respond(&mut w, status, &headers, body.as_bytes()).is_err() || close {
            return;
        }
    }
}

type Answer = (u16, Vec<(String, String)>, String);

fn error(status: u16, code: &str, message: &str) -> Answer {
    (
        status,
        vec![("content-type".into(), "application/json".into())],
        format!(r#"{{"code":"{code}","message":"{message}"}}"#),
    )
}

fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

fn handle(req: &Request, state: &Mutex<State>, token: &str) -> Answer {
    let Ok(mut st) = state.lock() else {
        return error(500, "InternalError", "state lost");
    };
    st.requests.push((req.method.clone(), req.target.clone()));
    let prefix = format!("/p/{token}/n/{NAMESPACE}/b/{BUCKET}/");
    let Some(rest) = req.target.strip_prefix(&prefix) else {
        return error(
            404,
            "NotAuthorizedOrNotFound",
            "no such pre-authenticated request",
        );
    };
    if let Some(content_md5) = req.header("content-md5") {
        if content_md5 != md5_b64(&req.body) {
            return error(
                400,
                "UnmatchedContentMD5",
                "the body does not match Content-MD5",
            );
        }
    }
    if let Some(object) = rest.strip_prefix("o/") {
        let multipart = req
            .header("opc-multipart")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        return match (req.method.as_str(), multipart) {
            ("PUT", true) => {
                st.next_id += 1;
                let id = format!("upload-{:04}", st.next_id);
                st.uploads
                    .insert(id.clone(), (object.to_string(), BTreeMap::new()));
                let access = format!("/p/{token}/n/{NAMESPACE}/b/{BUCKET}/u/{object}/id/{id}/");
                (
                    200,
                    vec![("content-type".into(), "application/json".into())],
                    format!(
                        r#"{{"namespace":"{NAMESPACE}","bucketName":"{BUCKET}","object":"{object}","uploadId":"{id}","timeCreated":"2026-11-22T00:00:00.000Z","storageTier":"Standard","accessUri":"{access}"}}"#
                    ),
                )
            }
            ("PUT", false) => {
                let md5 = md5_b64(&req.body);
                st.objects.insert(object.to_string(), req.body.clone());
                (
                    200,
                    vec![
                        ("etag".into(), format!("etag-{object}")),
                        ("opc-content-md5".into(), md5),
                    ],
                    String::new(),
                )
            }
            _ => error(405, "MethodNotAllowed", "not allowed on a PAR"),
        };
    }
    // u/<object>/id/<uploadId>/[partNum]
    let Some(upload) = rest.strip_prefix("u/") else {
        return error(404, "NotAuthorizedOrNotFound", "unknown path");
    };
    let Some((object, tail)) = upload.rsplit_once("/id/") else {
        return error(404, "NotAuthorizedOrNotFound", "unknown path");
    };
    let Some((id, part)) = tail.split_once('/') else {
        return error(404, "NotAuthorizedOrNotFound", "unknown path");
    };
    let id = id.to_string();
    match st.uploads.get(&id) {
        Some((o, _)) if o == object => {}
        _ => return error(404, "NoSuchUpload", "no such upload"),
    }
    match (req.method.as_str(), part) {
        ("PUT", n) if !n.is_empty() => {
            let Some(n) = n.parse::<u32>().ok().filter(|n| (1..=10_000).contains(n)) else {
                return error(400, "InvalidParameter", "bad part number");
            };
            let md5 = md5_b64(&req.body);
            if let Some((_, parts)) = st.uploads.get_mut(&id) {
                parts.insert(n, req.body.clone());
            }
            (
                200,
                vec![
                    ("etag".into(), format!("{id}-part-{n}")),
                    ("opc-content-md5".into(), md5),
                ],
                String::new(),
            )
        }
        ("POST", "") => {
            let Some((object, parts)) = st.uploads.remove(&id) else {
                return error(404, "NoSuchUpload", "no such upload");
            };
            if parts.is_empty() {
                return error(400, "InvalidParameter", "no parts to commit");
            }
            let data: Vec<u8> = parts.into_values().flatten().collect();
            st.objects.insert(object.clone(), data);
            (
                200,
                vec![("etag".into(), format!("etag-{object}"))],
                String::new(),
            )
        }
        ("DELETE", "") => {
            st.uploads.remove(&id);
            (204, vec![], String::new())
        }
        _ => error(405, "MethodNotAllowed", "not allowed on an upload"),
    }
}
