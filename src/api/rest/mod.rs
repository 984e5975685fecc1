//! Scale's REST API under `/v1`, plus the ops endpoints: decode the request, call the service,
//! encode Scale's JSON. One file per resource; shared request plumbing lives in `extract`.

mod batches;
mod bulk;
mod error;
mod extract;
pub mod json;
mod ops;
mod projects;
mod tasks;
mod work;

use std::sync::Arc;

use axum::Router;

pub use error::not_found;

use crate::service::Service;

type AppState = Arc<Service>;

/// Scale's routes, relative to `/v1`.
pub fn v1_router(service: AppState) -> Router {
    Router::new()
        .merge(tasks::routes())
        .merge(bulk::routes())
        .merge(work::routes())
        .merge(projects::routes())
        .merge(batches::routes())
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(service)
}

/// `/healthz` and `/metrics`, at the root.
pub fn ops_router(service: AppState) -> Router {
    ops::routes().with_state(service)
}
