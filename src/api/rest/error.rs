//! The domain error on the REST edge: an HTTP status and Scale's `{"status_code", "error"}` body.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::error::Error;

/// No wildcard arm: a new error variant cannot be forgotten here.
pub(super) fn http_status(err: &Error) -> StatusCode {
    match err {
        Error::InvalidArgument(_) | Error::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::UniqueIdConflict { .. }
        | Error::Conflict(_)
        | Error::LeaseLost(_)
        | Error::IdempotencyConflict(_) => StatusCode::CONFLICT,
        Error::IdempotencyInFlight | Error::TooManyAuthFailures { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = http_status(&self);
        let retry_after = match &self {
            Error::TooManyAuthFailures { retry_after_secs } => HeaderValue::from(*retry_after_secs),
            _ => HeaderValue::from_static("1"),
        };
        let body = Json(json!({"status_code": status.as_u16(), "error": self.to_string()}));
        let mut response = (status, body).into_response();
        // Both are worth retrying soon: a key still in flight, a database briefly unreachable.
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

/// Any path no route matches.
pub async fn not_found() -> Error {
    Error::NotFound("No such endpoint.".to_owned())
}

pub(super) async fn method_not_allowed() -> Response {
    let status = StatusCode::METHOD_NOT_ALLOWED;
    let body =
        json!({"status_code": status.as_u16(), "error": "Method not allowed on this endpoint."});
    (status, Json(body)).into_response()
}
