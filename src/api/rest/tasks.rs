//! Scale's task endpoints: `/v1/task/…` and `/v1/tasks`.

use axum::{
    extract::{RawQuery, State},
    http::HeaderValue,
    response::{IntoResponse, Response},
};
use serde_json::Value;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    extract::{
        field_flag, field_text, ok_json, parse_bool_param, parse_time_param, query_pairs,
        task_response, Auth, IdempotencyKey, JsonBody, JsonOrFormBody, Segment,
    },
    json, schema, AppState,
};
use crate::{
    domain::{parse_bool, ListQuery, TaskStatus, TimeRange},
    error::{Error, Result},
    service::{tags_from_json, TagEdit},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_task, create_task))
        .routes(routes!(list_tasks))
        .routes(routes!(cancel_task))
        .routes(routes!(set_task_metadata))
        .routes(routes!(update_task_unique_id, delete_task_unique_id))
        .routes(routes!(set_task_tags, add_task_tags, delete_task_tags))
        .routes(routes!(audit_task))
}

/// Create a task of `{task_id_or_type}` (a Scale task type). JSON or form body.
#[utoipa::path(
    post,
    path = "/task/{task_id_or_type}",
    tag = "tasks",
    params(
        ("task_id_or_type" = String, Path, description = "The task type, e.g. `imageannotation`."),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for a retried creation (≤ 255 chars)."),
    ),
    request_body(content(
        (schema::CreateTask = "application/json"),
        (schema::CreateTask = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "The new task (or the replayed answer, with `Idempotent-Replayed: true`).", body = schema::Task),
        (status = 400, description = "Unknown type or invalid fields.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "The project or batch does not exist.", body = schema::ErrorBody),
        (status = 409, description = "The unique_id is held by another task, or the Idempotency-Key was used with other parameters.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
        (status = 429, description = "The first request with this Idempotency-Key is still running.", body = schema::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds."))),
    ),
)]
async fn create_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_type): Segment,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    JsonOrFormBody(body): JsonOrFormBody,
) -> Result<Response> {
    let fields = body.object()?;
    let created = service
        .create_task(caller, idempotency_key.as_deref(), &task_type, fields)
        .await?;
    let mut response = match created.outcome {
        Ok(task) => ok_json(&json::TaskJson(&task)),
        Err(err) => err.into_response(),
    };
    if created.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A task by id.
#[utoipa::path(
    get,
    path = "/task/{task_id_or_type}",
    tag = "tasks",
    params(("task_id_or_type" = String, Path, description = "The task id (24 hex digits).")),
    responses(
        (status = 200, description = "The task.", body = schema::Task),
        (status = 404, description = "No such task (also a malformed id).", body = schema::ErrorBody),
    ),
)]
async fn get_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
) -> Result<Response> {
    task_response(service.get_task(caller, &task_id).await)
}

/// Tasks, newest first, filtered; paged by `next_token` (or `offset`).
#[utoipa::path(
    get,
    path = "/tasks",
    tag = "tasks",
    params(schema::ListTasksQuery),
    responses(
        (status = 200, description = "A page of tasks.", body = schema::TaskPage),
        (status = 400, description = "An invalid value of a known parameter, or a malformed `next_token`.", body = schema::ErrorBody),
    ),
)]
async fn list_tasks(
    State(service): State<AppState>,
    Auth(caller): Auth,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let query = parse_list_query(query.as_deref().unwrap_or(""))?;
    let page = service.list_tasks(caller, query).await?;
    Ok(ok_json(&json::PageJson(&page)))
}

/// Cancel a pending task (idempotent).
#[utoipa::path(
    post,
    path = "/task/{task_id}/cancel",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id."), schema::CancelQuery),
    responses(
        (status = 200, description = "The task.", body = schema::Task),
        (status = 400, description = "The task is completed or failed, or `clear_unique_id` is not a boolean.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
    ),
)]
async fn cancel_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let mut clear_unique_id = false;
    for (key, value) in query_pairs(query.as_deref().unwrap_or("")) {
        if key == "clear_unique_id" {
            clear_unique_id = parse_bool_param(&key, &value)?;
        }
    }
    task_response(service.cancel_task(caller, &task_id, clear_unique_id).await)
}

/// Replace the task's metadata with the body.
#[utoipa::path(
    post,
    path = "/task/{task_id}/setMetadata",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id.")),
    request_body(content = Option<Object>, content_type = "application/json"),
    responses(
        (status = 200, description = "The task.", body = schema::Task),
        (status = 400, description = "The body is not a JSON object, or too large a metadata.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
    ),
)]
async fn set_task_metadata(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    body: JsonBody,
) -> Result<Response> {
    let metadata = body.or_empty_object();
    task_response(service.set_task_metadata(caller, &task_id, metadata).await)
}

/// Set the task's unique_id.
#[utoipa::path(
    post,
    path = "/task/{task_id}/unique_id",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id.")),
    request_body(content = schema::UniqueIdBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The task.", body = schema::Task),
        (status = 400, description = "Missing or invalid `unique_id`.", body = schema::ErrorBody),
        (status = 409, description = "Another task holds this unique_id.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
    ),
)]
async fn update_task_unique_id(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    body: JsonBody,
) -> Result<Response> {
    let unique_id = match body.or_empty_object().get("unique_id") {
        Some(Value::String(unique_id)) => unique_id.clone(),
        Some(_) => return Err(Error::invalid("Parameter 'unique_id' must be a string.")),
        None => return Err(Error::invalid("Missing required parameter: 'unique_id'.")),
    };
    task_response(
        service
            .update_task_unique_id(caller, &task_id, unique_id)
            .await,
    )
}

/// Clear the task's unique_id.
#[utoipa::path(
    delete,
    path = "/task/{task_id}/unique_id",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id.")),
    responses(
        (status = 200, description = "The task.", body = schema::Task),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
    ),
)]
async fn delete_task_unique_id(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
) -> Result<Response> {
    task_response(service.delete_task_unique_id(caller, &task_id).await)
}

/// `PUT` adds, `POST` replaces, `DELETE` removes: one handler per method, one rule underneath.
macro_rules! tag_handler {
    ($name:ident, $method:ident, $edit:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(
            $method,
            path = "/task/{task_id}/tags",
            tag = "tasks",
            params(("task_id" = String, Path, description = "The task id.")),
            request_body(content = Option<Vec<String>>, content_type = "application/json",
                description = "Tags: non-empty strings."),
            responses(
                (status = 200, description = "The task.", body = schema::Task),
                (status = 400, description = "Not an array of non-empty strings, or too many tags.", body = schema::ErrorBody),
                (status = 403, description = "A worker key.", body = schema::ErrorBody),
                (status = 404, description = "No such task.", body = schema::ErrorBody),
                (status = 413, description = "The body is too large.", body = schema::ErrorBody),
            ),
        )]
        async fn $name(
            State(service): State<AppState>,
            Auth(caller): Auth,
            Segment(task_id): Segment,
            body: JsonBody,
        ) -> Result<Response> {
            let tags = tags_from_json(body.or_empty_array())?;
            task_response(service.edit_task_tags(caller, &task_id, $edit, tags).await)
        }
    };
}

tag_handler!(
    add_task_tags,
    put,
    TagEdit::Add,
    "Add tags (duplicates ignored, order kept)."
);
tag_handler!(set_task_tags, post, TagEdit::Replace, "Replace all tags.");
tag_handler!(
    delete_task_tags,
    delete,
    TagEdit::Remove,
    "Remove these tags."
);

/// Record a customer review of a completed task.
#[utoipa::path(
    post,
    path = "/task/{task_id}/audit",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id.")),
    request_body(content = schema::AuditBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The task.", body = schema::Task),
        (status = 400, description = "The task is not completed, or invalid fields.", body = schema::ErrorBody),
        (status = 413, description = "The body is too large.", body = schema::ErrorBody),
        (status = 403, description = "A worker key.", body = schema::ErrorBody),
        (status = 404, description = "No such task.", body = schema::ErrorBody),
    ),
)]
async fn audit_task(
    State(service): State<AppState>,
    Auth(caller): Auth,
    Segment(task_id): Segment,
    body: JsonBody,
) -> Result<Response> {
    let body = body.object()?;
    let accepted = match body.get("accepted") {
        Some(Value::Bool(accepted)) => *accepted,
        Some(Value::String(text)) => parse_bool(text)
            .ok_or_else(|| Error::invalid("Parameter 'accepted' must be a boolean."))?,
        Some(_) => return Err(Error::invalid("Parameter 'accepted' must be a boolean.")),
        None => return Err(Error::invalid("Missing required parameter: 'accepted'.")),
    };
    let comments = field_text(&body, "comments")?;
    let rework = field_flag(&body, "rework")?;
    task_response(
        service
            .audit_task(caller, &task_id, accepted, comments, rework)
            .await,
    )
}

/// `GET /v1/tasks` query parameters. Unknown keys are ignored; empty values mean "not given".
pub(super) fn parse_list_query(query: &str) -> Result<ListQuery> {
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
            "offset" => {
                list.offset = Some(value.trim().parse().map_err(|_| {
                    Error::invalid("Parameter 'offset' must be an integer, 0 or more.")
                })?)
            }
            "next_token" => list.next_token = Some(value),
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
        ] {
            let err = parse_list_query(query).unwrap_err().to_string();
            assert!(err.contains(name), "{query}: {err}");
        }
        assert!(parse_list_query("whatever=1&limited_response=True").is_ok());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::parse_list_query;
    use crate::{
        domain::{PageToken, TaskId, Timestamp},
        error::Error,
    };

    proptest! {
        /// Any query string either parses or is a 400, never a panic.
        #[test]
        fn any_list_query_parses_or_is_invalid(query in ".*") {
            if let Err(err) = parse_list_query(&query) {
                prop_assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            }
        }

        /// Time filters, tags and tokens in the shapes clients send.
        #[test]
        fn time_filters_tags_and_tokens_never_panic(
            time in "[0-9T:. +Z-]{0,40}",
            tag in ".{0,20}",
            token in "[A-Za-z0-9+/=_-]{0,80}",
        ) {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("start_time", &time)
                .append_pair("tags", &tag)
                .append_pair("next_token", &token)
                .finish();
            if let Err(err) = parse_list_query(&query) {
                prop_assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            }
            let _ = PageToken::decode(&token);
            let _ = Timestamp::parse_filter(&time);
        }

        /// `next_token` round-trips: what a page hands out, the next request reads back.
        #[test]
        fn next_tokens_round_trip(millis in 0i64..253_402_300_799_999, id in "[0-9a-f]{24}") {
            let token = PageToken {
                created_at: Timestamp::from_millis(millis),
                task_id: TaskId::parse(&id).expect("24 hex digits"),
            };
            let decoded = PageToken::decode(&token.encode()).expect("decodes");
            prop_assert_eq!(decoded.created_at, token.created_at);
            prop_assert_eq!(decoded.task_id.as_str(), id.as_str());
        }

        /// Task ids: 24 lowercase hex digits parse; nothing panics.
        #[test]
        fn task_ids_parse_only_24_hex_digits(text in ".{0,40}") {
            let parsed = TaskId::parse(&text);
            let is_hex_id = text.len() == 24 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if is_hex_id {
                prop_assert!(parsed.is_some());
            }
        }
    }
}
