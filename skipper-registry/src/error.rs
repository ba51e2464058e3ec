//! The crate's error type and its mapping onto [`skipper_core::ErrorKind`].

use std::time::Duration;

use skipper_core::ErrorKind;

/// A boxed library error kept as the `source` of a [`RegistryError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`RegistryError`].
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a registry.
///
/// Variants keep the HTTP status and the registry's own error text
/// (`{"errors":[{"code","message"}]}` rendered as `CODE: message`) so callers can tell a missing
/// tag from a typo in a repository name. Converting into [`skipper_core::Error`] classifies it:
///
/// | variant | [`ErrorKind`] |
/// |---|---|
/// | [`Unauthorized`](Self::Unauthorized) (401/403 after the auth dance, rejected credentials) | `Unauthorized` |
/// | [`NotFound`](Self::NotFound) (404, `NAME_UNKNOWN`, `MANIFEST_UNKNOWN`) | `NotFound` |
/// | [`RateLimited`](Self::RateLimited) (429 past the backoff budget) | `RateLimited` |
/// | [`Server`](Self::Server) (5xx), [`Transport`](Self::Transport) (connect, timeout) | `Transient` |
/// | [`Config`](Self::Config), [`InsecureUrl`](Self::InsecureUrl), [`WrongRegistry`](Self::WrongRegistry) | `Invalid` |
/// | [`UnexpectedStatus`](Self::UnexpectedStatus), [`InvalidResponse`](Self::InvalidResponse) | `Internal` |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The client configuration is unusable.
    #[error("invalid registry configuration: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A URL would be reached over plain http although its host is not a loopback address.
    #[error(
        "refusing plain http to {url}: only localhost and 127.0.0.0/8 registries may use http; use https"
    )]
    InsecureUrl {
        /// The URL refused.
        url: String,
    },

    /// The image reference names another registry than the one this client talks to.
    #[error("{image} is not in registry {expected}; use a client for {got}")]
    WrongRegistry {
        /// The image asked about.
        image: String,
        /// The registry this client is for.
        expected: String,
        /// The registry the image names.
        got: String,
    },

    /// The registry (or its token service) refused the credentials, or they are missing.
    #[error("{method} {url}: unauthorized ({status}): {message}")]
    Unauthorized {
        /// The HTTP method.
        method: String,
        /// The URL asked.
        url: String,
        /// The HTTP status (401 or 403).
        status: u16,
        /// The registry's own text, or what was missing.
        message: String,
    },

    /// The repository, tag or manifest does not exist.
    #[error("{method} {url}: not found: {message}")]
    NotFound {
        /// The HTTP method.
        method: String,
        /// The URL asked.
        url: String,
        /// The registry's own text (`MANIFEST_UNKNOWN: manifest unknown`).
        message: String,
    },

    /// The registry kept answering 429 beyond the backoff budget.
    #[error("{method} {url}: rate limited after {attempts} attempt(s){}", fmt_wait(*.retry_after))]
    RateLimited {
        /// The HTTP method.
        method: String,
        /// The URL asked.
        url: String,
        /// How long the registry asked us to wait, if it said.
        retry_after: Option<Duration>,
        /// How many requests were sent.
        attempts: u32,
    },

    /// The registry answered 5xx.
    #[error("{method} {url}: server error {status}: {message}")]
    Server {
        /// The HTTP method.
        method: String,
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's own text.
        message: String,
    },

    /// The registry answered a status this client does not expect.
    #[error("{method} {url}: unexpected status {status}: {message}")]
    UnexpectedStatus {
        /// The HTTP method.
        method: String,
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's own text.
        message: String,
    },

    /// The request did not get an answer (connection refused, TLS failure, timeout).
    #[error("{method} {url}: {}", if *.timed_out { "timed out" } else { "request failed" })]
    Transport {
        /// The HTTP method.
        method: String,
        /// The URL asked.
        url: String,
        /// Whether the request timed out.
        timed_out: bool,
        /// The HTTP library's error.
        #[source]
        source: BoxError,
    },

    /// The registry's answer could not be understood (bad JSON, bad `Link`, bad challenge).
    #[error("{url}: invalid response: {reason}")]
    InvalidResponse {
        /// The URL asked.
        url: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

fn fmt_wait(wait: Option<Duration>) -> String {
    match wait {
        Some(d) => format!("; the registry asks to retry in {}s", d.as_secs().max(1)),
        None => String::new(),
    }
}

impl RegistryError {
    /// The [`ErrorKind`] this error maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config { .. } | Self::InsecureUrl { .. } | Self::WrongRegistry { .. } => {
                ErrorKind::Invalid
            }
            Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::Server { .. } | Self::Transport { .. } => ErrorKind::Transient,
            Self::UnexpectedStatus { .. } | Self::InvalidResponse { .. } => ErrorKind::Internal,
        }
    }

    /// How long the registry asked to wait before the next request, for
    /// [`RateLimited`](Self::RateLimited).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Classifies the error (see [`RegistryError`]) as a `Backend` error of backend `"registry"`,
/// or, for [`RateLimited`](RegistryError::RateLimited), as [`skipper_core::Error::RateLimited`],
/// which keeps the registry's `Retry-After` ([`skipper_core::Error::retry_after`]).
///
/// The message is this error's text; the source is the HTTP library's error, when there is one,
/// so the [`skipper_core::Error::chain`] does not repeat itself.
impl From<RegistryError> for skipper_core::Error {
    fn from(e: RegistryError) -> Self {
        let kind = e.kind();
        let message = e.to_string();
        match e {
            RegistryError::Transport { source, .. } => {
                skipper_core::Error::backend_with("registry", kind, message, source)
            }
            RegistryError::RateLimited { retry_after, .. } => {
                skipper_core::Error::rate_limited("registry", message, retry_after)
            }
            _ => skipper_core::Error::backend("registry", kind, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_error(status: u16) -> RegistryError {
        RegistryError::Server {
            method: "GET".into(),
            url: "https://r.example/v2/".into(),
            status,
            message: "UNAVAILABLE: try later".into(),
        }
    }

    #[test]
    fn kinds_map_onto_core_kinds() {
        let e: skipper_core::Error = status_error(503).into();
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(
            e.to_string(),
            "registry: GET https://r.example/v2/: server error 503: UNAVAILABLE: try later"
        );
        let rl = RegistryError::RateLimited {
            method: "GET".into(),
            url: "u".into(),
            retry_after: Some(Duration::from_secs(120)),
            attempts: 1,
        };
        assert_eq!(rl.retry_after(), Some(Duration::from_secs(120)));
        assert!(rl.to_string().contains("retry in 120s"), "{rl}");
        let core: skipper_core::Error = rl.into();
        assert_eq!(core.kind(), ErrorKind::RateLimited);
        assert!(core.kind().is_retryable());
        // Through the `Registry` trait the wait survives.
        assert_eq!(core.retry_after(), Some(Duration::from_secs(120)));
        assert!(
            core.to_string()
                .starts_with("registry: GET u: rate limited"),
            "{core}"
        );
    }

    #[test]
    fn transport_error_keeps_its_source_once() {
        let e = RegistryError::Transport {
            method: "GET".into(),
            url: "https://r.example/v2/".into(),
            timed_out: true,
            source: "deadline elapsed".into(),
        };
        let core: skipper_core::Error = e.into();
        assert_eq!(core.kind(), ErrorKind::Transient);
        assert_eq!(
            core.chain(),
            "registry: GET https://r.example/v2/: timed out: deadline elapsed"
        );
    }
}
