//! The domain error on the gRPC edge: a status code, the REST message, and an `ErrorInfo`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

const ERROR_DOMAIN: &str = "annotask";

/// No wildcard arm: a new error variant cannot be forgotten here.
pub(super) fn grpc_code(err: &Error) -> Code {
    match err {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::FailedPrecondition(_) | Error::LeaseLost(_) => Code::FailedPrecondition,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::NotFound(_) => Code::NotFound,
        Error::UniqueIdConflict { .. } | Error::Conflict(_) => Code::AlreadyExists,
        Error::IdempotencyConflict(_) => Code::Aborted,
        Error::IdempotencyInFlight
        | Error::TooManyAuthFailures { .. }
        | Error::PayloadTooLarge(_) => Code::ResourceExhausted,
        Error::Unavailable => Code::Unavailable,
        Error::Internal => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let details = ErrorDetails::with_error_info(err.reason(), ERROR_DOMAIN, err.details());
        Status::with_error_details(grpc_code(&err), err.to_string(), details)
    }
}
