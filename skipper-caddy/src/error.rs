//! [`CaddyError`], the error of this crate, and its translation into [`skipper_core::Error`].

use skipper_core::ErrorKind;

/// `Result` with [`CaddyError`].
pub type Result<T, E = CaddyError> = std::result::Result<T, E>;

/// What can go wrong talking to Caddy's admin API.
///
/// Variants keep the HTTP status and Caddy's own message (its `{"error": "…"}` body).
/// [`CaddyError::kind`] classifies each one; `From<CaddyError> for skipper_core::Error` carries
/// that kind over, so the engine's retry policy never looks at message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaddyError {
    /// The request never got an answer: connection refused or reset, or the timeout.
    #[error("{request}: {}", if *timed_out { "no answer from Caddy's admin API in time" } else { "could not reach Caddy's admin API" })]
    Transport {
        /// Method and path (`PATCH /id/skipper-proxy-app.example.com/upstreams`).
        request: String,
        /// Whether the request timed out (rather than failing to connect).
        timed_out: bool,
        /// The HTTP library's error.
        #[source]
        source: reqwest::Error,
    },

    /// Caddy answered with an error status.
    #[error("{request}: Caddy answered {status}: {message}")]
    Api {
        /// Method and path.
        request: String,
        /// The HTTP status.
        status: u16,
        /// Caddy's `error` message (or the body text).
        message: String,
    },

    /// The configuration changed between Skipper's read and its change (Caddy answered 412 to
    /// the `If-Match` of the read): someone else edited it at the same time.
    #[error(
        "{request}: Caddy's configuration changed while Skipper was changing the route for \
         {domain} (412 Precondition Failed); nothing was changed, try again"
    )]
    ConcurrentEdit {
        /// Method and path.
        request: String,
        /// The domain being changed.
        domain: String,
    },

    /// A route Skipper did not create serves the domain, and the project does not let Skipper
    /// take it over.
    #[error(
        "route {index} of Caddy server {server} already serves {domain} and was not created by \
         Skipper; Skipper leaves it alone: remove it from Caddy's config, or set \
         `route: {{ adopt: true }}` on the project to let Skipper take it over"
    )]
    NotAdopted {
        /// The domain.
        domain: String,
        /// The server's name.
        server: String,
        /// The route's index in the server's `routes`.
        index: usize,
    },

    /// A route Skipper did not create serves the domain together with other hosts (or with
    /// other matchers), so taking it over would take those too.
    #[error(
        "route {index} of Caddy server {server} serves {domain} together with other hosts or \
         matchers; Skipper cannot adopt only part of it: give {domain} a route of its own or \
         remove it from that route"
    )]
    NotAdoptable {
        /// The domain.
        domain: String,
        /// The server's name.
        server: String,
        /// The route's index.
        index: usize,
    },

    /// The route cannot be expressed (bad port or domain).
    #[error("cannot route {domain:?} through Caddy: {reason}")]
    InvalidRoute {
        /// The domain.
        domain: String,
        /// What is wrong.
        reason: String,
    },

    /// Caddy answered 2xx with a body we do not understand, or its config has a shape Skipper
    /// cannot work with (`apps.http.servers.<server>` is not an object).
    #[error("{request}: unexpected answer from Caddy: {reason}")]
    Unexpected {
        /// Method and path.
        request: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The client configuration is unusable.
    #[error("invalid Caddy configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("could not build the HTTP client for Caddy")]
    Client {
        /// The HTTP library's error.
        #[source]
        source: reqwest::Error,
    },
}

impl CaddyError {
    /// The HTTP status Caddy answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::ConcurrentEdit { .. } => Some(412),
            _ => None,
        }
    }

    /// What kind of failure this is, for retry policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Transport {
                timed_out: true, ..
            } => ErrorKind::Timeout,
            Self::Transport { .. } => ErrorKind::Transient,
            Self::Api { status, .. } => match *status {
                400 | 422 => ErrorKind::Invalid,
                401 | 403 => ErrorKind::Unauthorized,
                404 => ErrorKind::NotFound,
                409 | 412 => ErrorKind::Conflict,
                429 => ErrorKind::RateLimited,
                // Caddy answers 500 for a config it refuses ("key already exists", a listener
                // it cannot bind): repeating the same change fails the same way.
                502..=504 => ErrorKind::Transient,
                _ => ErrorKind::Internal,
            },
            Self::ConcurrentEdit { .. } | Self::NotAdopted { .. } | Self::NotAdoptable { .. } => {
                ErrorKind::Conflict
            }
            Self::InvalidRoute { .. } | Self::Config { .. } => ErrorKind::Invalid,
            Self::Unexpected { .. } | Self::Client { .. } => ErrorKind::Internal,
        }
    }

    /// Whether a change that failed like this may still have been applied: the request went out
    /// and no definite answer came back (a transport error, a timeout, a 502–504 from something
    /// in front of Caddy). Such a change is never sent again blindly: the config is read back.
    pub(crate) fn is_ambiguous(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { status, .. } => (502..=504).contains(status),
            _ => false,
        }
    }
}

impl From<CaddyError> for skipper_core::Error {
    fn from(err: CaddyError) -> Self {
        let kind = err.kind();
        let message = err.to_string();
        match err {
            CaddyError::ConcurrentEdit { .. }
            | CaddyError::NotAdopted { .. }
            | CaddyError::NotAdoptable { .. } => skipper_core::Error::Conflict { what: message },
            // The library's error becomes the source; our message does not repeat it.
            CaddyError::Transport { source, .. } | CaddyError::Client { source } => {
                skipper_core::Error::backend_with("caddy", kind, message, source)
            }
            _ => skipper_core::Error::backend("caddy", kind, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CaddyError {
        CaddyError::Api {
            request: "GET /config/".into(),
            status,
            message: "x".into(),
        }
    }

    #[test]
    fn kinds_follow_statuses() {
        assert_eq!(api(404).kind(), ErrorKind::NotFound);
        assert_eq!(api(412).kind(), ErrorKind::Conflict);
        assert_eq!(api(400).kind(), ErrorKind::Invalid);
        assert_eq!(api(500).kind(), ErrorKind::Internal);
        assert_eq!(api(503).kind(), ErrorKind::Transient);
        assert!(api(503).is_ambiguous());
        assert!(!api(500).is_ambiguous());
        assert!(!api(412).is_ambiguous());
    }

    #[test]
    fn refusals_are_conflicts_naming_the_domain() {
        let core: skipper_core::Error = CaddyError::NotAdopted {
            domain: "a.example.com".into(),
            server: "srv0".into(),
            index: 2,
        }
        .into();
        assert_eq!(core.kind(), ErrorKind::Conflict);
        let text = core.to_string();
        assert!(
            text.contains("a.example.com") && text.contains("adopt"),
            "{text}"
        );
        let core: skipper_core::Error = CaddyError::ConcurrentEdit {
            request: "PATCH /id/x".into(),
            domain: "a.example.com".into(),
        }
        .into();
        assert_eq!(core.kind(), ErrorKind::Conflict);
    }
}
