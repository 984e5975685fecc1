//! SPEC §7: Idempotency-Key on task creation, over REST and gRPC, on every backend.

use std::time::Duration;

use annotask::proto::{CreateTaskRequest, ListTasksRequest};
use futures::{future::join_all, stream::FuturesUnordered, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    backend_tests,
    helpers::{grpc_request_as, Backend, TestApp},
    process::ServerProcess,
};

fn image_body(attachment: &str) -> Value {
    json!({
        "attachment": attachment,
        "geometries": {"box": {"objects_to_annotate": ["car"]}},
        "metadata": {"batch": 7},
    })
}

/// Sends a creation with an Idempotency-Key; returns status, replay header and raw body.
async fn create_with_key(
    app: &TestApp,
    api_key: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Option<String>, String) {
    let response = app
        .request_as(api_key, Method::POST, "/v1/task/imageannotation")
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|value| value.to_str().unwrap_or_default().to_owned());
    (status, replayed, response.text().await.expect("body"))
}

async fn total_tasks(app: &TestApp) -> u64 {
    let (status, page) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["total"].as_u64().expect("total")
}

async fn a_replay_returns_the_stored_response_byte_for_byte_and_creates_nothing(app: TestApp) {
    let body = image_body("https://example.com/1.png");
    let (status, replayed, first) = create_with_key(&app, &app.api_key, "key-1", &body).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(replayed, None);
    let (status, replayed, second) = create_with_key(&app, &app.api_key, "key-1", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(first, second);
    assert_eq!(total_tasks(&app).await, 1);
}

async fn key_order_and_whitespace_do_not_change_the_fingerprint(app: TestApp) {
    let compact =
        r#"{"attachment":"https://e.com/a.png","geometries":{"box":{}},"metadata":{"a":1,"b":2}}"#;
    let spaced = r#"{ "metadata": {"b": 2, "a": 1},
        "geometries": {"box": {}}, "attachment": "https://e.com/a.png" }"#;
    let mut ids = Vec::new();
    for raw in [compact, spaced] {
        let (status, body) = app
            .send(
                app.request(Method::POST, "/v1/task/imageannotation")
                    .header("Idempotency-Key", "same-request")
                    .header("content-type", "application/json")
                    .body(raw),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["task_id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(total_tasks(&app).await, 1);
}

async fn the_same_key_with_other_parameters_is_a_conflict(app: TestApp) {
    let (status, _, _) =
        create_with_key(&app, &app.api_key, "k", &image_body("https://e.com/1.png")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, replayed, body) =
        create_with_key(&app, &app.api_key, "k", &image_body("https://e.com/2.png")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(replayed, None);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status_code"], 409);
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("Idempotency-Key"));
    assert_eq!(total_tasks(&app).await, 1);
}

async fn a_key_used_by_one_account_is_refused_to_another_and_to_the_test_world(app: TestApp) {
    let body = image_body("https://e.com/1.png");
    let (status, _, _) = create_with_key(&app, &app.api_key, "shared-key", &body).await;
    assert_eq!(status, StatusCode::OK);
    let other_account = app.new_account_key(false).await;
    let (status, _, text) = create_with_key(&app, &other_account, "shared-key", &body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");

    let live = app.key_for_same_account("two-worlds", false).await;
    let test = app.key_for_same_account("two-worlds", true).await;
    let (status, _, _) = create_with_key(&app, &live, "world-key", &body).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, text) = create_with_key(&app, &test, "world-key", &body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
}

async fn errors_are_stored_and_replayed_even_when_the_cause_is_gone(app: TestApp) {
    // A validation error is an answer too.
    let invalid = json!({"geometries": {"box": {}}});
    let (status, _, first) = create_with_key(&app, &app.api_key, "bad", &invalid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, replayed, second) = create_with_key(&app, &app.api_key, "bad", &invalid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(first, second);

    // A unique_id conflict stays a conflict after the holder lets go of the unique_id.
    let (status, holder) = app.create_image_task(json!({"unique_id": "taken"})).await;
    assert_eq!(status, StatusCode::OK);
    let mut clashing = image_body("https://e.com/x.png");
    clashing["unique_id"] = json!("taken");
    let (status, _, first) = create_with_key(&app, &app.api_key, "clash", &clashing).await;
    assert_eq!(status, StatusCode::CONFLICT, "{first}");
    let holder_id = holder["task_id"].as_str().expect("id");
    let (status, _) = app
        .send(app.request(Method::DELETE, &format!("/v1/task/{holder_id}/unique_id")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, replayed, second) = create_with_key(&app, &app.api_key, "clash", &clashing).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(first, second);
    assert_eq!(total_tasks(&app).await, 1);
}

async fn empty_or_oversized_keys_are_rejected(app: TestApp) {
    let body = image_body("https://e.com/1.png");
    for key in [String::new(), "k".repeat(256)] {
        let (status, _, text) = create_with_key(&app, &app.api_key, &key, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("Idempotency-Key"), "{text}");
    }
    let (status, _, _) = create_with_key(&app, &app.api_key, &"k".repeat(255), &body).await;
    assert_eq!(status, StatusCode::OK);

    let mut client = app.grpc().await;
    let mut request = app.grpc_request(grpc_image_request("https://e.com/1.png"));
    request
        .metadata_mut()
        .insert("idempotency-key", "k".repeat(256).parse().expect("ascii"));
    let status = client.create_task(request).await.expect_err("rejected");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

fn grpc_image_request(attachment: &str) -> CreateTaskRequest {
    let params = json!({
        "attachment": attachment,
        "geometries": {"box": {"objects_to_annotate": ["car"]}},
    });
    CreateTaskRequest {
        r#type: "imageannotation".to_owned(),
        params: Some(annotask::proto::struct_from_json(
            params.as_object().expect("object"),
        )),
        metadata: Some(annotask::proto::struct_from_json(
            json!({"batch": 7}).as_object().expect("object"),
        )),
        ..Default::default()
    }
}

async fn a_key_first_used_over_rest_replays_over_grpc_and_back(app: TestApp) {
    let (status, _, rest_body) = create_with_key(
        &app,
        &app.api_key,
        "cross",
        &image_body("https://e.com/1.png"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rest_body}");
    let rest_task: Value = serde_json::from_str(&rest_body).expect("json");

    let mut client = app.grpc().await;
    let mut request = grpc_request_as(&app.api_key, grpc_image_request("https://e.com/1.png"));
    request
        .metadata_mut()
        .insert("idempotency-key", "cross".parse().expect("ascii"));
    let response = client.create_task(request).await.expect("replayed");
    assert_eq!(
        response
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("true")
    );
    assert_eq!(
        response.get_ref().task_id,
        rest_task["task_id"].as_str().expect("id")
    );

    // A different request under the same key is refused over gRPC as ABORTED.
    let mut request = grpc_request_as(&app.api_key, grpc_image_request("https://e.com/2.png"));
    request
        .metadata_mut()
        .insert("idempotency-key", "cross".parse().expect("ascii"));
    let status = client.create_task(request).await.expect_err("conflict");
    assert_eq!(status.code(), tonic::Code::Aborted);

    // And a key first used over gRPC replays over REST.
    let mut request = grpc_request_as(&app.api_key, grpc_image_request("https://e.com/3.png"));
    request
        .metadata_mut()
        .insert("idempotency-key", "from-grpc".parse().expect("ascii"));
    let created = client
        .create_task(request)
        .await
        .expect("created")
        .into_inner();
    let (status, replayed, body) = create_with_key(
        &app,
        &app.api_key,
        "from-grpc",
        &image_body("https://e.com/3.png"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(replayed.as_deref(), Some("true"));
    let replayed_task: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(replayed_task["task_id"], json!(created.task_id));

    let listed = client
        .list_tasks(app.grpc_request(ListTasksRequest::default()))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.total, 2);
}

/// Fires `count` identical keyed creations at once, spread over `base_urls`, and checks that
/// every answer is the stored 200 for one task or a 429 with Retry-After.
async fn fire_concurrent_identical_requests(app: &TestApp, base_urls: &[String], count: usize) {
    let body = image_body("https://e.com/concurrent.png");
    let requests = (0..count).map(|i| {
        let url = format!("{}/v1/task/imageannotation", base_urls[i % base_urls.len()]);
        app.http
            .post(url)
            .basic_auth(&app.api_key, Some(""))
            .header("Idempotency-Key", "concurrent-key")
            .json(&body)
            .send()
    });
    let mut task_ids = std::collections::HashSet::new();
    let mut in_flight = 0;
    for response in join_all(requests).await {
        let response = response.expect("request sent");
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.expect("json body");
        match status {
            StatusCode::OK => {
                task_ids.insert(body["task_id"].as_str().expect("task_id").to_owned());
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry_after.is_some(), "429 without Retry-After");
                assert_eq!(body["status_code"], 429);
                in_flight += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(task_ids.len(), 1, "answers named {task_ids:?}");
    assert!(in_flight < count, "every request was refused");
    assert_eq!(total_tasks(app).await, 1);
}

async fn fifty_concurrent_identical_requests_create_exactly_one_task(app: TestApp) {
    let base_urls = [app.base_url.clone()];
    fire_concurrent_identical_requests(&app, &base_urls, 50).await;
}

/// Keyed creations that replay, keyed ones that create and unkeyed ones, all at once, so that
/// groups mix them: each replay is its key's first answer, and each other request makes its
/// task and (under a key) stores its answer.
async fn replays_new_keys_and_unkeyed_creates_in_one_burst_each_get_their_own_answer(app: TestApp) {
    const EACH: usize = 20;
    let body = |i: usize| image_body(&format!("https://e.com/{}.png", i % EACH));
    let mut first_answers = Vec::new();
    for i in 0..EACH {
        let (status, _, first) =
            create_with_key(&app, &app.api_key, &format!("used-{i}"), &body(i)).await;
        assert_eq!(status, StatusCode::OK, "{first}");
        first_answers.push(first);
    }
    let send = |i: usize| {
        let mut request = app
            .request(Method::POST, "/v1/task/imageannotation")
            .json(&body(i));
        match i / EACH {
            0 => request = request.header("Idempotency-Key", format!("used-{i}")),
            1 => request = request.header("Idempotency-Key", format!("new-{i}")),
            _ => {}
        }
        request.send()
    };
    let answers = join_all((0..3 * EACH).map(send)).await;
    let mut created = std::collections::HashSet::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.expect("sent");
        let status = answer.status();
        let replayed = answer
            .headers()
            .get("idempotent-replayed")
            .map(|value| value.to_str().unwrap_or_default().to_owned());
        let text = answer.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "{text}");
        if i < EACH {
            assert_eq!(replayed.as_deref(), Some("true"), "request {i}");
            assert_eq!(text, first_answers[i], "request {i}");
            continue;
        }
        assert_eq!(replayed, None, "request {i} was replayed");
        let task: Value = serde_json::from_str(&text).expect("json");
        created.insert(task["task_id"].as_str().expect("task_id").to_owned());
    }
    assert_eq!(created.len(), 2 * EACH);
    for i in EACH..2 * EACH {
        let key = format!("new-{i}");
        let (status, replayed, _) = create_with_key(&app, &app.api_key, &key, &body(i)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(replayed.as_deref(), Some("true"), "{key} was not stored");
    }
    assert_eq!(total_tasks(&app).await, 3 * EACH as u64);
}

backend_tests!(
    replays_new_keys_and_unkeyed_creates_in_one_burst_each_get_their_own_answer,
    a_replay_returns_the_stored_response_byte_for_byte_and_creates_nothing,
    key_order_and_whitespace_do_not_change_the_fingerprint,
    the_same_key_with_other_parameters_is_a_conflict,
    a_key_used_by_one_account_is_refused_to_another_and_to_the_test_world,
    errors_are_stored_and_replayed_even_when_the_cause_is_gone,
    empty_or_oversized_keys_are_rejected,
    a_key_first_used_over_rest_replays_over_grpc_and_back,
    fifty_concurrent_identical_requests_create_exactly_one_task,
    a_crash_mid_request_leaves_no_stuck_key_and_no_orphan_task,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_postgres_create_exactly_one_task_for_fifty_concurrent_requests() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let first = ServerProcess::start(&app.database_url).await;
    let second = ServerProcess::start(&app.database_url).await;
    let base_urls = [first.base_url.clone(), second.base_url.clone()];
    fire_concurrent_identical_requests(&app, &base_urls, 50).await;
    // A replay through either replica is the same task.
    for base_url in &base_urls {
        let response = app
            .http
            .post(format!("{base_url}/v1/task/imageannotation"))
            .basic_auth(&app.api_key, Some(""))
            .header("Idempotency-Key", "concurrent-key")
            .json(&image_body("https://e.com/concurrent.png"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["idempotent-replayed"], "true");
    }
}

/// Kills a replica while keyed creations are in flight, then retries every request on a fresh
/// replica: each must succeed (no key left stuck) without a unique_id conflict (no orphan task
/// committed without its key), and exactly one task per key must exist.
async fn a_crash_mid_request_leaves_no_stuck_key_and_no_orphan_task(app: TestApp) {
    const REQUESTS: usize = 30;
    let body = |i: usize| {
        let mut body = image_body(&format!("https://e.com/{i}.png"));
        body["unique_id"] = json!(format!("crash-{i}"));
        body
    };
    let send = |base_url: String, i: usize| {
        app.http
            .post(format!("{base_url}/v1/task/imageannotation"))
            .basic_auth(&app.api_key, Some(""))
            .header("Idempotency-Key", format!("crash-key-{i}"))
            .json(&body(i))
            .send()
    };
    let doomed = ServerProcess::start(&app.database_url).await;
    let mut in_flight: FuturesUnordered<_> = (0..REQUESTS)
        .map(|i| {
            let request = send(doomed.base_url.clone(), i);
            async move { (i, request.await) }
        })
        .collect();
    // Crash as soon as the first answer is out, with the others still in flight.
    let mut answers = Vec::with_capacity(REQUESTS);
    answers.extend(in_flight.next().await);
    doomed.crash();
    while let Some(answer) = in_flight.next().await {
        answers.push(answer);
    }
    // What each request got before the crash: a task id, or nothing (cut off).
    let mut before_crash: Vec<Option<String>> = vec![None; REQUESTS];
    for (i, answer) in answers {
        if let Ok(response) = answer {
            if response.status() == StatusCode::OK {
                before_crash[i] = response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|task| task["task_id"].as_str().map(str::to_owned));
            }
        }
    }
    let answered = before_crash.iter().filter(|id| id.is_some()).count();
    eprintln!("{answered} of {REQUESTS} answered before the crash");
    let survivor = ServerProcess::start(&app.database_url).await;
    let retries = join_all((0..REQUESTS).map(|i| send(survivor.base_url.clone(), i))).await;
    for (i, retry) in retries.into_iter().enumerate() {
        let retry = retry.expect("retry sent");
        let status = retry.status();
        let replayed = retry.headers().contains_key("idempotent-replayed");
        let text = retry.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "retry {i}: {text}");
        if let Some(first_id) = &before_crash[i] {
            // An answered request was committed with its key: the retry is its replay.
            assert!(replayed, "retry {i} was not a replay: {text}");
            let task: Value = serde_json::from_str(&text).expect("json");
            assert_eq!(task["task_id"].as_str(), Some(first_id.as_str()));
        }
    }
    assert_eq!(total_tasks(&app).await, REQUESTS as u64);
}

/// Rows in `idempotency_keys`, read from the database itself (this test's database only).
async fn idempotency_rows(app: &TestApp) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let db = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM idempotency_keys",
        ))
        .await
        .expect("count")
        .expect("one row");
    let rows = row.try_get::<i64>("", "n").expect("a count");
    let _ = db.close().await;
    rows
}

/// A server whose keys live `ttl` and are swept every `sweep_interval`, and the answer to a first
/// request under `key`.
async fn first_answer_with_short_lived_keys(
    backend: Backend,
    ttl: Duration,
    sweep_interval: Duration,
    key: &str,
) -> Option<(TestApp, String)> {
    let app = TestApp::spawn_with(backend, |config| {
        config.idempotency_ttl = ttl;
        config.sweep_interval = sweep_interval;
    })
    .await?;
    let (status, _, first) =
        create_with_key(&app, &app.api_key, key, &image_body("https://e.com/1.png")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(idempotency_rows(&app).await, 1, "the key is stored");
    Some((app, first))
}

/// `key` has expired: a request with other parameters creates a second task, and its answer is
/// the one stored from now on.
async fn an_expired_key_is_free_again(app: &TestApp, key: &str, first: &str) {
    let body = image_body("https://e.com/2.png");
    let (status, replayed, second) = create_with_key(app, &app.api_key, key, &body).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(replayed, None);
    assert_ne!(first, second);
    let (status, replayed, third) = create_with_key(app, &app.api_key, key, &body).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(third, second);
    assert_eq!(total_tasks(app).await, 2);
    assert_eq!(idempotency_rows(app).await, 1, "stored again");
}

async fn keys_expire_after_their_ttl_and_are_swept(backend: Backend) {
    let Some((app, first)) = first_answer_with_short_lived_keys(
        backend,
        Duration::from_secs(1),
        Duration::from_millis(100),
        "short-lived",
    )
    .await
    else {
        return;
    };

    // The background sweeper deletes the row once it expires; nothing here sweeps. The
    // deadline only bounds the wait on a slow machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while idempotency_rows(&app).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background sweeper never deleted the expired key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    an_expired_key_is_free_again(&app, "short-lived", &first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keys_expire_after_their_ttl_and_are_swept() {
    keys_expire_after_their_ttl_and_are_swept(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keys_expire_after_their_ttl_and_are_swept() {
    keys_expire_after_their_ttl_and_are_swept(Backend::Postgres).await;
}

/// A key past its time to live but not swept yet is taken by the next request as if it were
/// new (on PostgreSQL this is the path where the one-statement create gives way to the
/// transaction, which deletes the expired row first).
async fn an_expired_key_not_yet_swept_is_taken_by_the_next_request(backend: Backend) {
    let Some((app, first)) = first_answer_with_short_lived_keys(
        backend,
        Duration::from_millis(500),
        Duration::from_secs(3600),
        "reused",
    )
    .await
    else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(idempotency_rows(&app).await, 1, "not swept");
    an_expired_key_is_free_again(&app, "reused", &first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_expired_key_not_yet_swept_is_taken_by_the_next_request() {
    an_expired_key_not_yet_swept_is_taken_by_the_next_request(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_expired_key_not_yet_swept_is_taken_by_the_next_request() {
    an_expired_key_not_yet_swept_is_taken_by_the_next_request(Backend::Postgres).await;
}
