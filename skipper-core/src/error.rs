//! The one error type of `skipper-core`.
//!
//! Every fallible function in the crate returns [`Result`]. Backends (Docker, SQLite, NPM, registry
//! clients) translate their own failures into an [`Error`] whose [`ErrorKind`] says what a caller can
//! do about it: retry policy matches on the kind, never on message strings.

use std::time::Duration;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a backend library, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure an [`Error`] is: the part callers match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// Input was malformed (an image reference, a name, a config file): fix the input.
    Invalid,
    /// The thing asked for does not exist.
    NotFound,
    /// The operation collides with existing state (a name in use, a lock held).
    Conflict,
    /// Credentials were missing or rejected.
    Unauthorized,
    /// The remote side asked us to slow down.
    RateLimited,
    /// A passing failure (network, 5xx): the same call may succeed later.
    Transient,
    /// The operation did not finish in time.
    Timeout,
    /// A new container did not become healthy.
    Unhealthy,
    /// The operation was refused by policy (pattern mismatch, missing confirmation, shutdown).
    Rejected,
    /// Anything else: a bug or a backend answer we do not understand.
    Internal,
    /// The operation was stopped before it finished (a signal, a lost lease) and rolled back.
    Interrupted,
}

impl ErrorKind {
    /// Whether a retry of the same call could succeed without changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Transient | Self::Timeout)
    }

    /// The kind's stable snake_case name, as used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::Transient => "transient",
            Self::Timeout => "timeout",
            Self::Unhealthy => "unhealthy",
            Self::Rejected => "rejected",
            Self::Internal => "internal",
            Self::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of `skipper-core` and of the backends it drives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image reference could not be parsed.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A name (project, stage, tag, domain) is not acceptable where it is used.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What the name is for ("project name", "stage name", ...).
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The configuration file is malformed or inconsistent.
    #[error("{}", fmt_config(.field, .line, .message))]
    Config {
        /// The dotted path of the offending field (`projects.web-app.stages.dev.tag_pattern`).
        field: String,
        /// 1-based line in the file, where known.
        line: Option<usize>,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// Something that was asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for (`project "web"`, `instance 3f2a…`).
        what: String,
    },

    /// The operation collides with existing state.
    #[error("conflict: {what}")]
    Conflict {
        /// What collided.
        what: String,
    },

    /// The engine refused the request by policy.
    #[error("{reason}")]
    Rejected {
        /// Why, and what to do instead.
        reason: String,
    },

    /// A backend call failed. `kind` classifies it; `source` keeps the backend's own error.
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend ("docker", "sqlite", "npm", "registry", ...).
        backend: &'static str,
        /// The classification callers match on.
        kind: ErrorKind,
        /// What failed, in words, with the context a user needs.
        message: String,
        /// The backend library's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A backend was told to slow down (HTTP 429), and kept the wait it was asked for.
    ///
    /// [`Error::retry_after`] returns the wait; the kind is [`ErrorKind::RateLimited`].
    #[error("{backend}: {message}")]
    RateLimited {
        /// Which backend ("registry", "npm", ...).
        backend: &'static str,
        /// What was refused, in words.
        message: String,
        /// How long the remote side asked to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },

    /// An operation did not complete in time.
    #[error("{what} timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long we waited.
        after: Duration,
    },

    /// A new container did not pass its health gate.
    #[error("container {container} did not become healthy: {reason}")]
    Unhealthy {
        /// The container's name.
        container: String,
        /// What was probed and what came back.
        reason: String,
        /// The container's last log lines, oldest first.
        logs: Vec<String>,
    },

    /// The lease an operation held was lost (it expired, or another process took it over): the
    /// operation stops and writes nothing more.
    #[error(
        "lost the lease {key:?} (it expired and another process may hold it): stopped; the \
         stage's next operation repairs what this one left"
    )]
    LeaseLost {
        /// The lease key.
        key: String,
    },

    /// The operation was interrupted (a signal, a cancelled caller) and stopped between steps.
    #[error("interrupted: {reason}")]
    Interrupted {
        /// What interrupted it.
        reason: String,
    },

    /// The engine is shutting down and accepts no new work.
    #[error("the engine is shutting down; retry after it restarts")]
    ShuttingDown,

    /// The node an operation needs is offline (its agent sends no heartbeats): nothing was
    /// done. The kind is [`ErrorKind::Transient`]: the same call succeeds once it is back.
    #[error(
        "node {node:?} is offline (its agent sends no heartbeats): nothing was done; try again \
         when it is back online (skipper node show --node-id {node})"
    )]
    NodeOffline {
        /// The node.
        node: String,
    },
}

fn fmt_config(field: &str, line: &Option<usize>, message: &str) -> String {
    match line {
        Some(line) => format!("config error at {field} (line {line}): {message}"),
        None => format!("config error at {field}: {message}"),
    }
}

impl Error {
    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidReference { .. } | Self::InvalidName { .. } | Self::Config { .. } => {
                ErrorKind::Invalid
            }
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Rejected { .. } | Self::ShuttingDown => ErrorKind::Rejected,
            Self::LeaseLost { .. } | Self::Interrupted { .. } => ErrorKind::Interrupted,
            Self::Backend { kind, .. } => *kind,
            Self::NodeOffline { .. } => ErrorKind::Transient,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unhealthy { .. } => ErrorKind::Unhealthy,
        }
    }

    /// A backend error without a library source.
    pub fn backend(backend: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Backend {
            backend,
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A backend error that keeps the library's error as its source.
    pub fn backend_with(
        backend: &'static str,
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            backend,
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// `RateLimited` from `backend`, keeping the wait the remote side asked for.
    pub fn rate_limited(
        backend: &'static str,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Self::RateLimited {
            backend,
            message: message.into(),
            retry_after,
        }
    }

    /// How long the remote side asked to wait before the next call (`Retry-After`), when this is
    /// a [`RateLimited`](Self::RateLimited) error (or a deploy that failed with one) and it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// `NotFound` for `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    /// `Rejected` with a reason.
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::Rejected {
            reason: reason.into(),
        }
    }

    /// The container log lines attached to this error (for an unhealthy container), if any.
    pub fn logs(&self) -> &[String] {
        match self {
            Self::Unhealthy { logs, .. } => logs,
            _ => &[],
        }
    }

    /// The full message: this error and each of its sources, joined by `": "`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_keeps_the_wait_it_was_asked_for() {
        let e = Error::rate_limited("registry", "GET u: 429", Some(Duration::from_secs(90)));
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.kind().is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(90)));
        assert_eq!(e.to_string(), "registry: GET u: 429");
        assert_eq!(
            Error::backend("registry", ErrorKind::RateLimited, "429").retry_after(),
            None
        );
    }

    #[test]
    fn config_error_names_field_and_line() {
        let e = Error::Config {
            field: "projects.web.port".into(),
            line: Some(12),
            message: "must be 1-65535".into(),
        };
        assert_eq!(
            e.to_string(),
            "config error at projects.web.port (line 12): must be 1-65535"
        );
    }
}
