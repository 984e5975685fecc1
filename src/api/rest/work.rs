//! The work queue: `/v1/work/claim` and `/v1/task/{id}/lease|complete|fail`.

use axum::{
    extract::{FromRequest, Request, State},
    response::Response,
};
use serde_json::{json, Map, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    extract::{field_integer, field_text, ok, task_response, Auth, JsonBody, Segment},
    json, schema, AppState,
};
use crate::{
    domain::ClaimFilter,
    error::{Error, Result},
    service::{ClaimRequest, ClaimedTask},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(claim_tasks))
        .routes(routes!(heartbeat_lease))
        .routes(routes!(release_lease))
        .routes(routes!(complete_task))
        .routes(routes!(fail_task))
}

fn lease(claimed: &ClaimedTask) -> Value {
    json!({
        "task": json::task(&claimed.task),
        "lease_token": claimed.lease_token,
        "lease_expires_at": claimed.lease_expires_at.to_iso(),
    })
}

/// Claim the oldest available pending tasks, each under a lease.
#[utoipa::path(
    post,
    path = "/work/claim",
    tag = "work",
    request_body(content = Option<schema::ClaimRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The leases (an empty array when nothing is available).", body = schema::Leases),
        (status = 400, description = "Invalid fields (`limit` 1–100, `lease_seconds` 1–3600).", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
async fn claim_tasks(
    State(service): State<AppState>,
    Auth(caller): Auth,
    body: JsonBody,
) -> Result<Response> {
    let body = body.object()?;
    let non_empty =
        |name| field_text(&body, name).map(|value| value.filter(|text| !text.is_empty()));
    let request = ClaimRequest {
        filter: ClaimFilter {
            project: non_empty("project")?,
            batch: non_empty("batch")?,
            task_type: non_empty("type")?,
        },
        limit: field_integer(&body, "limit")?,
        lease_seconds: field_integer(&body, "lease_seconds")?,
    };
    let claimed = service.claim_tasks(caller, request).await?;
    Ok(ok(
        json!({"leases": claimed.iter().map(lease).collect::<Vec<_>>()}),
    ))
}

/// A lease call's body: its `lease_token` and the other fields.
struct LeaseBody {
    token: String,
    fields: Map<String, Value>,
}

impl<S: Send + Sync> FromRequest<S> for LeaseBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        let fields = JsonBody::from_request(request, state).await?.object()?;
        let token = field_text(&fields, "lease_token")?
            .ok_or_else(|| Error::invalid("Missing required parameter: 'lease_token'."))?;
        Ok(LeaseBody { token, fields })
    }
}

fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| Error::invalid(format!("Missing required parameter: '{name}'.")))
}

/// Extend a lease.
#[utoipa::path(
    post,
    path = "/task/{task_id}/lease/heartbeat",
    tag = "work",
    params(("task_id" = String, Path, description = "The task id.")),
    request_body(content = schema::HeartbeatBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The lease's new expiry.", body = schema::LeaseExpiry),
        (status = 400, description = "Missing or invalid fields.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
        (status = 409, description = "The token is not the task's live lease (`LEASE_LOST`); nothing changed.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
async fn heartbeat_lease(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    lease: LeaseBody,
) -> Result<Response> {
    let seconds = field_integer(&lease.fields, "lease_seconds")?;
    let expires_at = service
        .heartbeat_lease(caller, &task_id, &lease.token, seconds)
        .await?;
    Ok(ok(json!({"lease_expires_at": expires_at.to_iso()})))
}

/// Give a leased task back to the queue.
#[utoipa::path(
    post,
    path = "/task/{task_id}/lease/release",
    tag = "work",
    params(("task_id" = String, Path, description = "The task id.")),
    request_body(content = schema::ReleaseBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The task, back in the queue.", body = schema::Task),
        (status = 400, description = "Missing or invalid fields.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
        (status = 409, description = "The token is not the task's live lease (`LEASE_LOST`); nothing changed.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
async fn release_lease(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    lease: LeaseBody,
) -> Result<Response> {
    task_response(service.release_lease(caller, &task_id, &lease.token).await)
}

/// Answer a leased task.
#[utoipa::path(
    post,
    path = "/task/{task_id}/complete",
    tag = "work",
    params(("task_id" = String, Path, description = "The task id.")),
    request_body(content = schema::CompleteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The task, `completed`.", body = schema::Task),
        (status = 400, description = "Missing or invalid fields.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
        (status = 409, description = "The token is not the task's live lease (`LEASE_LOST`); nothing changed.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
async fn complete_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    mut lease: LeaseBody,
) -> Result<Response> {
    let response = required(lease.fields.remove("response"), "response")?;
    task_response(
        service
            .complete_task(caller, &task_id, &lease.token, response)
            .await,
    )
}

/// Give up on a leased task: it ends in `error`.
#[utoipa::path(
    post,
    path = "/task/{task_id}/fail",
    tag = "work",
    params(("task_id" = String, Path, description = "The task id.")),
    request_body(content = schema::FailBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The task, `error`.", body = schema::Task),
        (status = 400, description = "Missing or invalid fields.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
        (status = 409, description = "The token is not the task's live lease (`LEASE_LOST`); nothing changed.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
async fn fail_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    lease: LeaseBody,
) -> Result<Response> {
    let error = required(field_text(&lease.fields, "error")?, "error")?;
    task_response(
        service
            .fail_task(caller, &task_id, &lease.token, error)
            .await,
    )
}
