//! Requests as the providers' modules see them, and answers as they leave.

use axum::http::{HeaderMap, Method};
use serde::Serialize;

use crate::auth::Signed;

/// A request, read whole.
pub(crate) struct Incoming<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
    pub(crate) request_id: &'a str,
}

impl Incoming<'_> {
    /// What a signature covers.
    pub(crate) fn signed(&self) -> Signed<'_> {
        Signed {
            method: self.method,
            path: self.path,
            query: self.query,
            headers: self.headers,
            body: self.body,
        }
    }

    /// A header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The path's segments after `prefix`, each percent-decoded; `None` when a segment is
    /// empty, not UTF-8, or holds `/`, `\`, NUL or is `..` (ids are looked up, never used as
    /// paths, but such an id is malformed on its face).
    pub(crate) fn segments(&self, prefix: &str) -> Option<Vec<String>> {
        let rest = self.path.strip_prefix(prefix)?;
        rest.split('/')
            .map(|s| {
                let d = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
                let bad = d.is_empty()
                    || d == "."
                    || d == ".."
                    || d.contains(['/', '\\', '\0'])
                    || d.chars().any(char::is_control);
                (!bad).then(|| d.into_owned())
            })
            .collect()
    }

    /// The query's value for `name`, decoded.
    pub(crate) fn query_value(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Wire {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Wire {
    /// A JSON answer.
    pub fn json(status: u16, body: &impl Serialize) -> Wire {
        Wire {
            status,
            content_type: "application/json".into(),
            headers: vec![],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// An XML answer.
    pub fn xml(status: u16, body: String) -> Wire {
        Wire {
            status,
            content_type: "text/xml;charset=UTF-8".into(),
            headers: vec![],
            body: body.into_bytes(),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Wire {
        Wire {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    /// Add a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Wire {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// XML text escaped.
pub(crate) fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}
