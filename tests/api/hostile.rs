//! Hostile input never makes the server answer 5xx: every refusal is a 4xx with the JSON error body.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{backend_tests, helpers::TestApp};

/// Sends raw bytes and checks the answer is a well-formed 4xx error (or a 200).
async fn assert_no_server_error(app: &TestApp, method: Method, path: &str, body: Vec<u8>) {
    let response = app
        .request(method.clone(), path)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(
        !status.is_server_error(),
        "{method} {path} answered {status}: {text}"
    );
    // A head over `--max-header-bytes` is refused by the HTTP layer before any route: 431
    // without a body.
    if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        return;
    }
    if !status.is_success() {
        let error: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: error body is not JSON: {text}"));
        assert_eq!(error["status_code"], status.as_u16(), "{text}");
        assert!(error["error"].is_string(), "{text}");
    }
}

fn hostile_values() -> Vec<Value> {
    let mut deep = json!("x");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    vec![
        json!("nul \u{0000} inside"),
        json!("\u{0000}"),
        json!(""),
        json!(" "),
        json!("x".repeat(70_000)),
        json!(-1),
        json!(1.5e300),
        json!(true),
        json!(null),
        json!([]),
        json!([null, 1, {"a": "\u{0000}"}]),
        json!({}),
        json!({"\u{0000}": "\u{0000}"}),
        deep,
    ]
}

async fn hostile_creation_fields_never_cause_a_server_error(app: TestApp) {
    let base = json!({
        "instruction": "label",
        "attachment": "https://e.com/a.png",
        "geometries": {"box": {"objects_to_annotate": ["car"]}},
    });
    for field in [
        "instruction",
        "attachment",
        "attachment_type",
        "geometries",
        "callback_url",
        "metadata",
        "unique_id",
        "tags",
        "project",
        "batch",
        "clear_unique_id_on_error",
    ] {
        for value in hostile_values() {
            let mut body = base.clone();
            body[field] = value;
            let bytes = serde_json::to_vec(&body).expect("json");
            assert_no_server_error(&app, Method::POST, "/v1/task/imageannotation", bytes).await;
        }
    }
}

async fn hostile_bodies_never_cause_a_server_error(app: TestApp) {
    let (status, task) = app.create_image_task(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let id = task["task_id"].as_str().expect("task_id").to_owned();
    let mut nested = String::new();
    for _ in 0..10_000 {
        nested.push('[');
    }
    let bodies: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"null".to_vec(),
        b"123".to_vec(),
        b"\"text\"".to_vec(),
        nested.into_bytes(),
        br#"{"unique_id": "\u0000"}"#.to_vec(),
        br#"["\u0000", "a"]"#.to_vec(),
        br#"{"accepted": "\u0000", "comments": 5}"#.to_vec(),
    ];
    let endpoints = [
        (Method::POST, "/v1/task/imageannotation".to_owned()),
        (Method::POST, format!("/v1/task/{id}/setMetadata")),
        (Method::POST, format!("/v1/task/{id}/unique_id")),
        (Method::PUT, format!("/v1/task/{id}/tags")),
        (Method::POST, format!("/v1/task/{id}/tags")),
        (Method::DELETE, format!("/v1/task/{id}/tags")),
        (Method::POST, format!("/v1/task/{id}/audit")),
        (Method::POST, format!("/v1/task/{id}/cancel")),
    ];
    for (method, path) in &endpoints {
        for body in &bodies {
            assert_no_server_error(&app, method.clone(), path, body.clone()).await;
        }
    }
}

async fn hostile_paths_and_queries_never_cause_a_server_error(app: TestApp) {
    let long = "a".repeat(10_000);
    let paths = [
        "/v1/task/%00".to_owned(),
        "/v1/task/%ff%fe".to_owned(),
        format!("/v1/task/{long}"),
        "/v1/task/000000000000000000000000/cancel?clear_unique_id=%00".to_owned(),
        "/v1/tasks?unique_id=%00&tags=%00&project=%00&batch=%00&type=%00".to_owned(),
        "/v1/tasks?customer_review_status=%00,%ff".to_owned(),
        "/v1/tasks?limit=-1".to_owned(),
        "/v1/tasks?limit=99999999999999999999999".to_owned(),
        "/v1/tasks?next_token=%00".to_owned(),
        "/v1/tasks?start_time=99999-01-01".to_owned(),
        "/v1/tasks?start_time=2021-02-30".to_owned(),
        "/v1/tasks?updated_before=%ff%fe".to_owned(),
        format!("/v1/tasks?tags={long}&unique_id={long}"),
        "/v1/tasks?status=PENDING&status=%00".to_owned(),
    ];
    for path in &paths {
        assert_no_server_error(&app, Method::GET, path, Vec::new()).await;
        assert_no_server_error(&app, Method::POST, path, Vec::new()).await;
    }
}

/// SPEC's NUL rule: text kept in its own column (names, ids, instruction, tags, URLs) must not
/// hold a NUL; a body with one is a 400 naming the field, on both backends (PostgreSQL could
/// not store it; SQLite could, so "any non-5xx" would let a silent store through).
async fn a_nul_in_stored_text_is_a_400_naming_the_field(app: TestApp) {
    let (status, task) = app.create_image_task(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let id = task["task_id"].as_str().expect("task_id").to_owned();
    app.create_project("nul-project", "imageannotation").await;
    let task_with = |field: &str, value: Value| {
        let mut body = json!({
            "instruction": "Draw a box around each car",
            "attachment": "https://example.com/car.png",
            "geometries": {"box": {"objects_to_annotate": ["car"]}},
        });
        body[field] = value;
        body
    };
    let cases = [
        (
            "/v1/task/imageannotation".to_owned(),
            task_with("instruction", json!("a\u{0}b")),
            "instruction",
        ),
        (
            "/v1/task/imageannotation".to_owned(),
            task_with("unique_id", json!("a\u{0}b")),
            "unique_id",
        ),
        (
            "/v1/task/imageannotation".to_owned(),
            task_with("callback_url", json!("https://e.com/\u{0}")),
            "callback_url",
        ),
        (
            "/v1/task/imageannotation".to_owned(),
            task_with("project", json!("nul\u{0}project")),
            "project",
        ),
        (
            format!("/v1/task/{id}/unique_id"),
            json!({"unique_id": "a\u{0}b"}),
            "unique_id",
        ),
        (
            format!("/v1/task/{id}/tags"),
            json!(["fine", "a\u{0}b"]),
            "tags",
        ),
        (
            "/v1/projects".to_owned(),
            json!({"name": "a\u{0}b", "type": "imageannotation"}),
            "name",
        ),
        (
            "/v1/batches".to_owned(),
            json!({"name": "nul-batch", "project": "nul\u{0}project"}),
            "project",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = app.post(&path, &body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "POST {path} {body}: {answer}"
        );
        assert_eq!(answer["status_code"], 400, "{answer}");
        let message = answer["error"].as_str().expect("error text");
        assert!(
            message.contains("NUL") && message.contains(field),
            "POST {path}: the error names the rule and the field '{field}': {message}"
        );
    }
    // Nothing was stored: the task keeps its own unique_id and tags.
    let (status, unchanged) = app.get(&format!("/v1/task/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{unchanged}");
    assert!(
        unchanged.get("unique_id").is_none_or(Value::is_null),
        "{unchanged}"
    );
    assert!(
        unchanged
            .get("tags")
            .is_none_or(|tags| tags.as_array().is_some_and(Vec::is_empty)),
        "{unchanged}"
    );
}

backend_tests!(
    a_nul_in_stored_text_is_a_400_naming_the_field,
    hostile_creation_fields_never_cause_a_server_error,
    hostile_bodies_never_cause_a_server_error,
    hostile_paths_and_queries_never_cause_a_server_error,
    hostile_input_to_projects_batches_and_the_work_queue_never_causes_a_server_error,
);

/// The project, batch and work-queue endpoints, with hostile fields, bodies and names.
async fn hostile_input_to_projects_batches_and_the_work_queue_never_causes_a_server_error(
    app: TestApp,
) {
    app.create_project("p", "imageannotation").await;
    app.create_batch("b", "p", json!({})).await;
    let (_, task) = app.create_image_task(json!({})).await;
    let id = task["task_id"].as_str().expect("task_id").to_owned();
    let bodies = [
        (
            "/v1/projects",
            json!({"type": "imageannotation", "name": "n"}),
            ["type", "name", "params"].as_slice(),
        ),
        (
            "/v1/projects/p/setParams",
            json!({"instruction": "x"}),
            ["instruction", "patch", "params"].as_slice(),
        ),
        (
            "/v1/batches",
            json!({"project": "p", "name": "n2"}),
            ["project", "name", "callback", "metadata", "staging"].as_slice(),
        ),
        (
            "/v1/work/claim",
            json!({}),
            ["project", "batch", "type", "limit", "lease_seconds"].as_slice(),
        ),
        (
            &*format!("/v1/task/{id}/lease/heartbeat"),
            json!({"lease_token": "t"}),
            ["lease_token", "lease_seconds"].as_slice(),
        ),
        (
            &*format!("/v1/task/{id}/complete"),
            json!({"lease_token": "t", "response": {}}),
            ["lease_token", "response"].as_slice(),
        ),
        (
            &*format!("/v1/task/{id}/fail"),
            json!({"lease_token": "t", "error": "e"}),
            ["lease_token", "error"].as_slice(),
        ),
        (
            "/v1/task/imageannotation",
            json!({"attachment": "https://e.com/a.png", "geometries": {"box": {}}}),
            ["project", "batch"].as_slice(),
        ),
    ];
    for (path, base, fields) in bodies {
        for field in fields {
            for value in hostile_values() {
                let mut body = base.clone();
                body[*field] = value;
                let bytes = serde_json::to_vec(&body).expect("json");
                assert_no_server_error(&app, Method::POST, path, bytes).await;
            }
        }
        for raw in [
            b"{".to_vec(),
            b"[1]".to_vec(),
            b"\xff".to_vec(),
            b"null".to_vec(),
        ] {
            assert_no_server_error(&app, Method::POST, path, raw).await;
        }
    }
    let long = "a".repeat(10_000);
    for name in ["%00", "%ff%fe", "a%00b", long.as_str(), "%2F%2F", "..%2F.."] {
        for (method, path) in [
            (Method::GET, format!("/v1/projects/{name}")),
            (Method::POST, format!("/v1/projects/{name}/setParams")),
            (Method::GET, format!("/v1/batches/{name}")),
            (Method::GET, format!("/v1/batches/{name}/status")),
            (Method::POST, format!("/v1/batches/{name}/finalize")),
            (Method::POST, format!("/v1/batches/{name}/setMetadata")),
            (
                Method::GET,
                format!("/v1/batches?project={name}&status={name}&start_time={name}"),
            ),
            (Method::POST, format!("/v1/task/{name}/lease/release")),
        ] {
            assert_no_server_error(&app, method, &path, b"{}".to_vec()).await;
        }
    }
}
