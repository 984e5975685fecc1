//! `GET /v1/openapi.json`: public, OpenAPI 3.1, every /v1 route in it and every documented route
//! served; the Task schema names exactly the keys the server sends.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{Backend, TestApp};

/// Every /v1 route. A route added to the router is in the document (utoipa-axum registers both
/// at once), so this test fails until the route is listed here too, i.e. looked at.
const ROUTES: &[&str] = &[
    "GET /batches",
    "POST /batches",
    "GET /batches/{name}",
    "POST /batches/{name}/finalize",
    "POST /batches/{name}/setMetadata",
    "GET /batches/{name}/status",
    "GET /openapi.json",
    "GET /projects",
    "POST /projects",
    "GET /projects/{name}",
    "POST /projects/{name}/setParams",
    "GET /task/{task_id_or_type}",
    "POST /task/{task_id_or_type}",
    "POST /task/{task_id}/audit",
    "POST /task/{task_id}/cancel",
    "POST /task/{task_id}/complete",
    "POST /task/{task_id}/fail",
    "POST /task/{task_id}/lease/heartbeat",
    "POST /task/{task_id}/lease/release",
    "POST /task/{task_id}/setMetadata",
    "DELETE /task/{task_id}/tags",
    "POST /task/{task_id}/tags",
    "PUT /task/{task_id}/tags",
    "DELETE /task/{task_id}/unique_id",
    "POST /task/{task_id}/unique_id",
    "GET /tasks",
    "GET /tasks/export",
    "POST /tasks/import",
    "POST /work/claim",
];

const METHODS: [&str; 4] = ["get", "post", "put", "delete"];

async fn fetch_document(app: &TestApp) -> Value {
    // No key: the document is public.
    let response = app
        .http
        .get(app.url("/v1/openapi.json"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert_eq!(content_type, "application/json");
    response.json().await.expect("the document is JSON")
}

/// `#/components/schemas/X` → the schema.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` anywhere under `value`.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::String(reference)) = fields.get("$ref") {
                found.push(reference.clone());
            }
            fields.values().for_each(|field| references(field, found));
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_public_openapi_3_1_and_lists_every_route() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let document = fetch_document(&app).await;

    let version = document["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "{version}");
    assert!(document["info"]["title"].is_string());
    assert!(document["info"]["version"].is_string());
    assert_eq!(document["servers"][0]["url"], "/v1");
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["basic"]["type"], "http");
    assert_eq!(schemes["basic"]["scheme"], "basic");

    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        assert!(path.starts_with('/'), "{path}");
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let route = format!("{} {path}", method.to_uppercase());
            let responses = operation["responses"].as_object().expect("responses");
            assert!(responses.contains_key("200"), "{route}: no 200");
            if path != "/openapi.json" {
                assert!(responses.contains_key("401"), "{route}: no 401");
                for (status, response) in responses.iter().filter(|(status, _)| *status != "200") {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{route} {status}"
                    );
                }
            }
            // Every `{param}` of the path template is declared.
            let declared: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|parameter| parameter["in"] == "path")
                .filter_map(|parameter| parameter["name"].as_str())
                .collect();
            let in_template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, in_template, "{route}");
            documented.insert(route);
        }
    }
    let expected: BTreeSet<String> = ROUTES.iter().map(|route| route.to_string()).collect();
    assert_eq!(documented, expected);

    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        assert!(
            resolve(&document, &reference).is_some(),
            "{reference} is not in the document"
        );
    }
}

/// The document describes the router: every documented operation exists (a keyless call is
/// answered 401, never the 404/405 of a missing route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let document = fetch_document(&app).await;
    for (path, item) in document["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{task_id_or_type}", "imageannotation")
            .replace("{task_id}", "0123456789abcdef01234567")
            .replace("{name}", "some-name");
        for method in METHODS
            .into_iter()
            .filter(|method| item.get(*method).is_some())
        {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = app
                .http
                .request(method.clone(), app.url(&format!("/v1{concrete}")))
                .send()
                .await
                .expect("sent");
            let expected = if path == "/openapi.json" {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(response.status(), expected, "{method} {path}");
        }
    }
}

/// Property names of a component schema, and which of them are required.
fn schema_keys(document: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = &document["components"]["schemas"][name];
    assert_eq!(schema["additionalProperties"], false, "{name}");
    let properties = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect();
    let required = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(|key| key.as_str().map(str::to_owned))
        .collect();
    (properties, required)
}

fn assert_fits(document: &Value, name: &str, body: &Value) {
    let (properties, required) = schema_keys(document, name);
    let sent: BTreeSet<String> = body
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    assert!(
        sent.is_subset(&properties),
        "{name}: undocumented keys {:?}",
        sent.difference(&properties).collect::<Vec<_>>()
    );
    assert!(
        required.is_subset(&sent),
        "{name}: required keys missing {:?}",
        required.difference(&sent).collect::<Vec<_>>()
    );
    // Optional keys are left out when unset, never sent as null.
    for (key, value) in body.as_object().into_iter().flatten() {
        assert!(!value.is_null(), "{name}.{key} is null");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_schema_names_exactly_what_the_server_sends() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let document = fetch_document(&app).await;

    // A bare task: only the required keys (and the always-present ones).
    let (status, bare) = app.create_image_task(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{bare}");
    assert_fits(&document, "Task", &bare);

    // A test-world task completes at once: response, completed_at, and everything optional set.
    let test_key = app.key_for_same_account(&app.account, true).await;
    let project = format!("p{}", std::process::id());
    let (status, created_project) = app
        .send(
            app.request_as(&test_key, Method::POST, "/v1/projects")
                .json(&json!({"name": project, "type": "imageannotation"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created_project}");
    assert_fits(&document, "Project", &created_project);
    let (status, batch) = app
        .send(
            app.request_as(&test_key, Method::POST, "/v1/batches")
                .json(&json!({"name": format!("{project}-b"), "project": project})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_fits(&document, "Batch", &batch);
    let (status, task) = app
        .send(
            app.request_as(&test_key, Method::POST, "/v1/task/imageannotation")
                .json(&json!({
                    "instruction": "Box the cars",
                    "attachment": "https://example.com/car.png",
                    "geometries": {"box": {"objects_to_annotate": ["car"]}},
                    "callback_url": "https://example.com/hook",
                    "metadata": {"k": "v"},
                    "unique_id": format!("{project}-u"),
                    "tags": ["a"],
                    "project": project,
                    "batch": format!("{project}-b"),
                })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    let task_id = task["task_id"].as_str().expect("task_id");
    let (status, audited) = app
        .send(
            app.request_as(
                &test_key,
                Method::POST,
                &format!("/v1/task/{task_id}/audit"),
            )
            .json(&json!({"accepted": true, "comments": "fine"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audited}");
    assert_fits(&document, "Task", &audited);
    for key in [
        "response",
        "completed_at",
        "unique_id",
        "tags",
        "project",
        "batch",
    ] {
        assert!(audited.get(key).is_some(), "{key} should be set: {audited}");
    }
    assert_fits(&document, "Audit", &audited["audits"][0]);

    let (status, page) = app
        .send(app.request_as(&test_key, Method::GET, "/v1/tasks?limit=1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_fits(&document, "TaskPage", &page);
    let (status, limited) = app
        .send(app.request_as(&test_key, Method::GET, "/v1/tasks?limited_response=true"))
        .await;
    assert_eq!(status, StatusCode::OK, "{limited}");
    assert_fits(&document, "LimitedTask", &limited["docs"][0]);

    let (status, error) = app.get("/v1/task/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_fits(&document, "ErrorBody", &error);
}
