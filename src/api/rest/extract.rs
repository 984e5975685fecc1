//! Request plumbing every REST handler shares: the caller's key, path segments, bodies, the
//! Idempotency-Key and query parameters, each read in one place.

use std::net::SocketAddr;

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{Map, Value};

use super::AppState;
use crate::{
    domain::{parse_bool, Caller, Task, Timestamp},
    error::{Error, Result},
};

/// The authenticated caller of a REST request.
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, service: &AppState) -> Result<Self> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        // The TCP peer, never X-Forwarded-For (anyone can write that); absent when the router
        // is served without connect info, and then failures are not limited.
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        service.authenticate(authorization, client).await.map(Auth)
    }
}

/// The one path parameter of a route, percent-decoded once. A segment that cannot be decoded
/// names nothing: 404 with the JSON error body, never axum's plain-text 400.
pub struct Segment(pub String);

impl FromRequestParts<AppState> for Segment {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(segment)) => Ok(Segment(segment)),
            Err(_) => Err(Error::NotFound("No such object.".to_owned())),
        }
    }
}

/// The `Idempotency-Key` header, when sent.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(value) => value
                .to_str()
                .map(|key| IdempotencyKey(Some(key.to_owned())))
                .map_err(|_| Error::invalid("The Idempotency-Key header must be printable ASCII.")),
        }
    }
}

/// A JSON body; `None` when empty, since Scale's client sends cancel and `setMetadata({})`
/// with no body at all.
pub struct JsonBody(pub Option<Value>);

impl JsonBody {
    /// The body as a JSON object (`{}` when empty), or 400.
    pub fn object(self) -> Result<Map<String, Value>> {
        match self.0 {
            None => Ok(Map::new()),
            Some(Value::Object(fields)) => Ok(fields),
            Some(_) => Err(Error::invalid("The request body must be a JSON object.")),
        }
    }

    /// The body as it came, `{}` when empty (the service checks its shape).
    pub fn or_empty_object(self) -> Value {
        self.0.unwrap_or_else(|| Value::Object(Map::new()))
    }

    /// The body as it came, `[]` when empty.
    pub fn or_empty_array(self) -> Value {
        self.0.unwrap_or_else(|| Value::Array(Vec::new()))
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        read_body(request, state, false).await.map(JsonBody)
    }
}

/// Task creation's body: JSON, or a form as in Scale's curl examples (`-d key=value`).
pub struct JsonOrFormBody(pub JsonBody);

impl<S: Send + Sync> FromRequest<S> for JsonOrFormBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        read_body(request, state, true)
            .await
            .map(|body| JsonOrFormBody(JsonBody(body)))
    }
}

async fn read_body<S: Send + Sync>(
    request: Request,
    state: &S,
    allow_form: bool,
) -> Result<Option<Value>> {
    let content_type = media_type(request.headers());
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge("The request body is too large.".to_owned())
            } else {
                Error::invalid("The request body could not be read.")
            }
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match content_type.as_deref() {
        None | Some("application/json") => parse_json(&bytes).map(Some),
        Some(json) if json.ends_with("+json") => parse_json(&bytes).map(Some),
        Some("application/x-www-form-urlencoded") if allow_form => Ok(Some(form_to_json(&bytes))),
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

/// `application/json; charset=utf-8` → `application/json`.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
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

/// Query pairs with `key[]` read as `key`, so list parameters come either way.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(key, value)| {
        let key = key.strip_suffix("[]").unwrap_or(&key).to_owned();
        (key, value.into_owned())
    })
}

pub fn parse_bool_param(name: &str, value: &str) -> Result<bool> {
    parse_bool(value).ok_or_else(|| {
        Error::invalid(format!(
            "Parameter '{name}' must be a boolean (true or false)."
        ))
    })
}

pub fn parse_time_param(name: &str, value: &str) -> Result<Timestamp> {
    Timestamp::parse_filter(value).ok_or_else(|| {
        Error::invalid(format!(
            "Parameter '{name}' is not a valid time: use ISO 8601, e.g. 2021-04-25 or 2021-04-25T03:14:15-07:00."
        ))
    })
}

/// A string field of a JSON body; absent or null is `None`.
pub fn field_text(body: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(Error::invalid(format!(
            "Parameter '{name}' must be a string."
        ))),
    }
}

/// A boolean field of a JSON body (or a boolean word, as forms send it); absent is false.
pub fn field_flag(body: &Map<String, Value>, name: &str) -> Result<bool> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(Value::String(text)) => parse_bool_param(name, text),
        Some(_) => Err(Error::invalid(format!(
            "Parameter '{name}' must be a boolean."
        ))),
    }
}

/// An integer field of a JSON body (or its digits as a string).
pub fn field_integer(body: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    let invalid = || Error::invalid(format!("Parameter '{name}' must be an integer."));
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number.as_i64().map(Some).ok_or_else(invalid),
        Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

/// A 200 with a JSON body: Scale's clients treat any other 2xx as an error.
pub fn ok(value: Value) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}

/// Any serialisable answer as a 200 JSON response.
pub fn ok_json(body: &impl serde::Serialize) -> Response {
    (StatusCode::OK, Json(body)).into_response()
}

pub fn task_response(task: Result<Task>) -> Result<Response> {
    task.map(|task| ok_json(&super::json::TaskJson(&task)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::form_to_json;

    proptest! {
        /// Any form body becomes a JSON object; `tags` is always a list.
        #[test]
        fn any_form_body_becomes_an_object(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let value = form_to_json(&body);
            let fields = value.as_object().expect("an object");
            if let Some(tags) = fields.get("tags") {
                prop_assert!(matches!(tags, Value::Array(_)));
            }
        }
    }
}
