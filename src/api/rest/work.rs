//! The work queue: `/v1/work/claim` and `/v1/task/{id}/lease|complete|fail`.

use axum::{extract::State, response::Response, routing::post, Router};
use serde_json::{json, Map, Value};

use super::{
    extract::{ok, task_response, Auth, JsonBody, Segment},
    json, AppState,
};
use crate::{
    domain::ClaimFilter,
    error::{Error, Result},
    service::{ClaimRequest, ClaimedTask},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/work/claim", post(claim_tasks))
        .route("/task/{task_id}/lease/heartbeat", post(heartbeat_lease))
        .route("/task/{task_id}/lease/release", post(release_lease))
        .route("/task/{task_id}/complete", post(complete_task))
        .route("/task/{task_id}/fail", post(fail_task))
}

fn text(body: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(Error::invalid(format!(
            "Parameter '{name}' must be a string."
        ))),
    }
}

fn integer(body: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("Parameter '{name}' must be an integer."))),
        Some(Value::String(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid(format!("Parameter '{name}' must be an integer."))),
        Some(_) => Err(Error::invalid(format!(
            "Parameter '{name}' must be an integer."
        ))),
    }
}

fn lease_token(body: &Map<String, Value>) -> Result<String> {
    text(body, "lease_token")?
        .ok_or_else(|| Error::invalid("Missing required parameter: 'lease_token'."))
}

fn lease(claimed: &ClaimedTask) -> Value {
    json!({
        "task": json::task(&claimed.task),
        "lease_token": claimed.lease_token,
        "lease_expires_at": claimed.lease_expires_at.to_iso(),
    })
}

async fn claim_tasks(
    State(service): State<AppState>,
    Auth(caller): Auth,
    body: JsonBody,
) -> Result<Response> {
    let body = body.object()?;
    let non_empty = |name| text(&body, name).map(|value| value.filter(|text| !text.is_empty()));
    let request = ClaimRequest {
        filter: ClaimFilter {
            project: non_empty("project")?,
            batch: non_empty("batch")?,
            task_type: non_empty("type")?,
        },
        limit: integer(&body, "limit")?,
        lease_seconds: integer(&body, "lease_seconds")?,
    };
    let claimed = service.claim_tasks(caller, request).await?;
    Ok(ok(
        json!({"leases": claimed.iter().map(lease).collect::<Vec<_>>()}),
    ))
}

async fn heartbeat_lease(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    body: JsonBody,
) -> Result<Response> {
    let body = body.object()?;
    let expires_at = service
        .heartbeat_lease(
            caller,
            &task_id,
            &lease_token(&body)?,
            integer(&body, "lease_seconds")?,
        )
        .await?;
    Ok(ok(json!({"lease_expires_at": expires_at.to_iso()})))
}

async fn release_lease(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    body: JsonBody,
) -> Result<Response> {
    let body = body.object()?;
    task_response(
        service
            .release_lease(caller, &task_id, &lease_token(&body)?)
            .await,
    )
}

async fn complete_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    body: JsonBody,
) -> Result<Response> {
    let mut body = body.object()?;
    let token = lease_token(&body)?;
    let response = body
        .remove("response")
        .ok_or_else(|| Error::invalid("Missing required parameter: 'response'."))?;
    task_response(
        service
            .complete_task(caller, &task_id, &token, response)
            .await,
    )
}

async fn fail_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    body: JsonBody,
) -> Result<Response> {
    let body = body.object()?;
    let token = lease_token(&body)?;
    let error = text(&body, "error")?
        .ok_or_else(|| Error::invalid("Missing required parameter: 'error'."))?;
    task_response(service.fail_task(caller, &task_id, &token, error).await)
}
