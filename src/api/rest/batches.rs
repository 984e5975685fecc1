//! Scale's batch endpoints: `/v1/batches`.

use axum::{
    extract::{RawQuery, State},
    response::Response,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    extract::{field_flag, field_text, ok, parse_time_param, query_pairs, Auth, JsonBody, Segment},
    json, schema, AppState,
};
use crate::{
    domain::{BatchFilter, BatchStatus},
    error::{Error, Result},
    service::NewBatch,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_batches, create_batch))
        .routes(routes!(get_batch))
        .routes(routes!(finalize_batch))
        .routes(routes!(batch_status))
        .routes(routes!(set_batch_metadata))
}

/// Create a batch in a project.
#[utoipa::path(
    post,
    path = "/batches",
    tag = "batches",
    request_body(content = schema::CreateBatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The batch.", body = schema::Batch),
        (status = 400, description = "Missing or invalid fields.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such project.", body = schema::ErrorBody),
        (status = 409, description = "A batch with this name exists.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
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

/// A batch by name.
#[utoipa::path(
    get,
    path = "/batches/{name}",
    tag = "batches",
    params(("name" = String, Path, description = "The batch name (percent-decoded once).")),
    responses(
        (status = 200, description = "The batch.", body = schema::Batch),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such batch.", body = schema::ErrorBody),
    ),
)]
async fn get_batch(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let batch = service.get_batch(caller, &name).await?;
    Ok(ok(json::batch(&batch)))
}

/// Batches, newest first.
#[utoipa::path(
    get,
    path = "/batches",
    tag = "batches",
    params(schema::ListBatchesQuery),
    responses(
        (status = 200, description = "A page of batches.", body = schema::BatchPage),
        (status = 400, description = "An invalid value of a known parameter.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
    ),
)]
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

/// Release a staging batch's tasks to the work queue.
#[utoipa::path(
    post,
    path = "/batches/{name}/finalize",
    tag = "batches",
    params(("name" = String, Path, description = "The batch name (percent-decoded once).")),
    responses(
        (status = 200, description = "The batch.", body = schema::Batch),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such batch.", body = schema::ErrorBody),
    ),
)]
async fn finalize_batch(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let batch = service.finalize_batch(caller, &name).await?;
    Ok(ok(json::batch(&batch)))
}

/// How many of the batch's tasks are in each status.
#[utoipa::path(
    get,
    path = "/batches/{name}/status",
    tag = "batches",
    params(("name" = String, Path, description = "The batch name (percent-decoded once).")),
    responses(
        (status = 200, description = "The counts.", body = schema::BatchCounts),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such batch.", body = schema::ErrorBody),
    ),
)]
async fn batch_status(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let (batch, counts) = service.batch_status(caller, &name).await?;
    Ok(ok(json::batch_status(&batch, &counts)))
}

/// The body is the new metadata itself, as Scale's client sends it.
/// Replace the batch's metadata with the body.
#[utoipa::path(
    post,
    path = "/batches/{name}/setMetadata",
    tag = "batches",
    params(("name" = String, Path, description = "The batch name (percent-decoded once).")),
    request_body(content = Option<Object>, content_type = "application/json"),
    responses(
        (status = 200, description = "The batch.", body = schema::Batch),
        (status = 400, description = "The body is not a JSON object.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such batch.", body = schema::ErrorBody),
    ),
)]
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
