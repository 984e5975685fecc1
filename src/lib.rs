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

    /// A JSON object as a `google.protobuf.Struct`, for clients of these services (the
    /// server writes its `Struct`s itself: `api::grpc::JsonStruct`).
    pub fn struct_from_json(
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> prost_types::Struct {
        prost_types::Struct {
            fields: object
                .iter()
                .map(|(key, value)| (key.clone(), value_from_json(value)))
                .collect(),
        }
    }

    fn value_from_json(value: &serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        use serde_json::Value;
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(flag) => Kind::BoolValue(*flag),
            Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
            Value::String(text) => Kind::StringValue(text.clone()),
            Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(value_from_json).collect(),
            }),
            Value::Object(object) => Kind::StructValue(struct_from_json(object)),
        };
        prost_types::Value { kind: Some(kind) }
    }

    /// For gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("annotask_descriptor");
}
