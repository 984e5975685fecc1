//! The gRPC services (served to browsers too, through grpc-web): decode, call the service,
//! encode. One file per service; shared request plumbing lives here.

mod batches;
mod bulk;
pub mod convert;
mod error;
mod json_struct;
mod projects;
mod tasks;
mod work;

pub use json_struct::JsonStruct;

/// The services as the server implements them: generated from the same `proto/` files as
/// [`crate::proto`], except that a `google.protobuf.Struct` is a [`JsonStruct`].
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/server/annotask.v1.rs"));
}

use std::{net::SocketAddr, sync::Arc};

use axum::{extract::ConnectInfo, http::HeaderName, response::Response};
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
        // tonic keeps the HTTP request's extensions, where axum put the TCP peer.
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        Ok(self.service.authenticate(authorization, client).await?)
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

/// tonic answers bytes that are not the method's protobuf message with `INTERNAL`; they are the
/// caller's bad input: `INVALID_ARGUMENT` (REST's 400). Our own `INTERNAL` says "internal error".
pub async fn undecodable_message_is_invalid_argument(mut response: Response) -> Response {
    const INTERNAL: &str = "13";
    // tonic's message, percent-encoded as grpc-message is on the wire.
    const DECODE_FAILED: &[u8] = b"failed%20to%20decode%20Protobuf%20message";
    let headers = response.headers();
    let undecodable = headers
        .get("grpc-status")
        .is_some_and(|status| status == INTERNAL)
        && headers
            .get("grpc-message")
            .is_some_and(|message| message.as_bytes().starts_with(DECODE_FAILED));
    if undecodable {
        let invalid_argument = i32::from(tonic::Code::InvalidArgument).to_string();
        if let Ok(value) = invalid_argument.parse() {
            response
                .headers_mut()
                .insert(HeaderName::from_static("grpc-status"), value);
        }
    }
    response
}
