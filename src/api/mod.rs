//! Transports only: decode the wire, call the service, encode the answer.

pub mod convert;
pub mod grpc;
pub mod rest;
mod rest_json;
