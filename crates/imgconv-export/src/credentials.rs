//! Credentials from the usual places: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, profile `AWS_PROFILE` or
//! `default`). Secrets are never printed: `Debug` shows the access key id only.

use std::fmt;

use imgconv::{Error, ErrorKind, Result};

/// An access key pair, and a session token if the keys are temporary.
#[derive(Clone)]
pub struct Credentials {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// Keys given directly.
    pub fn new(access_key: &str, secret_key: &str, session_token: Option<&str>) -> Credentials {
        Credentials {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            session_token: session_token.map(str::to_string),
        }
    }

    /// The access key id (not secret).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub(crate) fn signing(&self) -> rusty_s3::Credentials {
        match &self.session_token {
            Some(t) => rusty_s3::Credentials::new_with_token(
                self.access_key.clone(),
                self.secret_key.clone(),
                t.clone(),
            ),
            None => rusty_s3::Credentials::new(self.access_key.clone(), self.secret_key.clone()),
        }
    }

    /// From the environment, else from the shared credentials file.
    pub fn from_env() -> Result<Credentials> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(a), Some(s)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials::new(
                &a,
                &s,
                var("AWS_SESSION_TOKEN").as_deref(),
            ));
        }
        let path = var("AWS_SHARED_CREDENTIALS_FILE")
            .or_else(|| var("HOME").map(|h| format!("{h}/.aws/credentials")));
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let text = path.and_then(|p| std::fs::read_to_string(p).ok());
        text.and_then(|t| parse_profile(&t, &profile))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give \
                     profile '{profile}' in the shared credentials file"
                    ),
                )
            })
    }
}

/// The keys of `[profile]` in an INI-style credentials file.
fn parse_profile(text: &str, profile: &str) -> Option<Credentials> {
    let mut inside = false;
    let (mut a, mut s, mut t) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            let name = line[1..line.len() - 1].trim();
            inside = name == profile || name == format!("profile {profile}");
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => a = Some(v),
                "aws_secret_access_key" => s = Some(v),
                "aws_session_token" => t = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials::new(&a?, &s?, t.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_and_secrets_never_shown() {
        let text = "[default]\naws_access_key_id = AKIA1\naws_secret_access_key = s3cr3t\n\
                    [other]\naws_access_key_id=AKIA2\naws_secret_access_key=x\naws_session_token=T0KEN-VALUE\n";
        let c = parse_profile(text, "default").expect("default");
        assert_eq!(c.access_key(), "AKIA1");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let o = parse_profile(text, "other").expect("other");
        assert!(!format!("{o:?}").contains("T0KEN-VALUE"));
        assert!(parse_profile(text, "missing").is_none());
    }
}
