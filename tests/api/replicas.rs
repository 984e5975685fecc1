//! Three real `annotask serve` processes on one PostgreSQL database: one unique_id and one
//! Idempotency-Key raced across all three, the work queue claimed from all three, callbacks
//! delivered by all three, a rolling restart (SIGTERM one replica at a time) under load, and
//! replicas starting at once on an empty database.

use std::{
    collections::{HashMap, HashSet},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::HeaderMap, http::StatusCode as AxumStatus, routing::post};
use futures::future::join_all;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{json, Value};

use crate::{
    helpers::{Backend, TestApp, TestDb},
    process::free_port,
};

/// Small pools: three replicas and the in-process server stay far under max_connections while
/// other tests run beside them.
const POOL: &str = "6";

/// One `annotask serve` child on a fixed port, so it can be stopped and started again there.
struct Replica {
    base_url: String,
    port: u16,
    child: Child,
    /// The process's log, so a failure can say why it exited.
    stderr: tempfile::NamedTempFile,
}

impl Replica {
    /// Starts the process without waiting for it.
    fn spawn(database_url: &str, port: u16, env: &[(&str, &str)]) -> Replica {
        let stderr = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_annotask"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url])
            .env("RUST_LOG", "warn")
            .env("ANNOTASK_DATABASE_MAX_CONNECTIONS", POOL)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("log file"))
            .spawn()
            .expect("spawn annotask");
        Replica {
            base_url: format!("http://127.0.0.1:{port}"),
            port,
            child,
            stderr,
        }
    }

    async fn start(database_url: &str, env: &[(&str, &str)]) -> Replica {
        let replica = Replica::spawn(database_url, free_port(), env);
        replica.wait_healthy().await;
        replica
    }

    async fn wait_healthy(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = http
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica on {} did not become healthy",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, as an orchestrator stops a replica, then waits for the process to exit.
    async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "replica ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the process logged (warnings and errors).
    fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Everything the process printed (it must have exited).
    fn stdout(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut text).expect("read stdout");
        }
        text
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn three_replicas(app: &TestApp, env: &[(&str, &str)]) -> Vec<Replica> {
    join_all((0..3).map(|_| Replica::start(&app.database_url, env))).await
}

fn image_body(i: usize) -> Value {
    json!({"attachment": format!("https://e.com/{i}.png"), "geometries": {"box": {}}})
}

async fn spawn_app() -> Option<TestApp> {
    TestApp::spawn_with(Backend::Postgres, |config| {
        config.database.max_connections = 4;
        // The replicas deliver; the in-process server only sets up and checks.
        config.callbacks.deliver = false;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unique_id_raced_over_three_replicas_makes_exactly_one_task() {
    const REQUESTS: usize = 30;
    let Some(app) = spawn_app().await else {
        return;
    };
    let replicas = three_replicas(&app, &[]).await;
    let answers = join_all((0..REQUESTS).map(|i| {
        let mut body = image_body(i);
        body["unique_id"] = json!("one-of-a-kind");
        app.http
            .post(format!(
                "{}/v1/task/imageannotation",
                replicas[i % 3].base_url
            ))
            .basic_auth(&app.api_key, Some(""))
            .json(&body)
            .send()
    }))
    .await;
    let mut created = Vec::new();
    let mut conflicts = Vec::new();
    for answer in answers {
        let answer = answer.expect("sent");
        let status = answer.status();
        let body: Value = answer.json().await.expect("json");
        match status {
            StatusCode::OK => created.push(body["task_id"].as_str().expect("id").to_owned()),
            StatusCode::CONFLICT => {
                conflicts.push(body["error"].as_str().expect("error").to_owned())
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    // SPEC: the others are told which task holds the unique_id.
    assert_eq!(conflicts.len(), REQUESTS - 1);
    assert!(
        conflicts.iter().all(|error| error.contains(&created[0])),
        "{conflicts:?}"
    );
    let (_, listed) = app.get("/v1/tasks?unique_id=one-of-a-kind").await;
    assert_eq!(listed["docs"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_raced_over_three_replicas_gives_one_task_and_one_answer() {
    const REQUESTS: usize = 30;
    let Some(app) = spawn_app().await else {
        return;
    };
    let replicas = three_replicas(&app, &[]).await;
    let send = |i: usize| {
        app.http
            .post(format!(
                "{}/v1/task/imageannotation",
                replicas[i % 3].base_url
            ))
            .basic_auth(&app.api_key, Some(""))
            .header("Idempotency-Key", "shared-over-replicas")
            .json(&image_body(0))
            .send()
    };
    let mut bodies = HashSet::new();
    let mut in_flight = 0;
    let mut pending: Vec<usize> = (0..REQUESTS).collect();
    // 429 (the first request still running elsewhere) is SPEC's "retry shortly".
    while !pending.is_empty() {
        let answers = join_all(pending.iter().map(|&i| send(i))).await;
        let mut again = Vec::new();
        for (&i, answer) in pending.iter().zip(answers) {
            let answer = answer.expect("sent");
            match answer.status() {
                StatusCode::OK => {
                    bodies.insert(answer.text().await.expect("body"));
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    in_flight += 1;
                    again.push(i);
                }
                other => panic!("unexpected {other}: {}", answer.text().await.unwrap()),
            }
        }
        pending = again;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{REQUESTS} keyed requests over 3 replicas; {in_flight} answered 429 in flight first"
    );
    assert_eq!(bodies.len(), 1, "answers differ: {bodies:?}");
    let (_, listed) = app.get("/v1/tasks?limit=100").await;
    assert_eq!(listed["docs"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_claiming_over_three_replicas_never_get_one_task_twice() {
    const TASKS: usize = 60;
    const WORKERS: usize = 24;
    let Some(app) = spawn_app().await else {
        return;
    };
    for chunk in (0..TASKS).collect::<Vec<_>>().chunks(20) {
        join_all(chunk.iter().map(|&i| app.create_image_task(image_body(i)))).await;
    }
    let replicas = three_replicas(&app, &[]).await;
    let worker = app.worker_key().await;
    let claims = join_all((0..WORKERS).map(|w| {
        let base_url = replicas[w % 3].base_url.clone();
        let http = app.http.clone();
        let worker = worker.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let claimed: Value = http
                    .post(format!("{base_url}/v1/work/claim"))
                    .basic_auth(&worker, Some(""))
                    .json(&json!({"limit": 2}))
                    .send()
                    .await
                    .expect("claim")
                    .json()
                    .await
                    .expect("json");
                let leases = claimed["leases"].as_array().cloned().unwrap_or_default();
                if leases.is_empty() {
                    return mine;
                }
                mine.extend(
                    leases
                        .iter()
                        .map(|lease| lease["task"]["task_id"].as_str().expect("id").to_owned()),
                );
            }
        }
    }))
    .await;
    let all: Vec<String> = claims.into_iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a task was handed out twice");
    assert_eq!(all.len(), TASKS, "every task is claimed once");
}

/// Counts deliveries per `webhook-id`; fails the first delivery of each so a retry is due too.
#[derive(Clone, Default)]
struct CountingReceiver {
    per_webhook: Arc<Mutex<HashMap<String, usize>>>,
}

async fn count_delivery(
    State(receiver): State<CountingReceiver>,
    headers: HeaderMap,
) -> AxumStatus {
    let id = headers
        .get("webhook-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut counts = receiver.per_webhook.lock().expect("lock");
    let seen = counts.entry(id).or_default();
    *seen += 1;
    if *seen == 1 {
        AxumStatus::INTERNAL_SERVER_ERROR
    } else {
        AxumStatus::OK
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_delivered_by_three_replicas_are_never_sent_twice_per_attempt() {
    const TASKS: usize = 30;
    let Some(app) = spawn_app().await else {
        return;
    };
    let receiver = CountingReceiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let receiver_url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = axum::Router::new()
        .route("/hook", post(count_delivery))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let env = [
        ("ANNOTASK_ALLOW_PRIVATE_CALLBACKS", "true"),
        // Two attempts: the receiver refuses the first, accepts the second.
        ("ANNOTASK_CALLBACK_SCHEDULE", "500ms,1s"),
    ];
    let replicas = three_replicas(&app, &env).await;
    let worker = app.worker_key().await;
    for chunk in (0..TASKS).collect::<Vec<_>>().chunks(10) {
        join_all(chunk.iter().map(|&i| {
            let mut body = image_body(i);
            body["callback_url"] = json!(format!("{receiver_url}/hook"));
            app.create_image_task(body)
        }))
        .await;
    }
    // Claimed and completed through all three replicas.
    let completions = join_all((0..TASKS).map(|i| {
        let base_url = replicas[i % 3].base_url.clone();
        let http = app.http.clone();
        let worker = worker.clone();
        async move {
            let claimed: Value = http
                .post(format!("{base_url}/v1/work/claim"))
                .basic_auth(&worker, Some(""))
                .json(&json!({}))
                .send()
                .await
                .expect("claim")
                .json()
                .await
                .expect("json");
            let lease = &claimed["leases"][0];
            let task_id = lease["task"]["task_id"].as_str().expect("claimed a task");
            http.post(format!("{base_url}/v1/task/{task_id}/complete"))
                .basic_auth(&worker, Some(""))
                .json(&json!({"lease_token": lease["lease_token"], "response": {"ok": true}}))
                .send()
                .await
                .expect("complete")
                .status()
        }
    }))
    .await;
    assert!(
        completions.iter().all(|status| *status == StatusCode::OK),
        "{completions:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = receiver
            .per_webhook
            .lock()
            .expect("lock")
            .values()
            .filter(|count| **count >= 2)
            .count();
        if done == TASKS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {TASKS} callbacks succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for a doubled attempt, or a third one after the success, to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = receiver.per_webhook.lock().expect("lock").clone();
    assert_eq!(counts.len(), TASKS);
    // Attempt 1 refused, attempt 2 accepted: a count above 2 is an attempt sent twice.
    assert!(counts.values().all(|count| *count == 2), "{counts:?}");
}

/// What the load clients saw during the rolling restart.
#[derive(Default)]
struct LoadFigures {
    requests: AtomicUsize,
    retries: AtomicUsize,
    failures: AtomicUsize,
    acknowledged: Mutex<Vec<String>>,
}

/// One logical request: the replica in turn first, then the next ones, each answer that a
/// client would retry (no connection, 5xx, 429) tried again on another replica.
async fn with_failover(
    figures: &LoadFigures,
    replicas: &[String],
    first: usize,
    send: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Option<(StatusCode, Value)> {
    figures.requests.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..12 {
        if attempt > 0 {
            figures.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
        }
        let base_url = &replicas[(first + attempt) % replicas.len()];
        let Ok(answer) = send(base_url).send().await else {
            continue;
        };
        let status = answer.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            continue;
        }
        let Ok(body) = answer.json::<Value>().await else {
            continue;
        };
        return Some((status, body));
    }
    figures.failures.fetch_add(1, Ordering::Relaxed);
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_request_a_retry_elsewhere_absorbs() {
    const CLIENTS: usize = 6;
    let Some(app) = spawn_app().await else {
        return;
    };
    let mut replicas = three_replicas(&app, &[]).await;
    let urls: Vec<String> = replicas.iter().map(|r| r.base_url.clone()).collect();
    let figures = Arc::new(LoadFigures::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (figures, stop, urls) = (figures.clone(), stop.clone(), urls.clone());
            // A client without connection reuse would never meet a connection closed under it.
            let http = reqwest::Client::new();
            let key = app.api_key.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let idempotency_key = format!("roll-{client}-{n}");
                    let created = with_failover(&figures, &urls, client + n, |base_url| {
                        http.post(format!("{base_url}/v1/task/imageannotation"))
                            .basic_auth(&key, Some(""))
                            .header("Idempotency-Key", &idempotency_key)
                            .json(&image_body(n))
                    })
                    .await;
                    let Some((StatusCode::OK, task)) = created else {
                        continue;
                    };
                    let task_id = task["task_id"].as_str().unwrap_or_default().to_owned();
                    figures
                        .acknowledged
                        .lock()
                        .expect("lock")
                        .push(task_id.clone());
                    let read = with_failover(&figures, &urls, client + n + 1, |base_url| {
                        http.get(format!("{base_url}/v1/task/{task_id}"))
                            .basic_auth(&key, Some(""))
                    })
                    .await;
                    if let Some((status, _)) = read {
                        assert_eq!(status, StatusCode::OK, "an acknowledged task is readable");
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in replicas.iter_mut() {
        let stopped = replica.terminate().await;
        assert!(stopped.success(), "SIGTERM exits 0: {stopped:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restarted = Replica::spawn(&app.database_url, replica.port, &[]);
        restarted.wait_healthy().await;
        *replica = restarted;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }

    let requests = figures.requests.load(Ordering::Relaxed);
    let retries = figures.retries.load(Ordering::Relaxed);
    let failures = figures.failures.load(Ordering::Relaxed);
    let acknowledged = figures.acknowledged.lock().expect("lock").clone();
    eprintln!(
        "rolling restart of 3 replicas: {requests} requests, {retries} retries absorbed, {failures} failed after retries, {} tasks acknowledged",
        acknowledged.len()
    );
    assert_eq!(failures, 0);
    assert!(requests > 100, "the load ran throughout: {requests}");
    // Every acknowledged task exists, once: a retried create was a replay, not a second task.
    let distinct: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(distinct.len(), acknowledged.len());
    let (_, count) = app.get("/v1/tasks?limit=1").await;
    let total = count["total"].as_u64();
    if let Some(total) = total {
        assert_eq!(total, acknowledged.len() as u64);
    }
    for task_id in &acknowledged {
        let (status, _) = app.get(&format!("/v1/task/{task_id}")).await;
        assert_eq!(status, StatusCode::OK, "{task_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_on_an_empty_database_create_one_default_account() {
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let Some((_db, database_url)) = TestDb::create(Backend::Postgres).await else {
            return;
        };
        // Started together: both migrate and bootstrap the same empty database.
        let mut replicas: Vec<Replica> = (0..2)
            .map(|_| Replica::spawn(&database_url, free_port(), &[]))
            .collect();
        join_all(replicas.iter().map(Replica::wait_healthy)).await;
        let mut printed_keys = 0;
        for replica in &mut replicas {
            let status = replica.terminate().await;
            assert!(status.success(), "{status}: {}", replica.log());
            printed_keys += replica
                .stdout()
                .lines()
                .filter(|line| line.starts_with("live_"))
                .count();
        }
        let db = Database::connect(&database_url).await.expect("connect");
        let count = |sql: &str| {
            let statement = Statement::from_string(db.get_database_backend(), sql.to_owned());
            let db = &db;
            async move {
                let row = db.query_one(statement).await.expect("query").expect("row");
                row.try_get_by_index::<i64>(0).expect("count")
            }
        };
        let accounts = count("SELECT COUNT(*) FROM accounts").await;
        let keys = count("SELECT COUNT(*) FROM api_keys").await;
        db.close().await.expect("close");
        assert_eq!(
            (accounts, keys, printed_keys),
            (1, 1, 1),
            "round {round}: accounts, keys, printed keys"
        );
    }
}

/// The same race without process start-up jitter: three services, each with its own pool as
/// in three replicas, bootstrap one migrated empty database at the same instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_bootstraps_create_exactly_one_default_account_and_key() {
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let Some((_db, database_url)) = TestDb::create(Backend::Postgres).await else {
            return;
        };
        let mut config = annotask::config::Config::new(database_url);
        config.database.max_connections = 2;
        let mut apps = Vec::new();
        for _ in 0..3 {
            apps.push(
                annotask::server::App::open(config.clone())
                    .await
                    .expect("open"),
            );
        }
        let keys = join_all(
            apps.iter()
                .map(|app| app.service.bootstrap_default_account()),
        )
        .await;
        let printed: Vec<String> = keys
            .into_iter()
            .filter_map(|key| key.expect("bootstrap"))
            .collect();
        assert_eq!(printed.len(), 1, "round {round}: {} keys", printed.len());
        let listed = apps[0]
            .service
            .list_api_keys("default")
            .await
            .expect("default exists");
        assert_eq!(listed.len(), 1, "round {round}");
        for app in apps {
            app.service.close().await;
        }
    }
}
