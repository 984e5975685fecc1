//! Transports only: decode the wire, call the service, encode the answer. One folder per
//! transport, one file per resource inside it, the same names on each side.

mod bulk;
pub mod console;
pub mod grpc;
pub mod rest;
mod spool;
