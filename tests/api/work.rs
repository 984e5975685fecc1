//! The work queue (SPEC §11) over REST and gRPC: claims, leases, completion, failure, worker
//! keys and rework, on both backends; concurrent claimers in one process and across replicas.

use std::{collections::HashSet, time::Duration};

use annotask::proto::{
    self, work_service_client::WorkServiceClient, ClaimTasksRequest, CompleteTaskRequest,
    CreateTaskRequest, FailTaskRequest, HeartbeatLeaseRequest,
};
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    backend_tests,
    helpers::{grpc_request_as, Backend, TestApp},
    process::ServerProcess,
};

async fn create(app: &TestApp, extra: Value) -> Value {
    let (status, task) = app.create_image_task(extra).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    task
}

async fn claim(app: &TestApp, body: Value) -> Vec<Value> {
    let (status, answer) = app.post("/v1/work/claim", &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["leases"].as_array().expect("leases array").clone()
}

fn task_id(lease: &Value) -> String {
    lease["task"]["task_id"]
        .as_str()
        .expect("task id")
        .to_owned()
}

fn token(lease: &Value) -> String {
    lease["lease_token"]
        .as_str()
        .expect("lease token")
        .to_owned()
}

async fn post_on_task(
    app: &TestApp,
    task_id: &str,
    action: &str,
    body: Value,
) -> (StatusCode, Value) {
    app.post(&format!("/v1/task/{task_id}/{action}"), &body)
        .await
}

fn assert_lease_lost(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status_code"], 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|text| text.contains("lease")),
        "{body}"
    );
}

async fn claims_hand_out_the_oldest_tasks_once_and_completion_finishes_them(app: TestApp) {
    let first = create(&app, json!({})).await;
    let second = create(&app, json!({})).await;

    let leases = claim(&app, json!({})).await;
    assert_eq!(leases.len(), 1, "the default limit is 1");
    assert_eq!(task_id(&leases[0]), first["task_id"], "oldest first");
    assert_eq!(
        leases[0]["task"]["status"], "pending",
        "a leased task stays pending on the wire"
    );
    assert!(leases[0]["lease_expires_at"]
        .as_str()
        .is_some_and(|at| at.ends_with('Z')));
    assert!(token(&leases[0]).len() >= 32, "an unguessable token");

    let next = claim(&app, json!({"limit": 5})).await;
    assert_eq!(
        next.iter().map(task_id).collect::<Vec<_>>(),
        [second["task_id"].as_str().unwrap()]
    );
    assert!(
        claim(&app, json!({})).await.is_empty(),
        "nothing left to hand out"
    );

    let (status, done) = post_on_task(
        &app,
        &task_id(&leases[0]),
        "complete",
        json!({"lease_token": token(&leases[0]), "response": {"annotations": [{"label": "car"}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["response"], json!({"annotations": [{"label": "car"}]}));
    assert!(done["completed_at"].is_string());
    let (_, fetched) = app.get(&format!("/v1/task/{}", task_id(&leases[0]))).await;
    assert_eq!(fetched, done);

    // The lease ended with the completion: the same token does nothing more.
    let (status, body) = post_on_task(
        &app,
        &task_id(&leases[0]),
        "fail",
        json!({"lease_token": token(&leases[0]), "error": "late"}),
    )
    .await;
    assert_lease_lost(status, &body);
}

async fn a_wrong_or_stale_token_is_lease_lost_and_changes_nothing(app: TestApp) {
    create(&app, json!({"unique_id": "stale-1"})).await;
    let lease = claim(&app, json!({})).await.remove(0);
    let id = task_id(&lease);
    let (_, before) = app.get(&format!("/v1/task/{id}")).await;
    for (action, body) in [
        ("lease/heartbeat", json!({"lease_token": "lease_wrong"})),
        ("lease/release", json!({"lease_token": "lease_wrong"})),
        (
            "complete",
            json!({"lease_token": "lease_wrong", "response": {"x": 1}}),
        ),
        ("fail", json!({"lease_token": "lease_wrong", "error": "no"})),
    ] {
        let (status, answer) = post_on_task(&app, &id, action, body).await;
        assert_lease_lost(status, &answer);
    }
    let (_, after) = app.get(&format!("/v1/task/{id}")).await;
    assert_eq!(after, before, "nothing changed");
    // The real token still holds the lease.
    let (status, answer) = post_on_task(
        &app,
        &id,
        "lease/heartbeat",
        json!({"lease_token": token(&lease), "lease_seconds": 30}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["lease_expires_at"].is_string());
}

async fn an_expired_lease_returns_the_task_to_the_queue(app: TestApp) {
    let created = create(&app, json!({})).await;
    let first = claim(&app, json!({"lease_seconds": 1})).await.remove(0);
    assert!(
        claim(&app, json!({})).await.is_empty(),
        "leased while the lease lives"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = claim(&app, json!({})).await.remove(0);
    assert_eq!(task_id(&second), created["task_id"]);
    assert_ne!(token(&second), token(&first));
    let (status, body) = post_on_task(
        &app,
        &task_id(&first),
        "complete",
        json!({"lease_token": token(&first), "response": {"late": true}}),
    )
    .await;
    assert_lease_lost(status, &body);
    let (status, body) = post_on_task(
        &app,
        &task_id(&second),
        "complete",
        json!({"lease_token": token(&second), "response": {"on_time": true}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"], json!({"on_time": true}));
}

async fn a_released_task_goes_back_to_the_queue(app: TestApp) {
    create(&app, json!({})).await;
    let lease = claim(&app, json!({})).await.remove(0);
    let (status, task) = post_on_task(
        &app,
        &task_id(&lease),
        "lease/release",
        json!({"lease_token": token(&lease)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "pending");
    let again = claim(&app, json!({})).await;
    assert_eq!(
        again.iter().map(task_id).collect::<Vec<_>>(),
        [task_id(&lease)]
    );
}

async fn fail_sets_error_and_frees_the_unique_id_only_when_asked(app: TestApp) {
    create(
        &app,
        json!({"unique_id": "frees", "clear_unique_id_on_error": true}),
    )
    .await;
    create(&app, json!({"unique_id": "keeps"})).await;
    let leases = claim(&app, json!({"limit": 2})).await;
    for lease in &leases {
        let (status, failed) = post_on_task(
            &app,
            &task_id(lease),
            "fail",
            json!({"lease_token": token(lease), "error": "image unreadable"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{failed}");
        assert_eq!(failed["status"], "error");
        assert_eq!(failed["response"], json!({"error": "image unreadable"}));
        if lease["task"]["unique_id"] == "frees" {
            assert!(failed.get("unique_id").is_none(), "{failed}");
        } else {
            assert_eq!(failed["unique_id"], "keeps");
        }
    }
    let (status, reused) = app.create_image_task(json!({"unique_id": "frees"})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the freed unique_id can be used again: {reused}"
    );
    let (status, body) = app.create_image_task(json!({"unique_id": "keeps"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

async fn a_canceled_task_is_never_handed_out_and_cancel_ends_a_lease(app: TestApp) {
    let canceled = create(&app, json!({})).await;
    let leased = create(&app, json!({})).await;
    let (status, _) = app
        .post(
            &format!("/v1/task/{}/cancel", canceled["task_id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let lease = claim(&app, json!({"limit": 10})).await;
    assert_eq!(
        lease.iter().map(task_id).collect::<Vec<_>>(),
        [leased["task_id"].as_str().unwrap()]
    );
    let (status, _) = app
        .post(
            &format!("/v1/task/{}/cancel", task_id(&lease[0])),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post_on_task(
        &app,
        &task_id(&lease[0]),
        "complete",
        json!({"lease_token": token(&lease[0]), "response": {"x": 1}}),
    )
    .await;
    assert_lease_lost(status, &body);
    assert!(claim(&app, json!({})).await.is_empty());
}

async fn claims_match_project_and_type_filters(app: TestApp) {
    app.create_project("cars", "imageannotation").await;
    app.create_project("bikes", "imageannotation").await;
    create(&app, json!({"project": "cars"})).await;
    let wanted = create(&app, json!({"project": "bikes"})).await;
    let (status, text) = app
        .post(
            "/v1/task/categorization",
            &json!({"instruction": "Which vehicle?", "attachment": "https://e.com/a.png",
                    "categories": ["car", "bike"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let leases = claim(
        &app,
        json!({"project": "bikes", "type": "imageannotation", "limit": 10}),
    )
    .await;
    assert_eq!(
        leases.iter().map(task_id).collect::<Vec<_>>(),
        [wanted["task_id"].as_str().unwrap()]
    );
    let texts = claim(&app, json!({"type": "categorization", "limit": 10})).await;
    assert_eq!(
        texts.iter().map(task_id).collect::<Vec<_>>(),
        [text["task_id"].as_str().unwrap()]
    );
    let (status, body) = app.post("/v1/work/claim", &json!({"type": "nope"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 101}),
        json!({"lease_seconds": 0}),
        json!({"lease_seconds": 3601}),
    ] {
        let (status, body) = app.post("/v1/work/claim", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

async fn worker_keys_read_and_work_tasks_but_nothing_else(app: TestApp) {
    let task = create(&app, json!({})).await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let worker = app.worker_key().await;
    let as_worker = |method: Method, path: &str| app.request_as(&worker, method, path);

    let (status, fetched) = app
        .send(as_worker(Method::GET, &format!("/v1/task/{id}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    let (status, page) = app.send(as_worker(Method::GET, "/v1/tasks")).await;
    assert_eq!(status, StatusCode::OK, "{page}");

    for (method, path, body) in [
        (
            Method::POST,
            "/v1/task/imageannotation".to_owned(),
            json!({"attachment": "https://e.com/x.png", "geometries": {"box": {}}}),
        ),
        (Method::POST, format!("/v1/task/{id}/cancel"), json!({})),
        (
            Method::POST,
            format!("/v1/task/{id}/setMetadata"),
            json!({"a": 1}),
        ),
        (
            Method::POST,
            format!("/v1/task/{id}/unique_id"),
            json!({"unique_id": "u"}),
        ),
        (
            Method::DELETE,
            format!("/v1/task/{id}/unique_id"),
            json!({}),
        ),
        (Method::PUT, format!("/v1/task/{id}/tags"), json!(["t"])),
        (Method::POST, format!("/v1/task/{id}/tags"), json!(["t"])),
        (Method::DELETE, format!("/v1/task/{id}/tags"), json!(["t"])),
        (
            Method::POST,
            format!("/v1/task/{id}/audit"),
            json!({"accepted": true}),
        ),
    ] {
        let (status, body) = app.send(as_worker(method.clone(), &path).json(&body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(
            body,
            json!({"status_code": 403, "error": "This key may only work tasks."})
        );
    }

    let (status, answer) = app
        .send(as_worker(Method::POST, "/v1/work/claim").json(&json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let lease = &answer["leases"][0];
    let (status, done) = app
        .send(
            as_worker(Method::POST, &format!("/v1/task/{id}/complete"))
                .json(&json!({"lease_token": token(lease), "response": {"ok": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let (_, after) = app.get(&format!("/v1/task/{id}")).await;
    assert_eq!(
        after["status"], "completed",
        "the worker's forbidden calls changed nothing else"
    );
    assert_eq!(after["metadata"], json!({}));

    // gRPC says PERMISSION_DENIED the same way.
    let mut tasks = app.grpc().await;
    let status = tasks
        .create_task(grpc_request_as(
            &worker,
            CreateTaskRequest {
                r#type: "imageannotation".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("a worker key cannot create");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "This key may only work tasks.");
}

async fn rework_sends_a_completed_task_back_keeping_its_audits_and_response(app: TestApp) {
    create(&app, json!({})).await;
    let lease = claim(&app, json!({})).await.remove(0);
    let id = task_id(&lease);
    post_on_task(
        &app,
        &id,
        "complete",
        json!({"lease_token": token(&lease), "response": {"round": 1}}),
    )
    .await;

    let (status, body) = post_on_task(
        &app,
        &id,
        "audit",
        json!({"accepted": true, "rework": true}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, reworked) = post_on_task(
        &app,
        &id,
        "audit",
        json!({"accepted": false, "comments": "boxes too loose", "rework": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reworked}");
    assert_eq!(reworked["status"], "pending");
    assert_eq!(
        reworked["response"],
        json!({"round": 1}),
        "the previous response is kept"
    );
    assert_eq!(reworked["audits"].as_array().map(Vec::len), Some(1));
    assert_eq!(reworked["customer_review_status"], "rejected");

    let again = claim(&app, json!({})).await.remove(0);
    assert_eq!(
        task_id(&again),
        id,
        "the reworked task is back in the queue"
    );
    let (_, done) = post_on_task(
        &app,
        &id,
        "complete",
        json!({"lease_token": token(&again), "response": {"round": 2}}),
    )
    .await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["audits"].as_array().map(Vec::len),
        Some(1),
        "audits survive the new round"
    );

    // Without rework an audit only records the review.
    let (_, reviewed) = post_on_task(&app, &id, "audit", json!({"accepted": false})).await;
    assert_eq!(reviewed["status"], "completed");
}

async fn the_work_service_over_grpc_claims_heartbeats_completes_and_reports_lease_lost(
    app: TestApp,
) {
    create(&app, json!({})).await;
    create(&app, json!({})).await;
    let mut work = WorkServiceClient::connect(app.base_url.clone())
        .await
        .expect("connect");
    let leases = work
        .claim_tasks(app.grpc_request(ClaimTasksRequest {
            limit: 2,
            lease_seconds: 60,
            ..Default::default()
        }))
        .await
        .expect("ClaimTasks")
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 2);
    let (first, second) = (&leases[0], &leases[1]);
    let first_id = first
        .task
        .as_ref()
        .map(|task| task.task_id.clone())
        .unwrap_or_default();
    let second_id = second
        .task
        .as_ref()
        .map(|task| task.task_id.clone())
        .unwrap_or_default();

    let renewed = work
        .heartbeat_lease(app.grpc_request(HeartbeatLeaseRequest {
            task_id: first_id.clone(),
            lease_token: first.lease_token.clone(),
            lease_seconds: 120,
        }))
        .await
        .expect("HeartbeatLease")
        .into_inner();
    assert!(renewed.lease_expires_at.unwrap().seconds > first.lease_expires_at.unwrap().seconds);

    let done = work
        .complete_task(app.grpc_request(CompleteTaskRequest {
            task_id: first_id.clone(),
            lease_token: first.lease_token.clone(),
            response: Some(annotask::proto::struct_from_json(
                json!({"label": "car"}).as_object().unwrap(),
            )),
        }))
        .await
        .expect("CompleteTask")
        .into_inner();
    assert_eq!(done.status, i32::from(proto::TaskStatus::Completed));

    let lost = work
        .fail_task(app.grpc_request(FailTaskRequest {
            task_id: second_id.clone(),
            lease_token: first.lease_token.clone(),
            error: "wrong token".into(),
        }))
        .await
        .expect_err("another task's token");
    assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
    assert_eq!(
        lost.get_details_error_info().map(|info| info.reason),
        Some("LEASE_LOST".to_owned())
    );

    let failed = work
        .fail_task(app.grpc_request(FailTaskRequest {
            task_id: second_id,
            lease_token: second.lease_token.clone(),
            error: "blurry".into(),
        }))
        .await
        .expect("FailTask")
        .into_inner();
    assert_eq!(failed.status, i32::from(proto::TaskStatus::Error));
    let (_, rest) = app.get(&format!("/v1/task/{}", failed.task_id)).await;
    assert_eq!(rest["response"], json!({"error": "blurry"}));
}

/// Claims with `claimers` concurrent loops against `base_urls` until the queue is empty and
/// returns every task id handed out, in the order received.
async fn drain_concurrently(app: &TestApp, base_urls: &[String], claimers: usize) -> Vec<String> {
    let loops = (0..claimers).map(|i| {
        let base_url = base_urls[i % base_urls.len()].clone();
        let http = app.http.clone();
        let key = app.api_key.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let answer: Value = http
                    .post(format!("{base_url}/v1/work/claim"))
                    .basic_auth(&key, Some(""))
                    .json(&json!({"limit": 1 + i % 3, "lease_seconds": 300}))
                    .send()
                    .await
                    .expect("claim sent")
                    .json()
                    .await
                    .expect("claim answer");
                let leases = answer["leases"].as_array().cloned().unwrap_or_default();
                if leases.is_empty() {
                    return mine;
                }
                mine.extend(leases.iter().map(task_id));
            }
        }
    });
    join_all(loops).await.into_iter().flatten().collect()
}

fn assert_each_task_handed_out_once(handed_out: &[String], created: usize) {
    let distinct: HashSet<&String> = handed_out.iter().collect();
    assert_eq!(
        distinct.len(),
        handed_out.len(),
        "a task was handed out twice: {handed_out:?}"
    );
    assert_eq!(handed_out.len(), created, "every task handed out");
}

/// A race test: on SQLite claims are write transactions on its one writer, so they cannot
/// interleave and only the outcome is checked; on PostgreSQL the claimers run on separate
/// connections at once (and across replicas in the multi-process test), where a claim without
/// `SKIP LOCKED`-style exclusion could hand a task out twice.
async fn concurrent_claimers_never_receive_the_same_task(app: TestApp) {
    const TASKS: usize = 60;
    join_all((0..TASKS).map(|_| app.create_image_task(json!({})))).await;
    let handed_out = drain_concurrently(&app, std::slice::from_ref(&app.base_url), 12).await;
    assert_each_task_handed_out_once(&handed_out, TASKS);
}

backend_tests!(
    claims_hand_out_the_oldest_tasks_once_and_completion_finishes_them,
    a_wrong_or_stale_token_is_lease_lost_and_changes_nothing,
    an_expired_lease_returns_the_task_to_the_queue,
    a_released_task_goes_back_to_the_queue,
    fail_sets_error_and_frees_the_unique_id_only_when_asked,
    a_canceled_task_is_never_handed_out_and_cancel_ends_a_lease,
    claims_match_project_and_type_filters,
    worker_keys_read_and_work_tasks_but_nothing_else,
    rework_sends_a_completed_task_back_keeping_its_audits_and_response,
    the_work_service_over_grpc_claims_heartbeats_completes_and_reports_lease_lost,
    concurrent_claimers_never_receive_the_same_task,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_on_two_replicas_sharing_postgres_never_receive_the_same_task() {
    const TASKS: usize = 80;
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    join_all((0..TASKS).map(|_| app.create_image_task(json!({})))).await;
    let first = ServerProcess::start(&app.database_url).await;
    let second = ServerProcess::start(&app.database_url).await;
    let handed_out =
        drain_concurrently(&app, &[first.base_url.clone(), second.base_url.clone()], 16).await;
    assert_each_task_handed_out_once(&handed_out, TASKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_delivery_metrics_are_exported() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.gauge_interval = Duration::from_millis(50);
    })
    .await
    else {
        return;
    };
    // The process-wide recorder is installed by the first scrape.
    let scrape = || async {
        app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    scrape().await;
    create(&app, json!({})).await;
    claim(&app, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = scrape().await;
    for name in [
        "annotask_work_queue_depth",
        "annotask_work_leases_live",
        "annotask_callback_deliveries_pending",
        "annotask_work_claimed_tasks_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}
