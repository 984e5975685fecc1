//! The gRPC services (served to browsers too, through grpc-web): decode, call the service,
//! encode. One file per service; shared request plumbing lives here.

mod batches;
mod bulk;
pub mod convert;
mod error;
mod projects;
mod tasks;
mod work;

use std::sync::Arc;

use axum::{http::HeaderName, response::Response};
use tonic::{metadata::MetadataValue, Request, Status};

use crate::{
    domain::Caller,
    error::{Error, Result},
    service::Service,
};

/// Every gRPC service (tasks, work, projects, batches) over the one service layer; each
/// service's trait is implemented in the file named after it.
#[derive(Clone)]
pub struct GrpcApi {
    service: Arc<Service>,
}

impl GrpcApi {
    pub fn new(service: Arc<Service>) -> Self {
        GrpcApi { service }
    }

    /// The caller named by the `authorization` metadata (Bearer, or Basic as on REST).
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        Ok(self.service.authenticate(authorization).await?)
    }
}

/// The `idempotency-key` metadata, when sent.
fn idempotency_key<T>(request: &Request<T>) -> Result<Option<String>> {
    match request.metadata().get("idempotency-key") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|key| Some(key.to_owned()))
            .map_err(|_| Error::invalid("The idempotency-key metadata must be printable ASCII.")),
    }
}

/// Marks a replayed answer, as REST's `Idempotent-Replayed` header does.
fn mark_replayed(metadata: &mut tonic::metadata::MetadataMap) {
    metadata.insert("idempotent-replayed", MetadataValue::from_static("true"));
}

/// Empty strings mean "not given", as proto3 cannot tell them apart.
fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// tonic answers a message over `max_decoding_message_size` with `OUT_OF_RANGE`; the API
/// promises `RESOURCE_EXHAUSTED` with REST's 413 message and reason. No handler of ours returns
/// `OUT_OF_RANGE`.
pub async fn oversized_message_is_resource_exhausted(mut response: Response) -> Response {
    const OUT_OF_RANGE: &str = "11";
    let oversized = response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status == OUT_OF_RANGE);
    if oversized {
        let status = Status::from(Error::PayloadTooLarge(
            "The request body is too large.".to_owned(),
        ));
        let replacement = status.into_http::<()>();
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            let name = HeaderName::from_static(name);
            match replacement.headers().get(&name) {
                Some(value) => response.headers_mut().insert(name, value.clone()),
                None => response.headers_mut().remove(name),
            };
        }
    }
    response
}
