//! annotask: Scale AI's v1 Task API over REST, gRPC and grpc-web, on SQLite or PostgreSQL.

pub mod api;
pub mod bulk_client;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod jobs;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

/// Code generated from `proto/annotask/v1/*.proto`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("annotask.v1");

    /// For gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("annotask_descriptor");
}
