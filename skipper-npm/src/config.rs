//! [`NpmConfig`]: where Nginx Proxy Manager is and how to log in.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

/// How to reach and log in to Nginx Proxy Manager.
///
/// Build it with [`NpmConfig::new`] and adjust the public fields (or the `with_*` helpers).
/// `Debug` shows neither the email nor the password.
#[derive(Clone)]
pub struct NpmConfig {
    /// NPM's admin address, e.g. `http://npm:81`. `/api/` is added unless the path already ends
    /// in `/api`; a sub-path (`https://host/npm/`) is kept.
    pub url: Url,
    /// The login email of an NPM user allowed to manage proxy hosts (without 2FA).
    pub email: String,
    /// Its password.
    pub password: SecretString,
    /// Time limit for each HTTP request. Default 30 s.
    pub timeout: Duration,
    /// Refresh the token (`GET /api/tokens`) once it has less than this left. Default 10 min.
    pub refresh_margin: Duration,
    /// Attempts for an idempotent call (GET, PUT, DELETE, enable/disable, login) that meets a
    /// 5xx, a timeout or a connection error. Default 3. Creates are never repeated.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each one after. Default 250 ms.
    pub retry_backoff: Duration,
    /// `trust_forwarded_proto` for hosts Skipper manages (set it when NPM itself sits behind a
    /// TLS-terminating proxy). `None` (the default) leaves the field alone. Only sent to NPM
    /// 2.14.0 and later, which know the field; older versions reject it.
    pub trust_forwarded_proto: Option<bool>,
}

impl NpmConfig {
    /// A configuration with the default timeout, refresh margin and retries.
    pub fn new(url: Url, email: impl Into<String>, password: SecretString) -> Self {
        Self {
            url,
            email: email.into(),
            password,
            timeout: Duration::from_secs(30),
            refresh_margin: Duration::from_secs(600),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(250),
            trust_forwarded_proto: None,
        }
    }

    /// Set the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Set the retry budget for idempotent calls and the first backoff.
    pub fn with_retries(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_attempts = max_attempts;
        self.retry_backoff = backoff;
        self
    }

    /// Set `trust_forwarded_proto` for managed hosts (sent to NPM 2.14.0 and later only).
    pub fn with_trust_forwarded_proto(mut self, trust: bool) -> Self {
        self.trust_forwarded_proto = Some(trust);
        self
    }

    /// The API base, always ending in `/api/`.
    pub(crate) fn api_base(&self) -> Url {
        let mut base = self.url.clone();
        base.set_query(None);
        base.set_fragment(None);
        let path = base.path().trim_end_matches('/').to_owned();
        let path = if path.ends_with("/api") {
            format!("{path}/")
        } else {
            format!("{path}/api/")
        };
        base.set_path(&path);
        base
    }
}

impl fmt::Debug for NpmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NpmConfig")
            .field("url", &self.url.as_str())
            .field("email", &"[REDACTED]")
            .field("password", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .field("refresh_margin", &self.refresh_margin)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("trust_forwarded_proto", &self.trust_forwarded_proto)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(url: &str) -> String {
        NpmConfig::new(url.parse().unwrap(), "a@b.c", SecretString::from("pw"))
            .api_base()
            .to_string()
    }

    #[test]
    fn api_base_is_normalised() {
        assert_eq!(base("http://npm:81"), "http://npm:81/api/");
        assert_eq!(base("http://npm:81/"), "http://npm:81/api/");
        assert_eq!(base("http://npm:81/api"), "http://npm:81/api/");
        assert_eq!(base("http://npm:81/api/"), "http://npm:81/api/");
        assert_eq!(base("https://h/npm/"), "https://h/npm/api/");
    }

    #[test]
    fn debug_hides_identity_and_secret() {
        let c = NpmConfig::new(
            "http://npm:81".parse().unwrap(),
            "admin@example.com",
            SecretString::from("hunter2"),
        );
        let text = format!("{c:?}");
        assert!(
            !text.contains("admin@example.com") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
