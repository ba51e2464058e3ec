//! [`NpmError`], the error of this crate, and its translation into [`skipper_core::Error`].

use skipper_core::ErrorKind;

/// `Result` with [`NpmError`].
pub type Result<T, E = NpmError> = std::result::Result<T, E>;

/// What can go wrong talking to Nginx Proxy Manager.
///
/// Variants keep the HTTP status and NPM's own message (from its
/// `{"error":{"code","message"}}` envelope) so callers can tell a missing host from a rejected
/// field. [`NpmError::kind`] classifies each one; `From<NpmError> for skipper_core::Error` carries
/// that kind over, so the engine's retry policy never looks at message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpmError {
    /// The request never got an answer: connection refused or reset, DNS, or the timeout.
    #[error("{request}: {}", if *timed_out { "no answer from Nginx Proxy Manager in time" } else { "could not reach Nginx Proxy Manager" })]
    Transport {
        /// Method and path (`POST /api/nginx/proxy-hosts`).
        request: String,
        /// Whether the request timed out (rather than failing to connect).
        timed_out: bool,
        /// The HTTP library's error.
        #[source]
        source: reqwest::Error,
    },

    /// NPM answered with an error status.
    #[error("{request}: Nginx Proxy Manager answered {status}: {message}")]
    Api {
        /// Method and path.
        request: String,
        /// The HTTP status.
        status: u16,
        /// NPM's `error.message` (or the body text when it sent no envelope).
        message: String,
    },

    /// NPM rejected the email or password (`400 Invalid email or password`).
    #[error("Nginx Proxy Manager rejected the login: {message}")]
    BadCredentials {
        /// NPM's message.
        message: String,
    },

    /// The account has two-factor authentication on: NPM wants a TOTP code Skipper cannot give.
    #[error(
        "the Nginx Proxy Manager account has two-factor authentication enabled; Skipper needs an \
         account without 2FA (create a dedicated NPM user for Skipper with permission to manage \
         proxy hosts)"
    )]
    TwoFactorRequired,

    /// NPM refused a request even with a fresh token: the account lacks permission (NPM answers
    /// 403, or 404 `Not Found - /<path>` on 2.13–2.15), or the URL is not NPM's API.
    #[error(
        "{request}: Nginx Proxy Manager refused the request even after a fresh login ({status}: \
         {message}); check that the account may manage proxy hosts"
    )]
    Refused {
        /// Method and path.
        request: String,
        /// The HTTP status.
        status: u16,
        /// NPM's message.
        message: String,
    },

    /// The domain is held by another proxy, redirection or 404 host (`400 "<domain> is already in
    /// use"`).
    #[error(
        "{domain} is already in use in Nginx Proxy Manager (by another proxy, redirection or 404 host)"
    )]
    DomainInUse {
        /// The domain.
        domain: String,
    },

    /// No proxy host serves the domain.
    #[error("no proxy host in Nginx Proxy Manager serves {domain}")]
    HostNotFound {
        /// The domain.
        domain: String,
    },

    /// A proxy host serves the domain but Skipper does not manage it (its `meta` has no
    /// `skipper` marker), so Skipper will not delete it.
    #[error(
        "proxy host {id} serves {domain} but Skipper does not manage it; remove it in Nginx Proxy \
         Manager or let Skipper route the domain first"
    )]
    NotManaged {
        /// The domain.
        domain: String,
        /// The proxy host's id.
        id: u64,
    },

    /// A proxy host Skipper did not create serves the domain, and the project does not let
    /// Skipper take it over.
    #[error(
        "proxy host {id} already serves {domain} and was not created by Skipper; Skipper leaves \
         it alone: remove it in Nginx Proxy Manager, or set `route: {{ adopt: true }}` on the \
         project to let Skipper take it over"
    )]
    NotAdopted {
        /// The domain.
        domain: String,
        /// The proxy host's id.
        id: u64,
    },

    /// NPM saved the host but nginx refused the generated configuration (`meta.nginx_online` is
    /// `false`): the route does not serve.
    #[error("nginx rejected the configuration for {domain} (proxy host {id}): {nginx_err}")]
    NginxOffline {
        /// The domain.
        domain: String,
        /// The proxy host's id.
        id: u64,
        /// NPM's `meta.nginx_err`.
        nginx_err: String,
    },

    /// The route cannot be expressed in NPM (bad scheme, port or domain).
    #[error("cannot route {domain:?} through Nginx Proxy Manager: {reason}")]
    InvalidRoute {
        /// The domain.
        domain: String,
        /// What is wrong.
        reason: String,
    },

    /// NPM answered 2xx with a body we do not understand.
    #[error("{request}: unexpected answer from Nginx Proxy Manager")]
    Decode {
        /// Method and path.
        request: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// The client configuration is unusable.
    #[error("invalid Nginx Proxy Manager configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("could not build the HTTP client for Nginx Proxy Manager")]
    Client {
        /// The HTTP library's error.
        #[source]
        source: reqwest::Error,
    },
}

impl NpmError {
    /// The HTTP status NPM answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Refused { status, .. } => Some(*status),
            Self::BadCredentials { .. } | Self::DomainInUse { .. } => Some(400),
            _ => None,
        }
    }

    /// NPM's own error message, if it sent one.
    pub fn npm_message(&self) -> Option<&str> {
        match self {
            Self::Api { message, .. }
            | Self::Refused { message, .. }
            | Self::BadCredentials { message } => Some(message),
            Self::NginxOffline { nginx_err, .. } => Some(nginx_err),
            _ => None,
        }
    }

    /// What kind of failure this is, for retry policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Transport { .. } => ErrorKind::Transient,
            Self::Api { status, .. } => match *status {
                400 | 422 => ErrorKind::Invalid,
                401 | 403 => ErrorKind::Unauthorized,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                429 => ErrorKind::RateLimited,
                500..=599 => ErrorKind::Transient,
                _ => ErrorKind::Internal,
            },
            Self::BadCredentials { .. } | Self::TwoFactorRequired | Self::Refused { .. } => {
                ErrorKind::Unauthorized
            }
            Self::DomainInUse { .. } | Self::NotManaged { .. } | Self::NotAdopted { .. } => {
                ErrorKind::Conflict
            }
            Self::HostNotFound { .. } => ErrorKind::NotFound,
            // nginx refuses a config for a reason in the route (advanced_config, an upstream name
            // that does not resolve): repeating the same call fails the same way.
            Self::NginxOffline { .. } | Self::InvalidRoute { .. } | Self::Config { .. } => {
                ErrorKind::Invalid
            }
            Self::Decode { .. } | Self::Client { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the same call may succeed later (network trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        self.kind().is_retryable()
    }

    /// Whether a create that failed like this may still have created the host: the request went
    /// out and no definite refusal came back (a transport error, a timeout or a 5xx).
    pub(crate) fn is_ambiguous(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { status, .. } => (500..=599).contains(status),
            _ => false,
        }
    }

    /// NPM's answers to a stale token: 400 "Token has expired", 403, and the 404
    /// `Not Found - /<path>` that 2.13–2.15 give for a missing or invalid token. A 404 naming an
    /// id (`Not Found - 42`) is a real not-found and does not count.
    pub(crate) fn is_stale_token(&self) -> bool {
        match self {
            Self::Api {
                status: 400,
                message,
                ..
            } => message.to_ascii_lowercase().contains("token has expired"),
            Self::Api { status: 403, .. } => true,
            Self::Api {
                status: 404,
                message,
                ..
            } => message
                .strip_prefix("Not Found - ")
                .is_some_and(|rest| rest.starts_with('/')),
            _ => false,
        }
    }

    /// NPM's 500 "Internal Error", which is also what a malformed token gets.
    pub(crate) fn is_internal_error(&self) -> bool {
        matches!(self, Self::Api { status: 500, message, .. } if message == "Internal Error")
    }

    /// The same stale-token answer, seen again with a fresh token: a refusal.
    pub(crate) fn into_refused(self) -> Self {
        match self {
            Self::Api {
                request,
                status,
                message,
            } => Self::Refused {
                request,
                status,
                message,
            },
            other => other,
        }
    }
}

impl From<NpmError> for skipper_core::Error {
    fn from(err: NpmError) -> Self {
        let kind = err.kind();
        let message = err.to_string();
        match err {
            NpmError::DomainInUse { .. }
            | NpmError::NotManaged { .. }
            | NpmError::NotAdopted { .. } => skipper_core::Error::Conflict { what: message },
            NpmError::HostNotFound { domain } => {
                skipper_core::Error::not_found(format!("proxy host for {domain}"))
            }
            // The library's error becomes the source; our message does not repeat it.
            NpmError::Transport { source, .. } | NpmError::Client { source } => {
                skipper_core::Error::backend_with("npm", kind, message, source)
            }
            NpmError::Decode { source, .. } => {
                skipper_core::Error::backend_with("npm", kind, message, source)
            }
            _ => skipper_core::Error::backend("npm", kind, message),
        }
    }
}

/// Pull the domain out of NPM's `"<domain> is already in use"`.
pub(crate) fn domain_in_use(message: &str) -> Option<&str> {
    message
        .strip_suffix(" is already in use")
        .map(str::trim)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, message: &str) -> NpmError {
        NpmError::Api {
            request: "GET /api/nginx/proxy-hosts".into(),
            status,
            message: message.into(),
        }
    }

    #[test]
    fn stale_token_answers_are_recognised() {
        assert!(api(400, "Token has expired").is_stale_token());
        assert!(api(403, "Permission Denied").is_stale_token());
        assert!(api(404, "Not Found - /nginx/proxy-hosts").is_stale_token());
        assert!(!api(404, "Not Found - 42").is_stale_token());
        assert!(!api(400, "data must NOT have additional properties").is_stale_token());
        assert!(!api(401, "Unauthorized").is_stale_token());
    }

    #[test]
    fn kinds_follow_statuses() {
        assert_eq!(api(404, "Not Found - 42").kind(), ErrorKind::NotFound);
        assert_eq!(api(502, "Bad Gateway").kind(), ErrorKind::Transient);
        assert_eq!(api(400, "bad").kind(), ErrorKind::Invalid);
        assert!(api(503, "x").is_ambiguous());
        assert!(!api(400, "x").is_ambiguous());
    }

    #[test]
    fn conflict_names_the_domain() {
        assert_eq!(
            domain_in_use("a.example.com is already in use"),
            Some("a.example.com")
        );
        let core: skipper_core::Error = NpmError::DomainInUse {
            domain: "a.example.com".into(),
        }
        .into();
        assert_eq!(core.kind(), ErrorKind::Conflict);
        assert!(core.to_string().contains("a.example.com"), "{core}");
    }

    #[test]
    fn not_found_and_refusals_map_to_kinds() {
        let core: skipper_core::Error = NpmError::HostNotFound {
            domain: "a.example.com".into(),
        }
        .into();
        assert_eq!(core.kind(), ErrorKind::NotFound);
        let core: skipper_core::Error = api(403, "Permission Denied").into_refused().into();
        assert_eq!(core.kind(), ErrorKind::Unauthorized);
        let core: skipper_core::Error = NpmError::TwoFactorRequired.into();
        assert_eq!(core.kind(), ErrorKind::Unauthorized);
        assert!(core.to_string().contains("without 2FA"));
    }
}
