//! One error envelope for every failure: `{"error":{"code","message","request_id"}}`, the
//! status chosen from the error kind.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use skipper_core::ErrorKind;

/// An API failure. Its `IntoResponse` is the only place a status is chosen for an error.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

/// The envelope's body (also the OpenAPI schema of every error response).
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// What failed.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable snake_case code: `not_found`, `conflict`, `invalid`, `unauthorized`, …
    pub(crate) code: String,
    /// What failed and what to do, in words.
    pub(crate) message: String,
    /// The request's `x-request-id`, to find its log lines.
    pub(crate) request_id: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required: send `Authorization: Bearer <token>` or \
             `x-admin-token: <token>`",
        )
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    /// The status for an error of `kind`: the client's mistakes are 4xx, the backends' 5xx.
    pub(crate) fn from_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        let status = match kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            // Credentials a backend refused are not the API client's: 502, not 401.
            ErrorKind::Unauthorized => StatusCode::BAD_GATEWAY,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Transient => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unhealthy => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Interrupted => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match kind {
            ErrorKind::Unauthorized => "backend_unauthorized",
            other => other.as_str(),
        };
        Self::new(status, code, message)
    }
}

impl From<skipper_core::Error> for ApiError {
    fn from(e: skipper_core::Error) -> Self {
        // The node's state, not a failure of this server: 409, retry once it is online.
        if let skipper_core::Error::NodeOffline { .. } = e {
            return Self::new(StatusCode::CONFLICT, "node_offline", e.to_string());
        }
        Self::from_kind(e.kind(), e.chain())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::from_kind(
            crate::output::error_kind_or(&e, ErrorKind::Internal),
            format!("{e:#}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, message = %self.message, "request failed");
        }
        // The request id is filled in by the middleware that knows it (`with_request_id`).
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                request_id: None,
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        r.extensions_mut().insert(IsErrorEnvelope);
        r
    }
}

/// Marks a response whose body is the error envelope (the request-id layer completes it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IsErrorEnvelope;

/// The JSON body extractor's refusals (malformed JSON, a bad field, a wrong content type) as
/// the envelope, naming what was wrong.
pub(crate) fn json_rejection(r: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection as J;
    let status = match &r {
        J::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        J::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "invalid"
    };
    ApiError::new(status, code, r.body_text())
}

pub(crate) type ApiResult<T> = std::result::Result<T, ApiError>;
