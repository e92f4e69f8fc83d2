//! Request signatures, verified as each provider's SDK makes them:
//!
//! - AWS Signature Version 4 (EC2's query API, service `ec2`): HMAC-SHA256 over the canonical
//!   request, with the key derived from the secret, date, region and service.
//! - OCI HTTP signatures (draft-cavage, `rsa-sha256`): an RSA PKCS#1 v1.5 signature over the
//!   `date`, `(request-target)` and `host` lines, plus `content-length`, `content-type` and
//!   `x-content-sha256` (base64 SHA-256 of the body) for requests with a body.
//! - Huawei `SDK-HMAC-SHA256`: HMAC-SHA256 with the raw secret key over a canonical request
//!   whose URI always ends in `/`; no scope; `X-Sdk-Date`.
//!
//! A request's body is always bound to the signature: its hash is computed here and never
//! taken from the request (a client that signed `UNSIGNED-PAYLOAD` is refused). The clock may
//! be off by at most [`MAX_SKEW`]. Signatures are compared in constant time.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's time may be from the server's.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request was not accepted as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials, or a header that is not of the scheme's form.
    Missing(String),
    /// A key the service does not know.
    UnknownKey(String),
    /// The signature does not match the request.
    BadSignature(String),
    /// The request's time is too far from now.
    Expired(String),
}

impl AuthError {
    /// What went wrong, for the client.
    pub fn message(&self) -> &str {
        match self {
            AuthError::Missing(m)
            | AuthError::UnknownKey(m)
            | AuthError::BadSignature(m)
            | AuthError::Expired(m) => m,
        }
    }
}

/// The parts of a request that signatures cover.
pub struct Signed<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

impl Signed<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn header_values(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().ok())
            .collect::<Option<_>>()?;
        (!values.is_empty()).then(|| values.join(","))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYYMMDDTHHMMSSZ` as seconds since the epoch.
pub(crate) fn parse_compact_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + se);
    u64::try_from(secs).ok()
}

fn check_time(t: u64, what: &str) -> Result<(), AuthError> {
    let now = unix_now();
    if now.abs_diff(t) > MAX_SKEW.as_secs() {
        return Err(AuthError::Expired(format!(
            "the request's {what} is more than 15 minutes from the server's time"
        )));
    }
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m
}

fn hmac256(key: &[u8], data: &[u8]) -> Vec<u8> {
    mac(key, data).finalize().into_bytes().to_vec()
}

/// Percent-encode all but the unreserved characters (and `/` when `keep_slash`), as AWS and
/// Huawei canonicalise.
fn uri_encode(input: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// The query's pairs, decoded (`+` is a literal plus, as in a URI).
fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `Key=value, Key=value` (AWS and Huawei authorization parameters).
fn auth_params(text: &str) -> BTreeMap<&str, &str> {
    text.split(',')
        .filter_map(|p| p.trim().split_once('='))
        .collect()
}

/// The `Authorization` header's text after `scheme` (`AWS4-HMAC-SHA256 `, ...).
fn authorization<'a>(
    req: &'a Signed<'_>,
    scheme: &str,
    refusal: &str,
) -> Result<&'a str, AuthError> {
    req.header("authorization")
        .ok_or_else(|| AuthError::Missing("the request is not signed (no Authorization)".into()))?
        .strip_prefix(scheme)
        .ok_or_else(|| AuthError::Missing(refusal.into()))
}

/// Verify an AWS SigV4 request for `service`; `secret_of` answers an access key's secret.
/// Answers the access key.
pub fn verify_sigv4<'k>(
    req: &Signed<'_>,
    service: &str,
    secret_of: impl Fn(&str) -> Option<&'k str>,
) -> Result<String, AuthError> {
    let rest = authorization(
        req,
        "AWS4-HMAC-SHA256 ",
        "only AWS4-HMAC-SHA256 signatures are accepted",
    )?;
    let p = auth_params(rest);
    let (Some(credential), Some(signed), Some(signature)) = (
        p.get("Credential"),
        p.get("SignedHeaders"),
        p.get("Signature"),
    ) else {
        return Err(AuthError::Missing(
            "the Authorization header lacks Credential, SignedHeaders or Signature".into(),
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, svc, "aws4_request"] = scope.as_slice() else {
        return Err(AuthError::Missing(
            "the credential scope is malformed".into(),
        ));
    };
    if *svc != service {
        return Err(AuthError::BadSignature(format!(
            "the credential scope names service '{svc}', not '{service}'"
        )));
    }
    let secret = secret_of(key).ok_or_else(|| {
        AuthError::UnknownKey("the AWS access key id does not exist in our records".into())
    })?;
    let amz_date = req
        .header("x-amz-date")
        .ok_or_else(|| AuthError::Missing("the request has no X-Amz-Date".into()))?;
    let t = parse_compact_time(amz_date)
        .ok_or_else(|| AuthError::Missing("X-Amz-Date is not a date".into()))?;
    if !amz_date.starts_with(date) {
        return Err(AuthError::BadSignature(
            "the credential scope's date is not the request's".into(),
        ));
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") {
        return Err(AuthError::BadSignature(
            "the Host header must be signed".into(),
        ));
    }
    let mut headers = String::new();
    for n in &names {
        let v = req.header_values(n).unwrap_or_default();
        headers.push_str(n);
        headers.push(':');
        headers.push_str(&v.split_whitespace().collect::<Vec<_>>().join(" "));
        headers.push('\n');
    }
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.as_str(),
        uri_encode(req.path.as_bytes(), true),
        canonical_query(req.query),
        headers,
        signed,
        sha256_hex(req.body)
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{svc}/aws4_request\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k = hmac256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac256(&k, region.as_bytes());
    let k = hmac256(&k, svc.as_bytes());
    let k = hmac256(&k, b"aws4_request");
    let given = unhex(signature).unwrap_or_default();
    mac(&k, to_sign.as_bytes())
        .verify_slice(&given)
        .map_err(|_| {
            AuthError::BadSignature(
                "The request signature we calculated does not match the signature you provided."
                    .into(),
            )
        })?;
    check_time(t, "X-Amz-Date")?;
    Ok((*key).to_string())
}

/// Verify a Huawei `SDK-HMAC-SHA256` request; `secret_of` answers an access key's secret.
/// Answers the access key.
pub fn verify_huawei<'k>(
    req: &Signed<'_>,
    secret_of: impl Fn(&str) -> Option<&'k str>,
) -> Result<String, AuthError> {
    let rest = authorization(
        req,
        "SDK-HMAC-SHA256 ",
        "only SDK-HMAC-SHA256 signatures are accepted",
    )?;
    let p = auth_params(rest);
    let (Some(access), Some(signed), Some(signature)) =
        (p.get("Access"), p.get("SignedHeaders"), p.get("Signature"))
    else {
        return Err(AuthError::Missing(
            "the Authorization header lacks Access, SignedHeaders or Signature".into(),
        ));
    };
    let secret = secret_of(access)
        .ok_or_else(|| AuthError::UnknownKey("the access key does not exist".into()))?;
    let date = req
        .header("x-sdk-date")
        .ok_or_else(|| AuthError::Missing("the request has no X-Sdk-Date".into()))?;
    let t = parse_compact_time(date)
        .ok_or_else(|| AuthError::Missing("X-Sdk-Date is not a date".into()))?;
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") || !names.contains(&"x-sdk-date") {
        return Err(AuthError::BadSignature(
            "the Host and X-Sdk-Date headers must be signed".into(),
        ));
    }
    let mut headers = String::new();
    for n in &names {
        headers.push_str(n);
        headers.push(':');
        headers.push_str(req.header_values(n).unwrap_or_default().trim());
        headers.push('\n');
    }
    // Each decoded segment encoded again; the URI always ends in '/'.
    let mut uri = req
        .path
        .split('/')
        .map(|seg| uri_encode(&decode(seg), false))
        .collect::<Vec<_>>()
        .join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    let payload = if req.body.is_empty() {
        sha256_hex(b"")
    } else {
        sha256_hex(req.body)
    };
    let canonical = format!(
        "{}\n{uri}\n{}\n{headers}\n{signed}\n{payload}",
        req.method.as_str(),
        canonical_query(req.query),
    );
    let to_sign = format!(
        "SDK-HMAC-SHA256\n{date}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let given = unhex(signature).unwrap_or_default();
    mac(secret.as_bytes(), to_sign.as_bytes())
        .verify_slice(&given)
        .map_err(|_| AuthError::BadSignature("Verify aksk signature fail".into()))?;
    check_time(t, "X-Sdk-Date")?;
    Ok((*access).to_string())
}

/// `key="value",key="value"` (HTTP signature parameters).
fn quoted_params(text: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        let (v, after) = after.split_once('"')?;
        out.insert(k.trim().to_string(), v.to_string());
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// Verify an OCI HTTP signature; `key_of` answers a key id's PEM public key. Answers the key
/// id.
pub fn verify_oci<'k>(
    req: &Signed<'_>,
    key_of: impl Fn(&str) -> Option<&'k openssl::pkey::PKey<openssl::pkey::Public>>,
) -> Result<String, AuthError> {
    let rest = authorization(
        req,
        "Signature ",
        "the Authorization header is not a Signature",
    )?;
    let p = quoted_params(rest)
        .ok_or_else(|| AuthError::Missing("the Signature parameters are malformed".into()))?;
    let (Some(key_id), Some(signature)) = (p.get("keyId"), p.get("signature")) else {
        return Err(AuthError::Missing(
            "the Signature lacks keyId or signature".into(),
        ));
    };
    if p.get("algorithm").is_some_and(|a| a != "rsa-sha256") {
        return Err(AuthError::Missing(
            "only rsa-sha256 signatures are accepted".into(),
        ));
    }
    let names: Vec<String> = p
        .get("headers")
        .map(String::as_str)
        .unwrap_or("date")
        .split(' ')
        .map(str::to_ascii_lowercase)
        .collect();
    let mut required = vec!["date", "(request-target)", "host"];
    let has_body = matches!(*req.method, Method::POST | Method::PUT | Method::PATCH);
    if has_body {
        required.extend(["content-length", "content-type", "x-content-sha256"]);
    }
    let date_header = if names.iter().any(|n| n == "x-date") {
        "x-date"
    } else {
        "date"
    };
    for r in required {
        let r = if r == "date" { date_header } else { r };
        if !names.iter().any(|n| n == r) {
            return Err(AuthError::BadSignature(format!(
                "the signature must cover the {r} header"
            )));
        }
    }
    let key =
        key_of(key_id).ok_or_else(|| AuthError::UnknownKey("the key id is not known".into()))?;
    if has_body {
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(req.body));
        if req.header("x-content-sha256") != Some(digest.as_str()) {
            return Err(AuthError::BadSignature(
                "x-content-sha256 does not match the body".into(),
            ));
        }
        if req.header("content-length") != Some(req.body.len().to_string().as_str()) {
            return Err(AuthError::BadSignature(
                "content-length does not match the body".into(),
            ));
        }
    }
    let mut lines = Vec::with_capacity(names.len());
    for n in &names {
        if n == "(request-target)" {
            let target = if req.query.is_empty() {
                req.path.to_string()
            } else {
                format!("{}?{}", req.path, req.query)
            };
            lines.push(format!(
                "(request-target): {} {target}",
                req.method.as_str().to_ascii_lowercase()
            ));
        } else {
            let v = req.header_values(n).ok_or_else(|| {
                AuthError::BadSignature(format!("the signed header {n} is missing"))
            })?;
            lines.push(format!("{n}: {v}"));
        }
    }
    let date = req.header(date_header).unwrap_or_default();
    let t = httpdate::parse_http_date(date)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .ok_or_else(|| AuthError::Missing("the date header is not an HTTP date".into()))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| AuthError::BadSignature("the signature is not base64".into()))?;
    let ok = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), key)
        .and_then(|mut v| {
            v.update(lines.join("\n").as_bytes())?;
            v.verify(&sig)
        })
        .unwrap_or(false);
    if !ok {
        return Err(AuthError::BadSignature(
            "The required information to complete authentication was not provided or was \
             incorrect."
                .into(),
        ));
    }
    check_time(t.as_secs(), "date")?;
    Ok(key_id.clone())
}

/// Equal, in time that depends only on the lengths.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_times_parse_as_utc() {
        assert_eq!(parse_compact_time("19700101T000000Z"), Some(0));
        assert_eq!(parse_compact_time("20000301T000000Z"), Some(951_868_800));
        assert_eq!(parse_compact_time("20150830T123600Z"), Some(1_440_938_160));
        for bad in [
            "",
            "20150830T123600",
            "2015083OT123600Z",
            "20151330T123600Z",
            "２０15",
        ] {
            assert_eq!(parse_compact_time(bad), None, "{bad}");
        }
    }

    /// The example of AWS's SigV4 test suite (get-vanilla), with its date checked apart.
    #[test]
    fn sigv4_matches_the_reference_example() {
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            "example.amazonaws.com"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        h.insert(
            "x-amz-date",
            "20150830T123600Z"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        let req = Signed {
            method: &Method::GET,
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        // The signature matches; only the date (2015) is refused.
        let r = verify_sigv4(&req, "service", |_| Some(secret));
        assert!(matches!(r, Err(AuthError::Expired(_))), "{r:?}");
        let r = verify_sigv4(&req, "service", |_| Some("wrong"));
        assert!(matches!(r, Err(AuthError::BadSignature(_))), "{r:?}");
        let r = verify_sigv4(&req, "ec2", |_| Some(secret));
        assert!(matches!(r, Err(AuthError::BadSignature(_))), "{r:?}");
        let r = verify_sigv4(&req, "service", |_| None);
        assert!(matches!(r, Err(AuthError::UnknownKey(_))), "{r:?}");
    }

    #[test]
    fn quoted_parameters_parse() {
        let p = quoted_params(
            r#"algorithm="rsa-sha256",headers="date host",keyId="a/b/c",signature="x+y/=",version="1""#,
        );
        let p = p.unwrap_or_default();
        assert_eq!(p.get("keyId").map(String::as_str), Some("a/b/c"));
        assert_eq!(p.get("signature").map(String::as_str), Some("x+y/="));
        assert_eq!(quoted_params(r#"keyId="unterminated"#), None);
    }
}
