//! Scale's project endpoints: `/v1/projects`.

use axum::{
    extract::State,
    response::Response,
    routing::{get, post},
    Router,
};
use serde_json::{Map, Value};

use super::{
    extract::{field_flag, field_text, ok, Auth, JsonBody, Segment},
    json, AppState,
};
use crate::error::{Error, Result};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects", get(list_projects).post(create_project))
        .route("/projects/{name}", get(get_project))
        .route("/projects/{name}/setParams", post(set_project_params))
}

/// `params` as an object, or none.
fn params(body: &mut Map<String, Value>) -> Result<Map<String, Value>> {
    match body.remove("params") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(params)) => Ok(params),
        Some(_) => Err(Error::invalid("Parameter 'params' must be a JSON object.")),
    }
}

async fn create_project(
    State(service): State<AppState>,
    Auth(caller): Auth,
    body: JsonBody,
) -> Result<Response> {
    // Scale's client also sends `rapid`, `studio` and `datasetId`: accepted and ignored.
    let mut body = body.object()?;
    let name = field_text(&body, "name")?.unwrap_or_default();
    let task_type = field_text(&body, "type")?
        .ok_or_else(|| Error::invalid("Missing required parameter: 'type'."))?;
    let params = params(&mut body)?;
    let project = service
        .create_project(caller, &name, &task_type, params)
        .await?;
    Ok(ok(json::project(&project)))
}

async fn get_project(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let project = service.get_project(caller, &name).await?;
    Ok(ok(json::project(&project)))
}

/// A bare JSON array, as Scale returns it.
async fn list_projects(State(service): State<AppState>, Auth(caller): Auth) -> Result<Response> {
    let projects = service.list_projects(caller).await?;
    Ok(ok(Value::Array(
        projects.iter().map(json::project).collect(),
    )))
}

/// The body's fields are the new params (Scale's client sends them as keyword arguments);
/// a `params` object is read as more of them, and `patch` merges over the previous version.
async fn set_project_params(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
    body: JsonBody,
) -> Result<Response> {
    let mut body = body.object()?;
    let patch = field_flag(&body, "patch")?;
    body.remove("patch");
    let nested = params(&mut body)?;
    body.extend(nested);
    let project = service
        .set_project_params(caller, &name, body, patch)
        .await?;
    Ok(ok(json::project(&project)))
}
