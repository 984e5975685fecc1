//! The OpenAPI 3.1 description of `/v1`, served at `GET /v1/openapi.json` without a key (it
//! describes the API, it reveals no data). Paths come from each handler's `#[utoipa::path]`,
//! registered with `utoipa_axum::routes!` together with the route itself, so a route cannot
//! exist without its description.

use axum::{
    body::Bytes,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use utoipa::{
    openapi::{
        path::Operation,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        ContentBuilder, OpenApi as Document, Ref, ResponseBuilder,
    },
    Modify, OpenApi,
};

use super::schema;
use crate::error::Error;

pub const PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "annotask",
        description = "Scale AI's v1 Task API (REST), as served by annotask. Every success is HTTP 200 \
with a JSON body; every error is `{\"status_code\": N, \"error\": \"…\"}` with HTTP status N.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "/v1")),
    paths(openapi_json),
    components(schemas(schema::ErrorBody)),
    security(("basic" = []), ("bearer" = [])),
    modifiers(&Security),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "The API key as user name, an empty password (Scale's scheme).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <API key>`."))
                    .build(),
            ),
        );
    }
}

/// Adds the answers every keyed operation can give, whatever it does: 401 (missing or unknown
/// key) and 503 (the database cannot be reached, which checking the key already needs).
pub fn add_common_responses(document: &mut Document) {
    for (path, item) in document.paths.paths.iter_mut() {
        if path == PATH {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            add_error(operation, 401, "Missing or unknown API key.");
            add_error(
                operation,
                503,
                "The database cannot be reached; retry later.",
            );
        }
    }
}

fn add_error(operation: &mut Operation, status: u16, description: &str) {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build();
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| response.into());
}

/// This document (OpenAPI 3.1). Public: no key needed.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    security(()),
    responses((status = 200, description = "This OpenAPI 3.1 document.", content_type = "application/json", body = Object)),
)]
#[allow(dead_code)]
async fn openapi_json() {}

/// The document as served: serialised once, when the router is built.
pub fn document_response(document: &Document) -> impl Fn() -> Response + Clone {
    let body = match serde_json::to_vec(document) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(err) => {
            tracing::error!(error = %err, "the OpenAPI document could not be serialised");
            None
        }
    };
    move || match &body {
        Some(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes.clone(),
        )
            .into_response(),
        None => Error::Internal.into_response(),
    }
}
