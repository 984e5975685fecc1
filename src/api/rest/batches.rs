//! Scale's batch endpoints: `/v1/batches`.

use axum::{
    extract::{RawQuery, State},
    response::Response,
    routing::{get, post},
    Router,
};

use super::{
    extract::{field_flag, field_text, ok, parse_time_param, query_pairs, Auth, JsonBody, Segment},
    json, AppState,
};
use crate::{
    domain::{BatchFilter, BatchStatus},
    error::{Error, Result},
    service::NewBatch,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/batches", get(list_batches).post(create_batch))
        .route("/batches/{name}", get(get_batch))
        .route("/batches/{name}/finalize", post(finalize_batch))
        .route("/batches/{name}/status", get(batch_status))
        .route("/batches/{name}/setMetadata", post(set_batch_metadata))
}

async fn create_batch(
    State(service): State<AppState>,
    Auth(caller): Auth,
    body: JsonBody,
) -> Result<Response> {
    // Scale's client also sends `calibration_batch` and `self_label_batch`: ignored.
    let mut body = body.object()?;
    let new = NewBatch {
        name: field_text(&body, "name")?.unwrap_or_default(),
        project: field_text(&body, "project")?.unwrap_or_default(),
        callback: field_text(&body, "callback")?,
        metadata: body.remove("metadata"),
        staging: field_flag(&body, "staging")?,
    };
    let batch = service.create_batch(caller, new).await?;
    Ok(ok(json::batch(&batch)))
}

async fn get_batch(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let batch = service.get_batch(caller, &name).await?;
    Ok(ok(json::batch(&batch)))
}

async fn list_batches(
    State(service): State<AppState>,
    Auth(caller): Auth,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let mut filter = BatchFilter::default();
    let (mut limit, mut offset) = (None, None);
    let integer = |name: &str, value: &str| -> Result<i64> {
        value
            .trim()
            .parse()
            .map_err(|_| Error::invalid(format!("Parameter '{name}' must be an integer.")))
    };
    for (key, value) in query_pairs(query.as_deref().unwrap_or("")) {
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "project" => filter.project = Some(value),
            "status" => {
                filter.status = Some(BatchStatus::parse(&value).ok_or_else(|| {
                    Error::invalid(
                        "Parameter 'status' must be one of staging, in_progress, completed.",
                    )
                })?)
            }
            "start_time" => filter.created.from = Some(parse_time_param(&key, &value)?),
            "end_time" => filter.created.to = Some(parse_time_param(&key, &value)?),
            "limit" => limit = Some(integer(&key, &value)?),
            "offset" => offset = Some(integer(&key, &value)?),
            _ => {}
        }
    }
    let page = service.list_batches(caller, filter, limit, offset).await?;
    Ok(ok(json::batch_page(&page)))
}

async fn finalize_batch(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let batch = service.finalize_batch(caller, &name).await?;
    Ok(ok(json::batch(&batch)))
}

async fn batch_status(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let (batch, counts) = service.batch_status(caller, &name).await?;
    Ok(ok(json::batch_status(&batch, &counts)))
}

/// The body is the new metadata itself, as Scale's client sends it.
async fn set_batch_metadata(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
    body: JsonBody,
) -> Result<Response> {
    let batch = service
        .set_batch_metadata(caller, &name, body.or_empty_object())
        .await?;
    Ok(ok(json::batch(&batch)))
}
