//! Scale's REST API under `/v1`, plus the ops endpoints: decode the request, call the service,
//! encode Scale's JSON. One file per resource; shared request plumbing lives in `extract`.

mod batches;
mod bulk;
mod error;
mod extract;
pub mod json;
mod openapi;
mod ops;
mod projects;
mod schema;
mod tasks;
mod work;

use std::sync::Arc;

use axum::{routing::get, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::not_found;

use crate::service::Service;

type AppState = Arc<Service>;

/// Scale's routes, relative to `/v1`, and their OpenAPI document at `/v1/openapi.json`.
pub fn v1_router(service: AppState) -> Router {
    let (router, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(tasks::routes())
        .merge(bulk::routes())
        .merge(work::routes())
        .merge(projects::routes())
        .merge(batches::routes())
        .split_for_parts();
    openapi::add_common_responses(&mut document);
    let serve_document = openapi::document_response(&document);
    router
        .route(
            openapi::PATH,
            get(move || std::future::ready(serve_document())),
        )
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(service)
}

/// `/healthz` and `/metrics`, at the root.
pub fn ops_router(service: AppState) -> Router {
    ops::routes().with_state(service)
}
