//! Scale's REST paths under `/v1`: decode the request, call the service, encode Scale's JSON.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, FromRequestParts, Path, RawQuery, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Map, Value};

use super::rest_json;
use crate::{
    domain::{parse_bool, ListQuery, PageToken, Scope, TaskStatus, TimeRange, Timestamp},
    error::{Error, Result},
    service::{tags_from_json, Service, TagEdit},
};

type AppState = Arc<Service>;

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Routes relative to `/v1`.
pub fn router(service: AppState) -> Router {
    Router::new()
        .route("/task/{segment}", get(get_task).post(create_task))
        .route("/tasks", get(list_tasks))
        .route("/task/{task_id}/cancel", post(cancel_task))
        .route("/task/{task_id}/setMetadata", post(set_task_metadata))
        .route(
            "/task/{task_id}/unique_id",
            post(update_task_unique_id).delete(delete_task_unique_id),
        )
        .route(
            "/task/{task_id}/tags",
            post(set_task_tags)
                .put(add_task_tags)
                .delete(delete_task_tags),
        )
        .route("/task/{task_id}/audit", post(audit_task))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(service)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body = Json(json!({"status_code": status.as_u16(), "error": self.to_string()}));
        let mut response = (status, body).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub async fn not_found() -> Error {
    Error::NotFound("No such endpoint.".to_owned())
}

async fn method_not_allowed() -> Response {
    let status = StatusCode::METHOD_NOT_ALLOWED;
    let body =
        json!({"status_code": status.as_u16(), "error": "Method not allowed on this endpoint."});
    (status, Json(body)).into_response()
}

/// The authenticated caller of a REST request.
struct Caller(Scope);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, service: &AppState) -> Result<Self> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        service.authenticate(authorization).await.map(Caller)
    }
}

/// The one path parameter of a route, percent-decoded once. A segment that cannot be decoded
/// names nothing: 404 with the JSON error body, never axum's plain-text 400.
struct Segment(String);

impl FromRequestParts<AppState> for Segment {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(segment)) => Ok(Segment(segment)),
            Err(_) => Err(Error::NotFound("No such object.".to_owned())),
        }
    }
}

type Body = Result<Bytes, BytesRejection>;

fn ok(value: Value) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}

fn task_response(task: Result<crate::domain::Task>) -> Result<Response> {
    task.map(|task| ok(rest_json::task(&task)))
}

async fn create_task(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_type): Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let idempotency_key =
        match headers.get(IDEMPOTENCY_KEY) {
            Some(value) => Some(value.to_str().map_err(|_| {
                Error::invalid("The Idempotency-Key header must be printable ASCII.")
            })?),
            None => None,
        };
    let fields = match read_body(&headers, body, Value::Object(Map::new()), true)? {
        Value::Object(fields) => fields,
        _ => return Err(Error::invalid("The request body must be a JSON object.")),
    };
    let created = service
        .create_task(scope, idempotency_key, &task_type, fields)
        .await?;
    let mut response = match created.outcome {
        Ok(task) => ok(rest_json::task(&task)),
        Err(err) => err.into_response(),
    };
    if created.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn get_task(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
) -> Result<Response> {
    task_response(service.get_task(scope, &task_id).await)
}

async fn list_tasks(
    State(service): State<AppState>,
    Caller(scope): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let query = parse_list_query(query.as_deref().unwrap_or(""))?;
    let page = service.list_tasks(scope, query).await?;
    Ok(ok(rest_json::page(&page)))
}

async fn cancel_task(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let mut clear_unique_id = false;
    for (key, value) in query_pairs(query.as_deref().unwrap_or("")) {
        if key == "clear_unique_id" {
            clear_unique_id = parse_bool_param(&key, &value)?;
        }
    }
    task_response(service.cancel_task(scope, &task_id, clear_unique_id).await)
}

async fn set_task_metadata(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let metadata = read_body(&headers, body, Value::Object(Map::new()), false)?;
    task_response(service.set_task_metadata(scope, &task_id, metadata).await)
}

async fn update_task_unique_id(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_body(&headers, body, Value::Object(Map::new()), false)?;
    let unique_id = match body.get("unique_id") {
        Some(Value::String(unique_id)) => unique_id.clone(),
        Some(_) => return Err(Error::invalid("Parameter 'unique_id' must be a string.")),
        None => return Err(Error::invalid("Missing required parameter: 'unique_id'.")),
    };
    task_response(
        service
            .update_task_unique_id(scope, &task_id, unique_id)
            .await,
    )
}

async fn delete_task_unique_id(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
) -> Result<Response> {
    task_response(service.delete_task_unique_id(scope, &task_id).await)
}

async fn edit_task_tags(
    service: &Service,
    scope: Scope,
    task_id: &str,
    edit: TagEdit,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let tags = tags_from_json(read_body(headers, body, Value::Array(Vec::new()), false)?)?;
    task_response(service.edit_task_tags(scope, task_id, edit, tags).await)
}

async fn add_task_tags(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    edit_task_tags(&service, scope, &task_id, TagEdit::Add, &headers, body).await
}

async fn set_task_tags(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    edit_task_tags(&service, scope, &task_id, TagEdit::Replace, &headers, body).await
}

async fn delete_task_tags(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    edit_task_tags(&service, scope, &task_id, TagEdit::Remove, &headers, body).await
}

async fn audit_task(
    State(service): State<AppState>,
    Caller(scope): Caller,
    Segment(task_id): Segment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_body(&headers, body, Value::Object(Map::new()), false)?;
    let accepted = match body.get("accepted") {
        Some(Value::Bool(accepted)) => *accepted,
        Some(Value::String(text)) => parse_bool(text)
            .ok_or_else(|| Error::invalid("Parameter 'accepted' must be a boolean."))?,
        Some(_) => return Err(Error::invalid("Parameter 'accepted' must be a boolean.")),
        None => return Err(Error::invalid("Missing required parameter: 'accepted'.")),
    };
    let comments = match body.get("comments") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => return Err(Error::invalid("Parameter 'comments' must be a string.")),
    };
    task_response(
        service
            .audit_task(scope, &task_id, accepted, comments)
            .await,
    )
}

/// Reads a JSON body (or, for task creation, a form). An empty body stands for `empty`,
/// since Scale's client sends cancel and `setMetadata({})` with no body at all.
fn read_body(headers: &HeaderMap, body: Body, empty: Value, allow_form: bool) -> Result<Value> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge("The request body is too large.".to_owned())
        } else {
            Error::invalid("The request body could not be read.")
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(empty);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        None | Some("application/json") => parse_json(&bytes),
        Some(json) if json.ends_with("+json") => parse_json(&bytes),
        Some("application/x-www-form-urlencoded") if allow_form => Ok(form_to_json(&bytes)),
        Some(other) => Err(Error::invalid(format!(
            "Unsupported content type '{other}': send application/json{}.",
            if allow_form {
                " or application/x-www-form-urlencoded"
            } else {
                ""
            }
        ))),
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes)
        .map_err(|err| Error::invalid(format!("The request body is not valid JSON: {err}.")))
}

/// Form fields as JSON: a repeated key (or `key[]`) becomes an array, and a value that is
/// itself a JSON object or array (e.g. `geometries`, `metadata`) is taken as that JSON.
fn form_to_json(bytes: &[u8]) -> Value {
    let mut fields = Map::new();
    for (key, value) in form_urlencoded::parse(bytes) {
        let (key, forced_list) = match key.strip_suffix("[]") {
            Some(stripped) => (stripped.to_owned(), true),
            None => (key.into_owned(), false),
        };
        let is_list = forced_list || key == "tags" || key == "attachments";
        let trimmed = value.trim_start();
        let value = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            serde_json::from_str(&value).unwrap_or(Value::String(value.into_owned()))
        } else {
            Value::String(value.into_owned())
        };
        match fields.get_mut(&key) {
            Some(Value::Array(items)) if is_list => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None if is_list => {
                fields.insert(key, Value::Array(vec![value]));
            }
            None => {
                fields.insert(key, value);
            }
        }
    }
    Value::Object(fields)
}

fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(key, value)| {
        let key = key.strip_suffix("[]").unwrap_or(&key).to_owned();
        (key, value.into_owned())
    })
}

fn parse_bool_param(name: &str, value: &str) -> Result<bool> {
    parse_bool(value).ok_or_else(|| {
        Error::invalid(format!(
            "Parameter '{name}' must be a boolean (true or false)."
        ))
    })
}

fn parse_time_param(name: &str, value: &str) -> Result<Timestamp> {
    Timestamp::parse_filter(value).ok_or_else(|| {
        Error::invalid(format!(
            "Parameter '{name}' is not a valid time: use ISO 8601, e.g. 2021-04-25 or 2021-04-25T03:14:15-07:00."
        ))
    })
}

/// `GET /v1/tasks` query parameters. Unknown keys are ignored; empty values mean "not given".
fn parse_list_query(query: &str) -> Result<ListQuery> {
    let mut list = ListQuery::default();
    let filter = &mut list.filter;
    for (key, value) in query_pairs(query) {
        if value.is_empty() {
            continue;
        }
        let time = |range: &mut TimeRange, is_start: bool| -> Result<()> {
            let at = parse_time_param(&key, &value)?;
            if is_start {
                range.from = Some(at);
            } else {
                range.to = Some(at);
            }
            Ok(())
        };
        match key.as_str() {
            "limit" => {
                list.limit = Some(value.trim().parse().map_err(|_| {
                    Error::invalid("Parameter 'limit' must be an integer between 1 and 100.")
                })?)
            }
            "next_token" => {
                list.after = Some(PageToken::decode(&value).ok_or_else(|| {
                    Error::invalid("Parameter 'next_token' is not a valid page token.")
                })?)
            }
            "start_time" | "created_after" => time(&mut filter.created, true)?,
            "end_time" | "created_before" => time(&mut filter.created, false)?,
            "completed_after" => time(&mut filter.completed, true)?,
            "completed_before" => time(&mut filter.completed, false)?,
            "updated_after" => time(&mut filter.updated, true)?,
            "updated_before" => time(&mut filter.updated, false)?,
            "status" => {
                filter.status = Some(TaskStatus::parse(&value).ok_or_else(|| {
                    Error::invalid(
                        "Parameter 'status' must be one of pending, completed, canceled, error.",
                    )
                })?)
            }
            "type" => filter.task_type = Some(value),
            "project" => filter.project = Some(value),
            "batch" => filter.batch = Some(value),
            "unique_id" => filter.unique_ids.push(value),
            "tags" => filter.tags.push(value),
            "customer_review_status" => filter.customer_review_statuses.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|status| !status.is_empty())
                    .map(str::to_owned),
            ),
            "limited_response" => list.limited_response = parse_bool_param(&key, &value)?,
            "include_attachment_url" => {
                parse_bool_param(&key, &value)?;
            }
            _ => {}
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_single_list_keys_are_both_lists() {
        let query =
            parse_list_query("tags=a&tags=b&unique_id=x&customer_review_status=accepted,fixed")
                .unwrap();
        assert_eq!(query.filter.tags, ["a", "b"]);
        assert_eq!(query.filter.unique_ids, ["x"]);
        assert_eq!(query.filter.customer_review_statuses, ["accepted", "fixed"]);
    }

    #[test]
    fn invalid_known_parameters_are_named() {
        for (query, name) in [
            ("limit=abc", "limit"),
            ("status=nope", "status"),
            ("limited_response=maybe", "limited_response"),
            ("start_time=yesterday", "start_time"),
            ("next_token=@@@", "next_token"),
        ] {
            let err = parse_list_query(query).unwrap_err().to_string();
            assert!(err.contains(name), "{query}: {err}");
        }
        assert!(parse_list_query("whatever=1&limited_response=True").is_ok());
    }

    #[test]
    fn forms_become_json_with_lists_and_nested_objects() {
        let form =
            b"instruction=hi&tags=a&tags=b&geometries=%7B%22box%22%3A%7B%7D%7D&attachments[]=x";
        let fields = form_to_json(form);
        assert_eq!(fields["instruction"], "hi");
        assert_eq!(fields["tags"], json!(["a", "b"]));
        assert_eq!(fields["geometries"], json!({"box": {}}));
        assert_eq!(fields["attachments"], json!(["x"]));
    }
}
