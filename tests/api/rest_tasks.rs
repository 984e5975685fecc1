//! The task endpoints over real HTTP (SPEC §2–5): creation and its validation, the wire rules
//! every answer follows, tenancy, and each mutation.

use std::{collections::HashSet, time::Duration};

use futures::future::join_all;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::{backend_tests, helpers::TestApp};

/// The body of a 200 answer.
#[track_caller]
fn ok((status, body): (StatusCode, Value)) -> Value {
    assert_eq!(status, StatusCode::OK, "expected 200, got {status}: {body}");
    body
}

/// Checks the error shape every failure must have, exactly `{"status_code": N, "error": "…"}`
/// with N the HTTP status, and returns the message.
#[track_caller]
fn error((status, body): (StatusCode, Value), expected: StatusCode) -> String {
    assert_eq!(
        status, expected,
        "expected {expected}, got {status}: {body}"
    );
    let fields = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {body}"));
    let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "status_code"], "{body}");
    assert_eq!(fields["status_code"], json!(expected.as_u16()), "{body}");
    fields["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error is not a string: {body}"))
        .to_owned()
}

/// A 400 whose message names `field`.
#[track_caller]
fn bad_request_naming(answer: (StatusCode, Value), field: &str) {
    let message = error(answer, StatusCode::BAD_REQUEST);
    assert!(
        message.contains(field),
        "message does not name '{field}': {message}"
    );
}

fn task_id(task: &Value) -> String {
    task["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task_id in {task}"))
        .to_owned()
}

/// `2021-06-23T09:09:34.752Z`: ISO-8601 UTC with exactly three fractional digits.
fn is_wire_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 24
        && bytes.iter().enumerate().all(|(at, byte)| match at {
            4 | 7 => *byte == b'-',
            10 => *byte == b'T',
            13 | 16 => *byte == b':',
            19 => *byte == b'.',
            23 => *byte == b'Z',
            _ => byte.is_ascii_digit(),
        })
}

fn is_task_id(text: &str) -> bool {
    text.len() == 24
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn image_body() -> Value {
    json!({
        "instruction": "Draw a box around each car",
        "attachment": "https://example.com/car.png",
        "attachment_type": "image",
        "geometries": {"box": {"objects_to_annotate": ["car"]}},
    })
}

/// A valid creation body for each of several task types, as Scale documents them.
fn valid_bodies() -> Vec<(&'static str, Value)> {
    vec![
        ("imageannotation", image_body()),
        (
            "categorization",
            json!({
                "instruction": "Is this company public or private?",
                "attachment": "https://www.google.com/",
                "attachment_type": "website",
                "categories": ["public", "private"],
            }),
        ),
        (
            "comparison",
            json!({
                "instruction": "Which image is brighter?",
                "attachments": ["https://example.com/a.png", "https://example.com/b.png"],
                "attachment_type": "image",
                "choices": ["left", "right"],
            }),
        ),
        (
            "textcollection",
            json!({
                "instruction": "Find the company's headquarters",
                "attachments": [{"type": "website", "content": "https://www.scale.com/"}],
                "fields": [{"type": "text", "field_id": "hq", "title": "Headquarters"}],
            }),
        ),
        (
            "videoannotation",
            json!({
                "attachments": ["https://example.com/f1.png", "https://example.com/f2.png"],
                "attachment_type": "image",
                "frame_rate": 5,
                "geometries": {"box": {"objects_to_annotate": ["car"]}},
            }),
        ),
        (
            "namedentityrecognition",
            json!({
                "instruction": "Highlight every person",
                "text": "Ada Lovelace met Charles Babbage.",
                "labels": [{"name": "PERSON"}],
            }),
        ),
    ]
}

/// For each type, the creation fields Scale cannot do without.
fn required_fields() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("imageannotation", vec!["attachment", "geometries"]),
        ("categorization", vec!["attachment", "categories"]),
        ("comparison", vec!["attachments"]),
        ("textcollection", vec!["attachments", "fields"]),
        ("videoannotation", vec!["attachments"]),
        ("namedentityrecognition", vec!["text", "labels"]),
    ]
}

async fn create_image(app: &TestApp, extra: Value) -> Value {
    ok(app.create_image_task(extra).await)
}

async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    app.send(
        app.request(method, path)
            .header(header::CONTENT_TYPE, content_type)
            .body(body),
    )
    .await
}

async fn a_task_of_each_documented_type_is_created_with_200(app: TestApp) {
    // textcollection has its own test below: its `fields` shape is the one in dispute.
    for (task_type, body) in valid_bodies()
        .into_iter()
        .filter(|(task_type, _)| *task_type != "textcollection")
    {
        let task = ok(app.post(&format!("/v1/task/{task_type}"), &body).await);
        assert_eq!(task["type"], task_type, "{task}");
        assert_eq!(task["status"], "pending", "{task}");
        assert_eq!(task["metadata"], json!({}), "{task}");
        assert_eq!(task["is_test"], false, "{task}");
        if let Some(instruction) = body.get("instruction") {
            assert_eq!(&task["instruction"], instruction, "{task}");
        }
        for (field, value) in body.as_object().unwrap() {
            if field != "instruction" {
                assert_eq!(
                    &task["params"][field], value,
                    "{task_type} params.{field}: {task}"
                );
            }
        }
        let fetched = ok(app.get(&format!("/v1/task/{}", task_id(&task))).await);
        assert_eq!(fetched, task);
    }
}

async fn a_textcollection_task_takes_fields_as_an_array_as_scale_documents(app: TestApp) {
    // Scale's textcollection: "The fields parameter is an array in which each object has a
    // field_id, type, and title."
    let (_, body) = valid_bodies()
        .into_iter()
        .find(|(task_type, _)| *task_type == "textcollection")
        .unwrap();
    let task = ok(app.post("/v1/task/textcollection", &body).await);
    assert_eq!(task["type"], "textcollection");
    assert_eq!(task["params"]["fields"], body["fields"]);
    assert_eq!(task["params"]["attachments"], body["attachments"]);
}

async fn a_created_task_has_scale_shaped_ids_and_timestamps(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let id = task_id(&task);
    assert!(is_task_id(&id), "task_id {id}");
    for field in ["created_at", "updated_at"] {
        let at = task[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {task}"));
        assert!(is_wire_time(at), "{field} {at}");
    }
    assert_eq!(task["created_at"], task["updated_at"]);
    assert!(task.get("completed_at").is_none(), "{task}");
    assert!(task.get("response").is_none(), "{task}");
    // An ObjectId-like id starts with the creation second.
    let created_at = chrono::DateTime::parse_from_rfc3339(task["created_at"].as_str().unwrap())
        .expect("created_at parses");
    let id_second = i64::from_str_radix(&id[..8], 16).expect("hex");
    assert_eq!(id_second, created_at.timestamp(), "{task}");
    let other = create_image(&app, json!({})).await;
    assert_ne!(task_id(&other), id);
}

async fn unique_id_and_tags_are_absent_until_set(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    assert!(task.get("unique_id").is_none(), "{task}");
    assert!(task.get("tags").is_none(), "{task}");
    let path = format!("/v1/task/{}", task_id(&task));
    let fetched = ok(app.get(&path).await);
    assert!(fetched.get("unique_id").is_none(), "{fetched}");
    assert!(fetched.get("tags").is_none(), "{fetched}");
    let canceled = ok(app.post(&format!("{path}/cancel"), &json!({})).await);
    assert!(canceled.get("unique_id").is_none(), "{canceled}");
    assert!(canceled.get("tags").is_none(), "{canceled}");

    let tagged = create_image(&app, json!({"unique_id": "u-1", "tags": ["a"]})).await;
    assert_eq!(tagged["unique_id"], "u-1");
    assert_eq!(tagged["tags"], json!(["a"]));
}

async fn creation_without_a_required_field_is_a_400_naming_it(app: TestApp) {
    let bodies = valid_bodies();
    for (task_type, fields) in required_fields() {
        let (_, valid) = bodies.iter().find(|(name, _)| *name == task_type).unwrap();
        for field in fields {
            let mut body = valid.clone();
            body.as_object_mut().unwrap().remove(field);
            let answer = app.post(&format!("/v1/task/{task_type}"), &body).await;
            bad_request_naming(answer, field);
        }
    }
    // Types that need an instruction name it when it is missing or blank.
    for task_type in ["categorization", "comparison"] {
        let (_, valid) = bodies.iter().find(|(name, _)| *name == task_type).unwrap();
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove("instruction");
        bad_request_naming(
            app.post(&format!("/v1/task/{task_type}"), &body).await,
            "instruction",
        );
        body["instruction"] = json!("   ");
        bad_request_naming(
            app.post(&format!("/v1/task/{task_type}"), &body).await,
            "instruction",
        );
    }
    let listed = ok(app.get("/v1/tasks").await);
    assert_eq!(
        listed["total"], 0,
        "a refused creation left a task: {listed}"
    );
}

async fn an_unknown_task_type_is_a_400(app: TestApp) {
    for task_type in ["bogus", "ImageAnnotation", "image_annotation"] {
        let message = error(
            app.post(&format!("/v1/task/{task_type}"), &image_body())
                .await,
            StatusCode::BAD_REQUEST,
        );
        assert!(message.contains(task_type), "{message}");
    }
}

async fn a_callback_url_must_be_http_or_https(app: TestApp) {
    for bad in [
        "ftp://example.com/cb",
        "not a url",
        "javascript:alert(1)",
        "mailto:a@b.c",
        "http://",
    ] {
        let answer = app.create_image_task(json!({"callback_url": bad})).await;
        bad_request_naming(answer, "callback_url");
    }
    for good in ["http://example.com/cb", "https://example.com/cb?x=1"] {
        let task = create_image(&app, json!({"callback_url": good})).await;
        assert_eq!(task["callback_url"], good);
    }
}

async fn metadata_must_be_an_object_of_at_most_64_kib(app: TestApp) {
    for bad in [json!([1, 2]), json!("text"), json!(7), json!(true)] {
        let answer = app.create_image_task(json!({"metadata": bad})).await;
        bad_request_naming(answer, "metadata");
    }
    let too_big = "x".repeat(70 * 1024);
    let answer = app
        .create_image_task(json!({"metadata": {"blob": too_big}}))
        .await;
    bad_request_naming(answer, "metadata");

    let fits = "x".repeat(60 * 1024);
    let task = create_image(&app, json!({"metadata": {"blob": fits, "n": 1}})).await;
    assert_eq!(task["metadata"]["n"], 1);
    assert_eq!(
        task["metadata"]["blob"].as_str().map(str::len),
        Some(60 * 1024)
    );
}

async fn tags_at_creation_must_be_non_empty_strings_and_at_most_100(app: TestApp) {
    for bad in [
        json!(["a", ""]),
        json!(["a", null]),
        json!([""]),
        json!([null]),
        json!("a"),
    ] {
        let answer = app.create_image_task(json!({"tags": bad})).await;
        error(answer, StatusCode::BAD_REQUEST);
    }
    let too_many: Vec<String> = (0..101).map(|n| format!("tag-{n}")).collect();
    error(
        app.create_image_task(json!({"tags": too_many})).await,
        StatusCode::BAD_REQUEST,
    );
    let hundred: Vec<String> = (0..100).map(|n| format!("tag-{n}")).collect();
    let task = create_image(&app, json!({"tags": hundred})).await;
    assert_eq!(task["tags"], json!(hundred));
    let listed = ok(app.get("/v1/tasks").await);
    assert_eq!(listed["total"], 1, "{listed}");
}

async fn a_unique_id_longer_than_255_characters_is_a_400(app: TestApp) {
    let answer = app
        .create_image_task(json!({"unique_id": "u".repeat(256)}))
        .await;
    bad_request_naming(answer, "unique_id");
    let longest = "u".repeat(255);
    let task = create_image(&app, json!({"unique_id": longest})).await;
    assert_eq!(task["unique_id"], json!(longest));
}

async fn a_body_over_10_mib_is_a_413_with_a_json_error(app: TestApp) {
    let mut body = image_body();
    body["padding"] = json!("x".repeat(10 * 1024 * 1024 + 16));
    let bytes = serde_json::to_vec(&body).unwrap();
    let answer = send_raw(
        &app,
        Method::POST,
        "/v1/task/imageannotation",
        "application/json",
        bytes,
    )
    .await;
    error(answer, StatusCode::PAYLOAD_TOO_LARGE);
    let listed = ok(app.get("/v1/tasks").await);
    assert_eq!(listed["total"], 0, "{listed}");
}

async fn a_form_encoded_creation_works_as_scales_curl_examples_send_it(app: TestApp) {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("instruction", "Draw a box around each car")
        .append_pair("attachment", "https://example.com/car.png")
        .append_pair("attachment_type", "image")
        .append_pair("geometries", r#"{"box":{"objects_to_annotate":["car"]}}"#)
        .append_pair("callback_url", "https://example.com/cb")
        .append_pair("unique_id", "form-1")
        .append_pair("tags", "a")
        .append_pair("tags", "b")
        .append_pair("metadata", r#"{"k":"v","n":2}"#)
        .finish();
    let task = ok(send_raw(
        &app,
        Method::POST,
        "/v1/task/imageannotation",
        "application/x-www-form-urlencoded",
        form,
    )
    .await);
    assert_eq!(task["type"], "imageannotation");
    assert_eq!(task["instruction"], "Draw a box around each car");
    assert_eq!(task["params"]["attachment"], "https://example.com/car.png");
    assert_eq!(
        task["params"]["geometries"],
        json!({"box": {"objects_to_annotate": ["car"]}})
    );
    assert_eq!(task["callback_url"], "https://example.com/cb");
    assert_eq!(task["unique_id"], "form-1");
    assert_eq!(task["tags"], json!(["a", "b"]));
    assert_eq!(task["metadata"], json!({"k": "v", "n": 2}));

    let missing = form_urlencoded::Serializer::new(String::new())
        .append_pair("attachment", "https://example.com/car.png")
        .finish();
    let answer = send_raw(
        &app,
        Method::POST,
        "/v1/task/imageannotation",
        "application/x-www-form-urlencoded",
        missing,
    )
    .await;
    bad_request_naming(answer, "geometries");
}

async fn a_body_that_is_not_json_is_refused_with_a_json_error(app: TestApp) {
    let (status, body) = send_raw(
        &app,
        Method::POST,
        "/v1/task/imageannotation",
        "text/plain",
        serde_json::to_string(&image_body()).unwrap(),
    )
    .await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{status}: {body}"
    );
    error((status, body), status);

    for broken in [
        r#"{"instruction": "#,
        "{'a': 1}",
        "nope",
        r#"{"a":1}{"b":2}"#,
    ] {
        let answer = send_raw(
            &app,
            Method::POST,
            "/v1/task/imageannotation",
            "application/json",
            broken,
        )
        .await;
        error(answer, StatusCode::BAD_REQUEST);
    }
    // An empty JSON body is `{}`: a 400 for the missing fields, not a crash.
    let empty = send_raw(
        &app,
        Method::POST,
        "/v1/task/imageannotation",
        "application/json",
        "",
    )
    .await;
    bad_request_naming(empty, "attachment");
    for not_an_object in [json!([1]), json!("text"), json!(null)] {
        let answer = app.post("/v1/task/imageannotation", &not_an_object).await;
        error(answer, StatusCode::BAD_REQUEST);
    }
    let listed = ok(app.get("/v1/tasks").await);
    assert_eq!(listed["total"], 0, "{listed}");
}

async fn every_error_is_a_json_object_with_status_code_and_error(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "held"})).await;
    let other = create_image(&app, json!({})).await;
    let unknown = "0123456789abcdef01234567";
    let cases: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        (
            app.request(Method::GET, "/v1/tasks?limit=abc"),
            StatusCode::BAD_REQUEST,
        ),
        (
            app.request(Method::GET, &format!("/v1/task/{unknown}")),
            StatusCode::NOT_FOUND,
        ),
        (
            app.request(Method::GET, "/v1/task/xyz"),
            StatusCode::NOT_FOUND,
        ),
        (app.http.get(app.url("/v1/tasks")), StatusCode::UNAUTHORIZED),
        (
            app.request(
                Method::POST,
                &format!("/v1/task/{}/unique_id", task_id(&other)),
            )
            .json(&json!({"unique_id": "held"})),
            StatusCode::CONFLICT,
        ),
        (
            app.request(Method::POST, &format!("/v1/task/{}/audit", task_id(&task)))
                .json(&json!({"accepted": true})),
            StatusCode::BAD_REQUEST,
        ),
        (
            app.request(Method::GET, "/v1/no/such/endpoint"),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (request, expected) in cases {
        error(app.send(request).await, expected);
    }
    // A verb the path does not take: whatever 4xx it is, the body has the same shape.
    let (status, body) = app
        .send(app.request(Method::PATCH, &format!("/v1/task/{}", task_id(&task))))
        .await;
    assert!(status.is_client_error(), "{status}: {body}");
    error((status, body), status);
}

async fn a_malformed_or_unknown_task_id_is_a_404(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let id = task_id(&task);
    let not_found = |answer| error(answer, StatusCode::NOT_FOUND);
    let unknown_message = not_found(app.get("/v1/task/0123456789abcdef01234567").await);
    for malformed in [
        "abc".to_owned(),
        "zzzzzzzzzzzzzzzzzzzzzzzz".to_owned(),
        format!("{id}0"),
        id[..23].to_owned(),
        format!("{}g", &id[..23]),
        "not-a-task-id".to_owned(),
    ] {
        let message = not_found(app.get(&format!("/v1/task/{malformed}")).await);
        assert_eq!(message, unknown_message, "{malformed}");
        let cancel = app
            .post(&format!("/v1/task/{malformed}/cancel"), &json!({}))
            .await;
        not_found(cancel);
    }
}

async fn another_accounts_task_is_indistinguishable_from_a_missing_one(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "mine", "tags": ["a"]})).await;
    let id = task_id(&task);
    let stranger = app.new_account_key(false).await;
    let unknown = "0123456789abcdef01234567";
    for target in [id.as_str(), unknown] {
        let requests = [
            app.request_as(&stranger, Method::GET, &format!("/v1/task/{target}")),
            app.request_as(
                &stranger,
                Method::POST,
                &format!("/v1/task/{target}/cancel"),
            ),
            app.request_as(
                &stranger,
                Method::POST,
                &format!("/v1/task/{target}/setMetadata"),
            )
            .json(&json!({"x": 1})),
            app.request_as(
                &stranger,
                Method::POST,
                &format!("/v1/task/{target}/unique_id"),
            )
            .json(&json!({"unique_id": "theirs"})),
            app.request_as(
                &stranger,
                Method::DELETE,
                &format!("/v1/task/{target}/unique_id"),
            ),
            app.request_as(&stranger, Method::PUT, &format!("/v1/task/{target}/tags"))
                .json(&json!(["b"])),
            app.request_as(&stranger, Method::POST, &format!("/v1/task/{target}/tags"))
                .json(&json!(["b"])),
            app.request_as(
                &stranger,
                Method::DELETE,
                &format!("/v1/task/{target}/tags"),
            )
            .json(&json!(["a"])),
            app.request_as(&stranger, Method::POST, &format!("/v1/task/{target}/audit"))
                .json(&json!({"accepted": true})),
        ];
        for request in requests {
            let message = error(app.send(request).await, StatusCode::NOT_FOUND);
            assert_eq!(message, "No task found with that task_id.", "{target}");
        }
    }
    let listed = ok(app
        .send(app.request_as(&stranger, Method::GET, "/v1/tasks"))
        .await);
    assert_eq!(listed["total"], 0, "{listed}");
    // Nothing the stranger tried changed the task, and unique_ids are per account.
    assert_eq!(ok(app.get(&format!("/v1/task/{id}")).await), task);
    let theirs = ok(app
        .send(
            app.request_as(&stranger, Method::POST, "/v1/task/imageannotation")
                .json(&{
                    let mut body = image_body();
                    body["unique_id"] = json!("mine");
                    body
                }),
        )
        .await);
    assert_eq!(theirs["unique_id"], "mine");
    assert_ne!(task_id(&theirs), id);
}

async fn the_test_world_of_an_account_is_separate_from_its_live_world(app: TestApp) {
    let live = app.key_for_same_account("acct-x", false).await;
    let test = app.key_for_same_account("acct-x", true).await;
    assert!(live.starts_with("live_"), "{live}");
    assert!(test.starts_with("test_"), "{test}");
    let mut body = image_body();
    body["unique_id"] = json!("shared-uid");
    let create = |key: &str| {
        app.request_as(key, Method::POST, "/v1/task/imageannotation")
            .json(&body)
    };
    let live_task = ok(app.send(create(&live)).await);
    assert_eq!(live_task["is_test"], false);
    // The same unique_id is free in the other world.
    let test_task = ok(app.send(create(&test)).await);
    assert_eq!(test_task["is_test"], true);
    assert_eq!(test_task["unique_id"], "shared-uid");
    // Within a world it is taken.
    error(app.send(create(&live)).await, StatusCode::CONFLICT);
    error(app.send(create(&test)).await, StatusCode::CONFLICT);

    for (key, own, foreign) in [
        (&live, &live_task, &test_task),
        (&test, &test_task, &live_task),
    ] {
        let path = |task: &Value| format!("/v1/task/{}", task_id(task));
        error(
            app.send(app.request_as(key, Method::GET, &path(foreign)))
                .await,
            StatusCode::NOT_FOUND,
        );
        ok(app.send(app.request_as(key, Method::GET, &path(own))).await);
        let listed = ok(app
            .send(app.request_as(key, Method::GET, "/v1/tasks?unique_id=shared-uid"))
            .await);
        assert_eq!(listed["total"], 1, "{listed}");
        assert_eq!(listed["docs"][0]["task_id"], own["task_id"], "{listed}");
        for path in ["/v1/tasks", "/v1/tasks?type=imageannotation"] {
            let listed = ok(app.send(app.request_as(key, Method::GET, path)).await);
            assert_eq!(listed["total"], 1, "{path}: {listed}");
            assert_eq!(
                listed["docs"].as_array().map(Vec::len),
                Some(1),
                "{path}: {listed}"
            );
        }
    }
    // The harness's own account sees neither.
    let listed = ok(app.get("/v1/tasks").await);
    assert_eq!(listed["total"], 0, "{listed}");
}

async fn a_test_world_task_completes_at_once_and_then_cannot_be_canceled(app: TestApp) {
    let test = app.new_account_key(true).await;
    let created = ok(app
        .send(
            app.request_as(&test, Method::POST, "/v1/task/imageannotation")
                .json(&image_body()),
        )
        .await);
    let path = format!("/v1/task/{}", task_id(&created));
    let task = ok(app.send(app.request_as(&test, Method::GET, &path)).await);
    assert_eq!(task["status"], "completed", "{task}");
    assert!(
        task["response"]
            .as_object()
            .is_some_and(|response| !response.is_empty()),
        "{task}"
    );
    assert!(
        task["completed_at"].as_str().is_some_and(is_wire_time),
        "{task}"
    );
    let message = error(
        app.send(app.request_as(&test, Method::POST, &format!("{path}/cancel")))
            .await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(
        message,
        "The task was already completed and cannot be canceled."
    );
    let audited = ok(app
        .send(
            app.request_as(&test, Method::POST, &format!("{path}/audit"))
                .json(&json!({"accepted": true, "comments": "fine"})),
        )
        .await);
    assert_eq!(audited["audits"][0]["accepted"], true, "{audited}");
    assert_eq!(audited["status"], "completed", "{audited}");
}

async fn every_api_path_needs_a_known_key(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let id = task_id(&task);
    let paths: Vec<(Method, String)> = vec![
        (Method::GET, "/v1/tasks".to_owned()),
        (Method::POST, "/v1/task/imageannotation".to_owned()),
        (Method::GET, format!("/v1/task/{id}")),
        (Method::GET, "/v1/task/0123456789abcdef01234567".to_owned()),
        (Method::POST, format!("/v1/task/{id}/cancel")),
        (Method::POST, format!("/v1/task/{id}/setMetadata")),
        (Method::POST, format!("/v1/task/{id}/unique_id")),
        (Method::DELETE, format!("/v1/task/{id}/unique_id")),
        (Method::PUT, format!("/v1/task/{id}/tags")),
        (Method::POST, format!("/v1/task/{id}/tags")),
        (Method::DELETE, format!("/v1/task/{id}/tags")),
        (Method::POST, format!("/v1/task/{id}/audit")),
    ];
    let unknown_live = format!("live_{}", "0".repeat(40));
    for (method, path) in &paths {
        let bare = || {
            app.http
                .request(method.clone(), app.url(path))
                .json(&image_body())
        };
        error(app.send(bare()).await, StatusCode::UNAUTHORIZED);
        for key in [unknown_live.as_str(), "test_nope", "nope", ""] {
            error(
                app.send(bare().basic_auth(key, Some(""))).await,
                StatusCode::UNAUTHORIZED,
            );
            error(
                app.send(bare().bearer_auth(key)).await,
                StatusCode::UNAUTHORIZED,
            );
        }
        error(
            app.send(bare().header(header::AUTHORIZATION, "Digest abc"))
                .await,
            StatusCode::UNAUTHORIZED,
        );
    }
    // Nothing was created or changed by the refused requests.
    let listed = ok(app.get("/v1/tasks").await);
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(ok(app.get(&format!("/v1/task/{id}")).await), task);
}

async fn bearer_authentication_works_as_well_as_basic(app: TestApp) {
    let created = ok(app
        .send(
            app.http
                .post(app.url("/v1/task/imageannotation"))
                .bearer_auth(&app.api_key)
                .json(&image_body()),
        )
        .await);
    let path = format!("/v1/task/{}", task_id(&created));
    let by_basic = ok(app.get(&path).await);
    let by_bearer = ok(app
        .send(app.http.get(app.url(&path)).bearer_auth(&app.api_key))
        .await);
    assert_eq!(by_basic, created);
    assert_eq!(by_bearer, created);
    // Scale's scheme leaves the password empty, but a password does not matter.
    let with_password = ok(app
        .send(
            app.http
                .get(app.url(&path))
                .basic_auth(&app.api_key, Some("ignored")),
        )
        .await);
    assert_eq!(with_password, created);
}

async fn cancel_of_a_pending_task_cancels_it(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let path = format!("/v1/task/{}", task_id(&task));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let canceled = ok(app.post(&format!("{path}/cancel"), &json!({})).await);
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["created_at"], task["created_at"]);
    assert!(
        canceled["updated_at"].as_str() > task["updated_at"].as_str(),
        "{task} then {canceled}"
    );
    assert!(canceled.get("completed_at").is_none(), "{canceled}");
    assert_eq!(ok(app.get(&path).await), canceled);
}

async fn cancel_of_a_canceled_task_is_a_no_op(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "keep"})).await;
    let cancel = format!("/v1/task/{}/cancel", task_id(&task));
    let first = ok(app.post(&cancel, &json!({})).await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = ok(app.post(&cancel, &json!({})).await);
    assert_eq!(second, first);
    assert_eq!(second["unique_id"], "keep");
}

async fn cancel_with_clear_unique_id_frees_the_unique_id(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "reusable"})).await;
    let id = task_id(&task);
    let canceled = ok(app
        .post(
            &format!("/v1/task/{id}/cancel?clear_unique_id=true"),
            &json!({}),
        )
        .await);
    assert_eq!(canceled["status"], "canceled");
    assert!(canceled.get("unique_id").is_none(), "{canceled}");
    let successor = create_image(&app, json!({"unique_id": "reusable"})).await;
    let bad = app
        .post(
            &format!(
                "/v1/task/{}/cancel?clear_unique_id=maybe",
                task_id(&successor)
            ),
            &json!({}),
        )
        .await;
    bad_request_naming(bad, "clear_unique_id");
    let still = ok(app.get(&format!("/v1/task/{}", task_id(&successor))).await);
    assert_eq!(still, successor, "a refused cancel changed the task");
    assert_ne!(task_id(&successor), id);
    assert_eq!(successor["unique_id"], "reusable");
}

async fn cancel_without_clear_unique_id_keeps_holding_it(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "held"})).await;
    let id = task_id(&task);
    ok(app.post(&format!("/v1/task/{id}/cancel"), &json!({})).await);
    let message = error(
        app.create_image_task(json!({"unique_id": "held"})).await,
        StatusCode::CONFLICT,
    );
    assert_eq!(
        message,
        format!("The unique_id (\"held\") is already used for a different task ({id}).")
    );
    // clear_unique_id still applies to an already-canceled task.
    let cleared = ok(app
        .post(
            &format!("/v1/task/{id}/cancel?clear_unique_id=True"),
            &json!({}),
        )
        .await);
    assert_eq!(cleared["status"], "canceled");
    assert!(cleared.get("unique_id").is_none(), "{cleared}");
    create_image(&app, json!({"unique_id": "held"})).await;
}

async fn cancel_accepts_an_empty_json_body_as_scales_client_sends_it(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let cancel = format!("/v1/task/{}/cancel", task_id(&task));
    let canceled = ok(send_raw(&app, Method::POST, &cancel, "application/json", "").await);
    assert_eq!(canceled["status"], "canceled");
    // Cancel takes no body, so whatever body comes is ignored.
    let again = ok(send_raw(&app, Method::POST, &cancel, "text/plain", "whatever").await);
    assert_eq!(again, canceled);
    let again = ok(send_raw(&app, Method::POST, &cancel, "application/json", "{not json").await);
    assert_eq!(again, canceled);
    let bare = ok(app.send(app.request(Method::POST, &cancel)).await);
    assert_eq!(bare, canceled);
}

async fn set_metadata_replaces_the_metadata(app: TestApp) {
    let task = create_image(&app, json!({"metadata": {"a": 1, "b": {"c": [1, 2]}}})).await;
    assert_eq!(task["metadata"], json!({"a": 1, "b": {"c": [1, 2]}}));
    let path = format!("/v1/task/{}", task_id(&task));
    let updated = ok(app
        .post(&format!("{path}/setMetadata"), &json!({"z": "last"}))
        .await);
    assert_eq!(updated["metadata"], json!({"z": "last"}));
    assert_eq!(ok(app.get(&path).await)["metadata"], json!({"z": "last"}));
    // Idempotent, and allowed whatever the status.
    ok(app.post(&format!("{path}/cancel"), &json!({})).await);
    let again = ok(app
        .post(&format!("{path}/setMetadata"), &json!({"z": "last"}))
        .await);
    assert_eq!(again["metadata"], json!({"z": "last"}));
    assert_eq!(again["status"], "canceled");
}

async fn set_metadata_with_an_empty_json_body_clears_it(app: TestApp) {
    let task = create_image(&app, json!({"metadata": {"a": 1}})).await;
    let path = format!("/v1/task/{}/setMetadata", task_id(&task));
    let cleared = ok(send_raw(&app, Method::POST, &path, "application/json", "").await);
    assert_eq!(cleared["metadata"], json!({}));
}

async fn set_metadata_refuses_anything_but_an_object(app: TestApp) {
    let task = create_image(&app, json!({"metadata": {"keep": true}})).await;
    let path = format!("/v1/task/{}", task_id(&task));
    for bad in [json!([1, 2]), json!("text"), json!(3), json!(null)] {
        error(
            app.post(&format!("{path}/setMetadata"), &bad).await,
            StatusCode::BAD_REQUEST,
        );
    }
    let too_big = json!({"blob": "x".repeat(70 * 1024)});
    bad_request_naming(
        app.post(&format!("{path}/setMetadata"), &too_big).await,
        "metadata",
    );
    let answer = send_raw(
        &app,
        Method::POST,
        &format!("{path}/setMetadata"),
        "text/plain",
        "{}",
    )
    .await;
    let (status, body) = answer;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{status}: {body}"
    );
    error((status, body), status);
    assert_eq!(ok(app.get(&path).await), task);
}

async fn set_metadata_bumps_updated_at(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let updated = ok(app
        .post(
            &format!("/v1/task/{}/setMetadata", task_id(&task)),
            &json!({"n": 1}),
        )
        .await);
    let updated_at = updated["updated_at"].as_str().unwrap();
    assert!(is_wire_time(updated_at), "{updated_at}");
    assert!(
        updated_at > task["updated_at"].as_str().unwrap(),
        "{task} then {updated}"
    );
    assert_eq!(updated["created_at"], task["created_at"]);
}

async fn updating_to_a_unique_id_another_task_holds_is_a_409_naming_the_holder(app: TestApp) {
    let holder = create_image(&app, json!({"unique_id": "X"})).await;
    let other = create_image(&app, json!({"unique_id": "Y"})).await;
    let message = error(
        app.post(
            &format!("/v1/task/{}/unique_id", task_id(&other)),
            &json!({"unique_id": "X"}),
        )
        .await,
        StatusCode::CONFLICT,
    );
    assert_eq!(
        message,
        format!(
            "The unique_id (\"X\") is already used for a different task ({}).",
            task_id(&holder)
        )
    );
    let unchanged = ok(app.get(&format!("/v1/task/{}", task_id(&other))).await);
    assert_eq!(unchanged, other);
}

async fn creating_with_a_taken_unique_id_is_a_409_naming_the_holder(app: TestApp) {
    let holder = create_image(&app, json!({"unique_id": "taken \"quoted\""})).await;
    let message = error(
        app.create_image_task(json!({"unique_id": "taken \"quoted\""}))
            .await,
        StatusCode::CONFLICT,
    );
    assert_eq!(
        message,
        format!(
            "The unique_id (\"taken \"quoted\"\") is already used for a different task ({}).",
            task_id(&holder)
        )
    );
    // unique_ids are unique across types too.
    let mut body = valid_bodies()[1].1.clone();
    body["unique_id"] = json!("taken \"quoted\"");
    let message = error(
        app.post("/v1/task/categorization", &body).await,
        StatusCode::CONFLICT,
    );
    assert!(
        message.ends_with(&format!("({}).", task_id(&holder))),
        "{message}"
    );
    let listed = ok(app.get("/v1/tasks").await);
    assert_eq!(listed["total"], 1, "{listed}");
}

async fn setting_a_tasks_own_unique_id_is_a_no_op(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "mine"})).await;
    let path = format!("/v1/task/{}/unique_id", task_id(&task));
    let same = ok(app.post(&path, &json!({"unique_id": "mine"})).await);
    assert_eq!(same, task);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let renamed = ok(app.post(&path, &json!({"unique_id": "renamed"})).await);
    assert_eq!(renamed["unique_id"], "renamed");
    assert!(renamed["updated_at"].as_str() > task["updated_at"].as_str());
    // The old value is free again.
    create_image(&app, json!({"unique_id": "mine"})).await;
}

async fn update_unique_id_validates_its_body(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "orig"})).await;
    let path = format!("/v1/task/{}/unique_id", task_id(&task));
    bad_request_naming(app.post(&path, &json!({})).await, "unique_id");
    bad_request_naming(app.post(&path, &json!({"unique_id": 5})).await, "unique_id");
    bad_request_naming(
        app.post(&path, &json!({"unique_id": ""})).await,
        "unique_id",
    );
    bad_request_naming(
        app.post(&path, &json!({"unique_id": "u".repeat(256)}))
            .await,
        "unique_id",
    );
    assert_eq!(
        ok(app.get(&format!("/v1/task/{}", task_id(&task))).await),
        task
    );
}

async fn delete_unique_id_frees_it(app: TestApp) {
    let task = create_image(&app, json!({"unique_id": "free-me"})).await;
    let path = format!("/v1/task/{}/unique_id", task_id(&task));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let freed = ok(app.send(app.request(Method::DELETE, &path)).await);
    assert!(freed.get("unique_id").is_none(), "{freed}");
    assert!(freed["updated_at"].as_str() > task["updated_at"].as_str());
    let fetched = ok(app.get(&format!("/v1/task/{}", task_id(&task))).await);
    assert!(fetched.get("unique_id").is_none(), "{fetched}");
    // A DELETE body is ignored, and deleting again is harmless.
    let again = ok(send_raw(&app, Method::DELETE, &path, "text/plain", "junk").await);
    assert_eq!(again, freed);
    let other = create_image(&app, json!({})).await;
    let taken = ok(app
        .post(
            &format!("/v1/task/{}/unique_id", task_id(&other)),
            &json!({"unique_id": "free-me"}),
        )
        .await);
    assert_eq!(taken["unique_id"], "free-me");
}

async fn tags_are_added_replaced_and_removed(app: TestApp) {
    let task = create_image(&app, json!({"tags": ["a", "b"]})).await;
    let path = format!("/v1/task/{}/tags", task_id(&task));
    let added = ok(app
        .send(
            app.request(Method::PUT, &path)
                .json(&json!(["b", "c", "a", "d", "c"])),
        )
        .await);
    assert_eq!(added["tags"], json!(["a", "b", "c", "d"]));
    let replaced = ok(app.post(&path, &json!(["z", "y", "z"])).await);
    assert_eq!(replaced["tags"], json!(["z", "y"]));
    let removed = ok(app
        .send(
            app.request(Method::DELETE, &path)
                .json(&json!(["z", "not-there"])),
        )
        .await);
    assert_eq!(removed["tags"], json!(["y"]));
    let emptied = ok(app
        .send(app.request(Method::DELETE, &path).json(&json!(["y"])))
        .await);
    assert_eq!(emptied["tags"], json!([]));
    let fetched = ok(app.get(&format!("/v1/task/{}", task_id(&task))).await);
    assert_eq!(fetched, emptied);
}

async fn adding_tags_to_an_untagged_task_starts_its_list(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let path = format!("/v1/task/{}/tags", task_id(&task));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let added = ok(app
        .send(
            app.request(Method::PUT, &path)
                .json(&json!(["first", "second"])),
        )
        .await);
    assert_eq!(added["tags"], json!(["first", "second"]));
    assert!(added["updated_at"].as_str() > task["updated_at"].as_str());
    // An empty JSON body is an empty list.
    let same = ok(send_raw(&app, Method::PUT, &path, "application/json", "").await);
    assert_eq!(same["tags"], json!(["first", "second"]));
}

async fn an_empty_or_null_tag_is_a_400_and_changes_nothing(app: TestApp) {
    let task = create_image(&app, json!({"tags": ["keep", "me"]})).await;
    let path = format!("/v1/task/{}/tags", task_id(&task));
    for method in [Method::PUT, Method::POST, Method::DELETE] {
        for bad in [
            json!(["new", ""]),
            json!(["keep", null]),
            json!([""]),
            json!({"tags": ["x"]}),
            json!("x"),
        ] {
            let answer = app
                .send(app.request(method.clone(), &path).json(&bad))
                .await;
            error(answer, StatusCode::BAD_REQUEST);
        }
    }
    error(
        app.post(&path, &json!(["x".repeat(257)])).await,
        StatusCode::BAD_REQUEST,
    );
    let too_many: Vec<String> = (0..101).map(|n| format!("t{n}")).collect();
    error(
        app.post(&path, &json!(too_many)).await,
        StatusCode::BAD_REQUEST,
    );
    error(
        app.send(app.request(Method::PUT, &path).json(&json!(too_many)))
            .await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(
        ok(app.get(&format!("/v1/task/{}", task_id(&task))).await),
        task
    );
}

async fn audit_of_a_pending_task_is_a_400(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let path = format!("/v1/task/{}", task_id(&task));
    for body in [
        json!({"accepted": true}),
        json!({"accepted": false, "comments": "no"}),
    ] {
        error(
            app.post(&format!("{path}/audit"), &body).await,
            StatusCode::BAD_REQUEST,
        );
    }
    let unchanged = ok(app.get(&path).await);
    assert_eq!(unchanged, task);
    assert_eq!(unchanged["audits"], json!([]));
}

/// A race test: on SQLite (one writer connection, so every write transaction runs alone)
/// the requests cannot interleave and only the outcome is checked; the PostgreSQL run (a pool
/// of connections, two commit groups) drives real concurrency and is the one that can fail.
async fn concurrent_creations_with_one_unique_id_make_exactly_one_task(app: TestApp) {
    let answers =
        join_all((0..20).map(|_| app.create_image_task(json!({"unique_id": "race"})))).await;
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = task_id(winners[0]);
    let expected =
        format!("The unique_id (\"race\") is already used for a different task ({winner}).");
    for answer in answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
    {
        assert_eq!(error(answer.clone(), StatusCode::CONFLICT), expected);
    }
    let listed = ok(app.get("/v1/tasks?unique_id=race").await);
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["docs"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["docs"][0]["task_id"], json!(winner));
    let all = ok(app.get("/v1/tasks").await);
    assert_eq!(all["total"], 1, "{all}");
}

/// Concurrent creates are committed in groups: a unique_id conflict must refuse only its own
/// task, never the others that shared its transaction. (Groups form on both backends; the
/// cross-group race on one unique_id is real only on PostgreSQL, as above.)
async fn a_unique_id_conflict_among_concurrent_creates_refuses_only_its_own_task(app: TestApp) {
    let answers = join_all((0..40).map(|n| {
        let unique_id = if n % 4 == 0 {
            "shared".to_owned()
        } else {
            format!("own-{n}")
        };
        app.create_image_task(json!({"unique_id": unique_id, "metadata": {"n": n}}))
    }))
    .await;
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        created.len(),
        31,
        "30 own ids and one holder of 'shared': {answers:?}"
    );
    let conflicts = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CONFLICT)
        .count();
    assert_eq!(conflicts, 9);
    for task in created {
        let stored = ok(app.get(&format!("/v1/task/{}", task_id(task))).await);
        assert_eq!(
            &stored, task,
            "every acknowledged task is stored as answered"
        );
    }
    let all = ok(app.get("/v1/tasks?limit=1").await);
    assert_eq!(all["total"], 31, "{all}");
}

/// A race test: on SQLite (one writer connection, so every write transaction runs alone)
/// the requests cannot interleave and only the outcome is checked; the PostgreSQL run (a pool
/// of connections, two commit groups) drives real concurrency and is the one that can fail.
/// (Checked: without the row lock in `Store::update_task`, PostgreSQL loses tags here and
/// SQLite still passes.)
async fn concurrent_tag_additions_are_never_lost(app: TestApp) {
    let task = create_image(&app, json!({})).await;
    let path = format!("/v1/task/{}/tags", task_id(&task));
    let answers = join_all((0..20).map(|n| {
        app.send(
            app.request(Method::PUT, &path)
                .json(&json!([format!("t{n}")])),
        )
    }))
    .await;
    for answer in answers {
        ok(answer);
    }
    let fetched = ok(app.get(&format!("/v1/task/{}", task_id(&task))).await);
    let tags: HashSet<&str> = fetched["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("{fetched}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: HashSet<String> = (0..20).map(|n| format!("t{n}")).collect();
    assert_eq!(
        tags,
        expected.iter().map(String::as_str).collect(),
        "{fetched}"
    );
    let listed = ok(app.get("/v1/tasks?tags=t0&tags=t19").await);
    assert_eq!(listed["total"], 1, "{listed}");
}

/// A race test: on SQLite (one writer connection, so every write transaction runs alone)
/// the requests cannot interleave and only the outcome is checked; the PostgreSQL run (a pool
/// of connections, two commit groups) drives real concurrency and is the one that can fail.
async fn concurrent_updates_to_one_unique_id_leave_exactly_one_holder(app: TestApp) {
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(create_image(&app, json!({})).await);
    }
    let answers = join_all(tasks.iter().map(|task| {
        let path = format!("/v1/task/{}/unique_id", task_id(task));
        app.send(
            app.request(Method::POST, &path)
                .json(&json!({"unique_id": "contested"})),
        )
    }))
    .await;
    let winners: Vec<String> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| task_id(body))
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let expected = format!(
        "The unique_id (\"contested\") is already used for a different task ({}).",
        winners[0]
    );
    for answer in answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
    {
        assert_eq!(error(answer.clone(), StatusCode::CONFLICT), expected);
    }
    let listed = ok(app.get("/v1/tasks?unique_id=contested").await);
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["docs"][0]["task_id"], json!(winners[0]));
}

async fn healthz_and_metrics_answer_without_auth(app: TestApp) {
    let (status, body) = app.send(app.http.get(app.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
    let before = crate::smoke::scrape(&app).await;
    create_image(&app, json!({})).await;
    let response = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("metrics body");
    assert!(text.is_ascii(), "{text}");
    // The one create is counted, with its status, and its latency is in the histogram.
    let create = [("method", "POST"), ("route", "/v1/task/{task_id_or_type}")];
    let grew = |name: &str, labels: &[(&str, &str)]| {
        crate::smoke::sample(&text, name, labels) - crate::smoke::sample(&before, name, labels)
    };
    let counted = [create[0], create[1], ("status", "200")];
    assert_eq!(
        grew("annotask_http_requests_total", &counted),
        1.0,
        "{text}"
    );
    let in_every_bucket = [create[0], create[1], ("le", "+Inf")];
    let bucket = "annotask_http_request_duration_seconds_bucket";
    assert_eq!(grew(bucket, &in_every_bucket), 1.0, "{text}");
    // It was written as a group of one, in the group metrics' own buckets.
    let group_of_one = [("le", "1")];
    assert_eq!(
        grew("annotask_create_group_size_bucket", &group_of_one),
        1.0,
        "{text}"
    );
    assert!(
        text.contains("annotask_create_group_write_seconds_bucket{le=\"0.00025\"}"),
        "{text}"
    );
    assert_eq!(
        grew("annotask_create_group_write_seconds_count", &[]),
        1.0,
        "{text}"
    );
}

async fn an_unknown_path_is_a_404_with_a_json_body(app: TestApp) {
    for path in [
        "/nope",
        "/v1/nope",
        "/v1/task",
        "/v2/tasks",
        "/v1/task/abc/def/ghi",
    ] {
        error(app.get(path).await, StatusCode::NOT_FOUND);
        error(
            app.send(app.http.get(app.url(path))).await,
            StatusCode::NOT_FOUND,
        );
    }
}

backend_tests!(
    a_task_of_each_documented_type_is_created_with_200,
    a_textcollection_task_takes_fields_as_an_array_as_scale_documents,
    a_created_task_has_scale_shaped_ids_and_timestamps,
    unique_id_and_tags_are_absent_until_set,
    creation_without_a_required_field_is_a_400_naming_it,
    an_unknown_task_type_is_a_400,
    a_callback_url_must_be_http_or_https,
    metadata_must_be_an_object_of_at_most_64_kib,
    tags_at_creation_must_be_non_empty_strings_and_at_most_100,
    a_unique_id_longer_than_255_characters_is_a_400,
    a_body_over_10_mib_is_a_413_with_a_json_error,
    a_form_encoded_creation_works_as_scales_curl_examples_send_it,
    a_body_that_is_not_json_is_refused_with_a_json_error,
    every_error_is_a_json_object_with_status_code_and_error,
    a_malformed_or_unknown_task_id_is_a_404,
    another_accounts_task_is_indistinguishable_from_a_missing_one,
    the_test_world_of_an_account_is_separate_from_its_live_world,
    a_test_world_task_completes_at_once_and_then_cannot_be_canceled,
    every_api_path_needs_a_known_key,
    bearer_authentication_works_as_well_as_basic,
    cancel_of_a_pending_task_cancels_it,
    cancel_of_a_canceled_task_is_a_no_op,
    cancel_with_clear_unique_id_frees_the_unique_id,
    cancel_without_clear_unique_id_keeps_holding_it,
    cancel_accepts_an_empty_json_body_as_scales_client_sends_it,
    set_metadata_replaces_the_metadata,
    set_metadata_with_an_empty_json_body_clears_it,
    set_metadata_refuses_anything_but_an_object,
    set_metadata_bumps_updated_at,
    updating_to_a_unique_id_another_task_holds_is_a_409_naming_the_holder,
    creating_with_a_taken_unique_id_is_a_409_naming_the_holder,
    setting_a_tasks_own_unique_id_is_a_no_op,
    update_unique_id_validates_its_body,
    delete_unique_id_frees_it,
    tags_are_added_replaced_and_removed,
    adding_tags_to_an_untagged_task_starts_its_list,
    an_empty_or_null_tag_is_a_400_and_changes_nothing,
    audit_of_a_pending_task_is_a_400,
    concurrent_creations_with_one_unique_id_make_exactly_one_task,
    a_unique_id_conflict_among_concurrent_creates_refuses_only_its_own_task,
    concurrent_tag_additions_are_never_lost,
    concurrent_updates_to_one_unique_id_leave_exactly_one_holder,
    healthz_and_metrics_answer_without_auth,
    an_unknown_path_is_a_404_with_a_json_body,
);
