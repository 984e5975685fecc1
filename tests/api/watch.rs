//! Live updates (SPEC §13): `WatchTasks` over gRPC and grpc-web, filters, account and world
//! isolation, commit order, replicas sharing one PostgreSQL, and slow watchers.

use std::time::Duration;

use annotask::{
    config::Config,
    proto::{
        self, task_service_client::TaskServiceClient, work_service_client::WorkServiceClient,
        ClaimTasksRequest, CompleteTaskRequest, FailTaskRequest, TaskEvent, TaskEventKind,
        WatchTasksRequest,
    },
    server::App,
};
use prost::Message;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tonic::{transport::Endpoint, Code, Streaming};

use crate::{
    backend_tests,
    helpers::{grpc_request_as, Backend, TestApp},
};

/// Only a broken feed waits this long: each wait ends as soon as the event arrives.
const GIVE_UP: Duration = Duration::from_secs(30);

use TaskEventKind::{Canceled, Completed, Created, Failed, Updated};

async fn watch(app: &TestApp, key: &str, request: WatchTasksRequest) -> Streaming<TaskEvent> {
    let mut client = app.grpc().await;
    client
        .watch_tasks(grpc_request_as(key, request))
        .await
        .expect("WatchTasks")
        .into_inner()
}

/// The next `count` events as (task_id, kind), failing rather than hanging if they never come.
async fn next_events(
    stream: &mut Streaming<TaskEvent>,
    count: usize,
) -> Vec<(String, TaskEventKind)> {
    let mut events = Vec::new();
    while events.len() < count {
        let event = tokio::time::timeout(GIVE_UP, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {events:?} arrived of {count}"))
            .expect("the watch goes on")
            .expect("the watch is not over");
        let kind = event.kind();
        let task = event.task.expect("an event carries its task");
        events.push((task.task_id, kind));
    }
    events
}

async fn create_as(app: &TestApp, key: &str, extra: Value) -> String {
    let mut body = json!({
        "instruction": "Draw a box around each car",
        "attachment": "https://example.com/car.png",
        "attachment_type": "image",
        "geometries": {"box": {"objects_to_annotate": ["car"]}},
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let (status, task) = app
        .send(
            app.request_as(key, Method::POST, "/v1/task/imageannotation")
                .json(&body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");
    task["task_id"].as_str().expect("task_id").to_owned()
}

async fn rest_ok(app: &TestApp, request: reqwest::RequestBuilder) -> Value {
    let (status, body) = app.send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Claims the oldest pending tasks of `app`'s account: (task_id, lease_token).
async fn claim(app: &TestApp, limit: i32) -> Vec<(String, String)> {
    let mut work = WorkServiceClient::connect(app.base_url.clone())
        .await
        .expect("connect");
    work.claim_tasks(app.grpc_request(ClaimTasksRequest {
        limit,
        lease_seconds: 60,
        ..Default::default()
    }))
    .await
    .expect("ClaimTasks")
    .into_inner()
    .leases
    .into_iter()
    .map(|lease| (lease.task.expect("task").task_id, lease.lease_token))
    .collect()
}

async fn complete(app: &TestApp, task_id: &str, lease_token: &str) {
    let mut work = WorkServiceClient::connect(app.base_url.clone())
        .await
        .expect("connect");
    work.complete_task(app.grpc_request(CompleteTaskRequest {
        task_id: task_id.to_owned(),
        lease_token: lease_token.to_owned(),
        response: Some(annotask::proto::struct_from_json(
            json!({"label": "car"}).as_object().expect("object"),
        )),
    }))
    .await
    .expect("CompleteTask");
}

async fn a_watcher_sees_each_change_of_its_tasks_in_commit_order(app: TestApp) {
    let mut stream = watch(&app, &app.api_key, WatchTasksRequest::default()).await;
    let key = app.api_key.clone();
    let a = create_as(&app, &key, json!({})).await;
    let path = format!("/v1/task/{a}");
    rest_ok(
        &app,
        app.request(Method::POST, &format!("{path}/tags"))
            .json(&json!(["x"])),
    )
    .await;
    rest_ok(
        &app,
        app.request(Method::POST, &format!("{path}/setMetadata"))
            .json(&json!({"k": 1})),
    )
    .await;
    rest_ok(&app, app.request(Method::POST, &format!("{path}/cancel"))).await;
    let b = create_as(&app, &key, json!({})).await;
    let c = create_as(&app, &key, json!({})).await;
    // A claim only leases: nothing a client sees changes, so no event.
    let leases = claim(&app, 2).await;
    assert_eq!(
        leases.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        [b.clone(), c.clone()]
    );
    complete(&app, &leases[0].0, &leases[0].1).await;
    let mut work = WorkServiceClient::connect(app.base_url.clone())
        .await
        .expect("connect");
    work.fail_task(app.grpc_request(FailTaskRequest {
        task_id: c.clone(),
        lease_token: leases[1].1.clone(),
        error: "blurry".into(),
    }))
    .await
    .expect("FailTask");

    let events = next_events(&mut stream, 8).await;
    assert_eq!(
        events,
        [
            (a.clone(), Created),
            (a.clone(), Updated),
            (a.clone(), Updated),
            (a.clone(), Canceled),
            (b.clone(), Created),
            (c.clone(), Created),
            (b, Completed),
            (c, Failed),
        ]
    );
}

async fn filters_accounts_and_worlds_limit_what_a_watcher_sees(app: TestApp) {
    let owner = app.api_key.clone();
    let mut everything = watch(&app, &owner, WatchTasksRequest::default()).await;
    let mut hot = watch(
        &app,
        &owner,
        WatchTasksRequest {
            tags: vec!["hot".into()],
            ..Default::default()
        },
    )
    .await;
    let mut completed = watch(
        &app,
        &owner,
        WatchTasksRequest {
            status: proto::TaskStatus::Completed.into(),
            ..Default::default()
        },
    )
    .await;
    // A worker key of the same account may watch too.
    let worker = app.worker_key().await;
    let mut by_worker = watch(&app, &worker, WatchTasksRequest::default()).await;

    // Another account, and the owner's own test world: never seen.
    let stranger = app.new_account_key(false).await;
    create_as(&app, &stranger, json!({"tags": ["hot"]})).await;
    let test_world = app.key_for_same_account(&app.account, true).await;
    create_as(&app, &test_world, json!({"tags": ["hot"]})).await;

    let plain = create_as(&app, &owner, json!({})).await;
    let tagged = create_as(&app, &owner, json!({"tags": ["hot"]})).await;
    rest_ok(
        &app,
        app.request(Method::POST, &format!("/v1/task/{plain}/cancel")),
    )
    .await;
    // An event carries its task as the feed reads it after the commit: the completion waits
    // until the feed has read the creations, or `tagged` could already look completed in its
    // creation event (and a status=completed watcher would rightly see that event too).
    let before_completion = next_events(&mut everything, 3).await;
    let leases = claim(&app, 1).await;
    assert_eq!(leases[0].0, tagged);
    complete(&app, &leases[0].0, &leases[0].1).await;

    let all = [
        (plain.clone(), Created),
        (tagged.clone(), Created),
        (plain, Canceled),
        (tagged.clone(), Completed),
    ];
    assert_eq!(before_completion, all[..3]);
    assert_eq!(next_events(&mut everything, 1).await, all[3..]);
    assert_eq!(next_events(&mut by_worker, 4).await, all);
    assert_eq!(
        next_events(&mut hot, 2).await,
        [(tagged.clone(), Created), (tagged.clone(), Completed)]
    );
    assert_eq!(next_events(&mut completed, 1).await, [(tagged, Completed)]);
}

async fn a_bad_filter_or_no_key_is_refused_before_watching(app: TestApp) {
    let mut client = app.grpc().await;
    let bad = client
        .watch_tasks(app.grpc_request(WatchTasksRequest {
            r#type: "nosuchtype".into(),
            ..Default::default()
        }))
        .await
        .expect_err("an unknown type");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let anonymous = client
        .watch_tasks(tonic::Request::new(WatchTasksRequest::default()))
        .await
        .expect_err("no key");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
}

/// grpc-web: the events arrive as data frames of one streamed HTTP/1.1 response.
async fn grpc_web_streams_the_events(app: TestApp) {
    let mut response = app
        .http
        .post(app.url("/annotask.v1.TaskService/WatchTasks"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", app.api_key))
        .body({
            let payload = WatchTasksRequest::default().encode_to_vec();
            let mut framed = vec![0u8];
            framed.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
            framed.extend_from_slice(&payload);
            framed
        })
        .send()
        .await
        .expect("grpc-web request");
    assert_eq!(response.status(), StatusCode::OK);
    let task_id = create_as(&app, &app.api_key.clone(), json!({})).await;
    rest_ok(
        &app,
        app.request(Method::POST, &format!("/v1/task/{task_id}/cancel")),
    )
    .await;

    let mut buffer = Vec::new();
    let mut events = Vec::new();
    while events.len() < 2 {
        let chunk = tokio::time::timeout(GIVE_UP, response.chunk())
            .await
            .expect("the events arrive")
            .expect("body readable")
            .expect("the stream goes on");
        buffer.extend_from_slice(&chunk);
        while buffer.len() >= 5 {
            let length = u32::from_be_bytes(buffer[1..5].try_into().expect("4 bytes")) as usize;
            if buffer.len() < 5 + length {
                break;
            }
            assert_eq!(buffer[0], 0, "a data frame, not trailers, while watching");
            let event = TaskEvent::decode(&buffer[5..5 + length]).expect("a TaskEvent");
            let kind = event.kind();
            events.push((event.task.expect("task").task_id, kind));
            buffer.drain(..5 + length);
        }
    }
    assert_eq!(events, [(task_id.clone(), Created), (task_id, Canceled)]);
}

/// A watcher whose client never reads falls more than the buffer behind and is ended with
/// RESOURCE_EXHAUSTED, having been sent far fewer events than were committed, while a watcher
/// that reads gets every event.
async fn a_slow_watcher_is_ended_while_others_keep_up(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |config| config.watch_buffer = BUFFER).await
    else {
        return;
    };
    // HTTP/2 lets the server send a tiny window ahead, so a client that does not read stops
    // the server from taking events off the watcher's buffer.
    let channel = Endpoint::from_shared(app.base_url.clone())
        .expect("url")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .expect("connect");
    let mut slow = TaskServiceClient::new(channel)
        .watch_tasks(app.grpc_request(WatchTasksRequest::default()))
        .await
        .expect("WatchTasks")
        .into_inner();
    let mut reader = watch(&app, &app.api_key, WatchTasksRequest::default()).await;

    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 8;
    let key = app.api_key.clone();
    for _ in 0..ROUNDS {
        let mut created = Vec::new();
        for _ in 0..PER_ROUND {
            created.push((create_as(&app, &key, json!({})).await, Created));
        }
        assert_eq!(next_events(&mut reader, PER_ROUND).await, created);
    }

    let mut received = 0;
    let ended = loop {
        match tokio::time::timeout(GIVE_UP, slow.message())
            .await
            .expect("the slow watcher is ended, not left hanging")
        {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the slow watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("fell behind"), "{ended:?}");
    assert!(
        received < ROUNDS * PER_ROUND - BUFFER,
        "the slow watcher was sent {received} events: it was buffered, not ended"
    );
    println!(
        "slow watcher: {received} of {} events sent before it was ended",
        ROUNDS * PER_ROUND
    );
}

backend_tests!(
    a_watcher_sees_each_change_of_its_tasks_in_commit_order,
    filters_accounts_and_worlds_limit_what_a_watcher_sees,
    a_bad_filter_or_no_key_is_refused_before_watching,
    grpc_web_streams_the_events,
);

/// Events a watcher may fall behind by in the slow-watcher tests.
const BUFFER: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_ended_while_others_keep_up_on_sqlite() {
    a_slow_watcher_is_ended_while_others_keep_up(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_ended_while_others_keep_up_on_postgres() {
    a_slow_watcher_is_ended_while_others_keep_up(Backend::Postgres).await;
}

/// Two replicas on one PostgreSQL: a change made through A reaches a watcher on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_reaches_a_watcher_on_another() {
    let Some(replica_a) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let replica_b = App::open(Config::new(replica_a.database_url.clone()))
        .await
        .expect("open replica B");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let b_url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_b, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_b = tokio::spawn(replica_b.serve(listener, async {
        let _ = stopped.await;
    }));

    let mut on_b = TaskServiceClient::connect(b_url)
        .await
        .expect("connect B")
        .watch_tasks(replica_a.grpc_request(WatchTasksRequest::default()))
        .await
        .expect("WatchTasks on B")
        .into_inner();
    let key = replica_a.api_key.clone();
    let task_id = create_as(&replica_a, &key, json!({})).await;
    rest_ok(
        &replica_a,
        replica_a.request(Method::POST, &format!("/v1/task/{task_id}/cancel")),
    )
    .await;
    assert_eq!(
        next_events(&mut on_b, 2).await,
        [(task_id.clone(), Created), (task_id, Canceled)]
    );

    // Shutting B down ends its watch at once instead of holding the grace period.
    let _ = stop_b.send(());
    let ended = tokio::time::timeout(GIVE_UP, on_b.message())
        .await
        .expect("the watch ends at shutdown");
    assert!(
        matches!(&ended, Err(status) if status.code() == Code::Unavailable),
        "{ended:?}"
    );
    tokio::time::timeout(GIVE_UP, server_b)
        .await
        .expect("B stops")
        .expect("B's task")
        .expect("B served");
}

/// A watch is a long answer: the request timeout bounds the time to its first byte, not its
/// length, so a watch outlives it and keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outlives_the_request_timeout() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.request_timeout = Duration::from_secs(1);
    })
    .await
    .expect("app");
    let key = app.api_key.clone();
    let mut stream = watch(&app, &key, WatchTasksRequest::default()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let task_id = create_as(&app, &key, json!({})).await;
    assert_eq!(next_events(&mut stream, 1).await, vec![(task_id, Created)]);
}

/// A statement on the test's own database, outside the server (PostgreSQL tests only).
async fn execute(db: &impl sea_orm::ConnectionTrait, sql: &str) -> Vec<sea_orm::QueryResult> {
    db.query_all(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        sql.to_owned(),
    ))
    .await
    .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

/// PostgreSQL hands out transaction ids when a transaction first writes, not when it commits.
/// A transaction that took its id before others and commits after them must still be heard,
/// while it is open the others must be heard at once, and nothing may be heard twice. The late
/// transaction writes its change-log row by hand, as `Store::commit_with_changes` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_took_its_id_early_and_committed_late_is_heard_once() {
    use sea_orm::TransactionTrait;
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let mut stream = watch(&app, &app.api_key, WatchTasksRequest::default()).await;
    let key = app.api_key.clone();
    let db = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    let late = db.begin().await.expect("begin");
    execute(&late, "SELECT pg_current_xact_id()").await;

    let first = create_as(&app, &key, json!({})).await;
    assert_eq!(
        next_events(&mut stream, 1).await,
        [(first.clone(), Created)],
        "a commit is heard while an older transaction is still open"
    );
    execute(
        &late,
        &format!(
            "INSERT INTO task_change_log (xid, changes) \
             VALUES (pg_current_xact_id()::text::bigint, 'u{first}')"
        ),
    )
    .await;
    late.commit().await.expect("commit");
    assert_eq!(next_events(&mut stream, 1).await, [(first, Updated)]);

    let second = create_as(&app, &key, json!({})).await;
    assert_eq!(
        next_events(&mut stream, 1).await,
        [(second, Created)],
        "nothing already heard is heard again"
    );
    let _ = db.close().await;
}

/// The pruner keeps the change log to its last minutes: it deletes rows past the retention
/// and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_change_log_rows_are_pruned() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else {
        return;
    };
    let task_id = create_as(&app, &app.api_key.clone(), json!({})).await;
    let db = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    execute(
        &db,
        &format!(
            "INSERT INTO task_change_log (xid, changes, logged_at) \
             VALUES (1, 'u{task_id}', now() - interval '1 hour')"
        ),
    )
    .await;
    let logged = |rows: Vec<sea_orm::QueryResult>| -> Vec<String> {
        rows.iter()
            .map(|row| row.try_get::<String>("", "changes").expect("changes"))
            .collect()
    };
    let before = logged(execute(&db, "SELECT changes FROM task_change_log ORDER BY seq").await);
    assert_eq!(before, [format!("c{task_id}"), format!("u{task_id}")]);

    let pruned = app.service.prune_change_log().await.expect("prune");
    assert_eq!(pruned, 1);
    let after = logged(execute(&db, "SELECT changes FROM task_change_log ORDER BY seq").await);
    assert_eq!(after, [format!("c{task_id}")]);
    let _ = db.close().await;
}
