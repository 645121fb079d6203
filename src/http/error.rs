//! The one place where errors become HTTP statuses and JSON error bodies.
//!
//! Bodies look like `{"error": {"message", "type", "code", "request_id"}}`. Internal
//! failures are logged in full and answered with a generic message, so no
//! store or responder detail leaks to clients.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::engine::EngineError;
use crate::protocol::RequestError;
use crate::sessions::{AuthError, SessionError};

#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn rate_limited(retry_after: u64, limit: u32) -> Self {
        let message =
            format!("this session's limit of {limit} requests per minute is reached; retry in {retry_after} s");
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure inside the gateway, answered with a generic message; the caller logs the cause.
    pub(super) fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the gateway failed to process the request")
    }

    /// An answer that could not be encoded; the caller logs the cause.
    pub(super) fn unencodable() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "could not encode the answer")
    }

    /// The error family, by status, as in OpenAI-style error bodies.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
        }
        let mut error = json!({"message": self.message, "type": self.kind(), "code": self.code});
        // The id the answer's `x-request-id` carries (`request_id.rs`), so that a client that logs
        // only the body still holds what finds the request's log lines.
        if let Some(id) = super::request_id::current() {
            error["request_id"] = id.into();
        }
        response.json(json!({ "error": error }))
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let code = match error {
            AuthError::Missing => "missing_client_secret",
            AuthError::Unknown => "invalid_client_secret",
            AuthError::Expired => "session_expired",
            AuthError::Cancelled => "session_cancelled",
            AuthError::Unavailable => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", error.to_string())
            }
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, error.to_string())
    }
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::BadRequest(message) => ApiError::bad_request(message),
            SessionError::NotFound(_) => ApiError::not_found(error.to_string()),
            SessionError::Store(inner) => {
                tracing::error!(error = %inner, "store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the gateway's store is unavailable",
                )
            }
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        let code = match &error {
            RequestError::InvalidJson(_) | RequestError::NotAnObject => "invalid_json",
            RequestError::MissingType | RequestError::UnknownType(_) => "invalid_type",
            RequestError::MissingParams(_) | RequestError::InvalidParams { .. } => "invalid_params",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::NotFound { .. } => ApiError::not_found(error.to_string()),
            EngineError::BadRequest(message) => ApiError::bad_request(message),
            EngineError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            EngineError::Forbidden(message) => ApiError::forbidden("forbidden", message),
            EngineError::PayloadTooLarge(message) => ApiError::payload_too_large(message),
            EngineError::Unsupported(message) => ApiError::new(StatusCode::NOT_IMPLEMENTED, "unsupported", message),
            EngineError::Busy(message) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "thread_busy", message),
            EngineError::Unavailable(message) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            // Not a 5xx: the gateway itself is well, and a proxy in front must not take it for down and
            // route around it. 424 (Failed Dependency) says that what the request depended on failed.
            EngineError::UpstreamFailed(message) => {
                ApiError::new(StatusCode::FAILED_DEPENDENCY, "upstream_unavailable", message)
            }
            EngineError::Store(inner) => {
                tracing::error!(error = %inner, "store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the gateway's store is unavailable",
                )
            }
            EngineError::Blobs(inner) => {
                tracing::error!(error = %inner, "blob store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "blob_store_unavailable",
                    "the gateway's attachment storage is unavailable",
                )
            }
            EngineError::Responder(detail) => {
                tracing::error!(%detail, "responder failure");
                ApiError::internal()
            }
        }
    }
}
