//! Credentials from the usual places: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`), else the shared config file
//! (`AWS_CONFIG_FILE`, default `~/.aws/config`), in profile `AWS_PROFILE` or `default`.
//! The config file's profile may also give `region` and `endpoint_url` ([`profile_setting`]).
//! Secrets are never printed: `Debug` shows the access key id only.

use std::collections::BTreeMap;
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
        if let (Some(a), Some(s)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials::new(
                &a,
                &s,
                var("AWS_SESSION_TOKEN").as_deref(),
            ));
        }
        let profile = profile_name();
        [
            shared_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            shared_file("AWS_CONFIG_FILE", "config"),
        ]
        .into_iter()
        .flatten()
        .find_map(|text| parse_profile(&text, &profile))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give \
                     profile '{profile}' in the shared credentials or config file"
                ),
            )
        })
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `AWS_PROFILE`, else `default`.
fn profile_name() -> String {
    var("AWS_PROFILE").unwrap_or_else(|| "default".into())
}

/// The text of a shared file: the one `variable` names, else `~/.aws/NAME`.
fn shared_file(variable: &str, name: &str) -> Option<String> {
    let path = var(variable).or_else(|| var("HOME").map(|h| format!("{h}/.aws/{name}")))?;
    std::fs::read_to_string(path).ok()
}

/// A setting of the profile (`AWS_PROFILE`, else `default`) in the shared config file
/// (`AWS_CONFIG_FILE`, default `~/.aws/config`): `region`, `endpoint_url`, ...
pub fn profile_setting(key: &str) -> Option<String> {
    let text = shared_file("AWS_CONFIG_FILE", "config")?;
    section(&text, &profile_name())
        .remove(key)
        .filter(|v| !v.is_empty())
}

/// The settings of `[profile]` (or `[profile NAME]`, as config files name them) in an
/// INI-style file; the first section of that name wins, as the AWS CLI reads them.
fn section(text: &str, profile: &str) -> BTreeMap<String, String> {
    let mut inside = false;
    let mut seen = false;
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            let name = line[1..line.len() - 1].trim();
            let ours = name == profile || name == format!("profile {profile}");
            inside = ours && !seen;
            seen |= ours;
            continue;
        }
        if !inside || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            values.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    values
}

/// The keys of `[profile]` in an INI-style credentials or config file.
fn parse_profile(text: &str, profile: &str) -> Option<Credentials> {
    let mut v = section(text, profile);
    let a = v.remove("aws_access_key_id")?;
    let s = v.remove("aws_secret_access_key")?;
    Some(Credentials::new(
        &a,
        &s,
        v.remove("aws_session_token").as_deref(),
    ))
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

    #[test]
    fn config_files_name_profiles_with_a_prefix_and_carry_settings() {
        let text = "# comment\n[default]\nregion = eu-west-1\n\
                    [profile obs]\nregion=cn-north-4\nendpoint_url = https://obs.example\n\
                    aws_access_key_id = AK\naws_secret_access_key = SK\n\
                    [profile obs]\nregion = later-section-ignored\n";
        assert_eq!(section(text, "default")["region"], "eu-west-1");
        let obs = section(text, "obs");
        assert_eq!(obs["region"], "cn-north-4");
        assert_eq!(obs["endpoint_url"], "https://obs.example");
        assert_eq!(
            parse_profile(text, "obs").map(|c| c.access_key),
            Some("AK".into())
        );
        assert!(parse_profile(text, "default").is_none(), "no keys there");
    }
}
