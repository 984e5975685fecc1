//! Scale's project endpoints: `/v1/projects`.

use axum::{extract::State, response::Response};
use serde_json::{Map, Value};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    extract::{field_flag, field_text, ok, Auth, JsonBody, Segment},
    json, schema, AppState,
};
use crate::error::{Error, Result};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project))
        .routes(routes!(set_project_params))
}

/// `params` as an object, or none.
fn params(body: &mut Map<String, Value>) -> Result<Map<String, Value>> {
    match body.remove("params") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(params)) => Ok(params),
        Some(_) => Err(Error::invalid("Parameter 'params' must be a JSON object.")),
    }
}

/// Create a project.
#[utoipa::path(
    post,
    path = "/projects",
    tag = "projects",
    request_body(content = schema::CreateProject, content_type = "application/json"),
    responses(
        (status = 200, description = "The project.", body = schema::Project),
        (status = 400, description = "Missing `type` or invalid fields.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 409, description = "A project with this name exists.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
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

/// A project by name.
#[utoipa::path(
    get,
    path = "/projects/{name}",
    tag = "projects",
    params(("name" = String, Path, description = "The project name (percent-decoded once).")),
    responses(
        (status = 200, description = "The project.", body = schema::Project),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such project.", body = schema::ErrorBody),
    ),
)]
async fn get_project(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(name): Segment,
) -> Result<Response> {
    let project = service.get_project(caller, &name).await?;
    Ok(ok(json::project(&project)))
}

/// A bare JSON array, as Scale returns it.
#[utoipa::path(
    get,
    path = "/projects",
    tag = "projects",
    responses(
        (status = 200, description = "Every project of the account.", body = Vec<schema::Project>),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
    ),
)]
async fn list_projects(State(service): State<AppState>, Auth(caller): Auth) -> Result<Response> {
    let projects = service.list_projects(caller).await?;
    Ok(ok(Value::Array(
        projects.iter().map(json::project).collect(),
    )))
}

/// The body's fields are the new params (Scale's client sends them as keyword arguments);
/// a `params` object is read as more of them, and `patch` merges over the previous version.
#[utoipa::path(
    post,
    path = "/projects/{name}/setParams",
    tag = "projects",
    params(("name" = String, Path, description = "The project name (percent-decoded once).")),
    request_body(content = Option<schema::SetParams>, content_type = "application/json"),
    responses(
        (status = 200, description = "The project with its new `param_history` entry.", body = schema::Project),
        (status = 400, description = "Invalid fields.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such project.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
    ),
)]
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
