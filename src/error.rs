//! The one error type of the domain and its stable reasons. It knows no transport: REST maps
//! it to HTTP in `api/rest/error.rs`, gRPC to a status in `api/grpc/error.rs`, and the store
//! translates database errors into it in `store/error.rs`.

use std::collections::HashMap;

/// Serializable so an idempotent creation can store and replay the error it answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// Bad input: 400 / `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is valid but the task's state forbids it: 400 / `FAILED_PRECONDITION`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Missing or unknown API key: 401 / `UNAUTHENTICATED`.
    #[error("{0}")]
    Unauthenticated(String),
    /// The key may not do this (a worker key outside the work queue): 403 / `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// Unknown, malformed or another account's object: 404 / `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// Another task holds the unique_id: 409 / `ALREADY_EXISTS`.
    #[error("The unique_id (\"{unique_id}\") is already used for a different task ({task_id}).")]
    UniqueIdConflict { unique_id: String, task_id: String },
    /// The lease token is not the task's live lease: 409 / `FAILED_PRECONDITION`.
    #[error("{0}")]
    LeaseLost(String),
    /// The name is taken (a project or batch): 409 / `ALREADY_EXISTS`.
    #[error("{0}")]
    Conflict(String),
    /// An Idempotency-Key reused with other parameters or by another account: 409 / `ABORTED`.
    #[error("{0}")]
    IdempotencyConflict(String),
    /// The first request with this Idempotency-Key is still running: 429 / `RESOURCE_EXHAUSTED`.
    #[error("A request with this Idempotency-Key is still in progress; retry shortly.")]
    IdempotencyInFlight,
    /// Too many failed authentications from the caller's address: 429 / `RESOURCE_EXHAUSTED`.
    #[error(
        "Too many failed authentication attempts from your address; retry in {retry_after_secs} s."
    )]
    TooManyAuthFailures { retry_after_secs: u64 },
    /// Request body over the configured limit: 413 / `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The database cannot be reached: 503 / `UNAVAILABLE`.
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// A bug or an unexpected storage failure: 500 / `INTERNAL`. The cause is logged, never returned.
    #[error("internal error")]
    Internal,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    pub fn worker_key() -> Self {
        Error::PermissionDenied("This key may only work tasks.".to_owned())
    }

    pub fn lease_lost() -> Self {
        Error::LeaseLost(
            "The lease token is not this task's live lease: it expired, was released, or belongs to another claim."
                .to_owned(),
        )
    }

    pub fn task_not_found() -> Self {
        Error::NotFound("No task found with that task_id.".to_owned())
    }

    /// Stable machine-readable reason, sent as `google.rpc.ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::FailedPrecondition(_) => "TASK_NOT_CANCELABLE",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::NotFound(_) => "NOT_FOUND",
            Error::UniqueIdConflict { .. } => "UNIQUE_ID_CONFLICT",
            Error::LeaseLost(_) => "LEASE_LOST",
            Error::Conflict(_) => "ALREADY_EXISTS",
            Error::IdempotencyConflict(_) => "IDEMPOTENCY_KEY_CONFLICT",
            Error::IdempotencyInFlight => "IDEMPOTENCY_KEY_IN_FLIGHT",
            Error::TooManyAuthFailures { .. } => "TOO_MANY_AUTH_FAILURES",
            Error::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Error::Unavailable => "UNAVAILABLE",
            Error::Internal => "INTERNAL",
        }
    }

    /// Extra `ErrorInfo` metadata, e.g. the task that holds a conflicting unique_id.
    pub fn details(&self) -> HashMap<String, String> {
        match self {
            Error::UniqueIdConflict { unique_id, task_id } => HashMap::from([
                ("unique_id".to_owned(), unique_id.clone()),
                ("conflicting_task_id".to_owned(), task_id.clone()),
            ]),
            Error::TooManyAuthFailures { retry_after_secs } => HashMap::from([(
                "retry_after_seconds".to_owned(),
                retry_after_secs.to_string(),
            )]),
            _ => HashMap::new(),
        }
    }
}
